"""Global-batch contrastive losses under tf.distribute on 2 logical CPU devices.

TF's logical devices must be set before TF initialises, so the check runs in a
fresh interpreter.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from nnfp.losses import NTXent, OnlineTripletLoss
    from nnfp.encoder import DivideAndEncode, Encoder
    from nnfp.frontend import LogMelSpectrogram
    from nnfp.model import FingerPrinter

    def make_loss(loss_name):
        return NTXent(0.1) if loss_name == "ntxent" else OnlineTripletLoss(0.5, "semi-hard")

    def build(loss_name):
        model = FingerPrinter(LogMelSpectrogram(), Encoder(width=0.03125, norm="layer_norm1d"), DivideAndEncode(16))
        model.build((None, 8000))
        model.compile(optimizer="adam", loss=make_loss(loss_name))
        return model

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


    def run_case(loss_name, n_anchors, n_replicas, with_fit):
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(0)
        anchors = rng.standard_normal((n_anchors, 8000)).astype("float32")
        replicas = anchors[np.arange(n_replicas) % n_anchors] + 0.5 * rng.standard_normal((n_replicas, 8000)).astype("float32")

        single = build(loss_name)
        with tf.GradientTape() as tape:
            loss, _, _ = single.contrastive_loss((anchors, replicas), training=True)
        grads = tape.gradient(loss, single.trainable_variables)

        with strategy.scope():
            mirrored = build(loss_name)
        mirrored.set_weights(single.get_weights())
        half_a, half_r = n_anchors // 2, n_replicas // 2

        def shard(context):
            i = context.replica_id_in_sync_group
            return (anchors[i * half_a:(i + 1) * half_a], replicas[i * half_r:(i + 1) * half_r])

        batch = strategy.experimental_distribute_values_from_function(shard)

        @tf.function
        def step(data):
            with tf.GradientTape() as tape:
                loss, _, _ = mirrored.contrastive_loss(data, training=True)
            return loss, tape.gradient(loss, mirrored.trainable_variables)

        per_replica_loss, per_replica_grads = strategy.run(step, args=(batch,))
        total_loss = strategy.reduce("SUM", per_replica_loss, axis=None)
        total_grads = [strategy.reduce("SUM", g, axis=None) for g in per_replica_grads]
        diffs = [float(np.max(np.abs(a.numpy() - b.numpy()))) for a, b in zip(grads, total_grads)]
        scale = max(float(np.max(np.abs(g.numpy()))) for g in grads)

        result = {
            "replicas": strategy.num_replicas_in_sync,
            "single_loss": float(loss), "mirrored_loss": float(total_loss),
            "max_grad_diff": max(diffs), "grad_scale": scale,
        }
        if not with_fit:
            return result
        # model.fit itself runs under the strategy and reports the global loss
        with strategy.scope():
            fitted = build(loss_name)
        fitted.set_weights(single.get_weights())
        data = tf.data.Dataset.from_tensors((anchors, replicas)).repeat()
        evaluated = fitted.evaluate(data, steps=1, verbose=0, return_dict=True)
        single_eval, _, _ = single.contrastive_loss((anchors, replicas), training=False)
        history = fitted.fit(data, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)  # loss before the update
        return dict(
            result, eval_loss=evaluated["loss"], single_eval_loss=float(single_eval),
            fit_loss=history.history["loss"][-1],
        )


    # One interpreter for every case: starting TensorFlow is most of each case's time.
    print(json.dumps([run_case(*case) for case in json.loads(sys.argv[1])]))
    """
)


# (loss, anchors, replicas, also through model.evaluate and model.fit): the fit path is Keras'
# own and the same for every loss layout, so it runs for one layout of each loss.
CASES = [("ntxent", 4, 4, True), ("ntxent", 4, 12, False), ("triplet", 4, 8, True)]


@pytest.fixture(scope="module")
def two_replica_results():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)], capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(zip(CASES, json.loads(out.stdout.strip().splitlines()[-1]), strict=True))


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, case[:3])) for case in CASES])
def test_two_replica_step_equals_single_device(two_replica_results, case):
    result = two_replica_results[case]
    assert result["replicas"] == 2
    assert result["mirrored_loss"] == pytest.approx(result["single_loss"], abs=1e-5)
    assert result["max_grad_diff"] < 1e-5 and result["grad_scale"] > 1e-4
    if case[3]:
        assert result["eval_loss"] == pytest.approx(result["single_eval_loss"], abs=1e-5)
        assert result["fit_loss"] == pytest.approx(result["single_loss"], abs=1e-5)


MASK_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from nnfp.augment import SpecAugment

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        augment = SpecAugment(chain=("cutout", "vertical"), fill="zeros", seed=None)

    def shard(context):  # each replica holds different rows of the global batch
        return tf.random.uniform((2, 32, 16, 1), 1.0, 2.0, seed=context.replica_id_in_sync_group)

    batch = strategy.experimental_distribute_values_from_function(shard)

    @tf.function
    def step(x):
        return tf.cast(augment(x, training=True) == 0.0, tf.int32)[0, :, :, 0]  # (freq, time) mask

    masks = []
    for _ in range(4):
        a, b = (v.numpy() for v in strategy.experimental_local_results(strategy.run(step, args=(batch,))))
        masks.append((a.tolist(), b.tolist()))
    print(json.dumps(masks))
    """
)


def test_one_spec_augment_mask_per_global_batch():
    """Every replica masks its rows with the same draw (the seed state is a mirrored variable)."""
    out = subprocess.run([sys.executable, "-c", MASK_SCRIPT], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    masks = [(np.array(a), np.array(b)) for a, b in json.loads(out.stdout.strip().splitlines()[-1])]
    for a, b in masks:
        assert a.any() and np.array_equal(a, b)  # masked, and the same mask on both replicas
    assert len({a.tobytes() for a, _ in masks}) > 1  # a new draw each step


FIT_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ["NNFP_CACHE"] = sys.argv[2]
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from nnfp.config import CONFIG_DIR, load_config
    from nnfp.training import train

    config = load_config(CONFIG_DIR / "demo.yaml", [
        "train.distribute=mirrored", "train.devices=['/cpu:0', '/cpu:1']", "train.jit_compile=false",
        "encoder.width=0.03125", "projection.embedding_dim=16", "embedded.n_tracks=3",
        "embedded.n_val_tracks=2", "embedded.track_seconds=6", "embedded.n_noise=2", "embedded.n_irs=2",
        "train.batch_size=12", "train.n_anchors=4", "train.val_batch_size=8", "train.steps_per_epoch=2",
        "train.epochs=2", "train.mini_search_scopes=[1,3]", "train.verbose=0", "data.val_max_segments=16",
    ])
    model, history, summary = train(config, sys.argv[1], log=lambda *_: None)
    print(json.dumps({
        "replicas": model.distribute_strategy.num_replicas_in_sync,
        "iterations": int(model.optimizer.iterations.numpy()),
        "keys": sorted(history.history),
    }))
    """
)


def test_fit_from_config_under_mirrored_strategy(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT, str(tmp_path / "run"), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and result["iterations"] == 4
    assert "ms_gf_top1_s1" in result["keys"] and "val_loss" in result["keys"]
    assert (tmp_path / "run" / "model.keras").exists()
