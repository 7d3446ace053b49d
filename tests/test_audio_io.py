"""`nnfp.audio.io`: mono float32 at a sample rate from every format users have (FFmpeg through
PyAV when libsndfile cannot), errors that name the file, and streaming decode in bounded memory."""

import fractions
import tracemalloc
import warnings

import av
import numpy as np
import pytest
import soundfile as sf

from nnfp.audio.io import (
    AudioError,
    TruncatedAudioWarning,
    audio_info,
    load_audio,
    resample,
    stream_audio,
)

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


# ----------------------------------------------------------------------------- truncated files


def _mp3(path, seconds, rate, seed):
    """A non-repeating mp3 (a chirp plus seeded noise, so no second equals another)."""
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).standard_normal(len(t))
    audio = 0.3 * np.sin(2 * np.pi * (200 * t + 20 * t**2)) + 0.05 * noise
    sf.write(path, audio.astype(np.float32), rate, format="MP3")
    return path


def _cut_in_half(path, out):
    data = path.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture(scope="module")
def mp3s(tmp_path_factory):
    """The finding's 160 s 44.1 kHz mp3 cut at half, one shorter than a load block (40 s) cut
    at half, that one intact, and 5 s whose Xing header claims 2 h."""
    assert "MP3" in sf.available_formats()
    root = tmp_path_factory.mktemp("mp3")
    intact = _mp3(root / "intact_40s.mp3", 40, 22050, seed=1)
    whole = _mp3(root / "whole_160s.mp3", 160, 44100, seed=0)
    files = {
        "half_of_160s": _cut_in_half(whole, root / "half_of_160s.mp3"),
        "half_of_40s": _cut_in_half(intact, root / "half_of_40s.mp3"),
        "intact_40s": intact,
    }
    claim = bytearray(_mp3(root / "five_seconds.mp3", 5, 44100, seed=2).read_bytes())
    xing = claim.find(b"Xing")
    assert xing > 0 and int.from_bytes(claim[xing + 4 : xing + 8], "big") & 3 == 3  # frames, bytes
    claim[xing + 8 : xing + 12] = (7200 * 44100 // 1152).to_bytes(4, "big")  # 2 h of mp3 frames
    claim[xing + 12 : xing + 16] = (7200 * 16000).to_bytes(4, "big")
    files["claims_2h"] = root / "claims_2h.mp3"
    files["claims_2h"].write_bytes(bytes(claim))
    return files


def _truncation_warnings(record):
    return [w.message for w in record if issubclass(w.category, TruncatedAudioWarning)]


@pytest.mark.parametrize("name, header_seconds", [("half_of_160s", 160.0), ("half_of_40s", 40.0)])
def test_truncated_mp3_decodes_only_what_the_file_holds(mp3s, name, header_seconds):
    path = mp3s[name]
    with sf.SoundFile(str(path)) as handle:
        header = handle.frames / handle.samplerate
    assert header == pytest.approx(header_seconds, abs=0.05)  # the header lies
    held, rate = sf.read(str(path), dtype="float32")
    assert len(held) / rate == pytest.approx(header_seconds / 2, abs=1.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x = load_audio(path, SR)
    assert abs(len(x) - len(held) * SR / rate) <= SR  # within 1 s of what exists, not the header
    expected = resample(held, rate, SR)
    n = min(len(x), len(expected))
    assert np.corrcoef(x[:n], expected[:n])[0, 1] > 0.99  # the same audio, nothing copied in
    assert np.abs(x[-SR:]).max() > 0.1  # not zero-padded at the end
    (warning,) = _truncation_warnings(record)
    assert warning.path == path
    assert warning.header_seconds == pytest.approx(header_seconds, abs=0.05)
    assert warning.decoded_seconds == pytest.approx(len(held) / rate, abs=0.05)
    assert warning.error is None
    decoded = f"{len(held) / rate:.1f} s"
    assert str(warning) == (
        f"{path}: truncated or damaged: the header says {header_seconds:.1f} s, only {decoded} "
        f"decode; using the {decoded} that exist"
    )


def test_intact_mp3_gives_no_warning(mp3s):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        x = load_audio(mp3s["intact_40s"], SR)
    assert len(x) == pytest.approx(40 * SR, abs=SR // 10)
    assert _truncation_warnings(record) == []


def test_stream_audio_of_truncated_mp3_equals_load_audio_and_warns_once(mp3s):
    path = mp3s["half_of_160s"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        whole = load_audio(path, SR)
        blocks = list(stream_audio(path, SR, block_seconds=7.0))
    assert len(_truncation_warnings(record)) == 2  # once per decoding
    assert {len(b) for b in blocks[:-1]} == {7 * SR}
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


def test_header_claiming_hours_costs_only_what_the_file_holds(mp3s):
    path = mp3s["claims_2h"]
    assert path.stat().st_size < 100_000 and audio_info(path).seconds == pytest.approx(7200, abs=1)
    tracemalloc.start()
    try:
        with pytest.warns(TruncatedAudioWarning, match=r"header says 7200\.0 s, only 5\.0 s decode"):
            x = load_audio(path, SR)
        peak_bytes = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(x) == pytest.approx(5 * SR, abs=SR // 10)
    assert peak_bytes < 20e6  # 2 h at 44.1 kHz would be 1.3 GB of float32


@pytest.mark.parametrize(
    "name, codec, rate, bit_rate, stopped_by",
    [
        ("browser.webm", "libopus", 48000, None, None),  # ends cleanly, short of its header
        ("windows.wma", "wmav2", 22050, 64000, "FFmpeg InvalidDataError"),  # cut through a packet
        ("voice.amr", "libopencore_amrnb", 8000, 12200, "FFmpeg InvalidDataError"),
        ("lossless.flac", None, 16000, None, "libsndfile LibsndfileError"),  # "lost sync"
    ],
)
def test_truncated_file_keeps_what_decodes_and_warns(tmp_path, name, codec, rate, bit_rate, stopped_by):
    # FFmpeg decodes packet by packet and never invents audio; a decoding error at the cut
    # (wma, amr, flac) must not throw away what decoded before it either.
    audio = 0.3 * np.random.default_rng(3).standard_normal(20 * rate).astype(np.float32)
    if codec is None:
        sf.write(tmp_path / name, audio, rate, subtype="PCM_16")
    else:
        write_with_ffmpeg(tmp_path / name, audio, rate, codec, bit_rate)
    path = _cut_in_half(tmp_path / name, tmp_path / f"half_{name}")
    with pytest.warns(TruncatedAudioWarning) as record:
        x = load_audio(path, SR)
    assert 6 * SR < len(x) < 11 * SR
    (warning,) = _truncation_warnings(record)
    assert str(warning).startswith(f"{path}: truncated or damaged: ")
    assert warning.decoded_seconds == pytest.approx(len(x) / SR, abs=0.05)
    if stopped_by is None:
        assert warning.error is None and warning.header_seconds == pytest.approx(20, abs=0.1)
    else:
        assert warning.error.startswith(stopped_by)
        assert f"(decoding stopped on {stopped_by}" in str(warning)


def test_truncated_m4a_with_index_at_the_end_is_undecodable(tmp_path):
    write_with_ffmpeg(tmp_path / "phone.m4a", tone(440, 4.0, 16000), 16000, "aac")
    path = _cut_in_half(tmp_path / "phone.m4a", tmp_path / "half.m4a")  # lost its moov atom
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(path, SR)


def test_cli_prints_truncation_as_one_line(mp3s, tmp_path, capsys):
    from nnfp.cli import main

    source = tmp_path / "audio"
    source.mkdir()
    (source / "cut.mp3").write_bytes(mp3s["half_of_40s"].read_bytes())
    assert main(["data", "prepare", str(source), str(tmp_path / "cache"), "--quiet"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "truncated" in line]
    assert lines == [
        f"nnfp: warning: {source / 'cut.mp3'}: truncated or damaged: the header says 40.0 s, "
        "only 20.0 s decode; using the 20.0 s that exist"
    ]  # one line, without Python's "file:line: TruncatedAudioWarning:"
