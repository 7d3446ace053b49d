"""Procedurally composed music: `compose_track(seed, seconds)`.

Each seed picks its own tempo, metre, key and mode, swing, instrumentation (additive, FM,
Karplus-Strong plucked string, filtered square/saw/pulse, detuned pads, organ, mallets, a
synthesised drum kit) and a form of sections (intro, verse, chorus, bridge, breakdown) that
repeat, as songs do. Tempo changes, key changes and mode changes happen at section
boundaries; sections differ in loudness and density. A repeated section keeps its form and
harmony but gets a new melody and accompaniment (as a second verse does): tracks share a
style, which makes the corpus a fair test of a fingerprinter, while the offset of a query
inside a track stays well defined.

The same seed always gives bit-identical audio; all randomness comes from
`numpy.random.default_rng(seed)`. Audio is float32 mono in [-1, 1], 8 kHz by default.

Example:

```python
x = compose_track(seed=3, seconds=10.0)  # (80000,) float32
```
"""

from __future__ import annotations

import itertools

import numpy as np

from nnfp.corpus.dsp import (
    butter_gain,
    fft_filter,
    midi_to_hz,
    normalise_peak,
    normalise_rms,
    note_envelope,
    peak_gain,
    read_table,
    wavetable,
)

__all__ = ["compose_track"]

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
    resonance = peak_gain(k * f0, cutoff, 0.2 * cutoff, spec["resonance_db"])
    bright = wavetable(base * butter_gain(k * f0, high=cutoff) * resonance)
    scale = 1.0 / (np.max(np.abs(bright)) + 1e-9)
    t = np.arange(n_total) / sample_rate
    sweep = spec["sweep"]
    dark = None
    if sweep < 1.0:
        dark_cut = cutoff * sweep
        dark = wavetable(
            base
            * butter_gain(k * f0, high=dark_cut)
            * peak_gain(k * f0, dark_cut, 0.2 * dark_cut, spec["resonance_db"])
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
        voice = read_table(bright, phase)
        if dark is not None:
            dark_voice = read_table(dark, phase)
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
    f0 = float(midi_to_hz(midi))
    n_total = n_hold + int(spec["release"] * sample_rate)
    kind = spec["kind"]
    if kind == "pluck":
        wave = _render_pluck(spec, f0, n_total, sample_rate, rng)
        env = note_envelope(n_hold, n_total, sample_rate, 0.0, 1.0, 1.0)
    elif kind == "mallet":
        wave = _render_mallet(spec, f0, n_total, sample_rate)
        env = note_envelope(n_hold, n_total, sample_rate, 0.001, 1.0, 1.0)
    else:
        if kind == "fm":
            wave = _render_fm(spec, f0, n_total, sample_rate)
        else:
            wave = _render_wavetable(spec, f0, n_hold, n_total, sample_rate)
        env = note_envelope(
            n_hold, n_total, sample_rate, spec["attack"], spec["decay"], spec["sustain"]
        )
    return wave * env


def _make_drum_kit(rng, sample_rate):
    n = int(0.6 * sample_rate)
    t = np.arange(n) / sample_rate
    nyquist = sample_rate / 2.0

    def band_noise(low, high):
        return normalise_rms(
            fft_filter(
                rng.standard_normal(n), sample_rate, lambda f: butter_gain(f, low, high, 3)
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
    eq = (np.maximum(freqs, 50.0) / 1000.0) ** (tilt_db_per_octave / 6.02) * butter_gain(
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
    return normalise_peak(_master(out, rng, sample_rate)[:n])
