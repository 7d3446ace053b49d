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


# Each numeric option is checked by one argparse type, the same in every command that has it.
_COMMANDS = {
    "identify": ["identify", "INDEX", "query.wav"],
    "monitor": ["monitor", "INDEX", "broadcast.wav"],
    "evaluate": ["evaluate", "INDEX", "--out", "OUT"],
    "index build": ["index", "build", "AUDIO", "INDEX"],
    "index add": ["index", "add", "INDEX", "AUDIO"],
    "index merge": ["index", "merge", "AUDIO", "INDEX"],
    "index calibrate": ["index", "calibrate", "INDEX", "--unknown", "AUDIO"],
    "index remove": ["index", "remove", "INDEX", "one.wav"],
    "serve": ["serve", "INDEX"],
    "data prepare": ["data", "prepare", "AUDIO", "OUT"],
    "data make-irs": ["data", "make-irs", "OUT", "3"],
    "demo": ["demo", "--run-dir", "OUT"],
}
_WHOLE = "expected a whole number >= 1"
_SPEEDS = (
    "expected LO:HI or LO:HI:STEP with 0.5 <= LO <= 1 <= HI <= 2 and 0.001 <= STEP <= 0.2 "
    "(e.g. 0.92:1.08 or 0.96:1.04:0.02), or off"
)
_SEARCHING = ["identify", "index calibrate", "evaluate"]  # the commands with --phases, --refine, --interpolate
_INDEXING = ["index build", "index merge", "evaluate"]  # the commands with the vector-index options
_OPTIONS = [
    ("--threads", "0", _WHOLE, ["identify", "monitor", "evaluate"]),
    ("--nprobe", "0", _WHOLE, ["identify", "monitor", "evaluate", "index build", "index merge"]),
    ("--batch-size", "0", _WHOLE, ["index build", "index add", "monitor"]),
    ("--chunk-files", "0", _WHOLE, ["index build", "index add"]),
    ("--k-probe", "0", _WHOLE, ["identify", "monitor", "index calibrate", "evaluate"]),
    ("--n-queries", "0", _WHOLE, ["index calibrate", "evaluate"]),
    ("--n-unknown", "-2", _WHOLE, ["index calibrate", "evaluate"]),
    ("--nlist", "0", _WHOLE, ["index build", "index merge", "evaluate"]),
    ("--rate", "0", _WHOLE, ["monitor"]),
    ("--window", "0", "expected a number > 0", ["monitor"]),
    ("--hop", "0", "expected a number > 0", ["index build"]),
    ("--lengths", "0", "expected a number > 0", ["index calibrate", "evaluate"]),
    ("--max-gap", "-1", "expected a number >= 0", ["monitor"]),
    ("--lock-timeout", "-1", "expected a number >= 0", ["index add", "index remove"]),
    # One message per validator, whatever is wrong with the value.
    ("--k-probe", "many", _WHOLE, ["identify", "monitor"]),
    ("--n-queries", "2.5", _WHOLE, ["index calibrate", "evaluate"]),
    ("--threads", "-1", _WHOLE, ["identify"]),
    ("--batch-size", "", _WHOLE, ["monitor"]),
    ("--top-k", "0", _WHOLE, ["identify"]),
    ("--ef-search", "0", _WHOLE, _INDEXING),
    ("--m", "0", _WHOLE, _INDEXING),
    ("--nbits", "x", _WHOLE, _INDEXING),
    ("--hnsw-m", "0", _WHOLE, _INDEXING),
    ("--train-size", "0", _WHOLE, _INDEXING),
    ("--phases", "0", _WHOLE, _SEARCHING),
    ("--interpolate", "0", _WHOLE, _SEARCHING),
    ("--refine", "none", "expected 'all' or a whole number >= 1", _SEARCHING),
    ("--speeds", "3:4", _SPEEDS, [*_SEARCHING, "monitor"]),
    ("--speeds", "fast", _SPEEDS, ["identify", "monitor"]),
    ("--seed", "x", "expected a whole number", ["index calibrate", "evaluate", "data make-irs"]),
    ("--target", "1", "expected a number >= 0 and < 1", ["index calibrate"]),
    ("--confidence", "-0.5", "expected a number >= 0 and < 1", ["index calibrate"]),
    ("--min-score", "inf", "expected a finite number", ["identify", "monitor", "evaluate"]),
    ("--min-score", "high", "expected a finite number", ["monitor"]),
    ("--window", "nan", "expected a number > 0", ["monitor"]),
    ("--max-upload-mb", "0", "expected a number > 0", ["serve"]),
    ("--port", "70000", "expected a port number 0-65535", ["serve"]),
    ("--sample-rate", "0", _WHOLE, ["data prepare", "data make-irs"]),
    ("--workers", "0", _WHOLE, ["data prepare"]),
    ("--shard-mb", "0", "expected a number > 0", ["data prepare"]),
    ("--min-seconds", "-1", "expected a number >= 0", ["data prepare"]),
    ("--max-seconds", "0", "expected a number > 0", ["data make-irs"]),
    ("--queries", "0", _WHOLE, ["demo"]),
]


def _option_types():
    """`{flag: {argparse type of each action with the flag}}` over every command of `nnfp`."""
    import argparse

    from nnfp.cli import build_parser

    found = {}

    def walk(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    walk(command)
            for flag in action.option_strings:
                found.setdefault(flag, set()).add(action.type)

    walk(build_parser())
    return found


def test_each_option_has_one_validator_in_every_command():
    from nnfp.cli import options

    found = _option_types()
    assert {flag: types for flag, types in found.items() if len(types) > 1} == {}
    assert not [flag for flag, types in found.items() if types & {int, float}]  # no bare int(), float()
    counts = ("--k-probe", "--n-queries", "--n-unknown", "--threads", "--nprobe", "--batch-size", "--ef-search",
              "--top-k", "--chunk-files", "--nlist", "--phases", "--interpolate", "--rate", "--sample-rate")
    assert {flag: found[flag] for flag in counts} == {flag: {options.positive_int} for flag in counts}
    assert found["--speeds"] == {options.speed_setting}
    assert found["--seed"] == {options.integer}
    assert found["--target"] == found["--confidence"] == {options.fraction}
    assert found["--min-score"] == {options.finite_float}


@pytest.mark.parametrize(
    ("validator", "text", "value"),
    [("positive_int", " 7 ", 7), ("integer", "-3", -3), ("finite_float", "-1e-2", -0.01),
     ("positive_float", "0.25", 0.25), ("non_negative_float", "0", 0.0), ("fraction", "0", 0.0),
     ("port", "0", 0), ("refine_windows", "all", None), ("refine_windows", "8", 8),
     ("speed_setting", "off", None), ("speed_setting", "auto", "auto"), ("speed_setting", "0.96:1.04", (0.96, 1.04))],
)
def test_validators_accept_what_their_message_promises(validator, text, value):
    from nnfp.cli import options

    assert getattr(options, validator)(text) == value


def test_commands_return_the_statuses_of_the_exit_code_table():
    """No command returns a bare number: each status is a name of `nnfp.cli.exit_codes`, the table
    `nnfp --help` prints."""
    import ast
    import pathlib
    import signal

    import nnfp.cli
    from nnfp.cli import exit_codes

    folder = pathlib.Path(nnfp.cli.__file__).parent
    bare = [
        f"{path.name}:{node.lineno}"
        for path in sorted(folder.glob("*.py")) if path.name != "exit_codes.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Constant) and type(node.value.value) is int
    ]
    assert bare == []
    statuses = (exit_codes.OK, exit_codes.NOTHING_ANSWERED, exit_codes.BAD_INPUT, exit_codes.BROKEN_PIPE,
                exit_codes.stopped_by(signal.SIGINT), exit_codes.stopped_by(signal.SIGTERM))
    assert statuses == (0, 1, 2, 141, 130, 143)
    for status in statuses:
        assert f" {status} " in exit_codes.EXIT_STATUS_HELP, status


@pytest.fixture()
def audio_dir(tmp_path):
    import soundfile as sf

    from nnfp.corpus.synth import compose_track

    folder = tmp_path / "audio"
    folder.mkdir()
    sf.write(folder / "one.wav", compose_track(1, 3.0, 8000), 8000, subtype="PCM_16")
    return folder


@pytest.mark.parametrize(
    ("command", "option", "value", "message"),
    [(command, option, value, message) for option, value, message, commands in _OPTIONS for command in commands],
)
def test_each_option_is_checked_alike_in_every_command_before_anything_is_written(
    tmp_path, capsys, audio_dir, command, option, value, message
):
    names = {"INDEX": str(tmp_path / "index"), "AUDIO": str(audio_dir), "OUT": str(tmp_path / "out")}
    argv = [names.get(arg, arg) for arg in _COMMANDS[command]] + [option, value]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {option}: {message}, received '{value}'" in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audio"]  # no index, no .partial folder


def test_a_keras_model_that_is_not_a_fingerprinter_is_named(tmp_path, capsys, audio_dir):
    import keras

    from nnfp.catalogue.fingerprint import load_model

    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(plain)
    with pytest.raises(ValueError, match="not an nnfp fingerprinter") as error_info:
        load_model(plain)
    message = str(error_info.value)
    assert str(plain) in message and "segment_samples" in message and "nnfp train" in message
    assert main(["index", "build", str(audio_dir), str(tmp_path / "index"), "--model", str(plain), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnfp index build: error:") and "\n" not in err and "not an nnfp fingerprinter" in err, err
    assert not (tmp_path / "index").exists()


# ----------------------------------------------------------------- CLI contract (issue 22)

_TINY = ["encoder.width=0.03125", "projection.embedding_dim=16"]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """Two untrained tiny models (different weights) and two folders of generated music."""
    import keras
    import soundfile as sf

    from nnfp.config import load_config
    from nnfp.corpus.synth import compose_track
    from nnfp.training import build_model

    root = tmp_path_factory.mktemp("contract")
    for seed, name in ((1, "tiny.keras"), (2, "other.keras")):
        keras.utils.set_random_seed(seed)
        build_model(load_config(None, _TINY)).save(root / name)
    for folder, seeds in (("music", range(3)), ("more", range(30, 33))):
        (root / folder).mkdir()
        for seed in seeds:
            sf.write(root / folder / f"track_{seed:02d}.wav", compose_track(seed, 3.0, 8000), 8000, subtype="PCM_16")
    return root


def _evaluate(root, out, db="music", model="tiny.keras"):
    return main([
        "evaluate", "--db", str(root / db), "--model", str(root / model), "--out", str(out),
        "--index-type", "flat", "--n-queries", "3", "--lengths", "1", "--clean", "--quiet",
    ])


def test_evaluate_runs_again_into_its_own_folder_and_refuses_another_catalogue(catalogue, tmp_path, capsys):
    out = tmp_path / "evaluation"
    assert _evaluate(catalogue, out) == 0
    built = (out / "index" / "tracks.json").stat().st_mtime_ns
    capsys.readouterr()
    assert _evaluate(catalogue, out) == 0  # the index it built is reused, not rebuilt
    captured = capsys.readouterr()
    assert "reusing the index" in captured.out, captured
    assert (out / "index" / "tracks.json").stat().st_mtime_ns == built
    for changed in ({"db": "more"}, {"model": "other.keras"}):
        assert _evaluate(catalogue, out, **changed) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("nnfp evaluate: error:") and "\n" not in err, err
        assert "--overwrite" not in err and "new --out" in err, err
        assert ("music" in err and "more" in err) if "db" in changed else "another model" in err, err
    assert (out / "index" / "tracks.json").stat().st_mtime_ns == built


class _StubIdentifier:
    """Stands in for `Identifier`: names the arguments it was given and stops the command."""

    def __init__(self, index_dir, **kwargs):
        raise ValueError("stub Identifier: " + ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items())))


def test_evaluate_of_a_saved_index_searches_with_the_nprobe_given(tmp_path, capsys, monkeypatch):
    import nnfp.catalogue.identify

    monkeypatch.setattr(nnfp.catalogue.identify, "Identifier", _StubIdentifier)
    argv = ["evaluate", str(tmp_path / "index"), "--out", str(tmp_path / "out"), "--nprobe", "7", "--quiet"]
    assert main(argv) == 2
    assert "nprobe=7" in capsys.readouterr().err


def test_index_calibrate_takes_trust_model(tmp_path, capsys, monkeypatch):
    import nnfp.catalogue.identify

    monkeypatch.setattr(nnfp.catalogue.identify, "Identifier", _StubIdentifier)
    argv = ["index", "calibrate", str(tmp_path / "index"), "--unknown", str(tmp_path), "--quiet"]
    assert main([*argv, "--trust-model"]) == 2
    assert "trust_model=True" in capsys.readouterr().err
    assert main(argv) == 2
    assert "trust_model=False" in capsys.readouterr().err


def _flags_of(command):
    """The options `nnfp COMMAND` accepts."""
    from nnfp.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {flag for action in sub._actions for flag in action.option_strings}


def test_export_errors_name_only_flags_export_has(tmp_path, capsys):
    import re

    saved_model = tmp_path / "saved"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"")  # an exported SavedModel: nothing to export
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    flags = _flags_of("export")
    for argv in (
        ["export", str(saved_model), str(tmp_path / "out")],
        ["export", str(saved_model), str(user)],
        ["export", str(saved_model), str(tmp_path / "out"), "--format", "litert"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("nnfp export: error:") and "\n" not in err, err
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", err))
        assert named <= flags, (named - flags, err)
    assert not (tmp_path / "out").exists() and sorted(p.name for p in user.iterdir()) == ["notes.txt"]


def test_help_states_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for part in ("Exit status: 0", "1 when every query", "2 ", "130", "143", "141"):
        assert part in text, text
