"""Training-step time of a config with and without XLA, in float32 and mixed_bfloat16, per thread setting.

    python benchmarks/train_step.py [--config demo.yaml default.yaml] [--precision float32 mixed_bfloat16]
        [--xla off on] [--threads default intra=1 onednn=off] [--steps 10] [--batch-size N]

Each variant is the model's real training step as `model.fit` runs it: `model.compile`
(with `jit_compile` on or off; Keras' default "auto" turns XLA off on CPU-only machines,
`train.jit_compile: true` turns it on) and the compiled `make_train_function`, fed from a
`tf.data` iterator that repeats one synthetic batch of (anchor, replica) waveforms: mel front
end, SpecAugment, forward, NT-Xent, backward, optimizer. `--precision` builds the model
with `train.precision` (float32 or mixed_bfloat16). Every model of a config starts from
the same weights (same seed), so the loss after the steps compares the precisions.

Thread settings need their own process (TensorFlow reads them once): each `--threads`
entry is a worker process holding all its variants (`default`: TensorFlow's own; `intra=N`,
`inter=N`: its op thread pools; `onednn=off`: TF_ENABLE_ONEDNN_OPTS=0; join with commas).
The workers take turns, one step at a time, so the variants are interleaved across
processes too and machine noise hits them alike. Prints, per config, the median, min and
max seconds per step and the speed-up against float32 without XLA in the first thread
setting, both as the ratio of medians and as the median of the per-round ratios
(measured side by side), the loss of the first and the last step, and whether the
fingerprints came out float32 and unit-length.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_PROTOCOL = "@@ "  # worker lines for the parent; TensorFlow and Keras write what they like around them


def _config_path(name):
    from nnfp.config import CONFIG_DIR

    path = Path(name)
    return path if path.is_file() else CONFIG_DIR / path.with_suffix(".yaml").name


def _thread_setting(spec):
    """`default` | `intra=N,inter=M,onednn=off` -> dict; raises ValueError on anything else."""
    setting = {}
    for item in spec.split(",") if spec != "default" else ():
        key, _, value = item.partition("=")
        if key in ("intra", "inter") and value.isdigit():
            setting[key] = int(value)
        elif key == "onednn" and value in ("on", "off"):
            setting[key] = value
        else:
            raise ValueError(f"--threads expects default or intra=N,inter=N,onednn=on|off. Received: {spec!r}")
    return setting


# ------------------------------------------------------------------ worker (one thread setting)


def _send(message):
    print(_PROTOCOL + json.dumps(message), flush=True)


def _worker(args):
    import tensorflow as tf

    setting = _thread_setting(args.worker)
    if "intra" in setting:
        tf.config.threading.set_intra_op_parallelism_threads(setting["intra"])
    if "inter" in setting:
        tf.config.threading.set_inter_op_parallelism_threads(setting["inter"])
    import keras

    from nnfp.config import load_config
    from nnfp.training import build_loss, build_model, build_optimizer

    variants, steps, models, batches = [], {}, {}, {}
    for name in args.config:
        config = load_config(_config_path(name), args.overrides)
        batches[name] = [config["train"]["batch_size"], config["train"]["n_anchors"]]
        half = config["train"]["n_anchors"]
        n_replicas = config["train"]["batch_size"] - half
        segment_samples = int(round(config["frontend"]["segment_seconds"] * config["frontend"]["sample_rate"]))
        rng = np.random.default_rng(args.seed)
        anchors = (0.1 * rng.standard_normal((half, segment_samples))).astype("float32")
        # Replicas: their anchor (tiled) in noise at 0 dB, so the loss has something to learn.
        replicas = np.resize(anchors, (n_replicas, anchors.shape[1]))
        replicas = (replicas + 0.1 * rng.standard_normal(replicas.shape)).astype("float32")
        batch = tf.data.Dataset.from_tensors((anchors, replicas)).repeat()
        for precision in args.precision:
            for xla in args.xla:
                config["train"]["precision"] = precision
                keras.utils.set_random_seed(args.seed)  # same weights and SpecAugment draws for every variant
                model = build_model(config)
                model.compile(optimizer=build_optimizer(config, 1000), loss=build_loss(config), jit_compile=xla == "on")
                variant = (name, precision, xla)
                models[variant] = model
                model.make_train_function()
                steps[variant] = (model.train_function, iter(batch))
                variants.append(variant)
    losses = {v: [] for v in variants}

    def step(variant):
        function, iterator = steps[variant]
        models[variant].reset_metrics()  # the logged loss is this step's, not a running mean
        start = time.perf_counter()
        logs = function(iterator)
        loss = float(logs["loss"])  # waits for the step
        seconds = time.perf_counter() - start
        losses[variant].append(loss)
        return seconds, loss

    compile_seconds = {}
    for variant in variants:
        compile_seconds[variant] = step(variant)[0]  # trace (and XLA compile)
        step(variant)
    _send({"ready": [[list(v), models[v].count_params(), compile_seconds[v]] for v in variants], "batches": batches})
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        seconds, loss = step(variants[int(command[1])])
        _send({"seconds": seconds, "loss": loss})
    checks = []
    for variant in variants:
        model = models[variant]
        x = np.random.default_rng(1).standard_normal((4, model.segment_samples)).astype("float32")
        embeddings = model.predict_on_batch(x)  # compiled as the step was (XLA or not)
        norms = np.linalg.norm(embeddings, axis=1)
        checks.append([list(variant), embeddings.dtype.name, float(np.max(np.abs(norms - 1.0))), losses[variant]])
    _send({"checks": checks})


# ------------------------------------------------------------------ parent


class _Worker:
    def __init__(self, spec, args):
        setting = _thread_setting(spec)
        env = dict(os.environ)
        if setting.get("onednn") == "off":
            env["TF_ENABLE_ONEDNN_OPTS"] = "0"
        command = [sys.executable, __file__, "--worker", spec, "--seed", str(args.seed),
                   "--config", *args.config, "--precision", *args.precision, "--xla", *args.xla]
        if args.overrides:
            command += ["--set", *args.overrides]
        self.spec = spec
        self.log = tempfile.TemporaryFile("w+")  # TensorFlow's chatter; shown if the worker fails
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
        )

    def read(self):
        for line in self.process.stdout:
            if line.startswith(_PROTOCOL):
                return json.loads(line[len(_PROTOCOL):])
        self.log.seek(0)
        tail = "".join(self.log.readlines()[-15:])
        raise RuntimeError(f"worker {self.spec!r} ended (exit status {self.process.wait()}):\n{tail}")

    def send(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()


def _variant_name(precision, xla, spec):
    return f"{precision} {'XLA' if xla == 'on' else 'plain'}" + ("" if spec == "default" else f" [{spec}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", nargs="+", default=["demo.yaml", "default.yaml"],
                        help="YAMLs in configs/ or paths (default: the demo and the paper config)")
    parser.add_argument("--precision", nargs="+", choices=("float32", "mixed_bfloat16"),
                        default=["float32", "mixed_bfloat16"])
    parser.add_argument("--xla", nargs="+", choices=("off", "on"), default=["off", "on"])
    parser.add_argument("--threads", nargs="+", default=["default"],
                        help="one worker process each: default | intra=N,inter=N,onednn=off")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, help="N (anchors + replicas, half each); default: the config's")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.batch_size=120 train.n_anchors=60")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_size:
        args.overrides += [f"train.batch_size={args.batch_size}", f"train.n_anchors={args.batch_size // 2}"]
    if args.worker is not None:
        return _worker(args)
    for spec in args.threads:
        _thread_setting(spec)

    started = time.perf_counter()
    workers, ready = [], []
    for spec in args.threads:  # one at a time, so the compile times are not shared
        workers.append(_Worker(spec, args))
        message = workers[-1].read()
        ready.append(message["ready"])
    batches = message["batches"]
    # (worker, index in the worker, config, precision, xla)
    variants = [(w, i, *variant) for w, listing in enumerate(ready) for i, (variant, _, _) in enumerate(listing)]
    times = {v: [] for v in variants}
    for _ in range(args.steps):
        for variant in variants:
            workers[variant[0]].send(f"step {variant[1]}")
            times[variant].append(workers[variant[0]].read()["seconds"])
    checks = []
    for worker in workers:
        worker.send("quit")
        checks.append(worker.read()["checks"])
        worker.process.wait()

    print(f"{args.steps} timed steps per variant after 2 warm-up steps, interleaved; {os.cpu_count()} CPUs; "
          f"{time.perf_counter() - started:.0f} s in all")
    for name in args.config:
        rows = [v for v in variants if v[2] == name]
        base = next((v for v in rows if v[3] == "float32" and v[4] == "off"), rows[0])
        params = ready[base[0]][base[1]][1]
        print(f"\n{name}: N={batches[name][0]} ({batches[name][1]} anchors), {params:,} parameters; "
              f"speed-up against {_variant_name(base[3], base[4], args.threads[base[0]])}")
        header = (f"{'variant':<34} {'median s/step':>13} {'min':>7} {'max':>7} {'speed-up':>8} {'paired':>7} "
                  f"{'1st step s':>10}  {'loss step 1 -> ' + str(args.steps + 2):<22} {'vs f32':>7}  fingerprints")
        print(header)
        print("-" * len(header))
        for variant in rows:
            w, i = variant[0], variant[1]
            t = np.asarray(times[variant])
            paired = float(np.median(np.asarray(times[base]) / t))
            dtype, norm_error, losses = checks[w][i][1:]
            # The same weights and SpecAugment draws: step 1 should match float32 with the same XLA and threads.
            twin = next(v for v in rows if v[0] == w and v[3] == rows[0][3] and v[4] == variant[4])
            first = checks[w][twin[1]][3][0]
            finite = all(np.isfinite(losses))
            print(
                f"{_variant_name(variant[3], variant[4], args.threads[w]):<34} {np.median(t):>13.3f} {t.min():>7.3f} "
                f"{t.max():>7.3f} {np.median(times[base]) / np.median(t):>7.2f}x {paired:>6.2f}x "
                f"{ready[w][i][2]:>10.1f}  {losses[0]:>7.4f} -> {losses[-1]:<11.4f} {losses[0] / first - 1:>+7.1%}  "
                f"{dtype}, |norm-1| {norm_error:.1e}{'' if finite else ', LOSS NOT FINITE'}"
            )


if __name__ == "__main__":
    main()
