"""Fingerprint folders of audio into a saved `FingerprintDB`, and identify query audio.

This module wires the model (`nnfp.export`), audio loading (`nnfp.data`) and the
search engine (`nnfp.search`) together; it is what `nnfp index build|add`,
`nnfp identify`, `nnfp evaluate` and `nnfp demo` run.

An index folder holds the `FingerprintDB` files (`embeddings.npy`, the exact
fingerprints, memory-mapped at search time; `segments.npz`; `tracks.json` with
the track table and metadata; `index.faiss`) and a copy of the model that made
the fingerprints (`model.keras`, or `model/` for a SavedModel), so queries are
always fingerprinted by the same model as the catalogue.

A large catalogue can be fingerprinted in N independent jobs (`build_shard`, one
contiguous slice of the sorted file list each) and the shards combined by
`merge_shards` into the index a single `build_index` would have written.

>>> report = build_index("music/", "my_index", model="runs/demo")
>>> identifier = Identifier("my_index")
>>> identifier.identify_file("clip.wav")[0]  # Match(track_id, path, offset_s, score, ...)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from nnfp.search import INDEX_TYPES, FingerprintDB, atomic_directory

__all__ = [
    "DEFAULT_K_PROBE",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_MODEL_PATH",
    "Identifier",
    "IndexReport",
    "NoDefaultModelError",
    "QueryError",
    "ShardError",
    "add_to_index",
    "build_index",
    "build_shard",
    "fingerprint_tracks",
    "load_model",
    "merge_shards",
    "parse_shard",
    "resolve_model",
    "segment_waveform",
    "shard_dir_name",
]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "weights" / "default.keras"
DEFAULT_K_PROBE = 20  # faiss neighbours per query segment (the original `k_probe`)
# Sequence scores are mean cosine similarities. Wrong-track best candidates of the demo
# model score ~0.4 (median) for 10 s queries, but up to 0.7 for 1 s ones; raise it for short queries.
DEFAULT_MIN_SCORE = 0.5
SMALL_DB_SEGMENTS = 100_000  # "auto" index: exact flat search below (~14 h of audio), IVF-PQ above
_PARTIAL_SUFFIX = ".partial"
SHARD_FORMAT_VERSION = 1
_COPY_CHUNK_ROWS = 262_144  # rows per chunk when concatenating shard stores
_SHARD_META = "shard.json"


class NoDefaultModelError(FileNotFoundError):
    """No `--model` was given and the package ships no default model."""


class QueryError(ValueError):
    """A query that cannot be searched (too short). The message starts with the query name."""


class ShardError(ValueError):
    """Shards that cannot be merged: missing, repeated, or built differently."""


@dataclasses.dataclass
class IndexReport:
    """What `build_index` / `add_to_index` did.

    Attributes:
        db: the saved database, reopened from disk (memory-mapped store); None for a shard.
        n_tracks: tracks added by this call.
        n_segments: segments added by this call.
        audio_seconds: duration of the audio fingerprinted by this call.
        fingerprint_seconds: wall time spent decoding and fingerprinting.
        skipped: `(relative path, reason)` of files that could not be used.
        resumed_chunks: chunks reused from an interrupted earlier run.
    """

    db: FingerprintDB
    n_tracks: int
    n_segments: int
    audio_seconds: float
    fingerprint_seconds: float
    skipped: list
    resumed_chunks: int = 0

    @property
    def realtime_factor(self):
        return self.audio_seconds / max(self.fingerprint_seconds, 1e-9)


# ------------------------------------------------------------------ models


def resolve_model(model=None):
    """`model` (run dir, `.keras` file or SavedModel dir) -> path; None -> the packaged model."""
    from nnfp.export import resolve_model_path

    if model is None:
        if DEFAULT_MODEL_PATH.exists():
            return DEFAULT_MODEL_PATH
        raise NoDefaultModelError(
            "no default model ships with this version of nnfp; "
            "pass --model RUN_DIR|FILE.keras|SAVEDMODEL_DIR"
        )
    return resolve_model_path(model)


def load_model(model=None):
    """Loads a fingerprinter; returns `(embedder, resolved_path)`."""
    from nnfp.export import load_fingerprinter

    path = resolve_model(model)
    return load_fingerprinter(path), path


# ------------------------------------------------------------ fingerprints


def segment_waveform(audio, segment_samples, hop_samples):
    """(n_samples,) -> (n_segments, segment_samples) read-only view of every full window."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < segment_samples:
        return np.zeros((0, segment_samples), np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(audio, segment_samples)
    return windows[::hop_samples]


def fingerprint_tracks(embedder, tracks, hop_samples, batch_size=256):
    """Fingerprints every segment of every track, batching across tracks.

    Returns:
        `(embeddings (n, d) float32, segment_track (n,) int32 index into tracks,
        segment_start (n,) int64 start sample)`.
    """
    segment = embedder.segment_samples
    views = [segment_waveform(track, segment, hop_samples) for track in tracks]
    owners = np.concatenate([np.full(len(v), i, np.int32) for i, v in enumerate(views)] or [[]])
    owners = owners.astype(np.int32)
    starts = np.concatenate([np.arange(len(v), dtype=np.int64) * hop_samples for v in views] or [[]])
    starts = starts.astype(np.int64)
    within = np.concatenate([np.arange(len(v)) for v in views] or [[]]).astype(np.int64)
    out = []
    for first in range(0, len(owners), batch_size):
        rows = slice(first, first + batch_size)
        batch = np.stack([views[o][w] for o, w in zip(owners[rows], within[rows], strict=True)])
        out.append(embedder.fingerprint(batch, batch_size=batch_size))
    embeddings = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return embeddings.astype(np.float32), owners, starts


class _Progress:
    """A one-line stderr progress bar (plain lines when stderr is not a terminal)."""

    def __init__(self, total, label, enabled=True, stream=None):
        self.total = max(int(total), 1)
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.perf_counter()
        self._last_tenth = -1

    def update(self, done, note=""):
        if not self.enabled:
            return
        fraction = min(done / self.total, 1.0)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / fraction - elapsed if fraction > 0 else float("nan")
        bar = "#" * int(30 * fraction) + "." * (30 - int(30 * fraction))
        line = f"{self.label} [{bar}] {done}/{self.total} {note} {elapsed:.0f} s elapsed, ETA {eta:.0f} s"
        if self.tty:
            self.stream.write("\r" + line)
            if done >= self.total:
                self.stream.write("\n")
        elif int(10 * fraction) != self._last_tenth or done >= self.total:
            self._last_tenth = int(10 * fraction)
            self.stream.write(line + "\n")
        self.stream.flush()


# ------------------------------------------------------- resumable fingerprinting


def _atomic_npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def _model_signature(model_path):
    model_path = Path(model_path)
    files = [model_path] if model_path.is_file() else sorted(model_path.rglob("*"))
    digest = hashlib.sha1()
    for f in files:
        if f.is_file():
            stat = f.stat()
            digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _fingerprint_files(
    root,
    relative_paths,
    embedder,
    model_path,
    work_dir,
    sample_rate,
    hop_seconds,
    batch_size=256,
    chunk_files=32,
    progress=True,
    on_chunk=None,
):
    """Fingerprints files chunk by chunk into `work_dir`, reusing chunks of an interrupted run.

    Returns `(chunk paths, resumed chunk count, fingerprinting seconds)`.
    """
    from nnfp.data import load_tracks

    work_dir = Path(work_dir)
    plan = {
        "root": str(Path(root).absolute()),
        "files": list(relative_paths),
        "model": _model_signature(model_path),
        "sample_rate": int(sample_rate),
        "hop_seconds": float(hop_seconds),
        "segment_samples": int(embedder.segment_samples),
        "chunk_files": int(chunk_files),
    }
    plan_path = work_dir / "plan.json"
    if work_dir.exists():
        try:
            same = json.loads(plan_path.read_text()) == plan
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(work_dir)  # left by a different job: start over
    work_dir.mkdir(parents=True, exist_ok=True)
    if not plan_path.exists():
        tmp = plan_path.with_name("plan.json.tmp")
        tmp.write_text(json.dumps(plan))
        os.replace(tmp, plan_path)

    hop = int(round(hop_seconds * sample_rate))
    n_chunks = -(-len(relative_paths) // chunk_files)
    chunk_paths, resumed, seconds = [], 0, 0.0
    bar = _Progress(len(relative_paths), "fingerprinting", enabled=progress)
    audio_seconds = 0.0
    for chunk in range(n_chunks):
        path = work_dir / f"chunk_{chunk:06d}.npz"
        chunk_paths.append(path)
        first = chunk * chunk_files
        names = relative_paths[first : first + chunk_files]
        if path.exists():
            resumed += 1
            with np.load(path) as done:
                audio_seconds += float(np.sum(done["durations"]))
        else:
            started = time.perf_counter()
            tracks, kept, skipped = load_tracks(
                [Path(root) / name for name in names],
                sample_rate=sample_rate,
                min_seconds=embedder.segment_samples / sample_rate,
            )
            index_of = {str(Path(root) / name): first + i for i, name in enumerate(names)}
            kept_ids = np.array([index_of[str(p)] for p in kept], np.int32)
            embeddings, owners, starts = fingerprint_tracks(embedder, tracks, hop, batch_size)
            durations = np.array([len(t) / sample_rate for t in tracks], np.float64)
            _atomic_npz(
                path,
                embeddings=embeddings.astype(np.float32) if len(owners) else np.zeros((0, 0), np.float32),
                segment_file=kept_ids[owners] if len(owners) else np.zeros(0, np.int32),
                segment_start=(starts / sample_rate).astype(np.float32),
                kept_files=kept_ids,
                durations=durations,
                skipped_files=np.array([index_of[str(p)] for p, _ in skipped], np.int32),
                skipped_reasons=np.array([reason for _, reason in skipped], dtype=str),
            )
            seconds += time.perf_counter() - started
            audio_seconds += float(durations.sum())
        bar.update(min(first + chunk_files, len(relative_paths)), f"files, {audio_seconds / 3600:.2f} h audio,")
        if on_chunk is not None:
            on_chunk(chunk)
    return chunk_paths, resumed, seconds


def _gather_chunks(chunk_paths, relative_paths, store_path):
    """Concatenates chunk files: embeddings into a memory-mapped `store_path`, the rest in RAM."""
    n_rows, d = 0, None
    for path in chunk_paths:
        with np.load(path) as chunk:
            shape = chunk["embeddings"].shape
            n_rows += shape[0]
            if shape[0]:
                d = shape[1]
    kept, durations, skipped, segment_file, segment_start = [], [], [], [], []
    store = None
    if n_rows:
        store = np.lib.format.open_memmap(store_path, mode="w+", dtype=np.float32, shape=(n_rows, d))
    row = 0
    for path in chunk_paths:
        with np.load(path) as chunk:
            n = chunk["embeddings"].shape[0]
            if n:
                store[row : row + n] = chunk["embeddings"]
            row += n
            segment_file.append(chunk["segment_file"])
            segment_start.append(chunk["segment_start"])
            kept.extend(chunk["kept_files"].tolist())
            durations.extend(chunk["durations"].tolist())
            skipped.extend(
                [relative_paths[i], str(r)]
                for i, r in zip(chunk["skipped_files"], chunk["skipped_reasons"], strict=True)
            )
    if store is not None:
        store.flush()
    return (
        store,
        np.concatenate(segment_file).astype(np.int32) if segment_file else np.zeros(0, np.int32),
        np.concatenate(segment_start).astype(np.float32) if segment_start else np.zeros(0, np.float32),
        kept,
        durations,
        skipped,
    )


@dataclasses.dataclass
class _Catalogue:
    """Fingerprints of a list of files, in file order (what a build gathers from its chunks)."""

    store: np.ndarray | None  # (n_segments, d) memory-mapped, None when no file was usable
    segment_track: np.ndarray  # (n_segments,) int32 index into `tracks`
    segment_start: np.ndarray  # (n_segments,) float32 seconds
    tracks: list  # {"track_id": 0.., "path": relative path, "duration_s"}
    skipped: list  # [relative path, reason]
    audio_seconds: float
    fingerprint_seconds: float
    resumed_chunks: int


def _fingerprint_catalogue(root, relative, embedder, model_path, work_dir, sample_rate, hop_seconds, **options):
    """`_fingerprint_files` + `_gather_chunks` into `work_dir`; tracks numbered from 0."""
    chunks, resumed, seconds = _fingerprint_files(
        root, relative, embedder, model_path, work_dir, sample_rate, hop_seconds, **options
    )
    store, segment_file, segment_start, kept, durations, skipped = _gather_chunks(
        chunks, relative, Path(work_dir) / "embeddings.npy"
    )
    track_of_file = {f: i for i, f in enumerate(kept)}
    segment_track = np.array([track_of_file[f] for f in segment_file.tolist()], np.int32)
    tracks = [
        {"track_id": i, "path": relative[f], "duration_s": round(float(dur), 4)}
        for i, (f, dur) in enumerate(zip(kept, durations, strict=True))
    ]
    return _Catalogue(
        store, segment_track, segment_start, tracks, skipped, float(sum(durations)), seconds, resumed
    )


def _partial_dir(index_dir):
    index_dir = Path(index_dir).absolute()
    return index_dir.with_name(index_dir.name + _PARTIAL_SUFFIX)


def _list_relative(audio_dir):
    from nnfp.data import list_audio_files

    root = Path(audio_dir).absolute()
    files = list_audio_files(root)
    if root.is_file():
        return root.parent, [root.name]
    return root, [p.relative_to(root).as_posix() for p in files]


def _model_entry(model_path):
    model_path = Path(model_path)
    return ("model", model_path) if model_path.is_dir() else ("model.keras", model_path)


def build_index(
    audio_dir,
    index_dir,
    model=None,
    index_type="auto",
    sample_rate=8000,
    hop_seconds=0.5,
    batch_size=256,
    chunk_files=32,
    progress=True,
    on_chunk=None,
    **index_params,
):
    """Fingerprints every audio file under `audio_dir` and saves a searchable index.

    Resumable: fingerprints are written chunk by chunk (`chunk_files` files each) to
    `<index_dir>.partial/`; calling again after an interruption reuses the finished
    chunks. The index folder is written to a temporary name and renamed, and the
    partial folder is removed once it is in place. Unusable files are skipped and
    listed in the report and in the index metadata.

    Args:
        audio_dir: folder of audio files (searched recursively), any format/rate.
        index_dir: output folder.
        model: run directory, `.keras` file or SavedModel; None: the packaged model.
        index_type: `"auto"` (flat below 100k segments, else IVF-PQ) or one of
            `nnfp.search.INDEX_TYPES`.
        sample_rate, hop_seconds: the model's rate and the segment hop.
        batch_size: segments per inference batch.
        chunk_files: files per resumable chunk.
        progress: print a progress bar to stderr.
        on_chunk: called with the chunk number after each chunk is saved.
        **index_params: `FingerprintDB.build` arguments (nlist, m, nbits, nprobe,
            hnsw_m, ef_search, threads, train_size).

    Returns:
        An `IndexReport`.
    """
    if index_type != "auto" and index_type not in INDEX_TYPES:
        raise ValueError(
            f"`index_type` must be 'auto' or one of {INDEX_TYPES}. Received: index_type={index_type!r}"
        )
    index_dir = Path(index_dir).absolute()
    embedder, model_path = load_model(model)
    root, relative = _list_relative(audio_dir)
    work_dir = _partial_dir(index_dir)
    found = _fingerprint_catalogue(
        root, relative, embedder, model_path, work_dir, sample_rate, hop_seconds,
        batch_size=batch_size, chunk_files=chunk_files, progress=progress, on_chunk=on_chunk,
    )
    if found.store is None:
        raise FileNotFoundError(
            f"{audio_dir}: none of the {len(relative)} audio files could be fingerprinted "
            f"(e.g. {found.skipped[0][0]}: {found.skipped[0][1]})"
        )
    if index_type == "auto":
        index_type = _auto_index_type(len(found.store))
    model_name, _ = _model_entry(model_path)
    metadata = _index_metadata(
        model_name, model_path, sample_rate, embedder.segment_samples, root, found.tracks, found.skipped
    )
    db = FingerprintDB.build(
        found.store, found.segment_track, found.segment_start, found.tracks, hop_seconds=hop_seconds,
        index_type=index_type, metadata=metadata, **index_params,
    )
    return _save_and_report(db, index_dir, model_name, model_path, work_dir, found)


def _report(found, db):
    """The `IndexReport` of a fingerprinting pass (`db`: the saved index, or None for a shard)."""
    return IndexReport(
        db=db,
        n_tracks=len(found.tracks),
        n_segments=len(found.segment_track),
        audio_seconds=found.audio_seconds,
        fingerprint_seconds=found.fingerprint_seconds,
        skipped=found.skipped,
        resumed_chunks=found.resumed_chunks,
    )


def _save_and_report(db, index_dir, model_file, model_path, work_dir, found):
    """Save `db` with its model atomically, drop the work dir, and report on the reloaded index."""
    db.save(index_dir, extra_files={model_file: model_path})
    del db
    found.store = None  # release the memory-mapped scratch store before deleting it
    shutil.rmtree(work_dir, ignore_errors=True)
    return _report(found, FingerprintDB.load(index_dir))


def _auto_index_type(n_segments):
    return "flat" if n_segments < SMALL_DB_SEGMENTS else "ivfpq"


def _index_metadata(model_name, model_path, sample_rate, segment_samples, root, tracks, skipped):
    return {
        "model_file": model_name,
        "model_source": str(Path(model_path).absolute()),
        "sample_rate": int(sample_rate),
        "segment_seconds": segment_samples / sample_rate,
        "sources": [{"audio_dir": str(root), "first_track_id": 0, "n_tracks": len(tracks)}],
        "skipped": skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_to_index(
    index_dir, audio_dir, batch_size=256, chunk_files=32, progress=True, on_chunk=None
):
    """Appends the tracks under `audio_dir` to a saved index, fingerprinted by its model.

    Files of `audio_dir` already indexed from the same folder are left out. The faiss
    index is not retrained. Resumable and atomic like `build_index`.
    """
    index_dir = Path(index_dir).absolute()
    db = FingerprintDB.load(index_dir, mmap=True)
    meta = db.metadata
    model_path = index_dir / meta["model_file"]
    embedder, _ = load_model(model_path)
    root, relative = _list_relative(audio_dir)
    present = set()
    for source in meta["sources"]:
        if source["audio_dir"] == str(root):
            ids = range(source["first_track_id"], source["first_track_id"] + source["n_tracks"])
            present.update(db._track_by_id[i]["path"] for i in ids)
    relative = [r for r in relative if r not in present]
    if not relative:
        return IndexReport(db, 0, 0, 0.0, 0.0, [])
    work_dir = _partial_dir(index_dir)
    found = _fingerprint_catalogue(
        root, relative, embedder, model_path, work_dir, meta["sample_rate"], db.hop_seconds,
        batch_size=batch_size, chunk_files=chunk_files, progress=progress, on_chunk=on_chunk,
    )
    first_id = db.next_track_id
    if found.store is not None:
        db.add(found.store, found.segment_track, found.segment_start, found.tracks)
    if found.tracks:
        db.metadata["sources"].append(
            {"audio_dir": str(root), "first_track_id": first_id, "n_tracks": len(found.tracks)}
        )
    db.metadata["skipped"].extend(s for s in found.skipped if s not in db.metadata["skipped"])
    return _save_and_report(db, index_dir, meta["model_file"], model_path, work_dir, found)


# ------------------------------------------------------------------ shards


def parse_shard(text):
    """`"I/N"` -> `(I, N)` with `0 <= I < N`."""
    try:
        shard, n_shards = (int(part) for part in str(text).split("/"))
    except ValueError:
        shard = n_shards = -1
    if not 0 <= shard < n_shards:
        raise ValueError(f"`--shard` must be I/N with 0 <= I < N, e.g. 0/4. Received: --shard {text}")
    return shard, n_shards


def shard_dir_name(shard, n_shards):
    """The folder `build_shard` writes under its output folder: `shard-I-of-N`."""
    return f"shard-{shard}-of-{n_shards}"


def _shard_slice(n_files, shard, n_shards, chunk_files):
    # Contiguous runs of whole chunks (`chunk_files` files) of the sorted file list: the
    # shards' chunks are the chunks of a single-process build, so the same segments are
    # batched together (bit-identical fingerprints), and concatenating the shards in
    # order gives the single-process track ids, segment rows and IVF list order.
    n_chunks = -(-n_files // chunk_files)
    first = shard * n_chunks // n_shards * chunk_files
    last = (shard + 1) * n_chunks // n_shards * chunk_files
    return slice(first, min(last, n_files))


def _model_digest(model_path):
    """SHA-1 of the model's bytes (every file of a SavedModel): the same model copied to
    several hosts gives the same digest, unlike `_model_signature`."""
    model_path = Path(model_path)
    files = [model_path] if model_path.is_file() else sorted(p for p in model_path.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.relative_to(model_path).as_posix().encode() if f != model_path else b"")
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def build_shard(
    audio_dir,
    out_dir,
    shard,
    n_shards,
    model=None,
    sample_rate=8000,
    hop_seconds=0.5,
    batch_size=256,
    chunk_files=32,
    progress=True,
    on_chunk=None,
):
    """Fingerprints shard `shard` of `n_shards` of the audio under `audio_dir`.

    The sorted file list (the order `build_index` uses) is cut into chunks of
    `chunk_files` files, and the chunks into `n_shards` contiguous runs of (almost)
    equal length (a catalogue of fewer than `n_shards` chunks leaves some shards
    empty); this call fingerprints run `shard` into `out_dir/shard-<shard>-of-<n_shards>/`: `embeddings.npy`,
    `segments.npz` (segment -> shard-local track, start seconds), `shard.json`
    (tracks, skipped files, catalogue listing digest, model digest, settings) and a
    copy of the model. Resumable (`<shard folder>.partial/`) and atomic like
    `build_index`. Every job must see the same catalogue (same relative paths) and
    use the same `chunk_files`; `merge_shards` checks both. The fingerprints are those
    a single `build_index` with the same `chunk_files` and `batch_size` computes on the
    same hardware. No faiss index is built: `merge_shards` does that.

    Returns:
        An `IndexReport` with `db=None`.
    """
    shard, n_shards = parse_shard(f"{shard}/{n_shards}")
    embedder, model_path = load_model(model)
    root, relative = _list_relative(audio_dir)
    shard_dir = Path(out_dir).absolute() / shard_dir_name(shard, n_shards)
    if int(chunk_files) < 1:
        raise ValueError(f"`chunk_files` must be >= 1. Received: chunk_files={chunk_files}")
    mine = relative[_shard_slice(len(relative), shard, n_shards, int(chunk_files))]
    work_dir = _partial_dir(shard_dir)
    found = _fingerprint_catalogue(
        root, mine, embedder, model_path, work_dir, sample_rate, hop_seconds,
        batch_size=batch_size, chunk_files=chunk_files, progress=progress, on_chunk=on_chunk,
    )
    model_name, _ = _model_entry(model_path)
    meta = {
        "format": "nnfp-shard",
        "version": SHARD_FORMAT_VERSION,
        "shard": shard,
        "n_shards": n_shards,
        "catalogue": {
            "audio_dir": str(root),
            "n_files": len(relative),
            "files_sha1": hashlib.sha1("\n".join(relative).encode()).hexdigest(),
        },
        "n_files": len(mine),
        "chunk_files": int(chunk_files),
        "model_file": model_name,
        "model_source": str(Path(model_path).absolute()),
        "model_sha1": _model_digest(model_path),
        "sample_rate": int(sample_rate),
        "hop_seconds": float(hop_seconds),
        "segment_samples": int(embedder.segment_samples),
        "d": None if found.store is None else int(found.store.shape[1]),
        "n_segments": len(found.segment_track),
        "audio_seconds": found.audio_seconds,
        "tracks": found.tracks,
        "skipped": found.skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_directory(shard_dir) as tmp:
        if found.store is None:  # an empty slice, or nothing usable in it
            np.save(tmp / "embeddings.npy", np.zeros((0, 0), np.float32))
        else:
            found.store.flush()
            found.store = None
            os.replace(work_dir / "embeddings.npy", tmp / "embeddings.npy")
        np.savez(tmp / "segments.npz", track=found.segment_track, start=found.segment_start)
        if model_path.is_dir():
            shutil.copytree(model_path, tmp / model_name)
        else:
            shutil.copyfile(model_path, tmp / model_name)
        (tmp / _SHARD_META).write_text(json.dumps(meta, indent=1))
    shutil.rmtree(work_dir, ignore_errors=True)
    return _report(found, None)


def _find_shards(shard_dirs):
    """Shard folders given directly, or the `shard-*-of-*` folders inside given folders."""
    found = []
    for path in map(Path, shard_dirs):
        if (path / _SHARD_META).is_file():
            found.append(path)
            continue
        inside = sorted(p for p in path.glob("shard-*-of-*") if (p / _SHARD_META).is_file())
        if not inside:
            raise ShardError(
                f"{path}: not a shard folder (no {_SHARD_META}) and no shard-I-of-N folder inside; "
                "shards are written by `nnfp index build AUDIO_DIR OUT_DIR --shard I/N`"
            )
        found.extend(inside)
    return found


def _load_shards(shard_dirs):
    """Reads and cross-checks the shards; returns their `(folder, shard.json)` in shard order."""
    shards = []
    for path in _find_shards(shard_dirs):
        meta = json.loads((path / _SHARD_META).read_text())
        if meta.get("format") != "nnfp-shard" or meta.get("version") != SHARD_FORMAT_VERSION:
            raise ShardError(
                f"{path / _SHARD_META}: not an nnfp shard of version {SHARD_FORMAT_VERSION}. "
                f"Received: format={meta.get('format')!r}, version={meta.get('version')!r}"
            )
        shards.append((path, meta))
    first_path, first = shards[0]
    n_shards = first["n_shards"]
    by_number = {}
    for path, meta in shards:
        label = f"shard {meta['shard']}/{meta['n_shards']} ({path})"
        if meta["n_shards"] != n_shards:
            raise ShardError(
                f"shards of different splits: {label}, but shard {first['shard']}/{n_shards} "
                f"({first_path}); merge the N shards of one `--shard I/N` run"
            )
        if meta["shard"] in by_number:
            raise ShardError(f"{label} given twice: also {by_number[meta['shard']][0]}")
        for key in ("catalogue", "chunk_files", "model_sha1", "sample_rate", "hop_seconds", "segment_samples"):
            if meta[key] != first[key]:
                what = {"catalogue": "catalogue (audio file list)", "model_sha1": "model"}.get(key, key)
                raise ShardError(
                    f"shards were built differently: the {what} of {label} is {meta[key]!r}; "
                    f"shard {first['shard']}/{n_shards} ({first_path}) has {first[key]!r}"
                )
        by_number[meta["shard"]] = (path, meta)
    dims = {meta["d"] for _, meta in shards if meta["d"] is not None}
    if len(dims) > 1:
        raise ShardError(f"shards hold fingerprints of different sizes: d={sorted(dims)}")
    missing = [i for i in range(n_shards) if i not in by_number]
    if missing:
        where = first_path.parent
        unfinished = [i for i in missing if _partial_dir(where / shard_dir_name(i, n_shards)).exists()]
        raise ShardError(
            f"missing shard(s) {', '.join(f'{i}/{n_shards}' for i in missing)} of {n_shards} "
            f"(expected {where / shard_dir_name(missing[0], n_shards)}"
            + (f"; unfinished: {', '.join(f'{i}/{n_shards}' for i in unfinished)}" if unfinished else "")
            + f"); run `nnfp index build AUDIO_DIR {where} --shard I/{n_shards}` for each"
        )
    return [by_number[i] for i in range(n_shards)]


def merge_shards(shard_dirs, index_dir, index_type="auto", progress=True, **index_params):
    """Combines the N shards of a sharded build into one index, like `build_index` would.

    Tracks are numbered in shard order, which is the sorted file order of a single
    `build_index`, so track ids, segment rows and the stored fingerprints are the same.
    The embeddings of all shards are concatenated into one memory-mapped store (in
    chunks), and the faiss index is built from it: IVF types are trained once, on the
    same seeded sample a single build draws; then every shard fills its own copy of
    the trained index, and faiss' `merge_ondisk` merges their inverted lists into
    `index.ivfdata`, memory-mapped at search time. Flat and HNSW indexes are built
    from the store directly.

    Args:
        shard_dirs: shard folders (`OUT_DIR/shard-I-of-N`), or folders holding them.
        index_dir: output folder (written atomically, like `build_index`).
        index_type, **index_params: as for `build_index`.

    Raises:
        ShardError: a shard is missing or repeated, or shards differ in catalogue,
            model or settings.
    """
    if index_type != "auto" and index_type not in INDEX_TYPES:
        raise ValueError(
            f"`index_type` must be 'auto' or one of {INDEX_TYPES}. Received: index_type={index_type!r}"
        )
    index_dir = Path(index_dir).absolute()
    shards = _load_shards(shard_dirs)
    first = shards[0][1]
    n_segments = sum(meta["n_segments"] for _, meta in shards)
    skipped = [entry for _, meta in shards for entry in meta["skipped"]]
    if n_segments == 0:
        raise FileNotFoundError(
            f"{first['catalogue']['audio_dir']}: none of the {first['catalogue']['n_files']} audio "
            "files could be fingerprinted"
            + (f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else "")
        )
    d = next(meta["d"] for _, meta in shards if meta["d"] is not None)
    work_dir = _partial_dir(index_dir)
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    store = np.lib.format.open_memmap(
        work_dir / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n_segments, d)
    )
    tracks, segment_track, segment_start, part_rows = [], [], [], []
    bar = _Progress(len(shards), "merging shards", enabled=progress)
    row = 0
    for number, (path, meta) in enumerate(shards):
        part = np.load(path / "embeddings.npy", mmap_mode="r")
        with np.load(path / "segments.npz") as segments:
            local_track, start = segments["track"], segments["start"]
        if len(part) != meta["n_segments"] or len(local_track) != len(part):
            raise ShardError(
                f"{path}: inconsistent shard: {len(part)} embeddings, {len(local_track)} segments, "
                f"{_SHARD_META} says n_segments={meta['n_segments']}"
            )
        for first_row in range(0, len(part), _COPY_CHUNK_ROWS):  # never the whole store in RAM
            chunk = part[first_row : first_row + _COPY_CHUNK_ROWS]
            store[row + first_row : row + first_row + len(chunk)] = chunk
        first_id = len(tracks)
        segment_track.append(local_track.astype(np.int32) + first_id)
        segment_start.append(start.astype(np.float32))
        tracks += [dict(track, track_id=first_id + i) for i, track in enumerate(meta["tracks"])]
        part_rows.append(len(part))
        row += len(part)
        del part
        bar.update(number + 1, f"shards, {row} segments,")
    store.flush()
    segment_track = np.concatenate(segment_track)
    segment_start = np.concatenate(segment_start)
    if index_type == "auto":
        index_type = _auto_index_type(n_segments)
    model_path = shards[0][0] / first["model_file"]
    metadata = _index_metadata(
        first["model_file"], first["model_source"], first["sample_rate"], first["segment_samples"],
        first["catalogue"]["audio_dir"], tracks, skipped,
    )
    metadata["shards"] = {"n_shards": len(shards), "dirs": [str(Path(path).absolute()) for path, _ in shards]}
    db = FingerprintDB.build(
        store, segment_track, segment_start, tracks, hop_seconds=first["hop_seconds"],
        index_type=index_type, metadata=metadata, on_disk_dir=work_dir / "ivf", part_rows=part_rows,
        **index_params,
    )
    db.save(index_dir, extra_files={first["model_file"]: model_path})
    del db, store
    shutil.rmtree(work_dir, ignore_errors=True)
    return IndexReport(
        db=FingerprintDB.load(index_dir),
        n_tracks=len(tracks),
        n_segments=n_segments,
        audio_seconds=float(sum(meta["audio_seconds"] for _, meta in shards)),
        fingerprint_seconds=0.0,
        skipped=skipped,
    )


# ------------------------------------------------------------------ identify


class Identifier:
    """Identifies query audio against a saved index: which track, where, how sure.

    Queries are cut into 1 s segments on the index hop, fingerprinted by the
    index's model and matched with `FingerprintDB.search` (per-segment top-k,
    offset compensation, mean inner product over the whole query).

    Args:
        index_dir: a folder written by `build_index`.
        model: override the index's model (must produce the same fingerprints).
        k_probe: faiss neighbours per query segment.
        min_score: matches scoring below this are dropped (None keeps all).
        threads: faiss threads; 1 is fastest for single queries on small machines.
        nprobe: IVF lists visited (IVF indexes), None keeps the saved value.

    >>> identifier = Identifier("my_index")
    >>> matches = identifier.identify_file("clip.wav", n_results=3)
    >>> matches[0].path, matches[0].offset_s, matches[0].score
    """

    def __init__(
        self,
        index_dir,
        model=None,
        k_probe=DEFAULT_K_PROBE,
        min_score=DEFAULT_MIN_SCORE,
        threads=1,
        nprobe=None,
        db=None,
        embedder=None,
    ):
        index_dir = Path(index_dir) if index_dir is not None else None
        self.db = db if db is not None else FingerprintDB.load(index_dir, threads=threads)
        if nprobe is not None:
            self.db.set_search_params(nprobe=nprobe)
        meta = self.db.metadata
        if embedder is None:
            if model is None and "model_file" not in meta:
                raise FileNotFoundError(f"{index_dir}: the index records no model; pass a model")
            embedder, _ = load_model(model if model is not None else index_dir / meta["model_file"])
        self.embedder = embedder
        self.sample_rate = int(meta.get("sample_rate", 8000))
        self.hop_samples = int(round(self.db.hop_seconds * self.sample_rate))
        self.k_probe = int(k_probe)
        self.min_score = min_score

    @property
    def min_query_seconds(self):
        return self.embedder.segment_samples / self.sample_rate

    def fingerprint(self, audio, name="query"):
        """(n_samples,) waveform at the index rate -> (n_segments, d) fingerprints."""
        segments = segment_waveform(audio, self.embedder.segment_samples, self.hop_samples)
        if len(segments) == 0:
            raise QueryError(
                f"{name}: too short: {len(audio) / self.sample_rate:.2f} s; a query needs "
                f"at least {self.min_query_seconds:g} s of audio"
            )
        return self.embedder.fingerprint(np.ascontiguousarray(segments))

    def search(self, fingerprints, n_results=5):
        return self.db.search(
            fingerprints, top_k=self.k_probe, n_results=n_results, min_score=self.min_score
        )

    def identify_audio(self, audio, n_results=5, name="query"):
        """Best matches (list of `nnfp.search.Match`, best first) for a waveform at the index rate."""
        return self.search(self.fingerprint(audio, name=name), n_results=n_results)

    def identify_file(self, path, n_results=5):
        """Reads any audio file (resampled, mixed to mono) and returns its best matches.

        Raises:
            nnfp.data.AudioError: unreadable file. QueryError: shorter than one segment.
        """
        from nnfp.data import load_audio

        audio = load_audio(path, self.sample_rate)
        return self.identify_audio(audio, n_results=n_results, name=str(path))
