"""Median training-step time of the demo (small) and paper configs on this machine.

    python benchmarks/train_step.py [--steps 12] [--batch-size 120]

Runs both models on synthetic (anchor, replica) waveforms with the full train_step
(mel, SpecAugment, forward, NT-Xent, backward, optimizer), interleaving the two
configs so that machine noise hits both alike, and prints a table of medians.
"""

import argparse
import time

import keras
import numpy as np


def _model(config):
    from nnfp.training import build_loss, build_model, build_optimizer

    model = build_model(config)
    model.compile(optimizer=build_optimizer(config, 1000), loss=build_loss(config))
    return model


def main():
    import tensorflow as tf

    from nnfp.config import CONFIG_DIR, load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=120, help="N for both configs (paper: 120)")
    args = parser.parse_args()
    half = args.batch_size // 2
    configs = {
        "demo (width 0.25)": load_config(CONFIG_DIR / "demo.yaml", [f"train.batch_size={args.batch_size}", f"train.n_anchors={half}"]),
        "paper (width 1.0)": load_config(None, [f"train.batch_size={args.batch_size}", f"train.n_anchors={half}"]),
    }
    rng = np.random.default_rng(0)
    anchors = tf.constant(rng.standard_normal((half, 8000)).astype("float32"))
    replicas = tf.constant(rng.standard_normal((half, 8000)).astype("float32"))
    models, steps, times = {}, {}, {name: [] for name in configs}
    for name, config in configs.items():
        models[name] = _model(config)
        steps[name] = tf.function(models[name].train_step)
        for _ in range(2):  # trace and warm up
            steps[name]((anchors, replicas))
    for _ in range(args.steps):
        for name in configs:
            start = time.perf_counter()
            logs = steps[name]((anchors, replicas))
            float(logs["loss"])  # wait for the step
            times[name].append(time.perf_counter() - start)
    print(f"batch N={args.batch_size}, {args.steps} steps each, threads={tf.config.threading.get_intra_op_parallelism_threads() or 'all'}")
    print(f"{'config':<20} {'params':>12} {'median s/step':>14} {'p90 s/step':>11} {'samples/s':>10}")
    base = None
    for name in configs:
        median = float(np.median(times[name]))
        base = base or median
        print(
            f"{name:<20} {models[name].count_params():>12,} {median:>14.3f} "
            f"{np.percentile(times[name], 90):>11.3f} {args.batch_size / median:>10.1f}  (x{median / base:.1f})"
        )


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
