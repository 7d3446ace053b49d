"""A large catalogue fingerprinted in N independent jobs, and the shards merged into one index.

`build_shard` fingerprints one contiguous slice of the sorted file list (`--shard I/N`);
`merge_shards` checks the N shards and writes the index a single `build_index` would have
written (same track ids, rows and fingerprints), with IVF inverted lists merged on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnfp.catalogue.build import (
    IndexReport,
    auto_index_type,
    calibration_files,
    index_lock,
    index_metadata,
    litert_files,
    milvus_target,
    model_file_name,
    progress_log,
)
from nnfp.catalogue.chunks import fingerprint_catalogue, hop_samples, list_catalogue, partial_dir
from nnfp.catalogue.fingerprint import ModelSpec, load_model, probe_entry
from nnfp.defaults import INDEX_TYPES
from nnfp.outputs import (
    OutputFolderError,
    atomic_directory,
    claim_output_dir,
    output_kind,
    write_marker,
)
from nnfp.store.db import FingerprintDB

__all__ = ["SHARD_FORMAT_VERSION", "ShardError", "build_shard", "merge_shards", "parse_shard", "shard_dir_name"]

SHARD_FORMAT_VERSION = 1
_COPY_CHUNK_ROWS = 262_144  # rows per chunk when concatenating shard stores
_SHARD_META = "shard.json"


class ShardError(ValueError):
    """Shards that cannot be merged: missing, repeated, or built differently."""


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


def build_shard(
    audio_dir,
    out_dir,
    shard,
    n_shards,
    model=None,
    sample_rate=None,
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
    if sample_rate is not None:  # else checked once the model tells its rate
        hop_samples(hop_seconds, sample_rate)
    # OUT_DIR is shared by the N shard jobs: new, empty, or already a folder of shards.
    claim_output_dir(out_dir, "shards", reuse=True, inputs=[audio_dir])
    write_marker(out_dir, "shards")
    embedder, model_path = load_model(model, trust_model=trust_model)
    spec = ModelSpec.of(embedder, model_path)
    sample_rate = spec.index_rate(sample_rate, model_path)  # the model's own
    hop_samples(hop_seconds, sample_rate)
    root, relative = list_catalogue(audio_dir)
    shard_dir = Path(out_dir).absolute() / shard_dir_name(shard, n_shards)
    if int(chunk_files) < 1:
        raise ValueError(f"`chunk_files` must be >= 1. Received: chunk_files={chunk_files}")
    mine = relative[_shard_slice(len(relative), shard, n_shards, int(chunk_files))]
    log = progress_log(progress)
    with index_lock(shard_dir, log=log):  # two jobs given the same shard: one after the other
        return _build_shard(
            root, relative, mine, shard, n_shards, shard_dir, embedder, model_path, sample_rate, hop_seconds,
            batch_size, chunk_files, progress, on_chunk, spec.digest,
        )


def _build_shard(
    root, relative, mine, shard, n_shards, shard_dir, embedder, model_path, sample_rate, hop_seconds, batch_size,
    chunk_files, progress, on_chunk, digest,
):
    work_dir = partial_dir(shard_dir)
    found = fingerprint_catalogue(
        root, mine, embedder, model_path, work_dir, sample_rate, hop_seconds,
        batch_size=batch_size, chunk_files=chunk_files, progress=progress, on_chunk=on_chunk,
    )
    model_name = model_file_name(model_path)
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
        "model_sha1": digest,
        "probe": probe_entry(embedder, sample_rate),
        "sample_rate": int(sample_rate),
        "hop_seconds": float(hop_seconds),
        "segment_samples": int(embedder.segment_samples),
        "embedding_dim": int(embedder.embedding_dim),
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
    return IndexReport.from_catalogue(found, None)


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
        unfinished = [i for i in missing if partial_dir(where / shard_dir_name(i, n_shards)).exists()]
        raise ShardError(
            f"missing shard(s) {', '.join(f'{i}/{n_shards}' for i in missing)} of {n_shards} "
            f"(expected {where / shard_dir_name(missing[0], n_shards)}"
            + (f"; unfinished: {', '.join(f'{i}/{n_shards}' for i in unfinished)}" if unfinished else "")
            + f"); run `nnfp index build AUDIO_DIR {where} --shard I/{n_shards}` for each"
        )
    return [by_number[i] for i in range(n_shards)]


def merge_shards(
    shard_dirs, index_dir, index_type="auto", progress=True, overwrite=False, backend="faiss", milvus_uri=None,
    collection=None, **index_params,
):
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
        backend, milvus_uri, collection: as for `build_index`: with `"milvus"` the rows of every
            shard go to one Milvus collection (a cluster's, with `milvus_uri`), in shard order.

    Raises:
        ShardError: a shard is missing or repeated, or shards differ in catalogue,
            model or settings.
    """
    if index_type != "auto" and index_type not in INDEX_TYPES:
        raise ValueError(
            f"`index_type` must be 'auto' or one of {INDEX_TYPES}. Received: index_type={index_type!r}"
        )
    index_params["milvus"] = milvus_target(index_dir, backend, milvus_uri, collection, overwrite, index_type)
    index_dir = Path(index_dir).absolute()
    claim_output_dir(index_dir, "index", overwrite=overwrite, inputs=shard_dirs)
    log = progress_log(progress)
    with index_lock(index_dir, log=log):  # one writer of an index at a time (`build_index`)
        claim_output_dir(index_dir, "index", overwrite=overwrite, inputs=shard_dirs)
        return _merge_shards(shard_dirs, index_dir, index_type, progress, index_params)


def _merge_shards(shard_dirs, index_dir, index_type, progress, index_params):
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
    work_dir = partial_dir(index_dir)
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
    bar = tqdm(total=len(shards), desc="merging shards", unit="shard", disable=not progress, file=sys.stderr)
    row = 0
    for path, meta in shards:
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
        bar.set_postfix_str(f"{row} segments", refresh=False)
        bar.update(1)
    bar.close()
    store.flush()
    segment_track = np.concatenate(segment_track)
    segment_start = np.concatenate(segment_start)
    if index_type == "auto":
        index_type = auto_index_type(n_segments, index_params.get("milvus"))
    model_path = shards[0][0] / first["model_file"]
    metadata = index_metadata(
        first["model_file"], first["model_source"], first["sample_rate"], first["segment_samples"],
        first["catalogue"]["audio_dir"], tracks, skipped, digest=first["model_sha1"],
        embedding_dim=first.get("embedding_dim", d),
    )
    metadata["shards"] = {"n_shards": len(shards), "dirs": [str(Path(path).absolute()) for path, _ in shards]}
    if first.get("probe"):
        metadata["probe"] = first["probe"]  # same model in every shard (`model_sha1` checked)
    db = FingerprintDB.build(
        store, segment_track, segment_start, tracks, hop_seconds=first["hop_seconds"],
        index_type=index_type, metadata=metadata, on_disk_dir=work_dir / "ivf", part_rows=part_rows,
        **index_params,
    )
    calibration = calibration_files(first["model_source"])
    db.metadata["calibrated"] = bool(calibration)  # a missing calibration.json is then an error
    log = progress_log(progress)
    lite = litert_files(model_path, first["model_file"], work_dir, log=log)
    db.save(index_dir, extra_files={first["model_file"]: model_path, **calibration, **lite})
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
