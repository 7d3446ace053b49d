"""The embedded default corpus: procedurally composed music, background noise and room IRs.

nnfp ships no audio. Its demo and tests run on a corpus the package generates itself,
deterministically from a seed, with NumPy only:

- `compose_track` writes a piece of music. Each seed picks its own tempo, metre, key and
  mode, swing, instrumentation (additive, FM, Karplus-Strong plucked string, filtered
  square/saw/pulse, detuned pads, organ, mallets, a synthesised drum kit) and a form of
  sections (intro, verse, chorus, bridge, breakdown) that repeat, as songs do. Tempo
  changes, key changes and mode changes happen at section boundaries; sections differ in
  loudness and density. A repeated section keeps its form and harmony but gets a new
  melody and accompaniment (as a second verse does): tracks share a style, which makes
  the corpus a fair test of a fingerprinter, while the offset of a query inside a track
  stays well defined.
- `make_noise` writes background noise of one of several kinds (white/pink/brown,
  wind, traffic, rain, mains hum, babble, clicks, or a mixture) for SNR augmentation.
- `make_impulse_response` writes a room + microphone impulse response: direct path,
  early reflections, a frequency-dependent exponential tail (RT60 0.1-0.8 s at 1 kHz)
  and a random microphone colouration (phone band, laptop, cheap mic, muffled, flat).
- `generate_corpus` writes all three as 16-bit WAV files plus a `manifest.json`, and
  returns at once when the directory already holds the same corpus.

The same seed always gives bit-identical audio; all randomness comes from
`numpy.random.default_rng(seed)`. Audio is float32 mono in [-1, 1], 8 kHz by default.

Example:

```python
paths = generate_corpus("~/.cache/nnfp/corpus", n_tracks=40, seed=0)
x = compose_track(seed=3, seconds=10.0)  # (80000,) float32
h = make_impulse_response(seed=3)  # (n,) float32, peak 1
```
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
import tempfile

import numpy as np
import soundfile as sf

__all__ = [
    "CORPUS_VERSION",
    "NOISE_KINDS",
    "CorpusPaths",
    "compose_track",
    "generate_corpus",
    "make_impulse_response",
    "make_noise",
]

# Bump whenever a generator changes its output, so cached corpora are rebuilt.
CORPUS_VERSION = "2"

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

_PEAK = 0.9
_TABLE_SIZE = 2048

_SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "pentatonic_major": (0, 2, 4, 7, 9),
    "pentatonic_minor": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
}
_PARALLEL_MODE = {
    "major": "minor",
    "minor": "major",
    "dorian": "mixolydian",
    "mixolydian": "dorian",
    "phrygian": "harmonic_minor",
    "lydian": "major",
    "harmonic_minor": "major",
    "pentatonic_major": "pentatonic_minor",
    "pentatonic_minor": "pentatonic_major",
    "blues": "mixolydian",
}
_PROGRESSIONS = (
    (0, 4, 5, 3),
    (0, 5, 3, 4),
    (0, 3, 4, 0),
    (5, 3, 0, 4),
    (0, 6, 5, 4),
    (1, 4, 0, 0),
    (0, 3, 0, 4),
    (0, 0, 3, 4),
    (3, 4, 2, 5),
    (0, 2, 3, 4),
    (0, 5, 1, 4),
    (0, 1, 3, 1),
)
_FORMS = (
    ("A", "B", "A", "B", "C", "B", "B"),
    ("A", "A", "B", "A", "A", "B", "C", "B"),
    ("A", "B", "B", "A", "C", "B"),
    ("A", "A", "B", "B", "D", "A", "B"),
    ("A", "B", "A", "D", "C", "B", "B"),
)
# Steps are sixteenth notes; patterns are (step, length in steps, chord-tone index).
_BASS_PATTERNS = (
    ((0, 16, 0),),
    ((0, 8, 0), (8, 8, 0)),
    tuple((2 * i, 2, 0) for i in range(8)),
    ((0, 6, 0), (6, 2, 0), (8, 6, 2), (14, 2, 3)),
    ((0, 3, 0), (3, 3, 0), (6, 4, 2), (10, 2, 0), (12, 4, 3)),
    ((0, 4, 0), (4, 4, 1), (8, 4, 2), (12, 4, 1)),
    ((0, 2, 0), (3, 1, 0), (6, 2, 3), (8, 2, 0), (11, 1, 2), (14, 2, 0)),
)
_DRUM_STYLES = {
    "rock": {"kick": (0, 8, 10), "snare": (4, 12), "hat": (0, 2, 4, 6, 8, 10, 12, 14)},
    "four": {"kick": (0, 4, 8, 12), "clap": (4, 12), "ohat": (2, 6, 10, 14), "hat": (1, 5, 9, 13)},
    "half": {"kick": (0, 6), "snare": (8,), "hat": (0, 2, 4, 6, 8, 10, 12, 14)},
    "break": {
        "kick": (0, 3, 10),
        "snare": (4, 12),
        "hat": tuple(range(16)),
        "shaker": (2, 6, 10, 14),
    },
    "shuffle": {"kick": (0, 8), "snare": (4, 12), "hat": (0, 3, 4, 7, 8, 11, 12, 15)},
    "latin": {
        "kick": (0, 6, 8, 14),
        "tom_hi": (3, 11),
        "shaker": tuple(range(16)),
        "clap": (4, 12),
    },
    "sparse": {"kick": (0,), "hat": (4, 8, 12)},
}
_WALTZ_STYLES = {
    "waltz": {"kick": (0,), "snare": (4, 8), "hat": (0, 2, 4, 6, 8, 10)},
    "waltz_soft": {"kick": (0, 6), "shaker": tuple(range(12)), "tom_lo": (8,)},
}
_VOWELS = (
    (270, 2290, 3010),
    (530, 1840, 2480),
    (730, 1090, 2440),
    (570, 840, 2410),
    (300, 870, 2240),
    (660, 1720, 2410),
    (490, 1350, 1690),
)


@dataclasses.dataclass(frozen=True)
class CorpusPaths:
    """Where `generate_corpus` put the corpus: `root` holds `manifest.json` and the
    `music/`, `noise/` and `ir/` folders of 16-bit mono WAV files."""

    root: pathlib.Path
    music_dir: pathlib.Path
    noise_dir: pathlib.Path
    ir_dir: pathlib.Path


# ---------------------------------------------------------------------------- DSP helpers


def _midi_to_hz(midi):
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def _butter_gain(freqs, low=None, high=None, order=2):
    gain = np.ones_like(freqs, dtype=np.float64)
    if low is not None:
        ratio = np.divide(low, freqs, out=np.full_like(gain, 1e6), where=freqs > 0)
        gain /= np.sqrt(1.0 + ratio ** (2 * order))
    if high is not None:
        gain /= np.sqrt(1.0 + (freqs / high) ** (2 * order))
    return gain


def _peak_gain(freqs, centre, width, gain_db):
    return 10.0 ** (gain_db / 20.0 * np.exp(-0.5 * ((freqs - centre) / width) ** 2))


def _fft_filter(x, sample_rate, gain_fn):
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
    return np.fft.irfft(spectrum * gain_fn(freqs), len(x))


def _normalise_rms(x):
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _normalise_peak(x, peak=_PEAK):
    x = x - np.mean(x)
    return (x * (peak / (np.max(np.abs(x)) + 1e-12))).astype(np.float32)


def _smooth_random(rng, n, sample_rate, rate_hz):
    # Cosine-interpolated random control signal: a slow, smooth modulator with unit variance.
    n_points = int(n / sample_rate * rate_hz) + 2
    values = rng.standard_normal(n_points)
    position = np.linspace(0.0, n_points - 1.001, n)
    index = position.astype(np.int64)
    frac = 0.5 - 0.5 * np.cos(np.pi * (position - index))
    return values[index] + frac * (values[index + 1] - values[index])


def _coloured_noise(rng, n, exponent):
    # Power spectrum ~ 1/f**exponent: 0 white, 1 pink, 2 brown.
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = freqs[1] if len(freqs) > 1 else 1.0
    return _normalise_rms(np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n))


def _wavetable(amplitudes, phases=None):
    # One period of sum_k a_k cos(2 pi k x + phi_k), with a wrap-around sample for lookup.
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=np.complex128)
    n_harmonics = min(len(amplitudes), _TABLE_SIZE // 2 - 1)
    amplitudes = np.asarray(amplitudes[:n_harmonics], dtype=np.float64)
    if phases is None:
        phases = np.full(n_harmonics, -np.pi / 2.0)
    spectrum[1 : n_harmonics + 1] = amplitudes * np.exp(1j * phases[:n_harmonics])
    table = np.fft.irfft(spectrum * (_TABLE_SIZE / 2.0), _TABLE_SIZE)
    return np.append(table, table[0])


def _read_table(table, phase):
    # phase in cycles; linear interpolation into a wrap-extended table.
    position = (phase % 1.0) * _TABLE_SIZE
    index = position.astype(np.int64)
    frac = position - index
    return table[index] + frac * (table[index + 1] - table[index])


def _envelope(n_hold, n_total, sample_rate, attack, decay, sustain):
    t = np.arange(n_total) / sample_rate
    env = sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / decay)
    n_attack = min(int(attack * sample_rate), n_total)
    env[:n_attack] *= np.linspace(0.0, 1.0, n_attack, endpoint=False)
    n_release = n_total - n_hold
    if n_release > 0:
        env[n_hold:] *= np.linspace(1.0, 0.0, n_release) ** 2
    return env


# ------------------------------------------------------------------------------ timbres


_ENVELOPE_RANGES = {
    "pad": ((0.08, 0.5), (0.3, 1.0), (0.6, 0.9), (0.2, 0.6)),
    "bass": ((0.002, 0.01), (0.1, 0.4), (0.3, 0.8), (0.03, 0.1)),
    "other": ((0.002, 0.04), (0.08, 0.6), (0.1, 0.7), (0.04, 0.25)),
}


def _random_instrument(rng, role):
    kinds = {
        "lead": ("additive", "fm", "pluck", "square", "saw", "pulse", "mallet", "organ"),
        "bass": ("saw", "square", "fm", "pluck", "additive", "pulse"),
        "pad": ("pad", "organ", "additive", "fm", "saw"),
        "arp": ("pluck", "mallet", "square", "fm", "pulse"),
    }[role]
    kind = str(rng.choice(kinds))
    spec = {"kind": kind, "role": role}
    # (low, high) of attack, decay, sustain and release, drawn in this order.
    envelope = _ENVELOPE_RANGES.get(role, _ENVELOPE_RANGES["other"])
    for name, (low, high) in zip(("attack", "decay", "sustain", "release"), envelope, strict=True):
        spec[name] = rng.uniform(low, high)
    if kind in ("additive", "square", "saw", "pulse", "organ", "pad"):
        spec["wave"] = {"pad": "saw"}.get(kind, kind)
        spec["rolloff"] = rng.uniform(0.8, 2.0)
        spec["jitter"] = rng.uniform(0.3, 1.0, 256)
        spec["duty"] = rng.uniform(0.1, 0.4)
        spec["drawbars"] = rng.uniform(0.0, 1.0, 6) * np.array([1.0, 1.0, 0.8, 0.6, 0.4, 0.3])
        spec["cutoff_harmonics"] = (
            rng.uniform(3.0, 14.0) if role != "bass" else rng.uniform(2.0, 8.0)
        )
        spec["sweep"] = rng.uniform(0.15, 0.9) if kind != "organ" else 1.0
        spec["sweep_time"] = rng.uniform(0.05, 0.5)
        spec["resonance_db"] = rng.uniform(0.0, 9.0)
        spec["unison"] = 3 if kind == "pad" else int(rng.choice([1, 1, 2]))
        spec["detune_cents"] = rng.uniform(4.0, 14.0)
    elif kind == "fm":
        spec["ratio"] = float(rng.choice([0.5, 1.0, 1.0, 2.0, 3.0, 1.414, 3.5, 4.0]))
        spec["index_start"] = rng.uniform(1.0, 6.0)
        spec["index_end"] = rng.uniform(0.1, 1.5)
        spec["index_time"] = rng.uniform(0.05, 0.6)
    elif kind == "pluck":
        spec["t60"] = rng.uniform(0.4, 3.0) if role != "bass" else rng.uniform(0.3, 1.5)
        spec["damping"] = rng.uniform(0.15, 0.5)
        spec["brightness"] = rng.uniform(0.2, 1.0)
    elif kind == "mallet":
        spec["partials"] = (
            (1.0, 3.93, 9.54),
            (1.0, 4.0, 10.0),
            (1.0, 2.76, 5.40, 8.93),
            (0.5, 1.0, 1.19, 1.5, 2.0, 2.74, 3.0),
        )[int(rng.integers(4))]
        spec["ring"] = rng.uniform(0.2, 1.5)
    spec["vibrato_hz"] = rng.uniform(4.0, 6.5)
    spec["vibrato_depth"] = rng.uniform(0.0, 0.006) if role == "lead" else 0.0
    return spec


def _harmonic_amplitudes(spec, k):
    wave = spec["wave"]
    if wave == "saw":
        return 1.0 / k
    if wave == "square":
        return np.where(k % 2 == 1, 1.0 / k, 0.0)
    if wave == "pulse":
        return np.abs(np.sin(np.pi * k * spec["duty"])) / k
    if wave == "organ":
        amplitudes = np.zeros(len(k))
        for ratio, weight in zip((1, 2, 3, 4, 6, 8), spec["drawbars"], strict=True):
            if ratio <= len(k):
                amplitudes[ratio - 1] += weight
        amplitudes[0] += 0.2
        return amplitudes
    return k ** -spec["rolloff"] * spec["jitter"][: len(k)]


def _render_wavetable(spec, f0, n_hold, n_total, sample_rate):
    unison = spec["unison"]
    spread = 2.0 ** (spec["detune_cents"] / 1200.0) if unison > 1 else 1.0
    n_harmonics = int(max(1, min(0.45 * sample_rate / (f0 * spread), 256)))
    k = np.arange(1, n_harmonics + 1, dtype=np.float64)
    base = _harmonic_amplitudes(spec, k)
    cutoff = spec["cutoff_harmonics"] * f0
    resonance = _peak_gain(k * f0, cutoff, 0.2 * cutoff, spec["resonance_db"])
    bright = _wavetable(base * _butter_gain(k * f0, high=cutoff) * resonance)
    scale = 1.0 / (np.max(np.abs(bright)) + 1e-9)
    t = np.arange(n_total) / sample_rate
    sweep = spec["sweep"]
    dark = None
    if sweep < 1.0:
        dark_cut = cutoff * sweep
        dark = _wavetable(
            base
            * _butter_gain(k * f0, high=dark_cut)
            * _peak_gain(k * f0, dark_cut, 0.2 * dark_cut, spec["resonance_db"])
        )
        mix = np.exp(-t / spec["sweep_time"])
    detunes = np.linspace(-1.0, 1.0, unison) if unison > 1 else np.zeros(1)
    out = np.zeros(n_total)
    for i, detune in enumerate(detunes):
        freq = f0 * spread**detune
        phase = i / unison + freq * t
        if spec["vibrato_depth"] > 0:
            phase += (
                spec["vibrato_depth"]
                * freq
                / spec["vibrato_hz"]
                * np.sin(2.0 * np.pi * spec["vibrato_hz"] * t)
                * np.minimum(t / 0.3, 1.0)
            )
        voice = _read_table(bright, phase)
        if dark is not None:
            dark_voice = _read_table(dark, phase)
            voice = dark_voice + (voice - dark_voice) * mix
        out += voice
    return out * (scale / np.sqrt(unison))


def _render_fm(spec, f0, n_total, sample_rate):
    t = np.arange(n_total) / sample_rate
    modulator = spec["ratio"] * f0
    # Keep Carson's bandwidth under Nyquist so high notes do not alias into mush.
    index_cap = max(0.2, (0.45 * sample_rate - f0) / modulator - 1.0)
    start, end = min(spec["index_start"], index_cap), min(spec["index_end"], index_cap)
    index = end + (start - end) * np.exp(-t / spec["index_time"])
    return np.sin(2.0 * np.pi * f0 * t + index * np.sin(2.0 * np.pi * modulator * t))


def _render_pluck(spec, f0, n_total, sample_rate, rng):
    # Karplus-Strong evaluated in the frequency domain: excitation times the loop's
    # transfer function 1 / (1 - g z^-D (1 - p + p z^-1)), exact for fractional delays.
    n_fft = 1 << int(np.ceil(np.log2(n_total + 16)))
    period = sample_rate / f0
    burst = rng.uniform(-1.0, 1.0, max(2, int(round(period))))
    burst = spec["brightness"] * burst + (1.0 - spec["brightness"]) * np.convolve(
        burst, [0.5, 0.5], "same"
    )
    damping = spec["damping"]
    loop_gain = min(
        10.0 ** (-3.0 * period / (spec["t60"] * sample_rate)), 10.0 ** (-2.5 * period / n_fft)
    )
    omega = 2.0 * np.pi * np.arange(n_fft // 2 + 1) / n_fft
    loop = (
        loop_gain
        * np.exp(-1j * omega * (period - damping))
        * (1.0 - damping + damping * np.exp(-1j * omega))
    )
    out = np.fft.irfft(np.fft.rfft(burst, n_fft) / (1.0 - loop), n_fft)[:n_total]
    return out / (np.max(np.abs(out)) + 1e-9)


def _render_mallet(spec, f0, n_total, sample_rate):
    t = np.arange(n_total) / sample_rate
    out = np.zeros(n_total)
    for i, ratio in enumerate(spec["partials"]):
        freq = ratio * f0
        if freq >= 0.48 * sample_rate:
            continue
        out += (
            np.sin(2.0 * np.pi * freq * t)
            * np.exp(-t * ratio**0.8 / spec["ring"])
            / (1.0 + 0.6 * i)
        )
    return out


def _render_note(spec, midi, n_hold, sample_rate, rng):
    f0 = float(_midi_to_hz(midi))
    n_total = n_hold + int(spec["release"] * sample_rate)
    kind = spec["kind"]
    if kind == "pluck":
        wave = _render_pluck(spec, f0, n_total, sample_rate, rng)
        env = _envelope(n_hold, n_total, sample_rate, 0.0, 1.0, 1.0)
    elif kind == "mallet":
        wave = _render_mallet(spec, f0, n_total, sample_rate)
        env = _envelope(n_hold, n_total, sample_rate, 0.001, 1.0, 1.0)
    else:
        if kind == "fm":
            wave = _render_fm(spec, f0, n_total, sample_rate)
        else:
            wave = _render_wavetable(spec, f0, n_hold, n_total, sample_rate)
        env = _envelope(
            n_hold, n_total, sample_rate, spec["attack"], spec["decay"], spec["sustain"]
        )
    return wave * env


def _make_drum_kit(rng, sample_rate):
    n = int(0.6 * sample_rate)
    t = np.arange(n) / sample_rate
    nyquist = sample_rate / 2.0

    def band_noise(low, high):
        return _normalise_rms(
            _fft_filter(
                rng.standard_normal(n), sample_rate, lambda f: _butter_gain(f, low, high, 3)
            )
        )

    kit = {}
    f_end, f_start = rng.uniform(40.0, 65.0), rng.uniform(110.0, 260.0)
    freq = f_end + (f_start - f_end) * np.exp(-t / rng.uniform(0.012, 0.05))
    kick = np.sin(2.0 * np.pi * np.cumsum(freq) / sample_rate) * np.exp(-t / rng.uniform(0.08, 0.3))
    kick += rng.uniform(0.1, 0.5) * rng.standard_normal(n) * np.exp(-t / 0.002)
    kit["kick"] = np.tanh(rng.uniform(1.0, 3.0) * kick)

    tone = np.sin(2.0 * np.pi * rng.uniform(150.0, 260.0) * t) * np.exp(
        -t / rng.uniform(0.02, 0.06)
    )
    rattle = band_noise(
        rng.uniform(600.0, 1500.0), min(rng.uniform(2800.0, 3900.0), 0.49 * sample_rate)
    )
    kit["snare"] = rng.uniform(0.3, 0.8) * tone + 0.35 * rattle * np.exp(
        -t / rng.uniform(0.05, 0.18)
    )

    bursts = sum(
        np.exp(-np.maximum(t - d, 0.0) / 0.004) * (t >= d) for d in (0.0, 0.009, 0.019, 0.03)
    )
    clap_env = 0.6 * bursts + np.exp(-np.maximum(t - 0.03, 0.0) / rng.uniform(0.05, 0.12)) * (
        t >= 0.03
    )
    kit["clap"] = (
        0.3 * band_noise(rng.uniform(800.0, 1200.0), rng.uniform(2000.0, 3000.0)) * clap_env
    )

    hat = band_noise(min(rng.uniform(2400.0, 3200.0), 0.8 * nyquist), None)
    kit["hat"] = 0.3 * hat * np.exp(-t / rng.uniform(0.012, 0.045))
    kit["ohat"] = 0.25 * hat * np.exp(-t / rng.uniform(0.12, 0.3))
    kit["shaker"] = 0.15 * band_noise(1800.0, None) * np.minimum(t / 0.01, 1.0) * np.exp(-t / 0.03)
    for name, (low, high) in (("tom_lo", (80.0, 130.0)), ("tom_hi", (140.0, 240.0))):
        base = rng.uniform(low, high)
        freq = base * (1.0 + 0.5 * np.exp(-t / 0.03))
        kit[name] = (
            0.7
            * np.sin(2.0 * np.pi * np.cumsum(freq) / sample_rate)
            * np.exp(-t / rng.uniform(0.1, 0.25))
        )
    for name, sound in kit.items():
        # Trim the inaudible tail to keep the mixing cheap.
        loud = np.nonzero(np.abs(sound) > 1e-3 * np.max(np.abs(sound)))[0]
        kit[name] = sound[: loud[-1] + 1]
    return kit


# ------------------------------------------------------------------------------- music


def _chord_tone(root, index, scale_len):
    # Chord tones by stacking thirds in the scale: 0 root, 1 third, 2 fifth, 3 octave.
    return root + (0, 2, 4, scale_len)[index]


def _degree_to_midi(degree, scale, tonic):
    octave, index = divmod(int(degree), len(scale))
    return tonic + 12 * octave + scale[index]


def _snap_to_chord(degree, root, scale_len):
    for candidate in (degree, degree - 1, degree + 1):
        if (candidate - root) % scale_len in (0, 2, 4):
            return candidate
    return degree


def _make_melody(rng, progression, bars, steps_per_bar, scale_len, density):
    motif_bars = 1 if bars <= 2 or rng.random() < 0.4 else 2
    lengths = np.array([1, 2, 3, 4, 6, 8])
    weights = np.array([0.5 * density, 1.5 * density, 0.6, 1.2, 0.5, 0.4 / density])
    rhythm = []
    for bar in range(motif_bars):
        step = 0
        while step < steps_per_bar:
            length = int(min(rng.choice(lengths, p=weights / weights.sum()), steps_per_bar - step))
            if rng.random() > 0.15 or step == 0:
                rhythm.append((bar * steps_per_bar + step, length))
            step += length
    contour = np.clip(
        np.cumsum(rng.choice([-3, -2, -1, -1, 0, 1, 1, 2, 3], size=len(rhythm)))
        + rng.integers(0, 5),
        -3,
        scale_len + 4,
    )
    follow_chords = rng.random() < 0.6
    notes = []
    for start_bar in range(0, bars, motif_bars):
        variant = (start_bar // motif_bars) % 2 == 1
        for (step, length), offset in zip(rhythm, contour, strict=True):
            bar = start_bar + step // steps_per_bar
            if bar >= bars:
                continue
            root = progression[bar]
            degree = int(offset) + (root if follow_chords else 0)
            if variant and rng.random() < 0.3:
                degree += int(rng.choice([-2, -1, 1, 2]))
            if step % 4 == 0:
                degree = _snap_to_chord(degree, root, scale_len)
            notes.append((start_bar * steps_per_bar + step, length, degree))
    if notes:  # end the phrase on the chord root, held to the bar line
        step, _, _ = notes[-1]
        notes[-1] = (
            step,
            bars * steps_per_bar - step,
            progression[-1] + scale_len * (notes[-1][2] > scale_len),
        )
    return notes


def _make_drums(rng, style, steps_per_bar, energy):
    pattern = {}
    for name, steps in style.items():
        velocities = np.zeros(steps_per_bar)
        for step in steps:
            if step < steps_per_bar:
                velocities[step] = (
                    rng.uniform(0.7, 1.0) if step % 4 == 0 else rng.uniform(0.45, 0.85)
                )
        # Drop and add a few hits so two tracks with the same style still differ.
        velocities[rng.random(steps_per_bar) < 0.08] = 0.0
        extra = (rng.random(steps_per_bar) < 0.04 * energy) & (velocities == 0)
        velocities[extra] = rng.uniform(0.3, 0.6, int(extra.sum()))
        pattern[name] = velocities
    return pattern


def _make_section(rng, name, song, parent=None):
    steps_per_bar = song["steps_per_bar"]
    scale_len = len(_SCALES[song["scale"]])
    bars = {"intro": int(rng.choice([2, 4])), "C": int(rng.choice([2, 4])), "D": 2}.get(
        name, int(rng.choice([4, 4, 8]))
    )
    if parent is not None:
        progression = list(parent["progression"])
    else:
        progression = list(_PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))])
        progression = [d % scale_len if scale_len < 7 else d for d in progression]
        if rng.random() < 0.3:
            progression = progression[:2] * 2
    progression = (progression * 4)[:bars] if bars >= len(progression) else progression[:bars]
    if bars == 8 and rng.random() < 0.5:
        progression = [d for d in progression[:4] for _ in (0, 1)]
    energy = {
        "intro": 0.45,
        "A": rng.uniform(0.55, 0.8),
        "B": 1.0,
        "C": rng.uniform(0.4, 0.7),
        "D": 0.75,
    }[name]
    styles = _WALTZ_STYLES if steps_per_bar == 12 else _DRUM_STYLES
    style_name = song["drum_style"] if name in ("A", "B") else str(rng.choice(list(styles)))
    layers = {
        "intro": {"chords"} | ({"drums"} if rng.random() < 0.4 else set()),
        "A": {"lead", "bass", "chords", "drums"},
        "B": {"lead", "bass", "chords", "drums", "arp"},
        "C": {"lead", "chords"}
        | ({"bass"} if rng.random() < 0.6 else set())
        | ({"drums"} if rng.random() < 0.5 else set()),
        "D": {"bass", "drums"} | ({"arp"} if rng.random() < 0.5 else set()),
    }[name]
    if name == "A" and rng.random() < 0.3:
        layers.discard("drums" if rng.random() < 0.5 else "chords")
    return {
        "name": name,
        "bars": bars,
        "progression": progression,
        "sevenths": rng.random() < 0.3,
        "scale": _PARALLEL_MODE[song["scale"]]
        if name == "C" and rng.random() < 0.4
        else song["scale"],
        "melody": _make_melody(
            rng,
            progression,
            bars,
            steps_per_bar,
            scale_len,
            rng.uniform(0.6, 1.6) * (1.2 if name == "B" else 1.0),
        ),
        "lead": song["leads"][1] if name == "B" else song["leads"][0],
        "lead_octave": 12 if name == "B" and rng.random() < 0.4 else 0,
        "bass_pattern": _BASS_PATTERNS[int(rng.integers(len(_BASS_PATTERNS)))],
        "chord_style": str(rng.choice(["pad", "pad", "stab", "strum"])),
        "stab_steps": tuple(int(s) for s in np.nonzero(rng.random(steps_per_bar) < 0.3)[0]) or (0,),
        "arp_rate": int(rng.choice([1, 2, 2])),
        "drums": _make_drums(rng, styles[style_name], steps_per_bar, energy),
        "fill": rng.random() < 0.5,
        "energy": energy,
        "crescendo": rng.uniform(0.0, 0.4) if name in ("A", "D") else 0.0,
        "layers": layers,
    }


def _vary_section(rng, section, song):
    """A later occurrence of a section: same form and harmony, new melody and accompaniment.

    Real songs rarely repeat a section sample for sample (new lyrics, fills, voicings);
    varying repeats keeps the offset of a query inside a track well defined.
    """
    steps_per_bar = song["steps_per_bar"]
    scale_len = len(_SCALES[section["scale"]])
    varied = dict(section)
    varied["melody"] = _make_melody(
        rng, section["progression"], section["bars"], steps_per_bar, scale_len, rng.uniform(0.6, 1.6)
    )
    varied["bass_pattern"] = _BASS_PATTERNS[int(rng.integers(len(_BASS_PATTERNS)))]
    varied["chord_style"] = str(rng.choice(["pad", "stab", "strum"]))
    varied["stab_steps"] = tuple(int(s) for s in np.nonzero(rng.random(steps_per_bar) < 0.3)[0]) or (0,)
    varied["arp_rate"] = int(rng.choice([1, 2]))
    varied["lead_octave"] = int(rng.choice([0, 12])) if section["lead_octave"] == 0 else 0
    varied["layers"] = set(section["layers"]) ^ {"arp"} if rng.random() < 0.5 else set(section["layers"])
    return varied


def _plan_song(rng):
    steps_per_bar = 12 if rng.random() < 0.2 else 16
    scale = str(
        rng.choice(list(_SCALES), p=np.array([4, 4, 1.5, 1.5, 1, 1, 1, 1.5, 1.5, 1]) / 18.0)
    )
    styles = _WALTZ_STYLES if steps_per_bar == 12 else _DRUM_STYLES
    song = {
        "tempo": rng.uniform(72.0, 165.0),
        "key": int(rng.integers(12)),
        "scale": scale,
        "steps_per_bar": steps_per_bar,
        "swing": rng.uniform(0.1, 0.33) if rng.random() < 0.3 else 0.0,
        "drum_style": str(rng.choice([s for s in styles if s != "sparse"])),
        "leads": [_random_instrument(rng, "lead") for _ in range(2)],
        "bass": _random_instrument(rng, "bass"),
        "pad": _random_instrument(rng, "pad"),
        "strum": _random_instrument(rng, "arp"),
        "arp": _random_instrument(rng, "arp"),
        "kit": None,
        "gains": {
            stem: base * 10.0 ** (rng.uniform(-4.0, 4.0) / 20.0)
            for stem, base in (
                ("lead", 0.45),
                ("bass", 0.5),
                ("chords", 0.16),
                ("arp", 0.18),
                ("drums", 0.75),
            )
        },
    }
    if rng.random() < 0.5:
        song["leads"][1] = song["leads"][0]
    form = list(_FORMS[int(rng.integers(len(_FORMS)))])
    if rng.random() < 0.6:
        form.insert(0, "intro")
    song["form"] = form
    # Key and tempo changes at section boundaries, early enough to land inside ~30 s tracks.
    song["key_change_at"] = int(rng.integers(2, 6)) if rng.random() < 0.55 else 10**9
    song["key_change"] = int(rng.choice([1, 2, 3, -2, 5, -5, 7]))
    song["tempo_change_at"] = int(rng.integers(1, 5)) if rng.random() < 0.5 else 10**9
    song["tempo_change"] = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.08, 0.25))
    sections = {}
    for name in ("intro", "A", "B", "C", "D"):
        sections[name] = _make_section(
            rng, name, song, parent=sections.get("A") if name == "intro" else None
        )
    song["sections"] = sections
    return song


def _voice(chord_degrees, scale, tonic, low):
    # Closed voicing folded into one octave above `low`, so chords move smoothly.
    notes = []
    for degree in chord_degrees:
        midi = _degree_to_midi(degree, scale, tonic)
        notes.append(low + (midi - low) % 12)
    return sorted(set(notes))


def _render_section(out, song, section, start_s, tempo, key, sample_rate, rng, cache):
    steps_per_bar = song["steps_per_bar"]
    step_s = 60.0 / tempo / 4.0
    scale = _SCALES[section["scale"]]
    scale_len = len(scale)
    lead_tonic = 60 + key % 12 + section["lead_octave"] - (12 if key % 12 > 7 else 0)
    bass_tonic = 36 + key % 12 - (12 if key % 12 > 7 else 0)
    chord_tonic = 60 + key % 12
    total_steps = section["bars"] * steps_per_bar
    gains = song["gains"]
    energy = section["energy"]

    def when(step):
        # Swing delays the off-beat eighth notes; a little timing jitter humanises.
        swing = song["swing"] * 2.0 * step_s if step % 4 == 2 else 0.0
        return start_s + step * step_s + swing + rng.normal(0.0, 0.003)

    def dynamics(step):
        return energy * (1.0 + section["crescendo"] * step / total_steps)

    def add(spec, midi, start, length_steps, velocity):
        n_hold = max(int(length_steps * step_s * sample_rate), 1)
        key_ = (id(spec), int(midi), n_hold)
        if key_ not in cache:
            cache[key_] = _render_note(spec, midi, n_hold, sample_rate, rng)
        _mix(out, cache[key_], start, velocity, sample_rate)

    layers = section["layers"]
    if "lead" in layers:
        for step, length, degree in section["melody"]:
            midi = _degree_to_midi(degree, scale, lead_tonic)
            velocity = gains["lead"] * dynamics(step) * rng.uniform(0.8, 1.0)
            add(section["lead"], midi, when(step), length * 0.9, velocity)
    for bar, root in enumerate(section["progression"]):
        bar_step = bar * steps_per_bar
        n_tones = 4 if section["sevenths"] else 3
        chord = [root + 2 * i for i in range(n_tones)]
        if "bass" in layers:
            for step, length, tone in section["bass_pattern"]:
                if step >= steps_per_bar:
                    continue
                length = min(length, steps_per_bar - step)
                midi = _degree_to_midi(_chord_tone(root, tone, scale_len), scale, bass_tonic)
                velocity = gains["bass"] * dynamics(bar_step + step) * rng.uniform(0.85, 1.0)
                add(song["bass"], midi, when(bar_step + step), length * 0.95, velocity)
        if "chords" in layers:
            voicing = _voice(chord, scale, chord_tonic, 53)
            style = section["chord_style"]
            if style == "pad":
                for midi in voicing:
                    add(
                        song["pad"],
                        midi,
                        when(bar_step),
                        steps_per_bar,
                        gains["chords"] * dynamics(bar_step),
                    )
            elif style == "stab":
                for step in section["stab_steps"]:
                    for midi in voicing:
                        add(
                            song["pad"],
                            midi,
                            when(bar_step + step),
                            1.5,
                            1.3 * gains["chords"] * dynamics(bar_step + step),
                        )
            else:
                for half in range(0, steps_per_bar, steps_per_bar // 2):
                    for i, midi in enumerate(voicing):
                        start = when(bar_step + half) + 0.012 * i
                        add(
                            song["strum"],
                            midi,
                            start,
                            steps_per_bar // 2,
                            1.5 * gains["chords"] * dynamics(bar_step),
                        )
        if "arp" in layers:
            arp_notes = _voice(chord, scale, chord_tonic, 65)
            arp_notes = arp_notes + [m + 12 for m in arp_notes]
            rate = section["arp_rate"]
            for i, step in enumerate(range(0, steps_per_bar, rate)):
                midi = arp_notes[i % len(arp_notes)]
                add(
                    song["arp"],
                    midi,
                    when(bar_step + step),
                    rate,
                    gains["arp"] * dynamics(bar_step + step),
                )
        if "drums" in layers:
            fill = section["fill"] and bar == section["bars"] - 1
            for name, velocities in section["drums"].items():
                for step in np.nonzero(velocities)[0]:
                    if fill and step >= steps_per_bar - 4:
                        continue
                    velocity = gains["drums"] * dynamics(bar_step + step) * velocities[step]
                    _mix(out, song["kit"][name], when(bar_step + step), velocity, sample_rate)
            if fill:
                for i, step in enumerate(range(steps_per_bar - 4, steps_per_bar)):
                    drum = ("snare", "tom_hi", "snare", "tom_lo")[i]
                    _mix(
                        out,
                        song["kit"][drum],
                        when(bar_step + step),
                        gains["drums"] * (0.5 + 0.15 * i),
                        sample_rate,
                    )
    return start_s + total_steps * step_s


def _mix(out, wave, start_s, gain, sample_rate):
    start = max(int(round(start_s * sample_rate)), 0)
    stop = min(start + len(wave), len(out))
    if stop > start:
        out[start:stop] += gain * wave[: stop - start]


def _master(x, rng, sample_rate):
    # One FFT pass: light reverb (exponential noise tail) and a random tilt EQ.
    rt60 = rng.uniform(0.3, 1.5)
    n_ir = int(rt60 * sample_rate)
    t = np.arange(n_ir) / sample_rate
    tail = rng.standard_normal(n_ir) * np.exp(-6.9 * t / rt60)
    tail[: int(0.01 * sample_rate)] = 0.0
    tail *= rng.uniform(0.0, 0.35) / np.sqrt(np.sum(tail**2))
    n_fft = 1 << int(np.ceil(np.log2(len(x) + n_ir)))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    tilt_db_per_octave = rng.uniform(-2.5, 1.5)
    eq = (np.maximum(freqs, 50.0) / 1000.0) ** (tilt_db_per_octave / 6.02) * _butter_gain(
        freqs, low=30.0
    )
    spectrum = np.fft.rfft(x, n_fft) * (1.0 + np.fft.rfft(tail, n_fft)) * eq
    y = np.fft.irfft(spectrum, n_fft)[: len(x)]
    y /= np.max(np.abs(y)) + 1e-12
    drive = rng.uniform(0.5, 2.0)
    return np.tanh(drive * y) / np.tanh(drive)


def compose_track(seed: int, seconds: float, sample_rate: int = 8000) -> np.ndarray:
    """Compose `seconds` of music from `seed`: float32, shape (round(seconds * sample_rate),),
    peak-normalised to 0.9. Same seed, same samples."""
    if not seconds > 0:
        raise ValueError(f"`seconds` must be positive. Received: seconds={seconds}")
    if sample_rate < 4000:
        raise ValueError(
            f"`sample_rate` must be at least 4000. Received: sample_rate={sample_rate}"
        )
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    song = _plan_song(rng)
    song["kit"] = _make_drum_kit(rng, sample_rate)
    out = np.zeros(n + 2 * sample_rate)
    cache = {}
    form = song["form"]
    loop = [name for name in form if name != "intro"]
    start_s, tempo = 0.0, song["tempo"]
    seen = set()
    for index in itertools.count():
        if start_s >= seconds:
            break
        name = form[index] if index < len(form) else loop[(index - len(form)) % len(loop)]
        section = song["sections"][name]
        if name in seen:
            section = _vary_section(rng, section, song)
        seen.add(name)
        if index == song["tempo_change_at"]:
            tempo *= 1.0 + song["tempo_change"]
        key = song["key"] + (song["key_change"] if index >= song["key_change_at"] else 0)
        start_s = _render_section(
            out, song, section, start_s, tempo, key, sample_rate, rng, cache
        )
    return _normalise_peak(_master(out, rng, sample_rate)[:n])


# ------------------------------------------------------------------------------- noise


def _noise_wind(rng, n, sample_rate):
    base = _coloured_noise(rng, n, 1.5)
    spectrum = np.fft.rfft(base)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    out = np.zeros(n)
    for low, high in ((40.0, 250.0), (250.0, 800.0), (800.0, 2500.0)):
        band = np.fft.irfft(spectrum * _butter_gain(freqs, low, high, 2), n)
        gust = np.exp(
            rng.uniform(0.5, 1.2) * _smooth_random(rng, n, sample_rate, rng.uniform(0.2, 1.0))
        )
        out += band * gust
    return out


def _noise_traffic(rng, n, sample_rate):
    seconds = n / sample_rate
    t = np.arange(n) / sample_rate
    rumble = _fft_filter(
        _coloured_noise(rng, n, 2.0),
        sample_rate,
        lambda f: _butter_gain(f, 20.0, rng.uniform(150.0, 300.0)),
    )
    out = _normalise_rms(rumble) * rng.uniform(0.3, 1.0)
    road = _normalise_rms(
        _fft_filter(rng.standard_normal(n), sample_rate, lambda f: _butter_gain(f, 60.0, 1500.0))
    )
    engine_table = _wavetable(1.0 / np.arange(1, 20) ** 1.2)
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
        engine = _read_table(engine_table, np.cumsum(freq) / sample_rate)
        out[window] += envelope * (road[window] + rng.uniform(0.2, 0.8) * engine)
    return out


def _noise_rain(rng, n, sample_rate):
    seconds = n / sample_rate
    out = 0.3 * _fft_filter(
        _coloured_noise(rng, n, 1.0), sample_rate, lambda f: _butter_gain(f, 500.0, None)
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
    freq = mains * (1.0 + 0.0005 * _smooth_random(rng, n, sample_rate, 0.5))
    phase = 2.0 * np.pi * np.cumsum(freq) / sample_rate
    out = np.zeros(n)
    decay = rng.uniform(0.5, 1.5)
    for k in range(1, int(min(1200.0, 0.45 * sample_rate) / mains) + 1):
        amplitude = rng.uniform(0.2, 1.0) * k**-decay * (1.5 if k % 2 == 1 else 1.0)
        out += amplitude * np.sin(k * phase + rng.uniform(0.0, 2.0 * np.pi))
    out *= 1.0 + 0.1 * _smooth_random(rng, n, sample_rate, 0.3)
    return _normalise_rms(out) + 10.0 ** (rng.uniform(-45.0, -25.0) / 20.0) * rng.standard_normal(n)


def _noise_babble(rng, n, sample_rate):
    out = np.zeros(n)
    for _ in range(int(rng.integers(3, 10))):
        f0 = rng.uniform(90.0, 240.0)
        freq = f0 * (1.0 + 0.1 * _smooth_random(rng, n, sample_rate, 3.0))
        n_harmonics = max(1, int(0.45 * sample_rate / (1.2 * f0)))
        source = _read_table(
            _wavetable(np.arange(1, n_harmonics + 1) ** -1.0), np.cumsum(freq) / sample_rate
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
                talker[start:stop] = window * _fft_filter(
                    source[start:stop] * window,
                    sample_rate,
                    lambda f, formants=formants: sum(
                        g / (1.0 + ((f - c) / 60.0) ** 2)
                        for c, g in zip(formants, (1.0, 0.6, 0.3), strict=True)
                    ),
                )
            start = stop
        out += rng.uniform(0.3, 1.0) * _normalise_rms(talker)
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
        _coloured_noise(rng, n, 1.0)
        * np.sqrt(np.mean(out**2))
        * 10.0 ** (rng.uniform(-35.0, -20.0) / 20.0)
    )
    return out + floor


def _noise_of_kind(rng, kind, n, sample_rate):
    if kind in ("white", "pink", "brown"):
        return _coloured_noise(rng, n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    if kind == "mixture":
        parts = rng.choice(
            [k for k in NOISE_KINDS if k != "mixture"], size=int(rng.integers(2, 4)), replace=False
        )
        return sum(
            10.0 ** (rng.uniform(-15.0, 0.0) / 20.0)
            * _normalise_rms(_noise_of_kind(rng, str(part), n, sample_rate))
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
    return _normalise_peak(_noise_of_kind(rng, kind or chosen, n, sample_rate))


# ---------------------------------------------------------------------- impulse responses


def _microphone(rng, sample_rate):
    kind = str(rng.choice(["flat", "phone", "laptop", "cheap", "muffled"]))
    nyquist = sample_rate / 2.0
    freqs = np.fft.rfftfreq(256, 1.0 / sample_rate)
    ripple = _peak_gain(
        freqs, rng.uniform(200.0, nyquist), rng.uniform(100.0, 600.0), rng.uniform(-3.0, 3.0)
    )
    if kind == "phone":
        gain = _butter_gain(
            freqs, rng.uniform(250.0, 400.0), min(rng.uniform(3000.0, 3500.0), 0.9 * nyquist), 4
        )
    elif kind == "laptop":
        gain = _butter_gain(freqs, rng.uniform(200.0, 500.0), 0.9 * nyquist, 2)
        gain *= _peak_gain(freqs, rng.uniform(1000.0, 3000.0), 400.0, rng.uniform(3.0, 8.0))
    elif kind == "cheap":
        gain = _butter_gain(freqs, rng.uniform(80.0, 150.0), None, 2) * (
            np.maximum(freqs, 100.0) / 1000.0
        ) ** rng.uniform(-0.3, 0.3)
    elif kind == "muffled":
        gain = _butter_gain(freqs, None, rng.uniform(1200.0, 2800.0), 2)
    else:
        gain = np.ones_like(freqs)
    fir = np.roll(np.fft.irfft(gain * ripple, 256), 128) * np.hanning(256)
    return fir, kind


def make_impulse_response(seed: int, sample_rate: int = 8000) -> np.ndarray:
    """Room + microphone impulse response from `seed`: float32, shape (n,) with
    n <= sample_rate, max |h| = 1 and the peak positive. RT60 (at 1 kHz) is uniform in
    [0.1, 0.8] s; low bands decay slower than high ones."""
    rng = np.random.default_rng(seed)
    rt60 = rng.uniform(0.1, 0.8)
    n = min(sample_rate, int((1.3 * rt60 + 0.05) * sample_rate))
    t = np.arange(n) / sample_rate
    direct = int(rng.integers(0, int(0.004 * sample_rate) + 1))
    early = np.zeros(n)
    early[direct] = 1.0
    for _ in range(int(rng.integers(3, 9))):
        delay = rng.uniform(0.001, 0.03)
        index = min(direct + int(delay * sample_rate), n - 1)
        early[index] += rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.7) * np.exp(-delay / 0.05)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    log_f = np.log2(np.maximum(freqs, 1.0))
    tail = np.zeros(n)
    edges = np.log2([250.0, 700.0, 1400.0, 2800.0])
    factors = np.array([1.3, 1.1, 1.0, 0.8, 0.6]) * rng.uniform(0.9, 1.1, 5)
    previous = np.zeros_like(freqs)
    for band, factor in enumerate(factors):
        # Smooth complementary crossovers, one octave wide, in log frequency.
        below = 1.0 if band == len(edges) else np.clip(0.5 - (log_f - edges[band]), 0.0, 1.0)
        mask = np.sin(0.5 * np.pi * below) ** 2 - previous if band < len(edges) else 1.0 - previous
        previous = previous + mask
        tail += np.fft.irfft(spectrum * mask, n) * np.exp(-6.908 * t / (rt60 * factor))
    onset = direct + int(rng.uniform(0.004, 0.02) * sample_rate)
    tail *= np.clip((np.arange(n) - onset) / (0.005 * sample_rate), 0.0, 1.0)
    direct_to_reverb_db = rng.uniform(-6.0, 8.0)
    tail *= np.sqrt(np.sum(early**2) / np.sum(tail**2) / 10.0 ** (direct_to_reverb_db / 10.0))
    fir, _ = _microphone(rng, sample_rate)
    h = np.convolve(early + tail, fir)[128 : 128 + n]
    h /= h[np.argmax(np.abs(h))]
    return h.astype(np.float32)


# -------------------------------------------------------------------------------- corpus


def _derived_seed(seed, kind, index):
    # Independent streams per (corpus seed, file kind, file index): track i is the same
    # whatever n_tracks is, and noise/IR seeds never reuse a track's stream.
    kinds = {"music": 0, "noise": 1, "ir": 2}
    return int(
        np.random.SeedSequence(seed, spawn_key=(kinds[kind], index)).generate_state(2, np.uint64)[0]
        >> 1
    )


def _write_wav(path, audio, sample_rate):
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        sf.write(tmp, pcm, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path, payload):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def _corpus_entries(params):
    """The corpus's files: {group: [(relative path, entry, audio function)]}, nothing rendered yet."""
    seed, rate = params["seed"], params["sample_rate"]
    entries = {"music": [], "noise": [], "ir": []}
    for index in range(params["n_tracks"]):
        track_seed = _derived_seed(seed, "music", index)
        entries["music"].append((
            f"music/track_{index:04d}.wav", {"seed": track_seed},
            lambda s=track_seed: compose_track(s, params["track_seconds"], rate),
        ))
    for index in range(params["n_noise"]):
        noise_seed = _derived_seed(seed, "noise", index)
        kind = NOISE_KINDS[index % len(NOISE_KINDS)]
        entries["noise"].append((
            f"noise/noise_{index:03d}.wav", {"seed": noise_seed, "kind": kind},
            lambda s=noise_seed, k=kind: make_noise(s, params["noise_seconds"], rate, kind=k),
        ))
    for index in range(params["n_irs"]):
        ir_seed = _derived_seed(seed, "ir", index)
        entries["ir"].append((
            f"ir/ir_{index:03d}.wav", {"seed": ir_seed}, lambda s=ir_seed: make_impulse_response(s, rate)
        ))
    return entries


def _read_manifest(root):
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def generate_corpus(
    out_dir,
    n_tracks=40,
    track_seconds=30.0,
    n_noise=16,
    noise_seconds=20.0,
    n_irs=32,
    seed=0,
    sample_rate=8000,
) -> CorpusPaths:
    """Write the default corpus under `out_dir` and return its `CorpusPaths`.

    Files: `music/track_0000.wav`, `noise/noise_000.wav` (kinds cycle through
    `NOISE_KINDS`), `ir/ir_000.wav`, all 16-bit PCM, and `manifest.json` with the
    parameters, per-file seeds and file list. A directory whose manifest has the same
    parameters and whose files all exist is returned untouched; files missing from
    it are written again (the same seed gives the same bytes).

    A new corpus is written to a temporary folder beside `out_dir` and renamed into
    place, so a concurrent run never sees half a corpus; when two runs race, the
    first rename wins and the other run uses its corpus. Nothing is ever deleted
    from `out_dir`: a folder holding a different corpus, or other files, is refused.

    Raises:
        ValueError: a count is negative, or `out_dir` holds a different corpus or
            files that are not a corpus.
    """
    for name, value in (("n_tracks", n_tracks), ("n_noise", n_noise), ("n_irs", n_irs)):
        if value < 0:
            raise ValueError(f"`{name}` must be non-negative. Received: {name}={value}")
    root = pathlib.Path(out_dir).expanduser()
    paths = CorpusPaths(root, root / "music", root / "noise", root / "ir")
    params = {
        "version": CORPUS_VERSION,
        "seed": int(seed),
        "sample_rate": int(sample_rate),
        "n_tracks": int(n_tracks),
        "track_seconds": float(track_seconds),
        "n_noise": int(n_noise),
        "noise_seconds": float(noise_seconds),
        "n_irs": int(n_irs),
    }
    entries = _corpus_entries(params)
    manifest = _read_manifest(root)
    if manifest is not None and manifest.get("params") == params:
        for group in entries.values():  # repair: rewrite missing files, identical bytes
            for relative, _, render in group:
                if not (root / relative).exists():
                    _write_wav(root / relative, render(), sample_rate)
        return paths
    if root.is_dir() and any(root.iterdir()):
        if manifest is not None:
            changed = {k: (manifest.get("params", {}).get(k), v) for k, v in params.items()
                       if manifest.get("params", {}).get(k) != v}
            reason = "a different corpus (" + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()) + ")"
        else:
            reason = "files that are not a generated corpus (no manifest.json)"
        raise ValueError(
            f"{root} holds {reason}; another run may be reading it, so it is not rewritten. "
            f"Use another folder or delete this one. Received: out_dir={out_dir}"
        )

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        for group in ("music", "noise", "ir"):
            (staging / group).mkdir()
        for group in entries.values():
            for relative, _, render in group:
                _write_wav(staging / relative, render(), sample_rate)
        manifest = {
            "params": params,
            "files": {group: [relative for relative, _, _ in items] for group, items in entries.items()},
            "entries": {
                group: [{"file": relative, **entry} for relative, entry, _ in items]
                for group, items in entries.items()
            },
        }
        _write_json(staging / "manifest.json", manifest)
        try:
            os.rename(staging, root)  # atomic; replaces only a missing or empty folder
        except OSError:
            if (_read_manifest(root) or {}).get("params") != params:
                raise
            # another run finished the same corpus first: use it
        return paths
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
