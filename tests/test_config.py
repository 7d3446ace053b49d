import pytest

from nnfp.config import ConfigError, load_config, parse_overrides
from nnfp.training import build_model


def test_default_is_the_paper():
    config = load_config()
    assert config["train"]["batch_size"] == 120
    assert config["loss"] == {"type": "ntxent", "temperature": 0.05, "margin": 0.5, "mode": "semi-hard"}
    assert config["optimizer"]["name"] == "adam" and config["optimizer"]["learning_rate"] == 1e-4
    assert config["train"]["epochs"] == 100


@pytest.mark.parametrize("name", ["demo", "lamb640", "now_playing"])
def test_shipped_configs_load(name):
    from nnfp.config import CONFIG_DIR

    config = load_config(CONFIG_DIR / f"{name}.yaml")
    assert config["train"]["n_anchors"] <= config["train"]["batch_size"] // 2


def test_overrides_are_typed():
    config = load_config(None, ["train.epochs=3", "loss.temperature=0.1", "spec_augment.chain=[vertical]"])
    assert config["train"]["epochs"] == 3 and config["loss"]["temperature"] == 0.1
    assert config["spec_augment"]["chain"] == ["vertical"]
    assert parse_overrides(["a.b=1"]) == {"a": {"b": 1}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.epoch=3"], "unknown config key 'train.epoch'"),
        (["trian.epochs=3"], "unknown config key 'trian'"),
        (["train.epochs=three"], "'train.epochs': expected int, received 'three'"),
        (["train.batch_size=121"], "'train.batch_size': expected an even number"),
        (["train.n_anchors=61"], "'train.n_anchors': expected at most train.batch_size / 2 = 60"),
        (["frontend.segment_seconds=0.1"], "'frontend.segment_seconds'"),
        (["encoder.norm=group"], "'encoder.norm': norm must be one of"),
        (["frontend.f_max=5000"], "'frontend.f_max': f_max must be in (0, sample_rate / 2]"),
        (["frontend.segment_seconds=0.10001"], "'frontend.segment_seconds': segment_seconds must be a whole number"),
        (["encoder.width=0.1"], "'projection.embedding_dim': DivideAndEncode needs an input size divisible"),
        (["spec_augment.fill=noise"], "'spec_augment.fill'"),
        (["spec_augment.size_range=[0.5, 0.1]"], "'spec_augment.size_range'"),
        (["loss.type=triplet", "loss.mode=easy"], "'loss.mode'"),
        (["data.snr_db_range=[10, 0]"], "'data.snr_db_range'"),
        (["loss.temperature=-1"], "'loss.temperature': temperature must be positive"),
        (["train.epochs=true"], "'train.epochs': expected int"),
        (["noequals"], "section.key=value"),
        (["data.speech=embedded"], "'data.speech': the embedded corpus has no speech"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_sise: 64\n")
    with pytest.raises(ConfigError, match="train.batch_sise"):
        load_config(bad)


def test_width_builds_small_model():
    model = build_model(load_config(None, ["encoder.width=0.125", "projection.embedding_dim=64"]))
    assert model.embedding_dim == 64
    assert model.count_params() < 600_000
