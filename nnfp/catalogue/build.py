"""Build, extend and check a saved index: the catalogue's fingerprints in a `FingerprintDB`
folder with the model that made them.

An index folder holds the `FingerprintDB` files (`embeddings.npy`, the exact
fingerprints, memory-mapped at search time; `segments.npz`; `tracks.json` with
the track table and metadata; `index.faiss`) and a copy of the model that made
the fingerprints (`model.keras`, or `model/` for a SavedModel), so queries are
always fingerprinted by the same model as the catalogue. It is what
`nnfp index build|add|remove|verify` run; `add_track` and `remove_tracks` change a catalogue
one track at a time (`nnfp serve`).

>>> report = build_index("music/", "my_index", model="runs/demo")
>>> report.n_tracks, report.db
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from nnfp.catalogue.chunks import fingerprint_catalogue, hop_samples, list_catalogue, partial_dir
from nnfp.catalogue.fingerprint import (
    INDEX_LITERT_DIR,
    ModelSpec,
    index_embedder,
    index_model_path,
    index_sample_rate,
    load_model,
    probe_entry,
)
from nnfp.defaults import INDEX_TYPES
from nnfp.outputs import OutputLockedError, claim_output_dir, lock_path, output_lock
from nnfp.store.db import FingerprintDB

__all__ = [
    "COMPACT_SHARE",
    "SMALL_DB_SEGMENTS",
    "IndexLockedError",
    "IndexReport",
    "add_to_index",
    "add_track",
    "check_track_name",
    "compact_index",
    "auto_index_type",
    "build_index",
    "calibration_files",
    "index_lock",
    "index_metadata",
    "litert_files",
    "lock_path",
    "milvus_target",
    "progress_log",
    "model_file_name",
    "remove_tracks",
    "verify_index",
]

SMALL_DB_SEGMENTS = 100_000  # "auto" index: exact flat search below (~14 h of audio), IVF-PQ above
# `remove_tracks` rebuilds the index without the removed tracks' rows once they are more than
# this share of the stored rows; below, a removal only rewrites tracks.json.
COMPACT_SHARE = 0.5


@dataclasses.dataclass
class IndexReport:
    """What `build_index` / `add_to_index` did.

    Attributes:
        db: the saved database, reopened from disk (memory-mapped store); None for a shard.
        n_tracks: tracks added by this call.
        n_segments: segments added by this call.
        audio_seconds: duration of the audio added by this call (reused chunks included).
        fingerprint_seconds: wall time spent decoding and fingerprinting by this call.
        skipped: `(relative path, reason)` of files that could not be used.
        resumed_chunks: chunks reused from an interrupted earlier run.
        fresh_audio_seconds: the part of `audio_seconds` decoded and fingerprinted by this
            call (not reused from an interrupted run); None: all of it.
    """

    db: FingerprintDB
    n_tracks: int
    n_segments: int
    audio_seconds: float
    fingerprint_seconds: float
    skipped: list
    resumed_chunks: int = 0
    fresh_audio_seconds: float | None = None

    @classmethod
    def from_catalogue(cls, found, db):
        """The report of a fingerprinting pass (a `Catalogue`); `db`: the saved index, or None for a shard."""
        return cls(
            db=db,
            n_tracks=len(found.tracks),
            n_segments=len(found.segment_track),
            audio_seconds=found.audio_seconds,
            fingerprint_seconds=found.fingerprint_seconds,
            skipped=found.skipped,
            resumed_chunks=found.resumed_chunks,
            fresh_audio_seconds=found.fresh_audio_seconds,
        )

    @property
    def realtime_factor(self):
        """Audio seconds fingerprinted per second of wall time, over this call's own work."""
        fresh = self.audio_seconds if self.fresh_audio_seconds is None else self.fresh_audio_seconds
        return fresh / max(self.fingerprint_seconds, 1e-9)


def progress_log(progress):
    """`log(message)` printing to stderr when `progress` (a command's progress output is on),
    else None: what `index_lock` and the catalogue writers tell the user."""
    return (lambda message: print(message, file=sys.stderr)) if progress else None


IndexLockedError = OutputLockedError  # another process holds the lock of the index being changed


def index_lock(index_dir, timeout=None, log=None):
    """Holds the exclusive lock for changing `index_dir` (`nnfp.outputs.output_lock`): every
    writer of an index (build, add, merge, calibrate, remove) takes it.

    Waits for another holder; `timeout` seconds (None: no limit) then `IndexLockedError`.
    `log` (e.g. `print`) is told once when it has to wait.
    """
    return output_lock(index_dir, timeout=timeout, log=log, what="index")


def verify_index(index_dir, model=None, trust_model=False):
    """Checks everything of a saved index: every file against its recorded size and SHA-256,
    that each loads, that its calibration (kept out of that record: `nnfp index calibrate`
    replaces it) is there if the index was built with one and matches its own digest, and
    that the model (the index's own, or `model`) reproduces the probe fingerprints.
    Returns `(problems, notes)`: one-line messages (empty: intact) and remarks (e.g. an
    older index without checksums)."""
    from nnfp.catalogue.calibration import index_calibration
    from nnfp.store.db import read_metadata, verify_db

    index_dir = Path(index_dir)
    problems, has_checksums = verify_db(index_dir)
    notes = []
    if not has_checksums and not problems:
        notes.append(f"{index_dir}: no checksums recorded (built by an older nnfp); rebuild it to add them")
    if problems:
        return problems, notes
    metadata = read_metadata(index_dir)  # verify_db loaded the whole index already
    if not metadata.get("probe"):
        notes.append(f"{index_dir}: no probe fingerprints recorded (built by an older nnfp); model not checked")
    try:  # as `identify` would decide (an index built without a calibration is intact: no note)
        calibration, calibration_notes = index_calibration(index_dir, metadata)
        scores = calibration.min_score if calibration is not None else []
        if calibration is not None:
            notes.extend(calibration_notes)  # e.g. a file without a digest: not checked
        margins = calibration is not None and calibration.info.get("decision") in ("margin", "lead")
        if not margins and any(b > a for a, b in zip(scores, scores[1:], strict=False)):  # scores fall with length
            notes.append(
                f"{index_dir}: calibrated thresholds rise with query length ({calibration.min_score}); "
                "expected to fall: recalibrate with more out-of-catalogue queries"
            )
    except ValueError as error:
        problems.append(str(error))
    from nnfp.lite import is_litert_model

    try:
        rate = index_sample_rate(metadata)
    except ValueError as error:
        return problems + [f"{index_dir}: {error}"], notes
    # Each runtime's copy of the model on its own: the Keras model (or the one given), and the
    # index's LiteRT copy, which `identify` runs by default.
    runtimes = ["auto"]
    if model is None and metadata.get("model_file") != INDEX_LITERT_DIR:
        runtimes = ["tensorflow"] + (["litert"] if is_litert_model(index_dir / INDEX_LITERT_DIR) else [])
    for runtime in runtimes:
        try:
            index_embedder(index_dir, metadata, rate, model, trust_model, runtime=runtime)
        except (FileNotFoundError, ValueError, ImportError) as error:
            problems.append(str(error))
    return problems, notes


def model_file_name(model_path):
    """The name of the model's copy inside an index or shard folder: `litert/` for a LiteRT
    folder, `model/` for a SavedModel folder, `model.keras` for a file."""
    from nnfp.lite import is_litert_model

    if is_litert_model(model_path):
        return INDEX_LITERT_DIR
    return "model" if Path(model_path).is_dir() else "model.keras"


def litert_files(model_path, model_file, work_dir, index_dir=None, log=None):
    """`{"litert": folder}`: the LiteRT copy of the model to save in an index, so that queries
    run without TensorFlow (`nnfp.catalogue.fingerprint.index_embedder`).

    The index's own copy when it has one (an `add` keeps it), the copy beside the model
    (`x.litert/`, as the packaged model's), or a conversion of a `.keras` model into
    `work_dir` (`nnfp.export.convert_to_litert`). None for a SavedModel, a LiteRT model
    (it is the index's model already), or when conversion fails (`log` is told why).
    """
    from nnfp.catalogue.fingerprint import conversion_of, litert_copy, model_digest
    from nnfp.defaults import cache_home
    from nnfp.lite import LITERT_SPEC_VERSION, is_litert_model

    if model_file == INDEX_LITERT_DIR:
        return {}
    if index_dir is not None and is_litert_model(Path(index_dir) / INDEX_LITERT_DIR):
        return {INDEX_LITERT_DIR: Path(index_dir) / INDEX_LITERT_DIR}
    if not Path(model_path).is_file():
        return {}
    digest = model_digest(model_path)
    # A conversion of this very model made by an earlier build is kept in nnfp's cache: one
    # takes ~5 s, and one model often builds several indexes. Per spec version: a conversion
    # cached by an older nnfp lacks what a newer one writes (version 2: spectrum.tflite).
    cache = cache_home() / "litert" / f"{digest}-v{LITERT_SPEC_VERSION}"
    copy = litert_copy(model_path, digest) or conversion_of(cache, model_path, digest)
    if copy is not None:
        return {INDEX_LITERT_DIR: copy}
    target = Path(work_dir) / INDEX_LITERT_DIR
    try:
        from nnfp.export import convert_to_litert

        shutil.rmtree(target, ignore_errors=True)  # ours: inside the build's work folder
        target.mkdir(parents=True)
        convert_to_litert(model_path, target)
    except Exception as error:  # the index works without it, on TensorFlow
        if log is not None:
            log(f"note: no LiteRT copy of {model_path} in the index (conversion failed: "
                f"{type(error).__name__}: {error}); its queries will run on TensorFlow")
        return {}
    _cache_litert(target, cache)
    return {INDEX_LITERT_DIR: target}


def _cache_litert(folder, target):
    """Keeps a copy of a conversion at `target` in nnfp's cache (whole or not at all); a cache
    that cannot be written only costs the next build a conversion."""
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        for name in os.listdir(folder):
            shutil.copyfile(Path(folder) / name, tmp / name)
        try:
            os.rename(tmp, target)
        except OSError:  # another build cached it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass


def build_index(
    audio_dir,
    index_dir,
    model=None,
    index_type="auto",
    sample_rate=None,
    hop_seconds=0.5,
    batch_size=256,
    chunk_files=32,
    progress=True,
    on_chunk=None,
    trust_model=False,
    overwrite=False,
    lock_timeout=None,
    runtime="auto",
    backend="faiss",
    milvus_uri=None,
    collection=None,
    **index_params,
):
    """Fingerprints every audio file under `audio_dir` and saves a searchable index.

    Resumable: fingerprints are written chunk by chunk (`chunk_files` files each) to
    `<index_dir>.partial/`; calling again after an interruption reuses the finished
    chunks. The index folder is written to a temporary name and renamed, and the
    partial folder is removed once it is in place. Unusable files are skipped and
    listed in the report and in the index metadata.

    Args:
        audio_dir: folder of audio files (searched recursively), any format/rate.
        index_dir: output folder.
        model: run directory, `.keras` file or SavedModel; None: the packaged model.
        index_type: `"auto"` (flat below 100k segments, else IVF-PQ) or one of
            `nnfp.defaults.INDEX_TYPES`.
        sample_rate: None (default): the model's own rate (`ModelSpec`); a rate given must be
            the model's (a check that the caller's audio fits it).
        hop_seconds: the segment hop.
        batch_size: segments per inference batch.
        chunk_files: files per resumable chunk.
        progress: print a progress bar to stderr.
        on_chunk: called with the chunk number after each chunk is saved.
        overwrite: replace an existing nnfp index at `index_dir`.
        lock_timeout: seconds to wait for another process changing `index_dir`
            (`index_lock`; None: no limit), then `IndexLockedError`.
        runtime: what runs the model (`nnfp.catalogue.fingerprint.load_model`): `"auto"`
            LiteRT where the model has a LiteRT copy (the packaged one has), else TensorFlow.
            The index gets a LiteRT copy of a `.keras` model either way (`litert/`).
        backend, milvus_uri, collection: where the fingerprints go (`milvus_target`): `"faiss"`
            (default) into the folder, or `"milvus"` into a Milvus collection (`collection`,
            default `nnfp_<folder name>`), on the server `milvus_uri` or in a Milvus Lite file
            inside the folder; a killed build run again carries on after the rows stored.
        **index_params: `FingerprintDB.build` arguments (nlist, m, nbits, nprobe,
            hnsw_m, ef_search, threads, train_size).

    Returns:
        An `IndexReport`.
    """
    index_params["milvus"] = milvus_target(index_dir, backend, milvus_uri, collection, overwrite, index_type)
    if index_type != "auto" and index_type not in INDEX_TYPES:
        raise ValueError(
            f"`index_type` must be 'auto' or one of {INDEX_TYPES}. Received: index_type={index_type!r}"
        )
    if sample_rate is not None:  # else checked once the model is loaded and tells its rate
        hop_samples(hop_seconds, sample_rate)
    index_dir = Path(index_dir).absolute()
    # Before anything is loaded or written: never into (or deleting) a user's folder.
    claim_output_dir(index_dir, "index", overwrite=overwrite, inputs=[audio_dir])
    log = progress_log(progress)
    # One writer at a time: a second build (or an add) of the same folder waits, then finds the
    # first one's index and is refused without `overwrite` (checked again under the lock).
    with index_lock(index_dir, timeout=lock_timeout, log=log):
        claim_output_dir(index_dir, "index", overwrite=overwrite, inputs=[audio_dir])
        return _build_index(
            audio_dir, index_dir, model, index_type, sample_rate, hop_seconds, batch_size, chunk_files,
            progress, on_chunk, trust_model, runtime, index_params,
        )


def _build_index(
    audio_dir, index_dir, model, index_type, sample_rate, hop_seconds, batch_size, chunk_files, progress,
    on_chunk, trust_model, runtime, index_params,
):
    embedder, model_path = load_model(model, trust_model=trust_model, runtime=runtime)
    spec = ModelSpec.of(embedder, model_path)
    sample_rate = spec.index_rate(sample_rate, model_path)
    hop_samples(hop_seconds, sample_rate)
    root, relative = list_catalogue(audio_dir)
    work_dir = partial_dir(index_dir)
    found = fingerprint_catalogue(
        root, relative, embedder, model_path, work_dir, sample_rate, hop_seconds,
        batch_size=batch_size, chunk_files=chunk_files, progress=progress, on_chunk=on_chunk,
    )
    if found.store is None:
        raise FileNotFoundError(
            f"{audio_dir}: none of the {len(relative)} audio files could be fingerprinted "
            f"(e.g. {found.skipped[0][0]}: {found.skipped[0][1]})"
        )
    if index_type == "auto":
        index_type = auto_index_type(len(found.store), index_params.get("milvus"))
    model_name = model_file_name(model_path)
    metadata = index_metadata(
        model_name, model_path, sample_rate, embedder.segment_samples, root, found.tracks, found.skipped,
        digest=spec.digest, embedding_dim=spec.embedding_dim,
    )
    metadata["probe"] = probe_entry(embedder, sample_rate)  # checks the model of every later load
    db = FingerprintDB.build(
        found.store, found.segment_track, found.segment_start, found.tracks, hop_seconds=hop_seconds,
        index_type=index_type, metadata=metadata, **index_params,
    )
    return _save_and_report(db, index_dir, model_name, model_path, work_dir, found, progress)


def calibration_files(model_path, index_dir=None):
    """`{"calibration.json": source}` to save with an index: the index's own calibration when
    `index_dir` has one (an `add` keeps it), else the model's (`x.keras` -> `x.calibration.json`)."""
    from nnfp.catalogue.calibration import INDEX_CALIBRATION_FILE, model_calibration_path

    own = Path(index_dir) / INDEX_CALIBRATION_FILE if index_dir is not None else None
    source = own if own is not None and own.is_file() else model_calibration_path(model_path)
    return {INDEX_CALIBRATION_FILE: source} if source.is_file() else {}


def _save_and_report(db, index_dir, model_file, model_path, work_dir, found, progress=False):
    """Save `db` with its model (and its LiteRT copy) atomically, drop the work dir, and report
    on the reloaded index."""
    adding = Path(model_path).absolute().parent == Path(index_dir).absolute()  # the index's own model
    calibration = calibration_files(model_path, index_dir if adding else None)
    db.metadata["calibrated"] = bool(calibration)  # a missing calibration.json is then an error
    log = progress_log(progress)
    lite = litert_files(model_path, model_file, work_dir, index_dir if adding else None, log=log)
    db.save(index_dir, extra_files={model_file: model_path, **calibration, **lite})
    del db
    found.store = None  # release the memory-mapped scratch store before deleting it
    shutil.rmtree(work_dir, ignore_errors=True)
    return IndexReport.from_catalogue(found, FingerprintDB.load(index_dir))


def _drop_duplicates(found, indexed):
    """Leaves out of `found` (a `Catalogue` to add) every track whose decoded audio is already
    indexed, or came earlier in `found`, under another name (same `pcm_sha256`): one recording
    twice in an index gives two matches no one can tell apart. They are listed in
    `found.skipped`. Returns `{dropped path: the path of the same audio}`."""
    seen = {track["pcm_sha256"]: track["path"] for track in indexed if track.get("pcm_sha256")}
    dropped, same_as = set(), {}
    for track in found.tracks:
        digest = track.get("pcm_sha256")
        if digest in seen:
            dropped.add(track["track_id"])
            same_as[track["path"]] = seen[digest]
            found.skipped.append(
                [track["path"], f"the same audio as {seen[digest]!r}, already in the index (decoded samples identical); not added"]
            )
        elif digest:
            seen[digest] = track["path"]
    if not dropped:
        return same_as
    found.tracks = [track for track in found.tracks if track["track_id"] not in dropped]
    keep = ~np.isin(found.segment_track, list(dropped))
    found.store = np.asarray(found.store)[keep] if found.tracks else None
    found.segment_track, found.segment_start = found.segment_track[keep], found.segment_start[keep]
    return same_as


def auto_index_type(n_segments, milvus=None):
    """Exact search below `SMALL_DB_SEGMENTS`, else IVF-PQ with faiss, HNSW on Milvus (`milvus`:
    its `MilvusTarget`; Milvus Lite has no product quantiser)."""
    if n_segments < SMALL_DB_SEGMENTS:
        return "flat"
    return "ivfpq" if milvus is None else "hnsw"


def milvus_target(index_dir, backend="faiss", milvus_uri=None, collection=None, overwrite=False, index_type="auto"):
    """Where an index's fingerprints go with `backend="milvus"` (a `nnfp.store.milvus.MilvusTarget`):
    the collection `collection` (default `nnfp_<folder name>`) on the server `milvus_uri` (its token
    from `$NNFP_MILVUS_TOKEN`), or in a Milvus Lite file made in the build's work folder and moved
    into `index_dir` with the rest. None for `"faiss"`. Checked before anything is fingerprinted."""
    from nnfp.store.milvus import BACKENDS, LITE_FILE, MilvusTarget, default_collection

    if backend not in BACKENDS:
        raise ValueError(f"`backend` (--backend) must be one of {BACKENDS}. Received: backend={backend!r}")
    if backend == "faiss":
        if milvus_uri is not None or collection is not None:
            raise ValueError("--milvus-uri and --collection go with --backend milvus")
        return None
    from nnfp.extras import require

    require("pymilvus", "milvus", "--backend milvus")
    if milvus_uri is None:
        require("milvus_lite", "milvus", "--backend milvus without --milvus-uri (a Milvus Lite file)")
    target = MilvusTarget(
        milvus_uri, collection if collection is not None else default_collection(index_dir),
        None if milvus_uri is not None else partial_dir(index_dir) / LITE_FILE,
        # A Lite file in the work folder is this build's; a server's collection is replaced with --overwrite.
        replace=overwrite or milvus_uri is None,
    )
    target.check_index_type(index_type)
    return target


def index_metadata(
    model_name, model_path, sample_rate, segment_samples, root, tracks, skipped, digest=None, embedding_dim=None,
):
    """The catalogue part of an index's metadata, its model's `ModelSpec` included (checked on
    every load: `check_spec`); `digest`: the model's `model_digest` (read from `model_path` when
    not given)."""
    from nnfp.catalogue.fingerprint import model_digest

    return {
        "model_file": model_name,
        "model_source": str(Path(model_path).absolute()),
        "model_digest": digest or model_digest(model_path),  # which model made the fingerprints
        "sample_rate": int(sample_rate),
        "segment_samples": int(segment_samples),
        **({} if embedding_dim is None else {"embedding_dim": int(embedding_dim)}),
        "segment_seconds": segment_samples / sample_rate,
        "sources": [{"audio_dir": str(root), "first_track_id": 0, "n_tracks": len(tracks)}],
        "skipped": skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def add_to_index(
    index_dir,
    audio_dir,
    batch_size=256,
    chunk_files=32,
    progress=True,
    on_chunk=None,
    trust_model=False,
    lock_timeout=None,
    runtime="auto",
):
    """Appends the tracks under `audio_dir` to a saved index, fingerprinted by its model.

    Files of `audio_dir` already indexed from the same folder (compared resolved:
    `music/../music` is `music`) are left out. The faiss index is not retrained.
    Resumable and atomic like `build_index`. Holds `index_lock(index_dir)`: a second
    add of the same index waits for the first (`lock_timeout` seconds at most, None:
    no limit, then `IndexLockedError`) and then sees its tracks. The index's model must
    reproduce the index's probe fingerprints (`ModelMismatchError`); a SavedModel needs
    `trust_model=True`. `runtime`: as for `build_index` (its LiteRT copy runs the index's
    model when its probes agree).
    """
    index_dir = Path(index_dir).absolute()
    if not index_dir.is_dir():
        raise FileNotFoundError(f"Fingerprint DB directory not found: {index_dir}")
    log = progress_log(progress)
    with index_lock(index_dir, timeout=lock_timeout, log=log):
        return _add_to_index(index_dir, audio_dir, batch_size, chunk_files, progress, on_chunk, trust_model, runtime)


def _add_to_index(
    index_dir, audio_dir, batch_size, chunk_files, progress, on_chunk, trust_model, runtime,
    db=None, refuse_skipped=False, source=None,
):
    """`add_to_index` under the lock. `db`: the index, already loaded under this lock.
    `refuse_skipped`: a file left out (unreadable, the same audio as a track) is a
    `ValueError` and nothing is saved. `source`: the `metadata["sources"]` entry to record
    instead of `{"audio_dir": audio_dir}` (`add_track`: the file added, not its temporary folder)."""
    db = FingerprintDB.load(index_dir, mmap=True) if db is None else db
    meta = db.metadata
    model_path = index_model_path(index_dir, meta)
    rate = index_sample_rate(meta)
    embedder = index_embedder(index_dir, meta, rate, trust_model=trust_model, runtime=runtime)
    root, relative = list_catalogue(audio_dir)
    path_of = {track["track_id"]: track["path"] for track in db.tracks}
    present = set()
    for source_entry in meta["sources"]:
        # Removed tracks count too: adding their folder again does not bring them back
        # (`add_track` can, under their name).
        if source_entry.get("audio_dir") and Path(source_entry["audio_dir"]).resolve() == root:
            ids = range(source_entry["first_track_id"], source_entry["first_track_id"] + source_entry["n_tracks"])
            present.update(path_of[i] for i in ids)
    relative = [r for r in relative if r not in present]
    if not relative:
        return IndexReport(db, 0, 0, 0.0, 0.0, [])
    work_dir = partial_dir(index_dir)
    found = fingerprint_catalogue(
        root, relative, embedder, model_path, work_dir, rate, db.hop_seconds,
        batch_size=batch_size, chunk_files=chunk_files, progress=progress, on_chunk=on_chunk,
    )
    same_as = _drop_duplicates(found, db.live_tracks)  # a removed track's audio may come back
    if refuse_skipped and found.skipped:
        found.store = None  # release the memory-mapped scratch store before deleting it
        shutil.rmtree(work_dir, ignore_errors=True)
        raise ValueError("; ".join(
            f"{path}: the same audio as {same_as[path]!r} is already in the index (decoded samples identical); "
            "not added" if path in same_as else f"{path}: {reason}; not added"
            for path, reason in found.skipped
        ))
    first_id = db.next_track_id
    try:
        if found.store is not None:
            # The index's memory-mapped rows and the new ones are copied into a file in `work_dir`,
            # never the whole store into RAM; `save` deletes it.
            db.add(found.store, found.segment_track, found.segment_start, found.tracks, work_dir=work_dir)
        if found.tracks:
            db.metadata["sources"].append(
                {**(source or {"audio_dir": str(root)}), "first_track_id": first_id, "n_tracks": len(found.tracks)}
            )
        db.metadata["skipped"].extend(s for s in found.skipped if s not in db.metadata["skipped"])
        return _save_and_report(db, index_dir, meta["model_file"], model_path, work_dir, found, progress)
    except BaseException:
        if db.backend == "faiss":
            db.close()  # deletes the rows file `add` made; the fingerprint chunks stay for a resume
        raise


# ------------------------------------------------------------------ one track at a time


_MAX_TRACK_NAME = 255


def check_track_name(name):
    """Checks a track path given by a user (`add_track`): a relative POSIX path, normalised
    (no `.`, `..` or empty part), without control characters, at most 255 characters (255
    bytes a part), ending in an audio extension. Returns it; `ValueError` says what is wrong."""
    import unicodedata
    from pathlib import PurePosixPath

    from nnfp.audio.sources import AUDIO_EXTENSIONS

    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a track name must be a non-empty relative path like 'rock/song.wav'. Received: {name!r}")
    if len(name) > _MAX_TRACK_NAME:
        raise ValueError(f"a track name is at most {_MAX_TRACK_NAME} characters. Received: {len(name)} characters")
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")]
    if bad:
        raise ValueError(f"a track name may not hold control characters ({bad[0]!r}). Received: {name!r}")
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute():
        raise ValueError(f"a track name must be a relative path, not an absolute one. Received: {name!r}")
    if ".." in name.split("/"):
        raise ValueError(f"a track name may not hold a '..' part (it would lead out of its folder). Received: {name!r}")
    if path.as_posix() != name or "." in name.split("/"):
        raise ValueError(
            f"a track name must be a normalised path (no '.' or empty part, no trailing '/'). Received: {name!r}"
        )
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in path.parts):
        raise ValueError(f"each part of a track name is at most 255 bytes (UTF-8). Received: {name!r}")
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise ValueError(
            f"a track name must end in an audio extension ({', '.join(AUDIO_EXTENSIONS[:4])}, ...). Received: {name!r}"
        )
    return name


def add_track(
    index_dir, audio_path, name=None, lock_timeout=None, runtime="auto", progress=False, trust_model=False
):
    """Adds one audio file to a saved index as the track `name` (default: the file's name).

    The file is fingerprinted by the index's model, as `add_to_index` does for a folder
    (the index is saved again with the new rows, atomically; ids go on from the largest
    ever given). `name` must pass `check_track_name` and not be the path of a live track
    (a removed track's path can be given again: it becomes a new track). Holds
    `index_lock(index_dir)` (`lock_timeout`: as for `add_to_index`).

    Returns the new track's entry (`{"track_id", "path", "duration_s", "pcm_sha256"}`).

    Raises:
        FileNotFoundError: no such index or file.
        ValueError: a bad or taken `name`, audio that cannot be fingerprinted, or the same
            audio as a live track ("the same audio as 'x.wav' is already in the index");
            then nothing changed.
    """
    import tempfile

    index_dir = Path(index_dir).absolute()
    audio_path = Path(audio_path)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"Fingerprint DB directory not found: {index_dir}")
    if not audio_path.is_file():
        raise FileNotFoundError(f"Audio file not found: {audio_path}")
    name = check_track_name(audio_path.name if name is None else name)
    log = progress_log(progress)
    with index_lock(index_dir, timeout=lock_timeout, log=log):
        db = FingerprintDB.load(index_dir, mmap=True)
        taken = [track["track_id"] for track in db.live_tracks if track["path"] == name]
        if taken:
            raise ValueError(f"{name!r} is already track {taken[0]} of the index: remove it first, or give another name")
        # The file goes into a folder of our own under `name` (a hard link where possible),
        # which `_add_to_index` fingerprints like any folder, and which is deleted afterwards.
        folder = Path(tempfile.mkdtemp(prefix=".nnfp-add-track-"))
        try:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(audio_path, target)
            except OSError:  # another file system, or no links there
                shutil.copyfile(audio_path, target)
            report = _add_to_index(
                index_dir, folder, 256, 32, progress, None, trust_model, runtime, db=db, refuse_skipped=True,
                source={"audio_file": str(audio_path.absolute())},
            )
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    track = report.db.tracks[-1]  # appended last
    if report.n_tracks != 1 or track["path"] != name:
        raise ValueError(f"{audio_path}: not added (no audio found in it)")
    return dict(track)


def _resolve_tracks(db, tracks):
    """Track ids of `tracks` (ids: int or a string of digits; or relative paths as indexed),
    live ones only; `ValueError` naming every unknown, ambiguous or already removed one."""
    import numbers
    import re

    by_id = {track["track_id"]: track for track in db.tracks}
    live_ids_of_path, removed_paths = {}, set()
    for track in db.tracks:
        if track.get("removed"):
            removed_paths.add(track["path"])
        else:
            live_ids_of_path.setdefault(track["path"], []).append(track["track_id"])
    ids, unknown, removed, ambiguous = [], [], [], []
    for item in tracks:
        if isinstance(item, numbers.Integral) and not isinstance(item, bool) or (
            isinstance(item, str) and re.fullmatch(r"[0-9]+", item)
        ):
            track = by_id.get(int(item))
            if track is None:
                unknown.append(str(int(item)))
            elif track.get("removed"):
                removed.append(f"{track['track_id']} ({track['path']})")
            else:
                ids.append(track["track_id"])
        elif isinstance(item, str):
            found = live_ids_of_path.get(item, [])
            if len(found) == 1:
                ids.append(found[0])
            elif len(found) > 1:
                ambiguous.append(f"{item!r} (tracks {', '.join(map(str, found))})")
            elif item in removed_paths:
                removed.append(repr(item))
            else:
                unknown.append(repr(item))
        else:
            unknown.append(repr(item))
    problems = []
    if unknown:
        problems.append(f"no track {', '.join(unknown)} in the index")
    if removed:
        problems.append(f"already removed: {', '.join(removed)}")
    if ambiguous:
        problems.append(f"several tracks have the path {', '.join(ambiguous)}: give the id")
    if problems:
        raise ValueError("; ".join(problems) + "; nothing was removed")
    if not ids:
        raise ValueError("no track given; nothing was removed")
    return list(dict.fromkeys(ids))


def _compaction_problem(db):
    """Why `db` cannot be compacted now (None: it can)."""
    if db.backend == "milvus":
        return "a Milvus-backed index deletes the rows of removed tracks from its collection at once"
    n_live = db.n_live_segments
    if n_live == 0:
        return "every track of the index is removed (an index needs rows)"
    nbits = db.index_params.get("nbits")
    if db.index_type == "ivfpq" and nbits is not None and n_live < 2 ** int(nbits):
        return (
            f"{n_live} live segments are too few to train the index's product quantiser "
            f"(nbits={nbits} needs {2 ** int(nbits)})"
        )
    return None


def _compact(db, index_dir):
    """Saves `db` rebuilt without its removed tracks' rows (`FingerprintDB.compacted`) over
    `index_dir`, with the index's model, LiteRT copy and calibration as they are."""
    import tempfile

    from nnfp.catalogue.calibration import INDEX_CALIBRATION_FILE

    model_file = db.metadata["model_file"]
    model_path = index_model_path(index_dir, db.metadata)
    extra = {model_file: model_path}
    for name in (INDEX_LITERT_DIR, INDEX_CALIBRATION_FILE):
        if name != model_file and (index_dir / name).exists():
            extra[name] = index_dir / name
    work_dir = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.compact-", dir=index_dir.parent))
    try:
        compacted = db.compacted(work_dir=work_dir)
        compacted.save(index_dir, extra_files=extra)
        del compacted  # releases the memory-mapped scratch store before it is deleted
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)  # ours: made just above


def remove_tracks(index_dir, tracks, lock_timeout=None, progress=False, compact=None):
    """Removes tracks from a saved index: they are never answered again.

    A removal marks the tracks in `tracks.json` (`"removed": true`; their ids are never
    given again) and rewrites that one file atomically (`FingerprintDB.save_tracks`), so
    it costs the same whatever the index size, and readers load the old or the new table.
    Once the removed tracks' rows are more than `COMPACT_SHARE` of the stored rows, the
    index is compacted: rebuilt without them (`FingerprintDB.compacted`, same index type
    and parameters) and saved atomically like `add_to_index` does.

    Args:
        index_dir: a saved index.
        tracks: track ids (int, or strings of digits) or track paths as indexed
            (`db.tracks[i]["path"]`).
        lock_timeout: seconds to wait for another writer (`index_lock`); None: no limit.
        progress: say on stderr when waiting for the lock.
        compact: None: compact past `COMPACT_SHARE` (when the index can be rebuilt: some
            rows left, enough for its quantiser); True: compact now (`ValueError` when it
            cannot, and nothing changed); False: only mark.

    Returns:
        The removed tracks' entries (`{"track_id", "path", "duration_s", ..., "removed": True}`).

    Raises:
        ValueError: an unknown, ambiguous or already removed track (all named); nothing changed.
    """
    index_dir = Path(index_dir).absolute()
    if not index_dir.is_dir():
        raise FileNotFoundError(f"Fingerprint DB directory not found: {index_dir}")
    tracks = [tracks] if isinstance(tracks, str | int) else list(tracks)
    log = progress_log(progress)
    with index_lock(index_dir, timeout=lock_timeout, log=log):
        db = FingerprintDB.load(index_dir, mmap=True)
        removed = [dict(track) for track in db.remove(_resolve_tracks(db, tracks))]
        if db.backend == "milvus":
            compact = False  # `save_tracks` deletes their rows from the collection: nothing to compact
        problem = _compaction_problem(db)
        if compact and problem is not None:
            raise ValueError(f"{index_dir}: cannot compact: {problem}; nothing was removed")
        if compact is None:
            compact = problem is None and db.n_removed_segments > COMPACT_SHARE * db.n_segments
        if compact:
            _compact(db, index_dir)
        else:
            db.save_tracks(index_dir)
    return removed


def compact_index(index_dir, lock_timeout=None, progress=False):
    """Rebuilds a saved index without the rows of its removed tracks (`remove_tracks` does
    it past `COMPACT_SHARE`). Returns the number of rows dropped (0: nothing to do, nothing
    written). `ValueError` when it cannot be rebuilt (no live row left, too few for its
    quantiser)."""
    index_dir = Path(index_dir).absolute()
    if not index_dir.is_dir():
        raise FileNotFoundError(f"Fingerprint DB directory not found: {index_dir}")
    log = progress_log(progress)
    with index_lock(index_dir, timeout=lock_timeout, log=log):
        db = FingerprintDB.load(index_dir, mmap=True)
        dropped = db.n_removed_segments
        if dropped == 0 or db.backend == "milvus":  # Milvus: deleted from the collection at removal
            return 0
        problem = _compaction_problem(db)
        if problem is not None:
            raise ValueError(f"{index_dir}: cannot compact: {problem}")
        _compact(db, index_dir)
    return dropped
