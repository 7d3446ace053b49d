"""The fingerprint database (`FingerprintDB`): its rows and tracks, build, add, remove, save and
load, and `verify_db`.

Pure NumPy: this module receives embeddings and never imports the model.

Where the vectors live is the store's backend: `faiss` (the default: a faiss index and the
exact fingerprints in `embeddings.npy`, memory-mapped) or `milvus` (a Milvus collection, in a
Milvus Lite file inside the folder or on a server: `nnfp.store.milvus`). Both answer the same
small interface, faiss' own: an index with `ntotal` and `search(x, k) -> (scores, rows)`, and
the stored rows as an array, `embeddings[rows]`; everything below it (candidates, sequence
scores, phases, interpolation, places) is one code for both.

The rest of the store, one module each: the faiss index, its factory and on-disk inverted lists
(`faiss_index`, the only module importing faiss); the checks of stored rows (`rows`); the saved
folder and its `tracks.json` (`folder`) and integrity record (`integrity`); how a query sequence
is scored (`scoring`) and how scored windows are ranked into matches (`search`), the base
classes of `FingerprintDB`.
"""


from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path

import numpy as np

from nnfp.defaults import INDEX_TYPES
from nnfp.outputs import atomic_directory, atomic_file, atomic_write_bytes, make_ordinary_file
from nnfp.store.faiss_index import (
    MIN_POINTS_PER_CENTROID,
    add_in_chunks,
    default_threads,
    index_settings,
    invlists_on_disk,
    invlists_to_ram,
    merge_parts_on_disk,
    read_index,
    set_nprobe,
    set_search_threads,
    set_threads,
    trained_index,
    write_index,
    write_index_on_disk,
)
from nnfp.store.folder import (
    DB_NAMES,
    FORMAT_VERSION,
    IVF_DATA_FILE,
    SEGMENTS_GLOB,
    folder_identity,
    held_identity,
    own_names,
    read_meta,
    read_metadata,
    store_entry,
)
from nnfp.store.integrity import (
    REBUILD_HINT,
    CorruptIndexError,
    IndexBusyError,
    corrupt_file_error,
    file_records,
    integrity_problems,
    meta_digest,
    one_line,
)
from nnfp.store.rows import ADD_CHUNK_ROWS, check_segments, check_store, count_zero_rows
from nnfp.store.search import Match, SequenceSearch

__all__ = [
    "INDEX_TYPES",
    "FingerprintDB",
    "Match",
    "read_metadata",
    "verify_db",
]

# `load` hashes every recorded file (a damaged store of the same size is found at once)
# when they add up to at most this; larger indexes check sizes only (`verify_files` does all).
CHECKSUM_ON_LOAD_BYTES = 256 * 2**20


# The index parameters `FingerprintDB.build` takes (what `index_params` records, but `on_disk`).
_BUILD_PARAMS = ("nlist", "m", "nbits", "nprobe", "hnsw_m", "ef_search")

_LOAD_PATIENCE_S = 60.0  # loads overlapping a folder swap are made again, for up to this long


def verify_db(directory):
    """Checks every file of a saved DB: sizes and SHA-256 recorded at save time, and that
    each file loads. Returns `(problems, has_checksums)`: one-line messages (empty: intact),
    and False for a folder saved by an older nnfp, which recorded no checksums."""
    directory = Path(directory)
    try:
        meta = read_meta(directory)
    except (FileNotFoundError, CorruptIndexError) as error:
        return [str(error)], False
    problems = integrity_problems(directory, meta, checksums=True)
    if not problems:
        try:
            db = FingerprintDB.load(directory, checksums=False)  # checks the store up to the on-load limit
            if db.backend == "milvus":  # its row count and probe rows were checked: norms of a sample
                sample = np.unique(np.linspace(0, db.n_segments - 1, min(db.n_segments, _VERIFY_SAMPLE_ROWS)).astype(np.int64))
                count_zero_rows(db.embeddings[sample], where=db.source)
            elif db.embeddings.nbytes > CHECKSUM_ON_LOAD_BYTES:
                check_store(db.embeddings, meta, directory)  # and here the larger ones
        except (OSError, CorruptIndexError) as error:  # FileNotFoundError, a Milvus server not reached
            problems.append(str(error))
    return problems, bool(meta.get("integrity"))


def _delete_file(path):
    path.unlink(missing_ok=True)


def _link_work_rows(rows, target):
    """Gives the rows file this database wrote itself (a writable memory map: the work file of
    an `add` or a compaction, already the `.npy` a save writes) a second name, `target`, instead
    of copying it: a large catalogue's rows are not written twice, nor held three times on disk
    (the old version, the work file, the new version). False, and nothing done, for rows in RAM
    or a loaded store (read-only: the saved version's own file), or where the file system has no
    hard link between the two (then the rows are copied)."""
    if not isinstance(rows, np.memmap) or rows.mode not in ("w+", "r+") or rows.filename is None:
        return False
    source = Path(rows.filename)
    if not _is_whole_npy(rows, source):
        return False
    rows.flush()
    try:
        os.link(source, target)
    except OSError:  # another file system, or none with hard links
        return False
    make_ordinary_file(target)  # work files are private (mkstemp); a saved index is not
    return True


def _is_whole_npy(rows, path):
    # The memory map covers a whole `.npy` file's data (not a slice or a view at an offset).
    try:
        with open(path, "rb") as handle:
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
            }.get(np.lib.format.read_magic(handle))
            if read_header is None:
                return False
            shape, fortran, dtype = read_header(handle)
            offset = handle.tell()
    except (OSError, ValueError):
        return False
    return (
        shape == rows.shape and not fortran and dtype == np.float32 and rows.dtype == np.float32
        and rows.offset == offset and rows.flags.c_contiguous
        and os.path.getsize(path) == offset + rows.nbytes
    )


_VERIFY_SAMPLE_ROWS = 65_536  # rows of a Milvus collection whose norms `verify_db` checks


class FingerprintDB(SequenceSearch):
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
        self._scratch = None  # deletes the rows file of an `add` with a work folder (`_rows_in_file`)
        self.threads = default_threads() if threads is None else int(threads)
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
        embeddings, segment_track, segment_start, tracks = check_segments(
            embeddings, segment_track, segment_start, tracks
        )
        n_segments, d = embeddings.shape
        params = index_settings(index_type, n_segments, d, nlist, m, nbits, nprobe, hnsw_m, ef_search)
        threads = default_threads() if threads is None else int(threads)
        if milvus is not None:
            from nnfp.store.milvus import MilvusIndex, content_key

            index = MilvusIndex.create(milvus, d, index_type, params, content_key(embeddings, segment_track, segment_start))
            index.fill(embeddings, segment_track)
            return cls(
                index.rows, segment_track, segment_start, tracks, hop_seconds=hop_seconds, index=index,
                index_type=index_type, index_params=params, threads=threads, metadata=metadata,
            )
        set_threads(threads)
        index = trained_index(embeddings, index_type, params, train_size)
        if on_disk_dir is not None and index_type in ("ivf", "ivfpq"):
            part_rows = [n_segments] if part_rows is None else [int(n) for n in part_rows]
            index = merge_parts_on_disk(index, embeddings, part_rows, on_disk_dir)
            params["on_disk"] = True
        else:
            add_in_chunks(index, embeddings)
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

    def add(self, embeddings, segment_track, segment_start, tracks, work_dir=None):
        """Appends new tracks; their ids are renumbered to continue after the current ones.

        `segment_track` refers to the `track_id`s of the given `tracks`; new ids are
        `next_track_id, next_track_id + 1, ...` in the order of `tracks`.
        The index is not retrained. Returns the list of assigned track ids.

        Args:
            work_dir: an existing scratch folder. When the stored rows are memory-mapped (a
                loaded index), the old and new rows are copied, in chunks, into a new
                memory-mapped file there (`rows-*.npy`, this database's own), never the
                whole store into RAM; `save` then maps the saved copy and deletes that file
                (as does `close`, or the database being garbage-collected). Without it, or
                with rows in RAM, the rows become one in-memory array.

        On the Milvus backend the rows are written to the collection now (under row numbers
        that readers of the saved version ignore until `save` puts the new version in place).
        """
        embeddings, segment_track, segment_start, tracks = check_segments(
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
            rows = scratch = None
            if work_dir is not None and isinstance(self.embeddings, np.memmap):
                rows, scratch = self._rows_in_file(embeddings, work_dir)  # first: a full disk changes nothing
            try:
                self._set_threads()
                if invlists_on_disk(self.index):
                    # Loaded lists are mapped read-only from the saved folder, which must stay
                    # intact until `save` replaces it: add to a copy in RAM; `save` writes the
                    # lists to disk again (`index_params["on_disk"]`).
                    invlists_to_ram(self.index)
                self.index.add(embeddings)
            except BaseException:
                if scratch is not None:
                    rows = None
                    scratch()
                raise
            if scratch is None:  # after the index's add: a flat index's add briefly holds its vectors twice
                rows = np.concatenate([np.asarray(self.embeddings), embeddings])
            earlier, self._scratch = self._scratch, scratch
            self.embeddings = rows
            if earlier is not None:  # the file of an earlier add, copied into the new one
                earlier()
        self.segment_track = np.concatenate([self.segment_track, segment_track.astype(np.int32)])
        self.segment_start = np.concatenate([self.segment_start, segment_start])
        self.tracks.extend(tracks)
        self._track_by_id.update({t["track_id"]: t for t in tracks})
        self._index_tracks()
        self._index_removed()
        return list(new_id.values())

    def _rows_in_file(self, embeddings, work_dir):
        """The stored rows followed by `embeddings`, copied chunk by chunk into a new memory-mapped
        file in `work_dir`, and the finaliser deleting that file (called on any error here)."""
        handle, name = tempfile.mkstemp(prefix="rows-", suffix=".npy", dir=work_dir)
        os.close(handle)
        scratch = weakref.finalize(self, _delete_file, Path(name))
        n_old = self.n_segments
        try:
            rows = np.lib.format.open_memmap(
                name, mode="w+", dtype=np.float32, shape=(n_old + len(embeddings), self.dim)
            )
            for first in range(0, n_old, ADD_CHUNK_ROWS):
                last = min(first + ADD_CHUNK_ROWS, n_old)
                rows[first:last] = self.embeddings[first:last]
            rows[n_old:] = embeddings
            rows.flush()
        except BaseException:
            rows = None
            scratch()
            raise
        return rows, scratch

    def _drop_scratch(self):
        """Deletes the rows file of an `add` with a work folder, if any (rows mapped from it stay
        readable on Linux until unmapped)."""
        scratch, self._scratch = self._scratch, None
        if scratch is not None:
            scratch()

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
        if params.get("nlist") is not None and params["nlist"] > max(1, n_live // MIN_POINTS_PER_CENTROID):
            params["nlist"] = None
        if work_dir is not None:
            work_dir = Path(work_dir)
            store = np.lib.format.open_memmap(
                work_dir / "embeddings.npy", mode="w+", dtype=np.float32, shape=(n_live, self.dim)
            )
        else:
            store = np.empty((n_live, self.dim), np.float32)
        filled = 0
        for first in range(0, self.n_segments, ADD_CHUNK_ROWS):
            keep = live[first : first + ADD_CHUNK_ROWS]
            block = np.asarray(self.embeddings[first : first + ADD_CHUNK_ROWS], np.float32)[keep]
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
        server, so another process can open it); for faiss, deletes the rows file of an unsaved
        `add` with a work folder (the database is not to be used after). A database
        garbage-collected unclosed lets go at this process' next opening of a Milvus Lite file,
        or at exit; its rows file is deleted then."""
        if self.backend == "milvus":
            self.index.close()
        else:
            self._drop_scratch()

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
                set_nprobe(self.index, nprobe)
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
        set_search_threads(self.threads)

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
        with atomic_directory(directory, own_names=own_names(directory)) as tmp:
            if _link_work_rows(self.embeddings, tmp / "embeddings.npy"):
                zero_rows = count_zero_rows(self.embeddings)
            else:  # copied in chunks so a memory-mapped store is never read into RAM at once
                store = np.lib.format.open_memmap(
                    tmp / "embeddings.npy", mode="w+", dtype=np.float32, shape=self.embeddings.shape
                )
                zero_rows = 0
                for first in range(0, self.n_segments, ADD_CHUNK_ROWS):
                    block = np.asarray(self.embeddings[first : first + ADD_CHUNK_ROWS], np.float32)
                    zero_rows += count_zero_rows(block)
                    store[first : first + ADD_CHUNK_ROWS] = block
                store.flush()
                del store
            for name, source in (extra_files or {}).items():
                source = Path(source)
                if source.is_dir():
                    shutil.copytree(source, tmp / name)
                else:
                    shutil.copyfile(source, tmp / name)
            np.savez(tmp / "segments.npz", track=self.segment_track, start=self.segment_start)
            meta = self._meta(zero_rows)
            if self.index_params.get("on_disk"):
                write_index_on_disk(self.index, tmp / "index.faiss", tmp / IVF_DATA_FILE)
            else:
                write_index(self.index, tmp / "index.faiss")
            # Written last: sizes and SHA-256 of every other file, and of this file's content.
            meta["integrity"] = {"files": file_records(tmp), "tracks_sha256": meta_digest(meta)}
            (tmp / "tracks.json").write_text(json.dumps(meta, indent=1))
        if self._scratch is not None:  # rows appended in a work folder: map the saved copy instead
            self.source = Path(directory) / "embeddings.npy"
            self.embeddings = np.load(self.source, mmap_mode="r")
            self._drop_scratch()

    def _save_milvus(self, directory, extra_files):
        from nnfp.store.milvus import LITE_FILE, release_lite

        if self.loaded_from != directory:  # a build, or a copy elsewhere: a new folder, written whole
            release_lite(directory / LITE_FILE)  # a Lite file this process has open there is replaced
            with atomic_directory(directory, own_names=own_names(directory)) as tmp:
                self._copy_extra_files(tmp, extra_files)
                segments = self._write_segments(tmp)
                self._write_table(tmp, segments, [*(extra_files or {}), segments])
                self.index.move_lite(tmp, directory)  # last: a failure before leaves it where it was
            self.loaded_from = directory
            return
        old = store_entry(read_meta(directory)).get("segments_file")
        self._copy_extra_files(directory, extra_files)
        segments = self._write_segments(directory)
        own = [name for name in os.listdir(directory) if name in (*DB_NAMES, *(extra_files or {})) and name != LITE_FILE]
        self._write_table(directory, segments, [*own, segments])  # the new version is in place
        for stale in directory.glob(SEGMENTS_GLOB):
            if stale.name not in (segments, old):  # the previous one stays for readers loading it now
                stale.unlink()
        self.index.settle(self.n_live_segments, self.removed_track_ids)

    @staticmethod
    def _copy_extra_files(directory, extra_files):
        """Copies `{name: source}` into `directory` (a file atomically, a folder under a temporary
        name then renamed); a source that is already `directory / name` stays as it is."""
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

    def _meta(self, zero_rows, store=None):
        """The content of `tracks.json` (before its integrity record); `store` (where the rows
        live, for a Milvus-backed index) only when given, so a faiss index's file is unchanged."""
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
        if store is not None:
            meta["store"] = store
        return meta

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
        meta = read_meta(directory)
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
        the files of two versions nor reports such a mix as damage. The folder and its
        tracks.json are held open meanwhile, so a version replaced twice during one load is
        not mistaken for the same one (a deleted folder's number given to the next).

        Raises:
            IndexBusyError: the folder was replaced during every load for `_LOAD_PATIENCE_S`.
            And `_load`'s errors.
        """
        deadline = time.monotonic() + _LOAD_PATIENCE_S
        while True:
            with held_identity(directory) as before:
                try:
                    db = cls._load(directory, mmap=mmap, threads=threads, checksums=checksums)
                except (FileNotFoundError, CorruptIndexError):
                    if folder_identity(directory) == before:
                        raise  # the folder did not change (or is missing): the error is real
                else:
                    if folder_identity(directory) == before:
                        return db
                    db.close()
            if time.monotonic() > deadline:
                raise IndexBusyError(
                    f"{directory}: replaced again and again while being read for {_LOAD_PATIENCE_S:.0f} s "
                    "(a writer saving it in a loop?); nothing was loaded, try again once it settles"
                )
            time.sleep(0.05)

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
            store = store_entry(read_meta(directory))
            if store["backend"] == "milvus":
                names = ("tracks.json", str(store.get("segments_file")))
        for name in names:
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"Fingerprint DB directory {directory} is missing {name}: {directory / name}; "
                    f"{REBUILD_HINT}"
                )
        meta = read_meta(directory)
        if checksums == "auto":
            recorded = meta.get("integrity", {}).get("files", {}).values()
            checksums = sum(record["size"] for record in recorded) <= CHECKSUM_ON_LOAD_BYTES
        problems = integrity_problems(directory, meta, checksums=bool(checksums))
        if problems:
            more = f" ({len(problems) - 1} more: run `nnfp index verify {directory}`)" if len(problems) > 1 else ""
            raise CorruptIndexError(f"{problems[0]}; {REBUILD_HINT}{more}")
        if store_entry(meta)["backend"] == "milvus":
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
                index = read_index(directory / "index.faiss", on_disk=True)
            else:
                index = read_index(directory / "index.faiss")
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
            check_store(db.embeddings, meta, directory)
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
