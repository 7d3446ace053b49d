"""The degradation maths shared by training pairs, validation pairs and evaluation queries.

Background noise mixed at an SNR (an energy ratio over the excerpt) and a room/microphone
impulse response applied by FFT convolution, energy re-normalised so loudness does not drift.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["apply_impulse_responses", "fft_convolve", "make_query", "mix_at_snr", "next_pow2"]


def mix_at_snr(signals, noise, snr_db):
    """Adds `noise` scaled so that 10*log10(P_signal / P_noise) == snr_db, row by row.

    signals, noise: (batch, samples); snr_db: (batch,). Silent rows give no NaN: the
    noise scale is then 0 and the signal passes unchanged.
    """
    signal_power = tf.reduce_mean(tf.square(signals), axis=-1, keepdims=True)  # (batch, 1)
    noise_power = tf.reduce_mean(tf.square(noise), axis=-1, keepdims=True)  # (batch, 1)
    target_noise_power = signal_power * tf.pow(10.0, -snr_db[:, None] / 10.0)
    scale = tf.sqrt(tf.math.divide_no_nan(target_noise_power, noise_power))  # (batch, 1)
    return signals + scale * noise


def next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def fft_convolve(signals, impulse_responses=None, ir_spectra=None, n_fft=None):
    """Linear convolution truncated to the signal length: `np.convolve(x, h)[:len(x)]`.

    signals: (batch, samples); impulse_responses: (batch, ir_samples), static last dims.
    Or `ir_spectra`: (batch, n_fft // 2 + 1) precomputed `rfft(h, [n_fft])` with
    `n_fft >= samples + ir_samples - 1`, which saves a third of the FFT work.
    """
    length = int(signals.shape[-1])
    if ir_spectra is None:
        n_fft = next_pow2(length + int(impulse_responses.shape[-1]) - 1)
        ir_spectra = tf.signal.rfft(impulse_responses, [n_fft])
    spectrum = tf.signal.rfft(signals, [n_fft]) * ir_spectra
    return tf.signal.irfft(spectrum, [n_fft])[..., :length]  # (batch, samples)


def apply_impulse_responses(signals, impulse_responses=None, ir_spectra=None, n_fft=None):
    """FFT convolution, then rescaled to the input energy so loudness does not drift."""
    wet = fft_convolve(signals, impulse_responses, ir_spectra, n_fft)
    dry_power = tf.reduce_mean(tf.square(signals), axis=-1, keepdims=True)
    wet_power = tf.reduce_mean(tf.square(wet), axis=-1, keepdims=True)
    return wet * tf.sqrt(tf.math.divide_no_nan(dry_power, wet_power))


def make_query(
    track,
    start_seconds,
    seconds,
    noise=None,
    impulse_response=None,
    snr_db=None,
    sample_rate=8000,
):
    """One degraded query excerpt (float32 numpy), with the training degradation maths.

    Takes `track[start:start+seconds]`, mixes `noise` (from its start, tiled if short) at
    `snr_db`, then convolves with `impulse_response` (energy re-normalised).
    """
    track = np.asarray(track, np.float32)
    start = int(round(start_seconds * sample_rate))
    length = int(round(seconds * sample_rate))
    if length < 1:
        raise ValueError(f"seconds must span at least one sample. Received: seconds={seconds}")
    if start < 0 or start + length > len(track):
        raise ValueError(
            f"Excerpt [{start_seconds}, {start_seconds + seconds}] s is outside the track "
            f"of {len(track) / sample_rate:.3f} s. Received: start_seconds={start_seconds}, "
            f"seconds={seconds}"
        )
    x = tf.constant(track[None, start : start + length])  # (1, length)
    if noise is not None:
        if snr_db is None:
            raise ValueError("snr_db is required when noise is given. Received: snr_db=None")
        noise = np.asarray(noise, np.float32)
        if noise.ndim != 1 or noise.size == 0:
            raise ValueError(f"noise must be a non-empty 1-D array. Received shape {noise.shape}")
        x = mix_at_snr(
            x, tf.constant(np.resize(noise, length)[None]), tf.constant([snr_db], tf.float32)
        )
    if impulse_response is not None:
        ir = np.asarray(impulse_response, np.float32)
        if ir.ndim != 1 or ir.size == 0:
            raise ValueError(
                f"impulse_response must be a non-empty 1-D array. Received shape {ir.shape}"
            )
        x = apply_impulse_responses(x, tf.constant(ir[None]))
    return x.numpy()[0]
