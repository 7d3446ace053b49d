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

import contextlib
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

from nnfp.defaults import DEFAULT_K_PROBE, DEFAULT_MIN_SCORE, DEFAULT_PHASES
from nnfp.outputs import OutputFolderError, claim_output_dir, output_kind, write_marker
from nnfp.search import INDEX_TYPES, CorruptIndexError, FingerprintDB, atomic_directory

__all__ = [
    "CALIBRATED",
    "DEFAULT_K_PROBE",
    "DEFAULT_PHASES",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_MODEL_PATH",
    "Identifier",
    "IndexReport",
    "NoDefaultModelError",
    "QueryError",
    "STREAM_SECONDS",
    "ShardError",
    "add_to_index",
    "build_index",
    "build_shard",
    "fingerprint_stream",
    "fingerprint_tracks",
    "load_model",
    "merge_shards",
    "parse_shard",
    "resolve_model",
    "segment_waveform",
    "shard_dir_name",
]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "weights" / "default.keras"
CALIBRATED = "calibrated"  # Identifier(min_score=...): the calibrated threshold of the query's length
SILENT_PEAK_DB = -60.0  # queries quieter than this (peak, dBFS) are rejected as silent
SILENT_RMS_DB = -70.0  # ... and those whose varying part is below this RMS level (dBFS)
_ONE_BATCH_SEGMENTS = 256  # query phases fingerprinted as one batch up to this many segments
STREAM_SECONDS = 600.0  # index build decodes longer files block by block (bounded memory)
_STREAM_BLOCK_SECONDS = 64.0
SMALL_DB_SEGMENTS = 100_000  # "auto" index: exact flat search below (~14 h of audio), IVF-PQ above
_PARTIAL_SUFFIX = ".partial"
SHARD_FORMAT_VERSION = 1
_COPY_CHUNK_ROWS = 262_144  # rows per chunk when concatenating shard stores
_SHARD_META = "shard.json"


class NoDefaultModelError(FileNotFoundError):
    """No `--model` was given and the package ships no default model."""


class QueryError(ValueError):
    """A query that cannot be searched (too short, silent, constant). The message starts with the query name."""


class ShardError(ValueError):
    """Shards that cannot be merged: missing, repeated, or built differently."""


@dataclasses.dataclass
class IndexReport:
    """What `build_index` / `add_to_index` did.

    Attributes:
        db: the saved database, reopened from disk (memory-mapped store); None for a shard.
        n_tracks: tracks added by this call.
        n_segments: segments added by this call.
        audio_seconds: duration of the audio added by this call (reused chunks included).
        fingerprint_seconds: wall time spent decoding and fingerprinting by this call.
        skipped: `(relative path, reason)` of files that could not be used.
        resumed_chunks: chunks reused from an interrupted earlier run.
        fresh_audio_seconds: the part of `audio_seconds` decoded and fingerprinted by this
            call (not reused from an interrupted run); None: all of it.
    """

    db: FingerprintDB
    n_tracks: int
    n_segments: int
    audio_seconds: float
    fingerprint_seconds: float
    skipped: list
    resumed_chunks: int = 0
    fresh_audio_seconds: float | None = None

    @property
    def realtime_factor(self):
        """Audio seconds fingerprinted per second of wall time, over this call's own work."""
        fresh = self.audio_seconds if self.fresh_audio_seconds is None else self.fresh_audio_seconds
        return fresh / max(self.fingerprint_seconds, 1e-9)


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


def load_model(model=None, trust_model=False):
    """Loads a fingerprinter; returns `(embedder, resolved_path)`.

    A SavedModel can run arbitrary TensorFlow operations and needs `trust_model=True`
    (see `nnfp.export.load_fingerprinter`); `.keras` files load in Keras safe mode.
    """
    from nnfp.export import load_fingerprinter

    path = resolve_model(model)
    return load_fingerprinter(path, trust_model=trust_model), path


# ------------------------------------------------------------------ integrity

PROBE_SEED = 20_210_606
N_PROBES = 3
# Max |difference| of a probe fingerprint component (vectors of norm 1) for the same model:
# CPU/GPU/XLA arithmetic moves them by ~1e-4; a different model by ~0.1 or more.
PROBE_TOLERANCE = 1e-2


class ModelMismatchError(ValueError):
    """A model that does not reproduce the probe fingerprints recorded in an index."""


class IndexLockedError(TimeoutError):
    """Another process holds the lock of an index being changed."""


def probe_waveforms(segment_samples, sample_rate):
    """`N_PROBES` fixed (segment_samples,) waveforms: seeded noise plus three tones each."""
    rng = np.random.default_rng(PROBE_SEED)
    t = np.arange(segment_samples) / sample_rate
    probes = []
    for _ in range(N_PROBES):
        tones = sum(
            0.2 * np.sin(2 * np.pi * f * t + phase)
            for f, phase in zip(rng.uniform(80, 0.4 * sample_rate, 3), rng.uniform(0, 2 * np.pi, 3), strict=True)
        )
        probes.append(tones + 0.05 * rng.standard_normal(segment_samples))
    return np.stack(probes).astype(np.float32)  # (N_PROBES, segment_samples)


def probe_fingerprints(embedder, sample_rate):
    """(N_PROBES, d) fingerprints of `probe_waveforms` by `embedder`."""
    return np.asarray(embedder.fingerprint(probe_waveforms(embedder.segment_samples, sample_rate)), np.float32)


def _probe_entry(embedder, sample_rate):
    """What an index records of its model's probe fingerprints (tracks.json metadata)."""
    fingerprints = probe_fingerprints(embedder, sample_rate)
    return {"seed": PROBE_SEED, "fingerprints": np.round(fingerprints, 6).tolist()}


def check_model(embedder, metadata, sample_rate, what):
    """Raises `ModelMismatchError` when `embedder` does not reproduce the index's probe
    fingerprints; returns the max |difference| (None: the index records no probes)."""
    probe = metadata.get("probe")
    if not probe:
        return None
    expected = np.asarray(probe["fingerprints"], np.float32)
    got = probe_fingerprints(embedder, sample_rate) if probe.get("seed") == PROBE_SEED else None
    if got is None:
        return None  # probes of another nnfp version: cannot be compared
    if got.shape != expected.shape:
        raise ModelMismatchError(
            f"{what} does not make the fingerprints of this index (size {got.shape[-1]}, "
            f"the index holds size {expected.shape[-1]})"
        )
    difference = float(np.max(np.abs(got - expected)))
    if not difference <= PROBE_TOLERANCE:  # also catches NaN
        raise ModelMismatchError(
            f"{what} does not reproduce the fingerprints of this index (probe difference "
            f"{difference:.3g} > {PROBE_TOLERANCE:g}): it is not the model that built the index"
        )
    return difference


def _index_model_path(index_dir, metadata):
    """The model inside an index folder; its recorded name may not lead outside the folder."""
    name = metadata.get("model_file")
    if name is None:
        raise FileNotFoundError(f"{index_dir}: the index records no model; pass --model")
    relative = Path(str(name))
    index_dir = Path(index_dir)
    if (
        relative.is_absolute()
        or ".." in relative.parts
        or not str(name).strip()
        or not (index_dir / relative).resolve().is_relative_to(index_dir.resolve())
    ):
        raise CorruptIndexError(
            f"{index_dir / 'tracks.json'}: the index's model path {name!r} leads outside the index "
            "folder, which nnfp refuses (an index must carry its own model); rebuild the index"
        )
    return index_dir / relative


def _index_embedder(index_dir, metadata, sample_rate, model=None, trust_model=False):
    """The model of an index (or `model` instead), checked against the index's probes."""
    own = model is None
    path = _index_model_path(index_dir, metadata) if own else model
    embedder, path = load_model(path, trust_model=trust_model)
    what = f"the index's own model {path}" if own else f"the model {path}"
    try:
        check_model(embedder, metadata, sample_rate, what)
    except ModelMismatchError as error:
        hint = (
            "; the index folder was changed: rebuild it (`nnfp index build`)"
            if own
            else "; leave out --model to use the index's own model, or rebuild the index with this model"
        )
        raise ModelMismatchError(f"{index_dir}: {error}{hint}") from None
    return embedder


@contextlib.contextmanager
def index_lock(index_dir, timeout=None, log=None):
    """Holds an exclusive lock for changing `index_dir` (`fcntl.flock` on `.<name>.lock`
    beside it, removed afterwards: the folder itself is replaced by `save`).

    Waits for another holder; `timeout` seconds (None: no limit) then `IndexLockedError`.
    `log` (e.g. `print`) is told once when it has to wait.
    """
    import fcntl

    index_dir = Path(index_dir).absolute()
    path = index_dir.with_name(f".{index_dir.name}.lock")
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    waiting = False
    while True:
        handle = open(path, "a")
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    handle.close()
                    raise IndexLockedError(
                        f"{index_dir}: another process is changing this index (it holds {path}); "
                        f"gave up after {timeout:g} s: run again once it has finished"
                    ) from None
                if not waiting and log is not None:
                    log(f"waiting for another process changing {index_dir} (lock {path})")
                waiting = True
                time.sleep(0.1)
        # The holder removes the file before releasing it: a lock won on a removed file
        # is stale, and the next process must lock the file now at `path`.
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()  # releases the lock


def verify_index(index_dir, model=None, trust_model=False):
    """Checks everything of a saved index: every file against its recorded size and SHA-256,
    that each loads, and that the model (the index's own, or `model`) reproduces the
    probe fingerprints. Returns `(problems, notes)`: one-line messages (empty: intact)
    and remarks (e.g. an older index without checksums)."""
    from nnfp.search import verify_db

    index_dir = Path(index_dir)
    problems, has_checksums = verify_db(index_dir)
    notes = []
    if not has_checksums and not problems:
        notes.append(f"{index_dir}: no checksums recorded (built by an older nnfp); rebuild it to add them")
    if problems:
        return problems, notes
    metadata = FingerprintDB.load(index_dir, checksums=False).metadata
    if not metadata.get("probe"):
        notes.append(f"{index_dir}: no probe fingerprints recorded (built by an older nnfp); model not checked")
    try:
        _index_embedder(index_dir, metadata, int(metadata.get("sample_rate", 8000)), model, trust_model)
    except (FileNotFoundError, ValueError) as error:
        problems.append(str(error))
    return problems, notes


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


def fingerprint_stream(embedder, blocks, hop_samples, batch_size=256):
    """Fingerprints every segment of a waveform given as consecutive blocks (for instance
    `nnfp.data.stream_audio`), in memory bounded by the block size: each block is joined to
    the tail of the previous ones that the next segments still need.

    Gives the fingerprints `fingerprint_tracks` gives for the whole waveform.

    Returns:
        `(embeddings (n, d) float32, segment_start (n,) int64 start sample, n_samples,
        peak absolute amplitude)`.
    """
    segment = embedder.segment_samples
    carry = np.zeros(0, np.float32)  # samples from the next segment's start on
    to_drop = 0  # samples still to drop before the next start (a hop longer than a segment)
    out, n_samples, peak = [], 0, 0.0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32)
        if len(block):
            n_samples += len(block)
            peak = max(peak, float(np.abs(block).max()))
        dropped = min(to_drop, len(block))
        carry = np.concatenate([carry, block[dropped:]])
        to_drop -= dropped
        windows = segment_waveform(carry, segment, hop_samples)  # (n, segment) view
        for first in range(0, len(windows), batch_size):
            batch = np.ascontiguousarray(windows[first : first + batch_size])
            out.append(embedder.fingerprint(batch, batch_size=batch_size))
        used = len(windows) * hop_samples
        to_drop += max(0, used - len(carry))
        carry = carry[used:]
    embeddings = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    return embeddings, np.arange(len(embeddings), dtype=np.int64) * hop_samples, n_samples, peak


def _should_stream(path):
    """Long files (or of unknown length) are streamed; the header says, no decoding needed."""
    from nnfp.audio.io import audio_info

    try:
        seconds = audio_info(path).seconds
    except Exception:  # unreadable: decoding it whole reports why
        return False
    return seconds is None or seconds > STREAM_SECONDS


def _fingerprint_streamed(path, embedder, sample_rate, hop_samples, batch_size):
    """`(embeddings, starts, duration_s)` of one long file, or the reason it is unusable."""
    from nnfp.audio.io import AudioError, stream_audio
    from nnfp.audio.sources import usability_problem

    try:
        blocks = stream_audio(path, sample_rate, block_seconds=_STREAM_BLOCK_SECONDS)
        embeddings, starts, n_samples, peak = fingerprint_stream(embedder, blocks, hop_samples, batch_size)
    except AudioError as exc:
        return exc.reason
    except Exception as exc:  # one bad file must never stop a large scan
        return f"unexpected error: {type(exc).__name__}: {exc}"
    min_seconds = embedder.segment_samples / sample_rate
    problem = usability_problem(n_samples, sample_rate, min_seconds, peak=peak)
    return problem or (embeddings, starts, n_samples / sample_rate)


def _fingerprint_chunk(paths, embedder, sample_rate, hop_samples, batch_size):
    """Fingerprints files in order: files up to `STREAM_SECONDS` decoded in parallel and batched
    together, longer ones streamed one by one in bounded memory.

    Returns:
        `(embeddings (n, d), segment_file (n,) position in paths, segment_start (n,) samples,
        kept positions, durations (s), skipped [(position, reason)])`.
    """
    from nnfp.audio.sources import load_tracks

    streamed = {i for i, path in enumerate(paths) if _should_stream(path)}
    whole = [path for i, path in enumerate(paths) if i not in streamed]
    position = {str(path): i for i, path in enumerate(paths)}
    tracks, kept, skipped = load_tracks(
        whole, sample_rate=sample_rate, min_seconds=embedder.segment_samples / sample_rate
    )
    results = {position[str(path)]: reason for path, reason in skipped}
    if tracks:
        embeddings, owners, starts = fingerprint_tracks(embedder, tracks, hop_samples, batch_size)
        bounds = np.cumsum(np.bincount(owners, minlength=len(tracks)))[:-1]
        for path, track, rows, track_starts in zip(
            kept, tracks, np.split(embeddings, bounds), np.split(starts, bounds), strict=True
        ):
            results[position[str(path)]] = (rows, track_starts, len(track) / sample_rate)
    del tracks
    for i in sorted(streamed):
        results[i] = _fingerprint_streamed(paths[i], embedder, sample_rate, hop_samples, batch_size)
    out, owners, starts, kept_positions, durations, skipped = [], [], [], [], [], []
    for i in range(len(paths)):
        if isinstance(results[i], str):
            skipped.append((i, results[i]))
            continue
        rows, track_starts, seconds = results[i]
        owners.append(np.full(len(rows), len(kept_positions), np.int32))
        kept_positions.append(i)
        out.append(rows)
        starts.append(track_starts)
        durations.append(seconds)
    if not out:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64), [], np.zeros(0), skipped
    return (
        np.concatenate(out), np.concatenate(owners), np.concatenate(starts), kept_positions,
        np.array(durations, np.float64), skipped,
    )


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

    Returns `(chunk paths, resumed chunk count, fingerprinting seconds, seconds of audio
    fingerprinted now)` (reused chunks count in neither of the last two).
    """
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
            if not plan_path.exists() and any(work_dir.iterdir()):
                raise OutputFolderError(
                    f"{work_dir}: exists and is not an interrupted nnfp build (no plan.json); "
                    "move it away, nnfp will not delete a folder it did not create"
                )
            shutil.rmtree(work_dir)  # left by a different nnfp job: start over
    work_dir.mkdir(parents=True, exist_ok=True)
    if not plan_path.exists():
        tmp = plan_path.with_name("plan.json.tmp")
        tmp.write_text(json.dumps(plan))
        os.replace(tmp, plan_path)

    hop = int(round(hop_seconds * sample_rate))
    n_chunks = -(-len(relative_paths) // chunk_files)
    chunk_paths, resumed, seconds = [], 0, 0.0
    bar = _Progress(len(relative_paths), "fingerprinting", enabled=progress)
    audio_seconds = fresh_audio = 0.0
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
            embeddings, owners, starts, kept, durations, skipped = _fingerprint_chunk(
                [Path(root) / name for name in names], embedder, sample_rate, hop, batch_size
            )
            kept_ids = first + np.array(kept, np.int32)
            _atomic_npz(
                path,
                embeddings=embeddings.astype(np.float32) if len(owners) else np.zeros((0, 0), np.float32),
                segment_file=kept_ids[owners] if len(owners) else np.zeros(0, np.int32),
                segment_start=(starts / sample_rate).astype(np.float32),
                kept_files=kept_ids,
                durations=durations,
                skipped_files=np.array([first + i for i, _ in skipped], np.int32),
                skipped_reasons=np.array([reason for _, reason in skipped], dtype=str),
            )
            seconds += time.perf_counter() - started
            audio_seconds += float(durations.sum())
            fresh_audio += float(durations.sum())
        bar.update(min(first + chunk_files, len(relative_paths)), f"files, {audio_seconds / 3600:.2f} h audio,")
        if on_chunk is not None:
            on_chunk(chunk)
    return chunk_paths, resumed, seconds, fresh_audio


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
    fresh_audio_seconds: float  # audio of the chunks fingerprinted now (not reused)


def _fingerprint_catalogue(root, relative, embedder, model_path, work_dir, sample_rate, hop_seconds, **options):
    """`_fingerprint_files` + `_gather_chunks` into `work_dir`; tracks numbered from 0."""
    chunks, resumed, seconds, fresh_audio = _fingerprint_files(
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
        store, segment_track, segment_start, tracks, skipped, float(sum(durations)), seconds, resumed,
        fresh_audio,
    )


def _partial_dir(index_dir):
    index_dir = Path(index_dir).absolute()
    return index_dir.with_name(index_dir.name + _PARTIAL_SUFFIX)


def _list_relative(audio_dir):
    from nnfp.audio.sources import list_audio_files

    root = Path(audio_dir).resolve()  # `music/../music` and `./music` are the same folder as `music`
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
    trust_model=False,
    overwrite=False,
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
    # Before anything is loaded or written: never into (or deleting) a user's folder.
    claim_output_dir(index_dir, "index", overwrite=overwrite, inputs=[audio_dir])
    embedder, model_path = load_model(model, trust_model=trust_model)
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
    metadata["probe"] = _probe_entry(embedder, sample_rate)  # checks the model of every later load
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
        fresh_audio_seconds=found.fresh_audio_seconds,
    )


def _calibration_files(model_path, index_dir=None):
    """`{"calibration.json": source}` to save with an index: the index's own calibration when
    `index_dir` has one (an `add` keeps it), else the model's (`x.keras` -> `x.calibration.json`)."""
    from nnfp.calibration import INDEX_CALIBRATION_FILE, model_calibration_path

    own = Path(index_dir) / INDEX_CALIBRATION_FILE if index_dir is not None else None
    source = own if own is not None and own.is_file() else model_calibration_path(model_path)
    return {INDEX_CALIBRATION_FILE: source} if source.is_file() else {}


def _save_and_report(db, index_dir, model_file, model_path, work_dir, found):
    """Save `db` with its model atomically, drop the work dir, and report on the reloaded index."""
    adding = Path(model_path).absolute().parent == Path(index_dir).absolute()  # the index's own model
    calibration = _calibration_files(model_path, index_dir if adding else None)
    db.save(index_dir, extra_files={model_file: model_path, **calibration})
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
    index_dir,
    audio_dir,
    batch_size=256,
    chunk_files=32,
    progress=True,
    on_chunk=None,
    trust_model=False,
    lock_timeout=None,
):
    """Appends the tracks under `audio_dir` to a saved index, fingerprinted by its model.

    Files of `audio_dir` already indexed from the same folder (compared resolved:
    `music/../music` is `music`) are left out. The faiss index is not retrained.
    Resumable and atomic like `build_index`. Holds `index_lock(index_dir)`: a second
    add of the same index waits for the first (`lock_timeout` seconds at most, None:
    no limit, then `IndexLockedError`) and then sees its tracks. The index's model must
    reproduce the index's probe fingerprints (`ModelMismatchError`); a SavedModel needs
    `trust_model=True`.
    """
    index_dir = Path(index_dir).absolute()
    if not index_dir.is_dir():
        raise FileNotFoundError(f"Fingerprint DB directory not found: {index_dir}")
    log = (lambda message: print(message, file=sys.stderr)) if progress else None
    with index_lock(index_dir, timeout=lock_timeout, log=log):
        return _add_to_index(index_dir, audio_dir, batch_size, chunk_files, progress, on_chunk, trust_model)


def _add_to_index(index_dir, audio_dir, batch_size, chunk_files, progress, on_chunk, trust_model):
    db = FingerprintDB.load(index_dir, mmap=True)
    meta = db.metadata
    model_path = _index_model_path(index_dir, meta)
    embedder = _index_embedder(index_dir, meta, meta["sample_rate"], trust_model=trust_model)
    root, relative = _list_relative(audio_dir)
    present = set()
    for source in meta["sources"]:
        if Path(source["audio_dir"]).resolve() == root:
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
    trust_model=False,
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
    # OUT_DIR is shared by the N shard jobs: new, empty, or already a folder of shards.
    claim_output_dir(out_dir, "shards", reuse=True, inputs=[audio_dir])
    write_marker(out_dir, "shards")
    embedder, model_path = load_model(model, trust_model=trust_model)
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
        "probe": _probe_entry(embedder, sample_rate),
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
    with atomic_directory(shard_dir, kind="shards") as tmp:
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


def merge_shards(shard_dirs, index_dir, index_type="auto", progress=True, overwrite=False, **index_params):
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
    claim_output_dir(index_dir, "index", overwrite=overwrite, inputs=shard_dirs)
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
    if work_dir.exists():
        if output_kind(work_dir) != "index" and any(work_dir.iterdir()):
            raise OutputFolderError(
                f"{work_dir}: exists and is not an interrupted `nnfp index merge`; move it away, "
                "nnfp will not delete a folder it did not create"
            )
        shutil.rmtree(work_dir)
    write_marker(work_dir, "index")  # marks the scratch folder as nnfp's, for a rerun after a crash
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
    if first.get("probe"):
        metadata["probe"] = first["probe"]  # same model in every shard (`model_sha1` checked)
    db = FingerprintDB.build(
        store, segment_track, segment_start, tracks, hop_seconds=first["hop_seconds"],
        index_type=index_type, metadata=metadata, on_disk_dir=work_dir / "ivf", part_rows=part_rows,
        **index_params,
    )
    db.save(index_dir, extra_files={first["model_file"]: model_path, **_calibration_files(first["model_source"])})
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

    The query is fingerprinted at `phases` phases of the index hop (cut at 0,
    hop/phases, 2 hop/phases, ...; a phase is dropped when it leaves less than one
    segment); each phase is matched with the index (per-segment top-k, offset
    compensation, mean inner product over the whole query), the best score per
    place wins, and offsets are corrected by the phase, so they have a resolution
    of hop/phases. Matches of one track less than `collapse_seconds` apart are one
    place. A match must score at least `match_threshold(query seconds)`, otherwise
    the answer is "not in the catalogue" (an empty list).

    Args:
        index_dir: a folder written by `build_index`.
        model: override the index's model (must produce the same fingerprints).
        k_probe: faiss neighbours per query segment.
        min_score: a fixed threshold; None keeps every candidate; `"calibrated"`
            (default): the index's calibration (`INDEX/calibration.json`, copied from
            the model's when the index was built) for the query's length, or
            `DEFAULT_MIN_SCORE` when the index has none.
        threads: faiss threads; 1 is fastest for single queries on small machines.
        nprobe: IVF lists visited (IVF indexes), None keeps the saved value.
        phases: query phases per index hop (1 = the paper's search).
        collapse_seconds: matches of one track closer than this are one place.
        calibration: a `Calibration` or a path overriding the index's.
        trust_model: allow a SavedModel (index's or `model`), which can run arbitrary
            TensorFlow operations; `.keras` models load in Keras safe mode regardless.

    The model must reproduce the probe fingerprints recorded in the index
    (`ModelMismatchError` otherwise), and the index's files their recorded sizes
    (and checksums, for indexes up to `nnfp.search.CHECKSUM_ON_LOAD_BYTES`).

    >>> identifier = Identifier("my_index")
    >>> matches = identifier.identify_file("clip.wav", n_results=3)
    >>> matches[0].path, matches[0].offset_s, matches[0].score
    """

    def __init__(
        self,
        index_dir,
        model=None,
        k_probe=DEFAULT_K_PROBE,
        min_score=CALIBRATED,
        threads=1,
        nprobe=None,
        db=None,
        embedder=None,
        phases=DEFAULT_PHASES,
        collapse_seconds=1.0,
        calibration=None,
        trust_model=False,
    ):
        from nnfp.calibration import INDEX_CALIBRATION_FILE, Calibration, model_calibration_path

        index_dir = Path(index_dir) if index_dir is not None else None
        if int(phases) < 1:
            raise ValueError(f"`phases` must be >= 1. Received: phases={phases}")
        if int(k_probe) < 1:
            raise ValueError(f"`k_probe` must be >= 1. Received: k_probe={k_probe}")
        if min_score is not None and min_score != CALIBRATED and not np.isfinite(float(min_score)):
            raise ValueError(f"`min_score` must be a finite number. Received: min_score={min_score}")
        self.db = db if db is not None else FingerprintDB.load(index_dir, threads=threads)
        if nprobe is not None:
            self.db.set_search_params(nprobe=nprobe)
        meta = self.db.metadata
        if embedder is None:
            rate = int(meta.get("sample_rate", 8000))
            embedder = _index_embedder(index_dir, meta, rate, model=model, trust_model=trust_model)
        self.embedder = embedder
        self.sample_rate = int(meta.get("sample_rate", 8000))
        self.hop_samples = int(round(self.db.hop_seconds * self.sample_rate))
        self.k_probe = int(k_probe)
        self.min_score = min_score
        self.phases = int(phases)
        self.collapse_seconds = collapse_seconds
        self.last_query_seconds = None  # length of the latest `identify_audio` query
        if calibration is None and index_dir is not None:
            candidates = [index_dir / INDEX_CALIBRATION_FILE]
            if model is not None:
                candidates.append(model_calibration_path(resolve_model(model)))
            calibration = next((c for c in candidates if c.is_file()), None)
        if calibration is not None and not isinstance(calibration, Calibration):
            calibration = Calibration.load(calibration)
        self.calibration = calibration

    @property
    def min_query_seconds(self):
        return self.embedder.segment_samples / self.sample_rate

    def match_threshold(self, query_seconds):
        """The score a match of a `query_seconds` long query needs (None: every candidate is a match)."""
        if self.min_score is None:
            return None
        if self.min_score != CALIBRATED:
            return float(self.min_score)
        if self.calibration is None:
            return DEFAULT_MIN_SCORE
        return self.calibration.threshold(query_seconds)

    def check_audio(self, audio, name="query"):
        """Raises `QueryError` for a query too short, silent, near-silent or constant to identify."""
        audio = np.asarray(audio, np.float32)
        if len(audio) < self.embedder.segment_samples:
            raise QueryError(
                f"{name}: too short: {len(audio) / self.sample_rate:.2f} s; a query needs "
                f"at least {self.min_query_seconds:g} s of audio"
            )
        peak = float(np.max(np.abs(audio)))
        peak_db = 20 * np.log10(max(peak, 1e-10))
        if peak_db < SILENT_PEAK_DB:
            raise QueryError(f"{name}: silent (peak {peak_db:.0f} dBFS); nothing to identify")
        varying = audio - np.mean(audio)
        rms_db = 10 * np.log10(max(float(np.mean(np.square(varying, dtype=np.float64))), 1e-20))
        if rms_db < SILENT_RMS_DB:
            what = "constant (DC offset only)" if peak_db >= SILENT_PEAK_DB + 20 else "near-silent"
            raise QueryError(
                f"{name}: {what} (level {rms_db:.0f} dBFS RMS, peak {peak_db:.0f} dBFS); nothing to identify"
            )

    def fingerprint(self, audio, name="query"):
        """(n_samples,) waveform at the index rate -> (n_segments, d) fingerprints on the hop grid."""
        self.check_audio(audio, name=name)
        segments = segment_waveform(audio, self.embedder.segment_samples, self.hop_samples)
        return self.embedder.fingerprint(segments)  # batches are copied from the view

    def phase_fingerprints(self, audio, name="query"):
        """Fingerprints of the query at every phase: list of `(shift_seconds, (n_segments, d))`.

        Phase p cuts the query `p * hop / phases` later; phases leaving less than one
        segment are dropped. All phases are fingerprinted in one batch.
        """
        self.check_audio(audio, name=name)
        audio = np.asarray(audio, np.float32)
        shifts = sorted({int(round(p * self.hop_samples / self.phases)) for p in range(self.phases)})
        views = [segment_waveform(audio[shift:], self.embedder.segment_samples, self.hop_samples) for shift in shifts]
        kept = [(shift, view) for shift, view in zip(shifts, views, strict=True) if len(view)]
        if sum(len(view) for _, view in kept) <= _ONE_BATCH_SEGMENTS:
            fingerprints = self.embedder.fingerprint(np.concatenate([view for _, view in kept]))
        else:  # a long query: batches are copied from the views, never the whole query
            fingerprints = np.concatenate([self.embedder.fingerprint(view) for _, view in kept])
        out, first = [], 0
        for shift, view in kept:
            out.append((shift / self.sample_rate, fingerprints[first : first + len(view)]))
            first += len(view)
        return out

    def rank(self, phase_fingerprints, n_results=5, min_score=None, max_seconds=None):
        """Best distinct places over the phases (see `phase_fingerprints`), best first.

        `max_seconds` uses only the segments that lie inside the query's first
        `max_seconds` (the fingerprints of a prefix of the query).
        """
        segment = self.embedder.segment_samples
        all_starts, all_scores, all_shifts = [], [], []
        for shift, fingerprints in phase_fingerprints:
            if max_seconds is not None:
                room = int(round((max_seconds - shift) * self.sample_rate)) - segment
                fingerprints = fingerprints[: max(0, room // self.hop_samples + 1) if room >= 0 else 0]
            if len(fingerprints) == 0:
                continue
            starts = self.db.candidate_starts(fingerprints, top_k=self.k_probe)
            all_starts.append(starts)
            all_scores.append(self.db.sequence_scores(fingerprints, starts))
            all_shifts.append(np.full(len(starts), shift))
        if not all_starts:
            return []
        return self.db.places(
            np.concatenate(all_starts), np.concatenate(all_scores), shifts=np.concatenate(all_shifts),
            n_results=n_results, min_score=min_score, collapse_seconds=self.collapse_seconds,
        )

    def search(self, fingerprints, n_results=5):
        """Matches for fingerprints of consecutive segments on the hop grid (one phase)."""
        seconds = ((len(fingerprints) - 1) * self.hop_samples + self.embedder.segment_samples) / self.sample_rate
        return self.rank([(0.0, fingerprints)], n_results=n_results, min_score=self.match_threshold(seconds))

    def identify_audio(self, audio, n_results=5, name="query"):
        """Best matches (list of `nnfp.search.Match`, best first) for a waveform at the index rate.

        An empty list means "not in the catalogue": no place scored `match_threshold`.

        Raises:
            QueryError: too short, silent, near-silent or constant audio.
        """
        self.last_query_seconds = len(audio) / self.sample_rate
        phases = self.phase_fingerprints(audio, name=name)
        threshold = self.match_threshold(self.last_query_seconds)
        return self.rank(phases, n_results=n_results, min_score=threshold)

    def identify_file(self, path, n_results=5):
        """Reads any audio file (resampled, mixed to mono) and returns its best matches.

        Raises:
            nnfp.data.AudioError: unreadable file. QueryError: too short, silent or constant.
        """
        from nnfp.audio.io import load_audio

        audio = load_audio(path, self.sample_rate)
        return self.identify_audio(audio, n_results=n_results, name=str(path))
