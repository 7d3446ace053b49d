"""What the speed search costs a query: `identify` latency with the grid and at one speed, side by side.

    python benchmarks/speeds.py INDEX [--queries 30] [--lengths 1 3 10] [--seed 0]

Queries are cut at random times from the index's tracks, through a generated room and noise at
0-10 dB SNR (`nnfp evaluate`'s degradation), and identified twice each, alternating which goes
first: with the index's speed search (the speeds its calibration was fitted with, else
`nnfp.defaults.DEFAULT_SPEEDS`) and with `speeds=None` (one speed), sharing one loaded index and
model. Latency is `Identifier.identify_audio` (fingerprints at every grid speed and phase, search,
decision), single-thread faiss. The table prints medians and the median of the per-query ratios:
on a shared machine the ratio is the number to read.
"""

import argparse
import time

import numpy as np

from nnfp.catalogue.identify import Identifier
from nnfp.catalogue.queries import degradation_settings, index_queries


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--lengths", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    grid = Identifier(args.index)
    one = Identifier(args.index, db=grid.db, embedder=grid.embedder, speeds=None)
    degradation = degradation_settings(grid, (0.0, 10.0), None, None, None, True, True)
    waveforms, _ = index_queries(grid, args.queries, max(args.lengths), degradation, args.seed, aligned=False)
    rate = grid.sample_rate
    grid.identify_audio(waveforms[0][: int(rate * max(args.lengths))])  # warm-up: model, caches
    one.identify_audio(waveforms[0][: int(rate * max(args.lengths))])

    print(f"{args.index}: {grid.db.n_segments} segments; {args.queries} queries per length; speeds {grid.speeds}")
    print(f"{'query':>6} | {'speeds':>6} | {'one speed ms':>12} | {'grid ms':>8} | {'grid / one':>10}")
    for seconds in args.lengths:
        times = {"one": [], "grid": []}
        for q, wave in enumerate(waveforms):
            clip = np.asarray(wave[: int(round(seconds * rate))], np.float32)
            order = (("one", one), ("grid", grid)) if q % 2 == 0 else (("grid", grid), ("one", one))
            for name, identifier in order:
                start = time.perf_counter()
                identifier.identify_audio(clip)
                times[name].append(1000 * (time.perf_counter() - start))
        ratio = np.median(np.asarray(times["grid"]) / np.asarray(times["one"]))
        print(f"{seconds:>5g}s | {len(grid.speed_grid(seconds)):>6} | {np.median(times['one']):>12.0f} | "
              f"{np.median(times['grid']):>8.0f} | {ratio:>9.2f}x")


if __name__ == "__main__":
    main()
