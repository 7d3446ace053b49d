"""Output folders: nnfp writes only into folders that are new, empty, or its own.

Every folder an nnfp command creates (an index, an exported model, a prepared cache,
a training run, an evaluation, a set of index shards) carries a small marker file,
`.nnfp-output.json`, naming what it is. Before writing, a command calls
`claim_output_dir`: a missing or empty folder is fine; a folder holding nnfp output
of the same kind is resumed or, where the command replaces it, replaced only with
`overwrite=True`; anything else (a music folder, someone's notes, another kind of
nnfp output) is refused with a message, and nothing is touched. An output folder may
not be, or lie inside, one of the command's input folders.

Files and folders are written atomically: to a temporary name beside the target, then
renamed over it (`atomic_file`, `atomic_write_bytes`/`_json`/`_npz`, `atomic_directory`), so
a reader or a killed run never sees half a file. Every writer of an index, a shard or a
prepared cache holds `output_lock(folder)` (a `filelock` lock file beside the folder), so two
commands changing one folder take turns.

>>> claim_output_dir("my_index", "index", inputs=["music"])
'new'
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = [
    "MARKER_FILE",
    "LOCK_SUFFIX",
    "OutputFolderError",
    "OutputLockedError",
    "atomic_directory",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npz",
    "claim_output_dir",
    "lock_path",
    "make_ordinary_file",
    "output_kind",
    "output_lock",
    "sha256_file",
    "write_marker",
]

MARKER_FILE = ".nnfp-output.json"
KINDS = ("index", "export", "prepared", "run", "evaluation", "shards", "impulse_responses")
_WHAT = {
    "index": "nnfp index",
    "export": "nnfp exported model",
    "prepared": "nnfp prepared audio cache",
    "run": "nnfp training run",
    "evaluation": "nnfp evaluation",
    "shards": "nnfp folder of index shards",
    "impulse_responses": "nnfp folder of simulated impulse responses",
}


class OutputFolderError(ValueError):
    """An output folder nnfp must not write into. The message starts with the folder."""


def _legacy_kind(folder):
    """Outputs written before markers existed, recognised by the format nnfp wrote into their
    own files (a prepared cache's manifest, a shard's shard.json). File names alone are not
    nnfp's: a folder of `saved_model.pb`, or `tracks.json` and `embeddings.npy`, or a run's
    `config.yaml` and `checkpoints/`, may be anyone's, and without the marker is not taken
    for nnfp output (`claim_output_dir` refuses it, `--overwrite` or not)."""
    manifest = folder / "manifest.json"
    if manifest.is_file() and (folder / "settings.json").is_file():
        if _json_field(manifest, "format") == "nnfp-prepared-audio":
            return "prepared"
    if any(_json_field(p / "shard.json", "format") == "nnfp-shard" for p in folder.glob("shard-*-of-*") if p.is_dir()):
        return "shards"
    return None


def _json_field(path, key):
    """`key` of the JSON object in `path`, None when the file is missing or not such an object."""
    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


_LOOKS_LIKE = (("saved_model.pb",), ("tracks.json", "embeddings.npy"))  # what was once taken for nnfp's


def output_kind(path):
    """The kind of nnfp output at `path` (see `KINDS`), or None when it is not nnfp's."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    marker = folder / MARKER_FILE
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            kind = None
        return kind if kind in KINDS else None
    return _legacy_kind(folder)


def write_marker(folder, kind):
    """Marks `folder` as nnfp output of `kind` (call on every folder a command creates)."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / MARKER_FILE, (json.dumps({"kind": kind, "written_by": "nnfp"}) + "\n").encode())


def _is_within(path, other):
    try:
        path.relative_to(other)
        return True
    except ValueError:
        return False


def claim_output_dir(path, kind, overwrite=False, inputs=(), reuse=False, flag="--overwrite"):
    """Checks that a command may write nnfp output of `kind` at `path`; touches nothing.

    Args:
        path: the output folder.
        kind: what the command writes (one of `KINDS`).
        overwrite: replacing an existing output of the same kind is allowed.
        inputs: folders (or files) the command reads; `path` may not be one of them
            or lie inside one.
        reuse: the command resumes or updates an existing output of the same kind
            (a training run, a prepared cache, an evaluation) instead of replacing it.
        flag: the option that sets `overwrite`, named in the refusal message.

    Returns:
        `"new"` (nothing there), `"empty"` (an empty folder) or `"ours"` (nnfp output
        of `kind`, to be resumed or replaced).

    Raises:
        OutputFolderError: `path` is a file, a folder that is not nnfp output of
            `kind`, an existing output without `overwrite`/`reuse`, or inside an input.
    """
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
    target = Path(path).expanduser().resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).expanduser().resolve()
        if target == source or _is_within(target, source):
            raise OutputFolderError(
                f"{path}: the output folder is {'the same as' if target == source else 'inside'} the "
                f"input {source}; choose an output folder outside it (nothing was written)"
            )
    if not target.exists():
        return "new"
    if not target.is_dir():
        raise OutputFolderError(f"{path}: exists and is not a folder; choose another output path")
    entries = sorted(os.listdir(target))
    if not entries:
        return "empty"
    found = output_kind(target)
    what = _WHAT[kind]
    if found == kind:
        if reuse or overwrite:
            return "ours"
        raise OutputFolderError(
            f"{path}: already holds an {what}; pass {flag} to replace it, or choose a new folder "
            "(nothing was written)"
        )
    example = ", ".join(repr(e) for e in entries[:3]) + (", ..." if len(entries) > 3 else "")
    holds = f"an {_WHAT[found]}" if found else f"{len(entries)} entries that nnfp did not write ({example})"
    unmarked = ""
    if not found and any(all((target / name).exists() for name in names) for names in _LOOKS_LIKE):
        unmarked = (
            f" (an index or a SavedModel, maybe, but without nnfp's marker {MARKER_FILE}: if an older "
            "nnfp wrote it, delete it yourself)"
        )
    raise OutputFolderError(
        f"{path}: the folder is not empty and is not an {what}: it holds {holds}{unmarked}. nnfp never "
        f"writes into or deletes a folder it did not create as an {what}, even with {flag}; "
        "choose a new or empty folder (nothing was written)"
    )


# ----------------------------------------------------------------------------- the lock


class OutputLockedError(TimeoutError):
    """Another process holds the lock of an output folder being changed."""


LOCK_SUFFIX = ".nnfp-lock"
# What the lock files of earlier versions held (`filelock` leaves its files empty): such a file,
# left by a killed process, is a lock file too.
_LOCK_TEXT = b"nnfp index lock: held while a process changes the index beside it\n"


def lock_path(folder):
    """The lock file of `folder`: `.<name>.nnfp-lock` beside it (an index folder is replaced
    by `save`, so the lock cannot live inside it)."""
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}{LOCK_SUFFIX}")


@contextlib.contextmanager
def output_lock(folder, timeout=None, log=None, what="index"):
    """Holds the exclusive lock for changing `folder`: every writer of an index (build, add,
    merge, calibrate, remove), a shard or a prepared cache takes it (a `filelock.FileLock` on
    `lock_path(folder)`, removed afterwards).

    Waits for another holder; `timeout` seconds (None: no limit) then `OutputLockedError`.
    `log` (e.g. `print`) is told once when it has to wait. A file of the lock's name that nnfp
    did not write is refused (`OutputLockedError`) and left as it is. `what` names the folder
    in messages ("index", "cache").
    """
    import filelock

    folder = Path(folder).absolute()
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "rb") as handle:
            content = handle.read(len(_LOCK_TEXT) + 1)
    except FileNotFoundError:
        content = b""
    if content and content != _LOCK_TEXT:  # filelock would open, and might empty, a user's file
        raise OutputLockedError(
            f"{folder}: {path} exists and is not an nnfp lock file; nnfp will not use or delete "
            "it: move it away, then run again"
        )
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if log is not None:
            log(f"waiting for another process changing {folder} (lock {path})")
        try:
            lock.acquire(timeout=-1 if timeout is None else max(0.0, float(timeout)), poll_interval=0.1)
        except filelock.Timeout:
            raise OutputLockedError(
                f"{folder}: another process is changing this {what} (it holds {path}); "
                f"gave up after {timeout:g} s: run again once it has finished"
            ) from None
    try:
        yield
    finally:
        # Removed while still held: a waiter that then locks the removed file sees it gone and
        # locks the new one (filelock checks), so no two holders ever overlap.
        with contextlib.suppress(OSError):  # Windows: removed by filelock on release instead
            path.unlink(missing_ok=True)
        lock.release()


# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path beside `path`; once the block succeeds, the file written
    there is flushed to disk and renamed over `path` (on error it is removed).

    The temporary name is unique (`.<name>.<random>.tmp`), so two processes writing the
    same file never write into each other's temporary file; the last rename wins.

    >>> with atomic_file("clip.wav") as tmp:
    ...     soundfile.write(tmp, audio, 8000)
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        make_ordinary_file(tmp)  # mkstemp makes it private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, data):
    """Writes `data` (bytes) to `path` atomically (`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path, payload, indent=1, **kwargs):
    """Writes `payload` as JSON to `path` atomically; `kwargs` go to `json.dumps`."""
    atomic_write_bytes(path, json.dumps(payload, indent=indent, **kwargs).encode())


def atomic_write_npz(path, **arrays):
    """Writes `arrays` as an uncompressed `.npz` to `path` atomically (`np.savez`)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _read_umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once: setting the umask to read it is not thread-safe.
_UMASK = _read_umask()


def make_ordinary_file(path):
    """Gives `path` the mode of a file created the ordinary way (0666 less the umask): files
    made by `tempfile.mkstemp` are private (0600), outputs are not."""
    os.chmod(path, 0o666 & ~_UMASK)


@contextlib.contextmanager
def atomic_directory(directory, kind="index", own_names=None):
    """Yields a temporary folder beside `directory` that replaces it once the block succeeds.

    The new folder is marked as nnfp output of `kind` (`nnfp.outputs`). An existing
    `directory` is replaced only when it is nnfp output of the same `kind` (anything
    else raises `OutputFolderError` before the block runs, and nothing is touched), and
    only when the new one is complete; on error the temporary folder is removed and
    `directory` is left as it was.

    Entries of the old folder that the new one lacks are carried over, except `own_names`
    (files of the old output that the new one drops), so a user's own files inside it
    survive. The swap is one atomic exchange where the system has it (Linux): a reader
    sees the old folder or the new one.
    """
    target = Path(directory).absolute()
    if target.exists():
        found = output_kind(target)
        if not target.is_dir() or (found != kind and any(target.iterdir())):
            raise OutputFolderError(
                f"{directory}: exists and is not an nnfp {kind} folder; nnfp only replaces its own "
                "output (nothing was written)"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it private; a saved DB is an ordinary folder
    try:
        yield tmp
        write_marker(tmp, kind)
        if target.exists():
            # Files the user put in the folder (notes, a calibration backup) are not nnfp's
            # to delete: they move into the new folder.
            for name in os.listdir(target):
                if not (tmp / name).exists() and name not in (own_names or ()):
                    os.rename(target / name, tmp / name)
            if not _exchange(tmp, target):
                # No atomic exchange here: move the old folder aside first, so that
                # `target` is never half-written (a reader may find it missing briefly).
                old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
                old.rmdir()
                os.rename(target, old)
                os.rename(tmp, target)
                tmp = old
            shutil.rmtree(tmp, ignore_errors=True)  # the old folder, now at the temporary name
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a, b):
    """Swaps two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`): a reader of `b`
    sees the old folder or the new one, never neither. False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without it
        return False
    raise OSError(error, os.strerror(error), str(b))


def sha256_file(path):
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
