#!/usr/bin/env python
"""The lead's weight and rival-floor quantile, scanned on the queries of one calibration.

    python scripts/decision_scan.py SCORES.npz [--weights 0.25 0.5 1 1.5] [--quantiles 0.5 0.6 0.8 0.9]

SCORES.npz is a calibration's `scores_out` (`calibrate_index(..., scores_out=...)`): the ranked
answers of its in-catalogue and out-of-catalogue queries. For each (weight, quantile) the
confidences are recomputed as `calibrate_index` computes them (the margin over max(best other
track, the quantile of the out-of-catalogue rivals) plus weight x the lead over the 10th best
place), `nnfp.catalogue.calibration.calibrate` fits the thresholds (with the off-speed margin
when the answers record their speeds), and the table prints per length the right answers kept
and the worst and mean false-match rate of a kind left out of the fit in turn (margin refitted).
"""

import argparse

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scores")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.5])
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.5, 0.6, 0.8, 0.9])
    args = parser.parse_args(argv)

    from nnfp.catalogue.calibration import LEGACY_LEAD_WEIGHT, calibrate
    from nnfp.catalogue.identify import IMPOSTOR_PLACES

    data = np.load(args.scores)
    lengths = [float(x) for x in data["lengths_s"]]
    names = ["known", *sorted(k[: -len("/scores")] for k in data.files if k.startswith("unknown:") and k.endswith("/scores"))]
    right = data["known/right"]

    def parts(name):  # score, rival (no floor), score - impostor level (0 without one), found at another speed
        scores = data[f"{name}/scores"]
        ranked = -np.sort(-np.where(np.isfinite(scores), scores, -np.inf), axis=-1)[..., IMPOSTOR_PLACES - 1]
        lift = np.where(np.isfinite(ranked), scores[..., 0] - ranked, 0.0)
        weight = data[f"{name}/lead_weight"] if f"{name}/lead_weight" in data.files else np.full(len(scores), LEGACY_LEAD_WEIGHT)
        rival = scores[..., 0] - data[f"{name}/confidences"][..., 0] + weight[:, None] * lift
        found = data[f"{name}/found_speeds"][..., 0]
        return scores[..., 0], rival, lift, np.isfinite(found) & (np.abs(found - 1.0) > 1e-9)

    split = {name: parts(name) for name in names}
    unknown = names[1:]
    searched = any(split[n][3].any() for n in names)
    print(f"{len(right)} in-catalogue queries, {', '.join(f'{n[8:]} {len(split[n][0])}' for n in unknown)}; "
          f"top-1 right {' / '.join(f'{100 * r:.1f}' for r in right.mean(0))} % at {' / '.join(f'{x:g}' for x in lengths)} s")
    print(f"{'weight':>6} {'quantile':>8} | {'right kept, %':^27} | {'worst kind left out, %':^27} | {'mean left out, %':^27}")
    for weight in args.weights:
        for quantile in args.quantiles:
            floors = np.nanquantile(np.concatenate([split[n][1] for n in unknown]), quantile, axis=0)

            def confidence(name, weight=weight, floors=floors):
                score, rival, lift, _ = split[name]
                return score - np.maximum(rival, floors) + weight * lift

            cal = calibrate(
                lengths, confidence("known"), right, {n: confidence(n) for n in unknown},
                known_off_speed=split["known"][3] if searched else None,
                unknown_off_speed={n: split[n][3] for n in unknown} if searched else None,
            )
            left = np.array(list(cal.info["leave_one_kind_out"].values())) * 100

            def row(values):
                return " / ".join(f"{v:5.1f}" for v in values)

            print(f"{weight:>6g} {quantile:>8g} | {row(100 * np.array(cal.info['right_kept']))} | "
                  f"{row(left.max(0))} | {row(left.mean(0))}")


if __name__ == "__main__":
    main()
