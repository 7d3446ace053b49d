"""Config loading: keys and types at load time, values by the objects each section builds."""

import inspect
from pathlib import Path

import keras
import pytest

import nnfp
from nnfp.augment import SpecAugment
from nnfp.config import CONFIG_DIR, RENAMED_KEYS, ConfigError, load_config, parse_overrides
from nnfp.encoder import DivideAndEncode, Encoder
from nnfp.frontend import LogMelSpectrogram
from nnfp.losses import NTXent, OnlineTripletLoss
from nnfp.training import build_loss, build_model, build_optimizer

SMALL = ["encoder.width=0.03125", "projection.embedding_dim=16"]
SAVED_DEFAULT = Path(nnfp.__file__).parent / "weights" / "default.yaml"  # the shipped model's config
BEFORE_RENAMES = Path(__file__).parent / "fixtures" / "run_config_before_renames.yaml"  # it, as first saved


def _arguments(cls):
    return {
        name for name, p in inspect.signature(cls.__init__).parameters.items()
        if name not in ("self", "name") and p.kind is p.POSITIONAL_OR_KEYWORD
    }


@pytest.mark.parametrize(
    "section, cls",
    [
        ("frontend", LogMelSpectrogram),
        ("spec_augment", SpecAugment),
        ("encoder", Encoder),
        ("projection", DivideAndEncode),
        ("loss.ntxent", NTXent),
        ("loss.triplet", OnlineTripletLoss),
    ],
)
def test_section_keys_are_the_constructor_arguments(section, cls):
    node = load_config()
    for part in section.split("."):
        node = node[part]
    assert set(node) == _arguments(cls)


def test_optimizer_keys_are_keras_optimizer_arguments():
    optimizer = load_config()["optimizer"]
    for cls in (keras.optimizers.Adam, keras.optimizers.Lamb):
        assert set(optimizer) - {"name"} <= set(inspect.signature(cls.__init__).parameters)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")) + [SAVED_DEFAULT], ids=lambda p: p.name)
def test_every_config_in_the_repo_loads(path):
    config = load_config(path)
    assert config["train"]["n_anchors"] <= config["train"]["batch_size"] // 2


def test_renamed_keys_load_from_saved_configs(tmp_path):
    """A run's config.yaml written before the renames loads as the same config with the new names."""
    shipped = load_config(SAVED_DEFAULT)
    assert load_config(BEFORE_RENAMES) == shipped
    assert shipped["loss"]["ntxent"] == {"temperature": 0.05}
    assert shipped["schedule"] == {"name": "cos", "alpha": 1e-6, "scale_by_batch": False}
    old = tmp_path / "old.yaml"
    old.write_text(
        "loss:\n  type: triplet\n  temperature: 0.1\n  margin: 0.3\n  mode: hard\n"
        "optimizer:\n  schedule: cos-restart\n  alpha: 0.01\n  scale_by_batch: true\n"
    )
    config = load_config(old)
    assert config["loss"] == {"type": "triplet", "ntxent": {"temperature": 0.1}, "triplet": {"margin": 0.3, "mode": "hard"}}
    assert config["schedule"] == {"name": "cos-restart", "alpha": 0.01, "scale_by_batch": True}
    assert set(config["optimizer"]) == {"name", "learning_rate", "weight_decay"}
    assert set(RENAMED_KEYS) == {
        "loss.temperature", "loss.margin", "loss.mode", "optimizer.schedule", "optimizer.alpha",
        "optimizer.scale_by_batch",
    }

    both = tmp_path / "both.yaml"
    both.write_text("loss:\n  temperature: 0.1\n  ntxent:\n    temperature: 0.2\n")
    with pytest.raises(ConfigError, match="'loss.temperature' is now 'loss.ntxent.temperature'; give only"):
        load_config(both)
    with pytest.raises(ConfigError, match="config key 'optimizer.alpha' is now 'schedule.alpha'"):
        load_config(None, ["optimizer.alpha=0.1"])  # --set takes the current names only


def test_overrides_are_typed():
    config = load_config(None, ["train.epochs=3", "loss.ntxent.temperature=1e-1", "spec_augment.chain=[vertical]"])
    assert config["train"]["epochs"] == 3 and config["loss"]["ntxent"]["temperature"] == 0.1
    assert config["spec_augment"]["chain"] == ["vertical"]
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epoch=3"], "unknown config key 'train.epoch'"),
        (["trian.epochs=3"], "unknown config key 'trian'"),
        (["loss.ntxent.tau=1"], "unknown config key 'loss.ntxent.tau'"),
        (["train.epochs=three"], "'train.epochs': expected int, received 'three'"),
        (["train.epochs=true"], "'train.epochs': expected int"),
        (["encoder.norm=1"], "'encoder.norm': expected str, received 1"),
        (["train.batch_size=121"], "'train.batch_size': expected an even number"),
        (["train.n_anchors=61"], "'train.n_anchors': expected at most train.batch_size / 2 = 60"),
        (["data.snr_db_range=[10, 0]"], "'data.snr_db_range'"),
        (["loss.type=contrastive"], "'loss.type': expected one of ['ntxent', 'triplet']"),
        (["schedule.name=linear"], "'schedule.name': expected one of"),
        (["noequals"], "section.key=value"),
        (["data.speech=embedded"], "'data.speech': the embedded corpus has no speech"),
    ],
)
def test_bad_keys_and_types_fail_on_load(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["frontend.segment_seconds=0.1"], "config key 'frontend.segment_seconds': segment_seconds must hold"),
        (["frontend.f_max=5000.0"], "config key 'frontend.f_max': f_max must be at most sample_rate / 2 = 4000.0"),
        (["frontend.f_min=4000.0"], "config key 'frontend.f_min': f_min must be in [0, f_max=4000.0)"),
        (["frontend.top_db=0.0"], "config key 'frontend.top_db': top_db must be positive. Received: top_db=0.0"),
        (["encoder.norm=group"], "config key 'encoder.norm': norm must be one of"),
        (["encoder.width=-1.0"], "config key 'encoder.width': width must be positive"),
        (["encoder.channels=[4, 8]"], "config key 'encoder.channels': channels and strides must have one entry"),
        # the encoder's 102-filter output does not split into 16 slices (config.py used to round it up)
        (["encoder.width=0.1"], "config key 'projection.embedding_dim': DivideAndEncode needs an input size"),
        (["projection.hidden_units=0"], "config key 'projection.hidden_units'"),
        (["spec_augment.fill=noise"], "config key 'spec_augment.fill': fill must be one of"),
        (["spec_augment.size_range=[0.5, 0.1]"], "config key 'spec_augment.size_range'"),
        (["spec_augment.probability=2.0"], "config key 'spec_augment.probability'"),
    ],
)
def test_bad_model_values_name_the_key(overrides, message):
    config = load_config(None, [*SMALL, *overrides])  # keys and types are fine: the layers judge the values
    with pytest.raises(ConfigError) as error:
        build_model(config)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "overrides, build, message",
    [
        (["loss.ntxent.temperature=-1.0"], build_loss, "config key 'loss.ntxent.temperature': temperature must be positive"),
        (["loss.type=triplet", "loss.triplet.mode=easy"], build_loss, "config key 'loss.triplet.mode': mode must be one of"),
        (["optimizer.name=adamz"], build_optimizer, "config key 'optimizer.name': expected one of ["),
    ],
)
def test_bad_loss_and_optimizer_values_name_the_key(overrides, build, message):
    config = load_config(None, overrides)
    with pytest.raises(ConfigError) as error:
        build(config) if build is build_loss else build(config, total_steps=10)
    assert message in str(error.value)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match="train.batch_sise"):
        load_config(bad)


def test_width_and_channels_build_small_models():
    model = build_model(load_config(None, ["encoder.width=0.125", "projection.embedding_dim=64"]))
    assert model.embedding_dim == 64 and model.encoder.filters[-1] == 128
    assert model.count_params() < 600_000
    model = build_model(load_config(None, ["encoder.channels=[4, 4, 8, 8, 8, 8, 16, 16]", "projection.embedding_dim=8"]))
    assert model.encoder.filters == (4, 4, 8, 8, 8, 8, 16, 16) and model.embedding_dim == 8


def test_saved_config_loads_back(tmp_path):
    from nnfp.config import save_config

    config = load_config(CONFIG_DIR / "now_playing.yaml", ["encoder.channels=[4, 8]", "spec_augment.chain=[]"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    text = (tmp_path / "config.yaml").read_text()
    assert "  channels: [4, 8]\n" in text and "  chain: []\n" in text  # lists on one line, as default.yaml
