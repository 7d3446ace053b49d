"""Cutting a waveform into fixed-length segments on a hop grid: the one segment count.

Training pairs, fingerprinting, streaming and evaluation all place segments at
`0, hop, 2 * hop, ...` and keep only full ones, so a waveform of `n_samples` has
`n_segments(n_samples, segment_samples, hop_samples)` of them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["n_segments", "segment_starts", "segment_waveform"]


def _check(segment_samples, hop_samples):
    if segment_samples <= 0:
        raise ValueError(
            f"segment_samples must be > 0. Received: segment_samples={segment_samples}"
        )
    if hop_samples <= 0:
        raise ValueError(f"hop_samples must be > 0. Received: hop_samples={hop_samples}")


def n_segments(n_samples, segment_samples, hop_samples):
    """Number of full `segment_samples` windows at a `hop_samples` hop in `n_samples` samples."""
    _check(segment_samples, hop_samples)
    if n_samples < segment_samples:
        return 0
    return (int(n_samples) - int(segment_samples)) // int(hop_samples) + 1


def segment_starts(n_samples, segment_samples, hop_samples):
    """Start indices (int64) of every full `segment_samples` window at a `hop_samples` hop."""
    count = n_segments(n_samples, segment_samples, hop_samples)
    return np.arange(count, dtype=np.int64) * np.int64(hop_samples)


def segment_waveform(audio, segment_samples, hop_samples):
    """(n_samples,) -> (n_segments, segment_samples) read-only view of every full window."""
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < segment_samples:
        return np.zeros((0, segment_samples), np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(audio, segment_samples)
    return windows[::hop_samples]

