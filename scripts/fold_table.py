#!/usr/bin/env python
"""The held-out folds table of scripts/evaluate_folds.sh: each fold's rates, their mean and
spread, and the sampling error of a fold's rate (binomial standard error at its n).

    python scripts/fold_table.py OUT_DIR [OTHER_OUT_DIR]   # a second folder: side by side, B - A
"""

import json
import sys
from pathlib import Path

import numpy as np

ROWS = (("track_top1", "right track"), ("offset_top1", "right track+offset"),
        ("offset_or_same", "right track+offset or same audio"))


def load(out):
    folds = sorted(p for p in Path(out).glob("fold-*") if (p / "results.json").is_file())
    if not folds:
        sys.exit(f"{out}: no fold-*/results.json (run scripts/evaluate_folds.sh first)")
    return {p.name: json.loads((p / "results.json").read_text()) for p in folds}


def table(results):
    lengths = next(iter(results.values()))["lengths_seconds"]
    head = " | ".join(f"{s:g} s" for s in lengths)
    lines = [f"| metric | fold | {head} |", "|---|---|" + "---|" * len(lengths)]
    means = {}
    for key, label in ROWS:
        rates = np.array([r["hit_rates"][key] for r in results.values() if key in r["hit_rates"]])
        if not len(rates):
            continue
        for (name, r), row in zip(results.items(), rates, strict=True):
            n = np.asarray(r["hit_rates"]["n"], float)
            se = 100 * np.sqrt(row / 100 * (1 - row / 100) / np.maximum(n, 1))
            cells = " | ".join(f"{v:.1f} ± {e:.1f}" for v, e in zip(row, se, strict=True))
            lines.append(f"| {label} | {name} | {cells} |")
        means[key] = rates.mean(axis=0)
        cells = " | ".join(f"**{m:.1f}** ({lo:.1f}-{hi:.1f})" for m, lo, hi in
                           zip(rates.mean(axis=0), rates.min(axis=0), rates.max(axis=0), strict=True))
        lines.append(f"| {label} | mean (worst-best) | {cells} |")
    return "\n".join(lines), means


def main(argv):
    text, means = table(load(argv[0]))
    print(f"{argv[0]} (± the binomial standard error of a fold's rate):\n{text}")
    if len(argv) > 1:
        text_b, means_b = table(load(argv[1]))
        print(f"\n{argv[1]}:\n{text_b}\n\nmean difference ({argv[1]} - {argv[0]}):")
        for key, label in ROWS:
            if key in means and key in means_b:
                print(f"  {label}: " + " / ".join(f"{d:+.1f}" for d in means_b[key] - means[key]))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
