"""FingerPrinter and its parts: config keys reach the model, each part serialises alone."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from nnfp.augment import SpecAugment
from nnfp.config import load_config
from nnfp.encoder import ConvBlock, DivideAndEncode, Encoder
from nnfp.frontend import LogMelSpectrogram
from nnfp.losses import NTXent, OnlineTripletLoss, source_ids
from nnfp.model import FingerPrinter
from nnfp.training import build_model

# A 2-block encoder with 4 and 8 channels: builds in a fraction of the 8-block model's time.
TINY = [
    "encoder.channels=[4, 8]",
    "encoder.strides=[[[1, 2], [2, 1]], [[2, 2], [2, 2]]]",
    "projection.embedding_dim=16",
    "projection.hidden_units=8",
]

# One `--set` per key of each model section: every key must reach the part it configures.
MODEL_OVERRIDES = {
    "frontend.sample_rate": 16000,
    "frontend.segment_seconds": 2.0,
    "frontend.n_fft": 512,
    "frontend.hop_length": 128,
    "frontend.n_mels": 128,
    "frontend.f_min": 200.0,
    "frontend.f_max": 3500.0,
    "frontend.top_db": 60.0,
    "frontend.amin": 1.0,
    "encoder.channels": [8, 16],
    "encoder.strides": [[[1, 1], [2, 1]], [[1, 1], [2, 1]]],
    "encoder.norm": "batch_norm",
    "encoder.width": 2.0,
    "projection.embedding_dim": 8,
    "projection.hidden_units": 4,
    "spec_augment.chain": ["vertical"],
    "spec_augment.probability": 0.5,
    "spec_augment.size_range": [0.2, 0.3],
    "spec_augment.fill": "zeros",
    "spec_augment.seed": 3,
}


def _tone_with_noise(n):
    t = np.arange(n) / 8000
    rng = np.random.default_rng(0)
    return (np.sin(2 * np.pi * 1000 * t) + 1e-4 * rng.standard_normal(n)).astype("float32")[None]


def _part_config(model, section):
    config = keras.saving.serialize_keras_object(getattr(model, section))["config"]
    return json.loads(json.dumps(config))  # tuples as lists, as in YAML


def test_every_model_key_reaches_the_model():
    defaults = load_config(None)
    sections = ("frontend", "encoder", "projection", "spec_augment")
    assert set(MODEL_OVERRIDES) == {f"{s}.{k}" for s in sections for k in defaults[s]}  # a new key needs a row
    base = build_model(load_config(None, TINY))
    x = _tone_with_noise(16000)
    for key, value in MODEL_OVERRIDES.items():
        section, name = key.split(".")
        model = build_model(load_config(None, [*TINY, f"{key}={json.dumps(value)}"]))
        assert _part_config(model, section)[name] == value != _part_config(base, section)[name], key
        assert model(x[:, : model.segment_samples]).shape == (1, model.embedding_dim), key
        if section == "frontend":  # and changes the spectrogram
            a = np.asarray(base.frontend(x[:, : base.segment_samples]))
            b = np.asarray(model.frontend(x[:, : model.segment_samples]))
            assert a.shape != b.shape or not np.allclose(a, b), key


def test_top_db_floors_the_spectrogram():
    model = build_model(load_config(None, [*TINY, "frontend.top_db=30"]))
    mel = np.asarray(model.frontend(_tone_with_noise(8000)))
    assert mel.min() == pytest.approx(-30.0) and mel.max() == pytest.approx(0.0)


def _round_trip(obj):
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))


LAYERS = {
    "frontend": (lambda: LogMelSpectrogram(n_mels=64, top_db=70.0, segment_seconds=0.5), (2, 4000)),
    "spec_augment": (
        lambda: SpecAugment(chain=("vertical", "cutout"), fill="random", size_range=(0.2, 0.3), seed=4), (2, 64, 32, 1)
    ),
    "conv_block": (lambda: ConvBlock(4, strides=((1, 2), (2, 1)), norm="batch_norm"), (2, 16, 8, 3)),
    "encoder": (
        lambda: Encoder(channels=(8, 16), strides=(((1, 2), (2, 1)), ((2, 2), (2, 2))), norm="layer_norm1d", width=0.5),
        (2, 64, 32, 1),
    ),
    "projection": (lambda: DivideAndEncode(embedding_dim=4, hidden_units=8), (2, 16)),
}


def _call(layer, x):
    return np.asarray(layer(x, training=True) if isinstance(layer, SpecAugment) else layer(x))


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_serialises_alone(name):
    make, input_shape = LAYERS[name]
    layer = make()
    x = np.random.default_rng(1).standard_normal(input_shape).astype("float32")
    expected = _call(layer, x)
    restored = _round_trip(layer)
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()
    if isinstance(layer, SpecAugment):  # same seed: same masks on the first call
        np.testing.assert_array_equal(_call(restored, x), expected)
        return
    assert restored.built == layer.built  # the build config travels with the layer
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(restored(x)), expected, atol=1e-6)


@pytest.mark.parametrize("name", LAYERS)
def test_each_layer_round_trips_through_a_keras_file(name, tmp_path):
    make, input_shape = LAYERS[name]
    model = keras.Sequential([keras.Input(input_shape[1:]), make()])
    x = np.random.default_rng(2).standard_normal(input_shape).astype("float32")
    model.save(tmp_path / "layer.keras")  # before the call below moves SpecAugment's seed state
    expected = np.asarray(model(x, training=True))
    loaded = keras.saving.load_model(tmp_path / "layer.keras")  # registered: no custom_objects
    assert type(loaded.layers[0]) is type(model.layers[0])
    assert loaded.layers[0].get_config() == model.layers[0].get_config()
    np.testing.assert_allclose(np.asarray(loaded(x, training=True)), expected, atol=1e-6)


@pytest.mark.parametrize("loss", [NTXent(temperature=0.2), OnlineTripletLoss(margin=0.3, mode="hard")])
def test_each_loss_serialises_alone(loss, tmp_path):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((8, 6)).astype("float32")
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labels = source_ids(4, 4)
    expected = float(loss(labels, z))
    restored = _round_trip(loss)
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert float(restored(labels, z)) == pytest.approx(expected, rel=1e-6)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Identity()])
    model.compile(optimizer="adam", loss=loss)
    model.save(tmp_path / "with_loss.keras")
    loaded = keras.saving.load_model(tmp_path / "with_loss.keras")
    assert type(loaded.loss) is type(loss) and loaded.loss.get_config() == loss.get_config()
    assert float(loaded.loss(labels, z)) == pytest.approx(expected, rel=1e-6)


def test_parts_given_built_or_as_their_arguments_make_the_same_model():
    config = load_config(None, TINY)
    keras.utils.set_random_seed(0)
    from_parts = FingerPrinter(
        frontend=LogMelSpectrogram(**config["frontend"]),
        encoder=Encoder(**config["encoder"]),
        projection=DivideAndEncode(**config["projection"]),
        spec_augment=SpecAugment(**config["spec_augment"]),
    )
    keras.utils.set_random_seed(0)
    from_arguments = FingerPrinter(
        frontend=config["frontend"], encoder=config["encoder"], projection=config["projection"],
        spec_augment=config["spec_augment"],
    )
    assert from_parts.built and from_arguments.built  # built on construction: count_params works
    assert from_parts.count_params() == from_arguments.count_params() == build_model(config).count_params()
    x = _tone_with_noise(8000)
    np.testing.assert_array_equal(np.asarray(from_parts(x)), np.asarray(from_arguments(x)))
    paper = FingerPrinter.__init__.__defaults__  # every part defaults to the paper's
    assert paper == (None, None, None, None)


def test_shipped_model_gives_the_fingerprints_it_gave_before_the_config_change():
    """nnfp/weights/default.keras was saved with `segment_samples` and `n_slices` (the layers'
    old argument names); it loads with no custom_objects and fingerprints a fixed input exactly
    as before (tests/fixtures/default_model_fingerprints.npy was written by the old code)."""
    model = keras.saving.load_model(Path(__file__).parents[1] / "nnfp" / "weights" / "default.keras")
    assert model.frontend.segment_seconds == 1.0 and model.segment_samples == 8000
    assert model.projection.embedding_dim == 128 and model.encoder.filters == (32, 32, 64, 64, 128, 128, 256, 256)
    t = np.arange(8000) / 8000
    x = np.stack([
        0.5 * np.sin(2 * np.pi * 440 * t),
        0.1 * np.random.default_rng(0).standard_normal(8000),
        0.3 * np.sin(2 * np.pi * 1234 * t) + 0.05 * np.random.default_rng(1).standard_normal(8000),
    ]).astype("float32")
    expected = np.load(Path(__file__).parent / "fixtures" / "default_model_fingerprints.npy")
    np.testing.assert_allclose(np.asarray(model(x, training=False)), expected, atol=1e-6)


def test_fingerprinter_has_no_unused_encode_methods():
    model = build_model(load_config(None, TINY))
    assert not hasattr(model, "encode") and not hasattr(model, "encode_l2")
    x = _tone_with_noise(8000)
    out = model.embed_all(x)
    np.testing.assert_allclose(np.asarray(out["g(f)"]), np.asarray(model.fingerprint(x)), atol=1e-6)


def test_model_summary_takes_config_as_an_option(capsys):
    from nnfp.cli import main

    assert main(["model-summary", "--config", "configs/debian.yaml", "--set", "encoder.width=0.125"]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1].startswith("params: ") and "deprecated" not in out.err
    assert main(["model-summary", "configs/debian.yaml", "--set", "encoder.width=0.125"]) == 0
    assert "deprecated; use `nnfp model-summary --config CONFIG`" in capsys.readouterr().err
