#!/usr/bin/env python
"""Split the Debian audio fetched by ../shared/data/fetch_debian_audio.py by package.

    python scripts/debian_splits.py data        # reads data/debian-{music,noise,speech}
    python scripts/debian_splits.py data --music debian-music-full   # the `train` set

With `--music FOLDER` only the music is split, from data/FOLDER, into
data/splits/music-*-FOLDER-suffix.json (`debian-music-full` -> `music-train-full.json`).

Writes JSON manifests to data/splits/: music-train, music-val, music-heldout (the
evaluation DB: never trained on), music-unknown (never trained on and never indexed:
out-of-catalogue queries for the false-match rate and the threshold calibration),
noise-train/test, speech-train/test. Whole packages
go to one side, so no track, noise or voice is shared between training and evaluation.
"""

import json
import os
from pathlib import Path

SPLITS = {
    "music": {
        "heldout": {"warzone2100-music", "drascula-music", "pushover-data"},
        "val": {"extremetuxracer-data"},
        "unknown": {"hyperrogue-music", "lordsawar-data"},
        # its sound effects are test noise: the whole package stays out of training
        "excluded": {"redeclipse-data"},
    },
    "noise": {"test": {"redeclipse-data", "sonic-pi-samples"}},
    "speech": {"test": {"asterisk-core-sounds-en-wav"}},
}


def main(root, music=None):
    root = Path(root)
    out = root / "splits"
    out.mkdir(exist_ok=True)
    kinds = {"music": SPLITS["music"]} if music else SPLITS
    for kind, held in kinds.items():
        folder = music or f"debian-{kind}"
        suffix = f"-{folder.removeprefix('debian-music-')}" if music else ""
        with open(root / folder / "manifest.json") as handle:
            entries = json.load(handle)
        parts = {name: [] for name in [*held, "train"]}
        for entry in entries:
            name = next((n for n, packages in held.items() if entry["package"] in packages), "train")
            parts[name].append({"path": f"../{folder}/{entry['file']}", "package": entry["package"]})
        for name, rows in parts.items():
            path = out / f"{kind}-{name}{suffix}.json"
            with open(f"{path}.tmp", "w") as handle:
                json.dump(rows, handle, indent=0)
            os.replace(f"{path}.tmp", path)
            hours = sum(e["seconds"] for e in entries if any(r["path"].endswith(e["file"]) for r in rows)) / 3600
            print(f"{path}: {len(rows)} files, {hours:.2f} h")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", default="data")
    parser.add_argument("--music", default=None, help="split only this music folder under ROOT")
    args = parser.parse_args()
    main(args.root, args.music)
