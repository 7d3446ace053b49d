"""`nnfp.audio.io`: mono float32 at a sample rate from every format users have (FFmpeg through
PyAV when libsndfile cannot), errors that name the file, and streaming decode in bounded memory."""

import fractions

import av
import numpy as np
import pytest
import soundfile as sf

from nnfp.audio.io import AudioError, audio_info, load_audio, stream_audio

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
