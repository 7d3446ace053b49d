#!/usr/bin/env python
"""Answered-right and false-match rates of saved `nnfp evaluate` scores under other thresholds.

    python scripts/rethreshold.py CALIBRATION.json [CALIBRATION.json ...] -- SCORES.npz [SCORES.npz ...]

Each SCORES.npz is the `scores.npz` of an `nnfp evaluate --out` folder (top-1 score, track
and offset of every query and length). For every calibration file, prints per length the
in-catalogue queries answered right (right track, |offset error| <= 0.5 s, score >= the
threshold; only when the run had in-catalogue queries) and the out-of-catalogue queries
that matched, in %. With the calibration the run used, the rows equal what `evaluate`
printed; with another one they show its trade-off without searching again.
"""

import sys
from pathlib import Path

import numpy as np


def rates(scores_path, thresholds):
    """`{metric: [% per length]}` of one `scores.npz` at `thresholds` (one per length),
    counted as `nnfp evaluate` counts them (`hit_rates`; queries too short for a length
    are left out of it)."""
    from nnfp.catalogue.metrics import hit_rates

    saved = np.load(scores_path)
    if len(thresholds) != len(saved["lengths_seconds"]):
        raise SystemExit(f"{scores_path}: {len(saved['lengths_seconds'])} lengths, but {len(thresholds)} thresholds")

    def decided(scores):
        return np.nan_to_num(scores[:, :, 0], nan=-np.inf) >= np.asarray(thresholds)

    out = {}
    if len(saved["raw_scores"]):
        hits = hit_rates(
            saved["raw_rows"], saved["query_true_row"], saved["raw_tracks"], saved["query_track"], saved["raw_valid"],
            predicted_offsets=saved["raw_offsets"], true_offsets=saved["query_offset_s"],
            decided=decided(saved["raw_scores"]),
        )
        out["answered right"] = list(hits["answered_right"])
    if len(saved["raw_unknown_scores"]):
        valid = saved["raw_unknown_valid"]
        matched = (decided(saved["raw_unknown_scores"]) & valid).sum(axis=0)
        out["false match"] = list(100.0 * matched / np.maximum(valid.sum(axis=0), 1))
    return out


def main(argv):
    from nnfp.catalogue.calibration import Calibration

    if "--" not in argv:
        raise SystemExit(__doc__)
    split = argv.index("--")
    calibrations = [(Path(path).name, Calibration.load(path)) for path in argv[:split]]
    for scores_path in argv[split + 1 :]:
        lengths = np.load(scores_path)["lengths_seconds"]
        print(f"{scores_path}: " + " | ".join(f"{s:g} s" for s in lengths))
        for name, calibration in calibrations:
            thresholds = [calibration.threshold(s) for s in lengths]
            for metric, values in rates(scores_path, thresholds).items():
                print(f"  {metric:>14} | {name:>28} | " + " | ".join(f"{v:5.1f}" for v in values))


if __name__ == "__main__":
    main(sys.argv[1:])
