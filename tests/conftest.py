import atexit
import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Compiled XLA programs persist for this test session only (as `nnfp` keeps them across
# commands): tests that load the same model reuse them instead of compiling again.
_XLA_CACHE = tempfile.mkdtemp(prefix="nnfp-test-xla-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["NNFP_XLA_CACHE"] = _XLA_CACHE
os.environ["TF_XLA_FLAGS"] = (
    os.environ.get("TF_XLA_FLAGS", "") + f" --tf_xla_persistent_cache_directory={_XLA_CACHE}"
).strip()


import pytest  # noqa: E402  (after the environment above is set)

# The smallest fingerprinter the catalogue tests use (width 1/32, 16-d fingerprints): an untrained
# model is enough to index and find exact excerpts, and it loads and runs in a fraction of a second.
TINY_MODEL = ["encoder.width=0.03125", "projection.embedding_dim=16"]


@pytest.fixture(scope="session")
def tiny_model():
    """`save(path, seed)`: an untrained `TINY_MODEL` fingerprinter with weights drawn from `seed`,
    saved as a `.keras` file at `path`; returns the Keras model."""

    def save(path, seed):
        import keras

        from nnfp.config import load_config
        from nnfp.training import build_model

        keras.utils.set_random_seed(seed)
        model = build_model(load_config(None, TINY_MODEL))
        model.save(path)
        return model

    return save
