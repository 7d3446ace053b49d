"""`nnfp.catalogue.fingerprint`: files of every format fingerprinted and indexed, long files
streamed in bounded memory with the fingerprints of a whole-file pass."""

import json

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
