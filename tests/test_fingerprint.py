"""`nnfp.catalogue.fingerprint`: files of every format fingerprinted and indexed, long files
streamed in bounded memory with the fingerprints of a whole-file pass."""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from test_audio_io import write_with_ffmpeg

import nnfp.catalogue.fingerprint
from nnfp.cli import main

SR = 8000


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from nnfp.encoder import DivideAndEncode, Encoder
    from nnfp.frontend import LogMelSpectrogram
    from nnfp.model import FingerPrinter

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model = FingerPrinter(LogMelSpectrogram(), Encoder(width=0.03125), DivideAndEncode(16))
    model.build((None, 8000))
    model.save(path)
    return path


def _music(folder):
    from nnfp.corpus.synth import compose_track

    folder.mkdir()
    sf.write(folder / "a.wav", compose_track(1, 9.3), SR)
    sf.write(folder / "b.flac", np.stack([compose_track(2, 6.1, 44100)] * 2, axis=1), 44100)
    write_with_ffmpeg(folder / "c.m4a", compose_track(3, 5.0, 16000), 16000, "aac")
    write_with_ffmpeg(folder / "d.webm", compose_track(4, 4.0, 48000), 48000, "libopus")
    (folder / "corrupt.mp3").write_bytes(np.random.default_rng(0).bytes(4096))
    sf.write(folder / "silent.wav", np.zeros(3 * SR, np.float32), SR)
    return folder


def test_index_build_indexes_every_format_and_lists_what_it_skipped(tmp_path, tiny_model, capsys):
    music = _music(tmp_path / "music")
    assert main(["index", "build", str(music), str(tmp_path / "idx"), "--model", str(tiny_model), "--quiet"]) == 0
    table = json.loads((tmp_path / "idx" / "tracks.json").read_text())
    assert [t["path"] for t in table["tracks"]] == ["a.wav", "b.flac", "c.m4a", "d.webm"]
    skipped = dict(map(tuple, table["metadata"]["skipped"]))
    assert set(skipped) == {"corrupt.mp3", "silent.wav"}
    assert "cannot decode" in skipped["corrupt.mp3"] and "silent" in skipped["silent.wav"]
    out = capsys.readouterr()
    assert "corrupt.mp3" in out.out + out.err


def test_streamed_fingerprints_equal_whole_file_fingerprints(tmp_path, tiny_model, monkeypatch):
    music = _music(tmp_path / "music")
    whole, streamed = tmp_path / "whole", tmp_path / "streamed"
    assert main(["index", "build", str(music), str(whole), "--model", str(tiny_model), "--quiet"]) == 0
    calls = []
    real = nnfp.catalogue.fingerprint.fingerprint_stream
    monkeypatch.setattr(nnfp.catalogue.fingerprint, "fingerprint_stream", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(nnfp.catalogue.fingerprint, "STREAM_SECONDS", 0.0)  # every file streamed...
    monkeypatch.setattr(nnfp.catalogue.fingerprint, "_STREAM_BLOCK_SECONDS", 1.3)  # ... in blocks of 2.6 hops
    assert main(["index", "build", str(music), str(streamed), "--model", str(tiny_model), "--quiet"]) == 0
    assert len(calls) == 5  # the readable files (the corrupt one is caught by the header probe)
    a, b = (json.loads((d / "tracks.json").read_text()) for d in (whole, streamed))
    assert a["tracks"] == b["tracks"]  # same files, same durations
    assert a["metadata"]["skipped"] == b["metadata"]["skipped"]
    x, y = (np.load(d / "embeddings.npy") for d in (whole, streamed))
    assert x.shape == y.shape and len(x) > 40
    assert np.abs(x - y).max() <= 1e-5
    for key in ("track", "start"):
        np.testing.assert_array_equal(*(np.load(d / "segments.npz")[key] for d in (whole, streamed)))


class _FirstSamples:
    """A stand-in fingerprinter: the first samples of each segment, so results are exact."""

    segment_samples = 50

    def fingerprint(self, waveforms, batch_size=256):
        return np.asarray(waveforms)[:, [0, 1, 49]].copy()


@pytest.mark.parametrize("hop", [20, 50, 70])
def test_fingerprint_stream_carries_the_overlap_exactly(hop):
    audio = np.random.default_rng(2).standard_normal(1003).astype(np.float32)
    blocks = [audio[i : i + 37] for i in range(0, len(audio), 37)]
    embeddings, starts, n_samples, peak = nnfp.catalogue.fingerprint.fingerprint_stream(_FirstSamples(), blocks, hop, batch_size=4)
    expected, _, expected_starts = nnfp.catalogue.fingerprint.fingerprint_tracks(_FirstSamples(), [audio], hop, batch_size=4)
    np.testing.assert_array_equal(embeddings, expected)
    np.testing.assert_array_equal(starts, expected_starts)
    assert n_samples == 1003 and peak == np.abs(audio).max()


def test_iter_fingerprints_yields_full_batches_as_the_samples_arrive():
    audio = np.random.default_rng(3).standard_normal(1003).astype(np.float32)
    seen = []  # blocks handed out so far, when each batch comes back

    def blocks():
        for i in range(0, len(audio), 37):
            seen.append(i + 37)
            yield audio[i : i + 37]

    batches = list(nnfp.catalogue.fingerprint.iter_fingerprints(_FirstSamples(), blocks(), 20, batch_size=8))
    n_total = 1 + (1003 - 50) // 20
    assert [first for first, _ in batches] == list(range(0, n_total, 8))
    assert [len(f) for _, f in batches][:-1] == [8] * (len(batches) - 1)
    for first, fingerprints in batches:
        np.testing.assert_array_equal(fingerprints[:, 0], audio[np.arange(first, first + len(fingerprints)) * 20])
    # Batch k was fingerprinted as soon as its last segment was in, not at the end of the stream.
    stats = {}
    stream = nnfp.catalogue.fingerprint.iter_fingerprints(_FirstSamples(), blocks(), 20, batch_size=8, stats=stats)
    seen.clear()
    next(stream)
    assert seen[-1] - 37 < 50 + 7 * 20 <= seen[-1]
    list(stream)
    assert stats["n_samples"] == 1003


SIXTEEN_K = ["encoder.width=0.03125", "projection.embedding_dim=16", "frontend.sample_rate=16000",
             "frontend.n_fft=2048", "frontend.hop_length=512", "frontend.f_max=8000.0"]


@pytest.fixture(scope="module")
def index_16k(tmp_path_factory):
    """An untrained tiny model of a 16 kHz front end (`frontend.sample_rate: 16000`), and an index
    of three generated tracks written at 16 kHz built with it (the rate nowhere given)."""
    import keras

    from nnfp.catalogue.build import build_index
    from nnfp.config import load_config
    from nnfp.corpus.synth import compose_track
    from nnfp.training import build_model

    root = tmp_path_factory.mktemp("sixteen")
    keras.utils.set_random_seed(3)
    model = build_model(load_config(None, SIXTEEN_K))
    model.save(root / "tiny16k.keras")
    (root / "music").mkdir()
    tracks = {}
    for i in range(3):
        sf.write(root / "music" / f"t{i}.wav", compose_track(40 + i, 8.0, 16000), 16000)
        tracks[f"t{i}.wav"] = sf.read(root / "music" / f"t{i}.wav", dtype="float32")[0]  # as 16-bit PCM holds it
    build_index(root / "music", root / "index", model=root / "tiny16k.keras", index_type="flat", progress=False)
    return {"root": root, "model": model, "tracks": tracks}


@pytest.mark.parametrize("runtime", ["tensorflow", "auto"])  # the Keras model, and the index's LiteRT copy
def test_a_16_khz_model_indexes_and_identifies_at_16_khz(index_16k, runtime):
    from nnfp.catalogue.identify import Identifier
    from nnfp.store.db import FingerprintDB

    root, tracks = index_16k["root"], index_16k["tracks"]
    db = FingerprintDB.load(root / "index")
    assert {k: db.metadata[k] for k in ("sample_rate", "segment_samples", "embedding_dim")} == {
        "sample_rate": 16000, "segment_samples": 16000, "embedding_dim": 16}
    # The index's rows are the model's fingerprints of 16 kHz audio: row 2 is 1.0-2.0 s of t1.wav.
    row = int(np.flatnonzero(db.segment_track == 1)[2])
    expected = index_16k["model"].predict(tracks["t1.wav"][None, 16000:32000], verbose=0)[0]
    np.testing.assert_allclose(db.embeddings[row], expected, atol=1e-4)
    identifier = Identifier(root / "index", min_score=None, runtime=runtime)
    assert identifier.sample_rate == 16000 and identifier.embedder.sample_rate == 16000
    for name, start_s in (("t0.wav", 2.5), ("t2.wav", 4.0)):
        excerpt = tracks[name][int(start_s * 16000): int((start_s + 3.0) * 16000)]  # exact, 3 s
        match = identifier.identify_audio(excerpt, n_results=1)[0]
        assert match.path == name and match.offset_s == pytest.approx(start_s, abs=1e-3)


def test_an_index_refuses_a_model_of_another_rate(index_16k, tmp_path):
    import keras

    from nnfp.catalogue.build import build_index
    from nnfp.catalogue.fingerprint import ModelMismatchError
    from nnfp.catalogue.identify import Identifier
    from nnfp.config import load_config
    from nnfp.training import build_model

    root = index_16k["root"]
    with pytest.raises(ValueError, match="the model takes 16000 Hz audio; the index was asked for 8000 Hz"):
        build_index(root / "music", tmp_path / "idx", model=root / "tiny16k.keras", sample_rate=8000, progress=False)
    assert not (tmp_path / "idx").exists()
    keras.utils.set_random_seed(3)  # the same weights at 8 kHz
    build_model(load_config(None, SIXTEEN_K[:2])).save(tmp_path / "tiny8k.keras")
    with pytest.raises(ModelMismatchError, match=r"does not fit this index: sample_rate 8000 \(the index: 16000\)"):
        Identifier(root / "index", model=tmp_path / "tiny8k.keras", min_score=None)


def test_a_savedmodel_export_carries_its_rate(index_16k, tmp_path):
    from nnfp.catalogue.fingerprint import ModelSpec
    from nnfp.export import ModelLoadError, export_saved_model, load_fingerprinter

    out = export_saved_model(index_16k["model"], tmp_path / "exported")
    assert json.loads((out / "spec.json").read_text()) == {
        "format": "nnfp-savedmodel", "sample_rate": 16000, "segment_samples": 16000, "hop_samples": 8000,
        "embedding_dim": 16}
    embedder = load_fingerprinter(out, trust_model=True)
    assert ModelSpec.of(embedder, out, digest="x") == ModelSpec(16000, 16000, 16, "x")
    older = tmp_path / "older"  # an export of an older nnfp, without spec.json or config.yaml
    shutil.copytree(out, older)
    (older / "spec.json").unlink()
    with pytest.raises(ModelLoadError, match="records no sample rate"):
        ModelSpec.of(load_fingerprinter(older, trust_model=True), older)
