"""The rows of a fingerprint store: every fingerprint is a unit vector, or zero for dead air, and
the segments of each track are contiguous rows in time order. Checked on the rows given to
`FingerprintDB.build` / `add` (`check_segments`) and on a saved store (`check_store`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnfp.store.integrity import REBUILD_HINT, CorruptIndexError

__all__ = [
    "ADD_CHUNK_ROWS",
    "NORM_TOLERANCE",
    "bad_norms",
    "check_segments",
    "check_store",
    "count_zero_rows",
    "readable_rows",
]

ADD_CHUNK_ROWS = 262_144  # rows per faiss add / disk copy: bounds RAM for memory-mapped stores

NORM_TOLERANCE = 1e-3  # |norm - 1| of a stored or query fingerprint (float32 arithmetic: ~1e-6)


def readable_rows(embeddings):
    """The stored rows to read fingerprints from: a memory map as a plain array (a memmap's
    indexing and slicing cost more than the gather or sum they serve), any other store as it is."""
    return embeddings.view(np.ndarray) if isinstance(embeddings, np.memmap) else embeddings


def bad_norms(vectors):
    """Positions of rows that are neither unit vectors nor zero (dead air), NaN included."""
    norms = np.linalg.norm(np.asarray(vectors, np.float32), axis=1)
    return np.flatnonzero(~((np.abs(norms - 1.0) <= NORM_TOLERANCE) | (norms == 0.0))), norms


def count_zero_rows(embeddings, where=None):
    """Counts the zero rows (dead air) of fingerprints read in chunks; every other row must be a
    unit vector: `ValueError` for given embeddings, `CorruptIndexError` naming `where` (a stored file)."""
    zeros = 0
    for first in range(0, len(embeddings), ADD_CHUNK_ROWS):
        block = np.asarray(embeddings[first : first + ADD_CHUNK_ROWS], np.float32)
        bad, norms = bad_norms(block)
        if bad.size:
            row = first + int(bad[0])
            what = (f"row {row} has norm {norms[bad[0]]:.4g} ({bad.size} such rows in rows "
                    f"{first}-{first + len(block) - 1}); fingerprints are unit vectors, or zero for dead air")
            if where is None:
                raise ValueError(f"`embeddings`: {what}")
            raise CorruptIndexError(f"{where}: damaged: {what}; {REBUILD_HINT}")
        zeros += int(np.count_nonzero(norms == 0.0))
    return zeros


def check_segments(embeddings, segment_track, segment_start, tracks, d=None):
    """Validates one batch of segments + tracks; returns normalised arrays and tracks."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(
            "`embeddings` must be a non-empty 2-D array (n_segments, d). "
            f"Received: embeddings.shape={embeddings.shape}"
        )
    if d is not None and embeddings.shape[1] != d:
        raise ValueError(
            f"`embeddings` must have d={d} columns like the database. "
            f"Received: embeddings.shape={embeddings.shape}"
        )
    n_segments = embeddings.shape[0]
    segment_track = np.asarray(segment_track)
    segment_start = np.asarray(segment_start)
    if segment_track.shape != (n_segments,) or segment_start.shape != (n_segments,):
        raise ValueError(
            "`segment_track` and `segment_start` must have shape "
            f"({n_segments},), one entry per embedding. Received: "
            f"segment_track.shape={segment_track.shape}, "
            f"segment_start.shape={segment_start.shape}"
        )
    if not np.issubdtype(segment_track.dtype, np.integer):
        raise ValueError(
            f"`segment_track` must hold integer track ids. Received: dtype={segment_track.dtype}"
        )
    clean_tracks = []
    for track in tracks:
        missing = {"track_id", "path", "duration_s"} - set(track)
        if missing:
            raise ValueError(
                f"Each track needs keys 'track_id', 'path', 'duration_s'; missing "
                f"{sorted(missing)}. Received: track={track}"
            )
        clean = {"track_id": int(track["track_id"]), "path": str(track["path"]), "duration_s": float(track["duration_s"])}
        if track.get("pcm_sha256"):  # the decoded audio's digest: `nnfp index add` refuses the same audio twice
            clean["pcm_sha256"] = str(track["pcm_sha256"])
        if track.get("removed"):  # removed from the catalogue (`FingerprintDB.remove`): its id stays taken
            clean["removed"] = True
        clean_tracks.append(clean)
    ids = [t["track_id"] for t in clean_tracks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Track ids must be unique. Received: track_ids={ids}")
    unknown = np.setdiff1d(segment_track, ids)
    if unknown.size:
        raise ValueError(
            "`segment_track` refers to track ids absent from `tracks`. "
            f"Received: unknown ids={unknown[:10].tolist()}"
        )
    # A sequence window is valid only inside one track, which we check as
    # segment_track[start] == segment_track[end]; that needs contiguous tracks.
    n_runs = 1 + int(np.count_nonzero(segment_track[1:] != segment_track[:-1]))
    if n_runs != np.unique(segment_track).size:
        raise ValueError(
            "The segments of each track must be contiguous rows, in time order. "
            f"Received: {n_runs} runs for {np.unique(segment_track).size} tracks"
        )
    count_zero_rows(embeddings)  # unit or zero rows only
    return (
        np.ascontiguousarray(embeddings, dtype=np.float32),
        segment_track.astype(np.int32),
        segment_start.astype(np.float32),
        clean_tracks,
    )


def check_store(embeddings, meta, directory):
    """Every stored fingerprint is a unit vector or zero, and the zeros are the dead-air rows
    recorded at save time (`CorruptIndexError` otherwise)."""
    path = Path(directory) / "embeddings.npy"
    zeros = count_zero_rows(embeddings, where=path)
    recorded = meta.get("zero_rows")
    if recorded is not None and zeros != recorded:
        raise CorruptIndexError(
            f"{path}: damaged: {zeros} zero fingerprints, {recorded} dead-air rows recorded; {REBUILD_HINT}"
        )
