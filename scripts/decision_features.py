#!/usr/bin/env python
"""Ranked answers of in-catalogue and out-of-catalogue queries, per kind, for choosing the
decision statistic (issue: a decision rule that holds on kinds it was not fitted on).

    python scripts/decision_features.py INDEX OUT.npz --known 300 --unknown KIND=DIR ... \
        [--generated 300] [--noise-dir DIR --ir-dir DIR] [--speeds off|LO:HI] [--seed 0]

Every query is cut at a random time, played through a room and mixed with noise at 0-10 dB
(`nnfp.catalogue.queries.synthesize_queries`), and ranked at 1, 3 and 10 s with no
threshold (`run_queries`): the top-10 distinct places (track, offset, score, speed) are saved
per kind. `--generated N` adds N queries of each generated kind (`nnfp.corpus.signals`).
"""

import argparse
import sys

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("index")
    parser.add_argument("out")
    parser.add_argument("--known", type=int, default=300)
    parser.add_argument("--unknown", nargs="*", default=[], metavar="KIND=DIR")
    parser.add_argument("--n-unknown", type=int, default=300)
    parser.add_argument("--generated", type=int, default=0)
    parser.add_argument("--noise-dir", default=None)
    parser.add_argument("--ir-dir", default=None)
    parser.add_argument("--speeds", default="off")
    parser.add_argument("--lengths", type=float, nargs="+", default=[1, 3, 10])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.metrics import run_queries
    from nnfp.catalogue.queries import degradation_settings, index_queries
    from nnfp.catalogue.speeds import parse_speeds

    speeds = parse_speeds(args.speeds)
    identifier = Identifier(args.index, min_score=None, speeds=None if speeds == "auto" else speeds)
    degradation = degradation_settings(identifier, (0.0, 10.0), args.noise_dir, args.ir_dir, None, True, True)
    seconds = max(args.lengths)
    out = {"lengths": np.asarray(args.lengths)}

    def run(name, waves, info=None):
        raw = run_queries(identifier, waves, args.lengths, progress=False)
        for key in ("tracks", "offsets", "scores", "speeds", "valid"):
            out[f"{name}/{key}"] = raw[key]
        # the best score of any other track among the first 100 distinct places (NaN: none)
        other = np.full(raw["scores"].shape[:2], np.nan)
        for q, wave in enumerate(waves):
            try:
                query = identifier.query(wave)
            except ValueError:
                continue
            for j, seconds in enumerate(args.lengths):
                matches = identifier.rank_query(query, n_results=100, max_seconds=seconds)
                if matches:
                    others = [m.score for m in matches if m.track_id != matches[0].track_id]
                    other[q, j] = max(others) if others else np.nan
        out[f"{name}/other"] = other
        if info is not None:
            for key in ("track", "offset_s", "snr_db"):
                out[f"{name}/true_{key}"] = info[key]
        print(f"{name}: {len(waves)} queries", file=sys.stderr, flush=True)

    if args.known:
        waves, info = index_queries(identifier, args.known, seconds, degradation, args.seed, aligned=False)
        run("known", waves, info)
    for i, spec in enumerate(args.unknown):
        kind, folder = spec.split("=", 1)
        waves, _ = index_queries(identifier, args.n_unknown, seconds, degradation, args.seed + 1 + i,
                                 aligned=False, unknown_dir=folder)
        run(f"unknown:{kind}", waves)
    if args.generated:
        from nnfp.corpus.signals import GENERATED_KINDS, make_signal

        rate = identifier.sample_rate
        for j, kind in enumerate(GENERATED_KINDS):
            rng = np.random.default_rng([args.seed, 100 + j])
            durations = {i: seconds + 1.0 for i in range(args.generated)}
            sources = {i: make_signal(kind, int(rng.integers(1 << 30)), seconds + 1.0, rate) for i in durations}
            from nnfp.catalogue.queries import synthesize_queries

            waves, _ = synthesize_queries(
                durations, sources.__getitem__, None, args.generated, seconds=seconds,
                hop_seconds=identifier.db.hop_seconds, sample_rate=rate, seed=args.seed + 50 + j, **degradation,
            )
            run(f"unknown:gen-{kind}", waves)
    np.savez_compressed(args.out, **out)


if __name__ == "__main__":
    main()
