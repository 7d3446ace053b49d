"""Audio banks of the input pipeline: many clips in one int16 CPU variable, read as float windows.

The training tracks of `PairPipeline` and the noise, speech and impulse-response banks of the
augmentation layers are stored this way: int16 halves the memory of float32 (16-bit precision
is far below the noise floor of any augmentation), and a variable, not a constant, escapes
the 2 GB limit of serialised graphs.
"""

import numpy as np
import tensorflow as tf

from nnfp.audio.sources import INT16_SCALE

__all__ = ["check_clips", "cpu_variable", "gather_windows", "to_int16"]


def to_int16(audio):
    """Float audio in [-1, 1] as int16 PCM (rounded, clipped); int16 audio is returned as is."""
    if audio.dtype == np.int16:  # already PCM (a prepared cache): stored as is
        return audio
    return np.clip(np.round(audio * INT16_SCALE), -32768, 32767).astype(np.int16)


def cpu_variable(array):
    """A non-trainable `tf.Variable` on the CPU (not mirrored onto accelerators)."""
    with tf.device("/CPU:0"):
        return tf.Variable(array, trainable=False)


def gather_windows(bank, starts, length, floor=None, ceiling=None):
    """Gathers `bank[s:s+length]` of an int16 bank for every start: (n,) -> (n, length) float32.

    With `floor` ((n,) bank positions), what lies before a row's floor reads as silence (a
    window reaching back before the start of its track), and starts may be negative. With
    `ceiling`, what lies at or after a row's ceiling reads as silence (a window reaching past
    the end of its track), and windows may end past the bank.
    """
    grid = starts[:, None] + tf.range(length, dtype=starts.dtype)[None, :]  # (n, length)
    if floor is None and ceiling is None:
        return tf.cast(tf.gather(bank, grid), tf.float32) / INT16_SCALE
    inside = tf.ones_like(grid, tf.bool)
    if floor is not None:
        inside = tf.logical_and(inside, grid >= floor[:, None])
    if ceiling is not None:
        inside = tf.logical_and(inside, grid < ceiling[:, None])
    index = tf.clip_by_value(grid, 0, tf.cast(tf.shape(bank)[0], grid.dtype) - 1)
    return tf.cast(tf.gather(bank, index), tf.float32) / INT16_SCALE * tf.cast(inside, tf.float32)


def check_clips(name, clips):
    """Validated float32 copies of a list of 1-D clips (int16 clips are scaled to [-1, 1]).

    Raises:
        ValueError: an empty list, a clip that is not 1-D and non-empty, or non-finite values;
            the message names the argument (`name`) and the clip index.
    """
    if clips is None or len(clips) == 0:
        raise ValueError(f"{name} must be a non-empty list of 1-D arrays. Received: {name}={clips}")
    checked = []
    for i, x in enumerate(clips):
        x = np.asarray(x)
        x = x / np.float32(INT16_SCALE) if x.dtype == np.int16 else x.astype(np.float32, copy=False)
        if x.ndim != 1 or x.size == 0:
            raise ValueError(f"{name}[{i}] must be a non-empty 1-D array. Received shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{name}[{i}] contains NaN or Inf")
        checked.append(x)
    return checked
