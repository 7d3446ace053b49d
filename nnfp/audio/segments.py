"""Cutting a waveform into fixed-length segments on a hop grid: the one segment count.

Training pairs, fingerprinting, streaming and evaluation all place segments at
`0, hop, 2 * hop, ...` and keep only full ones, so a waveform of `n_samples` has
`n_segments(n_samples, segment_samples, hop_samples)` of them.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "QUIET_DBFS",
    "fingerprint_segments",
    "n_segments", "quiet_segments", "segment_levels_db", "segment_starts",
    "segment_waveform",
]

# A segment whose varying part is quieter than this (RMS, dBFS: a full-scale square wave is
# 0 dB) is dead air: digital silence, dither, the tail of a fade, a room with nothing playing.
# The mel front end normalises every segment to its own maximum, so such a segment is
# fingerprinted like any loud one and its fingerprint means nothing; the catalogue stores it
# as a zero vector and queries and `nnfp monitor` leave it out.
QUIET_DBFS = -60.0


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



def segment_levels_db(windows):
    """(n, segment_samples) -> (n,) RMS level of each window's varying part, dBFS (-200 for silence)."""
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim != 2:
        raise ValueError(f"`windows` must have shape (n, segment_samples). Received: shape={windows.shape}")
    if not len(windows):
        return np.zeros(0)
    power = np.var(windows, axis=1, dtype=np.float64)
    return 10.0 * np.log10(np.maximum(power, 1e-20))


def quiet_segments(windows, threshold_db=QUIET_DBFS):
    """(n,) bool: which windows are dead air (`segment_levels_db` below `threshold_db`)."""
    return segment_levels_db(windows) < float(threshold_db)


def fingerprint_segments(embedder, windows, batch_size=256):
    """(n, segment_samples) windows -> (n, d) fingerprints; dead air (`quiet_segments`) -> zeros.

    Every fingerprint that reaches an index, a query or `nnfp monitor` is made here: a zero
    row scores 0 against everything, so silence in a track never matches quiet noise in a
    query, and a query's silent segments neither find nor confirm a place.
    """
    windows = np.asarray(windows, np.float32)
    fingerprints = np.array(embedder.fingerprint(windows, batch_size=batch_size), np.float32)
    fingerprints[quiet_segments(windows)] = 0.0
    return fingerprints
