"""Command line end to end: train on audio folders, model-summary, export, fingerprint, search."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from nnfp.catalogue.fingerprint import fingerprint_tracks
from nnfp.cli import main
from nnfp.corpus.synth import compose_track

TINY = [
    "train.jit_compile=false",  # XLA compiles in ~10 s: worth it for long runs, not for 2-step tests
    "encoder.width=0.03125",
    "projection.embedding_dim=16",
    "train.batch_size=8",
    "train.n_anchors=4",
    "train.val_batch_size=8",
    "train.steps_per_epoch=2",
    "train.epochs=1",
    "train.mini_search_scopes=[1,3]",
    "train.verbose=0",
    "data.val_max_segments=16",
]


@pytest.fixture(scope="module")
def audio_root(tmp_path_factory):
    """Folders of real files in mixed formats, rates and channel counts."""
    root = tmp_path_factory.mktemp("audio")
    (root / "train" / "sub").mkdir(parents=True)
    (root / "val").mkdir()
    for i in range(4):
        x = compose_track(500 + i, 8.0, 16000)
        stereo = np.stack([x, 0.5 * x], axis=1)
        fmt = ("wav", "flac", "ogg", "wav")[i]
        folder = root / "train" / ("sub" if i % 2 else "")
        sf.write(folder / f"song{i}.{fmt}", stereo if i < 2 else x, 16000)
    for i in range(2):
        sf.write(root / "val" / f"val{i}.wav", compose_track(600 + i, 8.0, 8000), 8000)
    (root / "train" / "broken.wav").write_bytes(b"not audio at all")
    return root


def test_train_from_folders_then_export_and_identify(audio_root, tmp_path, capsys):
    run = tmp_path / "run"
    overrides = [
        f"data.root={audio_root}", "data.train=train", "data.val=val",
        "data.noise=null", "data.impulse_responses=null",
    ]
    args = ["train", "--run-dir", str(run)]
    for item in TINY + overrides:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "skipped" in out and "broken.wav" in out  # bad file reported, training went on
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_per_epoch"] == 2 and summary["skipped"][0][0].endswith("broken.wav")
    assert (run / "config.yaml").exists()

    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    from nnfp.audio.sources import load_tracks
    from nnfp.export import load_fingerprinter
    from nnfp.store.db import FingerprintDB

    embedder = load_fingerprinter(tmp_path / "exported", trust_model=True)  # our own export
    tracks, paths, _ = load_tracks(sorted((audio_root / "val").glob("*.wav")))
    embeddings, owners, starts = fingerprint_tracks(embedder, tracks, 4000)
    assert embeddings.shape == (len(owners), 16)
    table = [{"track_id": i, "path": p.name, "duration_s": len(t) / 8000} for i, (p, t) in enumerate(zip(paths, tracks, strict=False))]
    db = FingerprintDB.build(embeddings, owners, starts / 8000, table)
    query = tracks[1][12000:12000 + 24000]  # 3 s from 1.5 s, clean
    segments = np.stack([query[s:s + 8000] for s in range(0, 16001, 4000)])
    match = db.search(embedder.fingerprint(segments), n_results=1)[0]
    assert match.path == "val1.wav" and match.offset_s == pytest.approx(1.5)


def test_model_summary_last_line(capsys):
    assert main(["model-summary", "configs/default.yaml"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "params: 16939008"


def test_config_error_exit_code(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path), "--set", "train.batch_size=7"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size" in err and "7" in err
    assert not (tmp_path / "model.keras").exists()


def test_missing_data_folder_is_named(tmp_path, capsys):
    args = ["train", "--run-dir", str(tmp_path / "r"), "--set", f"data.train={tmp_path / 'nope'}"]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err




def test_xla_cache_folder_follows_the_environment(tmp_path):
    from nnfp.cli import xla_cache_directory

    for off in ("off", "", "0"):
        assert xla_cache_directory({"NNFP_XLA_CACHE": off}) is None
    chosen = xla_cache_directory({"NNFP_XLA_CACHE": str(tmp_path)})
    assert chosen.parent == tmp_path and chosen.name.startswith("tf")  # one folder per TF version + CPU
    default = xla_cache_directory({"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert default.parent == tmp_path / "xdg" / "nnfp" / "xla" and default.name == chosen.name
    inside = xla_cache_directory({"NNFP_CACHE": str(tmp_path / "cache")})  # nnfp's cache folder
    assert inside.parent == tmp_path / "cache" / "xla"


def test_cli_points_tensorflow_at_the_xla_cache(tmp_path, monkeypatch):
    from nnfp.cli import _use_xla_cache, xla_cache_directory

    monkeypatch.setenv("NNFP_XLA_CACHE", str(tmp_path))
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_auto_jit=0")
    _use_xla_cache()
    folder = xla_cache_directory()
    assert folder.is_dir()
    assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=0 --tf_xla_persistent_cache_directory={folder}"
    _use_xla_cache()  # a cache already named is left alone
    assert os.environ["TF_XLA_FLAGS"].count("persistent_cache") == 1
    monkeypatch.setenv("NNFP_XLA_CACHE", "off")
    monkeypatch.setenv("TF_XLA_FLAGS", "")
    _use_xla_cache()
    assert os.environ["TF_XLA_FLAGS"] == ""


def test_commands_on_tensorflow_print_only_their_own_lines_on_stderr(tmp_path, tiny_model):
    """TensorFlow's, XLA's and CUDA's log lines (start-up probes, persistent-cache notes) stay off
    stderr, with a cold XLA cache and a warm one."""
    import subprocess
    import sys

    tiny_model(tmp_path / "tiny.keras", seed=1)
    (tmp_path / "music").mkdir()
    for i in range(2):
        sf.write(tmp_path / "music" / f"t{i}.wav", compose_track(700 + i, 6.0, 8000), 8000)
    sf.write(tmp_path / "clip.wav", compose_track(701, 6.0, 8000)[8000:32000], 8000)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
    env["NNFP_XLA_CACHE"] = str(tmp_path / "xla")  # a fresh cache: the first command compiles

    def nnfp(*args):
        done = subprocess.run([sys.executable, "-m", "nnfp.cli", *args], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        return done

    index = str(tmp_path / "index")
    built = nnfp("index", "build", str(tmp_path / "music"), index, "--model", str(tmp_path / "tiny.keras"),
                 "--runtime", "tensorflow", "--quiet")
    assert list((tmp_path / "xla").rglob("*.pb"))  # compiled programs were kept
    runs = [nnfp("identify", index, str(tmp_path / "clip.wav"), "--runtime", "tensorflow") for _ in range(2)]
    for done in (built, *runs):
        assert all(line.startswith("nnfp") for line in done.stderr.splitlines()), done.stderr
    assert runs[1].stdout == runs[0].stdout and "t1.wav  offset 1.0 s" in runs[0].stdout


def test_verbose_is_taken_before_or_after_the_command():
    from nnfp.cli import build_parser

    parse = build_parser().parse_args
    assert parse(["identify", "INDEX", "clip.wav", "--verbose"]).verbose is True
    assert parse(["--verbose", "index", "build", "AUDIO", "INDEX"]).verbose is True
    assert parse(["index", "build", "AUDIO", "INDEX"]).verbose is False
