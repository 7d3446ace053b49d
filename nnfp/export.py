"""Export a trained fingerprinter as a TF SavedModel, and load any saved form for inference."""

import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

__all__ = ["export_saved_model", "load_fingerprinter", "resolve_model_path"]


def export_saved_model(model, out_dir, config=None):
    """Write `model` as a SavedModel taking (batch, segment_samples) float32 waveforms.

    The `serving_default` signature maps `waveforms` to `fingerprint`
    (batch, d) L2-normalised, with no augmentation. The resolved config, when
    given, is saved beside it as `config.yaml`. Written to a temporary folder and
    renamed, so `out_dir` is never left half-written.
    """
    import tensorflow as tf

    from nnfp.config import save_config

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec((None, model.segment_samples), tf.float32, name="waveforms")

    def serve(waveforms):
        return {"fingerprint": model(waveforms, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[spec])
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        archive.write_out(str(tmp), verbose=False)
        if config is not None:
            save_config(config, tmp / "config.yaml")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def resolve_model_path(path):
    """A run directory -> its `model.keras` (or last checkpoint); files and SavedModels as given."""
    path = Path(path)
    if path.is_dir() and not (path / "saved_model.pb").exists():
        for candidate in (path / "model.keras", path / "checkpoints" / "best.keras", path / "checkpoints" / "last.keras"):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(
            f"{path}: expected a run directory with model.keras or checkpoints/*.keras, "
            "a .keras file, or an exported SavedModel directory"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: model not found")
    return path


class _SavedModelFingerprinter:
    def __init__(self, path):
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(path))
        self._serve = self._loaded.signatures["serving_default"]
        self.segment_samples = int(self._serve.structured_input_signature[1]["waveforms"].shape[1])

    def fingerprint(self, waveforms, batch_size=256):
        import tensorflow as tf

        out = [
            self._serve(waveforms=tf.constant(waveforms[i : i + batch_size], tf.float32))["fingerprint"].numpy()
            for i in range(0, len(waveforms), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), "float32")


class _KerasFingerprinter:
    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self.segment_samples = model.segment_samples
        self._embed = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def fingerprint(self, waveforms, batch_size=256):
        out = [
            self._embed(np.asarray(waveforms[i : i + batch_size], "float32")).numpy()
            for i in range(0, len(waveforms), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.model.embedding_dim), "float32")


def load_fingerprinter(path):
    """Load a run directory, `.keras` file or SavedModel; returns an object with
    `.fingerprint(waveforms (n, segment_samples)) -> (n, d)` and `.segment_samples`."""
    import nnfp.model  # noqa: F401  (registers the serializable classes)

    path = resolve_model_path(path)
    if path.is_dir():
        return _SavedModelFingerprinter(path)
    return _KerasFingerprinter(keras.saving.load_model(path))
