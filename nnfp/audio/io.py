"""Decoding audio files: float32 mono at a sample rate, whole or streamed in blocks.

libsndfile (through soundfile) reads wav/flac/ogg/mp3/aiff...; anything else FFmpeg decodes
(m4a/AAC, 3gp/AMR, wma, webm, the audio track of a video) is read through PyAV. soxr
resamples. `encode_decode` sends PCM through an FFmpeg encoder and decoder (a phone call's
codec, `nnfp.pipeline.field.RandomCodec`). This is the only module that imports soundfile,
soxr and PyAV.

Decoders return only what the file holds: a file's length comes from decoding it, never from
its header (a truncated mp3's header still claims the whole song), and a file that decodes
shorter than its header says, or stops on a decoding error, is reported with a
`TruncatedAudioWarning`.
"""

from __future__ import annotations

import collections
import itertools
import pathlib
import warnings

import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AudioError", "AudioInfo", "TruncatedAudioWarning", "audio_info", "encode_decode", "has_encoder",
    "load_audio", "resample", "stream_audio", "stream_resampler",
]  # fmt: skip

_LOAD_BLOCK_SECONDS = 64.0  # output block of load_audio
_READ_FRAMES = 1 << 16  # frames per libsndfile read: bounds the native-rate buffers
# Decoding may end this much before the header's length without a warning: encoder delay and
# padding, and lengths that FFmpeg estimates from the file size and bit rate.
_TRUNCATION_TOLERANCE_SECONDS = 0.5
_TRUNCATION_TOLERANCE_FRACTION = 0.01


class AudioError(ValueError):
    """An audio file that cannot be used. The message starts with the file path.

    Attributes:
        path: the offending file.
        reason: what was wrong, without the path.
    """

    def __init__(self, path, reason):
        self.path = pathlib.Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class TruncatedAudioWarning(UserWarning):
    """A file that decodes shorter than its header says, or stops on a decoding error.

    The audio that decoded is returned, and nothing in place of the rest. The message starts
    with the file path and gives both lengths, e.g. "cut.mp3: truncated or damaged: the header
    says 160.0 s, only 80.0 s decode; using the 80.0 s that exist".

    >>> with warnings.catch_warnings(record=True) as caught:
    ...     x = load_audio("cut.mp3")
    >>> [w.message.decoded_seconds for w in caught if w.category is TruncatedAudioWarning]
    [80.0]

    Attributes:
        path: the file.
        header_seconds: the length its header claims (None when it claims none).
        decoded_seconds: the length that decoded, and was returned.
        error: the decoding error that ended the stream early (None for a plain short read).
    """

    def __init__(self, path, header_seconds, decoded_seconds, error=None):
        self.path = pathlib.Path(path)
        self.header_seconds = header_seconds
        self.decoded_seconds = decoded_seconds
        self.error = error
        claim = f"the header says {header_seconds:.1f} s, " if header_seconds is not None else ""
        stop = f" (decoding stopped on {error})" if error else ""
        super().__init__(
            f"{path}: truncated or damaged: {claim}only {decoded_seconds:.1f} s decode{stop}; "
            f"using the {decoded_seconds:.1f} s that exist"
        )

    def __reduce__(self):
        return (type(self), (self.path, self.header_seconds, self.decoded_seconds, self.error))


class _Decoding:
    """What a decoder learned about one file, checked once its stream ends."""

    def __init__(self):
        self.rate = None  # native rate of the decoded frames
        self.header_seconds = None  # the length the file claims, if it claims one
        self.frames = 0  # native frames decoded
        self.error = None  # the error that ended decoding after some audio

    def warn_if_short(self, path):
        decoded, header = self.frames / self.rate, self.header_seconds
        tolerance = max(_TRUNCATION_TOLERANCE_SECONDS, _TRUNCATION_TOLERANCE_FRACTION * (header or 0))
        if (header is not None and header - decoded > tolerance) or self.error is not None:
            # stacklevel 3: the caller of `stream_audio`'s iterator (load_audio, a fingerprinter...)
            warnings.warn(TruncatedAudioWarning(path, header, decoded, self.error), stacklevel=3)


def _checked_path(path, sample_rate):
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be > 0. Received: sample_rate={sample_rate}")
    path = pathlib.Path(path)
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes); expected audio")
    return path


def _open_soundfile(path):
    """`(libsndfile handle, None)`, or `(None, why libsndfile cannot read it)`."""
    try:
        return sf.SoundFile(str(path)), None
    except Exception as exc:  # LibsndfileError, RuntimeError, TypeError...
        return None, f"{type(exc).__name__}: {exc}"


def _undecodable(path, sndfile_error, exc):
    return AudioError(
        path,
        f"cannot decode audio: neither libsndfile ({sndfile_error}) nor FFmpeg "
        f"({type(exc).__name__}: {exc}) can read it",
    )


def _ffmpeg_blocks(path, sndfile_error, decoding):
    """Yields mono float32 frames of the first audio stream, decoded by FFmpeg packet by packet.

    A decoding error after some audio (a file cut through its last packet) ends the stream;
    `decoding` records it, with the rate, the header's length and the frames decoded.
    """
    import av  # only for what libsndfile cannot read

    try:
        container = av.open(str(path))
    except Exception as exc:  # av.FFmpegError subclasses, OSError
        raise _undecodable(path, sndfile_error, exc) from exc
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise AudioError(path, f"no audio stream (FFmpeg found: {', '.join(kinds)})")
        stream = container.streams.audio[0]
        decoding.header_seconds = _ffmpeg_seconds(av, container, stream)
        # Planar float at the first frame's rate and layout: later frames are converted to it.
        resampler = av.AudioResampler(format="fltp")
        try:
            for frame in itertools.chain(container.decode(stream), [None]):
                for out in resampler.resample(frame):
                    decoding.rate = out.sample_rate
                    decoding.frames += out.samples
                    yield out.to_ndarray().mean(axis=0, dtype=np.float32)
        except av.FFmpegError as exc:
            if not decoding.frames:
                raise _undecodable(path, sndfile_error, exc) from exc
            decoding.error = f"FFmpeg {type(exc).__name__}: {exc}"


def _ffmpeg_seconds(av, container, stream):
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _soundfile_blocks(path, handle, decoding):
    """Yields mono float32 blocks of what libsndfile decodes, up to its first short read.

    Every read is explicit and ends the stream when it comes back short: the header's frame
    count is not the length (mp3 Xing/VBRI headers of a cut file claim the whole song, and
    `SoundFile.blocks` fills the missing part with its previous buffer or zeros). A decoding
    error after some audio (a cut FLAC) also ends the stream; `decoding` records it.
    """
    with handle:
        decoding.rate = handle.samplerate
        if 0 <= handle.frames < 2**62:  # not SF_COUNT_MAX, "unknown"
            decoding.header_seconds = handle.frames / handle.samplerate
        while True:
            try:
                # soundfile caps a read at the header's remaining frames, never allocates more.
                block = handle.read(_READ_FRAMES, dtype="float32", always_2d=True)
            except Exception as exc:  # LibsndfileError, RuntimeError...
                if not decoding.frames:
                    reason = f"cannot decode audio ({type(exc).__name__}: {exc})"
                    raise AudioError(path, reason) from exc
                decoding.error = f"libsndfile {type(exc).__name__}: {exc}"
                return
            if len(block):
                decoding.frames += len(block)
                yield block.mean(axis=1, dtype=np.float32)
            if len(block) < _READ_FRAMES:
                return


def _finite(path, mono):
    if not np.isfinite(mono).all():
        raise AudioError(path, "contains NaN or Inf samples; expected finite audio")
    return mono


def load_audio(path, sample_rate=8000):
    """Reads an audio file as float32 mono at `sample_rate` (channels averaged, soxr resampling).

    libsndfile reads wav/flac/ogg/mp3/aiff...; anything else FFmpeg decodes (m4a/AAC, 3gp/AMR,
    wma, webm, the audio track of an mp4) is read through PyAV. The file is decoded block by
    block (`stream_audio`), so memory peaks at twice the result, not at the decoded file.

    Raises:
        AudioError: missing, empty, undecodable, zero-length, or non-finite audio.

    Warns:
        TruncatedAudioWarning: the file decodes shorter than its header says, or a decoding
            error ends it early (a cut or damaged file); what decoded is returned.
    """
    blocks = list(stream_audio(path, sample_rate, block_seconds=_LOAD_BLOCK_SECONDS))
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def stream_audio(path, sample_rate=8000, block_seconds=64.0):
    """Yields an audio file as float32 mono blocks at `sample_rate`, in bounded memory.

    Every block holds `round(block_seconds * sample_rate)` samples except the last;
    concatenated, they are exactly `load_audio(path, sample_rate)` (same decoder, same
    channel mean, and soxr's streaming resampler gives the one-shot result).

    >>> for block in stream_audio("two_hours.m4a", 8000, block_seconds=60):
    ...     peak = max(peak, np.abs(block).max())

    Raises:
        AudioError: as `load_audio`, possibly after some blocks were yielded.

    Warns:
        TruncatedAudioWarning: as `load_audio`, once, when decoding ends (before the last block).
    """
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be > 0. Received: block_seconds={block_seconds}")
    path = _checked_path(path, sample_rate)
    out_samples = max(1, int(round(block_seconds * sample_rate)))
    decoding = _Decoding()
    handle, sndfile_error = _open_soundfile(path)
    if handle is not None:
        native = _soundfile_blocks(path, handle, decoding)
    else:
        native = _ffmpeg_blocks(path, sndfile_error, decoding)
    first = next(native, None)
    if first is None and decoding.rate is None:
        raise AudioError(
            path,
            f"cannot decode audio: libsndfile cannot read it ({sndfile_error}) and FFmpeg "
            "decoded no samples from it (zero-length audio, or not audio at all)",
        )
    file_rate = decoding.rate  # FFmpeg's rate is its first frame's
    resampler = None
    if file_rate != sample_rate:
        resampler = stream_resampler(file_rate, sample_rate)
    pending, n_pending, n_yielded = [], 0, 0
    for block in itertools.chain([] if first is None else [first], native):
        _finite(path, block)
        out = resampler.resample_chunk(block) if resampler is not None else block
        pending.append(out)
        n_pending += len(out)
        if n_pending >= out_samples:
            joined = np.concatenate(pending)
            n_full = len(joined) - len(joined) % out_samples
            for start in range(0, n_full, out_samples):
                yield joined[start : start + out_samples].copy()
            n_yielded += n_full
            pending, n_pending = [joined[n_full:]], len(joined) - n_full
    if resampler is not None:
        pending.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    tail = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    if n_yielded + len(tail) == 0:
        raise AudioError(path, "contains no samples (zero-length audio)")
    decoding.warn_if_short(path)  # decoding is over: before the last block, so no caller misses it
    if len(tail):
        yield np.ascontiguousarray(tail, dtype=np.float32)


AudioInfo = collections.namedtuple("AudioInfo", "sample_rate channels seconds format")


def audio_info(path):
    """`AudioInfo(sample_rate, channels, seconds, format)` from the file header, without decoding.

    `seconds` is None when the container does not say (some streams are only measured by
    decoding them). It is what the header claims: a cut or damaged file decodes shorter
    (`load_audio` returns what decodes, with a `TruncatedAudioWarning`).

    Raises:
        AudioError: missing, empty or unreadable file.
    """
    path = _checked_path(path, 1)
    handle, sndfile_error = _open_soundfile(path)
    if handle is not None:
        with handle:
            return AudioInfo(
                handle.samplerate, handle.channels, handle.frames / handle.samplerate,
                f"{handle.format}/{handle.subtype}",
            )
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(path, "no audio stream")
            stream = container.streams.audio[0]
            return AudioInfo(
                stream.codec_context.sample_rate, stream.codec_context.channels,
                _ffmpeg_seconds(av, container, stream),
                f"{container.format.name}/{stream.codec_context.name}",
            )
    except av.FFmpegError as exc:
        raise _undecodable(path, sndfile_error, exc) from exc


def resample(audio, from_rate, to_rate):
    """Resamples mono audio in one go with soxr (the resampler of `load_audio`)."""
    return soxr.resample(audio, from_rate, to_rate)


def stream_resampler(from_rate, to_rate):
    """A soxr streaming resampler of float32 mono blocks: `.resample_chunk(block, last=False)`;
    concatenated, its outputs equal `resample` of the whole signal."""
    return soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32")


def has_encoder(name):
    """Whether PyAV's FFmpeg has the encoder `name`."""
    import av

    try:
        av.Codec(name, "w")
    except ValueError:  # PyAV's UnknownCodecError
        return False
    return True


def encode_decode(pcm, sample_rate, encoder_name, decoder_name, bit_rate):
    """int16 mono `pcm` encoded by FFmpeg's `encoder_name` at `bit_rate` bit/s (its last frame
    padded with silence) and decoded by `decoder_name`, through PyAV's codec contexts (no
    container): the decoded float32 samples and their rate."""
    import av

    encoder = av.CodecContext.create(encoder_name, "w")
    encoder.sample_rate, encoder.layout, encoder.format = sample_rate, "mono", "s16"
    encoder.bit_rate = int(bit_rate)
    encoder.open()
    decoder = av.CodecContext.create(decoder_name, "r")
    decoder.sample_rate, decoder.layout = sample_rate, "mono"
    if encoder.extradata:
        decoder.extradata = encoder.extradata  # Opus' header: its pre-skip
    frame = encoder.frame_size
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % frame, np.int16)])
    packets = []
    for start in range(0, len(pcm), frame):
        chunk = av.AudioFrame.from_ndarray(
            pcm[None, start : start + frame], format="s16", layout="mono"
        )
        chunk.sample_rate, chunk.pts = sample_rate, start
        packets += encoder.encode(chunk)
    packets += encoder.encode(None)
    decoded = [f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(p)]
    decoded += [f.to_ndarray().reshape(-1) for f in decoder.decode(None)]
    out = np.concatenate(decoded)
    if out.dtype == np.int16:
        out = out / np.float32(32768)
    return out.astype(np.float32), decoder.sample_rate
