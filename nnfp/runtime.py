"""The inference runtime: any saved form of a fingerprinter (a `.keras` file, a SavedModel export,
a LiteRT folder) loaded for fingerprinting (`load_fingerprinter`), with the thread and batching
settings the fingerprinting commands run it with. `nnfp.export` writes those forms."""

import collections
import json
import zipfile
from pathlib import Path

import keras
import numpy as np

from nnfp.model_files import resolve_model_path

__all__ = [
    "CALL_ROWS",
    "ModelLoadError",
    "SAVED_MODEL_SPEC_FILE",
    "SAVED_MODEL_SPEC_FORMAT",
    "UntrustedModelError",
    "inference_workers",
    "load_fingerprinter",
    "use_inference_threads",
]


SAVED_MODEL_SPEC_FILE = "spec.json"
SAVED_MODEL_SPEC_FORMAT = "nnfp-savedmodel"


def _saved_model_rate(path):
    """The sample rate a SavedModel export takes: its `spec.json`, else the `frontend.sample_rate`
    of the config saved beside it (exports of older versions); None when it records neither."""
    path = Path(path)
    try:
        spec = json.loads((path / SAVED_MODEL_SPEC_FILE).read_text())
        if spec.get("format") == SAVED_MODEL_SPEC_FORMAT and int(spec["sample_rate"]) > 0:
            return int(spec["sample_rate"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    try:
        import yaml

        rate = int(yaml.safe_load((path / "config.yaml").read_text())["frontend"]["sample_rate"])
        return rate if rate > 0 else None
    except (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError):
        return None


# Rows per model call, and calls run at once (`_fingerprint_batches`). Small calls on every
# core at once beat one large call split over the cores (docs/defaults.md; the CLI also gives
# each op one thread, `use_inference_threads`).
CALL_ROWS = 16
# Every call has exactly that many rows (the last one zero-padded), so a process compiles or
# loads one XLA program: each input shape costs seconds to compile or to load from the CLI's
# disk cache (`nnfp.cli.xla_cache_directory`), far more than padding a short call costs.


def inference_workers():
    """Model calls run at once: one per core this process may use."""
    from nnfp.lite import usable_cores

    return usable_cores()


def use_inference_threads():
    """One TensorFlow thread per op (each concurrent model call then keeps one core busy).

    For processes that only fingerprint (the `nnfp` index, identify, monitor and evaluate
    commands), before TensorFlow starts; once it has started this changes nothing. Training
    keeps TensorFlow's default, every op split over all cores.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already running: its threads are fixed
        pass


_POOL = None


def _use_inference_threads_if_asked():
    # The CLI's fingerprinting commands ask for one thread per op (`nnfp.defaults`), applied
    # here, when TensorFlow is about to run: a command answered with LiteRT never starts it.
    from nnfp import defaults

    if defaults.INFERENCE_PROCESS:
        use_inference_threads()


def _pool():
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(inference_workers(), thread_name_prefix="nnfp-inference")
    return _POOL


def _fingerprint_batches(embed, waveforms, batch_size, d):
    """Runs `embed` over calls of `min(batch_size, CALL_ROWS)` rows, several at once.

    Every call has that one shape (the last one is zero-padded and the padding dropped);
    results come back in order and do not depend on how many run at once.
    """
    import tensorflow as tf

    waveforms = np.asarray(waveforms, np.float32)
    rows = max(1, min(int(batch_size), CALL_ROWS))

    def call(first):
        batch = waveforms[first : first + rows]
        n = len(batch)
        if n != rows:
            batch = np.concatenate([batch, np.zeros((rows - n, batch.shape[1]), np.float32)])
        return np.asarray(embed(tf.constant(batch)))[:n]

    starts = range(0, len(waveforms), rows)
    if len(starts) > 1 and inference_workers() > 1:
        out = list(_pool().map(call, starts))
    else:
        out = [call(first) for first in starts]
    return np.concatenate(out) if out else np.zeros((0, d), np.float32)


class _SavedModelFingerprinter:
    def __init__(self, path, jit_compile=True):
        import tensorflow as tf

        try:
            self._loaded = tf.saved_model.load(str(path))
            self._serve = self._loaded.signatures["serving_default"]
            self.segment_samples = int(self._serve.structured_input_signature[1]["waveforms"].shape[1])
            self.embedding_dim = int(self._serve.structured_outputs["fingerprint"].shape[-1])
        except Exception as error:  # a damaged or foreign SavedModel, whatever TF raises
            raise ModelLoadError(path, error) from None
        self.sample_rate = _saved_model_rate(path)  # None: an export that does not record it
        serve = self._serve
        self._embed = tf.function(lambda x: serve(waveforms=x)["fingerprint"], jit_compile=jit_compile)

    def fingerprint(self, waveforms, batch_size=256):
        return _fingerprint_batches(self._embed, waveforms, batch_size, self.embedding_dim)


class _KerasFingerprinter:
    """Fingerprints with a Keras model, compiled with XLA.

    Keras leaves XLA off on CPU-only machines; compiled, the default model runs its
    forward pass ~2x faster with fingerprints within 1e-6. Every call has the same
    number of rows (`CALL_ROWS`), so XLA compiles once.

    Args:
        model: a fingerprinter model (`segment_samples`, `embedding_dim`).
        jit_compile: compile the forward pass with XLA.
    """

    def __init__(self, model, jit_compile=True):
        import tensorflow as tf

        self.model = model
        self.jit_compile = jit_compile
        self.segment_samples = model.segment_samples
        self.embedding_dim = model.embedding_dim
        self.sample_rate = int(model.frontend.sample_rate)  # the rate its mel front end was built for
        self._embed = tf.function(lambda x: model(x, training=False), jit_compile=jit_compile)

    def fingerprint(self, waveforms, batch_size=256):
        return _fingerprint_batches(self._embed, waveforms, batch_size, self.embedding_dim)


def load_fingerprinter(path, jit_compile=True, trust_model=False):
    """Load a run directory, `.keras` file or SavedModel; returns an object with
    `.fingerprint(waveforms (n, segment_samples)) -> (n, d)` and `.segment_samples`.

    `jit_compile=True` runs the forward pass through XLA (same fingerprints, faster).

    A `.keras` file is the safe format: it is loaded in Keras safe mode, which refuses
    the Python code (lambdas) a file could carry. A SavedModel is a TensorFlow graph
    that may run arbitrary operations (read and write files, ...) when loaded or called,
    so it is loaded only with `trust_model=True` (`--trust-model`).

    Raises:
        UntrustedModelError: a SavedModel without `trust_model=True`.
        ModelLoadError: a damaged or foreign model file (the message names it).
    """
    import nnfp.model  # noqa: F401  (registers the serializable classes)

    path = resolve_model_path(path)
    from nnfp.lite import LiteFingerprinter, is_litert_model

    if is_litert_model(path):  # no TensorFlow needed
        return LiteFingerprinter(path)
    _use_inference_threads_if_asked()
    key = _loaded_key(path, jit_compile)
    if key is not None and key in _LOADED and (trust_model or not path.is_dir()):
        _LOADED.move_to_end(key)
        return _LOADED[key]
    embedder = _load_fingerprinter(path, jit_compile, trust_model)
    if key is not None:
        _LOADED[key] = embedder
        while len(_LOADED) > _MAX_LOADED:
            _LOADED.popitem(last=False)
    return embedder


# Fingerprinters loaded in this process, most recent last: loading a model and compiling its
# forward pass takes seconds, and one process (a Python session, a test run) often loads the
# same model many times (an index holds a copy of its model). A changed file is loaded again.
_LOADED = collections.OrderedDict()
_MAX_LOADED = 4


def _loaded_key(path, jit_compile):
    """A `.keras` file by its content (an index's copy of a model is the same model); a
    SavedModel folder by its path, size and modification time."""
    from nnfp.outputs import sha256_file

    try:
        if path.is_dir():
            stat = (path / "saved_model.pb").stat()
            return str(path.resolve()), stat.st_size, stat.st_mtime_ns, bool(jit_compile)
        return sha256_file(path), bool(jit_compile)
    except OSError:
        return None


def _load_fingerprinter(path, jit_compile, trust_model):
    if path.is_dir():
        if not trust_model:
            raise UntrustedModelError(
                f"{path} is a TensorFlow SavedModel, which can run arbitrary operations (read, "
                "write or send files) when it is loaded; load it only if you trust where it came "
                "from: pass --trust-model (trust_model=True), or use a .keras model, which loads "
                "in Keras safe mode"
            )
        return _SavedModelFingerprinter(path, jit_compile=jit_compile)
    if not zipfile.is_zipfile(path):  # keras would say "File not found" for an existing file
        raise ModelLoadError(path, "not a readable .keras archive (damaged or truncated zip file)")
    try:
        model = keras.saving.load_model(path, safe_mode=True)
    except Exception as error:  # keras says "File not found" for a damaged zip, among others
        raise ModelLoadError(path, error) from None
    return _KerasFingerprinter(model, jit_compile=jit_compile)


class UntrustedModelError(ValueError):
    """A model format that can run arbitrary code (a SavedModel) without `trust_model=True`."""


class ModelLoadError(ValueError):
    """A model file that exists but cannot be loaded (damaged, truncated, not a fingerprinter)."""

    def __init__(self, path, error):
        detail = error if isinstance(error, str) else " ".join(f"{type(error).__name__}: {error}".split())
        super().__init__(
            f"cannot load model {path}: {detail}; re-export it (`nnfp export`), or rebuild the "
            "index (`nnfp index build`) if it is an index's copy"
        )
