"""FingerPrinter and its parts: config keys reach the model, each part serialises alone."""

import keras
import numpy as np
import pytest

from nnfp.augment import SpecAugment
from nnfp.config import load_config
from nnfp.encoder import DivideAndEncode, Encoder
from nnfp.frontend import LogMelSpectrogram
from nnfp.losses import NTXent, OnlineTripletLoss, source_ids
from nnfp.training import build_model

SMALL = ["encoder.width=0.03125", "projection.embedding_dim=16"]

# One override per frontend key, and the frontend attribute it must change.
FRONTEND_OVERRIDES = {
    "sample_rate": ("16000", "sample_rate", 16000),
    "segment_seconds": ("2.0", "segment_seconds", 2.0),
    "n_fft": ("512", "n_fft", 512),
    "hop_length": ("128", "hop_length", 128),
    "n_mels": ("128", "n_mels", 128),
    "f_min": ("200.0", "f_min", 200.0),
    "f_max": ("3500.0", "f_max", 3500.0),
    "top_db": ("60.0", "top_db", 60.0),
}


def _tone_with_noise(n):
    t = np.arange(n) / 8000
    rng = np.random.default_rng(0)
    return (np.sin(2 * np.pi * 1000 * t) + 1e-4 * rng.standard_normal(n)).astype("float32")[None]


def test_every_frontend_key_reaches_the_model():
    base = build_model(load_config(None, SMALL))
    assert set(FRONTEND_OVERRIDES) == set(load_config(None)["frontend"])  # a new key needs a row here
    x = _tone_with_noise(16000)
    for key, (value, attribute, expected) in FRONTEND_OVERRIDES.items():
        model = build_model(load_config(None, [*SMALL, f"frontend.{key}={value}"]))
        frontend = model.get_config()["frontend"]["config"]
        assert frontend[attribute] == expected != base.get_config()["frontend"]["config"][attribute], key
        a = np.asarray(base.frontend(x[:, : base.segment_samples]))
        b = np.asarray(model.frontend(x[:, : model.segment_samples]))
        assert a.shape != b.shape or not np.allclose(a, b), key
        assert model(x[:, : model.segment_samples]).shape == (1, 16)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


@pytest.mark.parametrize(
    "section, cls",
    [("frontend", LogMelSpectrogram), ("encoder", Encoder), ("projection", DivideAndEncode), ("spec_augment", SpecAugment)],
)
def test_section_keys_are_constructor_arguments(section, cls):
    values = load_config(None, ["encoder.width=0.5", "projection.hidden_units=8", "frontend.n_mels=128"])[section]
    part = cls(**values)  # the section is the keyword arguments, unchanged
    saved = part.get_config()
    for key, value in values.items():
        assert _plain(saved[key]) == _plain(value), key


def test_configs_saved_with_the_old_argument_names_load():
    frontend = LogMelSpectrogram.from_config({"sample_rate": 16000, "segment_samples": 32000})
    assert frontend.segment_seconds == 2.0 and frontend.segment_samples == 32000
    assert DivideAndEncode.from_config({"n_slices": 64, "hidden_units": 8}).embedding_dim == 64
    scaled = [4, 4, 8, 8, 8, 8, 16, 16]  # saved as the scaled channels, no width
    assert list(Encoder.from_config({"channels": scaled}).filters) == scaled
    assert list(Encoder(width=0.25).filters) == [32, 32, 64, 64, 128, 128, 256, 256]


def test_top_db_floors_the_spectrogram():
    model = build_model(load_config(None, [*SMALL, "frontend.top_db=30"]))
    mel = np.asarray(model.frontend(_tone_with_noise(8000)))
    assert mel.min() == pytest.approx(-30.0) and mel.max() == pytest.approx(0.0)


def _round_trip(obj):
    return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (LogMelSpectrogram(n_mels=64, top_db=70.0), (2, 8000)),
        (SpecAugment(chain=("vertical", "cutout"), fill="random", size_range=(0.2, 0.3), seed=4), (2, 64, 32, 1)),
        (Encoder(channels=(4, 4, 8, 8, 8, 8, 16, 16), norm="layer_norm1d"), (2, 64, 32, 1)),
        (DivideAndEncode(embedding_dim=4, hidden_units=8), (2, 16)),
    ],
    ids=["frontend", "spec_augment", "encoder", "projection"],
)
def test_each_layer_serialises_alone(layer, input_shape):
    x = np.random.default_rng(1).standard_normal(input_shape).astype("float32")
    expected = np.asarray(layer(x, training=True) if isinstance(layer, SpecAugment) else layer(x))
    restored = _round_trip(layer)
    assert type(restored) is type(layer) and restored.get_config() == layer.get_config()
    if isinstance(layer, SpecAugment):  # same seed: same masks on the first call
        np.testing.assert_array_equal(np.asarray(restored(x, training=True)), expected)
        return
    assert restored.built == layer.built  # the build config travels with the layer
    restored.set_weights(layer.get_weights())
    np.testing.assert_allclose(np.asarray(restored(x)), expected, atol=1e-6)


@pytest.mark.parametrize("loss", [NTXent(temperature=0.2), OnlineTripletLoss(margin=0.3, mode="hard")])
def test_each_loss_serialises_alone(loss):
    rng = np.random.default_rng(2)
    z = rng.standard_normal((8, 6)).astype("float32")
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    labels = source_ids(4, 4)
    restored = _round_trip(loss)
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert float(restored(labels, z)) == pytest.approx(float(loss(labels, z)), rel=1e-6)


def test_embed_all_is_f_its_l2_and_the_fingerprint_of_one_pass():
    model = build_model(load_config(None, SMALL))
    x = np.concatenate([_tone_with_noise(8000), 0.5 * _tone_with_noise(8000)[:, ::-1]])
    out = {k: np.asarray(v, np.float64) for k, v in model.embed_all(x).items()}
    assert out["f"].shape == (2, model.encoder.compute_output_shape((None, 256, 32, 1))[-1])
    np.testing.assert_allclose(out["L2(f)"], out["f"] / np.linalg.norm(out["f"], axis=1, keepdims=True), atol=1e-6)
    g = np.asarray(model.projection(model.encoder(model.frontend(x), training=False)), np.float64)
    np.testing.assert_allclose(out["g(f)"], g / np.linalg.norm(g, axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(out["g(f)"], np.asarray(model.fingerprint(x)), atol=1e-6)
    assert out["g(f)"].shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(out["g(f)"], axis=1), [1.0, 1.0], atol=1e-6)


def test_model_summary_takes_config_as_an_option(capsys):
    from nnfp.cli import main

    assert main(["model-summary", "--config", "configs/debian.yaml", "--set", "encoder.width=0.125"]) == 0
    out = capsys.readouterr()
    assert out.out.strip().splitlines()[-1].startswith("params: ") and "deprecated" not in out.err
    assert main(["model-summary", "configs/debian.yaml", "--set", "encoder.width=0.125"]) == 0
    assert "deprecated; use `nnfp model-summary --config CONFIG`" in capsys.readouterr().err
