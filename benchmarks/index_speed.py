"""`index build` fingerprinting throughput (x real time) of the default model, XLA off vs on.

    python benchmarks/index_speed.py [--minutes 4] [--rounds 3] [--batch-sizes 256] [--call-rows 16,256]
                                     [--default-threads] [--model M]

`--call-rows` compares model calls of 16 rows, one per core at once (what nnfp does), with
one call of the whole 256-segment step at a time (what it did before). Like the `nnfp`
fingerprinting commands, the process gives each TensorFlow op one thread, unless
`--default-threads` (TensorFlow's default: every op over all cores, as in training).

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
    parser.add_argument("--call-rows", default="16,256", help="rows per model call, comma-separated, e.g. 16,256")
    parser.add_argument("--default-threads", action="store_true", help="keep TensorFlow's threads per op")
    parser.add_argument("--model", default=None, help="default: the packaged model")
    args = parser.parse_args(argv)

    import nnfp.runtime as runtime

    if not args.default_threads:
        runtime.use_inference_threads()

    from nnfp.catalogue.fingerprint import fingerprint_tracks, resolve_model
    from nnfp.corpus.synth import compose_track
    from nnfp.runtime import load_fingerprinter

    rate, hop = 8000, 4000
    path = resolve_model(args.model)
    n_tracks = max(1, int(round(args.minutes / 2)))
    tracks = [compose_track(50 + i, args.minutes * 60 / n_tracks, rate) for i in range(n_tracks)]
    seconds = sum(len(t) for t in tracks) / rate
    batches = [int(b) for b in args.batch_sizes.split(",")]
    calls = [int(r) for r in args.call_rows.split(",")]
    configs = [(xla, b, r) for xla in (False, True) for b in batches for r in calls]
    loaded = {xla: load_fingerprinter(path, jit_compile=xla) for xla in (False, True)}
    embedders = {c: loaded[c[0]] for c in configs}
    reference = None
    diffs = {}
    def run(config, some_tracks):
        runtime.CALL_ROWS = config[2]
        return fingerprint_tracks(embedders[config], some_tracks, hop, batch_size=config[1])

    for config in configs:  # compile + warm up; compare fingerprints
        fingerprints, _, _ = run(config, tracks[:1])
        if reference is None:
            reference = fingerprints
        diffs[config] = float(np.abs(fingerprints - reference).max())
    speeds = {c: [] for c in configs}
    for _ in range(args.rounds):
        for config in configs:
            started = time.perf_counter()
            run(config, tracks)
            speeds[config].append(seconds / (time.perf_counter() - started))
    threads = "TensorFlow's default threads" if args.default_threads else "one thread per op (as the CLI)"
    print(f"index build fingerprinting, {path.name}, {seconds / 60:.1f} min of audio, "
          f"{args.rounds} interleaved rounds (median), {threads}, {runtime.inference_workers()} calls at once")
    print(f"{'XLA':>4} | {'batch':>5} | {'call rows':>9} | {'x real time':>11} | {'vs plain':>8} | {'max |diff|':>10}")
    for config in configs:
        xla, batch, rows = config
        median = float(np.median(speeds[config]))
        base = float(np.median(speeds[(False, batch, rows)]))
        print(f"{'on' if xla else 'off':>4} | {batch:>5} | {rows:>9} | {median:>10.0f}x | {median / base:>7.2f}x | "
              f"{diffs[config]:>10.1e}")


if __name__ == "__main__":
    main()
