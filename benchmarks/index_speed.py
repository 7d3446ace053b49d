"""`index build` fingerprinting throughput (x real time) of the default model, XLA off vs on.

    python benchmarks/index_speed.py [--minutes 4] [--rounds 3] [--batch-sizes 256] [--model M]

Generated music (`nnfp.corpus.compose_track`) is fingerprinted the way `index build`
does (`nnfp.catalogue.fingerprint.fingerprint_tracks`, 0.5 s hop). Each configuration is compiled and
warmed up once, then the configurations take turns for `--rounds` rounds (interleaved,
so a busy machine slows them alike); the table gives the median throughput and the
largest fingerprint difference from the plain (no XLA) forward pass.
"""

import argparse
import time

import numpy as np


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="audio fingerprinted per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="256", help="comma-separated, e.g. 128,256,512")
    parser.add_argument("--model", default=None, help="default: the packaged model")
    args = parser.parse_args(argv)

    from nnfp.catalogue.fingerprint import fingerprint_tracks, resolve_model
    from nnfp.corpus.synth import compose_track
    from nnfp.export import load_fingerprinter

    rate, hop = 8000, 4000
    path = resolve_model(args.model)
    n_tracks = max(1, int(round(args.minutes / 2)))
    tracks = [compose_track(50 + i, args.minutes * 60 / n_tracks, rate) for i in range(n_tracks)]
    seconds = sum(len(t) for t in tracks) / rate
    configs = [(False, b) for b in map(int, args.batch_sizes.split(","))]
    configs += [(True, b) for b in map(int, args.batch_sizes.split(","))]
    embedders = {c: load_fingerprinter(path, jit_compile=c[0]) for c in configs}
    reference = None
    diffs = {}
    for config, embedder in embedders.items():  # compile + warm up; compare fingerprints
        fingerprints, _, _ = fingerprint_tracks(embedder, tracks[:1], hop, batch_size=config[1])
        if reference is None:
            reference = fingerprints
        diffs[config] = float(np.abs(fingerprints - reference).max())
    speeds = {c: [] for c in configs}
    for _ in range(args.rounds):
        for config, embedder in embedders.items():
            started = time.perf_counter()
            fingerprint_tracks(embedder, tracks, hop, batch_size=config[1])
            speeds[config].append(seconds / (time.perf_counter() - started))
    print(f"index build fingerprinting, {path.name}, {seconds / 60:.1f} min of audio, "
          f"{args.rounds} interleaved rounds (median)")
    print(f"{'XLA':>4} | {'batch':>5} | {'x real time':>11} | {'vs plain':>8} | {'max |diff|':>10}")
    base = {b: np.median(speeds[(False, b)]) for _, b in configs}
    for config in configs:
        xla, batch = config
        median = float(np.median(speeds[config]))
        print(f"{'on' if xla else 'off':>4} | {batch:>5} | {median:>10.0f}x | {median / base[batch]:>7.2f}x | "
              f"{diffs[config]:>10.1e}")


if __name__ == "__main__":
    main()
