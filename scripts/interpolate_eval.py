#!/usr/bin/env python
"""Interpolated re-ranking (`--interpolate`) against the DB rows only, on the queries of `nnfp evaluate`.

    python scripts/interpolate_eval.py INDEX [--seed 0] [--n-queries 300] [--clean] [--aligned]
        [--unknown-dir DIR] [--interpolate 1 2 4] [--phases 4]

Makes the queries of `nnfp evaluate` (same seed, degradation and random cuts; noise and
rooms from `--noise-dir` / `--ir-dir` unless `--clean`) and the same number from the
unknown music of `--unknown-dir`, fingerprints every query's phases once, then runs
`nnfp.catalogue.metrics.run_queries` for each `interpolate` value on those
fingerprints. Prints right track + offset, answered right and false matches (the index's
calibrated thresholds) per length, and the median search time. Used for MODEL_CARD.md.
Only one-phase queries (1 s at 4 phases) are interpolated, so only the 1 s column moves.
"""

import argparse

import numpy as np

LENGTHS = (1, 2, 3, 5, 6, 10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--clean", action="store_true")
    parser.add_argument("--aligned", action="store_true", help="cut queries on the index hop grid")
    parser.add_argument("--phases", type=int, default=4)
    parser.add_argument("--interpolate", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--unknown-dir")
    parser.add_argument("--noise-dir", default="data/eval/noise-test")
    parser.add_argument("--ir-dir", default="data/irs-test")
    args = parser.parse_args()

    from nnfp.runtime import use_inference_threads

    use_inference_threads()
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.metrics import hit_rates, run_queries
    from nnfp.catalogue.queries import degradation_settings, index_queries

    identifier = Identifier(args.index, phases=args.phases)
    noisy = not args.clean
    degradation = degradation_settings(identifier, (0.0, 10.0), args.noise_dir, args.ir_dir, None, noisy, noisy)
    waves, info = index_queries(identifier, args.n_queries, max(LENGTHS), degradation, args.seed, args.aligned)
    waves = [np.asarray(w, np.float32) for w in waves]
    unknown = []
    if args.unknown_dir:
        unknown, _ = index_queries(identifier, args.n_queries, max(LENGTHS), degradation, args.seed + 1, args.aligned,
                                   unknown_dir=args.unknown_dir)
        unknown = [np.asarray(w, np.float32) for w in unknown]
    cache = {}
    fingerprint = identifier.phase_fingerprints

    def cached(audio, name="query"):
        key = id(audio)
        if key not in cache:
            cache[key] = fingerprint(audio, name=name)
        return cache[key]

    identifier.phase_fingerprints = cached
    print(f"{len(waves)} {'clean' if args.clean else 'noisy'}{' aligned' if args.aligned else ''} queries (seed {args.seed}), phases {args.phases}, "
          f"{len(unknown)} unknown; % at " + " / ".join(f"{s:g} s" for s in LENGTHS))
    for value in args.interpolate:
        identifier.interpolate = value
        raw = run_queries(identifier, waves, LENGTHS, progress=False)
        rates = hit_rates(raw["rows"], info["true_row"], raw["tracks"], info["track"], raw["valid"],
                          predicted_offsets=raw["offsets"], true_offsets=info["offset_s"], decided=raw["decided"])
        line = lambda v: " / ".join(f"{x:5.1f}" for x in v)  # noqa: E731
        print(f"interpolate {value}: right track + offset {line(rates['offset_top1'])}")
        print(f"{'':15}right track          {line(rates['song_top1'])}")
        print(f"{'':15}answered right       {line(rates['answered_right'])}")
        if unknown:
            u = run_queries(identifier, unknown, LENGTHS, progress=False)
            print(f"{'':15}false match          {line(100 * (u['decided'] & u['valid']).mean(axis=0))}")
        print(f"{'':15}median search ms     {np.median(raw['search_ms']):.2f}")


if __name__ == "__main__":
    main()
