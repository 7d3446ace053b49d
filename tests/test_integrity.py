"""Index integrity: checksums and probe fingerprints, corrupted files, model safety, locking, paths."""

import errno
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main

RATE = 8000


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """Two untrained tiny models (different weights), four 4 s tracks and an index of them."""
    from nnfp.catalogue.build import build_index
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("integrity")
    for name, seed in (("a.keras", 1), ("b.keras", 2)):
        tiny_model(root / name, seed)
    for folder, seeds in (("music", range(4)), ("more", range(10, 12)), ("other", range(20, 22))):
        (root / folder).mkdir()
        for seed in seeds:
            sf.write(root / folder / f"track_{seed:02d}.wav", compose_track(seed, 4.0, RATE), RATE)
    sf.write(root / "query.wav", sf.read(root / "music" / "track_01.wav")[0][RATE : 3 * RATE], RATE)
    index = root / "index"
    build_index(root / "music", index, model=root / "a.keras", index_type="flat", progress=False)
    return root, index


def _copy(index, tmp_path):
    target = tmp_path / "idx"
    shutil.copytree(index, target)
    return target


def _drop_integrity(index, *keys):
    """Makes `index` look like one written by an older nnfp (no checksums, no probes)."""
    meta = json.loads((index / "tracks.json").read_text())
    meta.pop("integrity")
    for key in keys:
        meta["metadata"].pop(key)
    (index / "tracks.json").write_text(json.dumps(meta))
    return meta


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_index_records_checksums_and_probes(setup, capsys):
    from nnfp.catalogue.fingerprint import N_PROBES
    from nnfp.catalogue.identify import Identifier
    from nnfp.store.db import FingerprintDB

    root, index = setup
    meta = json.loads((index / "tracks.json").read_text())
    files = meta["integrity"]["files"]
    assert set(files) == {
        "embeddings.npy", "segments.npz", "index.faiss", "model.keras",
        "litert/model.tflite", "litert/spectrum.tflite", "litert/spec.json",
    }
    assert files["embeddings.npy"]["size"] == (index / "embeddings.npy").stat().st_size
    assert len(files["model.keras"]["sha256"]) == 64
    probe = np.array(meta["metadata"]["probe"]["fingerprints"])
    assert probe.shape == (N_PROBES, 16)
    np.testing.assert_allclose(np.linalg.norm(probe, axis=1), 1.0, atol=1e-4)
    assert FingerprintDB.load(index).integrity == meta["integrity"]
    identifier = Identifier(index, min_score=None)
    assert identifier.identify_file(root / "query.wav")[0].path == "track_01.wav"
    assert main(["index", "verify", str(index)]) == 0
    assert capsys.readouterr().out.strip().endswith("probe fingerprints)")


def _overwrite_middle(path, n_bytes=4096, seed=0):
    data = bytearray(path.read_bytes())
    first = 128 if len(data) > 256 else 0
    n_bytes = min(n_bytes, len(data) - first)
    data[first : first + n_bytes] = np.random.default_rng(seed).bytes(n_bytes)
    path.write_bytes(bytes(data))


def _randomize(path):
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


CORRUPTIONS = {
    # name: (file, damage, expected message part with checksums, without checksums (older index))
    "embeddings random bytes": (
        "embeddings.npy", _overwrite_middle, "content does not match its checksum", None,
    ),
    "embeddings truncated": (
        "embeddings.npy", _truncate, "(truncated or replaced)", "damaged or unreadable (ValueError",
    ),
    "segments truncated": ("segments.npz", _truncate, "(truncated or replaced)", "damaged or unreadable (BadZipFile"),
    "segments bad crc": (
        "segments.npz", lambda p: _overwrite_middle(p, 16, seed=3), "content does not match its checksum",
        "damaged or unreadable (",
    ),
    "index.faiss random bytes": (
        "index.faiss", _randomize, "content does not match its checksum", "damaged or unreadable (RuntimeError",
    ),
    "model truncated": ("model.keras", _truncate, "(truncated or replaced)", "cannot load model"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_each_corruption_is_one_clear_message(setup, tmp_path, capsys, case):
    root, index = setup
    name, damage, message, old_message = CORRUPTIONS[case]
    index = _copy(index, tmp_path)
    damage(index / name)
    assert main(["identify", str(index), str(root / "query.wav")]) == 2
    err = _error_line(capsys)
    assert f"{index / name}: " in err and message in err and "rebuild the index" in err, err
    assert main(["index", "verify", str(index)]) == 2
    out = capsys.readouterr().out
    assert f"PROBLEM: {index / name}: " in out and message in out, out

    if old_message is None:  # same size, valid layout: only a checksum can tell
        return
    _drop_integrity(index)
    runtime = ["--runtime", "tensorflow"] if name == "model.keras" else []  # the Keras model itself
    assert main(["identify", str(index), str(root / "query.wav"), *runtime]) == 2
    err = _error_line(capsys)
    assert f"{index / name}" in err and old_message in err, err
    assert "re-export it" in err if name == "model.keras" else "rebuild the index" in err


def test_bad_tracks_json(setup, tmp_path, capsys):
    root, index = setup
    index = _copy(index, tmp_path)
    text = (index / "tracks.json").read_text()
    (index / "tracks.json").write_text(text[: len(text) // 2])
    assert main(["identify", str(index), str(root / "query.wav")]) == 2
    err = _error_line(capsys)
    assert f"{index / 'tracks.json'}: damaged or unreadable (JSONDecodeError" in err and "rebuild" in err
    (index / "tracks.json").write_text(text.replace('"duration_s": 4.0', '"duration_s": 5.0', 1))
    assert main(["identify", str(index), str(root / "query.wav")]) == 2
    assert "tracks.json: content does not match its checksum (edited or damaged)" in _error_line(capsys)


def test_broken_keras_file_is_not_file_not_found(setup, tmp_path):
    from nnfp.export import ModelLoadError, load_fingerprinter

    broken = tmp_path / "broken.keras"
    broken.write_bytes((setup[0] / "a.keras").read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"cannot load model .*broken.keras: not a readable .keras archive"):
        load_fingerprinter(broken)
    broken.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: no config inside
    with pytest.raises(ModelLoadError, match=r"cannot load model .*broken.keras: .*; re-export it") as info:
        load_fingerprinter(broken)
    assert "File not found" not in str(info.value)


def test_other_model_is_refused(setup, capsys):
    root, index = setup
    query = str(root / "query.wav")
    assert main(["identify", str(index), query, "--model", str(root / "b.keras")]) == 2
    err = _error_line(capsys)
    assert "b.keras does not reproduce the fingerprints of this index (probe difference" in err
    assert "leave out --model" in err
    assert main(["identify", str(index), query, "--model", str(root / "a.keras"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["matches"][0]["track"] == "track_01.wav"
    assert main(["index", "verify", str(index), "--model", str(root / "b.keras")]) == 2
    assert "does not reproduce" in capsys.readouterr().out


def test_replaced_model_inside_index_is_refused(setup, tmp_path):
    from nnfp.catalogue.fingerprint import ModelMismatchError
    from nnfp.catalogue.identify import Identifier

    root, index = setup
    index = _copy(index, tmp_path)
    shutil.copyfile(root / "b.keras", index / "model.keras")
    _drop_integrity(index)  # checksums would catch it first; the probes catch it too
    with pytest.raises(ModelMismatchError, match="the index's own model .* rebuild it"):
        Identifier(index, runtime="tensorflow")
    with pytest.raises(ModelMismatchError, match="the index's own model .* rebuild it"):
        shutil.rmtree(index / "litert")  # without its LiteRT copy, the Keras model runs by default
        Identifier(index)


def test_older_index_without_checksums_still_loads(setup, tmp_path, capsys):
    root, index = setup
    index = _copy(index, tmp_path)
    _drop_integrity(index, "probe")
    assert main(["identify", str(index), str(root / "query.wav"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "records no checksums (built by an older nnfp)" in captured.err
    assert json.loads(captured.out)["matches"][0]["track"] == "track_01.wav"
    assert main(["index", "verify", str(index)]) == 0
    out = capsys.readouterr().out
    assert "no checksums recorded" in out and "no probe fingerprints recorded" in out
    assert out.strip().endswith("OK as far as it can be checked")


def test_savedmodel_needs_trust(setup, tmp_path, capsys):
    from nnfp.catalogue.build import build_index
    from nnfp.export import UntrustedModelError, export_saved_model, load_fingerprinter

    root, _ = setup
    saved = export_saved_model(load_fingerprinter(root / "a.keras").model, tmp_path / "saved")
    with pytest.raises(UntrustedModelError, match="SavedModel, which can run arbitrary operations"):
        load_fingerprinter(saved)
    index = tmp_path / "idx"
    assert main(["index", "build", str(root / "music"), str(index), "--model", str(saved), "--quiet"]) == 2
    assert "pass --trust-model" in _error_line(capsys) and not index.exists()
    build_index(root / "music", index, model=saved, index_type="flat", progress=False, trust_model=True)
    assert (index / "model" / "saved_model.pb").is_file()
    query = str(root / "query.wav")
    assert main(["identify", str(index), query]) == 2  # the SavedModel found inside the index
    assert "pass --trust-model" in _error_line(capsys)
    assert main(["identify", str(index), query, "--trust-model", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["matches"][0]["track"] == "track_01.wav"
    # the SavedModel reproduces the probes of the .keras index it was exported from
    assert main(["identify", str(setup[1]), query, "--model", str(saved), "--trust-model"]) == 0


@pytest.mark.parametrize("model_file", ["../a.keras", "/etc/passwd", "sub/../../a.keras"])
def test_model_path_may_not_leave_the_index(setup, tmp_path, capsys, model_file):
    root, index = setup
    index = _copy(index, tmp_path / "copy")
    meta = json.loads((index / "tracks.json").read_text())
    meta.pop("integrity")
    meta["metadata"]["model_file"] = model_file
    (index / "tracks.json").write_text(json.dumps(meta))
    shutil.copyfile(root / "a.keras", tmp_path / "copy" / "a.keras")
    assert main(["identify", str(index), str(root / "query.wav")]) == 2
    assert f"the index's model path {model_file!r} leads outside the index folder" in _error_line(capsys)


def test_concurrent_adds_wait_for_each_other(setup, tmp_path):
    from nnfp.catalogue.build import add_to_index
    from nnfp.store.db import FingerprintDB

    root, index = setup
    index = _copy(index, tmp_path)
    errors = []

    def add(folder):
        try:
            add_to_index(index, root / folder, progress=False)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=add, args=(folder,)) for folder in ("more", "other", "more")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = FingerprintDB.load(index)
    paths = sorted(t["path"] for t in db.tracks)
    assert len(paths) == 4 + 2 + 2 and len(db.metadata["sources"]) == 3  # "more" added once
    assert sorted(os.listdir(tmp_path)) == ["idx"]  # no lock, .partial or .tmp left


def test_add_gives_up_after_lock_timeout(setup, tmp_path, capsys):
    from nnfp.catalogue.build import IndexLockedError, add_to_index, index_lock

    root, index = setup
    index = _copy(index, tmp_path)
    with index_lock(index):
        with pytest.raises(IndexLockedError, match="another process is changing this index"):
            add_to_index(index, root / "more", progress=False, lock_timeout=0.3)
        args = ["index", "add", str(index), str(root / "more"), "--quiet", "--lock-timeout", "0.2"]
        assert main(args) == 2
        assert "gave up after 0.2 s: run again once it has finished" in _error_line(capsys)

    acquired = threading.Event()

    def hold():
        with index_lock(index):
            acquired.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert acquired.wait(10)
    started = time.perf_counter()
    assert add_to_index(index, root / "more", progress=False).n_tracks == 2  # waited, then added
    assert time.perf_counter() - started >= 0.3
    holder.join()


def test_same_folder_by_another_path_is_not_added_twice(setup, tmp_path, monkeypatch):
    from nnfp.catalogue.build import add_to_index

    root, index = setup
    index = _copy(index, tmp_path)
    assert add_to_index(index, root / "music" / ".." / "music", progress=False).n_tracks == 0
    monkeypatch.chdir(root)
    assert add_to_index(index, "./music/", progress=False).n_tracks == 0
    assert add_to_index(index, "more/../more", progress=False).n_tracks == 2
    assert add_to_index(index, root / "more", progress=False).n_tracks == 0


def test_full_disk_leaves_the_index_intact(setup, tmp_path, capsys, monkeypatch):
    import nnfp.store.faiss_index

    root, index = setup
    index = _copy(index, tmp_path)
    before = {name: (index / name).read_bytes() for name in os.listdir(index) if (index / name).is_file()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(nnfp.store.faiss_index.faiss, "write_index", full)
    assert main(["index", "add", str(index), str(root / "more"), "--quiet"]) == 2
    err = _error_line(capsys)
    assert "No space left on device" in err and "free some space and run again" in err
    after = {name: (index / name).read_bytes() for name in os.listdir(index) if (index / name).is_file()}
    assert after == before
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]


def test_speed_after_resume_counts_only_fresh_audio(setup, tmp_path):
    from nnfp.catalogue.build import build_index

    root, _ = setup

    def interrupt(chunk):
        if chunk == 0:
            raise KeyboardInterrupt

    index = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(root / "music", index, model=root / "a.keras", chunk_files=2, progress=False, on_chunk=interrupt)
    report = build_index(root / "music", index, model=root / "a.keras", chunk_files=2, progress=False)
    assert report.resumed_chunks == 1
    assert report.audio_seconds == pytest.approx(16.0) and report.fresh_audio_seconds == pytest.approx(8.0)
    assert report.realtime_factor == pytest.approx(8.0 / report.fingerprint_seconds)


def test_newline_in_file_name_stays_on_one_line(setup, tmp_path, capsys):
    root, index = setup
    query = tmp_path / "take\n2.wav"
    shutil.copyfile(root / "query.wav", query)
    assert main(["identify", str(index), str(query), "--min-score", "-1", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == repr(str(query)) + ":" and len(lines) == 3
    assert lines[1].startswith("  1. track_01.wav  offset 1.0 s")
