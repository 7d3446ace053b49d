#!/usr/bin/env python
"""Side-by-side table of held-out evaluations (`scripts/evaluate_model.sh` output folders).

    python scripts/compare_evals.py NAME=DIR [NAME=DIR ...]

Each DIR holds `noisy/`, `noisy-aligned/` and `clean/` (`nnfp evaluate --out` folders);
prints, per protocol and metric, one row per model: right track, right track + offset,
answered right (calibrated rule) and false matches on unknown music (results.json holds %).
"""

import json
import sys
from pathlib import Path

METRICS = [
    ("track_top1", "right track"),
    ("offset_top1", "right track + offset"),
    ("answered_right", "answered right (calibrated)"),
    ("false_match", "false match, unknown music"),
]


def main(pairs):
    runs = [(name, Path(folder)) for name, folder in (p.split("=", 1) for p in pairs)]
    protocols = ("noisy", "noisy-aligned", "clean")
    results = {(protocol, name): json.loads((folder / protocol / "results.json").read_text())
               for protocol in protocols for name, folder in runs}
    lengths = next(iter(results.values()))["lengths_seconds"]
    rows = []
    for protocol in protocols:
        for key, label in METRICS:
            for name, _ in runs:
                values = results[protocol, name]["hit_rates"][key]
                rows.append(f"| {protocol} | {label} | {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    print("| protocol | metric | model | " + " | ".join(f"{s} s" for s in lengths) + " |")
    print("| --- | --- | --- | " + " | ".join("---:" for _ in lengths) + " |")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
