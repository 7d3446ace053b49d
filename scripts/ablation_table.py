"""Markdown table of an ablation run (scripts/ablation.sh): one row per finished row folder.

    python scripts/ablation_table.py runs/ablation
"""

import json
import sys
from pathlib import Path

ROWS = {
    "base": "configs/debian.yaml (random anchors, 2.5 s rooms, no speech, no gain, lr 3e-4, 8.52 h)",
    "grid-anchors": "anchors on the 0.5 s grid (`data.random_anchors=false`)",
    "speech": "speech mixed into 30 % of replicas",
    "ir-1s": "rooms cut to 1 s (same 200 rooms)",
    "gain": "replica gain ±6 dB",
    "lr-1e-4": "learning rate 1e-4",
    "half-data": "half the training music (4.14 h, 5 of 9 packages)",
    "full-data": "all the `train` set's music (20.37 h, 21 packages)",
}


def main(root):
    root = Path(root)
    lines = None
    for name, change in ROWS.items():
        path = root / name / "eval" / "results.json"
        if not path.exists():
            continue
        results = json.loads(path.read_text())
        lengths = [f"{s:g} s" for s in results["lengths_seconds"]]
        if lines is None:
            lines = [
                "| row | change | " + " | ".join(f"track+offset {s}" for s in lengths)
                + " | " + " | ".join(f"track {s}" for s in lengths) + " |",
                "| --- | --- | " + " | ".join("---:" for _ in range(2 * len(lengths))) + " |",
            ]
        rates = results["hit_rates"]
        cells = [f"{v:.1f}" for v in rates["offset_top1"]] + [f"{v:.1f}" for v in rates["track_top1"]]
        lines.append(f"| {name} | {change} | " + " | ".join(cells) + " |")
    print("\n".join(lines or ["(no finished rows)"]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/ablation")
