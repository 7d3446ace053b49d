"""The embedded default corpus on disk: `generate_corpus(out_dir, ...)` -> `CorpusPaths`.

nnfp ships no audio. Its demo and tests run on a corpus the package generates itself,
deterministically from a seed: music (`nnfp.corpus.synth.compose_track`), background noise
(`nnfp.corpus.noise.make_noise`) and room + microphone impulse responses
(`nnfp.corpus.rooms.make_impulse_response`), written as 16-bit WAV files plus a
`manifest.json`. A folder that already holds the same corpus is returned at once.

Example:

```python
paths = generate_corpus("~/.cache/nnfp/corpus", n_tracks=40, seed=0)
```
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile

import numpy as np
import soundfile as sf

from nnfp.corpus.noise import NOISE_KINDS, make_noise
from nnfp.corpus.rooms import make_impulse_response
from nnfp.corpus.synth import compose_track
from nnfp.outputs import atomic_file, atomic_write_json

__all__ = ["CORPUS_VERSION", "CorpusPaths", "generate_corpus"]

# Bump whenever a generator changes its output, so cached corpora are rebuilt.
CORPUS_VERSION = "3"


@dataclasses.dataclass(frozen=True)
class CorpusPaths:
    """Where `generate_corpus` put the corpus: `root` holds `manifest.json` and the
    `music/`, `noise/` and `ir/` folders of 16-bit mono WAV files."""

    root: pathlib.Path
    music_dir: pathlib.Path
    noise_dir: pathlib.Path
    ir_dir: pathlib.Path



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
    with atomic_file(path) as tmp:
        sf.write(tmp, pcm, sample_rate, subtype="PCM_16", format="WAV")


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
        atomic_write_json(staging / "manifest.json", manifest, indent=2)
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
