#!/usr/bin/env python
"""False-match rate per kind of out-of-catalogue audio, with the index's calibrated decision.

    python scripts/false_matches.py INDEX KIND=DIR [KIND=DIR ...] [--n 300] [--lengths 1 3 10]
        [--noise-dir DIR] [--ir-dir DIR] [--seed 7] [--phone]

Queries are cut at random times from the files of each folder, played through a room and
mixed with noise at 0-10 dB (as `nnfp evaluate` makes them), and identified as `nnfp identify`
does; a query that gets a match is a false match. `--phone`: each query, after its room and
noise, also goes through a phone (`nnfp.catalogue.queries.phone_call`, as `nnfp evaluate --phone`). Prints, per kind and length, the rate and
its one-sided 95 % Clopper-Pearson upper bound.
"""

import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("index")
    parser.add_argument("kinds", nargs="+", metavar="KIND=DIR")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--lengths", type=float, nargs="+", default=[1, 3, 10])
    parser.add_argument("--noise-dir", default=None)
    parser.add_argument("--ir-dir", default=None)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--phone", action="store_true", help="send every query through a phone")
    args = parser.parse_args(argv)

    from nnfp.catalogue.calibration import binomial_upper_bound
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.metrics import run_queries
    from nnfp.catalogue.queries import degradation_settings, index_queries, phone_call

    identifier = Identifier(args.index)
    degradation = degradation_settings(identifier, (0.0, 10.0), args.noise_dir, args.ir_dir, None, True, True)
    print(f"decision: {identifier.decision}, speeds: {identifier.speeds}, phone: {'yes' if args.phone else 'no'}, "
          "thresholds: "
          + ", ".join(f"{s:g} s {identifier.match_threshold(s):.4f}" for s in args.lengths))
    header = f"{'kind':>22} " + " ".join(f"{f'{s:g} s':>18}" for s in args.lengths)
    print(header)
    for i, spec in enumerate(args.kinds):
        kind, folder = spec.split("=", 1)
        waves, _ = index_queries(identifier, args.n, max(args.lengths), degradation, args.seed + i,
                                 aligned=False, unknown_dir=folder)
        if args.phone:
            waves = phone_call(waves, identifier.sample_rate, args.seed + i)
        raw = run_queries(identifier, waves, args.lengths, progress=False)
        cells = []
        for j in range(len(args.lengths)):
            n = int(raw["valid"][:, j].sum())
            k = int((raw["decided"][:, j] & raw["valid"][:, j]).sum())
            cells.append(f"{100 * k / max(n, 1):5.1f}% (<= {100 * binomial_upper_bound(k, n):4.1f}%)")
        print(f"{kind:>22} " + " ".join(f"{c:>18}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
