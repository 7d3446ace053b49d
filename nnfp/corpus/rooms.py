"""Room + microphone impulse responses: a fast NumPy model for the embedded corpus, and
simulated rooms (`nnfp data make-irs`) for users without an IR set.

`make_impulse_response(seed)` (NumPy only): direct path, early reflections, a
frequency-dependent exponential tail (RT60 0.1-0.8 s at 1 kHz) and a random microphone
colouration.

`make_room_impulse_responses` simulates shoebox rooms with pyroomacoustics (image source
method with randomised image positions, air absorption), with random sizes, reverberation
times, wall materials and source/microphone positions. pyroomacoustics is an optional
extra: `pip install "nnfp[rooms]"`.

Both use the same microphone model: a random short band-pass standing in for the phone or
laptop microphone of the paper's room + microphone IRs.
"""

from __future__ import annotations

import pathlib

import numpy as np

from nnfp.outputs import atomic_file, atomic_write_json, claim_output_dir, write_marker

__all__ = ["make_impulse_response", "make_room_impulse_responses", "simulate_room"]

_MATERIALS = (
    "hard_surface", "brickwork", "rough_concrete", "plasterboard", "wooden_lining",
    "carpet_cotton", "curtains_cotton_0.5", "glass_window", "linoleum_on_concrete",
)
_WALLS = ("east", "west", "north", "south", "ceiling", "floor")


def _pyroomacoustics():
    from nnfp.extras import require

    return require("pyroomacoustics", "rooms", "Simulating room impulse responses")


def _microphone(rng, sample_rate):
    """A short random band-pass FIR centred at its middle tap: the colouration of a small
    (phone, laptop) microphone, shared by the NumPy rooms and the simulated ones."""
    from numpy.fft import irfft

    n = 64
    freqs = np.linspace(0, sample_rate / 2, n // 2 + 1)
    low, high = rng.uniform(80, 400), rng.uniform(0.6, 0.95) * sample_rate / 2
    gain = 1 / np.sqrt(1 + (low / np.maximum(freqs, 1)) ** 4) / np.sqrt(1 + (freqs / high) ** 8)
    gain *= 10 ** (rng.normal(0, 2, len(freqs)) / 20)  # a few dB of ripple
    return np.roll(irfft(gain, n), n // 2) * np.hanning(n)


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
    fir = _microphone(rng, sample_rate)
    delay = len(fir) // 2  # the microphone filter is centred: keep the direct path at `direct`
    h = np.convolve(early + tail, fir)[delay : delay + n]
    h /= h[np.argmax(np.abs(h))]
    return h.astype(np.float32)


def simulate_room(rng, sample_rate=8000, rt60_range=(0.1, 0.8), max_seconds=1.0):
    """One impulse response (float32, peak 1) and its parameters, or None if infeasible."""
    pra = _pyroomacoustics()
    dims = [rng.uniform(2.5, 15.0), rng.uniform(2.5, 20.0), rng.uniform(2.2, 6.0)]
    rt60 = rng.uniform(*rt60_range)
    try:
        absorption, max_order = pra.inverse_sabine(rt60, dims)
    except ValueError:  # this reverberation time is impossible in this room
        return None
    if rng.random() < 0.3:  # frequency-dependent walls from pyroomacoustics' tables
        materials = pra.make_materials(**{w: str(rng.choice(_MATERIALS)) for w in _WALLS})
    else:
        materials = pra.Material(absorption)
    room = pra.ShoeBox(
        dims, fs=sample_rate, materials=materials, max_order=min(max_order, 30),
        air_absorption=True, use_rand_ism=True, max_rand_disp=0.05,
    )
    source = [rng.uniform(0.3, d - 0.3) for d in dims]
    microphone = [rng.uniform(0.3, d - 0.3) for d in dims]
    room.add_source(source)
    room.add_microphone(microphone)
    # The randomised image positions draw from pyroomacoustics' own generators (NumPy's
    # global one before 0.8): seed them from `rng` so the same seed gives the same rooms.
    seed = int(rng.integers(2**32))
    if hasattr(getattr(pra, "random", None), "seed"):
        pra.random.seed(numpy=seed, libroom=seed)
    else:  # pragma: no cover - pyroomacoustics < 0.8
        np.random.seed(seed)
    room.compute_rir()
    h = np.asarray(room.rir[0][0], np.float64)
    h = np.convolve(h, _microphone(rng, sample_rate))[: int(max_seconds * sample_rate)]
    peak = np.abs(h).max()
    if not np.isfinite(peak) or peak == 0:
        return None
    params = {
        "room_m": [round(d, 2) for d in dims],
        "rt60_target_s": round(rt60, 3),
        "distance_m": round(float(np.linalg.norm(np.subtract(source, microphone))), 2),
        "seconds": round(len(h) / sample_rate, 3),
    }
    return (h / peak).astype(np.float32), params


def make_room_impulse_responses(out_dir, n, sample_rate=8000, seed=0, max_seconds=1.0):
    """Writes `n` simulated room + microphone impulse responses as WAV files.

    Args:
        out_dir: folder for `rir_00000.wav`, ... and `manifest.json` (room parameters).
        n: number of impulse responses.
        sample_rate: Hz.
        seed: the same seed gives the same rooms.
        max_seconds: impulse responses are cut to this length.

    Returns:
        The list of written paths.

    Raises:
        ImportError: pyroomacoustics is not installed (the message says how to install it).
    """
    import soundfile as sf

    if n < 1:
        raise ValueError(f"n must be >= 1. Received: n={n}")
    _pyroomacoustics()
    # A new or empty folder, or one this function wrote before (its files are made again).
    claim_output_dir(out_dir, "impulse_responses", reuse=True, flag="a new folder")
    out_dir = pathlib.Path(out_dir)
    write_marker(out_dir, "impulse_responses")
    rng = np.random.default_rng(seed)
    paths, meta = [], []
    # A draw fails when its reverberation time is impossible in its room (a few % of
    # draws); a long run of failures means the settings cannot work, not bad luck.
    max_attempts, attempts = 20 * n + 100, 0
    while len(paths) < n:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(
                f"only {len(paths)} of {n} rooms could be simulated in {max_attempts} attempts. "
                f"Received: sample_rate={sample_rate}, max_seconds={max_seconds}"
            )
        result = simulate_room(rng, sample_rate, max_seconds=max_seconds)
        if result is None:
            continue
        h, params = result
        path = out_dir / f"rir_{len(paths):05d}.wav"
        with atomic_file(path) as tmp:
            sf.write(tmp, h, sample_rate, subtype="FLOAT", format="WAV")
        paths.append(path)
        meta.append({"file": path.name, **params})
    atomic_write_json(out_dir / "manifest.json", {"sample_rate": sample_rate, "seed": seed, "impulse_responses": meta})
    return paths
