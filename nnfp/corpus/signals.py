"""Generated out-of-catalogue audio of kinds a phone or a broadcast hears that are not music:
tones, telephone signalling, sweeps, mains hum, applause, single-instrument phrases, and the
background noises of `nnfp.corpus.noise`. The decision rule's calibration is validated on
kinds it was not fitted on (`nnfp.catalogue.calibration`), these among them.

>>> wave = make_signal("dtmf", seed=3, seconds=10.0)  # float32, 80000 samples, peak 0.9
"""

import numpy as np

from nnfp.corpus.dsp import normalise_peak
from nnfp.corpus.noise import make_noise

__all__ = ["GENERATED_KINDS", "make_signal"]

_NOISES = ("pink", "brown", "wind", "traffic", "rain", "babble", "clicks")
GENERATED_KINDS = ("tones", "dtmf", "ringback", "busy", "sweep", "hum", "applause", "instrument", *_NOISES)
_DTMF_ROWS, _DTMF_COLUMNS = (697, 770, 852, 941), (1209, 1336, 1477, 1633)


def _gated(times, on_s, off_s, phase=0.0):
    return ((times + phase) % (on_s + off_s)) < on_s


def _tones(rng, t, rate):
    # steady sines and chords, changing every 0.5-3 s (test tones, alarms, beeps)
    out = np.zeros_like(t)
    start = 0.0
    while start < t[-1]:
        length = rng.uniform(0.5, 3.0)
        mask = (t >= start) & (t < start + length)
        for f in rng.uniform(200, 3500, size=int(rng.integers(1, 4))):
            out[mask] += np.sin(2 * np.pi * f * t[mask] + rng.uniform(0, 2 * np.pi))
        start += length + rng.uniform(0, 0.5)
    return out


def _dtmf(rng, t, rate):
    out = np.zeros_like(t)
    start = rng.uniform(0, 0.3)
    while start < t[-1]:
        length = rng.uniform(0.06, 0.25)
        mask = (t >= start) & (t < start + length)
        low, high = rng.choice(_DTMF_ROWS), rng.choice(_DTMF_COLUMNS)
        out[mask] = np.sin(2 * np.pi * low * t[mask]) + np.sin(2 * np.pi * high * t[mask])
        start += length + rng.uniform(0.05, 0.4)
    return out


def _ringback(rng, t, rate):
    # North American 440 + 480 Hz 2 s on / 4 s off, or European 425 Hz 1 s on / 4 s off
    if rng.random() < 0.5:
        tone, gate = np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 480 * t), _gated(t, 2.0, 4.0, rng.uniform(0, 6))
    else:
        tone, gate = np.sin(2 * np.pi * 425 * t), _gated(t, 1.0, 4.0, rng.uniform(0, 5))
    return tone * gate


def _busy(rng, t, rate):
    pair = (480, 620) if rng.random() < 0.5 else (425, 425)
    tone = sum(np.sin(2 * np.pi * f * t) for f in pair)
    return tone * _gated(t, 0.5, 0.5, rng.uniform(0, 1))


def _sweep(rng, t, rate):
    # logarithmic sweeps between 50 Hz and 3.8 kHz, up or down, 1-8 s each
    period = rng.uniform(1.0, 8.0)
    low, high = 50.0, 3800.0
    position = (t % period) / period
    if rng.random() < 0.5:
        position = 1 - position
    phase = 2 * np.pi * np.cumsum(low * (high / low) ** position) / rate
    return np.sin(phase)


def _hum(rng, t, rate):
    base = 50.0 if rng.random() < 0.5 else 60.0
    weights = rng.uniform(0.1, 1.0, size=8) / np.arange(1, 9)
    out = sum(w * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3)) for k, w in enumerate(weights, 1))
    return out + 0.05 * rng.standard_normal(len(t))


def _applause(rng, t, rate):
    # many claps: short decaying noise bursts at a Poisson rate of 20-80 per second
    n = len(t)
    out = np.zeros(n)
    clap = int(0.02 * rate)
    envelope = np.exp(-np.arange(clap) / (0.004 * rate))
    for at in rng.integers(0, max(n - clap, 1), size=int(rng.uniform(20, 80) * n / rate)):
        out[at : at + clap] += rng.uniform(0.3, 1.0) * envelope * rng.standard_normal(clap)
    return out


def _instrument(rng, t, rate):
    # one instrument playing a random phrase: notes of one random harmonic spectrum with an
    # attack-decay envelope (a sample or a tuning phrase, not a song)
    weights = rng.uniform(0, 1, size=10) / np.arange(1, 11) ** rng.uniform(0.5, 2.0)
    decay = rng.uniform(0.1, 1.5)
    out = np.zeros(len(t))
    at = 0
    while at < len(t):
        n = int(rng.uniform(0.15, 1.2) * rate)
        f0 = 440.0 * 2 ** ((int(rng.integers(40, 84)) - 69) / 12)
        local = np.arange(n) / rate
        note = sum(w * np.sin(2 * np.pi * f0 * k * local) for k, w in enumerate(weights, 1) if f0 * k < rate / 2)
        envelope = np.minimum(local / 0.01, 1.0) * np.exp(-local / decay)
        out[at : at + n] += (note * envelope)[: len(t) - at]
        at += n + int(rng.uniform(0, 0.3) * rate)
    return out


_MAKERS = {"tones": _tones, "dtmf": _dtmf, "ringback": _ringback, "busy": _busy, "sweep": _sweep,
           "hum": _hum, "applause": _applause, "instrument": _instrument}


def make_signal(kind, seed, seconds, sample_rate=8000):
    """`seconds` of generated audio of `kind` (one of `GENERATED_KINDS`): float32, peak 0.9."""
    if kind not in GENERATED_KINDS:
        raise ValueError(f"`kind` must be one of {GENERATED_KINDS}. Received: kind={kind!r}")
    if not seconds > 0:
        raise ValueError(f"`seconds` must be positive. Received: seconds={seconds}")
    if kind in _NOISES:
        return make_noise(seed, seconds, sample_rate, kind=kind)
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return normalise_peak(_MAKERS[kind](rng, t, sample_rate).astype(np.float32))
