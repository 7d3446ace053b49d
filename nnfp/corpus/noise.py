"""Background noise for SNR augmentation: `make_noise(seed, seconds, kind=None)`.

Kinds: white/pink/brown, wind, traffic, rain, mains hum, babble, clicks, or a mixture of
several. The same seed gives the same samples.
"""

from __future__ import annotations

import numpy as np

from nnfp.corpus.dsp import (
    butter_gain,
    coloured_noise,
    fft_filter,
    normalise_peak,
    normalise_rms,
    read_table,
    smooth_random,
    wavetable,
)

__all__ = ["NOISE_KINDS", "make_noise"]

NOISE_KINDS = (
    "white",
    "pink",
    "brown",
    "wind",
    "traffic",
    "rain",
    "hum",
    "babble",
    "clicks",
    "mixture",
)
_VOWELS = (
    (270, 2290, 3010),
    (530, 1840, 2480),
    (730, 1090, 2440),
    (570, 840, 2410),
    (300, 870, 2240),
    (660, 1720, 2410),
    (490, 1350, 1690),
)



def _noise_wind(rng, n, sample_rate):
    base = coloured_noise(rng, n, 1.5)
    spectrum = np.fft.rfft(base)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    out = np.zeros(n)
    for low, high in ((40.0, 250.0), (250.0, 800.0), (800.0, 2500.0)):
        band = np.fft.irfft(spectrum * butter_gain(freqs, low, high, 2), n)
        gust = np.exp(
            rng.uniform(0.5, 1.2) * smooth_random(rng, n, sample_rate, rng.uniform(0.2, 1.0))
        )
        out += band * gust
    return out


def _noise_traffic(rng, n, sample_rate):
    seconds = n / sample_rate
    t = np.arange(n) / sample_rate
    rumble = fft_filter(
        coloured_noise(rng, n, 2.0),
        sample_rate,
        lambda f: butter_gain(f, 20.0, rng.uniform(150.0, 300.0)),
    )
    out = normalise_rms(rumble) * rng.uniform(0.3, 1.0)
    road = normalise_rms(
        fft_filter(rng.standard_normal(n), sample_rate, lambda f: butter_gain(f, 60.0, 1500.0))
    )
    engine_table = wavetable(1.0 / np.arange(1, 20) ** 1.2)
    for _ in range(max(1, rng.poisson(rng.uniform(0.1, 0.4) * seconds))):
        centre, width = rng.uniform(0.0, seconds), rng.uniform(1.0, 4.0)
        window = slice(
            max(0, int((centre - 3 * width) * sample_rate)),
            min(n, int((centre + 3 * width) * sample_rate)),
        )
        tw = t[window]
        envelope = rng.uniform(0.5, 2.0) * np.exp(-0.5 * ((tw - centre) / width) ** 2)
        # A passing engine: a harmonic drone whose pitch falls as it goes by (Doppler).
        freq = rng.uniform(25.0, 70.0) * (1.0 - 0.04 * np.tanh((tw - centre) / (0.3 * width)))
        engine = read_table(engine_table, np.cumsum(freq) / sample_rate)
        out[window] += envelope * (road[window] + rng.uniform(0.2, 0.8) * engine)
    return out


def _noise_rain(rng, n, sample_rate):
    seconds = n / sample_rate
    out = 0.3 * fft_filter(
        coloured_noise(rng, n, 1.0), sample_rate, lambda f: butter_gain(f, 500.0, None)
    )
    t = np.arange(int(0.02 * sample_rate)) / sample_rate
    for _ in range(3):
        n_drops = rng.poisson(rng.uniform(30.0, 250.0) * seconds)
        impulses = np.zeros(n)
        np.add.at(impulses, rng.integers(0, n, n_drops), rng.lognormal(0.0, 0.7, n_drops))
        freq = min(rng.uniform(1200.0, 3500.0), 0.45 * sample_rate)
        drop = np.sin(2.0 * np.pi * freq * (1.0 - 2.0 * t) * t) * np.exp(
            -t / rng.uniform(0.001, 0.004)
        )
        out += 0.3 * np.fft.irfft(np.fft.rfft(impulses) * np.fft.rfft(drop, n), n)
    return out


def _noise_hum(rng, n, sample_rate):
    mains = float(rng.choice([50.0, 60.0]))
    freq = mains * (1.0 + 0.0005 * smooth_random(rng, n, sample_rate, 0.5))
    phase = 2.0 * np.pi * np.cumsum(freq) / sample_rate
    out = np.zeros(n)
    decay = rng.uniform(0.5, 1.5)
    for k in range(1, int(min(1200.0, 0.45 * sample_rate) / mains) + 1):
        amplitude = rng.uniform(0.2, 1.0) * k**-decay * (1.5 if k % 2 == 1 else 1.0)
        out += amplitude * np.sin(k * phase + rng.uniform(0.0, 2.0 * np.pi))
    out *= 1.0 + 0.1 * smooth_random(rng, n, sample_rate, 0.3)
    return normalise_rms(out) + 10.0 ** (rng.uniform(-45.0, -25.0) / 20.0) * rng.standard_normal(n)


def _noise_babble(rng, n, sample_rate):
    out = np.zeros(n)
    for _ in range(int(rng.integers(3, 10))):
        f0 = rng.uniform(90.0, 240.0)
        freq = f0 * (1.0 + 0.1 * smooth_random(rng, n, sample_rate, 3.0))
        n_harmonics = max(1, int(0.45 * sample_rate / (1.2 * f0)))
        source = read_table(
            wavetable(np.arange(1, n_harmonics + 1) ** -1.0), np.cumsum(freq) / sample_rate
        )
        source += 0.1 * rng.standard_normal(n)
        formant_scale = 1.15 if f0 > 160.0 else 1.0
        talker = np.zeros(n)
        start = int(rng.integers(0, int(0.3 * sample_rate)))
        while start < n:
            length = int(rng.uniform(0.1, 0.3) * sample_rate)
            stop = min(start + length, n)
            if rng.random() > 0.2 and stop - start > 16:
                formants = np.array(_VOWELS[int(rng.integers(len(_VOWELS)))]) * formant_scale
                window = np.sin(np.pi * np.arange(stop - start) / (stop - start)) ** 1.5
                talker[start:stop] = window * fft_filter(
                    source[start:stop] * window,
                    sample_rate,
                    lambda f, formants=formants: sum(
                        g / (1.0 + ((f - c) / 60.0) ** 2)
                        for c, g in zip(formants, (1.0, 0.6, 0.3), strict=True)
                    ),
                )
            start = stop
        out += rng.uniform(0.3, 1.0) * normalise_rms(talker)
    return out


def _noise_clicks(rng, n, sample_rate):
    seconds = n / sample_rate
    crackle = rng.random() < 0.4
    n_clicks = max(
        1, rng.poisson((rng.uniform(20.0, 100.0) if crackle else rng.uniform(0.5, 12.0)) * seconds)
    )
    impulses = np.zeros(n)
    np.add.at(
        impulses,
        rng.integers(0, n, n_clicks),
        rng.lognormal(0.0, 0.8, n_clicks) * rng.choice([-1.0, 1.0], n_clicks),
    )
    t = np.arange(int(0.03 * sample_rate)) / sample_rate
    click = rng.standard_normal(len(t)) * np.exp(-t / rng.uniform(0.0005, 0.008))
    out = np.fft.irfft(np.fft.rfft(impulses) * np.fft.rfft(click, n), n)
    floor = (
        coloured_noise(rng, n, 1.0)
        * np.sqrt(np.mean(out**2))
        * 10.0 ** (rng.uniform(-35.0, -20.0) / 20.0)
    )
    return out + floor


def _noise_of_kind(rng, kind, n, sample_rate):
    if kind in ("white", "pink", "brown"):
        return coloured_noise(rng, n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    if kind == "mixture":
        parts = rng.choice(
            [k for k in NOISE_KINDS if k != "mixture"], size=int(rng.integers(2, 4)), replace=False
        )
        return sum(
            10.0 ** (rng.uniform(-15.0, 0.0) / 20.0)
            * normalise_rms(_noise_of_kind(rng, str(part), n, sample_rate))
            for part in parts
        )
    return {
        "wind": _noise_wind,
        "traffic": _noise_traffic,
        "rain": _noise_rain,
        "hum": _noise_hum,
        "babble": _noise_babble,
        "clicks": _noise_clicks,
    }[kind](rng, n, sample_rate)


def make_noise(
    seed: int, seconds: float, sample_rate: int = 8000, kind: str | None = None
) -> np.ndarray:
    """Background noise from `seed`: float32, shape (round(seconds * sample_rate),), peak 0.9.

    `kind` is one of `NOISE_KINDS`; `None` lets the seed choose it."""
    if not seconds > 0:
        raise ValueError(f"`seconds` must be positive. Received: seconds={seconds}")
    if kind is not None and kind not in NOISE_KINDS:
        raise ValueError(f"`kind` must be one of {NOISE_KINDS} or None. Received: kind={kind}")
    rng = np.random.default_rng(seed)
    chosen = str(rng.choice(NOISE_KINDS))
    n = int(round(seconds * sample_rate))
    return normalise_peak(_noise_of_kind(rng, kind or chosen, n, sample_rate))
