"""nnfp: Keras-native neural audio fingerprinting.

A reimplementation of *Neural Audio Fingerprint for High-specific Audio Retrieval
based on Contrastive Learning* (Chang et al., ICASSP 2021) on Keras 3.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
