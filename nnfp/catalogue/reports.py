"""Reports of a search evaluation: the text table `nnfp evaluate` prints, its Markdown twin,
and the files it writes (`results.json`, `results.md`, `scores.npz`, `hit_rates.png`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from nnfp.catalogue.metrics import METRICS
from nnfp.outputs import atomic_write_bytes

__all__ = [
    "format_table",
    "markdown_table",
    "save_results",
]

_LABELS = {
    "track_top1": "right track",
    "offset_top1": "right track+offset (±0.5 s)",
    "answered_right": "answered right (decision rule)",
    "false_match": "false match (not in index)",
    "top1_exact": "top-1 exact",
    "top1_near": "top-1 near (±1 seg)",
    "top3": "top-3 exact",
    "top10": "top-10 exact",
    "song_top1": "song top-1",
    "speed_right": "speed ±0.5 % (% of right answers)",
    "offset_or_same": "right track+offset or same audio",
}


def format_table(rates, lengths_seconds, counts, title="Search evaluation (hit rate, %)"):
    width = max(len(v) for v in _LABELS.values()) + 2
    header = f"{'query length':<{width}}" + "".join(f"{f'{s:g} s':>8}" for s in lengths_seconds)
    lines = [title, header, f"{'segments':<{width}}" + "".join(f"{c:>8}" for c in counts)]
    lines.append("-" * len(header))
    for key in (*METRICS, "offset_or_same", "speed_right", "false_match"):
        if key in rates:
            lines.append(f"{_LABELS[key]:<{width}}" + "".join(f"{v:>8.1f}" for v in rates[key]))
    lines.append(f"{'queries':<{width}}" + "".join(f"{int(v):>8}" for v in rates["n"]))
    if "n_unknown" in rates:
        lines.append(f"{'queries not in index':<{width}}" + "".join(f"{int(v):>8}" for v in rates["n_unknown"]))
    return "\n".join(lines)


def markdown_table(rates, lengths_seconds, counts):
    head = "| metric | " + " | ".join(f"{s:g} s ({c} seg)" for s, c in zip(lengths_seconds, counts, strict=True)) + " |"
    rule = "| --- |" + " ---: |" * len(lengths_seconds)
    lines = [head, rule]
    for key in (*METRICS, "offset_or_same", "speed_right", "false_match"):
        if key in rates:
            lines.append(f"| {_LABELS[key]} | " + " | ".join(f"{v:.1f}" for v in rates[key]) + " |")
    lines.append("| queries | " + " | ".join(str(int(v)) for v in rates["n"]) + " |")
    if "n_unknown" in rates:
        lines.append("| queries not in index | " + " | ".join(str(int(v)) for v in rates["n_unknown"]) + " |")
    return "\n".join(lines) + "\n"


def save_results(out_dir, rates, lengths_seconds, counts, raw, query_info, settings, title):
    """Writes `scores.npz` (raw), `results.md`, `results.json` and `hit_rates.png`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        lengths_seconds=np.asarray(lengths_seconds, float),
        n_segments=np.asarray(counts),
        **{f"raw_{k}": v for k, v in raw.items()},
        **{f"query_{k}": v for k, v in query_info.items()},
        **{f"rate_{k}": np.asarray(v) for k, v in rates.items()},
    )
    atomic_write_bytes(out_dir / "scores.npz", buffer.getvalue())
    markdown = f"# {title}\n\n" + markdown_table(rates, lengths_seconds, counts)
    markdown += "\n" + "".join(f"- {k}: {v}\n" for k, v in settings.items())
    atomic_write_bytes(out_dir / "results.md", markdown.encode())
    payload = {
        "lengths_seconds": list(lengths_seconds),
        "n_segments": list(counts),
        "hit_rates": {k: np.asarray(v).tolist() for k, v in rates.items()},
        "settings": settings,
    }
    atomic_write_bytes(out_dir / "results.json", json.dumps(payload, indent=1, default=str).encode())

    from nnfp.extras import require

    require("matplotlib", "plots", f"{out_dir / 'hit_rates.png'} (the results are written)").use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [k for k in METRICS if k in rates]:
        ax.plot(lengths_seconds, rates[key], marker="o", label=_LABELS[key])
    ax.set_xlabel("query length (s)")
    ax.set_ylabel("hit rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(list(lengths_seconds))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out_dir / "hit_rates.png", png.getvalue())

