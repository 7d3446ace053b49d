"""Fingerprint folders of audio into a saved `FingerprintDB`, and identify query audio.

This module wires the model (`nnfp.export`), audio loading (`nnfp.data`) and the
search engine (`nnfp.search`) together; it is what `nnfp index build|add`,
`nnfp identify`, `nnfp evaluate` and `nnfp demo` run.

An index folder holds the `FingerprintDB` files (`embeddings.npy`, the exact
fingerprints, memory-mapped at search time; `segments.npz`; `tracks.json` with
the track table and metadata; `index.faiss`) and a copy of the model that made
the fingerprints (`model.keras`, or `model/` for a SavedModel), so queries are
always fingerprinted by the same model as the catalogue.

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

from nnfp.search import INDEX_TYPES, FingerprintDB

__all__ = [
    "DEFAULT_K_PROBE",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_MODEL_PATH",
    "Identifier",
    "IndexReport",
    "NoDefaultModelError",
    "QueryError",
    "add_to_index",
    "build_index",
    "fingerprint_tracks",
    "load_model",
    "resolve_model",
    "segment_waveform",
]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "weights" / "default.keras"
DEFAULT_K_PROBE = 20  # faiss neighbours per query segment (the original `k_probe`)
# Sequence scores are mean cosine similarities. Wrong-track best candidates of the demo
# model score ~0.4 (median) for 10 s queries, but up to 0.7 for 1 s ones; raise it for short queries.
DEFAULT_MIN_SCORE = 0.5
SMALL_DB_SEGMENTS = 100_000  # "auto" index: exact flat search below (~14 h of audio), IVF-PQ above
_PARTIAL_SUFFIX = ".partial"


class NoDefaultModelError(FileNotFoundError):
    """No `--model` was given and the package ships no default model."""


class QueryError(ValueError):
    """A query that cannot be searched (too short). The message starts with the query name."""


@dataclasses.dataclass
class IndexReport:
    """What `build_index` / `add_to_index` did.

    Attributes:
        db: the saved database, reopened from disk (memory-mapped store).
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
    chunks, resumed, seconds = _fingerprint_files(
        root, relative, embedder, model_path, work_dir, sample_rate, hop_seconds,
        batch_size=batch_size, chunk_files=chunk_files, progress=progress, on_chunk=on_chunk,
    )
    store, segment_file, segment_start, kept, durations, skipped = _gather_chunks(
        chunks, relative, work_dir / "embeddings.npy"
    )
    if store is None:
        raise FileNotFoundError(
            f"{audio_dir}: none of the {len(relative)} audio files could be fingerprinted "
            f"(e.g. {skipped[0][0]}: {skipped[0][1]})"
        )
    track_of_file = {f: i for i, f in enumerate(kept)}
    segment_track = np.array([track_of_file[f] for f in segment_file.tolist()], np.int32)
    tracks = [
        {"track_id": i, "path": relative[f], "duration_s": round(float(dur), 4)}
        for i, (f, dur) in enumerate(zip(kept, durations, strict=True))
    ]
    if index_type == "auto":
        index_type = "flat" if len(store) < SMALL_DB_SEGMENTS else "ivfpq"
    model_name, _ = _model_entry(model_path)
    metadata = {
        "model_file": model_name,
        "model_source": str(Path(model_path).absolute()),
        "sample_rate": int(sample_rate),
        "segment_seconds": embedder.segment_samples / sample_rate,
        "sources": [{"audio_dir": str(root), "first_track_id": 0, "n_tracks": len(tracks)}],
        "skipped": skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    db = FingerprintDB.build(
        store, segment_track, segment_start, tracks, hop_seconds=hop_seconds,
        index_type=index_type, metadata=metadata, **index_params,
    )
    db.save(index_dir, extra_files={model_name: model_path})
    del db, store
    shutil.rmtree(work_dir, ignore_errors=True)
    return IndexReport(
        db=FingerprintDB.load(index_dir),
        n_tracks=len(tracks),
        n_segments=len(segment_track),
        audio_seconds=float(sum(durations)),
        fingerprint_seconds=seconds,
        skipped=skipped,
        resumed_chunks=resumed,
    )


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
    chunks, resumed, seconds = _fingerprint_files(
        root, relative, embedder, model_path, work_dir, meta["sample_rate"], db.hop_seconds,
        batch_size=batch_size, chunk_files=chunk_files, progress=progress, on_chunk=on_chunk,
    )
    store, segment_file, segment_start, kept, durations, skipped = _gather_chunks(
        chunks, relative, work_dir / "embeddings.npy"
    )
    first_id = db.next_track_id
    if store is not None:
        track_of_file = {f: i for i, f in enumerate(kept)}
        segment_track = np.array([track_of_file[f] for f in segment_file.tolist()], np.int32)
        tracks = [
            {"track_id": i, "path": relative[f], "duration_s": round(float(dur), 4)}
            for i, (f, dur) in enumerate(zip(kept, durations, strict=True))
        ]
        db.add(store, segment_track, segment_start, tracks)
    if kept:
        db.metadata["sources"].append(
            {"audio_dir": str(root), "first_track_id": first_id, "n_tracks": len(kept)}
        )
    db.metadata["skipped"].extend(s for s in skipped if s not in db.metadata["skipped"])
    db.save(index_dir, extra_files={meta["model_file"]: model_path})
    del db, store
    shutil.rmtree(work_dir, ignore_errors=True)
    return IndexReport(
        db=FingerprintDB.load(index_dir),
        n_tracks=len(kept),
        n_segments=len(segment_file),
        audio_seconds=float(sum(durations)),
        fingerprint_seconds=seconds,
        skipped=skipped,
        resumed_chunks=resumed,
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
