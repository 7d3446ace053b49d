"""Removing tracks from an index and adding one track at a time (issue 29: a catalogue that changes)."""

import json
import os
import re
import shutil
import threading

import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main

RATE = 8000
N_TRACKS = 6  # 4 s each: 7 segments on the 0.5 s hop, 42 rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """An untrained tiny model, generated music, a flat index of `music/` and the identifier's embedder."""
    from nnfp.catalogue.build import build_index
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("remove")
    tiny_model(root / "tiny.keras", seed=1)
    for folder, seeds in (("music", range(N_TRACKS)), ("other", range(20, 22))):
        (root / folder).mkdir()
        for seed in seeds:
            sf.write(root / folder / f"track_{seed:02d}.wav", compose_track(seed, 4.0, RATE), RATE)
    index = root / "index"
    build_index(root / "music", index, model=root / "tiny.keras", index_type="flat", progress=False)
    return root, index


def _copy(index, tmp_path, name="idx"):
    target = tmp_path / name
    shutil.copytree(index, target)
    return target


def _excerpt(root, path, start=1.0, seconds=2.0):
    audio, _ = sf.read(root / path, dtype="float32")
    return audio[int(start * RATE) : int((start + seconds) * RATE)]


def _answers(index, root, paths, n_results=10):
    """`{path: [(track_id, offset, score), ...]}` for an exact 2 s excerpt (at 1 s) of each track."""
    from nnfp.catalogue.identify import Identifier

    identifier = Identifier(index, min_score=None)
    return {
        path: [(m.track_id, m.offset_s, round(m.score, 4)) for m in identifier.identify_audio(
            _excerpt(root, path), n_results=n_results)]
        for path in paths
    }


def _file_states(index):
    """(inode, mtime, size) of every file of the index but tracks.json."""
    return {
        path.relative_to(index).as_posix(): (path.stat().st_ino, path.stat().st_mtime_ns, path.stat().st_size)
        for path in index.rglob("*") if path.is_file() and path.name != "tracks.json"
    }


def _verified(index):
    from nnfp.catalogue.build import verify_index

    problems, _ = verify_index(index)
    return problems


def test_removed_tracks_are_never_answered_and_only_tracks_json_changes(setup, tmp_path):
    from nnfp.catalogue.build import remove_tracks
    from nnfp.store.db import FingerprintDB

    root, index = setup
    target = _copy(index, tmp_path)
    paths = [f"music/track_{i:02d}.wav" for i in range(N_TRACKS)]
    before = _answers(target, root, paths)
    assert [before[p][0][:2] for p in paths] == [(i, 1.0) for i in range(N_TRACKS)]  # exact excerpts
    files = _file_states(target)

    removed = remove_tracks(target, [1, "track_03.wav"])
    assert [(t["track_id"], t["path"], t["duration_s"]) for t in removed] == [
        (1, "track_01.wav", 4.0), (3, "track_03.wav", 4.0)
    ]
    assert _file_states(target) == files  # only tracks.json was written (14 of 42 rows: no compaction)
    db = FingerprintDB.load(target)
    assert (db.n_segments, db.n_live_segments, db.n_removed_segments) == (42, 28, 14)
    assert (len(db.tracks), db.n_live_tracks, db.removed_track_ids) == (6, 4, [1, 3])
    assert [t["track_id"] for t in db.live_tracks] == [0, 2, 4, 5]
    assert not db.is_live(1) and db.is_live(2)

    after = _answers(target, root, paths)
    for path in paths:
        assert not {1, 3} & {track_id for track_id, _, _ in after[path]}, (path, after[path])
    for i in (0, 2, 4, 5):  # the others are answered as before
        assert after[paths[i]][0] == before[paths[i]][0]
    assert _verified(target) == []
    meta = json.loads((target / "tracks.json").read_text())
    assert [t.get("removed", False) for t in meta["tracks"]] == [False, True, False, True, False, False]


def test_index_remove_cli_and_refusals_change_nothing(setup, tmp_path, capsys):
    root, index = setup
    target = _copy(index, tmp_path)
    assert main(["index", "remove", str(target), "2", "track_04.wav"]) == 0
    assert capsys.readouterr().out == "removed 2: track_02.wav\nremoved 4: track_04.wav\n"
    table = (target / "tracks.json").read_bytes()

    assert main(["index", "remove", str(target), "0", "99", "nope.wav"]) == 2
    assert "error: no track 99, 'nope.wav' in the index; nothing was removed" in capsys.readouterr().err
    assert main(["index", "remove", str(target), "track_02.wav", "5"]) == 2
    assert "already removed: 'track_02.wav'; nothing was removed" in capsys.readouterr().err
    assert main(["index", "remove", str(target), "4"]) == 2
    assert "already removed: 4 (track_04.wav)" in capsys.readouterr().err
    assert (target / "tracks.json").read_bytes() == table  # not even track 0 or 5 went
    assert main(["index", "verify", str(target)]) == 0


def test_forced_and_automatic_compaction_drop_the_rows(setup, tmp_path):
    from nnfp.catalogue.build import remove_tracks
    from nnfp.store.db import FingerprintDB

    root, index = setup
    paths = [f"music/track_{i:02d}.wav" for i in range(N_TRACKS)]
    before = _answers(index, root, paths, n_results=1)
    names = sorted(os.listdir(index))

    forced = _copy(index, tmp_path, "forced")
    remove_tracks(forced, ["0"], compact=True)
    db = FingerprintDB.load(forced)
    assert (db.n_segments, db.n_live_segments, db.n_removed_segments) == (35, 35, 0)
    assert np.unique(db.segment_track).tolist() == [1, 2, 3, 4, 5]
    assert len(db.tracks) == 6 and db.tracks[0]["removed"] is True  # ids stay taken
    assert sorted(os.listdir(forced)) == names  # model, LiteRT copy and calibration kept
    after = _answers(forced, root, paths[1:], n_results=1)
    assert after == {path: before[path] for path in paths[1:]}
    assert _verified(forced) == []

    auto = _copy(index, tmp_path, "auto")
    remove_tracks(auto, [0, 1])  # 14 of 42 rows: marked only
    assert FingerprintDB.load(auto).n_segments == 42
    remove_tracks(auto, [2, 3])  # 28 of 42 rows: compacted
    db = FingerprintDB.load(auto)
    assert (db.n_segments, db.n_live_tracks, db.removed_track_ids) == (14, 2, [0, 1, 2, 3])
    assert _answers(auto, root, paths[4:], n_results=1) == {path: before[path] for path in paths[4:]}
    assert _verified(auto) == []


def test_a_reader_loading_during_removals_never_fails(setup, tmp_path):
    from nnfp.catalogue.build import remove_tracks
    from nnfp.store.db import FingerprintDB

    _, index = setup
    target = _copy(index, tmp_path)
    query = FingerprintDB.load(index, mmap=False).embeddings[7 * 5 + 1 : 7 * 5 + 4]  # track 5's rows
    errors, loads, done = [], [0], threading.Event()

    def read():
        while not done.is_set():
            try:
                db = FingerprintDB.load(target)
                assert db.n_live_segments == 7 * db.n_live_tracks
                assert db.search(query, n_results=1)[0].track_id == 5
                loads[0] += 1
            except Exception as error:  # noqa: BLE001 -- every failure is a finding
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for track_id in range(5):  # the fourth compacts (28 of 42 rows), the fifth marks again
            remove_tracks(target, [track_id])
    finally:
        done.set()
        reader.join()
    assert errors == [] and loads[0] > 0
    db = FingerprintDB.load(target)
    assert (db.n_segments, db.n_live_segments) == (14, 7)


def test_add_track_checks_its_name_and_audio(setup, tmp_path):
    from nnfp.catalogue.build import add_track, remove_tracks
    from nnfp.catalogue.chunks import partial_dir
    from nnfp.catalogue.identify import Identifier

    root, index = setup
    target = _copy(index, tmp_path)
    new = root / "other" / "track_20.wav"
    table = (target / "tracks.json").read_bytes()
    for name, message in [
        ("../x.wav", "may not hold a '..' part"),
        ("/abs.wav", "must be a relative path"),
        ("a\x07b.wav", "may not hold control characters"),
        ("rock//x.wav", "must be a normalised path"),
        ("x" * 252 + ".wav", "at most 255 characters"),
        ("notes.txt", "must end in an audio extension"),
        ("track_00.wav", "'track_00.wav' is already track 0 of the index"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            add_track(target, new, name=name)
    with pytest.raises(ValueError, match="dup.wav: the same audio as 'track_01.wav' is already in the index"):
        add_track(target, root / "music" / "track_01.wav", name="dup.wav")
    assert (target / "tracks.json").read_bytes() == table and not partial_dir(target).exists()

    track = add_track(target, new, name="rock/new one.wav")
    assert (track["track_id"], track["path"], track["duration_s"]) == (6, "rock/new one.wav", 4.0)
    (match,) = Identifier(target, min_score=None).identify_audio(_excerpt(root, "other/track_20.wav"), n_results=1)
    assert (match.track_id, match.path, match.offset_s) == (6, "rock/new one.wav", 1.0)

    # A removed track's name and audio can come back, as a new track; ids keep increasing.
    remove_tracks(target, ["track_00.wav"])
    again = add_track(target, root / "music" / "track_00.wav")
    assert (again["track_id"], again["path"]) == (7, "track_00.wav")
    (match,) = Identifier(target, min_score=None).identify_audio(_excerpt(root, "music/track_00.wav"), n_results=1)
    assert (match.track_id, match.offset_s) == (7, 1.0)
    assert _verified(target) == []


def test_ivf_index_removal_and_compaction(setup, tmp_path):
    from nnfp.catalogue.build import add_to_index, build_index, remove_tracks
    from nnfp.store.db import FingerprintDB

    root, _ = setup
    index = tmp_path / "ivf"
    build_index(root / "music", index, model=root / "tiny.keras", index_type="ivf", nprobe=4, progress=False)
    paths = [f"music/track_{i:02d}.wav" for i in range(N_TRACKS)]
    before = _answers(index, root, paths, n_results=1)
    remove_tracks(index, [5])
    answers = _answers(index, root, paths)
    assert all(5 not in {m[0] for m in answers[p]} for p in paths)
    remove_tracks(index, [4], compact=True)
    db = FingerprintDB.load(index)
    assert (db.index_type, db.n_segments, db.index_params["nprobe"]) == ("ivf", 28, 4)
    assert _answers(index, root, paths[:4], n_results=1) == {p: before[p] for p in paths[:4]}
    assert _verified(index) == []
    report = add_to_index(index, root / "music", progress=False)  # removed tracks do not come back
    assert report.n_tracks == 0
