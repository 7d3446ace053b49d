#!/usr/bin/env python
"""The same queries with and without a phone: how the top answer's confidence moves, in and
out of the catalogue (MODEL_CARD.md, "Thresholds of their own for phone calls").

    python scripts/phone_confidence.py INDEX [KIND=DIR ...] [--calibration FILE] [--n 300]
        [--lengths 1 3 10] [--noise-dir DIR] [--ir-dir DIR] [--seed 11]

In-catalogue queries are cut from the index's tracks, out-of-catalogue ones from each KIND's
folder (seed + 10 + i), at random times, through a room and noise at 0-10 dB (as `nnfp
evaluate` makes them); each is searched as it is and after `nnfp.catalogue.queries.phone_call`
(the same cut, room and noise). Prints, per length: right track + offset, answered right, the
median confidence of the right answers; per kind, the 99th percentile and the highest top
confidence and the false-match rate; and the share of energy above 3.2 kHz (of that above 300 Hz).
"""

import argparse

import numpy as np


def top_answers(identifier, waves, lengths):
    """Per query and length: (track, offset, confidence, answered) of the top answer (NaN: none),
    as `nnfp identify` ranks and decides it (`nnfp.catalogue.metrics.run_queries`)."""
    from nnfp.catalogue.metrics import run_queries

    raw = run_queries(identifier, waves, lengths, progress=False)
    out = np.stack([raw["tracks"][..., 0], raw["offsets"][..., 0], raw["confidences"][..., 0], raw["decided"]], -1)
    out = out.astype(float)
    out[raw["tracks"][..., 0] < 0] = np.nan  # no answer at that length
    return out


def high_band_share(waves, sample_rate, seconds):
    """Median share of spectral energy above 3.2 kHz in that above 300 Hz (first `seconds`)."""
    shares = []
    for wave in waves:
        x = np.asarray(wave[: int(seconds * sample_rate)], np.float64)
        power = np.abs(np.fft.rfft(x)) ** 2
        freq = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
        shares.append(power[freq > 3200].sum() / max(power[freq > 300].sum(), 1e-20))
    return float(np.median(shares))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("index")
    parser.add_argument("kinds", nargs="*", metavar="KIND=DIR")
    parser.add_argument("--calibration", default=None, help="a calibration file (default: the index's)")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--lengths", type=float, nargs="+", default=[1, 3, 10])
    parser.add_argument("--noise-dir", default=None)
    parser.add_argument("--ir-dir", default=None)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)

    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.queries import degradation_settings, index_queries, phone_call

    identifier = Identifier(args.index, calibration=args.calibration)
    rate = identifier.sample_rate
    degradation = degradation_settings(identifier, (0.0, 10.0), args.noise_dir, args.ir_dir, None, True, True)
    lengths = args.lengths
    print("lengths:", " / ".join(f"{s:g} s" for s in lengths), "| each cell: without / with a phone")

    def both(waves, seed):
        phoned = phone_call(waves, rate, seed)
        return [top_answers(identifier, w, lengths) for w in (waves, phoned)], [
            high_band_share(w, rate, min(lengths)) for w in (waves, phoned)]

    def cells(values, digits=3):
        return " | ".join(f"{a:.{digits}f} / {b:.{digits}f}" for a, b in zip(*values, strict=True))

    waves, info = index_queries(identifier, args.n, max(lengths), degradation, args.seed, False)
    (plain, phoned), shares = both(waves, args.seed)
    rights, answered, medians = [], [], []
    for answers in (plain, phoned):
        right = (answers[..., 0] == info["track"][:, None]) & (
            np.abs(answers[..., 1] - info["offset_s"][:, None]) <= 0.5)
        rights.append(100 * right.mean(0))
        answered.append(100 * (right & (answers[..., 3] == 1)).mean(0))
        medians.append([np.median(answers[right[:, j], j, 2]) if right[:, j].any() else np.nan
                        for j in range(len(lengths))])
    print(f"in the catalogue ({args.n}): right track + offset %", cells(rights, 1))
    print("  answered right %", cells(answered, 1))
    print("  median confidence of the right answers", cells(medians))
    print(f"  energy above 3.2 kHz / above 300 Hz (median): {shares[0]:.4%} / {shares[1]:.4%}")
    for i, spec in enumerate(args.kinds):
        kind, folder = spec.split("=", 1)
        seed = args.seed + 10 + i
        waves, _ = index_queries(identifier, args.n, max(lengths), degradation, seed, False, unknown_dir=folder)
        (plain, phoned), _ = both(waves, seed)
        pairs = (plain, phoned)
        print(f"{kind} ({args.n}): 99th percentile of the top confidence",
              cells([np.nanquantile(a[..., 2], 0.99, axis=0) for a in pairs]))
        print("  highest", cells([np.nanmax(a[..., 2], axis=0) for a in pairs]))
        print("  false matches %", cells([100 * (a[..., 3] == 1).mean(0) for a in pairs], 1))


if __name__ == "__main__":
    main()
