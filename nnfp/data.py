"""Audio loading and the tf.data pipeline of (anchor, replica) pairs for contrastive training.

Follows the data recipe of Chang et al., ICASSP 2021 ("Neural Audio Fingerprint for
High-specific Audio Retrieval based on Contrastive Learning"): 1 s segments at 8 kHz with a
0.5 s hop; a replica is the same segment taken at a small random time offset, mixed with
background noise at a random SNR and convolved with a room/microphone impulse response.
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import itertools
import json
import logging
import math
import os
import pathlib

import numpy as np
import soundfile as sf
import soxr
import tensorflow as tf

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioError",
    "AudioInfo",
    "MANIFEST_EXTENSIONS",
    "PairPipeline",
    "audio_info",
    "is_prepared_cache",
    "list_audio_files",
    "load_audio",
    "load_prepared",
    "load_source",
    "load_tracks",
    "make_pair_dataset",
    "make_query",
    "make_validation_pairs",
    "read_manifest",
    "segment_starts",
    "stream_audio",
    "usability_problem",
]

logger = logging.getLogger(__name__)

# Read by libsndfile (the fast path) or, failing that, by FFmpeg through PyAV: phone
# recordings (m4a/AAC, 3gp/AMR), downloads (webm/opus, wma) and the audio track of videos.
AUDIO_EXTENSIONS = (
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc",
    ".au", ".caf", ".w64", ".m4a", ".m4b", ".aac", ".mp4", ".m4v", ".mov", ".3gp", ".3g2",
    ".amr", ".awb", ".wma", ".asf", ".webm", ".mka", ".mkv", ".ac3", ".eac3", ".mp2",
    ".wv", ".ape", ".spx",
)  # fmt: skip
MANIFEST_EXTENSIONS = (".csv", ".json")
# `format` field of the manifest.json that `nnfp data prepare` writes (see nnfp/prepare.py).
PREPARED_FORMAT = "nnfp-prepared-audio"

# Audio banks are stored as int16 (half the memory of float32; 16-bit precision is far
# below the noise floor of any augmentation) and scaled back by this factor on read. A power
# of two keeps int16 -> float32 exact whether a graph divides or multiplies by it.
_INT16_SCALE = 32768.0
_VALIDATION_CHUNK = 256
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


# ----------------------------------------------------------------------------- files


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
        resampler = soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32")
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


def read_manifest(path):
    """Reads a CSV or JSON manifest of audio files -> list of `(path, track_id or None)`.

    CSV: a header row with a `path` (or `file`) column and an optional `track_id` column.
    JSON: a list of such objects (or of plain path strings), or `{"tracks": [...]}`.
    Relative paths are relative to the manifest's folder.

    Raises:
        FileNotFoundError: the manifest does not exist or lists no file.
        ValueError: the manifest cannot be parsed or an entry has no path.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Manifest not found: {path}")
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        else:
            with open(path) as handle:
                rows = json.load(handle)
            if isinstance(rows, dict):
                rows = rows.get("tracks")
    except (OSError, ValueError, csv.Error) as exc:
        raise ValueError(f"{path}: cannot parse manifest ({type(exc).__name__}: {exc})") from exc
    if not isinstance(rows, list):
        raise ValueError(
            f"{path}: expected a list of entries (or {{'tracks': [...]}}) with a 'path' field"
        )
    entries = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            row = {"path": row}
        file = row.get("path") or row.get("file") if isinstance(row, dict) else None
        if not file:
            raise ValueError(
                f"{path}: entry {i} has no 'path' (or 'file') field; expected columns "
                f"path[,track_id]. Received: {row!r}"
            )
        file = pathlib.Path(file)
        if not file.is_absolute():
            file = path.parent / file
        track_id = row.get("track_id")
        entries.append((file, None if track_id in (None, "") else str(track_id)))
    if not entries:
        raise FileNotFoundError(f"No audio files given: the manifest {path} lists no file")
    return entries


def _walk_files(root):
    """Every file path under `root`, following symlinked folders; a folder reached again
    (a symlink loop, or two links to one folder) is not read twice."""
    seen, files = set(), []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        files.extend(pathlib.Path(folder) / name for name in names)
    return files


def list_audio_files(source, extensions=AUDIO_EXTENSIONS, ignored=None):
    """Lists audio files: every file under a directory (recursive, sorted, symlinked folders
    followed), the entries of a CSV/JSON manifest (see `read_manifest`), one audio file, or
    a list of paths (kept in order).

    Args:
        source: a directory, a manifest (`.csv`/`.json`), an audio file, or a list of paths.
        extensions: suffixes to keep when scanning a directory (case-insensitive).
        ignored: a list that receives `(path, reason)` for every other file of the directory
            (other extension, broken link), so callers can report what they left out.

    Raises:
        FileNotFoundError: the directory does not exist or holds no matching file.
    """
    if isinstance(source, str | os.PathLike):
        root = pathlib.Path(source)
        if root.is_file() and root.suffix.lower() in MANIFEST_EXTENSIONS:
            return [file for file, _ in read_manifest(root)]
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise FileNotFoundError(f"Audio directory not found: {root}")
        wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
        files, others = [], []
        for path in sorted(_walk_files(root)):
            if not path.is_file():
                others.append((path, "broken link or not a regular file"))
            elif path.suffix.lower() in wanted:
                files.append(path)
            else:
                others.append((path, f"not an audio file extension ({path.suffix or 'none'})"))
        if ignored is not None:
            ignored.extend(others)
        elif others:
            logger.warning(
                "Left out %d file(s) under %s that are not audio, e.g. %s: %s",
                len(others), root, others[0][0], others[0][1],
            )  # fmt: skip
        if not files:
            raise FileNotFoundError(
                f"No audio files in {root} (searched recursively for extensions "
                f"{', '.join(sorted(wanted))})"
            )
        return files
    files = [pathlib.Path(p) for p in source]
    if not files:
        raise FileNotFoundError("No audio files given: the list of paths is empty")
    return files


def usability_problem(audio, sample_rate, min_seconds, peak=None):
    """Why decoded mono `audio` cannot be used for training (None when it can).

    `audio` may also be a sample count, with the `peak` absolute amplitude (float scale)
    measured while streaming.
    """
    n_samples = audio if peak is not None else len(audio)
    if n_samples < int(round(min_seconds * sample_rate)):
        return f"too short: {n_samples / sample_rate:.3f} s < min_seconds={min_seconds}"
    if peak is None:
        peak = np.max(np.abs(audio)) if len(audio) else 0
        if audio.dtype == np.int16:
            peak = peak / _INT16_SCALE
    if peak < 1 / 32768:
        return "silent: peak amplitude below one 16-bit step"
    return None


def load_tracks(paths, sample_rate=8000, min_seconds=1.0):
    """Decodes many files in parallel, skipping (and reporting) unusable ones.

    Returns:
        `(tracks, kept_paths, skipped)`: float32 mono arrays, their paths, and
        `(path, reason)` for every unreadable, too-short or silent file.
    """
    paths = [pathlib.Path(p) for p in paths]

    def load_one(path):
        try:
            audio = load_audio(path, sample_rate)
        except AudioError as exc:
            return None, exc.reason
        except Exception as exc:  # one bad file must never stop a large scan
            return None, f"unexpected error: {type(exc).__name__}: {exc}"
        problem = usability_problem(audio, sample_rate, min_seconds)
        return (None, problem) if problem else (audio, None)

    workers = min(32, (os.cpu_count() or 1) + 4)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(load_one, paths))
    tracks, kept, skipped = [], [], []
    for path, (audio, reason) in zip(paths, results, strict=True):
        if audio is None:
            skipped.append((path, reason))
        else:
            tracks.append(audio)
            kept.append(path)
    _warn_skipped(skipped, len(paths))
    return tracks, kept, skipped


def _warn_skipped(skipped, total):
    if skipped:
        logger.warning(
            "Skipped %d of %d audio files, e.g. %s: %s",
            len(skipped),
            total,
            skipped[0][0],
            skipped[0][1],
        )


def is_prepared_cache(path):
    """True when `path` is a folder written by `nnfp data prepare` (has its manifest.json)."""
    manifest = pathlib.Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        with open(manifest) as handle:
            return json.load(handle).get("format") == PREPARED_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_prepared(directory, sample_rate=None, min_seconds=0.0):
    """Tracks of a cache written by `nnfp data prepare`, as int16 arrays (no decoding).

    Each track is a read-only view of a memory-mapped shard (`int16 / 32768` is the float
    signal); `PairPipeline` takes them as they are. Tracks in a missing or damaged shard,
    or shorter than `min_seconds`, are skipped and reported, like `load_tracks`.

    Returns:
        `(tracks, source_paths, skipped)`.

    Raises:
        FileNotFoundError: not a prepared cache.
        ValueError: the cache was prepared at another sample rate than `sample_rate`.
    """
    directory = pathlib.Path(directory)
    if not is_prepared_cache(directory):
        raise FileNotFoundError(
            f"Not a prepared audio cache: {directory} (expected manifest.json written by "
            "`nnfp data prepare SRC_DIR OUT_DIR`)"
        )
    with open(directory / "manifest.json") as handle:
        manifest = json.load(handle)
    rate = int(manifest["sample_rate"])
    if sample_rate is not None and rate != int(sample_rate):
        raise ValueError(
            f"{directory}: prepared at {rate} Hz but {sample_rate} Hz is needed; run "
            f"`nnfp data prepare SRC {directory} --sample-rate {sample_rate}` into a new folder"
        )
    shards, broken = {}, {}
    tracks, kept, skipped = [], [], []
    for record in manifest["tracks"]:
        name = record["shard"]
        if name not in shards and name not in broken:
            try:
                shards[name] = np.load(directory / "shards" / name, mmap_mode="r")
                if shards[name].dtype != np.int16 or shards[name].ndim != 1:
                    raise ValueError(f"expected 1-D int16, found {shards[name].dtype}")
            except (OSError, ValueError) as exc:
                shards.pop(name, None)
                broken[name] = f"shard {name} unreadable ({type(exc).__name__}: {exc})"
        path = pathlib.Path(record["path"])
        if name in broken:
            skipped.append((path, broken[name]))
            continue
        start, length = int(record["offset"]), int(record["n_samples"])
        audio = shards[name][start : start + length]
        if len(audio) != length:
            skipped.append((path, f"shard {name} is truncated"))
            continue
        problem = usability_problem(audio, rate, min_seconds)
        if problem:
            skipped.append((path, problem))
            continue
        tracks.append(audio)
        kept.append(path)
    _warn_skipped(skipped, len(manifest["tracks"]))
    return tracks, kept, skipped


def load_source(source, sample_rate=8000, min_seconds=1.0, as_float=False):
    """Loads every track of a folder, a CSV/JSON manifest or a prepared cache.

    A folder holding the manifest of `nnfp data prepare` is read from its shards (int16
    views, or float32 with `as_float=True`); anything else goes through
    `list_audio_files` and `load_tracks`. Returns `(tracks, paths, skipped)`.
    """
    if isinstance(source, str | os.PathLike) and is_prepared_cache(source):
        tracks, kept, skipped = load_prepared(source, sample_rate, min_seconds)
        if as_float:
            tracks = [np.asarray(t, np.float32) / np.float32(_INT16_SCALE) for t in tracks]
        return tracks, kept, skipped
    return load_tracks(list_audio_files(source), sample_rate=sample_rate, min_seconds=min_seconds)


def segment_starts(n_samples, segment_samples, hop_samples):
    """Start indices (int64) of every full `segment_samples` window at a `hop_samples` hop."""
    if segment_samples <= 0:
        raise ValueError(
            f"segment_samples must be > 0. Received: segment_samples={segment_samples}"
        )
    if hop_samples <= 0:
        raise ValueError(f"hop_samples must be > 0. Received: hop_samples={hop_samples}")
    if n_samples < segment_samples:
        return np.zeros((0,), np.int64)
    return np.arange(0, n_samples - segment_samples + 1, hop_samples, dtype=np.int64)


# ----------------------------------------------------------------------------- maths
# One implementation of the degradations, shared by training, validation and queries.


def _mix_at_snr(signals, noise, snr_db):
    """Adds `noise` scaled so that 10*log10(P_signal / P_noise) == snr_db, row by row.

    signals, noise: (batch, samples); snr_db: (batch,). Silent rows give no NaN: the
    noise scale is then 0 and the signal passes unchanged.
    """
    signal_power = tf.reduce_mean(tf.square(signals), axis=-1, keepdims=True)  # (batch, 1)
    noise_power = tf.reduce_mean(tf.square(noise), axis=-1, keepdims=True)  # (batch, 1)
    target_noise_power = signal_power * tf.pow(10.0, -snr_db[:, None] / 10.0)
    scale = tf.sqrt(tf.math.divide_no_nan(target_noise_power, noise_power))  # (batch, 1)
    return signals + scale * noise


def _next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _fft_convolve(signals, impulse_responses=None, ir_spectra=None, n_fft=None):
    """Linear convolution truncated to the signal length: `np.convolve(x, h)[:len(x)]`.

    signals: (batch, samples); impulse_responses: (batch, ir_samples), static last dims.
    Or `ir_spectra`: (batch, n_fft // 2 + 1) precomputed `rfft(h, [n_fft])` with
    `n_fft >= samples + ir_samples - 1`, which saves a third of the FFT work.
    """
    length = int(signals.shape[-1])
    if ir_spectra is None:
        n_fft = _next_pow2(length + int(impulse_responses.shape[-1]) - 1)
        ir_spectra = tf.signal.rfft(impulse_responses, [n_fft])
    spectrum = tf.signal.rfft(signals, [n_fft]) * ir_spectra
    return tf.signal.irfft(spectrum, [n_fft])[..., :length]  # (batch, samples)


def _apply_impulse_responses(signals, impulse_responses=None, ir_spectra=None, n_fft=None):
    """FFT convolution, then rescaled to the input energy so loudness does not drift."""
    wet = _fft_convolve(signals, impulse_responses, ir_spectra, n_fft)
    dry_power = tf.reduce_mean(tf.square(signals), axis=-1, keepdims=True)
    wet_power = tf.reduce_mean(tf.square(wet), axis=-1, keepdims=True)
    return wet * tf.sqrt(tf.math.divide_no_nan(dry_power, wet_power))


def _to_int16(audio):
    if audio.dtype == np.int16:  # already PCM (a prepared cache): stored as is
        return audio
    return np.clip(np.round(audio * _INT16_SCALE), -32768, 32767).astype(np.int16)


def _windows(bank, starts, length):
    """Gathers `bank[s:s+length]` for every start: (n,) -> (n, length) float32."""
    grid = starts[:, None] + tf.range(length, dtype=tf.int64)[None, :]  # (n, length)
    return tf.cast(tf.gather(bank, grid), tf.float32) / _INT16_SCALE


# ----------------------------------------------------------------------------- pipeline


def _check_range(name, value):
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair. Received: {name}={value}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be finite with low <= high. Received: {name}={value}")
    return low, high


def _check_bank(name, arrays):
    if arrays is None:
        return None
    if len(arrays) == 0:
        raise ValueError(
            f"{name} must be None or a non-empty list of 1-D arrays. Received: {name}=[]"
        )
    checked = []
    for i, x in enumerate(arrays):
        x = np.asarray(x)
        x = x / np.float32(_INT16_SCALE) if x.dtype == np.int16 else x.astype(np.float32)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty 1-D array. Received shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name}[{i}] contains NaN or Inf")
        checked.append(x)
    return checked


def _cpu_variable(array):
    # A variable, not a constant: banks can exceed the 2 GB limit of serialised graphs.
    with tf.device("/CPU:0"):
        return tf.Variable(array, trainable=False)


class PairPipeline:
    """Source of (anchor, replica) waveform pairs for contrastive fingerprint training.

    All tracks live in one int16 array with a table of segment starts, so a batch is one
    vectorised `tf.gather` plus batched augmentation. A replica of an anchor starts at a
    random offset within `offset_margin` seconds (clipped to its track), then gets, each
    with its own probability, an impulse response (batched FFT convolution with cached IR
    spectra over the replica and the `reverb_context_seconds` before it, so earlier notes'
    reverberation reaches it; energy re-normalised), background noise at a uniform random
    SNR (`snr_db_range`), speech at its own SNR (`speech_snr_db_range`; off in the paper),
    and a random gain. With `random_anchors`, an anchor starts anywhere in the hop after its
    grid position (a fresh draw every batch), so training sees every alignment. SNRs are energy ratios over the 1 s segment, as in the original
    `background_mix`; unlike it the mix is not max-normalised (the gain does that job).
    Random draws are stateless, seeded by `(seed, batch index)`: reproducible streams.
    The banks are CPU `tf.Variable`s (no 2 GB graph limit); build the pipeline outside
    any `tf.distribute` strategy scope so they are not mirrored onto accelerators.

    Args:
        tracks: list of 1-D float arrays (mono, at `sample_rate`), or int16 PCM arrays
            (`load_prepared`) stored without conversion; tracks shorter than one segment
            are skipped.
        noise: optional list of 1-D background-noise arrays.
        speech: optional list of 1-D speech arrays (a bank separate from `noise`).
        impulse_responses: optional list of 1-D impulse responses (zero-padded to the
            longest one).
        sample_rate, segment_seconds, hop_seconds: segmentation, as in the paper (8 kHz,
            1 s, 0.5 s).
        offset_margin: maximum replica time shift in seconds.
        snr_db_range: (low, high) SNR in dB of the noise mix.
        noise_prob, ir_prob: per-replica probability of each degradation.
        speech_prob: per-replica probability of the speech mix.
        speech_snr_db_range: (low, high) SNR in dB of the speech mix.
        gain_db_range: (low, high) random gain in dB applied last.
        random_anchors: draw anchor starts uniformly within the hop (not on the grid).
        reverb_context_seconds: audio before the replica that passes through the room.

    Output of `dataset(...)`: batches `(anchors, replicas)` of float32, shapes
    `(n_anchors, segment_samples)` and `(batch_size - n_anchors, segment_samples)`;
    replica j comes from anchor `j % n_anchors`.

    Example:
        pipeline = PairPipeline(tracks, noise=noise, impulse_responses=irs)
        ds = pipeline.dataset(batch_size=120, n_anchors=60, seed=0)
        anchors, replicas = next(iter(ds))  # (60, 8000), (60, 8000)
    """

    def __init__(
        self,
        tracks,
        noise=None,
        impulse_responses=None,
        sample_rate=8000,
        segment_seconds=1.0,
        hop_seconds=0.5,
        offset_margin=0.2,
        snr_db_range=(0.0, 10.0),
        noise_prob=1.0,
        ir_prob=1.0,
        gain_db_range=(0.0, 0.0),
        speech=None,
        speech_prob=1.0,
        speech_snr_db_range=(0.0, 10.0),
        random_anchors=False,
        reverb_context_seconds=0.0,
    ):
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0. Received: sample_rate={sample_rate}")
        if segment_seconds <= 0:
            raise ValueError(
                f"segment_seconds must be > 0. Received: segment_seconds={segment_seconds}"
            )
        if hop_seconds <= 0:
            raise ValueError(f"hop_seconds must be > 0. Received: hop_seconds={hop_seconds}")
        if offset_margin < 0:
            raise ValueError(f"offset_margin must be >= 0. Received: offset_margin={offset_margin}")
        if reverb_context_seconds < 0:
            raise ValueError(
                f"reverb_context_seconds must be >= 0. Received: reverb_context_seconds={reverb_context_seconds}"
            )
        for name, prob in (
            ("noise_prob", noise_prob),
            ("ir_prob", ir_prob),
            ("speech_prob", speech_prob),
        ):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={prob}")
        self.sample_rate = sample_rate
        self.segment_seconds = segment_seconds
        self.hop_seconds = hop_seconds
        self.offset_margin = offset_margin
        self.snr_db_range = _check_range("snr_db_range", snr_db_range)
        self.noise_prob = float(noise_prob)
        self.ir_prob = float(ir_prob)
        self.gain_db_range = _check_range("gain_db_range", gain_db_range)
        self.speech_prob = float(speech_prob)
        self.speech_snr_db_range = _check_range("speech_snr_db_range", speech_snr_db_range)
        self.segment_samples = int(round(segment_seconds * sample_rate))
        self.hop_samples = int(round(hop_seconds * sample_rate))
        self.margin_samples = int(round(offset_margin * sample_rate))
        self.random_anchors = bool(random_anchors)
        self.reverb_context_seconds = float(reverb_context_seconds)
        self.context_samples = int(round(reverb_context_seconds * sample_rate))
        if self.segment_samples < 1 or self.hop_samples < 1:
            raise ValueError(
                "segment_seconds and hop_seconds must each span at least one sample. "
                f"Received: segment_seconds={segment_seconds}, hop_seconds={hop_seconds}"
            )

        self._build_track_bank(tracks)
        noise = _check_bank("noise", noise)
        speech = _check_bank("speech", speech)
        impulse_responses = _check_bank("impulse_responses", impulse_responses)
        self._noise = None if noise is None else self._build_clip_bank(noise)
        self._speech = None if speech is None else self._build_clip_bank(speech)
        self._ir_spectra = None
        if impulse_responses is not None:
            ir_length = max(len(ir) for ir in impulse_responses)
            padded = np.zeros((len(impulse_responses), ir_length), np.float32)
            for i, ir in enumerate(impulse_responses):
                padded[i, : len(ir)] = ir
            # Spectra computed once: a batch then needs 2 FFTs per replica instead of 3.
            self._ir_n_fft = _next_pow2(self.segment_samples + self.context_samples + ir_length - 1)
            spectra = tf.signal.rfft(tf.constant(padded), [self._ir_n_fft]).numpy()
            self._ir_spectra = _cpu_variable(spectra)  # (n_ir, n_fft // 2 + 1) complex64
            self.n_impulse_responses = len(impulse_responses)
        self._sample_fn = tf.function(
            self._sample,
            input_signature=[
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([2], tf.int64),
            ],
        )

    # -- banks

    def _build_track_bank(self, tracks):
        if tracks is None or len(tracks) == 0:
            raise ValueError("tracks must be a non-empty list of 1-D arrays. Received: tracks=[]")
        seg, hop = self.segment_samples, self.hop_samples
        kept, starts, low, high = [], [], [], []
        offset = 0
        for i, track in enumerate(tracks):
            track = np.asarray(track)
            if track.ndim != 1:
                raise ValueError(f"tracks[{i}] must be 1-D (mono). Received shape {track.shape}")
            if len(track) < seg:
                continue
            if not np.isfinite(track).all():
                raise ValueError(f"tracks[{i}] contains NaN or Inf")
            track_starts = segment_starts(len(track), seg, hop)
            starts.append(offset + track_starts)
            low.append(np.full(len(track_starts), offset, np.int64))
            high.append(np.full(len(track_starts), offset + len(track) - seg, np.int64))
            kept.append(track)
            offset += len(track)
        if not kept:
            raise ValueError(
                f"No segment of {self.segment_seconds} s in any of the {len(tracks)} tracks: "
                f"every track is shorter than {seg} samples at sample_rate={self.sample_rate}"
            )
        bank = np.empty(offset, np.int16)
        position = 0
        for track in kept:
            bank[position : position + len(track)] = _to_int16(track)
            position += len(track)
        self.n_tracks = len(kept)
        self.n_segments = int(sum(len(s) for s in starts))
        self.segment_start = np.concatenate(starts)  # (n_segments,) absolute start
        # Building the variable briefly needs ~3x the int16 bank (numpy + conversion copies).
        self._audio = _cpu_variable(bank)  # (total_samples,) int16
        del bank
        self._segment_start = tf.constant(self.segment_start)
        self._segment_low = tf.constant(np.concatenate(low))  # earliest start in its track
        self._segment_high = tf.constant(np.concatenate(high))  # latest start in its track

    def _build_clip_bank(self, clips):
        """Noise or speech clips in one int16 array, for uniform excerpt draws."""
        seg = self.segment_samples
        clips = [np.resize(x, seg) if len(x) < seg else x for x in clips]  # tile short clips
        lengths = np.array([len(x) for x in clips], np.int64)
        n_starts = lengths - seg + 1  # valid excerpt starts per clip
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        cumulative = np.cumsum(n_starts)
        # A uniform draw u in [0, total starts) maps to clip i = searchsorted(cumulative, u)
        # and absolute start u + (offsets[i] - (cumulative[i] - n_starts[i])).
        return {
            "audio": _cpu_variable(np.concatenate([_to_int16(x) for x in clips])),
            "cumulative": tf.constant(cumulative),
            "shift": tf.constant(offsets - (cumulative - n_starts)),
            "total_starts": int(cumulative[-1]),
        }

    def _excerpts(self, bank, n, seed):
        """`n` uniformly drawn one-segment excerpts of a clip bank and their starts."""
        draw = tf.random.stateless_uniform([n], seed, 0, bank["total_starts"], tf.int64)
        clip = tf.searchsorted(bank["cumulative"], draw, side="right")
        start = draw + tf.gather(bank["shift"], clip)
        return _windows(bank["audio"], start, self.segment_samples), start

    # -- sampling

    def _sample(self, segment_ids, n_replicas, seed):
        """Anchors, replicas and every random draw for one batch (a dict of tensors)."""
        seg = self.segment_samples
        seeds = tf.random.experimental.stateless_split(seed, 8)  # (8, 2)
        n_anchors = tf.shape(segment_ids)[0]
        anchor_start = tf.gather(self._segment_start, segment_ids)  # (n_anchors,)
        if self.random_anchors:
            # Anywhere in the hop after the grid start (clipped to the track): over the
            # epochs the model sees every sample position, as queries in the wild do.
            jitter = tf.random.stateless_uniform(
                [n_anchors], tf.random.experimental.stateless_fold_in(seed, 8), 0, self.hop_samples, tf.int64
            )
            anchor_start = tf.minimum(anchor_start + jitter, tf.gather(self._segment_high, segment_ids))
        anchors = _windows(self._audio, anchor_start, seg)  # (n_anchors, seg)

        source = tf.range(n_replicas) % n_anchors  # (n_replicas,) tiled anchor order
        source_ids = tf.gather(segment_ids, source)
        shift = tf.random.stateless_uniform(
            [n_replicas], seeds[0], -self.margin_samples, self.margin_samples + 1, tf.int64
        )
        replica_start = tf.clip_by_value(
            tf.gather(anchor_start, source) + shift,
            tf.gather(self._segment_low, source_ids),
            tf.gather(self._segment_high, source_ids),
        )
        clean = _windows(self._audio, replica_start, seg)  # (n_replicas, seg)
        out = {
            "anchors": anchors,
            "clean_replicas": clean,
            "replica_start": replica_start,
            "offset": replica_start - tf.gather(anchor_start, source),
        }
        replicas = clean

        if self._ir_spectra is not None:
            # The room comes first (it colours the music, not the noise at the phone), and
            # it hears `context_samples` of audio before the replica, so reverberation tails
            # of earlier notes reach it as they do in a real room.
            n_ir = self.n_impulse_responses
            ir_index = tf.random.stateless_uniform([n_replicas], seeds[4], 0, n_ir, tf.int32)
            ir_on = tf.random.stateless_uniform([n_replicas], seeds[5]) < self.ir_prob
            context = self.context_samples
            dry = clean
            if context:
                low = tf.gather(self._segment_low, source_ids)
                grid = (replica_start - context)[:, None] + tf.range(seg + context, dtype=tf.int64)[None, :]
                inside = tf.cast(grid >= low[:, None], tf.float32)  # nothing before the track
                dry = tf.cast(tf.gather(self._audio, tf.maximum(grid, 0)), tf.float32) / _INT16_SCALE * inside
            reverberant = _fft_convolve(
                dry, ir_spectra=tf.gather(self._ir_spectra, ir_index), n_fft=self._ir_n_fft
            )[:, context:]  # (n_replicas, seg)
            dry_power = tf.reduce_mean(tf.square(clean), axis=-1, keepdims=True)
            wet_power = tf.reduce_mean(tf.square(reverberant), axis=-1, keepdims=True)
            reverberant = reverberant * tf.sqrt(tf.math.divide_no_nan(dry_power, wet_power))
            replicas = tf.where(ir_on[:, None], reverberant, replicas)
            out.update(ir_index=ir_index, ir_on=ir_on)

        if self._noise is not None:
            snr_db = tf.random.stateless_uniform([n_replicas], seeds[1], *self.snr_db_range)
            noise, noise_start = self._excerpts(self._noise, n_replicas, seeds[2])
            noise_on = tf.random.stateless_uniform([n_replicas], seeds[3]) < self.noise_prob
            noisy = _mix_at_snr(replicas, noise, snr_db)
            replicas = tf.where(noise_on[:, None], noisy, replicas)
            out.update(snr_db=snr_db, noise_start=noise_start, noise_on=noise_on)

        if self._speech is not None and self.speech_prob > 0:
            speech_seeds = tf.random.experimental.stateless_split(seeds[7], 3)  # (3, 2)
            speech_snr_db = tf.random.stateless_uniform(
                [n_replicas], speech_seeds[0], *self.speech_snr_db_range
            )
            speech, speech_start = self._excerpts(self._speech, n_replicas, speech_seeds[1])
            speech_on = tf.random.stateless_uniform([n_replicas], speech_seeds[2]) < self.speech_prob
            mixed = _mix_at_snr(replicas, speech, speech_snr_db)
            replicas = tf.where(speech_on[:, None], mixed, replicas)
            out.update(speech_snr_db=speech_snr_db, speech_start=speech_start, speech_on=speech_on)

        if self.gain_db_range != (0.0, 0.0):
            gain_db = tf.random.stateless_uniform([n_replicas], seeds[6], *self.gain_db_range)
            replicas = replicas * tf.pow(10.0, gain_db / 20.0)[:, None]
            out.update(gain_db=gain_db)

        out["replicas"] = tf.ensure_shape(replicas, [None, seg])
        out["anchors"] = tf.ensure_shape(anchors, [None, seg])
        return out

    def sample(self, segment_ids, n_replicas=None, seed=(0, 0)):
        """One batch for explicit segment ids, with all random draws (for tests/inspection).

        Returns a dict of numpy arrays: `anchors`, `replicas`, `clean_replicas` (shifted but
        not degraded), `replica_start`, `offset`, and when enabled `snr_db`, `noise_start`,
        `noise_on`, `speech_snr_db`, `speech_start`, `speech_on`, `ir_index`, `ir_on`,
        `gain_db`.
        """
        segment_ids = tf.constant(np.asarray(segment_ids, np.int64).reshape(-1))
        n_replicas = int(segment_ids.shape[0] if n_replicas is None else n_replicas)
        out = self._sample_fn(
            segment_ids, tf.constant(n_replicas, tf.int32), tf.constant(seed, tf.int64)
        )
        return {k: v.numpy() for k, v in out.items()}

    def dataset(self, batch_size, n_anchors, shuffle=True, seed=0, repeat=True):
        """`tf.data.Dataset` of `(anchors, replicas)` batches (see the class docstring).

        The stream is reproducible for a fixed `seed`. With `repeat=False`, re-iterating
        reshuffles the segments but reuses the per-batch-position augmentation seeds.
        """
        if not isinstance(n_anchors, int | np.integer) or n_anchors < 1:
            raise ValueError(f"n_anchors must be an integer >= 1. Received: n_anchors={n_anchors}")
        if not isinstance(batch_size, int | np.integer) or batch_size < 2 * n_anchors:
            raise ValueError(
                "batch_size must be an integer >= 2 * n_anchors so every anchor has a replica. "
                f"Received: batch_size={batch_size}, n_anchors={n_anchors}"
            )
        if n_anchors > self.n_segments:
            raise ValueError(
                f"n_anchors={n_anchors} exceeds the {self.n_segments} segments available: "
                "no full batch can be formed"
            )
        n_replicas = int(batch_size - n_anchors)
        seed = int(seed)
        ds = tf.data.Dataset.range(self.n_segments)
        if shuffle:
            ds = ds.shuffle(self.n_segments, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(int(n_anchors), drop_remainder=True)
        if repeat:
            ds = ds.repeat()
        ds = ds.enumerate()

        def build(batch_index, segment_ids):
            out = self._sample(
                segment_ids, n_replicas, tf.stack([tf.constant(seed, tf.int64), batch_index])
            )
            return out["anchors"], out["replicas"]

        ds = ds.map(build, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)


def make_pair_dataset(
    tracks,
    batch_size,
    n_anchors,
    noise=None,
    impulse_responses=None,
    sample_rate=8000,
    segment_seconds=1.0,
    hop_seconds=0.5,
    offset_margin=0.2,
    snr_db_range=(0.0, 10.0),
    noise_prob=1.0,
    ir_prob=1.0,
    gain_db_range=(0.0, 0.0),
    speech=None,
    speech_prob=1.0,
    speech_snr_db_range=(0.0, 10.0),
    random_anchors=False,
    reverb_context_seconds=0.0,
    shuffle=True,
    seed=0,
    repeat=True,
):
    """`tf.data.Dataset` of `(anchors, replicas)` training batches; see `PairPipeline`."""
    pipeline = PairPipeline(
        tracks,
        noise=noise,
        impulse_responses=impulse_responses,
        sample_rate=sample_rate,
        segment_seconds=segment_seconds,
        hop_seconds=hop_seconds,
        offset_margin=offset_margin,
        snr_db_range=snr_db_range,
        noise_prob=noise_prob,
        ir_prob=ir_prob,
        gain_db_range=gain_db_range,
        speech=speech,
        speech_prob=speech_prob,
        speech_snr_db_range=speech_snr_db_range,
        random_anchors=random_anchors,
        reverb_context_seconds=reverb_context_seconds,
    )
    return pipeline.dataset(batch_size, n_anchors, shuffle=shuffle, seed=seed, repeat=repeat)


def make_validation_pairs(
    tracks,
    n_segments_max=None,
    noise=None,
    impulse_responses=None,
    sample_rate=8000,
    segment_seconds=1.0,
    hop_seconds=0.5,
    offset_margin=0.2,
    snr_db_range=(0.0, 10.0),
    seed=1234,
    speech=None,
    speech_prob=1.0,
    speech_snr_db_range=(0.0, 10.0),
    reverb_context_seconds=0.0,
):
    """Deterministic `(originals, replicas)`, each `(N, segment_samples)` float32.

    Rows follow track order then time order (consecutive segments of a track are
    consecutive rows), keeping the first `n_segments_max` segments when given. Replicas
    use the training augmentation with noise and impulse responses always applied and
    speech with probability `speech_prob`. The same `seed` gives the same pairs in every
    run, so validation numbers are comparable run to run.
    """
    pipeline = PairPipeline(
        tracks,
        noise=noise,
        impulse_responses=impulse_responses,
        sample_rate=sample_rate,
        segment_seconds=segment_seconds,
        hop_seconds=hop_seconds,
        offset_margin=offset_margin,
        snr_db_range=snr_db_range,
        speech=speech,
        speech_prob=speech_prob,
        speech_snr_db_range=speech_snr_db_range,
        reverb_context_seconds=reverb_context_seconds,
    )
    n = pipeline.n_segments
    if n_segments_max is not None:
        if n_segments_max < 1:
            raise ValueError(
                f"n_segments_max must be >= 1 or None. Received: n_segments_max={n_segments_max}"
            )
        n = min(n, int(n_segments_max))
    originals, replicas = [], []
    for chunk, first in enumerate(range(0, n, _VALIDATION_CHUNK)):
        ids = np.arange(first, min(first + _VALIDATION_CHUNK, n))
        out = pipeline.sample(ids, seed=(int(seed), chunk))
        originals.append(out["anchors"])
        replicas.append(out["replicas"])
    return np.concatenate(originals), np.concatenate(replicas)


def make_query(
    track,
    start_seconds,
    seconds,
    noise=None,
    impulse_response=None,
    snr_db=None,
    sample_rate=8000,
):
    """One degraded query excerpt (float32 numpy), with the training degradation maths.

    Takes `track[start:start+seconds]`, mixes `noise` (from its start, tiled if short) at
    `snr_db`, then convolves with `impulse_response` (energy re-normalised).
    """
    track = np.asarray(track, np.float32)
    start = int(round(start_seconds * sample_rate))
    length = int(round(seconds * sample_rate))
    if length < 1:
        raise ValueError(f"seconds must span at least one sample. Received: seconds={seconds}")
    if start < 0 or start + length > len(track):
        raise ValueError(
            f"Excerpt [{start_seconds}, {start_seconds + seconds}] s is outside the track "
            f"of {len(track) / sample_rate:.3f} s. Received: start_seconds={start_seconds}, "
            f"seconds={seconds}"
        )
    x = tf.constant(track[None, start : start + length])  # (1, length)
    if noise is not None:
        if snr_db is None:
            raise ValueError("snr_db is required when noise is given. Received: snr_db=None")
        noise = np.asarray(noise, np.float32)
        if noise.ndim != 1 or noise.size == 0:
            raise ValueError(f"noise must be a non-empty 1-D array. Received shape {noise.shape}")
        x = _mix_at_snr(
            x, tf.constant(np.resize(noise, length)[None]), tf.constant([snr_db], tf.float32)
        )
    if impulse_response is not None:
        ir = np.asarray(impulse_response, np.float32)
        if ir.ndim != 1 or ir.size == 0:
            raise ValueError(
                f"impulse_response must be a non-empty 1-D array. Received shape {ir.shape}"
            )
        x = _apply_impulse_responses(x, tf.constant(ir[None]))
    return x.numpy()[0]
