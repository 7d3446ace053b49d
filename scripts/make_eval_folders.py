#!/usr/bin/env python
"""The evaluation folders of scripts/evaluate_model.sh, from the splits of scripts/debian_splits.py.

    python scripts/make_eval_folders.py data

data/eval/KIND: folders of symbolic links to the split's files (heldout, unknown-train,
unknown-eval, noise-train, noise-test, speech-train, speech-test); data/folds/fold-K and
data/folds/not-K: the held-out folds of scripts/evaluate_folds.sh (every package never trained
on, in 3 folds of different genres) and, for each, the other folds' music (its distractors);
data/generated/KIND: 20 files of 30 s of each generated kind (`nnfp.corpus.signals`), seeded,
the same on every run. Existing links and files are kept.
"""

import json
import os
import sys
from pathlib import Path

FOLDERS = {
    "heldout": ["music-heldout"],
    "unknown-train": ["music-train"],
    "unknown-eval": ["music-unknown", "music-val"],
    "noise-train": ["noise-train"],
    "noise-test": ["noise-test"],
    "speech-train": ["speech-train"],
    "speech-test": ["speech-test"],
}

# Packages never trained on (scripts/debian_splits.py: heldout, val, unknown), by genre: RTS
# soundtrack (orchestral, electronic); adventure-game score; puzzle/arcade/strategy (chiptune,
# looping electronic, folk).
FOLDS = {
    "fold-1": {"warzone2100-music"},
    "fold-2": {"drascula-music"},
    "fold-3": {"pushover-data", "extremetuxracer-data", "hyperrogue-music", "lordsawar-data"},
}


def _link(folder, source):
    link = folder / source.name
    if not link.exists():
        os.symlink(source, link)


def main(root):
    import soundfile as sf

    from nnfp.corpus.signals import GENERATED_KINDS, make_signal

    root = Path(root)
    for name, splits in FOLDERS.items():
        folder = root / "eval" / name
        folder.mkdir(parents=True, exist_ok=True)
        for split in splits:
            for entry in json.loads((root / "splits" / f"{split}.json").read_text()):
                source = (root / "splits" / entry["path"]).resolve()
                _link(folder, source)
        print(f"{folder}: {len(os.listdir(folder))} files")
    unseen = [e for split in ("music-heldout", "music-val", "music-unknown")
              for e in json.loads((root / "splits" / f"{split}.json").read_text())]
    for name, packages in FOLDS.items():
        for folder_name, inside in ((name, True), (name.replace("fold", "not"), False)):
            folder = root / "folds" / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            for entry in unseen:
                if (entry["package"] in packages) == inside:
                    _link(folder, (root / "splits" / entry["path"]).resolve())
            print(f"{folder}: {len(os.listdir(folder))} files")
    for j, kind in enumerate(GENERATED_KINDS):
        folder = root / "generated" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(20):
            path = folder / f"{kind}_{i:02d}.wav"
            if not path.exists():
                sf.write(path, make_signal(kind, 10_000 * (j + 1) + i, 30.0, 8000), 8000, subtype="PCM_16")
    print(f"{root / 'generated'}: {len(GENERATED_KINDS)} kinds x 20 files")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data")
