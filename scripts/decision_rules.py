#!/usr/bin/env python
"""Decision statistics compared on the ranked answers of scripts/decision_features.py.

    python scripts/decision_rules.py FEATURES.npz [--held-out KIND ...]

For each statistic (the score; the margin over max(best other track, the 0.9 quantile of the
out-of-catalogue rivals); the "lead": that margin plus w x the score's lead over the query's
10th best distinct place, for several w), thresholds are set above every out-of-catalogue
query of the fitted kinds (none may match) and the table prints, per query length:
- kept: in-catalogue queries answered right (track and offset) that pass;
- left out: the worst fitted kind's false-match rate at thresholds fitted on the others
  (each kind left out in turn);
- held out: the worst false-match rate of the `--held-out` kinds (never fitted).
"""

import argparse

import numpy as np

HELD_OUT = ("unknown:music-eval", "unknown:noise-test", "unknown:speech-test")


def features(d, name):
    scores = d[f"{name}/scores"]
    return {"s1": scores[..., 0], "other": d[f"{name}/other"], "s10": scores[..., 9]}


def statistic(f, j, floor, weight):
    if weight is None:
        return f["s1"][:, j]
    lead = f["s1"][:, j] - np.fmax(f["other"][:, j], floor)
    return lead + weight * (f["s1"][:, j] - f["s10"][:, j]) if weight else lead


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("features")
    parser.add_argument("--held-out", nargs="*", default=list(HELD_OUT))
    parser.add_argument("--quantile", type=float, default=0.9)
    args = parser.parse_args(argv)
    d = np.load(args.features)
    lengths = d["lengths"]
    kinds = sorted({k.split("/")[0] for k in d.files if k.startswith("unknown:")})
    held = [k for k in kinds if k in args.held_out]
    fitted = [k for k in kinds if k not in held]
    truth_track, truth_offset = d["known/true_track"], d["known/true_offset_s"]
    right = (d["known/tracks"][..., 0] == truth_track[:, None]) & (
        np.abs(d["known/offsets"][..., 0] - truth_offset[:, None]) <= 0.5)
    feats = {k: features(d, k) for k in kinds}
    known = features(d, "known")

    def floor(j, ks):
        return np.nanquantile(np.concatenate([feats[k]["other"][:, j] for k in ks]), args.quantile)

    def threshold(j, ks, weight):
        fl = floor(j, ks)
        return fl, max(np.nanmax(statistic(feats[k], j, fl, weight)) for k in ks)

    print(f"{len(fitted)} kinds fitted, {len(held)} held out; top-1 right: "
          + " / ".join(f"{100 * r:.1f}" for r in right.mean(0)) + " %")
    print(f"{'statistic':<28} | {'kept':^19} | {'worst left out':^17} | {'worst held out':^17}")
    for label, weight in [("score", None), ("margin", 0.0)] + [(f"lead, w = {w:g}", w) for w in (0.25, 0.5, 1.0)]:
        kept, left, out = [], [], []
        for j in range(len(lengths)):
            fl, th = threshold(j, fitted, weight)
            kept.append(100 * np.mean(right[:, j] & (statistic(known, j, fl, weight) > th)))
            worst = 0.0
            for k in fitted:
                fl2, th2 = threshold(j, [o for o in fitted if o != k], weight)
                worst = max(worst, 100 * np.mean(statistic(feats[k], j, fl2, weight) > th2))
            left.append(worst)
            out.append(max((100 * np.mean(statistic(feats[k], j, fl, weight) > th) for k in held), default=np.nan))
        cells = [" / ".join(f"{v:.1f}" for v in values) for values in (kept, left, out)]
        print(f"{label:<28} | {cells[0]:^19} | {cells[1]:^17} | {cells[2]:^17}")


if __name__ == "__main__":
    main()
