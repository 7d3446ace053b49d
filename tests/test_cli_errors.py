"""Command-line mistakes give one-line errors before any work starts, never tracebacks."""

import pytest

from nnfp.cli import main
from nnfp.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("train.epochs=[1,2", "--set 'train.epochs=[1,2': not a valid YAML value (expected ',' or ']'"),
        (
            "train.epochs=!!python/object/apply:os.system ['touch pwned']",
            "not a valid YAML value (could not determine a constructor for the tag",
        ),
        ("train.epochs=1e-4", "config key 'train.epochs': expected int, received '1e-4' (str)"),
    ],
)
def test_bad_set_values_are_one_line_errors(tmp_path, capsys, value, message):
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--set", value]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and message in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "pwned").exists()


def test_float_written_without_a_dot_is_a_float():
    config = load_config(None, ["optimizer.learning_rate=1e-4", "data.snr_db_range=[0, 1e1]"])
    assert config["optimizer"]["learning_rate"] == 1e-4
    assert config["data"]["snr_db_range"] == [0, 10.0]
    with pytest.raises(ConfigError, match="expected number, received 'fast'"):
        load_config(None, ["optimizer.learning_rate=fast"])


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--top-k", "0"], "argument --top-k: expected a whole number >= 1, received '0'"),
        (["--k-probe", "-3"], "argument --k-probe: expected a whole number >= 1, received '-3'"),
        (["--min-score", "nan"], "argument --min-score: expected a finite number, received 'nan'"),
    ],
)
def test_identify_options_are_checked_before_the_model_loads(tmp_path, capsys, option, message):
    # The index does not even exist: argument parsing must fail first.
    with pytest.raises(SystemExit) as exit_info:
        main(["identify", str(tmp_path / "no_index"), "query.wav", *option])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
