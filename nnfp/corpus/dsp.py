"""Signal helpers of the generated corpus: filters as gain curves, normalisation, wavetables.

NumPy only; shared by the music synthesiser (`synth`) and the noise generator (`noise`).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PEAK",
    "TABLE_SIZE",
    "butter_gain",
    "coloured_noise",
    "note_envelope",
    "fft_filter",
    "midi_to_hz",
    "normalise_peak",
    "normalise_rms",
    "peak_gain",
    "read_table",
    "smooth_random",
    "wavetable",
]

PEAK = 0.9
TABLE_SIZE = 2048


def midi_to_hz(midi):
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def butter_gain(freqs, low=None, high=None, order=2):
    gain = np.ones_like(freqs, dtype=np.float64)
    if low is not None:
        ratio = np.divide(low, freqs, out=np.full_like(gain, 1e6), where=freqs > 0)
        gain /= np.sqrt(1.0 + ratio ** (2 * order))
    if high is not None:
        gain /= np.sqrt(1.0 + (freqs / high) ** (2 * order))
    return gain


def peak_gain(freqs, centre, width, gain_db):
    return 10.0 ** (gain_db / 20.0 * np.exp(-0.5 * ((freqs - centre) / width) ** 2))


def fft_filter(x, sample_rate, gain_fn):
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    return np.fft.irfft(spectrum * gain_fn(freqs), len(x))


def normalise_rms(x):
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def normalise_peak(x, peak=PEAK):
    x = x - np.mean(x)
    return (x * (peak / (np.max(np.abs(x)) + 1e-12))).astype(np.float32)


def smooth_random(rng, n, sample_rate, rate_hz):
    # Cosine-interpolated random control signal: a slow, smooth modulator with unit variance.
    n_points = int(n / sample_rate * rate_hz) + 2
    values = rng.standard_normal(n_points)
    position = np.linspace(0.0, n_points - 1.001, n)
    index = position.astype(np.int64)
    frac = 0.5 - 0.5 * np.cos(np.pi * (position - index))
    return values[index] + frac * (values[index + 1] - values[index])


def coloured_noise(rng, n, exponent):
    # Power spectrum ~ 1/f**exponent: 0 white, 1 pink, 2 brown.
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = freqs[1] if len(freqs) > 1 else 1.0
    return normalise_rms(np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n))


def wavetable(amplitudes, phases=None):
    # One period of sum_k a_k cos(2 pi k x + phi_k), with a wrap-around sample for lookup.
    spectrum = np.zeros(TABLE_SIZE // 2 + 1, dtype=np.complex128)
    n_harmonics = min(len(amplitudes), TABLE_SIZE // 2 - 1)
    amplitudes = np.asarray(amplitudes[:n_harmonics], dtype=np.float64)
    if phases is None:
        phases = np.full(n_harmonics, -np.pi / 2.0)
    spectrum[1 : n_harmonics + 1] = amplitudes * np.exp(1j * phases[:n_harmonics])
    table = np.fft.irfft(spectrum * (TABLE_SIZE / 2.0), TABLE_SIZE)
    return np.append(table, table[0])


def read_table(table, phase):
    # phase in cycles; linear interpolation into a wrap-extended table.
    position = (phase % 1.0) * TABLE_SIZE
    index = position.astype(np.int64)
    frac = position - index
    return table[index] + frac * (table[index + 1] - table[index])


def note_envelope(n_hold, n_total, sample_rate, attack, decay, sustain):
    t = np.arange(n_total) / sample_rate
    env = sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / decay)
    n_attack = min(int(attack * sample_rate), n_total)
    env[:n_attack] *= np.linspace(0.0, 1.0, n_attack, endpoint=False)
    n_release = n_total - n_hold
    if n_release > 0:
        env[n_hold:] *= np.linspace(1.0, 0.0, n_release) ** 2
    return env

