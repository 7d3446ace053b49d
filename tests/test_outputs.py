"""No command writes into, or deletes, a folder it did not create (`nnfp.outputs`)."""

import json

import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main
from nnfp.outputs import MARKER_FILE, OutputFolderError, claim_output_dir, output_kind

RATE = 8000


def _listing(folder):
    return sorted((p.relative_to(folder).as_posix(), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


@pytest.fixture()
def music(tmp_path):
    folder = tmp_path / "music"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        sf.write(folder / f"song{i}.wav", 0.3 * rng.standard_normal(3 * RATE).astype("float32"), RATE)
    (folder / "notes.txt").write_text("my notes\n")
    return folder


def test_claim_rules(tmp_path):
    assert claim_output_dir(tmp_path / "new", "index") == "new"
    (tmp_path / "empty").mkdir()
    assert claim_output_dir(tmp_path / "empty", "index") == "empty"
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("x")
    with pytest.raises(OutputFolderError, match=r"notes: the folder is not empty and is not an nnfp index.*'todo.txt'"):
        claim_output_dir(notes, "index", overwrite=True)
    index = tmp_path / "index"
    index.mkdir()
    (index / MARKER_FILE).write_text(json.dumps({"kind": "index"}))
    (index / "tracks.json").write_text("{}")
    with pytest.raises(OutputFolderError, match="already holds an nnfp index; pass --overwrite"):
        claim_output_dir(index, "index")
    assert claim_output_dir(index, "index", overwrite=True) == "ours"
    with pytest.raises(OutputFolderError, match="is not an nnfp exported model: it holds an nnfp index"):
        claim_output_dir(index, "export", overwrite=True)
    with pytest.raises(OutputFolderError, match="inside the input"):
        claim_output_dir(tmp_path / "music" / "idx", "index", inputs=[tmp_path / "music"])
    with pytest.raises(OutputFolderError, match="the same as the input"):
        claim_output_dir(tmp_path / "a" / ".." / "music", "index", inputs=[tmp_path / "music"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is not a folder"):
        claim_output_dir(tmp_path / "file", "run", reuse=True)


@pytest.mark.parametrize("target", ["music", "notes", "inside"])
def test_index_build_never_touches_a_users_folder(music, tmp_path, capsys, target):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "diary.md").write_text("dear diary\n")
    out = {"music": music, "notes": notes, "inside": music / "index"}[target]
    before = {folder: _listing(folder) for folder in (music, notes)}
    code = main(["index", "build", str(music), str(out), "--index-type", "flat", "--quiet", "--overwrite"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("nnfp index build: error: ") and "nothing was written" in err
    assert {folder: _listing(folder) for folder in (music, notes)} == before
    assert not (music / "index").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_index_build_replaces_its_own_index_only_with_overwrite(music, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", str(music), str(out), "--index-type", "flat", "--quiet"]) == 0
    assert output_kind(out) == "index" and (out / MARKER_FILE).is_file()
    first = (out / "embeddings.npy").read_bytes()
    capsys.readouterr()
    assert main(["index", "build", str(music), str(out), "--index-type", "flat", "--quiet"]) == 2
    assert "already holds an nnfp index; pass --overwrite to replace it" in capsys.readouterr().err
    assert main(["index", "build", str(music), str(out), "--index-type", "flat", "--quiet", "--overwrite"]) == 0
    assert (out / "embeddings.npy").read_bytes() == first


def test_export_prepare_and_train_refuse_foreign_folders(music, tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("keep")
    # export: checked before the model is even loaded
    assert main(["export", str(tmp_path / "no-run"), str(notes)]) == 2
    assert "is not an nnfp exported model" in capsys.readouterr().err
    # data prepare into the source folder, or into a foreign folder
    assert main(["data", "prepare", str(music), str(music / "cache"), "--quiet"]) == 2
    assert "inside the input" in capsys.readouterr().err
    assert main(["data", "prepare", str(music), str(notes), "--quiet"]) == 2
    assert "is not an nnfp prepared audio cache" in capsys.readouterr().err
    # a prepared cache is resumed, not refused
    assert main(["data", "prepare", str(music), str(tmp_path / "cache"), "--quiet"]) == 0
    assert main(["data", "prepare", str(music), str(tmp_path / "cache"), "--quiet"]) == 0
    assert output_kind(tmp_path / "cache") == "prepared"
    # train into a folder that is not a run directory
    assert main(["train", "--run-dir", str(notes), "--set", "train.epochs=1"]) == 2
    assert "is not an nnfp training run" in capsys.readouterr().err
    assert (notes / "keep.txt").read_text() == "keep" and sorted(p.name for p in notes.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("files", [("saved_model.pb", "variables/variables.index"), ("tracks.json", "embeddings.npy")])
def test_a_folder_that_only_looks_like_nnfp_output_is_refused_intact(music, tmp_path, capsys, files):
    # Someone's own TensorFlow SavedModel, or someone's own tracks.json and embeddings.npy:
    # without nnfp's marker they are not nnfp's to replace.
    theirs = tmp_path / "theirs"
    for name in (*files, "README.txt"):
        (theirs / name).parent.mkdir(parents=True, exist_ok=True)
        (theirs / name).write_bytes(f"their {name}".encode())
    before = _listing(theirs)
    assert output_kind(theirs) is None
    assert main(["export", str(tmp_path / "no-run"), str(theirs), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is not an nnfp exported model" in err and f"without nnfp's marker {MARKER_FILE}" in err
    assert main(["index", "build", str(music), str(theirs), "--index-type", "flat", "--quiet", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "is not an nnfp index" in err and "nothing was written" in err
    for kind in ("index", "export", "run", "evaluation"):
        with pytest.raises(OutputFolderError, match="is not an nnfp"):
            claim_output_dir(theirs, kind, overwrite=True, reuse=True)
    assert _listing(theirs) == before and not list(tmp_path.glob(".theirs*")) and not list(tmp_path.glob("*.partial"))


_COUNTER = """
import sys, time
from pathlib import Path
from nnfp.outputs import output_lock
folder, counter = Path(sys.argv[1]), Path(sys.argv[2])
for _ in range(20):
    with output_lock(folder, what="cache"):
        value = int(counter.read_text())
        time.sleep(0.002)  # a reader-modify-write that interleaves without the lock
        counter.write_text(str(value + 1))
"""


def test_output_lock_excludes_other_processes_and_leaves_no_file(tmp_path):
    import subprocess
    import sys

    from nnfp.outputs import lock_path

    counter = tmp_path / "counter"
    counter.write_text("0")
    workers = [subprocess.Popen([sys.executable, "-c", _COUNTER, str(tmp_path / "cache"), str(counter)])
               for _ in range(3)]
    assert [w.wait(timeout=120) for w in workers] == [0, 0, 0]
    assert counter.read_text() == "60"  # no update lost
    assert not lock_path(tmp_path / "cache").exists()
    assert lock_path(tmp_path / "cache") == tmp_path / ".cache.nnfp-lock"


def test_output_lock_waits_tells_once_and_gives_up_with_the_folder_named(tmp_path):
    import threading

    from nnfp.outputs import OutputLockedError, lock_path, output_lock

    messages = []
    with output_lock(tmp_path / "cache", what="cache"):
        with pytest.raises(OutputLockedError) as caught:
            with output_lock(tmp_path / "cache", timeout=0.3, log=messages.append, what="cache"):
                pass
    assert str(caught.value) == (
        f"{tmp_path / 'cache'}: another process is changing this cache (it holds {lock_path(tmp_path / 'cache')}); "
        "gave up after 0.3 s: run again once it has finished"
    )
    assert messages == [f"waiting for another process changing {tmp_path / 'cache'} (lock {lock_path(tmp_path / 'cache')})"]
    order = []

    def second():
        with output_lock(tmp_path / "cache"):
            order.append("second")

    with output_lock(tmp_path / "cache"):  # the second holder enters once the first has left
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(0.3)
        assert order == [] and waiter.is_alive()
        order.append("first")
    waiter.join(10)
    assert order == ["first", "second"]
