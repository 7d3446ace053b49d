"""Median training-step time of the demo (small) and paper configs, with and without XLA.

    python benchmarks/train_step.py [--steps 12] [--batch-size 120] [--no-paper]

Runs the models on synthetic (anchor, replica) waveforms with the full train_step
(mel, SpecAugment, forward, NT-Xent, backward, optimizer), each compiled as a plain
`tf.function` graph and with XLA (`jit_compile=True`, what `train.jit_compile: true`
gives `model.compile`; Keras' default "auto" turns XLA off on CPU-only machines),
interleaving all variants so that machine noise hits them alike, and prints a table
of medians with the XLA speed-up measured side by side.
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
    parser.add_argument("--no-paper", action="store_true", help="only the demo config")
    args = parser.parse_args()
    half = args.batch_size // 2
    configs = {
        "demo (width 0.25)": load_config(CONFIG_DIR / "demo.yaml", [f"train.batch_size={args.batch_size}", f"train.n_anchors={half}"]),
        "paper (width 1.0)": load_config(None, [f"train.batch_size={args.batch_size}", f"train.n_anchors={half}"]),
    }
    rng = np.random.default_rng(0)
    anchors = tf.constant(rng.standard_normal((half, 8000)).astype("float32"))
    replicas = tf.constant(rng.standard_normal((half, 8000)).astype("float32"))
    if args.no_paper:
        configs.pop("paper (width 1.0)")
    variants = [(name, jit) for name in configs for jit in (False, True)]
    models, steps, times = {}, {}, {v: [] for v in variants}
    for name, jit in variants:
        models[name, jit] = _model(configs[name])
        steps[name, jit] = tf.function(models[name, jit].train_step, jit_compile=jit)
        for _ in range(2):  # trace and warm up
            steps[name, jit]((anchors, replicas))
    for _ in range(args.steps):
        for variant in variants:
            start = time.perf_counter()
            logs = steps[variant]((anchors, replicas))
            float(logs["loss"])  # wait for the step
            times[variant].append(time.perf_counter() - start)
    print(f"batch N={args.batch_size}, {args.steps} steps each, threads={tf.config.threading.get_intra_op_parallelism_threads() or 'all'}")
    print(f"{'config':<20} {'XLA':>4} {'params':>12} {'median s/step':>14} {'p90 s/step':>11} {'samples/s':>10}  speed-up")
    for name, jit in variants:
        median = float(np.median(times[name, jit]))
        base = float(np.median(times[name, False]))
        print(
            f"{name:<20} {'on' if jit else 'off':>4} {models[name, jit].count_params():>12,} {median:>14.3f} "
            f"{np.percentile(times[name, jit], 90):>11.3f} {args.batch_size / median:>10.1f}  x{base / median:.2f}"
        )

if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    main()
