"""The faiss side of the store, and the only module importing faiss: the index factory and its
training, the threads faiss searches with, reading and writing an index, and IVF inverted lists
kept on disk (built in parts, merged into one memory-mapped file).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from pathlib import Path

import faiss
import numpy as np

from nnfp.store.folder import IVF_DATA_FILE
from nnfp.store.rows import ADD_CHUNK_ROWS

__all__ = [
    "BLAS_MIN_QUERIES",
    "MIN_POINTS_PER_CENTROID",
    "add_in_chunks",
    "default_nlist",
    "default_threads",
    "index_settings",
    "invlists_on_disk",
    "invlists_to_ram",
    "merge_parts_on_disk",
    "quiet_faiss",
    "read_index",
    "set_nprobe",
    "set_search_threads",
    "set_threads",
    "trained_index",
    "write_index",
    "write_index_on_disk",
]

MIN_POINTS_PER_CENTROID = 39  # below this faiss k-means warns and clusters poorly
_MAX_POINTS_PER_CENTROID = 256  # faiss k-means subsamples beyond this anyway
# faiss (1.15) computes exact inner products without BLAS below 128,000 query vectors at once;
# with BLAS from 4 vectors on, the 76 vectors of a 10 s query at 4 phases are searched ~7x faster
# in a 38k-segment flat index (benchmarks/search.py), with the same neighbours.
BLAS_MIN_QUERIES = 4


def default_threads():
    return max(1, min(os.cpu_count() or 1, 8))


def default_nlist(n_segments):
    nlist = int(round(4.0 * np.sqrt(n_segments)))
    return int(np.clip(nlist, 1, max(1, n_segments // MIN_POINTS_PER_CENTROID)))


@contextlib.contextmanager
def quiet_faiss():
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


def index_settings(index_type, n_segments, d, nlist, m, nbits, nprobe, hnsw_m, ef_search):
    """Validated faiss parameters for `index_type` (what `FingerprintDB.index_params` records)."""
    params = {}
    if index_type in ("ivf", "ivfpq"):
        if nlist is None:
            nlist = default_nlist(n_segments)
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


def trained_index(embeddings, index_type, params, train_size):
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


def add_in_chunks(index, embeddings, first_row=0, n_rows=None, with_ids=False):
    n_rows = len(embeddings) - first_row if n_rows is None else n_rows
    for first in range(first_row, first_row + n_rows, ADD_CHUNK_ROWS):
        last = min(first + ADD_CHUNK_ROWS, first_row + n_rows)
        rows = np.ascontiguousarray(embeddings[first:last])
        if with_ids:
            index.add_with_ids(rows, np.arange(first, last, dtype=np.int64))
        else:
            index.add(rows)


def merge_parts_on_disk(trained, embeddings, part_rows, work_dir):
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
            add_in_chunks(part, embeddings, first, n_rows, with_ids=True)
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
    with quiet_faiss():
        merge_ondisk(merged, part_files, str(ivfdata))
    for name in part_files:
        os.remove(name)
    return merged


def invlists_on_disk(index):
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(
        faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists
    )


def write_index_on_disk(index, index_path, ivfdata_path):
    """Writes an IVF index as `index_path` + its inverted lists in `ivfdata_path` (faiss'
    `OnDiskInvertedLists`), copying the lists of `index` (in RAM or on disk) without
    changing `index`. faiss records the lists' file name in `index_path`; `load` finds
    it beside `index_path` (IO_FLAG_ONDISK_SAME_DIR), so the folder can be renamed."""
    ivf = faiss.extract_index_ivf(index)
    current, owned = ivf.invlists, ivf.own_invlists
    with quiet_faiss():
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


def invlists_to_ram(index):
    """Replaces memory-mapped, read-only on-disk inverted lists by an in-RAM copy (to add to)."""
    ivf = faiss.extract_index_ivf(index)
    in_ram = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.invlists.copy_subset_to(in_ram, faiss.InvertedLists.SUBSET_TYPE_ID_RANGE, 0, 2**62)
    ivf.replace_invlists(in_ram, True)
    in_ram.this.disown()


def set_threads(threads):
    """Sets faiss' OpenMP threads (a global setting)."""
    faiss.omp_set_num_threads(threads)


def set_search_threads(threads):
    """Sets faiss up to search with `threads` (BLAS from `BLAS_MIN_QUERIES` query vectors on)."""
    faiss.cvar.distance_compute_blas_threshold = BLAS_MIN_QUERIES
    # Global OpenMP setting; oversubscribed faiss is much slower than 1 thread.
    if faiss.omp_get_max_threads() != threads:
        faiss.omp_set_num_threads(threads)


def set_nprobe(index, nprobe):
    """Sets the IVF lists an IVF index visits per query."""
    faiss.extract_index_ivf(index).nprobe = int(nprobe)


def write_index(index, path):
    faiss.write_index(index, str(path))


def read_index(path, on_disk=False):
    """Reads a faiss index; `on_disk`: one with on-disk inverted lists, mapped read-only from
    `IVF_DATA_FILE` beside `path`."""
    if on_disk:
        # faiss stores the lists' file path in index.faiss; SAME_DIR looks for it
        # beside index.faiss instead, so a moved or renamed folder still loads.
        with quiet_faiss():
            return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    return faiss.read_index(str(path))
