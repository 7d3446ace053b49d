"""Output folders: nnfp writes only into folders that are new, empty, or its own.

Every folder an nnfp command creates (an index, an exported model, a prepared cache,
a training run, an evaluation, a set of index shards) carries a small marker file,
`.nnfp-output.json`, naming what it is. Before writing, a command calls
`claim_output_dir`: a missing or empty folder is fine; a folder holding nnfp output
of the same kind is resumed or, where the command replaces it, replaced only with
`overwrite=True`; anything else (a music folder, someone's notes, another kind of
nnfp output) is refused with a message, and nothing is touched. An output folder may
not be, or lie inside, one of the command's input folders.

>>> claim_output_dir("my_index", "index", inputs=["music"])
'new'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["MARKER_FILE", "OutputFolderError", "claim_output_dir", "output_kind", "write_marker"]

MARKER_FILE = ".nnfp-output.json"
KINDS = ("index", "export", "prepared", "run", "evaluation", "shards")
_WHAT = {
    "index": "nnfp index",
    "export": "nnfp exported model",
    "prepared": "nnfp prepared audio cache",
    "run": "nnfp training run",
    "evaluation": "nnfp evaluation",
    "shards": "folder of nnfp index shards",
}


class OutputFolderError(ValueError):
    """An output folder nnfp must not write into. The message starts with the folder."""


def _legacy_kind(folder):
    """Outputs written before markers existed, recognised by their own files."""
    if (folder / "tracks.json").is_file() and (folder / "embeddings.npy").is_file():
        return "index"
    if (folder / "saved_model.pb").is_file():
        return "export"
    manifest = folder / "manifest.json"
    if manifest.is_file() and (folder / "settings.json").is_file():
        try:
            if json.loads(manifest.read_text()).get("format") == "nnfp-prepared-audio":
                return "prepared"
        except (OSError, ValueError, AttributeError):
            return None
    if (folder / "config.yaml").is_file() and ((folder / "backup").is_dir() or (folder / "checkpoints").is_dir()):
        return "run"
    if (folder / "results.json").is_file() and (folder / "results.md").is_file():
        return "evaluation"
    if any(p.is_dir() and (p / "shard.json").is_file() for p in folder.glob("shard-*-of-*")):
        return "shards"
    return None


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
    tmp = folder / (MARKER_FILE + ".tmp")
    tmp.write_text(json.dumps({"kind": kind, "written_by": "nnfp"}) + "\n")
    os.replace(tmp, folder / MARKER_FILE)


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
    raise OutputFolderError(
        f"{path}: the folder is not empty and is not an {what}: it holds {holds}. nnfp never "
        f"writes into or deletes a folder it did not create as an {what}, even with {flag}; "
        "choose a new or empty folder (nothing was written)"
    )
