"""Decoding audio files: float32 mono at a sample rate, whole or streamed in blocks.

libsndfile (through soundfile) reads wav/flac/ogg/mp3/aiff...; anything else FFmpeg decodes
(m4a/AAC, 3gp/AMR, wma, webm, the audio track of a video) is read through PyAV. soxr
resamples. This is the only module that imports soxr and PyAV.
"""

from __future__ import annotations

import collections
import itertools
import pathlib

import numpy as np
import soundfile as sf
import soxr

__all__ = ["AudioError", "AudioInfo", "audio_info", "load_audio", "resample", "stream_audio", "stream_resampler"]

_LOAD_BLOCK_SECONDS = 64.0  # decoding block of load_audio (bounds its native-rate buffers)


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


def _ffmpeg_blocks(path, sndfile_error):
    """Yields `(file rate, mono float32 frame)` for the first audio stream, decoded by FFmpeg."""
    import av  # only for what libsndfile cannot read

    try:
        container = av.open(str(path))
    except Exception as exc:  # av.FFmpegError subclasses, OSError
        raise _undecodable(path, sndfile_error, exc) from exc
    with container:
        if not container.streams.audio:
            kinds = sorted({s.type for s in container.streams}) or ["no streams"]
            raise AudioError(path, f"no audio stream (FFmpeg found: {', '.join(kinds)})")
        # Planar float at the first frame's rate and layout: later frames are converted to it.
        resampler = av.AudioResampler(format="fltp")
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    yield out.sample_rate, out.to_ndarray().mean(axis=0, dtype=np.float32)
            for out in resampler.resample(None):
                yield out.sample_rate, out.to_ndarray().mean(axis=0, dtype=np.float32)
        except av.FFmpegError as exc:
            raise _undecodable(path, sndfile_error, exc) from exc


def _soundfile_blocks(path, handle, block_frames):
    with handle:
        try:
            for block in handle.blocks(block_frames, dtype="float32", always_2d=True):
                yield block.mean(axis=1, dtype=np.float32)
        except Exception as exc:
            raise AudioError(path, f"cannot decode audio ({type(exc).__name__}: {exc})") from exc


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
    """
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be > 0. Received: block_seconds={block_seconds}")
    path = _checked_path(path, sample_rate)
    out_samples = max(1, int(round(block_seconds * sample_rate)))
    handle, sndfile_error = _open_soundfile(path)
    if handle is not None:
        file_rate = handle.samplerate
        native = _soundfile_blocks(path, handle, max(1, int(block_seconds * file_rate)))
    else:
        frames = _ffmpeg_blocks(path, sndfile_error)
        first = next(frames, None)
        if first is None:
            raise AudioError(
                path,
                f"cannot decode audio: libsndfile cannot read it ({sndfile_error}) and FFmpeg "
                "decoded no samples from it (zero-length audio, or not audio at all)",
            )
        file_rate = first[0]
        native = itertools.chain([first[1]], (f for _, f in frames))
    resampler = None
    if file_rate != sample_rate:
        resampler = stream_resampler(file_rate, sample_rate)
    pending, n_pending, n_yielded = [], 0, 0
    for block in native:
        _finite(path, block)
        out = resampler.resample_chunk(block) if resampler is not None else block
        pending.append(out)
        n_pending += len(out)
        if n_pending >= out_samples:
            joined = np.concatenate(pending)
            n_full = len(joined) - len(joined) % out_samples
            for first in range(0, n_full, out_samples):
                yield joined[first : first + out_samples].copy()
            n_yielded += n_full
            pending, n_pending = [joined[n_full:]], len(joined) - n_full
    if resampler is not None:
        pending.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    tail = np.concatenate(pending) if pending else np.zeros(0, np.float32)
    if n_yielded + len(tail) == 0:
        raise AudioError(path, "contains no samples (zero-length audio)")
    if len(tail):
        yield np.ascontiguousarray(tail, dtype=np.float32)


AudioInfo = collections.namedtuple("AudioInfo", "sample_rate channels seconds format")


def audio_info(path):
    """`AudioInfo(sample_rate, channels, seconds, format)` from the file header, without decoding.

    `seconds` is None when the container does not say (some streams are only measured by
    decoding them).

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
            seconds = None
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            return AudioInfo(
                stream.codec_context.sample_rate, stream.codec_context.channels, seconds,
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
