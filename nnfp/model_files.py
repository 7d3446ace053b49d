"""Where a model lives: run directories, `.keras` files, SavedModels and LiteRT folders.

No TensorFlow or Keras here: resolving a path must not start a deep-learning runtime (a
query answered with LiteRT never imports TensorFlow).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["litert_copy_path", "resolve_model_path"]


def resolve_model_path(path):
    """A run directory -> its `model.keras` (or last checkpoint); files, SavedModels and
    LiteRT folders (`model.tflite` + `spec.json`) as given."""
    path = Path(path)
    if path.is_dir() and not (path / "saved_model.pb").exists() and not (path / "model.tflite").exists():
        for candidate in (path / "model.keras", path / "checkpoints" / "best.keras", path / "checkpoints" / "last.keras"):
            if candidate.exists():
                return candidate
        raise FileNotFoundError(
            f"{path}: expected a run directory with model.keras or checkpoints/*.keras, "
            "a .keras file, an exported SavedModel directory or an exported LiteRT folder"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: model not found")
    return path


def litert_copy_path(model_path):
    """Where the LiteRT copy of a `.keras` model is looked for: `x.keras` -> `x.litert/`
    beside it (as `nnfp/weights/default.keras` -> `default.litert/`)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".litert")
