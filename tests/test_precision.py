"""train.precision: a model built under mixed_bfloat16 trains, and gives (and saves) float32 fingerprints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnfp.config import ConfigError, load_config
from nnfp.training import build_loss, build_model, build_optimizer

TINY = ["encoder.width=0.03125", "projection.embedding_dim=16", "train.batch_size=8", "train.n_anchors=4"]


@pytest.fixture(autouse=True)
def float32_policy():
    """Whatever a test does, the next one starts (and this one ends) under the float32 policy."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


def _model(precision, seed=0):
    config = load_config(None, [*TINY, f"train.precision={precision}"])
    keras.utils.set_random_seed(seed)
    model = build_model(config)
    # XLA, as train.jit_compile's default: the training step as `nnfp train` runs it.
    model.compile(optimizer=build_optimizer(config, 10), loss=build_loss(config), jit_compile=True)
    return model


def _batch():
    rng = np.random.default_rng(0)
    anchors = (0.1 * rng.standard_normal((4, 8000))).astype("float32")
    return anchors, (anchors + 0.1 * rng.standard_normal(anchors.shape)).astype("float32")


def test_mixed_bfloat16_computes_the_encoder_in_bfloat16_only():
    model = _model("mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"  # build_model restored it
    assert model.encoder.compute_dtype == "bfloat16"
    assert model.encoder.blocks[0].conv_1x3.compute_dtype == "bfloat16"
    assert model.projection.compute_dtype == "bfloat16"
    assert {w.dtype for w in model.weights} == {"float32"}
    for part in (model, model.frontend, model.spec_augment):
        assert part.compute_dtype == "float32"  # waveforms, mel and masks are not rounded


def test_one_mixed_bfloat16_step_has_a_finite_loss_near_float32s_and_unit_float32_outputs():
    anchors, replicas = _batch()
    losses = {}
    for precision in ("float32", "mixed_bfloat16"):
        model = _model(precision)  # same seed: same weights and SpecAugment draws
        logs = model.train_on_batch(anchors, replicas, return_dict=True)
        losses[precision] = logs["loss"]
        fingerprints = model.predict_on_batch(anchors)
        assert fingerprints.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(fingerprints, axis=1), 1.0, atol=1e-5)
        embeddings = model.embed_all(tf.constant(anchors))
        assert {v.dtype for v in embeddings.values()} == {tf.float32}
    assert np.isfinite(losses["mixed_bfloat16"])
    assert losses["mixed_bfloat16"] == pytest.approx(losses["float32"], rel=0.02)


def test_a_model_trained_in_mixed_bfloat16_saves_as_a_float32_model(tmp_path):
    mixed = _model("mixed_bfloat16", seed=3)
    mixed.save(tmp_path / "mixed.keras")
    loaded = keras.saving.load_model(tmp_path / "mixed.keras", compile=False)
    assert loaded.encoder.compute_dtype == "float32"
    assert loaded.encoder.blocks[0].conv_1x3.compute_dtype == "float32"
    assert loaded.projection.compute_dtype == "float32"
    plain = _model("float32", seed=3)  # the same weights, built in float32
    x = _batch()[0]
    np.testing.assert_allclose(loaded.predict_on_batch(x), plain.predict_on_batch(x), atol=1e-6)


def test_precision_is_validated():
    with pytest.raises(ConfigError, match=r"train.precision.*\['float32', 'mixed_bfloat16'\].*'float16'"):
        load_config(None, ["train.precision=float16"])


def test_a_run_saved_before_train_precision_existed_resumes(tmp_path):
    import yaml

    from nnfp.training import _check_resumed_config

    config = load_config(None, TINY)
    saved = yaml.safe_load(yaml.safe_dump(config))
    del saved["train"]["precision"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    _check_resumed_config(config, tmp_path / "config.yaml")  # the default: the same run
    with pytest.raises(ConfigError, match=r"train.precision: 'float32' -> 'mixed_bfloat16'"):
        _check_resumed_config(load_config(None, [*TINY, "train.precision=mixed_bfloat16"]), tmp_path / "config.yaml")


def test_training_in_mixed_bfloat16_without_a_gpu_is_refused_before_the_run_folder(tmp_path):
    from nnfp.training import train

    assert not tf.config.list_physical_devices("GPU")  # conftest hides GPUs
    with pytest.raises(ConfigError, match=r"train.precision.*mixed_bfloat16 is for GPUs.*use float32"):
        train(load_config(None, [*TINY, "train.precision=mixed_bfloat16", "train.tensorboard=false"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
