"""A saved fingerprint DB folder: the files it holds, and its table `tracks.json` (the version,
the tracks, where the vectors are), read and checked here and written by `FingerprintDB.save`.
No faiss here: `read_metadata` reads the catalogue's metadata without loading the index.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from nnfp.store.integrity import REBUILD_HINT, CorruptIndexError, corrupt_file_error

__all__ = [
    "DB_NAMES",
    "FORMAT_VERSION",
    "IVF_DATA_FILE",
    "SEGMENTS_GLOB",
    "folder_identity",
    "held_identity",
    "own_names",
    "read_meta",
    "read_metadata",
    "store_entry",
]

FORMAT_VERSION = 1
IVF_DATA_FILE = "index.ivfdata"  # inverted lists of an on-disk IVF index, beside index.faiss
SEGMENTS_GLOB = "segments-*.npz"  # a Milvus-backed index's segment tables, one per version

# What a saved DB folder holds besides the files its integrity record lists: a save replacing
# the folder drops these, and carries any other entry (a user's own file) into the new one.
DB_NAMES = ("embeddings.npy", "segments.npz", "tracks.json", "index.faiss", IVF_DATA_FILE, "model", "model.keras", "litert",
            "calibration.json", "milvus.db")


def folder_identity(directory):
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


@contextlib.contextmanager
def held_identity(directory):
    """Yields `folder_identity(directory)` while holding the folder and its tracks.json open.

    An inode in use is not reused: a folder (or table) replaced and deleted while the files
    are read cannot come back under the same number, so `folder_identity(directory)` equal
    to the yielded one at the end of the block means the same folder and table throughout.
    """
    handles = []
    try:
        for path in (directory, Path(directory) / "tracks.json"):
            try:
                handles.append(os.open(path, os.O_RDONLY))
            except OSError:
                handles.append(None)
        if handles[0] is None:  # no such folder, or folders cannot be opened here: stat it
            yield folder_identity(directory)
            return
        folder = os.fstat(handles[0])
        yield folder.st_dev, folder.st_ino, None if handles[1] is None else os.fstat(handles[1]).st_ino
    finally:
        for handle in handles:
            if handle is not None:
                os.close(handle)


def own_names(directory):
    """Top-level entries of the DB saved at `directory` that are nnfp's (`DB_NAMES` and its record)."""
    names = set(DB_NAMES)
    try:
        recorded = json.loads((Path(directory) / "tracks.json").read_text())["integrity"]["files"]
        names.update(name.split("/")[0] for name in recorded)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    names.update(path.name for path in Path(directory).glob(SEGMENTS_GLOB))  # a Milvus index's versions
    return names


def store_entry(meta):
    """The `store` entry of a tracks.json: where the vectors are (faiss for older folders)."""
    store = meta.get("store") or {"backend": "faiss"}
    if store.get("backend") not in ("faiss", "milvus"):
        raise CorruptIndexError(f"unknown fingerprint store backend {store.get('backend')!r}; {REBUILD_HINT}")
    return store


def read_meta(directory):
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
    return read_meta(directory).get("metadata") or {}
