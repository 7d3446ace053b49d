"""Integrity of a saved fingerprint DB: what is recorded at save time, and what is wrong now.

`FingerprintDB.save` records the size and SHA-256 of every file of the folder and a digest
of `tracks.json`'s own content; `integrity_problems` compares a folder with that record.
`calibration.json` is left out: it is a decision setting that `nnfp index calibrate`
replaces in place (atomically), and `Calibration.load` validates it with its own error.
No faiss here: the checks read files only (`nnfp.store.db.verify_db` also loads them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from nnfp.outputs import sha256_file

__all__ = [
    "REBUILD_HINT",
    "CorruptIndexError",
    "IndexBusyError",
    "corrupt_file_error",
    "file_records",
    "integrity_problems",
    "meta_digest",
    "one_line",
]

REBUILD_HINT = "rebuild the index (`nnfp index build`) or restore the folder from a backup"


class CorruptIndexError(ValueError):
    """A saved index whose files are damaged, truncated or inconsistent. The message names
    the file and what to do."""


class IndexBusyError(OSError):
    """A saved index replaced again and again while being read: no one version could be loaded."""


UNRECORDED = ("tracks.json", "calibration.json")  # tracks.json: its own digest; calibration: replaceable


def file_records(directory, names=None):
    """`{relative name: {"size", "sha256"}}` of every file under `directory` except `UNRECORDED`
    (only under the top-level entries `names`, when given: a Milvus-backed index records its
    own files, not its Milvus Lite folder, which Milvus changes, nor a user's)."""
    directory = Path(directory)
    records = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if names is not None and name.split("/")[0] not in names:
            continue
        if path.is_file() and name not in UNRECORDED:
            records[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return records


def meta_digest(meta):
    """SHA-256 of tracks.json's content without its own `integrity` entry."""
    content = {key: value for key, value in meta.items() if key != "integrity"}
    content = json.loads(json.dumps(content))  # as read back: str keys, lists for tuples
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def one_line(error):
    return " ".join(f"{type(error).__name__}: {error}".split())


def corrupt_file_error(path, error):
    return CorruptIndexError(f"{path}: damaged or unreadable ({one_line(error)}); {REBUILD_HINT}")


def integrity_problems(directory, meta, checksums):
    """What is wrong with the recorded files of a saved DB: sizes always, contents when
    `checksums`. Returns a list of one-line messages (empty: all good)."""
    integrity = meta.get("integrity")
    if not integrity:
        return []
    directory = Path(directory)
    problems = []
    if checksums and integrity.get("tracks_sha256") != meta_digest(meta):
        problems.append(f"{directory / 'tracks.json'}: content does not match its checksum (edited or damaged)")
    for name, record in integrity.get("files", {}).items():
        if name in UNRECORDED:  # recorded by indexes saved before calibration.json was left out
            continue
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != record["size"]:
            problems.append(
                f"{path}: {path.stat().st_size} bytes, expected {record['size']} (truncated or replaced)"
            )
        elif checksums and sha256_file(path) != record["sha256"]:
            problems.append(f"{path}: content does not match its checksum (damaged or replaced)")
    return problems
