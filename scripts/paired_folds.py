#!/usr/bin/env python
"""Two models on the same held-out fold queries, paired: the difference and its standard error.

    python scripts/paired_folds.py BASE_OUT NEW_OUT [BASE_OUT NEW_OUT ...]

BASE_OUT and NEW_OUT are `scripts/evaluate_folds.sh` output folders (fold-K/scores.npz each). The
same seed per fold gives both models the very same queries (cut, room, noise), so their
difference in right track + offset (±0.5 s, track time) is paired: its standard error is that of
the per-query differences, far below two independent binomial errors. More pairs (each with
other queries of the same folds: another seed or count) are pooled per fold, every query
counted once. Folds missing in any folder are skipped (and said).
"""

import sys
from pathlib import Path

import numpy as np


def right_offset(scores):
    """(queries, lengths) bool: top-1 is the query's track within ±0.5 s of its offset."""
    return (scores["raw_tracks"][:, :, 0] == scores["query_track"][:, None]) & (
        np.abs(scores["raw_offsets"][:, :, 0] - scores["query_offset_s"][:, None]) <= 0.5)


def main(*folders):
    pairs = [(Path(base), Path(new)) for base, new in zip(folders[::2], folders[1::2], strict=True)]
    for k in (1, 2, 3):
        paths = [folder / f"fold-{k}" / "scores.npz" for pair in pairs for folder in pair]
        if not all(p.is_file() for p in paths):
            print(f"fold {k}: skipped (no {' or '.join(str(p) for p in paths if not p.is_file())})")
            continue
        rights, lengths = [[], []], None
        for i in range(0, len(paths), 2):
            a, b = (np.load(p) for p in paths[i : i + 2])
            if not (np.array_equal(a["query_track"], b["query_track"])
                    and np.allclose(a["query_offset_s"], b["query_offset_s"])):
                raise SystemExit(f"fold {k}: {paths[i]} and {paths[i + 1]} did not query the same cuts "
                                 "(another seed or count?)")
            if lengths is not None and not np.array_equal(lengths, a["lengths_seconds"]):
                raise SystemExit(f"fold {k}: {paths[i]} has other query lengths than {paths[0]}")
            lengths = a["lengths_seconds"]
            rights[0].append(right_offset(a))
            rights[1].append(right_offset(b))
        ha, hb = np.concatenate(rights[0]), np.concatenate(rights[1])
        names = " + ".join(f"{base.name} -> {new.name}" for base, new in pairs)
        print(f"fold {k} ({len(ha)} queries): right track + offset, {names}")
        for j, length in enumerate(lengths):
            d = hb[:, j].astype(float) - ha[:, j]
            se = d.std(ddof=1) / np.sqrt(len(d))
            print(f"  {length:4.0f} s  {100 * ha[:, j].mean():5.1f} -> {100 * hb[:, j].mean():5.1f}  "
                  f"{100 * d.mean():+5.1f} ± {100 * se:.1f}  (new only {int((d > 0).sum())}, base only {int((d < 0).sum())})")


if __name__ == "__main__":
    if len(sys.argv) < 3 or len(sys.argv) % 2 != 1:
        raise SystemExit(__doc__.split("\n\n")[1])
    main(*sys.argv[1:])
