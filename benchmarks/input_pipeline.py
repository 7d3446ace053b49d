"""Does the input pipeline keep up with the model? Pairs/s of the pipeline, and training samples/s.

    python benchmarks/input_pipeline.py [--train DIR] [--steps 15] [--paper-steps 4] [--rounds 3]

For the demo config (configs/demo.yaml) and the paper config (configs/default.yaml), with
the training data wiring of `nnfp.training_data.prepare_data` and every augmentation on
(background noise, speech, impulse response, random gain, replica time offset, several
replicas per anchor):

1. pipeline only: augmented (anchor, replica) pairs/s pulled from the tf.data pipeline,
   restricted to one CPU thread ("per core") and with every core ("total");
2. model only: training samples/s of `model.fit` on one synthetic batch repeated;
3. real pipeline: training samples/s of `model.fit` on the pipeline. The ratio to 2. shows
   whether the step ever waits for input (both share the same CPU cores here).

Music comes from `--train` (a folder, manifest or `nnfp data prepare` cache; default: the
embedded corpus); noise and impulse responses from the embedded corpus; speech is babble
generated into a temporary folder.
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np


class _StepClock(keras.callbacks.Callback):
    """Wall time at the end of every training batch."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def _fit_rate(model, dataset, batch_size, warmup, steps):
    """Training samples/s over `steps` steps after `warmup` steps (trace, caches)."""
    clock = _StepClock()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[clock])
    seconds = clock.ends[-1] - clock.ends[warmup - 1]
    return batch_size * steps / seconds


def _pipeline_rate(dataset, n_replicas, threads, batches):
    import tensorflow as tf

    if threads:
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
        dataset = dataset.with_options(options)
    iterator = iter(dataset)
    for _ in range(5):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * n_replicas / (time.perf_counter() - start)


def _speech_folder(directory, rate):
    import soundfile as sf

    from nnfp.corpus.noise import make_noise

    os.makedirs(directory, exist_ok=True)
    for i in range(8):
        sf.write(os.path.join(directory, f"speech{i}.wav"), make_noise(900 + i, 10.0, rate, kind="babble"), rate)
    return directory


def main():
    import tensorflow as tf

    from nnfp.config import CONFIG_DIR, load_config
    from nnfp.training import build_loss, build_model, build_optimizer, prepare_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default=None, help="training music (default: embedded corpus)")
    parser.add_argument("--steps", type=int, default=15, help="timed training steps, demo config")
    parser.add_argument("--paper-steps", type=int, default=4, help="timed training steps, paper config")
    parser.add_argument("--batches", type=int, default=60, help="timed pipeline batches")
    parser.add_argument("--rounds", type=int, default=3, help="alternating model-only / real-pipeline rounds")
    args = parser.parse_args()
    cores = os.cpu_count()
    speech = _speech_folder(os.path.join(tempfile.mkdtemp(prefix="nnfp-bench-"), "speech"), 8000)
    data = [
        f"data.train={os.path.abspath(args.train) if args.train else 'embedded'}",
        "data.val=null", "data.noise=embedded", "data.impulse_responses=embedded",
        f"data.speech={speech}", "data.speech_prob=1.0", "data.gain_db_range=[-6.0,0.0]",
        "train.verbose=0",
    ]
    configs = {
        "demo": (load_config(CONFIG_DIR / "demo.yaml", data), args.steps),
        "paper": (load_config(CONFIG_DIR / "default.yaml", data), args.paper_steps),
    }
    rows = []
    for name, (config, steps) in configs.items():
        batch_size, n_anchors = config["train"]["batch_size"], config["train"]["n_anchors"]
        prepared = prepare_data(config, log=lambda *_: None)
        one_core = _pipeline_rate(prepared.train_dataset, batch_size - n_anchors, 1, args.batches)
        all_cores = _pipeline_rate(prepared.train_dataset, batch_size - n_anchors, None, args.batches)

        keras.utils.set_random_seed(0)
        model = build_model(config)
        model.compile(optimizer=build_optimizer(config, 10_000), loss=build_loss(config))
        anchors, replicas = next(iter(prepared.train_dataset))
        synthetic = tf.data.Dataset.from_tensors((anchors, replicas)).repeat()
        model.fit(synthetic, epochs=1, steps_per_epoch=3, verbose=0)  # trace and warm up
        # Alternate the two so machine drift hits both alike (medians over rounds; each
        # round's rate is the mean over its timed steps, so input stalls count in full).
        model_only, real = [], []
        for _ in range(args.rounds):
            model_only.append(_fit_rate(model, synthetic, batch_size, 1, steps))
            real.append(_fit_rate(model, prepared.train_dataset, batch_size, 1, steps))
        ratios = np.array(real) / np.array(model_only)
        rows.append((
            name, batch_size, n_anchors, one_core, all_cores, float(np.median(model_only)),
            float(np.median(real)), (ratios.min(), ratios.max()), prepared.n_train_tracks,
        ))

    print(f"\ninput pipeline vs model on {cores} CPU cores (TF {tf.__version__}); all augmentations on "
          "(noise, speech, IR, gain, offset)")
    header = (
        f"{'config':<6} {'N (anchors)':>12} {'pairs/s 1 core':>15} {'pairs/s all cores':>18} "
        f"{'per core':>9} {'model-only samples/s':>21} {'real-pipeline samples/s':>24} {'ratio':>6} "
        f"{'(rounds)':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, batch, anchors, one, total, model_only, real, (low, high), _ in rows:
        print(
            f"{name:<6} {f'{batch} ({anchors})':>12} {one:>15.0f} {total:>18.0f} {total / cores:>9.0f} "
            f"{model_only:>21.1f} {real:>24.1f} {real / model_only:>6.0%} {f'{low:.0%}-{high:.0%}':>11}"
        )
    print(f"(pairs = augmented (anchor, replica) pairs; {rows[0][-1]} training tracks; "
          f"targets: >= 1000 pairs/s per core, ratio >= 90%)")


if __name__ == "__main__":
    main()
