"""Search settings shared by the catalogue operations and the command line.

Kept free of heavy imports so that `nnfp --help` and `nnfp train` can name them
without loading faiss or TensorFlow.
"""

__all__ = ["DEFAULT_K_PROBE", "DEFAULT_MIN_SCORE", "DEFAULT_PHASES", "INDEX_TYPES"]

INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw")  # faiss index kinds of `FingerprintDB.build`
DEFAULT_K_PROBE = 20  # faiss neighbours per query segment (the original `k_probe`)
# Used only when neither the index nor its model has a calibration (`nnfp index calibrate`).
DEFAULT_MIN_SCORE = 0.5
DEFAULT_PHASES = 2  # query phases per index hop (`Identifier(phases=...)`, `--phases`): benchmarks/phases.py
# measured 2 as accurate as 4 and 8 at every length, at half the cost (10 s search p50 17 ms)
