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
