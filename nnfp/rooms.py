"""Simulated room impulse responses (`nnfp data make-irs`), for users without an IR set.

Shoebox rooms from pyroomacoustics (image source method with randomised image positions,
air absorption), with random sizes, reverberation times, wall materials and source/microphone
positions; a random microphone colouration (a short band-pass) stands in for the phone or
laptop microphone of the paper's room + microphone IRs. pyroomacoustics is an optional
extra: `pip install "nnfp[rooms]"`.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

__all__ = ["make_room_impulse_responses", "simulate_room"]

_MATERIALS = (
    "hard_surface", "brickwork", "rough_concrete", "plasterboard", "wooden_lining",
    "carpet_cotton", "curtains_cotton_0.5", "glass_window", "linoleum_on_concrete",
)
_WALLS = ("east", "west", "north", "south", "ceiling", "floor")


def _pyroomacoustics():
    try:
        import pyroomacoustics
    except ImportError as error:
        raise ImportError(
            'Simulating room impulse responses needs pyroomacoustics: pip install "nnfp[rooms]" '
            "(or pip install pyroomacoustics)"
        ) from error
    return pyroomacoustics


def _microphone(rng, sample_rate):
    """A short random band-pass FIR: the colouration of a small microphone."""
    from numpy.fft import irfft

    n = 64
    freqs = np.linspace(0, sample_rate / 2, n // 2 + 1)
    low, high = rng.uniform(80, 400), rng.uniform(0.6, 0.95) * sample_rate / 2
    gain = 1 / np.sqrt(1 + (low / np.maximum(freqs, 1)) ** 4) / np.sqrt(1 + (freqs / high) ** 8)
    gain *= 10 ** (rng.normal(0, 2, len(freqs)) / 20)  # a few dB of ripple
    return np.roll(irfft(gain, n), n // 2) * np.hanning(n)


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
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
        tmp = path.with_name(path.stem + ".tmp.wav")
        sf.write(tmp, h, sample_rate, subtype="FLOAT")
        os.replace(tmp, path)
        paths.append(path)
        meta.append({"file": path.name, **params})
    with open(out_dir / "manifest.json", "w") as handle:
        json.dump({"sample_rate": sample_rate, "seed": seed, "impulse_responses": meta}, handle, indent=1)
    return paths
