"""Resumable fingerprinting of a catalogue: a list of files, chunk by chunk, into a work folder.

Every chunk of `chunk_files` files is saved (`chunk_000000.npz`, ...) as soon as it is done,
with a `plan.json` naming the files, the model and the settings; an interrupted run started
again with the same plan reuses the finished chunks. `fingerprint_catalogue` then gathers
the chunks into one memory-mapped store, in file order (a `Catalogue`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnfp.catalogue.fingerprint import fingerprint_files, model_digest
from nnfp.outputs import OutputFolderError, atomic_write_bytes, atomic_write_npz

__all__ = ["PARTIAL_SUFFIX", "Catalogue", "fingerprint_catalogue", "list_catalogue", "partial_dir"]

PARTIAL_SUFFIX = ".partial"


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
    hop = hop_samples(hop_seconds, sample_rate, embedder.segment_samples)
    work_dir = Path(work_dir)
    plan = {
        "root": str(Path(root).absolute()),
        "files": list(relative_paths),
        "model": model_digest(model_path),
        "runtime": getattr(embedder, "runtime", "tensorflow"),  # LiteRT fingerprints differ by ~1e-6
        "sample_rate": int(sample_rate),
        "hop_seconds": float(hop_seconds),
        "segment_samples": int(embedder.segment_samples),
        "chunk_files": int(chunk_files),
    }
    # Every chunk carries the digest of its plan: a chunk is reused only by the same plan
    # (a chunk of another catalogue or model is never taken for this one's).
    plan_sha256 = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
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
        atomic_write_bytes(plan_path, json.dumps(plan).encode())

    n_chunks = -(-len(relative_paths) // chunk_files)
    chunk_paths, resumed, seconds = [], 0, 0.0
    bar = tqdm(total=len(relative_paths), desc="fingerprinting", unit="file", disable=not progress, file=sys.stderr)
    audio_seconds = fresh_audio = 0.0
    for chunk in range(n_chunks):
        path = work_dir / f"chunk_{chunk:06d}.npz"
        chunk_paths.append(path)
        first = chunk * chunk_files
        names = relative_paths[first : first + chunk_files]
        reused = _chunk_of_plan(path, plan_sha256)
        if reused is not None:
            resumed += 1
            audio_seconds += reused
        else:
            started = time.perf_counter()
            embeddings, owners, starts, kept, durations, skipped, digests = fingerprint_files(
                [Path(root) / name for name in names], embedder, sample_rate, hop, batch_size
            )
            kept_ids = first + np.array(kept, np.int32)
            atomic_write_npz(
                path,
                embeddings=embeddings.astype(np.float32) if len(owners) else np.zeros((0, 0), np.float32),
                segment_file=kept_ids[owners] if len(owners) else np.zeros(0, np.int32),
                segment_start=(starts / sample_rate).astype(np.float32),
                kept_files=kept_ids,
                durations=durations,
                skipped_files=np.array([first + i for i, _ in skipped], np.int32),
                skipped_reasons=np.array([reason for _, reason in skipped], dtype=str),
                plan_sha256=np.array(plan_sha256),
                pcm_sha256=np.array(digests, dtype="U64"),
            )
            seconds += time.perf_counter() - started
            audio_seconds += float(durations.sum())
            fresh_audio += float(durations.sum())
        bar.set_postfix_str(f"{audio_seconds / 3600:.2f} h audio", refresh=False)
        bar.update(len(names))
        if on_chunk is not None:
            on_chunk(chunk)
    bar.close()
    return chunk_paths, resumed, seconds, fresh_audio


def _chunk_of_plan(path, plan_sha256):
    """The audio seconds of a finished chunk of this plan at `path`, or None (no chunk, a
    damaged one, or one written for another plan: it is fingerprinted again)."""
    try:
        with np.load(path) as done:
            if "plan_sha256" not in done.files or str(done["plan_sha256"]) != plan_sha256:
                return None
            return float(np.sum(done["durations"]))
    except FileNotFoundError:
        return None
    except Exception:  # a damaged chunk (BadZipFile, EOFError...): made again
        return None


def _gather_chunks(chunk_paths, relative_paths, store_path):
    """Concatenates chunk files: embeddings into a memory-mapped `store_path`, the rest in RAM."""
    n_rows, d = 0, None
    for path in chunk_paths:
        with np.load(path) as chunk:
            shape = chunk["embeddings"].shape
            n_rows += shape[0]
            if shape[0]:
                d = shape[1]
    kept, durations, skipped, segment_file, segment_start, digests = [], [], [], [], [], []
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
            digests.extend(str(d) for d in chunk["pcm_sha256"])
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
        digests,
    )


@dataclasses.dataclass
class Catalogue:
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


def hop_samples(hop_seconds, sample_rate, segment_samples=None):
    """The index hop in samples; a clear error unless it is a whole number of samples from
    1 to the segment (`segment_samples`, when known)."""
    exact = float(hop_seconds) * sample_rate
    hop = int(round(exact))
    longest = segment_samples if segment_samples is not None else float("inf")
    if not (1 <= hop <= longest) or abs(hop - exact) > 1e-6:
        segment = f" to the {segment_samples / sample_rate:g} s segment" if segment_samples is not None else " or more"
        raise ValueError(
            f"`hop_seconds` (--hop) must be a whole number of samples at {sample_rate} Hz, from 1 sample"
            f"{segment}. Received: hop_seconds={hop_seconds}"
        )
    return hop


def fingerprint_catalogue(root, relative, embedder, model_path, work_dir, sample_rate, hop_seconds, **options):
    """`_fingerprint_files` + `_gather_chunks` into `work_dir`; tracks numbered from 0."""
    chunks, resumed, seconds, fresh_audio = _fingerprint_files(
        root, relative, embedder, model_path, work_dir, sample_rate, hop_seconds, **options
    )
    store, segment_file, segment_start, kept, durations, skipped, digests = _gather_chunks(
        chunks, relative, Path(work_dir) / "embeddings.npy"
    )
    track_of_file = {f: i for i, f in enumerate(kept)}
    segment_track = np.array([track_of_file[f] for f in segment_file.tolist()], np.int32)
    tracks = [
        {"track_id": i, "path": relative[f], "duration_s": round(float(dur), 4), "pcm_sha256": digest}
        for i, (f, dur, digest) in enumerate(zip(kept, durations, digests, strict=True))
    ]
    return Catalogue(
        store, segment_track, segment_start, tracks, skipped, float(sum(durations)), seconds, resumed,
        fresh_audio,
    )


def partial_dir(index_dir):
    index_dir = Path(index_dir).absolute()
    return index_dir.with_name(index_dir.name + PARTIAL_SUFFIX)


def list_catalogue(audio_dir):
    from nnfp.audio.sources import list_audio_files

    root = Path(audio_dir).resolve()  # `music/../music` and `./music` are the same folder as `music`
    files = list_audio_files(root)
    if root.is_file():
        return root.parent, [root.name]
    return root, [p.relative_to(root).as_posix() for p in files]
