"""The fingerprint database (`FingerprintDB`) and its sequence search; the only module importing faiss.

Pure NumPy + faiss: this module receives embeddings and never imports the model.

Where the vectors live is the store's backend: `faiss` (the default: a faiss index and the
exact fingerprints in `embeddings.npy`, memory-mapped) or `milvus` (a Milvus collection, in a
Milvus Lite file inside the folder or on a server: `nnfp.store.milvus`). Both answer the same
small interface, faiss' own: an index with `ntotal` and `search(x, k) -> (scores, rows)`, and
the stored rows as an array, `embeddings[rows]`; everything below it (candidates, sequence
scores, phases, interpolation, places) is one code for both.

A song is cut into 1 s segments on a `hop_seconds` hop; every segment has an
L2-normalised fingerprint. A query of `n` consecutive segments (same hop) is
matched as in the paper's evaluation (mimbres/neural-audio-fp `eval/eval_faiss.py`):
each query segment retrieves `k_probe` nearest DB segments, each hit at DB row `c`
for query segment `i` proposes the sequence start `c - i`, and every proposed
start is scored by the mean inner product of the `n` query segments with the
`n` stored DB segments that follow it.
"""


from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from nnfp.defaults import INDEX_TYPES
from nnfp.outputs import atomic_directory, atomic_file, atomic_write_bytes
from nnfp.store.integrity import (
    REBUILD_HINT,
    CorruptIndexError,
    corrupt_file_error,
    file_records,
    integrity_problems,
    meta_digest,
    one_line,
)

__all__ = [
    "INDEX_TYPES",
    "FingerprintDB",
    "Match",
    "read_metadata",
    "verify_db",
]

FORMAT_VERSION = 1
_MIN_POINTS_PER_CENTROID = 39  # below this faiss k-means warns and clusters poorly
_MAX_POINTS_PER_CENTROID = 256  # faiss k-means subsamples beyond this anyway
_ADD_CHUNK_ROWS = 262_144  # rows per faiss add / disk copy: bounds RAM for memory-mapped stores
# sequence_scores works on tiles of at most this many (query row, candidate) pairs:
# ~32 MB of gathered float32 rows at d=128, whatever the query length.
# faiss (1.15) computes exact inner products without BLAS below 128,000 query vectors at once;
# with BLAS from 4 vectors on, the 76 vectors of a 10 s query at 4 phases are searched ~7x faster
# in a 38k-segment flat index (benchmarks/search.py), with the same neighbours.
_BLAS_MIN_QUERIES = 4
_SCORE_TILE_PAIRS = 65_536
_SCORE_TILE_QUERY_ROWS = 64
IVF_DATA_FILE = "index.ivfdata"  # inverted lists of an on-disk IVF index, beside index.faiss
# `load` hashes every recorded file (a damaged store of the same size is found at once)
# when they add up to at most this; larger indexes check sizes only (`verify_files` does all).
CHECKSUM_ON_LOAD_BYTES = 256 * 2**20


# What a saved DB folder holds besides the files its integrity record lists: a save replacing
# the folder drops these, and carries any other entry (a user's own file) into the new one.
_DB_NAMES = ("embeddings.npy", "segments.npz", "tracks.json", "index.faiss", IVF_DATA_FILE, "model", "model.keras", "litert",
             "calibration.json", "milvus.db")


# The index parameters `FingerprintDB.build` takes (what `index_params` records, but `on_disk`).
_BUILD_PARAMS = ("nlist", "m", "nbits", "nprobe", "hnsw_m", "ef_search")

_LOAD_ATTEMPTS = 20  # loads overlapping a folder swap are made again, up to this many in all


def _folder_identity(directory):
    """(device, inode) of a folder and the inode of its tracks.json, None when missing: a replaced
    folder is another inode, and so is a tracks.json replaced in place (a Milvus-backed index)."""
    try:
        info = os.stat(directory)
    except OSError:
        return None
    try:
        table = os.stat(Path(directory) / "tracks.json").st_ino
    except OSError:
        table = None
    return info.st_dev, info.st_ino, table


def _own_names(directory):
    """Top-level entries of the DB saved at `directory` that are nnfp's (`_DB_NAMES` and its record)."""
    names = set(_DB_NAMES)
    try:
        recorded = json.loads((Path(directory) / "tracks.json").read_text())["integrity"]["files"]
        names.update(name.split("/")[0] for name in recorded)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    names.update(path.name for path in Path(directory).glob(_SEGMENTS_GLOB))  # a Milvus index's versions
    return names


_SEGMENTS_GLOB = "segments-*.npz"  # a Milvus-backed index's segment tables, one per version


def _store_entry(meta):
    """The `store` entry of a tracks.json: where the vectors are (faiss for older folders)."""
    store = meta.get("store") or {"backend": "faiss"}
    if store.get("backend") not in ("faiss", "milvus"):
        raise CorruptIndexError(f"unknown fingerprint store backend {store.get('backend')!r}; {REBUILD_HINT}")
    return store


def _read_meta(directory):
    """tracks.json of a saved DB, checked to be a DB description of the supported version."""
    path = Path(directory) / "tracks.json"
    try:
        meta = json.loads(path.read_text())
        missing = {"version", "d", "n_segments", "hop_seconds", "index_type", "params", "tracks"} - set(meta)
    except Exception as error:  # UnicodeDecodeError, JSONDecodeError, not a mapping...
        raise corrupt_file_error(path, error) from None
    if missing:
        raise CorruptIndexError(f"{path}: damaged (no {', '.join(sorted(missing))}); {REBUILD_HINT}")
    if meta.get("version") != FORMAT_VERSION:
        raise CorruptIndexError(
            f"{path}: unsupported fingerprint DB version {meta.get('version')!r} (this nnfp reads "
            f"version {FORMAT_VERSION}); rebuild the index with this nnfp (`nnfp index build`)"
        )
    return meta


def read_metadata(directory):
    """The catalogue metadata of a saved DB (its model, its source folders...), read without
    loading the index or the fingerprints."""
    return _read_meta(directory).get("metadata") or {}


def _check_store(embeddings, meta, directory):
    """Every stored fingerprint is a unit vector or zero, and the zeros are the dead-air rows
    recorded at save time (`CorruptIndexError` otherwise)."""
    path = Path(directory) / "embeddings.npy"
    zeros = _zero_rows(embeddings, where=path)
    recorded = meta.get("zero_rows")
    if recorded is not None and zeros != recorded:
        raise CorruptIndexError(
            f"{path}: damaged: {zeros} zero fingerprints, {recorded} dead-air rows recorded; {REBUILD_HINT}"
        )


def verify_db(directory):
    """Checks every file of a saved DB: sizes and SHA-256 recorded at save time, and that
    each file loads. Returns `(problems, has_checksums)`: one-line messages (empty: intact),
    and False for a folder saved by an older nnfp, which recorded no checksums."""
    directory = Path(directory)
    try:
        meta = _read_meta(directory)
    except (FileNotFoundError, CorruptIndexError) as error:
        return [str(error)], False
    problems = integrity_problems(directory, meta, checksums=True)
    if not problems:
        try:
            db = FingerprintDB.load(directory, checksums=False)  # checks the store up to the on-load limit
            if db.backend == "milvus":  # its row count and probe rows were checked: norms of a sample
                sample = np.unique(np.linspace(0, db.n_segments - 1, min(db.n_segments, _VERIFY_SAMPLE_ROWS)).astype(np.int64))
                _zero_rows(db.embeddings[sample], where=db.source)
            elif db.embeddings.nbytes > CHECKSUM_ON_LOAD_BYTES:
                _check_store(db.embeddings, meta, directory)  # and here the larger ones
        except (OSError, CorruptIndexError) as error:  # FileNotFoundError, a Milvus server not reached
            problems.append(str(error))
    return problems, bool(meta.get("integrity"))


_VERIFY_SAMPLE_ROWS = 65_536  # rows of a Milvus collection whose norms `verify_db` checks


@dataclasses.dataclass(frozen=True)
class Match:
    """One search result: a track and the offset of the query inside it.

    Attributes:
        track_id: id of the matched track.
        path: the track's relative path.
        offset_s: start of the matched window inside the track, in seconds.
        score: mean inner product of query and DB segments over the window.
        segment_index: DB row of the window's first segment.
        speed: the playback speed at which the query plays the track (1.03: 3 % fast);
            `offset_s` is in the track's own time (`nnfp.catalogue.identify.Identifier`'s
            speed search; 1.0 for a search at one speed).
        confidence: the value the decision "in the catalogue" was taken on
            (`nnfp.catalogue.identify.Identifier`; None where no decision was taken).
    """

    track_id: int
    path: str
    offset_s: float
    score: float
    segment_index: int
    speed: float = 1.0
    confidence: float | None = None


def _default_threads():
    return max(1, min(os.cpu_count() or 1, 8))


def _default_nlist(n_segments):
    nlist = int(round(4.0 * np.sqrt(n_segments)))
    return int(np.clip(nlist, 1, max(1, n_segments // _MIN_POINTS_PER_CENTROID)))


_NORM_TOLERANCE = 1e-3  # |norm - 1| of a stored or query fingerprint (float32 arithmetic: ~1e-6)


def _bad_norms(vectors):
    """Positions of rows that are neither unit vectors nor zero (dead air), NaN included."""
    norms = np.linalg.norm(np.asarray(vectors, np.float32), axis=1)
    return np.flatnonzero(~((np.abs(norms - 1.0) <= _NORM_TOLERANCE) | (norms == 0.0))), norms


def _zero_rows(embeddings, where=None):
    """Counts the zero rows (dead air) of fingerprints read in chunks; every other row must be a
    unit vector: `ValueError` for given embeddings, `CorruptIndexError` naming `where` (a stored file)."""
    zeros = 0
    for first in range(0, len(embeddings), _ADD_CHUNK_ROWS):
        block = np.asarray(embeddings[first : first + _ADD_CHUNK_ROWS], np.float32)
        bad, norms = _bad_norms(block)
        if bad.size:
            row = first + int(bad[0])
            what = (f"row {row} has norm {norms[bad[0]]:.4g} ({bad.size} such rows in rows "
                    f"{first}-{first + len(block) - 1}); fingerprints are unit vectors, or zero for dead air")
            if where is None:
                raise ValueError(f"`embeddings`: {what}")
            raise CorruptIndexError(f"{where}: damaged: {what}; {REBUILD_HINT}")
        zeros += int(np.count_nonzero(norms == 0.0))
    return zeros


def _check_segments(embeddings, segment_track, segment_start, tracks, d=None):
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
    _zero_rows(embeddings)  # unit or zero rows only
    return (
        np.ascontiguousarray(embeddings, dtype=np.float32),
        segment_track.astype(np.int32),
        segment_start.astype(np.float32),
        clean_tracks,
    )


@contextlib.contextmanager
def _quiet_faiss():
    """Drops what faiss' C++ code prints on stdout (on-disk list resizing and renaming notes),
    which would otherwise end up in `nnfp identify --json` output."""
    try:
        libc = ctypes.CDLL(None)
        saved = os.dup(1)
    except OSError:  # no C library handle or no stdout: nothing to silence
        yield
        return
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _index_settings(index_type, n_segments, d, nlist, m, nbits, nprobe, hnsw_m, ef_search):
    """Validated faiss parameters for `index_type` (what `FingerprintDB.index_params` records)."""
    params = {}
    if index_type in ("ivf", "ivfpq"):
        if nlist is None:
            nlist = _default_nlist(n_segments)
        if not 1 <= int(nlist) <= n_segments:
            raise ValueError(
                f"`nlist` must be in [1, n_segments={n_segments}]. Received: nlist={nlist}"
            )
        if int(nprobe) < 1:
            raise ValueError(f"`nprobe` must be >= 1. Received: nprobe={nprobe}")
        params.update(nlist=int(nlist), nprobe=int(nprobe))
    if index_type == "ivfpq":
        if int(m) < 1 or d % int(m):
            raise ValueError(f"`m` must divide d={d}. Received: m={m}")
        if not 1 <= int(nbits) <= 16:
            raise ValueError(f"`nbits` must be in [1, 16]. Received: nbits={nbits}")
        if n_segments < 2 ** int(nbits):
            raise ValueError(
                f"Too few segments to train a product quantiser with nbits={nbits}: "
                f"it needs at least {2 ** int(nbits)}. Received: n_segments={n_segments}. "
                "Use index_type='flat' or a smaller `nbits`."
            )
        params.update(m=int(m), nbits=int(nbits))
    if index_type == "hnsw":
        if int(hnsw_m) < 2 or int(ef_search) < 1:
            raise ValueError(
                "`hnsw_m` must be >= 2 and `ef_search` >= 1. "
                f"Received: hnsw_m={hnsw_m}, ef_search={ef_search}"
            )
        params.update(hnsw_m=int(hnsw_m), ef_search=int(ef_search))
    return params


def _trained_index(embeddings, index_type, params, train_size):
    """An empty faiss index of `index_type`, trained (IVF types) on a seeded sample of `embeddings`.

    The sample depends only on the number of rows, so the same store always gives the
    same quantisers (a sharded build trains exactly like a single-process one).
    """
    n_segments, d = embeddings.shape
    factory = {
        "flat": "Flat",
        "ivf": f"IVF{params.get('nlist')},Flat",
        "ivfpq": f"IVF{params.get('nlist')},PQ{params.get('m')}x{params.get('nbits')}",
        "hnsw": f"HNSW{params.get('hnsw_m')},Flat",
    }[index_type]
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    if index_type == "ivfpq":
        # The factory turns on polysemous training (an annealing over code
        # orderings, tens of seconds) which only Hamming-filtered search uses.
        index.do_polysemous_training = False
    if not index.is_trained:
        points_needed = max(params["nlist"], 2 ** params.get("nbits", 0))
        max_train = _MAX_POINTS_PER_CENTROID * points_needed
        if train_size is not None:
            if int(train_size) < points_needed:
                raise ValueError(
                    f"`train_size` must be >= {points_needed} (nlist or 2**nbits). "
                    f"Received: train_size={train_size}"
                )
            max_train = int(train_size)
        if n_segments > max_train:
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(n_segments, size=max_train, replace=False))
            index.train(np.ascontiguousarray(embeddings[sample]))
        else:
            index.train(np.ascontiguousarray(embeddings))
    return index


def _add_in_chunks(index, embeddings, first_row=0, n_rows=None, with_ids=False):
    n_rows = len(embeddings) - first_row if n_rows is None else n_rows
    for first in range(first_row, first_row + n_rows, _ADD_CHUNK_ROWS):
        last = min(first + _ADD_CHUNK_ROWS, first_row + n_rows)
        rows = np.ascontiguousarray(embeddings[first:last])
        if with_ids:
            index.add_with_ids(rows, np.arange(first, last, dtype=np.int64))
        else:
            index.add(rows)


def _merge_parts_on_disk(trained, embeddings, part_rows, work_dir):
    """Fills one copy of the trained IVF index per part of consecutive rows, writes each to
    `work_dir`, then merges their inverted lists into `work_dir/index.ivfdata` with
    `faiss.contrib.ondisk.merge_ondisk` (the per-part files are read memory-mapped)."""
    from faiss.contrib.ondisk import merge_ondisk

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    blank = faiss.serialize_index(trained)
    part_files, first = [], 0
    for number, n_rows in enumerate(part_rows):
        if n_rows:
            part = faiss.deserialize_index(blank)
            # Global row numbers as ids: the merged lists hold the same (id, code)
            # entries, in the same order, as one index filled with every row at once.
            _add_in_chunks(part, embeddings, first, n_rows, with_ids=True)
            part_files.append(str(work_dir / f"part_{number:05d}.faiss"))
            faiss.write_index(part, part_files[-1])
            del part
        first += n_rows
    if first != len(embeddings):
        raise ValueError(
            f"`part_rows` must add up to the {len(embeddings)} rows of `embeddings`. "
            f"Received: sum(part_rows)={first}"
        )
    merged = faiss.deserialize_index(blank)
    ivfdata = work_dir / IVF_DATA_FILE
    ivfdata.unlink(missing_ok=True)
    with _quiet_faiss():
        merge_ondisk(merged, part_files, str(ivfdata))
    for name in part_files:
        os.remove(name)
    return merged


def _invlists_on_disk(index):
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(
        faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists
    )


def _write_index_on_disk(index, index_path, ivfdata_path):
    """Writes an IVF index as `index_path` + its inverted lists in `ivfdata_path` (faiss'
    `OnDiskInvertedLists`), copying the lists of `index` (in RAM or on disk) without
    changing `index`. faiss records the lists' file name in `index_path`; `load` finds
    it beside `index_path` (IO_FLAG_ONDISK_SAME_DIR), so the folder can be renamed."""
    ivf = faiss.extract_index_ivf(index)
    current, owned = ivf.invlists, ivf.own_invlists
    with _quiet_faiss():
        on_disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata_path))
        sources = faiss.InvertedListsPtrVector()
        sources.push_back(current)
        on_disk.merge_from_multiple(sources.data(), sources.size(), False)
    ivf.own_invlists = False  # so replace_invlists does not free the current lists
    ivf.replace_invlists(on_disk, False)
    try:
        faiss.write_index(index, str(index_path))
    finally:
        ivf.replace_invlists(current, owned)
    del on_disk


def _invlists_to_ram(index):
    """Replaces memory-mapped, read-only on-disk inverted lists by an in-RAM copy (to add to)."""
    ivf = faiss.extract_index_ivf(index)
    in_ram = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.invlists.copy_subset_to(in_ram, faiss.InvertedLists.SUBSET_TYPE_ID_RANGE, 0, 2**62)
    ivf.replace_invlists(in_ram, True)
    in_ram.this.disown()


class FingerprintDB:
    """A database of segment fingerprints with a faiss index and sequence search.

    Rows are segments in time order, track after track. The faiss index only
    proposes candidates; sequence scores are computed from the exact stored
    vectors (`embeddings`, memory-mapped when loaded from disk).

    Args:
        embeddings: (N, d) float32, L2-normalised segment fingerprints (for the Milvus backend,
            its `nnfp.store.milvus.MilvusRows`: rows fetched by id).
        segment_track: (N,) int32 track id of each segment.
        segment_start: (N,) float32 start of each segment in its track, seconds.
        tracks: list of `{"track_id": int, "path": str, "duration_s": float}`; an entry
            with `"removed": True` is a removed track (`remove`), never answered.
        hop_seconds: hop between consecutive segments (query and DB alike).
        index: a faiss index over `embeddings` (inner-product metric), or a
            `nnfp.store.milvus.MilvusIndex` (the same calls on a Milvus collection).
        index_type: one of `"flat"`, `"ivf"`, `"ivfpq"`, `"hnsw"`.
        index_params: the parameters the index was built with.
        threads: faiss OpenMP threads used for search.
        metadata: free-form JSON-serialisable dict saved with the database
            (model, audio folders, skipped files...).

    Build one with `FingerprintDB.build`, or open a saved one with
    `FingerprintDB.load`:

    >>> db = FingerprintDB.build(emb, seg_track, seg_start, tracks, index_type="ivfpq")
    >>> db.save("fp_db"); db = FingerprintDB.load("fp_db")
    >>> best = db.search(query_emb)[0]  # Match(track_id, path, offset_s, ...)

    Follows the sequence search of Chang et al., "Neural Audio Fingerprint for
    High-specific Audio Retrieval based on Contrastive Learning", ICASSP 2021.
    """

    def __init__(
        self,
        embeddings,
        segment_track,
        segment_start,
        tracks,
        hop_seconds,
        index,
        index_type,
        index_params,
        threads=None,
        metadata=None,
    ):
        if index_type not in INDEX_TYPES:
            raise ValueError(
                f"`index_type` must be one of {INDEX_TYPES}. Received: index_type={index_type!r}"
            )
        if index.ntotal != len(embeddings):
            raise ValueError(
                f"The index holds {index.ntotal} vectors but there are "
                f"{len(embeddings)} embeddings."
            )
        self.embeddings = embeddings
        self.segment_track = segment_track
        self.segment_start = segment_start
        self.tracks = list(tracks)
        self.hop_seconds = float(hop_seconds)
        self.index = index
        self.index_type = index_type
        self.index_params = dict(index_params)
        self.metadata = dict(metadata or {})
        self.integrity = None  # checksums recorded in the saved folder (set by `load`)
        self.loaded_from = None  # the folder a Milvus-backed DB lives in (`load`; `save` changes it in place)
        self.source = None  # the embeddings file of a loaded DB (named in errors)
        self.threads = _default_threads() if threads is None else int(threads)
        if self.threads < 1:
            raise ValueError(f"`threads` must be >= 1. Received: threads={threads}")
        self._track_by_id = {t["track_id"]: t for t in self.tracks}
        self._index_tracks()
        self._index_removed()
        self.set_search_params(
            nprobe=self.index_params.get("nprobe"), ef_search=self.index_params.get("ef_search")
        )

    # ------------------------------------------------------------------ build

    @classmethod
    def build(
        cls,
        embeddings,
        segment_track,
        segment_start,
        tracks,
        hop_seconds=0.5,
        index_type="flat",
        nlist=None,
        m=16,
        nbits=8,
        nprobe=16,
        hnsw_m=32,
        ef_search=128,
        threads=None,
        train_size=None,
        metadata=None,
        on_disk_dir=None,
        part_rows=None,
        milvus=None,
    ):
        """Builds (and trains, for IVF types) a database from segment fingerprints.

        Args:
            embeddings, segment_track, segment_start, tracks: see the class docstring.
            hop_seconds: segment hop in seconds.
            index_type: `"flat"` (exact), `"ivf"` (IVF-Flat), `"ivfpq"` (IVF-PQ)
                or `"hnsw"` (HNSW-Flat); all use the inner-product metric.
            nlist: IVF lists. Default about 4*sqrt(N), lowered so that every
                list gets at least 39 training points.
            m, nbits: PQ sub-quantisers (must divide d) and bits per code.
            nprobe: IVF lists visited per query.
            hnsw_m, ef_search: HNSW graph degree and search breadth.
            threads: faiss OpenMP threads; default `min(os.cpu_count(), 8)`.
            train_size: IVF/PQ training points, sampled from `embeddings`;
                default `256 * max(nlist, 2**nbits)` (capped at N).
            metadata: see the class docstring.
            on_disk_dir: IVF types only: a scratch folder. The quantisers are trained
                once, every part of `part_rows` consecutive rows (one part by
                default) fills its own copy of the trained index, and the parts'
                inverted lists are merged by `faiss.contrib.ondisk.merge_ondisk`
                into a memory-mapped file in this folder; `save` writes them to
                `index.ivfdata` beside `index.faiss`. Search results are the same
                as without it.
            part_rows: row counts of the parts (they add up to N), e.g. the
                segments of each shard of a sharded build.
            milvus: a `nnfp.store.milvus.MilvusTarget`: the fingerprints go to that Milvus
                collection instead of faiss (`index_type` "flat", "ivf", "hnsw", or "ivfpq" on a
                server); written once each, carrying on after an earlier killed build of the same
                catalogue (`MilvusIndex.fill`). `threads`, `train_size`, `on_disk_dir` and
                `part_rows` are faiss settings, not used.

        `embeddings` may be a memory-mapped array (`np.load(..., mmap_mode="r")`
        or `np.lib.format.open_memmap`): it is then never copied into RAM;
        training reads a sample and vectors are added in chunks.
        """
        if index_type not in INDEX_TYPES:
            raise ValueError(
                f"`index_type` must be one of {INDEX_TYPES}. Received: index_type={index_type!r}"
            )
        if not hop_seconds > 0:
            raise ValueError(f"`hop_seconds` must be > 0. Received: hop_seconds={hop_seconds}")
        embeddings, segment_track, segment_start, tracks = _check_segments(
            embeddings, segment_track, segment_start, tracks
        )
        n_segments, d = embeddings.shape
        params = _index_settings(index_type, n_segments, d, nlist, m, nbits, nprobe, hnsw_m, ef_search)
        threads = _default_threads() if threads is None else int(threads)
        if milvus is not None:
            from nnfp.store.milvus import MilvusIndex, content_key

            index = MilvusIndex.create(milvus, d, index_type, params, content_key(embeddings, segment_track, segment_start))
            index.fill(embeddings, segment_track)
            return cls(
                index.rows, segment_track, segment_start, tracks, hop_seconds=hop_seconds, index=index,
                index_type=index_type, index_params=params, threads=threads, metadata=metadata,
            )
        faiss.omp_set_num_threads(threads)
        index = _trained_index(embeddings, index_type, params, train_size)
        if on_disk_dir is not None and index_type in ("ivf", "ivfpq"):
            part_rows = [n_segments] if part_rows is None else [int(n) for n in part_rows]
            index = _merge_parts_on_disk(index, embeddings, part_rows, on_disk_dir)
            params["on_disk"] = True
        else:
            _add_in_chunks(index, embeddings)
        return cls(
            embeddings,
            segment_track,
            segment_start,
            tracks,
            hop_seconds=hop_seconds,
            index=index,
            index_type=index_type,
            index_params=params,
            threads=threads,
            metadata=metadata,
        )

    def add(self, embeddings, segment_track, segment_start, tracks):
        """Appends new tracks; their ids are renumbered to continue after the current ones.

        `segment_track` refers to the `track_id`s of the given `tracks`; new ids are
        `next_track_id, next_track_id + 1, ...` in the order of `tracks`.
        The index is not retrained. A memory-mapped `embeddings` becomes an
        in-memory array. Returns the list of assigned track ids.

        On the Milvus backend the rows are written to the collection now (under row numbers
        that readers of the saved version ignore until `save` puts the new version in place).
        """
        embeddings, segment_track, segment_start, tracks = _check_segments(
            embeddings, segment_track, segment_start, tracks, d=self.dim
        )
        first_id = self.next_track_id
        new_id = {t["track_id"]: first_id + i for i, t in enumerate(tracks)}
        old_ids = np.array(list(new_id), dtype=np.int64)
        new_ids = np.array(list(new_id.values()), dtype=np.int64)
        order = np.argsort(old_ids)
        segment_track = new_ids[order][np.searchsorted(old_ids[order], segment_track)]
        tracks = [dict(t, track_id=new_id[t["track_id"]]) for t in tracks]

        if self.backend == "milvus":
            self.index.add(embeddings, segment_track)  # `embeddings` reads the collection: it grows with it
        else:
            self._set_threads()
            if _invlists_on_disk(self.index):
                # Loaded lists are mapped read-only from the saved folder, which must stay
                # intact until `save` replaces it: add to a copy in RAM; `save` writes the
                # lists to disk again (`index_params["on_disk"]`).
                _invlists_to_ram(self.index)
            self.index.add(embeddings)
            self.embeddings = np.concatenate([np.asarray(self.embeddings), embeddings])
        self.segment_track = np.concatenate([self.segment_track, segment_track.astype(np.int32)])
        self.segment_start = np.concatenate([self.segment_start, segment_start])
        self.tracks.extend(tracks)
        self._track_by_id.update({t["track_id"]: t for t in tracks})
        self._index_tracks()
        self._index_removed()
        return list(new_id.values())

    def remove(self, track_ids):
        """Marks tracks removed from the catalogue: they are never answered again (`places`
        and the candidate starts skip their rows), while their rows stay stored until
        `compacted` and their entries stay in `tracks` (with `"removed": True`), so track
        ids stay stable and are never given again. On the Milvus backend, `save_tracks` (or
        `save`) then deletes their rows from the collection, once the new table is in place.

        Returns the removed track entries. `ValueError` naming every unknown or already
        removed id, and nothing is marked.
        """
        ids = list(dict.fromkeys(int(track_id) for track_id in track_ids))
        unknown = [i for i in ids if i not in self._track_by_id]
        removed = [i for i in ids if i in self._track_by_id and self._track_by_id[i].get("removed")]
        if unknown or removed:
            raise ValueError(
                "; ".join(
                    ([f"no track {', '.join(map(str, unknown))} in the index"] if unknown else [])
                    + ([f"track {', '.join(map(str, removed))} already removed"] if removed else [])
                )
                + "; nothing was removed"
            )
        for track_id in ids:
            self._track_by_id[track_id]["removed"] = True
        self._index_removed()
        return [self._track_by_id[track_id] for track_id in ids]

    def compacted(self, work_dir=None):
        """A new database of the live tracks only: the rows of removed tracks are dropped
        and the faiss index is built again (trained again for IVF types) with the same
        type and parameters (an IVF `nlist` too large for the rows left falls back to the
        default for that size). Track entries, removed ones included, and metadata are
        kept, so ids stay as they were.

        Args:
            work_dir: optional scratch folder: the live rows are copied into a
                memory-mapped `embeddings.npy` there (never the whole store in RAM), and an
                index with on-disk inverted lists builds them there. It must outlive the
                returned database (until it is saved).

        Raises:
            ValueError: every track is removed (an index needs rows), too few rows are
                left to train the index's product quantiser, or the index is on Milvus (its
                removed rows are deleted from the collection when the removal is saved).
        """
        if self.backend == "milvus":
            raise ValueError(
                "a Milvus-backed index is not compacted: the rows of removed tracks are deleted from its "
                "collection when the removal is saved"
            )
        live = self.live_rows()
        n_live = int(np.count_nonzero(live))
        if n_live == 0:
            raise ValueError("every track of the index is removed: nothing is left to compact into an index")
        on_disk = bool(self.index_params.get("on_disk"))
        params = {key: value for key, value in self.index_params.items() if key in _BUILD_PARAMS}
        if params.get("nlist") is not None and params["nlist"] > max(1, n_live // _MIN_POINTS_PER_CENTROID):
            params["nlist"] = None
        if work_dir is not None:
            work_dir = Path(work_dir)
            store = np.lib.format.open_memmap(
                work_dir / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n_live, self.dim)
            )
        else:
            store = np.empty((n_live, self.dim), np.float32)
        filled = 0
        for first in range(0, self.n_segments, _ADD_CHUNK_ROWS):
            keep = live[first : first + _ADD_CHUNK_ROWS]
            block = np.asarray(self.embeddings[first : first + _ADD_CHUNK_ROWS], np.float32)[keep]
            store[filled : filled + len(block)] = block
            filled += len(block)
        return FingerprintDB.build(
            store,
            self.segment_track[live],
            self.segment_start[live],
            [dict(track) for track in self.tracks],
            hop_seconds=self.hop_seconds,
            index_type=self.index_type,
            threads=self.threads,
            metadata=json.loads(json.dumps(self.metadata)),
            on_disk_dir=(work_dir / "ivf") if on_disk and work_dir is not None else None,
            **params,
        )

    # --------------------------------------------------------------- metadata

    @property
    def backend(self):
        """Where the vectors live: `"faiss"` or `"milvus"` (`nnfp.store.milvus`)."""
        return getattr(self.index, "backend", "faiss")

    def close(self):
        """Lets go of the Milvus connection (the last index open on a Milvus Lite file stops its
        server, so another process can open it); nothing to do for faiss. A database garbage-collected
        unclosed lets go at this process' next opening of a Milvus Lite file, or at exit."""
        if self.backend == "milvus":
            self.index.close()

    @property
    def dim(self):
        return int(self.embeddings.shape[1])

    @property
    def n_segments(self):
        return int(self.embeddings.shape[0])

    @property
    def next_track_id(self):
        return max((t["track_id"] for t in self.tracks), default=-1) + 1

    @property
    def live_tracks(self):
        """The tracks that are answered: every entry of `tracks` not removed (`remove`)."""
        return [track for track in self.tracks if not track.get("removed")]

    @property
    def removed_track_ids(self):
        """Sorted ids of the removed tracks."""
        return self._removed_ids.tolist()

    @property
    def n_live_tracks(self):
        return len(self.tracks) - len(self._removed_ids)

    @property
    def n_removed_segments(self):
        """Rows still stored for removed tracks (`compacted` drops them)."""
        return self._n_removed_rows

    @property
    def n_live_segments(self):
        """Rows of the live tracks (`n_segments` counts every stored row)."""
        return self.n_segments - self._n_removed_rows

    def is_live(self, track_id):
        """True for a track of the index that is not removed."""
        track = self._track_by_id.get(int(track_id))
        return track is not None and not track.get("removed")

    def live_rows(self):
        """(N,) bool: the rows of live tracks (O(N): for compaction, not for search)."""
        if not self._removed_ids.size:
            return np.ones(self.n_segments, bool)
        return ~np.isin(self.segment_track, self._removed_ids)

    def __len__(self):
        return self.n_segments

    def __repr__(self):
        return (
            f"FingerprintDB(n_tracks={len(self.tracks)}, n_segments={self.n_segments}, "
            + (f"n_live_tracks={self.n_live_tracks}, n_live_segments={self.n_live_segments}, "
               if self._removed_ids.size else "")
            + f"d={self.dim}, index_type={self.index_type!r}, params={self.index_params})"
        )

    def set_search_params(self, nprobe=None, ef_search=None):
        """Changes IVF `nprobe` / HNSW `ef_search` without rebuilding."""
        milvus = self.backend == "milvus"
        if nprobe is not None and self.index_type in ("ivf", "ivfpq"):
            if int(nprobe) < 1:
                raise ValueError(f"`nprobe` must be >= 1. Received: nprobe={nprobe}")
            if milvus:
                self.index.set_search_params(nprobe=nprobe)
            else:
                faiss.extract_index_ivf(self.index).nprobe = int(nprobe)
            self.index_params["nprobe"] = int(nprobe)
        if ef_search is not None and self.index_type == "hnsw":
            if int(ef_search) < 1:
                raise ValueError(f"`ef_search` must be >= 1. Received: ef_search={ef_search}")
            if milvus:
                self.index.set_search_params(ef_search=ef_search)
            else:
                self.index.hnsw.efSearch = int(ef_search)
            self.index_params["ef_search"] = int(ef_search)

    def _set_threads(self):
        faiss.cvar.distance_compute_blas_threshold = _BLAS_MIN_QUERIES
        # Global OpenMP setting; oversubscribed faiss is much slower than 1 thread.
        if faiss.omp_get_max_threads() != self.threads:
            faiss.omp_set_num_threads(self.threads)

    # ------------------------------------------------------------------ disk

    def save(self, directory, extra_files=None):
        """Writes the database to `directory` atomically (temp dir + rename).

        Args:
            directory: output folder; an existing one is replaced only once the
                new one is complete.
            extra_files: optional `{name: source path}` of files or folders copied
                into the database folder (e.g. the model that made the fingerprints).

        A Milvus-backed database saved over the folder it lives in (after an add) writes its
        small files only: the new segment table beside the old one, then tracks.json, the one
        file readers follow, replaced by a rename; then the collection is rid of rows the new
        version does not have (`MilvusIndex.settle`). Saved to a new folder (a build), the
        folder is written whole, a Milvus Lite file moved into it.
        """
        if self.backend == "milvus":
            return self._save_milvus(Path(directory).absolute(), extra_files)
        with atomic_directory(directory, own_names=_own_names(directory)) as tmp:
            # Copied in chunks so a memory-mapped store is never read into RAM at once.
            store = np.lib.format.open_memmap(
                tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=self.embeddings.shape
            )
            zero_rows = 0
            for first in range(0, self.n_segments, _ADD_CHUNK_ROWS):
                block = np.asarray(self.embeddings[first : first + _ADD_CHUNK_ROWS], np.float32)
                zero_rows += _zero_rows(block)
                store[first : first + _ADD_CHUNK_ROWS] = block
            store.flush()
            del store
            for name, source in (extra_files or {}).items():
                source = Path(source)
                if source.is_dir():
                    shutil.copytree(source, tmp / name)
                else:
                    shutil.copyfile(source, tmp / name)
            np.savez(tmp / "segments.npz", track=self.segment_track, start=self.segment_start)
            meta = {
                "version": FORMAT_VERSION,
                "d": self.dim,
                "n_segments": self.n_segments,
                "hop_seconds": self.hop_seconds,
                "index_type": self.index_type,
                "params": self.index_params,
                "zero_rows": zero_rows,  # dead-air segments (zero fingerprints); every other row is a unit vector
                "metadata": self.metadata,
                "tracks": self.tracks,
            }
            if self.index_params.get("on_disk"):
                _write_index_on_disk(self.index, tmp / "index.faiss", tmp / IVF_DATA_FILE)
            else:
                faiss.write_index(self.index, str(tmp / "index.faiss"))
            # Written last: sizes and SHA-256 of every other file, and of this file's content.
            meta["integrity"] = {"files": file_records(tmp), "tracks_sha256": meta_digest(meta)}
            (tmp / "tracks.json").write_text(json.dumps(meta, indent=1))

    def _save_milvus(self, directory, extra_files):
        from nnfp.store.milvus import LITE_FILE, release_lite

        if self.loaded_from != directory:  # a build, or a copy elsewhere: a new folder, written whole
            release_lite(directory / LITE_FILE)  # a Lite file this process has open there is replaced
            with atomic_directory(directory, own_names=_own_names(directory)) as tmp:
                self._copy_extra_files(tmp, extra_files)
                segments = self._write_segments(tmp)
                self._write_table(tmp, segments, [*(extra_files or {}), segments])
                self.index.move_lite(tmp, directory)  # last: a failure before leaves it where it was
            self.loaded_from = directory
            return
        old = _store_entry(_read_meta(directory)).get("segments_file")
        self._copy_extra_files(directory, extra_files)
        segments = self._write_segments(directory)
        own = [name for name in os.listdir(directory) if name in (*_DB_NAMES, *(extra_files or {})) and name != LITE_FILE]
        self._write_table(directory, segments, [*own, segments])  # the new version is in place
        for stale in directory.glob(_SEGMENTS_GLOB):
            if stale.name not in (segments, old):  # the previous one stays for readers loading it now
                stale.unlink()
        self.index.settle(self.n_live_segments, self.removed_track_ids)

    @staticmethod
    def _copy_extra_files(directory, extra_files):
        """Copies `{name: source}` into `directory` (a file atomically, a folder under a temporary
        name then renamed); a source that is already `directory / name` stays as it is."""
        import tempfile

        for name, source in (extra_files or {}).items():
            source, target = Path(source), Path(directory) / name
            if source.absolute() == target.absolute():
                continue
            if source.is_dir():
                if target.exists():
                    raise ValueError(f"{target}: exists; a Milvus-backed index keeps its own {name}")
                tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=directory))
                shutil.copytree(source, tmp / name)
                os.rename(tmp / name, target)
                tmp.rmdir()
            else:
                with atomic_file(target) as tmp:
                    shutil.copyfile(source, tmp)

    def _write_segments(self, directory):
        """Writes the segment table as `segments-<digest>.npz` (named by its content: a new
        version never overwrites the one readers may be loading); returns the name."""
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(self.segment_track).tobytes())
        digest.update(np.ascontiguousarray(self.segment_start).tobytes())
        name = f"segments-{digest.hexdigest()[:16]}.npz"
        if not (Path(directory) / name).is_file():
            with atomic_file(Path(directory) / name) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, track=self.segment_track, start=self.segment_start)
        return name

    def _write_table(self, directory, segments, recorded):
        """Writes tracks.json of a Milvus-backed index (atomically): the metadata, the collection's
        `store` entry with fresh probe rows, and the integrity record of the files `recorded`."""
        store = dict(self.index.record(self._probe_rows()), segments_file=segments)
        meta = self._meta(self.index.zero_rows, store)
        meta["integrity"] = {"files": file_records(directory, names=set(recorded)), "tracks_sha256": meta_digest(meta)}
        atomic_write_bytes(Path(directory) / "tracks.json", json.dumps(meta, indent=1).encode())

    def _meta(self, zero_rows, store):
        return {
            "version": FORMAT_VERSION,
            "d": self.dim,
            "n_segments": self.n_segments,
            "hop_seconds": self.hop_seconds,
            "index_type": self.index_type,
            "params": self.index_params,
            "zero_rows": zero_rows,
            "metadata": self.metadata,
            "tracks": self.tracks,
            "store": store,
        }

    def _probe_rows(self):
        """Up to `PROBE_ROWS` live rows spread over the store, whose digest the integrity record keeps."""
        from nnfp.store.milvus import PROBE_ROWS

        rows = np.unique(np.linspace(0, self.n_segments - 1, min(self.n_segments, 8 * PROBE_ROWS)).astype(np.int64))
        if self._removed_ids.size:
            rows = rows[~np.isin(self.segment_track[rows], self._removed_ids)]
        return rows[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), PROBE_ROWS)).astype(np.int64))] if len(rows) else rows

    def save_tracks(self, directory):
        """Rewrites only `tracks.json` of the folder this database was loaded from, with the
        current track table (e.g. after `remove`), atomically (a temporary file renamed over
        it): a reader loading meanwhile reads the old or the new table, never half of one.

        The other files do not change, so their integrity records stay valid; the table's
        own digest (`tracks_sha256`) is recomputed. Cheap whatever the index size; for a
        change of rows or index use `save`.

        Raises:
            CorruptIndexError: the folder's `tracks.json` does not match its own digest
                (edited or damaged: it is not signed again).
            ValueError: the folder holds another database than this one (other rows or tracks).
        """
        directory = Path(directory)
        meta = _read_meta(directory)
        integrity = meta.get("integrity")
        if integrity and integrity.get("tracks_sha256") != meta_digest(meta):
            raise CorruptIndexError(
                f"{directory / 'tracks.json'}: content does not match its checksum (edited or damaged); "
                f"{REBUILD_HINT}"
            )
        saved = [(t.get("track_id"), t.get("path")) for t in meta["tracks"]]
        if (
            (meta["n_segments"], meta["d"]) != (self.n_segments, self.dim)
            or saved != [(t["track_id"], t["path"]) for t in self.tracks]
        ):
            raise ValueError(
                f"{directory}: holds another version of the database ({meta['n_segments']} rows, "
                f"{len(saved)} tracks; this one {self.n_segments} rows, {len(self.tracks)} tracks); "
                "`save` it instead"
            )
        meta["tracks"] = self.tracks
        if self.backend == "milvus":  # probe rows of live tracks only: the removed ones' rows go next
            meta["store"] = dict(meta["store"], **self.index.record(self._probe_rows()))
        if integrity:
            meta["integrity"] = dict(integrity, tracks_sha256=meta_digest(meta))
        atomic_write_bytes(directory / "tracks.json", json.dumps(meta, indent=1).encode())
        if self.backend == "milvus":
            self.index.settle(self.n_live_segments, self.removed_track_ids)

    @classmethod
    def load(cls, directory, mmap=True, threads=None, checksums="auto"):
        """Opens a saved database (`_load`), as one consistent version of the folder.

        A writer (`nnfp index add`, a build with `--overwrite`) replaces the whole folder
        in one exchange while readers may be loading it; a load that overlapped a swap
        (the folder is another one at the end) is made again, so a reader never mixes
        the files of two versions nor reports such a mix as damage.
        """
        for _ in range(_LOAD_ATTEMPTS - 1):
            before = _folder_identity(directory)
            try:
                db = cls._load(directory, mmap=mmap, threads=threads, checksums=checksums)
            except (FileNotFoundError, CorruptIndexError):
                if _folder_identity(directory) == before:
                    raise  # the folder did not change (or is missing): the error is real
                time.sleep(0.05)
                continue
            if _folder_identity(directory) == before:
                return db
        return cls._load(directory, mmap=mmap, threads=threads, checksums=checksums)

    @classmethod
    def _load(cls, directory, mmap=True, threads=None, checksums="auto"):
        """Opens a saved database; `embeddings` are memory-mapped when `mmap`.

        An index saved with on-disk inverted lists (`index_params["on_disk"]`, e.g. from
        `nnfp index merge`) maps `index.ivfdata` read-only instead of loading it.

        The sizes of the files recorded in `tracks.json` are always checked; their SHA-256
        too when `checksums` is True, or `"auto"` and they add up to at most
        `CHECKSUM_ON_LOAD_BYTES` (`verify_db` checks everything). `db.integrity` is None
        for a folder saved by an older nnfp, which recorded no checksums.

        Raises:
            FileNotFoundError: no such folder, or a file of it is missing.
            CorruptIndexError: a damaged, truncated or inconsistent file (named in the message).
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"Fingerprint DB directory not found: {directory}")
        names = ("embeddings.npy", "segments.npz", "tracks.json", "index.faiss")
        if (directory / "tracks.json").is_file():
            store = _store_entry(_read_meta(directory))
            if store["backend"] == "milvus":
                names = ("tracks.json", str(store.get("segments_file")))
        for name in names:
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"Fingerprint DB directory {directory} is missing {name}: {directory / name}; "
                    f"{REBUILD_HINT}"
                )
        meta = _read_meta(directory)
        if checksums == "auto":
            recorded = meta.get("integrity", {}).get("files", {}).values()
            checksums = sum(record["size"] for record in recorded) <= CHECKSUM_ON_LOAD_BYTES
        problems = integrity_problems(directory, meta, checksums=bool(checksums))
        if problems:
            more = f" ({len(problems) - 1} more: run `nnfp index verify {directory}`)" if len(problems) > 1 else ""
            raise CorruptIndexError(f"{problems[0]}; {REBUILD_HINT}{more}")
        if _store_entry(meta)["backend"] == "milvus":
            return cls._load_milvus(directory, meta, threads)
        try:
            embeddings = np.load(directory / "embeddings.npy", mmap_mode="r" if mmap else None)
        except Exception as error:  # any unreadable content is a damaged file
            raise corrupt_file_error(directory / "embeddings.npy", error) from None
        try:
            with np.load(directory / "segments.npz") as segments:
                segment_track = segments["track"].astype(np.int32)
                segment_start = segments["start"].astype(np.float32)
        except Exception as error:  # BadZipFile, Bad CRC-32, EOFError, zlib.error, KeyError...
            raise corrupt_file_error(directory / "segments.npz", error) from None
        if (
            embeddings.ndim != 2
            or embeddings.dtype != np.float32
            or embeddings.shape != (meta["n_segments"], meta["d"])
            or len(segment_track) != len(embeddings)
            or len(segment_start) != len(embeddings)
        ):
            raise CorruptIndexError(
                f"{directory}: inconsistent files: embeddings.npy holds {embeddings.dtype} "
                f"{embeddings.shape}, segments.npz {len(segment_track)} segments, tracks.json "
                f"n_segments={meta['n_segments']}, d={meta['d']}; {REBUILD_HINT}"
            )
        try:
            if meta["params"].get("on_disk"):
                if not (directory / IVF_DATA_FILE).is_file():
                    raise FileNotFoundError(
                        f"Fingerprint DB directory {directory} is missing {IVF_DATA_FILE} "
                        f"(the on-disk inverted lists): {directory / IVF_DATA_FILE}; {REBUILD_HINT}"
                    )
                # faiss stores the lists' file path in index.faiss; SAME_DIR looks for it
                # beside index.faiss instead, so a moved or renamed folder still loads.
                with _quiet_faiss():
                    index = faiss.read_index(
                        str(directory / "index.faiss"),
                        faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY,
                    )
            else:
                index = faiss.read_index(str(directory / "index.faiss"))
        except FileNotFoundError:
            raise
        except Exception as error:  # faiss raises RuntimeError on any bad content
            raise corrupt_file_error(directory / "index.faiss", error) from None
        try:
            db = cls(
                embeddings,
                segment_track,
                segment_start,
                meta["tracks"],
                hop_seconds=meta["hop_seconds"],
                index=index,
                index_type=meta["index_type"],
                index_params=meta["params"],
                threads=threads,
                metadata=meta.get("metadata"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptIndexError(
                f"{directory}: inconsistent files ({one_line(error)}); {REBUILD_HINT}"
            ) from None
        db.integrity = meta.get("integrity")
        db.source = directory / "embeddings.npy"
        if embeddings.nbytes <= CHECKSUM_ON_LOAD_BYTES:  # larger stores: at search (`_check_similarities`)
            _check_store(db.embeddings, meta, directory)
        return db

    @classmethod
    def _load_milvus(cls, directory, meta, threads):
        """`_load` of a Milvus-backed folder: the segment table tracks.json names, and the
        collection, checked to hold the live rows and the probe rows recorded at save time."""
        from nnfp.store.milvus import LITE_FILE, MilvusIndex, MilvusTarget

        store = meta["store"]
        path = directory / store["segments_file"]
        try:
            with np.load(path) as segments:
                segment_track = segments["track"].astype(np.int32)
                segment_start = segments["start"].astype(np.float32)
        except Exception as error:  # BadZipFile, Bad CRC-32, EOFError, zlib.error, KeyError...
            raise corrupt_file_error(path, error) from None
        if len(segment_track) != meta["n_segments"] or len(segment_start) != meta["n_segments"]:
            raise CorruptIndexError(
                f"{directory}: inconsistent files: {path.name} holds {len(segment_track)} segments, tracks.json "
                f"n_segments={meta['n_segments']}; {REBUILD_HINT}"
            )
        try:
            if store.get("uri") is None and store.get("lite_file") != LITE_FILE:
                raise ValueError(f"lite_file={store.get('lite_file')!r}")
            target = MilvusTarget(store.get("uri"), store["collection"], directory / LITE_FILE)
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptIndexError(f"{directory / 'tracks.json'}: damaged store entry ({one_line(error)}); {REBUILD_HINT}") from None
        index = MilvusIndex.open(target, meta["n_segments"], meta["d"], meta["index_type"], meta["params"])
        index.zero_rows = meta.get("zero_rows")
        try:
            db = cls(
                index.rows, segment_track, segment_start, meta["tracks"], hop_seconds=meta["hop_seconds"],
                index=index, index_type=meta["index_type"], index_params=meta["params"], threads=threads,
                metadata=meta.get("metadata"),
            )
        except (KeyError, TypeError, ValueError) as error:
            index.close()
            raise CorruptIndexError(f"{directory}: inconsistent files ({one_line(error)}); {REBUILD_HINT}") from None
        db.integrity = meta.get("integrity")
        db.source = index.where
        db.loaded_from = directory.absolute()
        try:
            index.check(db.n_live_segments, db.removed_track_ids, store.get("probe"))
        except BaseException:
            index.close()
            raise
        return db

    # ---------------------------------------------------------------- search

    def candidate_starts(self, query_embeddings, k_probe=20):
        """Unique DB rows where a query sequence could start (offset-compensated hits)."""
        return self.candidate_starts_batch([query_embeddings], k_probe=k_probe)[0]

    def candidate_starts_batch(self, queries, k_probe=20):
        """`candidate_starts` of several queries (e.g. the phases of one) in one faiss search.

        One search of all their segments is several times faster than one per query: faiss
        multiplies with BLAS only from `_BLAS_MIN_QUERIES` query vectors on.
        """
        queries = [self._check_query(query) for query in queries]
        hits = self.neighbours(np.concatenate(queries), k_probe=k_probe)
        bounds = np.cumsum([0] + [len(query) for query in queries])
        return [self.starts_from_hits(hits[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def neighbours(self, query_embeddings, k_probe=20):
        """The `k_probe` nearest DB rows of each query segment: (n, k) int64, -1 where none.

        A stream searched window by window (`nnfp monitor`) looks each segment up once
        and reuses its rows in every window that holds it (`starts_from_hits`).
        """
        query = self._check_query(query_embeddings)
        k = min(int(k_probe), self.n_segments)
        if k < 1:
            raise ValueError(f"`k_probe` must be >= 1. Received: k_probe={k_probe}")
        self._set_threads()
        _, hits = self.index.search(query, k)
        return hits

    def starts_from_hits(self, hits):
        """Candidate start rows of a query sequence from its segments' `neighbours` (in order).

        Segment i's neighbour row r votes for a sequence starting at r - i; the unique
        starts whose window fits in its track are returned (as `candidate_starts`).
        """
        hits = np.asarray(hits)
        n_query = len(hits)
        starts = hits - np.arange(n_query)[:, None]
        starts = starts[(hits >= 0) & (starts >= 0)]
        return self._fitting(np.unique(starts), n_query)

    def later_starts(self, starts, rows, n_query):
        """The start rows `rows` rows after each of `starts` in the same track, whose
        window of `n_query` segments fits (as `starts_from_hits`); unique, sorted."""
        starts = np.asarray(starts, np.int64)
        moved = starts + int(rows)
        inside = (moved >= self._track_begin[starts]) & (moved <= self._track_end[starts])
        moved = np.unique(moved[inside])
        return self._fitting(moved, n_query)

    def _fitting(self, starts, n_query):
        # A window running into the next track is no match, unless the query is
        # longer than the whole track: then it is kept and scored on the overlap.
        fits = starts + n_query - 1 <= self._track_end[starts]
        too_short = self._track_end[starts] - self._track_begin[starts] + 1 < n_query
        return self._live_starts(starts[fits | too_short])

    def _live_starts(self, starts):
        """`starts` less the rows of removed tracks (never scored, never answered)."""
        if not self._removed_ids.size or not len(starts):
            return starts
        return starts[~np.isin(self.segment_track[starts], self._removed_ids)]

    def sequence_scores(self, query_embeddings, starts):
        """Mean inner product of the query with the DB window at each start row.

        Window rows beyond the start's track (a query longer than the track)
        contribute 0, so such partial matches are penalised, not dropped.
        Returns (len(starts),) float64.
        """
        query = self._check_query(query_embeddings)
        n_query = len(query)
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size == 0:
            return np.zeros(0)
        # Query row i counts for candidate c while start_c + i is still in c's track.
        n_valid = np.minimum(self._track_end[starts] - starts + 1, n_query)  # (n_candidates,)
        totals = np.zeros(len(starts), dtype=np.float64)
        # Tiles of (query rows x candidates) keep memory flat whatever the query length
        # (one (n_query, n_candidates, d) array was 26 GB for a 30-minute query).
        query_rows = min(n_query, _SCORE_TILE_QUERY_ROWS)
        n_per_tile = max(1, _SCORE_TILE_PAIRS // query_rows)
        for first in range(0, n_query, query_rows):
            offsets = np.arange(first, min(first + query_rows, n_query))  # (q,)
            live = np.flatnonzero(n_valid > first)  # candidates with rows left in their track
            for tile in range(0, len(live), n_per_tile):
                cands = live[tile : tile + n_per_tile]
                rows = starts[cands, None] + offsets  # (c, q)
                valid = offsets < n_valid[cands, None]
                rows = np.minimum(rows, self.n_segments - 1)
                # Read each needed DB row once from the (memory-mapped) store, in row order
                # (overlapping windows share most rows), then only the c * q products
                # that count: sim[c, i] = <q_i, db[start_c + i]>.
                unique_rows, where = np.unique(rows, return_inverse=True)
                block = np.asarray(self.embeddings[unique_rows], dtype=np.float32)  # (n_rows, d)
                windows = block[where.reshape(rows.shape).T]  # (q, c, d)
                sims = np.matmul(windows, query[offsets, :, None])[:, :, 0].T  # (c, q)
                self._check_similarities(sims, rows)
                totals[cands] += np.where(valid, sims, 0.0).sum(axis=1, dtype=np.float64)
        return totals / n_query

    def _check_similarities(self, sims, rows):
        """Inner products of unit vectors lie in [-1, 1]: anything else is a damaged store
        (found at search time in an index too large to check on load)."""
        if sims.size and not (np.abs(sims).max() <= 1.0 + _NORM_TOLERANCE):  # NaN fails too
            bad, norms = _bad_norms(np.asarray(self.embeddings[np.unique(rows)], np.float32))
            row = int(np.unique(rows)[bad[0]]) if bad.size else -1
            raise CorruptIndexError(
                f"{self.source or 'the fingerprint store'}: damaged: a similarity of "
                f"{np.nanmax(np.abs(sims)):.4g} (fingerprints are unit vectors: at most 1)"
                + (f"; row {row} has norm {norms[bad[0]]:.4g}" if bad.size else "")
                + f"; {REBUILD_HINT}"
            )

    def interpolated_starts(self, starts, n_query):
        """The windows around `starts` that `interpolated_scores` can score: each start and
        the one a row earlier in its track, whose window plus one more row stays in the
        track; unique, sorted."""
        starts = np.asarray(starts, np.int64)
        earlier = starts - 1
        both = np.unique(np.concatenate([starts, earlier[earlier >= self._track_begin[starts]]]))
        return both[both + int(n_query) <= self._track_end[both]]

    def interpolated_scores(self, query_embeddings, starts, fraction):
        """`sequence_scores` of windows `fraction` of a hop past each start (0 < fraction < 1).

        The fingerprint of a DB segment between rows r and r + 1 is estimated as the unit
        vector along `(1 - fraction) db[r] + fraction db[r + 1]`; every window must have
        its next row in its track (`interpolated_starts`). Returns (len(starts),) float64.
        """
        query = self._check_query(query_embeddings)
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size and np.any(starts + len(query) > self._track_end[starts]):
            raise ValueError("every window of `interpolated_scores` needs its next row in its track")
        totals = np.zeros(len(starts), dtype=np.float64)
        n_per_tile = max(1, _SCORE_TILE_PAIRS // min(len(query), _SCORE_TILE_QUERY_ROWS))
        for first in range(0, len(query), _SCORE_TILE_QUERY_ROWS):
            offsets = np.arange(first, min(first + _SCORE_TILE_QUERY_ROWS, len(query)))
            for tile in range(0, len(starts), n_per_tile):
                rows = starts[tile : tile + n_per_tile, None] + offsets  # (c, q)
                unique_rows, where = np.unique(np.concatenate([rows, rows + 1]), return_inverse=True)
                block = np.asarray(self.embeddings[unique_rows], dtype=np.float32)
                where = where.reshape(2, *rows.shape)
                mixed = (1.0 - fraction) * block[where[0]] + fraction * block[where[1]]  # (c, q, d)
                mixed /= np.maximum(np.linalg.norm(mixed, axis=-1, keepdims=True), 1e-12)
                totals[tile : tile + n_per_tile] += np.einsum("cqd,qd->c", mixed, query[offsets], dtype=np.float64)
        if totals.size and not (np.abs(totals).max() <= len(query) * (1.0 + _NORM_TOLERANCE)):
            self._check_similarities(np.array([np.inf]), starts)
        return totals / len(query)

    def search(self, query_embeddings, k_probe=20, n_results=5, min_score=None, collapse_seconds=1.0, hits=None):
        """Finds the tracks and offsets best matching a query of consecutive segments.

        Args:
            query_embeddings: (n, d) fingerprints of consecutive query segments
                on the DB hop (a (d,) vector is one segment).
            k_probe: faiss neighbours retrieved per query segment.
            n_results: number of matches returned, best first.
            min_score: drop matches whose score is below this.
            collapse_seconds: matches of one track whose offsets differ by less than
                this are one place; only the best scoring is kept (None or 0 keeps
                every candidate window).
            hits: optional `neighbours` of the query's segments, already looked up
                (a stream searched window by window looks each segment up once);
                then no faiss search is made and `k_probe` is not used.

        Returns:
            A list of up to `n_results` `Match`, distinct places, sorted by
            decreasing score.
        """
        if int(n_results) < 1:
            raise ValueError(f"`n_results` must be >= 1. Received: n_results={n_results}")
        if hits is None:
            starts = self.candidate_starts(query_embeddings, k_probe=k_probe)
        else:
            starts = self.starts_from_hits(hits)
        scores = self.sequence_scores(query_embeddings, starts)
        return self.places(starts, scores, n_results=n_results, min_score=min_score, collapse_seconds=collapse_seconds)

    def places(
        self, starts, scores, shifts=None, n_results=5, min_score=None, collapse_seconds=1.0, reported=None
    ):
        """Best distinct places among scored candidate windows (`search`'s last step).

        Args:
            starts: (n,) DB start rows; scores: (n,) their sequence scores.
            shifts: optional (n,) seconds subtracted from each window's offset (the
                query phase that produced it: the query was cut that much later).
            n_results, min_score, collapse_seconds: as for `search`.
            reported: optional (n,) scores the matches report and `min_score` applies
                to, when the windows are ranked by other `scores` (interpolated windows,
                `nnfp.catalogue.identify.Identifier`, report the score of a real DB window).

        Returns:
            Up to `n_results` `Match`, best first; per track, no two offsets closer
            than `collapse_seconds`.
        """
        starts = np.asarray(starts, np.int64)
        scores = np.asarray(scores, np.float64)
        offsets = self.segment_start[starts].astype(np.float64)
        if shifts is not None:
            offsets = offsets - np.asarray(shifts, np.float64)
        reported = scores if reported is None else np.asarray(reported, np.float64)
        order = np.argsort(-scores, kind="stable")
        if min_score is not None:
            order = order[reported[order] >= min_score]
        tracks = self.segment_track[starts]
        if self._removed_ids.size:  # a removed track is never answered, whatever produced its windows
            order = order[~np.isin(tracks[order], self._removed_ids)]
        kept = {}  # track id -> offsets already reported
        matches = []
        for row in order:
            track_id = int(tracks[row])
            offset = float(offsets[row])
            if collapse_seconds and any(abs(offset - o) < collapse_seconds for o in kept.get(track_id, ())):
                continue
            kept.setdefault(track_id, []).append(offset)
            track = self._track_by_id[track_id]
            matches.append(
                Match(
                    track_id=track["track_id"],
                    path=track["path"],
                    offset_s=offset,
                    score=float(reported[row]),
                    segment_index=int(starts[row]),
                )
            )
            if len(matches) == int(n_results):
                break
        return matches

    def _check_query(self, query_embeddings):
        query = np.asarray(query_embeddings, dtype=np.float32)
        if query.ndim == 1:
            query = query[None]
        if query.ndim != 2 or query.shape[1] != self.dim or len(query) == 0:
            raise ValueError(
                f"`query_embeddings` must have shape (n_segments, {self.dim}). "
                f"Received: shape={np.shape(query_embeddings)}"
            )
        bad, norms = _bad_norms(query)
        if bad.size:
            raise ValueError(
                f"`query_embeddings` must be unit vectors (or zero for dead air). Received: row {bad[0]} "
                f"with norm {norms[bad[0]]:.4g}"
            )
        return np.ascontiguousarray(query)

    def _index_tracks(self):
        # First and last DB row of the track of every segment (tracks are contiguous).
        n_segments = len(self.segment_track)
        boundaries = np.flatnonzero(self.segment_track[1:] != self.segment_track[:-1]) + 1
        run_begin = np.concatenate([[0], boundaries])
        run_end = np.concatenate([boundaries - 1, [n_segments - 1]])
        run_of_row = np.repeat(np.arange(len(run_begin)), run_end - run_begin + 1)
        # int32 halves the per-segment RAM of these two tables (8 B instead of 16 B).
        dtype = np.int32 if n_segments < 2**31 else np.int64
        self._track_begin = run_begin[run_of_row].astype(dtype)
        self._track_end = run_end[run_of_row].astype(dtype)
        # Rows per track id (one run each): what a removal leaves stored, in O(tracks).
        self._rows_of_track = dict(
            zip(self.segment_track[run_begin].tolist(), (run_end - run_begin + 1).tolist(), strict=True)
        ) if n_segments else {}

    def _index_removed(self):
        # Sorted ids of removed tracks: `places` and `_fitting` drop their rows with one
        # `np.isin` over the candidates (nothing per row is kept).
        self._removed_ids = np.array(
            sorted(t["track_id"] for t in self.tracks if t.get("removed")), dtype=np.int64
        )
        self._n_removed_rows = sum(self._rows_of_track.get(i, 0) for i in self._removed_ids.tolist())

