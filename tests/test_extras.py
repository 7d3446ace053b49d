"""Optional packages (TensorBoard, W&B, matplotlib): a feature that needs a missing one says which
extra installs it, before any work; the demo and the catalogue need none of them."""

import sys

import numpy as np
import pytest

from nnfp.config import CONFIG_DIR, load_config
from nnfp.extras import MissingExtraError, require


@pytest.fixture
def lean(monkeypatch):
    """An install without the optional packages: importing any of them, or a module of them
    another test already imported (matplotlib.pyplot), fails."""
    for name in ("tensorboard", "matplotlib", "wandb"):
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")] or [name]:
            monkeypatch.setitem(sys.modules, module, None)


def test_require_names_the_extra_and_the_way_around_it(lean):
    with pytest.raises(MissingExtraError) as caught:
        require("matplotlib.pyplot", "plots", "the plot", instead="--no-plot")
    assert str(caught.value) == (
        'the plot needs matplotlib, which is not installed: pip install "nnfp[plots]" (or --no-plot)'
    )
    assert caught.value.name == "matplotlib" and isinstance(caught.value, ImportError)
    assert require("json", "none", "json").dumps([1]) == "[1]"


def test_demo_config_needs_no_extra(lean):
    from nnfp.training import require_training_extras

    assert require_training_extras(load_config(CONFIG_DIR / "demo.yaml")) == {}


def test_train_without_tensorboard_fails_before_the_run_folder(lean, tmp_path, capsys):
    from nnfp.cli import main

    assert main(["train", "--run-dir", str(tmp_path / "run")]) == 2
    assert 'train.tensorboard: true (TensorBoard logs) needs tensorboard, which is not installed: pip install ' \
        '"nnfp[tensorboard]" (or --set train.tensorboard=false)' in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    args = ["train", "--run-dir", str(tmp_path / "run"), "--set", "train.tensorboard=false",
            "--set", "wandb.enabled=true"]
    assert main(args) == 2
    assert 'pip install "nnfp[wandb]" (or --set wandb.enabled=false)' in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_evaluate_results_are_written_before_the_plot_asks_for_matplotlib(lean, tmp_path):
    from nnfp.catalogue.reports import save_results

    rates = {"track_top1": np.array([50.0]), "n": np.array([2])}
    raw = {"valid": np.ones((2, 1), bool)}
    info = {"track": np.array([0, 1])}
    with pytest.raises(MissingExtraError, match=r'hit_rates.png \(the results are written\) needs matplotlib.*"nnfp\[plots\]"'):
        save_results(tmp_path, rates, [1.0], [1], raw, info, {"seed": 0}, "title")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md", "scores.npz"]
