"""`nnfp.audio.io`: mono float32 at a sample rate from every format users have (FFmpeg through
PyAV when libsndfile cannot), errors that name the file, and streaming decode in bounded memory.

Also, until they move to their own modules' tests: streaming fingerprints and long-query scoring."""

import fractions
import json
import tracemalloc

import av
import numpy as np
import pytest
import soundfile as sf

import nnfp.index
import nnfp.search
from nnfp.audio.io import AudioError, audio_info, load_audio, stream_audio
from nnfp.cli import main

SR = 8000

# (file name, encoder, rate, bit rate): what phones, browsers and Windows write. Every encoder
# is in the PyAV 18 wheel (AMR-NB through libopencore_amrnb); none may go missing unnoticed.
FORMATS = [
    ("phone.m4a", "aac", 16000, None),
    ("video.mp4", "aac", 22050, None),
    ("browser.webm", "libopus", 48000, None),
    ("windows.wma", "wmav2", 22050, 64000),
    ("phone.3gp", "libopencore_amrnb", 8000, 12200),
    ("voice.amr", "libopencore_amrnb", 8000, 12200),
]


def tone(hz, seconds, rate, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def peak_hz(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


def write_with_ffmpeg(path, audio, rate, codec, bit_rate=None, video=False):
    """Encodes (n,) mono or (channels, n) audio with FFmpeg (PyAV); `video` adds an mpeg4 track."""
    if codec not in av.codecs_available:
        pytest.fail(f"PyAV's FFmpeg has no {codec} encoder: this format is untested")
    audio = np.atleast_2d(np.asarray(audio, np.float32))
    layout = "mono" if len(audio) == 1 else "stereo"
    with av.open(str(path), "w") as out:
        if video:
            picture = out.add_stream("mpeg4", rate=10)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        sample_format = stream.codec_context.codec.audio_formats[0]
        frame_size = stream.codec_context.frame_size or 1024
        if sample_format.name.startswith("s16"):
            audio = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
        if not sample_format.is_planar:
            audio = audio.T.reshape(1, -1)  # interleaved
        channels = 1 if layout == "mono" else 2
        for first in range(0, audio.shape[1] // (1 if sample_format.is_planar else channels), frame_size):
            if sample_format.is_planar:
                chunk = audio[:, first : first + frame_size]
            else:
                chunk = audio[:, first * channels : (first + frame_size) * channels]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=sample_format.name, layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, first, fractions.Fraction(1, rate)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if video:
            for i in range(3):
                image = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
                image.pts = i
                for packet in picture.encode(image):
                    out.mux(packet)
            for packet in picture.encode(None):
                out.mux(packet)


# ----------------------------------------------------------------------------- decoding


def sine(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize(
    "suffix, rate, subtype",
    [(".wav", 16000, "PCM_16"), (".flac", 44100, "PCM_16"), (".ogg", 16000, "VORBIS")],
)
def test_load_audio_mixes_to_mono_and_resamples(tmp_path, suffix, rate, subtype):
    left, right = sine(440, 1.0, rate, 0.6), sine(440, 1.0, rate, 0.2)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype=subtype)
    x = load_audio(path, sample_rate=SR)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SR) <= 1
    assert abs(peak_hz(x, SR) - 440) <= 1.0
    # Mean of the channels: amplitude (0.6 + 0.2) / 2 = 0.4, i.e. RMS 0.4 / sqrt(2).
    rms = np.sqrt(np.mean(x[800:-800] ** 2))
    assert rms == pytest.approx(0.4 / np.sqrt(2), rel=0.03)


def test_load_audio_same_rate_is_exact(tmp_path):
    x = sine(1000, 0.5, SR)
    sf.write(tmp_path / "a.wav", x, SR, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.wav"), x)


def test_load_audio_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    nan = tmp_path / "nan.wav"
    x = sine(440, 0.2, SR)
    x[100] = np.nan
    sf.write(nan, x, SR, subtype="FLOAT")
    no_samples = tmp_path / "zero.wav"
    sf.write(no_samples, np.zeros(0, np.float32), SR)
    cases = [
        (corrupt, "cannot decode"),
        (empty, "empty file"),
        (nan, "NaN"),
        (no_samples, "no samples"),
        (tmp_path / "missing.wav", "not found"),
    ]
    for path, expected in cases:
        with pytest.raises(AudioError) as info:
            load_audio(path)
        assert str(info.value).startswith(str(path))
        assert expected in str(info.value)
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name, codec, rate, bit_rate", FORMATS, ids=[f[0] for f in FORMATS])
def test_ffmpeg_formats_decode_to_the_right_tone(tmp_path, name, codec, rate, bit_rate):
    path = tmp_path / name
    write_with_ffmpeg(path, tone(440, 2.048, rate), rate, codec, bit_rate)
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(path))  # not the fast path: this is PyAV's work
    x = load_audio(path, SR)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) / SR - 2.048) <= 0.05
    assert abs(peak_hz(x, SR) - 440) <= 2.0
    # Lossy codecs keep the level: RMS of a 0.5 sine is 0.354.
    assert np.sqrt(np.mean(x[SR // 4 : -SR // 4] ** 2)) == pytest.approx(0.354, rel=0.15)
    info = audio_info(path)
    assert info.sample_rate == rate and info.channels == 1
    assert info.seconds == pytest.approx(2.048, abs=0.1)


def test_stereo_m4a_channels_are_averaged(tmp_path):
    left, right = tone(440, 2.048, 16000, 0.6), tone(440, 2.048, 16000, 0.2)
    write_with_ffmpeg(tmp_path / "stereo.m4a", np.stack([left, right]), 16000, "aac")
    x = load_audio(tmp_path / "stereo.m4a", SR)
    assert np.sqrt(np.mean(x[SR // 4 : -SR // 4] ** 2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.1)


def test_audio_track_of_a_video_and_video_without_audio(tmp_path):
    write_with_ffmpeg(tmp_path / "clip.mp4", tone(700, 2.048, 16000), 16000, "aac", video=True)
    x = load_audio(tmp_path / "clip.mp4", SR)
    assert abs(peak_hz(x, SR) - 700) <= 2.0 and abs(len(x) / SR - 2.048) <= 0.05

    with av.open(str(tmp_path / "silent_film.mp4"), "w") as out:
        picture = out.add_stream("mpeg4", rate=10)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        for i in range(3):
            image = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            image.pts = i
            for packet in picture.encode(image):
                out.mux(packet)
        for packet in picture.encode(None):
            out.mux(packet)
    with pytest.raises(AudioError, match=r"silent_film.mp4: no audio stream \(FFmpeg found: video\)"):
        load_audio(tmp_path / "silent_film.mp4", SR)


def test_undecodable_file_names_both_decoders(tmp_path):
    path = tmp_path / "broken.m4a"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioError) as info:
        load_audio(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "cannot decode" in message
    assert "libsndfile" in message and "FFmpeg" in message


@pytest.mark.parametrize("name, rate", [("long.wav", 44100), ("long.m4a", 16000), ("same.wav", SR)])
def test_stream_audio_blocks_equal_load_audio(tmp_path, name, rate):
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal((2, int(7.3 * rate)))).astype(np.float32)
    path = tmp_path / name
    if name.endswith(".wav"):
        sf.write(path, audio.T, rate, subtype="FLOAT")
    else:
        write_with_ffmpeg(path, audio, rate, "aac")
    whole = load_audio(path, SR)
    blocks = list(stream_audio(path, SR, block_seconds=0.7))
    assert {len(b) for b in blocks[:-1]} == {int(0.7 * SR)} and 0 < len(blocks[-1]) <= int(0.7 * SR)
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), whole)  # same samples, bit for bit


# ----------------------------------------------------------------------------- folders


# ----------------------------------------------------------------------------- index build


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from nnfp.model import FingerPrinter

    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    FingerPrinter.from_settings(width=0.03125, embedding_dim=16).save(path)
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
    real = nnfp.index.fingerprint_stream
    monkeypatch.setattr(nnfp.index, "fingerprint_stream", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(nnfp.index, "STREAM_SECONDS", 0.0)  # every file streamed...
    monkeypatch.setattr(nnfp.index, "_STREAM_BLOCK_SECONDS", 1.3)  # ... in blocks of 2.6 hops
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
    embeddings, starts, n_samples, peak = nnfp.index.fingerprint_stream(_FirstSamples(), blocks, hop, batch_size=4)
    expected, _, expected_starts = nnfp.index.fingerprint_tracks(_FirstSamples(), [audio], hop, batch_size=4)
    np.testing.assert_array_equal(embeddings, expected)
    np.testing.assert_array_equal(starts, expected_starts)
    assert n_samples == 1003 and peak == np.abs(audio).max()


# ----------------------------------------------------------------------------- long queries


def _dense_sequence_scores(db, query, starts):
    """The former one-shot formula: an (n_query, n_candidates, d) array."""
    rows = starts[:, None] + np.arange(len(query))
    valid = rows <= db._track_end[starts][:, None]
    rows = np.minimum(rows, db.n_segments - 1)
    windows = np.asarray(db.embeddings, np.float32)[rows.T]
    sims = np.matmul(windows, query[:, :, None])[:, :, 0].T
    return np.where(valid, sims, 0.0).sum(axis=1, dtype=np.float64) / len(query)


def _random_db(rng, lengths, d):
    from nnfp.search import FingerprintDB

    embeddings = rng.standard_normal((sum(lengths), d)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    segment_track = np.repeat(np.arange(len(lengths)), lengths)
    segment_start = np.concatenate([0.5 * np.arange(n) for n in lengths])
    tracks = [{"track_id": i, "path": f"{i}.wav", "duration_s": 0.5 * n} for i, n in enumerate(lengths)]
    return FingerprintDB.build(embeddings, segment_track, segment_start, tracks, index_type="flat", threads=1)


@pytest.mark.parametrize("tile_pairs, tile_rows", [(7, 3), (1000, 64), (65_536, 64)])
def test_tiled_sequence_scores_equal_the_dense_formula(monkeypatch, tile_pairs, tile_rows):
    monkeypatch.setattr(nnfp.search, "_SCORE_TILE_PAIRS", tile_pairs)
    monkeypatch.setattr(nnfp.search, "_SCORE_TILE_QUERY_ROWS", tile_rows)
    rng = np.random.default_rng(3)
    db = _random_db(rng, [40, 7, 90, 25], d=24)  # queries longer than some tracks
    for n_query in (1, 5, 30, 120):
        query = rng.standard_normal((n_query, 24)).astype(np.float32)
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        starts = np.sort(rng.choice(db.n_segments, size=60, replace=False)).astype(np.int64)
        # Sums are float64 in both; float32 dot products may round differently per tile shape.
        np.testing.assert_allclose(
            db.sequence_scores(query, starts), _dense_sequence_scores(db, query, starts), rtol=1e-6, atol=1e-7
        )


def test_long_query_scoring_memory_does_not_grow_with_query_times_candidates():
    rng = np.random.default_rng(4)
    d, n_query, n_candidates = 64, 1200, 1500
    db = _random_db(rng, [2000, 1500], d=d)
    query = rng.standard_normal((n_query, d)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    starts = np.arange(0, 3000, 2, dtype=np.int64)[:n_candidates]
    dense_bytes = n_query * n_candidates * d * 4  # 460 MB for the one-shot formula
    tracemalloc.start()
    try:
        scores = db.sequence_scores(query, starts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 60e6 < dense_bytes / 7, f"peak {peak / 1e6:.0f} MB"
    check = starts[::100]
    np.testing.assert_allclose(scores[::100], _dense_sequence_scores(db, query, check), rtol=1e-6, atol=1e-7)
