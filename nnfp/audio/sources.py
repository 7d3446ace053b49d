"""Where training and catalogue audio comes from: folders, CSV/JSON manifests, prepared caches.

`list_audio_files` turns a source into a list of files, `load_tracks` decodes them in parallel
(skipping and reporting unusable ones), and `load_source` also reads the int16 caches that
`nnfp data prepare` (`nnfp.audio.prepare`) writes.
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import logging
import os
import pathlib

import numpy as np

from nnfp.audio.io import AudioError, load_audio
from nnfp.outputs import MARKER_FILE, output_kind

__all__ = [
    "AUDIO_EXTENSIONS",
    "INT16_SCALE",
    "MANIFEST_EXTENSIONS",
    "PREPARED_FORMAT",
    "is_prepared_cache",
    "list_audio_files",
    "load_prepared",
    "load_source",
    "load_tracks",
    "read_manifest",
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
# Prepared caches and training banks store audio as int16 (half the memory of float32; 16-bit
# precision is far below the noise floor of any augmentation), scaled back by this factor on
# read. A power of two keeps int16 -> float32 exact whether a graph divides or multiplies by it.
INT16_SCALE = 32768.0


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


def _own_bookkeeping(path):
    """Whether `path` is a file nnfp writes beside the audio of a folder it made (its marker,
    and the `manifest.json` of `nnfp data make-irs`): no audio, and nothing to report."""
    return path.name == MARKER_FILE or (path.name == "manifest.json" and output_kind(path.parent) is not None)


def list_audio_files(source, extensions=AUDIO_EXTENSIONS, ignored=None):
    """Lists audio files: every file under a directory (recursive, sorted, symlinked folders
    followed), the entries of a CSV/JSON manifest (see `read_manifest`), one audio file, or
    a list of paths (kept in order).

    Args:
        source: a directory, a manifest (`.csv`/`.json`), an audio file, or a list of paths.
        extensions: suffixes to keep when scanning a directory (case-insensitive).
        ignored: a list that receives `(path, reason)` for every other file of the directory
            (other extension, broken link), so callers can report what they left out. The
            files nnfp writes beside audio in a folder it made (its `.nnfp-output.json` marker
            and, there, `manifest.json`) are left out without a word.

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
            elif not _own_bookkeeping(path):
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
            peak = peak / INT16_SCALE
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
            tracks = [np.asarray(t, np.float32) / np.float32(INT16_SCALE) for t in tracks]
        return tracks, kept, skipped
    return load_tracks(list_audio_files(source), sample_rate=sample_rate, min_seconds=min_seconds)
