"""From audio to fingerprints: the model (resolved, loaded, checked by probes) and the
segments of tracks, streams and files fingerprinted on the hop grid.

>>> embedder, path = load_model("runs/demo")
>>> embeddings, segment_track, segment_start = fingerprint_tracks(embedder, tracks, hop_samples=4000)
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from nnfp.audio.segments import fingerprint_segments, segment_waveform
from nnfp.store.integrity import CorruptIndexError

__all__ = [
    "DEFAULT_MODEL_PATH",
    "N_PROBES",
    "PROBE_SEED",
    "PROBE_TOLERANCE",
    "STREAM_SECONDS",
    "ModelMismatchError",
    "ModelSpec",
    "NoDefaultModelError",
    "check_model",
    "check_spec",
    "fingerprint_files",
    "fingerprint_segments",
    "pcm_digest",
    "fingerprint_stream",
    "iter_fingerprints",
    "iter_segments",
    "fingerprint_tracks",
    "index_embedder",
    "index_sample_rate",
    "conversion_of",
    "litert_copy",
    "index_model_path",
    "load_model",
    "model_digest",
    "probe_entry",
    "probe_fingerprints",
    "probe_waveforms",
    "resolve_model",
]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "weights" / "default.keras"
STREAM_SECONDS = 600.0  # index build decodes longer files block by block (bounded memory)
_STREAM_BLOCK_SECONDS = 64.0


class NoDefaultModelError(FileNotFoundError):
    """No `--model` was given and the package ships no default model."""


class ModelMismatchError(ValueError):
    """A model that does not reproduce the probe fingerprints recorded in an index."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What an index needs of its model, read from the model itself: the rate of the audio it
    takes, the samples of one segment, the size of its fingerprints and the digest of its file.

    Every index and shard records it (`nnfp.catalogue.build.index_metadata`), and every load
    compares the model it runs with the record (`check_spec`), as faiss compares `d` when
    indexes are merged: a model trained with `frontend.sample_rate: 16000` indexes and hears
    audio at 16 kHz.

    >>> spec = ModelSpec.of(*load_model("runs/demo"))
    >>> spec.sample_rate, spec.segment_samples, spec.embedding_dim
    (8000, 8000, 128)
    """

    sample_rate: int
    segment_samples: int
    embedding_dim: int
    digest: str

    @classmethod
    def of(cls, embedder, model_path, digest=None):
        """The spec of a loaded model (`load_model`): its front end's rate (a Keras model), or the
        `spec.json` of a LiteRT folder or SavedModel export. `digest`: its `model_digest`, when known."""
        rate = getattr(embedder, "sample_rate", None)
        if rate is None:
            from nnfp.runtime import ModelLoadError

            raise ModelLoadError(
                model_path,
                "the model records no sample rate (a SavedModel exported by an older nnfp, without "
                "spec.json or config.yaml): export it again with `nnfp export RUN_DIR OUT`",
            )
        return cls(
            sample_rate=int(rate), segment_samples=int(embedder.segment_samples),
            embedding_dim=int(embedder.embedding_dim), digest=digest or model_digest(model_path),
        )

    def index_rate(self, sample_rate=None, model_path="the model"):
        """The rate an index of the model is built at: the model's own; a `sample_rate` asked
        for (a caller's check that its audio fits) must be it."""
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise ValueError(
                f"{model_path}: the model takes {self.sample_rate} Hz audio; the index was asked for {sample_rate} Hz"
            )
        return self.sample_rate


def index_sample_rate(metadata):
    """The sample rate an index was built at (its queries are decoded at it), from its metadata."""
    rate = metadata.get("sample_rate")
    if not isinstance(rate, int) or rate <= 0:
        raise CorruptIndexError(
            f"the index records no valid sample rate (sample_rate={rate!r} in tracks.json); rebuild it"
        )
    return rate


def check_spec(embedder, metadata, what):
    """Raises `ModelMismatchError` when `embedder` takes another rate or segment, or makes
    fingerprints of another size, than the index records (keys an older index lacks, and a
    rate a model does not record, are not compared)."""
    got = {
        "sample_rate": getattr(embedder, "sample_rate", None),
        "segment_samples": embedder.segment_samples,
        "embedding_dim": embedder.embedding_dim,
    }
    differ = [
        f"{key} {got[key]} (the index: {metadata[key]})"
        for key in got
        if got[key] is not None and metadata.get(key) is not None and int(got[key]) != int(metadata[key])
    ]
    if differ:
        raise ModelMismatchError(f"{what} does not fit this index: " + ", ".join(differ))


# ------------------------------------------------------------------ models


def resolve_model(model=None):
    """`model` (run dir, `.keras` file, SavedModel or LiteRT folder) -> path; None -> the packaged model."""
    from nnfp.model_files import resolve_model_path

    if model is None:
        if DEFAULT_MODEL_PATH.exists():
            return DEFAULT_MODEL_PATH
        raise NoDefaultModelError(
            "no default model ships with this version of nnfp; "
            "pass --model RUN_DIR|FILE.keras|SAVEDMODEL_DIR"
        )
    return resolve_model_path(model)


def _check_runtime(runtime):
    from nnfp.defaults import RUNTIMES

    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {RUNTIMES}. Received: runtime={runtime!r}")


def conversion_of(folder, model_path, digest=None):
    """`folder` when it is a LiteRT folder converted from exactly the `.keras` file
    `model_path` (its `spec.json` names that file's `model_digest`, given as `digest` when
    already known), else None."""
    from nnfp.lite import is_litert_model, read_spec

    if not Path(model_path).is_file() or not is_litert_model(folder):
        return None
    try:
        recorded = read_spec(folder).get("keras_digest")
    except ValueError:
        return None
    return Path(folder) if recorded == (digest or model_digest(model_path)) else None


def litert_copy(model_path, digest=None):
    """The LiteRT folder beside `model_path` that holds it converted (`x.keras` -> `x.litert/`,
    `conversion_of`), or None."""
    from nnfp.model_files import litert_copy_path

    return conversion_of(litert_copy_path(model_path), model_path, digest)


def load_model(model=None, trust_model=False, runtime="auto"):
    """Loads a fingerprinter; returns `(embedder, resolved_path)`.

    `runtime` picks what runs the model: `"litert"` (`nnfp.lite`, no TensorFlow) for a
    LiteRT folder, or for a `.keras` file with a LiteRT copy beside it (`litert_copy`:
    the packaged model has one); `"tensorflow"` (`nnfp.export`) for `.keras` files and
    SavedModels; `"auto"` (default) LiteRT where it can, else TensorFlow. `resolved_path`
    is the model file itself (the `.keras` file even when its LiteRT copy runs).

    A SavedModel can run arbitrary TensorFlow operations and needs `trust_model=True`
    (see `nnfp.runtime.load_fingerprinter`); `.keras` files load in Keras safe mode.

    Raises:
        nnfp.runtime.ModelLoadError: a file that is not a fingerprinter, among others (a
            `.keras` file of another Keras model names the attribute it lacks).
    """
    from nnfp.lite import LiteFingerprinter, is_litert_model, litert_available

    _check_runtime(runtime)
    path = resolve_model(model)
    if is_litert_model(path):
        if runtime == "tensorflow":
            raise ValueError(f"{path}: a LiteRT model runs with LiteRT only; leave out --runtime tensorflow")
        return LiteFingerprinter(path), path
    if runtime != "tensorflow":
        copy = litert_copy(path)
        if copy is not None and litert_available():
            return LiteFingerprinter(copy), path
        if runtime == "litert":
            raise ValueError(
                f"{path}: no LiteRT copy of this model (looked for {Path(path).stem}.litert/ beside it"
                + ("" if litert_available() else "; and the LiteRT runtime is not installed: pip install ai-edge-litert")
                + "); export one with `nnfp export MODEL OUT --format litert`, or use --runtime tensorflow"
            )
    from nnfp.runtime import ModelLoadError, load_fingerprinter

    try:
        return load_fingerprinter(path, trust_model=trust_model), path
    except AttributeError as error:
        # A valid .keras file holding another Keras model: the fingerprinter wrapper reads
        # the `FingerPrinter` properties it has not got.
        if error.name not in ("segment_samples", "embedding_dim"):
            raise
        raise ModelLoadError(
            path,
            f"not an nnfp fingerprinter (a Keras model without `{error.name}`); nnfp needs an "
            "nnfp.model.FingerPrinter (`segment_samples`, `embedding_dim`: (batch, segment_samples) "
            "waveforms in, (batch, d) fingerprints out), as saved by `nnfp train` (RUN_DIR/model.keras) "
            "or `nnfp export`",
        ) from None


def model_digest(model_path):
    """SHA-1 of the model's bytes (every file of a SavedModel, with their relative names):
    the same model copied to several hosts gives the same digest."""
    model_path = Path(model_path)
    files = [model_path] if model_path.is_file() else sorted(p for p in model_path.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.relative_to(model_path).as_posix().encode() if f != model_path else b"")
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------ probes

PROBE_SEED = 20_210_606
N_PROBES = 3
# Max |difference| of a probe fingerprint component (vectors of norm 1) for the same model:
# CPU/GPU/XLA arithmetic moves them by ~1e-4; a different model by ~0.1 or more.
PROBE_TOLERANCE = 1e-2


def probe_waveforms(segment_samples, sample_rate):
    """`N_PROBES` fixed (segment_samples,) waveforms: seeded noise plus three tones each."""
    rng = np.random.default_rng(PROBE_SEED)
    t = np.arange(segment_samples) / sample_rate
    probes = []
    for _ in range(N_PROBES):
        tones = sum(
            0.2 * np.sin(2 * np.pi * f * t + phase)
            for f, phase in zip(rng.uniform(80, 0.4 * sample_rate, 3), rng.uniform(0, 2 * np.pi, 3), strict=True)
        )
        probes.append(tones + 0.05 * rng.standard_normal(segment_samples))
    return np.stack(probes).astype(np.float32)  # (N_PROBES, segment_samples)


def probe_fingerprints(embedder, sample_rate):
    """(N_PROBES, d) fingerprints of `probe_waveforms` by `embedder`."""
    return np.asarray(embedder.fingerprint(probe_waveforms(embedder.segment_samples, sample_rate)), np.float32)


def probe_entry(embedder, sample_rate):
    """What an index records of its model's probe fingerprints (tracks.json metadata)."""
    fingerprints = probe_fingerprints(embedder, sample_rate)
    return {"seed": PROBE_SEED, "fingerprints": np.round(fingerprints, 6).tolist()}


def check_model(embedder, metadata, sample_rate, what):
    """Raises `ModelMismatchError` when `embedder` does not reproduce the index's probe
    fingerprints; returns the max |difference| (None: the index records no probes)."""
    probe = metadata.get("probe")
    if not probe:
        return None
    expected = np.asarray(probe["fingerprints"], np.float32)
    got = probe_fingerprints(embedder, sample_rate) if probe.get("seed") == PROBE_SEED else None
    if got is None:
        return None  # probes of another nnfp version: cannot be compared
    if got.shape != expected.shape:
        raise ModelMismatchError(
            f"{what} does not make the fingerprints of this index (size {got.shape[-1]}, "
            f"the index holds size {expected.shape[-1]})"
        )
    difference = float(np.max(np.abs(got - expected)))
    if not difference <= PROBE_TOLERANCE:  # also catches NaN
        raise ModelMismatchError(
            f"{what} does not reproduce the fingerprints of this index (probe difference "
            f"{difference:.3g} > {PROBE_TOLERANCE:g}): it is not the model that built the index"
        )
    return difference


def index_model_path(index_dir, metadata):
    """The model inside an index folder; its recorded name may not lead outside the folder."""
    name = metadata.get("model_file")
    if name is None:
        raise FileNotFoundError(f"{index_dir}: the index records no model; pass --model")
    relative = Path(str(name))
    index_dir = Path(index_dir)
    if (
        relative.is_absolute()
        or ".." in relative.parts
        or not str(name).strip()
        or not (index_dir / relative).resolve().is_relative_to(index_dir.resolve())
    ):
        raise CorruptIndexError(
            f"{index_dir / 'tracks.json'}: the index's model path {name!r} leads outside the index "
            "folder, which nnfp refuses (an index must carry its own model); rebuild the index"
        )
    return index_dir / relative


INDEX_LITERT_DIR = "litert"  # the LiteRT copy of an index's model, inside the index folder
# A LiteRT copy of an index's model must reproduce its probe fingerprints this closely to run
# instead of it (float32 conversions of the shipped model differ by ~1e-6).
LITERT_PROBE_TOLERANCE = 1e-3


def _index_litert(index_dir, metadata, sample_rate, runtime):
    """The index's LiteRT copy of its model, when `runtime` allows it and its probes agree."""
    from nnfp.lite import LiteFingerprinter, is_litert_model, litert_available

    folder = Path(index_dir) / INDEX_LITERT_DIR
    if runtime == "tensorflow" or not is_litert_model(folder) or not litert_available():
        if runtime == "litert":
            raise ValueError(
                f"{index_dir}: no LiteRT copy of the index's model (built by an older nnfp, or from a SavedModel)"
                + ("" if litert_available() else " or the LiteRT runtime is not installed (pip install ai-edge-litert)")
                + "; use --runtime tensorflow, or rebuild the index"
            )
        return None
    embedder = LiteFingerprinter(folder)
    probe = metadata.get("probe")
    if probe and probe.get("seed") == PROBE_SEED:
        got = probe_fingerprints(embedder, sample_rate)
        expected = np.asarray(probe["fingerprints"], np.float32)
        difference = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else np.inf
        if not difference <= LITERT_PROBE_TOLERANCE:
            if runtime == "litert":
                raise ModelMismatchError(
                    f"{index_dir}: the index's LiteRT copy does not reproduce its probe fingerprints "
                    f"(difference {difference:.3g} > {LITERT_PROBE_TOLERANCE:g}); use --runtime tensorflow"
                )
            return None
    return embedder


def index_embedder(index_dir, metadata, sample_rate, model=None, trust_model=False, runtime="auto"):
    """The model of an index (or `model` instead), checked against the index's record of its
    model (`check_spec`: rate, segment, fingerprint size) and probe fingerprints.

    With `runtime` `"auto"` (default) or `"litert"`, the index's LiteRT copy of its model
    (`litert/`, written by `index build`) runs it when its probe fingerprints agree: no
    TensorFlow is started.
    """
    _check_runtime(runtime)
    own = model is None
    if own:
        index_model_path(index_dir, metadata)  # a recorded model path leading outside is refused first
        embedder = _index_litert(index_dir, metadata, sample_rate, runtime)
        if embedder is not None:
            check_spec(embedder, metadata, f"{index_dir}: the index's LiteRT copy of its model")
            return embedder
    path = index_model_path(index_dir, metadata) if own else model
    embedder, path = load_model(path, trust_model=trust_model, runtime=runtime)
    what = f"the index's own model {path}" if own else f"the model {path}"
    try:
        check_spec(embedder, metadata, what)
        check_model(embedder, metadata, sample_rate, what)
    except ModelMismatchError as error:
        hint = (
            "; the index folder was changed: rebuild it (`nnfp index build`)"
            if own
            else "; leave out --model to use the index's own model, or rebuild the index with this model"
        )
        raise ModelMismatchError(f"{index_dir}: {error}{hint}") from None
    return embedder


# ------------------------------------------------------------ fingerprints


def fingerprint_tracks(embedder, tracks, hop_samples, batch_size=256):
    """Fingerprints every segment of every track, batching across tracks.

    Returns:
        `(embeddings (n, d) float32, segment_track (n,) int32 index into tracks,
        segment_start (n,) int64 start sample)`.
    """
    segment = embedder.segment_samples
    views = [segment_waveform(track, segment, hop_samples) for track in tracks]
    owners = np.concatenate([np.full(len(v), i, np.int32) for i, v in enumerate(views)] or [[]])
    owners = owners.astype(np.int32)
    starts = np.concatenate([np.arange(len(v), dtype=np.int64) * hop_samples for v in views] or [[]])
    starts = starts.astype(np.int64)
    within = np.concatenate([np.arange(len(v)) for v in views] or [[]]).astype(np.int64)
    out = []
    for first in range(0, len(owners), batch_size):
        rows = slice(first, first + batch_size)
        batch = np.stack([views[o][w] for o, w in zip(owners[rows], within[rows], strict=True)])
        out.append(fingerprint_segments(embedder, batch, batch_size=batch_size))
    embeddings = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    return embeddings.astype(np.float32), owners, starts


def iter_fingerprints(embedder, blocks, hop_samples, batch_size=256, stats=None):
    """Fingerprints every segment of a waveform given as consecutive blocks, batch by batch.

    The stream is cut into segments every `hop_samples` as the blocks arrive; each full
    batch of `batch_size` segments is fingerprinted as soon as its samples are in, and the
    rest at the end. Only the samples of segments not yet fingerprinted are kept, so memory
    is bounded by the batch and block sizes, whatever the length of the stream (an
    endless one included).

    Args:
        embedder: a loaded fingerprinter (`nnfp.runtime.load_fingerprinter`).
        blocks: any iterable of float32 mono blocks of any sizes (for instance
            `nnfp.audio.io.stream_audio`).
        hop_samples: samples between segment starts.
        batch_size: segments per model call.
        stats: optional dict; `n_samples` and `peak` (absolute amplitude) are kept in it.

    Yields:
        `(first segment number, (n, d) float32 fingerprints)`, n = `batch_size` but for the last.
    """
    for first, windows in iter_segments(blocks, embedder.segment_samples, hop_samples, batch_size, stats):
        yield first, fingerprint_segments(embedder, windows, batch_size=batch_size)


def iter_segments(blocks, segment, hop_samples, batch_size=256, stats=None):
    """The segments of a waveform given as consecutive blocks, as `iter_fingerprints` cuts them,
    before the model: `(first segment number, (n, segment) float32 waveforms)`, n = `batch_size`
    but for the last."""
    span = segment + (batch_size - 1) * hop_samples  # samples of one full batch
    carry = np.zeros(0, np.float32)  # samples from the next segment's start on
    to_drop = 0  # samples still to drop before the next start (a hop longer than a segment)
    done = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        if stats is not None and len(block):
            stats["n_samples"] = stats.get("n_samples", 0) + len(block)
            stats["peak"] = max(stats.get("peak", 0.0), float(np.abs(block).max()))
        dropped = min(to_drop, len(block))
        carry = np.concatenate([carry, block[dropped:]])
        to_drop -= dropped
        while len(carry) >= span:
            yield done, segment_waveform(carry[:span], segment, hop_samples)  # batch_size segments
            done += batch_size
            used = batch_size * hop_samples
            to_drop += max(0, used - len(carry))
            carry = carry[used:]
    windows = segment_waveform(carry, segment, hop_samples)
    if len(windows):
        yield done, windows


def fingerprint_stream(embedder, blocks, hop_samples, batch_size=256):
    """Fingerprints of a whole block stream (`iter_fingerprints`, collected).

    Gives the fingerprints `fingerprint_tracks` gives for the whole waveform.

    Returns:
        `(embeddings (n, d) float32, segment_start (n,) int64 start sample, n_samples,
        peak absolute amplitude)`.
    """
    stats = {"n_samples": 0, "peak": 0.0}
    out = [fingerprints for _, fingerprints in iter_fingerprints(embedder, blocks, hop_samples, batch_size, stats)]
    embeddings = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)
    starts = np.arange(len(embeddings), dtype=np.int64) * hop_samples
    return embeddings, starts, stats["n_samples"], stats["peak"]


def _should_stream(path):
    """Long files (or of unknown length) are streamed; the header says, no decoding needed."""
    from nnfp.audio.io import audio_info

    try:
        seconds = audio_info(path).seconds
    except Exception:  # unreadable: decoding it whole reports why
        return False
    return seconds is None or seconds > STREAM_SECONDS


def _fingerprint_streamed(path, embedder, sample_rate, hop_samples, batch_size):
    """`(embeddings, starts, duration_s)` of one long file, or the reason it is unusable."""
    from nnfp.audio.io import AudioError, stream_audio
    from nnfp.audio.sources import usability_problem

    digest = hashlib.sha256()

    def hashed(blocks):
        for block in blocks:
            digest.update(np.ascontiguousarray(block, np.float32).tobytes())
            yield block

    try:
        blocks = hashed(stream_audio(path, sample_rate, block_seconds=_STREAM_BLOCK_SECONDS))
        embeddings, starts, n_samples, peak = fingerprint_stream(embedder, blocks, hop_samples, batch_size)
    except AudioError as exc:
        return exc.reason
    except Exception as exc:  # one bad file must never stop a large scan
        return f"unexpected error: {type(exc).__name__}: {exc}"
    min_seconds = embedder.segment_samples / sample_rate
    problem = usability_problem(n_samples, sample_rate, min_seconds, peak=peak)
    return problem or (embeddings, starts, n_samples / sample_rate, digest.hexdigest())


def fingerprint_files(paths, embedder, sample_rate, hop_samples, batch_size):
    """Fingerprints files in order: files up to `STREAM_SECONDS` decoded in parallel and batched
    together, longer ones streamed one by one in bounded memory.

    Returns:
        `(embeddings (n, d), segment_file (n,) position in paths, segment_start (n,) samples,
        kept positions, durations (s), skipped [(position, reason)], PCM digests of the kept
        files (`pcm_digest`))`.
    """
    from nnfp.audio.sources import load_tracks

    streamed = {i for i, path in enumerate(paths) if _should_stream(path)}
    whole = [path for i, path in enumerate(paths) if i not in streamed]
    position = {str(path): i for i, path in enumerate(paths)}
    tracks, kept, skipped = load_tracks(
        whole, sample_rate=sample_rate, min_seconds=embedder.segment_samples / sample_rate
    )
    results = {position[str(path)]: reason for path, reason in skipped}
    if tracks:
        embeddings, owners, starts = fingerprint_tracks(embedder, tracks, hop_samples, batch_size)
        bounds = np.cumsum(np.bincount(owners, minlength=len(tracks)))[:-1]
        for path, track, rows, track_starts in zip(
            kept, tracks, np.split(embeddings, bounds), np.split(starts, bounds), strict=True
        ):
            results[position[str(path)]] = (rows, track_starts, len(track) / sample_rate, pcm_digest(track))
    del tracks
    for i in sorted(streamed):
        results[i] = _fingerprint_streamed(paths[i], embedder, sample_rate, hop_samples, batch_size)
    out, owners, starts, kept_positions, durations, skipped, digests = [], [], [], [], [], [], []
    for i in range(len(paths)):
        if isinstance(results[i], str):
            skipped.append((i, results[i]))
            continue
        rows, track_starts, seconds, digest = results[i]
        owners.append(np.full(len(rows), len(kept_positions), np.int32))
        kept_positions.append(i)
        out.append(rows)
        starts.append(track_starts)
        durations.append(seconds)
        digests.append(digest)
    if not out:
        return (
            np.zeros((0, 0), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64), [], np.zeros(0), skipped, [],
        )
    return (
        np.concatenate(out), np.concatenate(owners), np.concatenate(starts), kept_positions,
        np.array(durations, np.float64), skipped, digests,
    )


def pcm_digest(audio):
    """SHA-256 of decoded audio (float32 mono at the index rate): the same audio under
    another name or path has the same digest (`nnfp index add` refuses it)."""
    return hashlib.sha256(np.ascontiguousarray(audio, np.float32).tobytes()).hexdigest()
