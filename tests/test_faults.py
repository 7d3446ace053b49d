"""Confident wrong answers under faults and careless use (issue 26): racing builds, stale chunks,
dead air, damaged fingerprints without a record, readers during a writer, user files, duplicates."""

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


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """An untrained tiny model, two catalogues of generated music and an index of the first."""
    from nnfp.catalogue.build import build_index
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("faults")
    tiny_model(root / "tiny.keras", seed=1)
    for folder, seeds in (("music", range(4)), ("other", range(20, 24))):
        (root / folder).mkdir()
        for seed in seeds:
            sf.write(root / folder / f"track_{seed:02d}.wav", compose_track(seed, 4.0, RATE), RATE)
    index = root / "index"
    build_index(root / "music", index, model=root / "tiny.keras", index_type="flat", progress=False)
    return root, index


def _fingerprints_of(path, model):
    """The fingerprints a fresh, lone build of the file `path` gets (an independent reference)."""
    from nnfp.catalogue.fingerprint import fingerprint_tracks, load_model

    embedder, _ = load_model(model)
    return fingerprint_tracks(embedder, [sf.read(path, dtype="float32")[0]], RATE // 2)[0]


# ----------------------------------------------------------------- racing writers


def test_racing_builds_of_two_catalogues_never_mix_them(setup, tmp_path):
    from nnfp.catalogue.build import build_index
    from nnfp.outputs import OutputFolderError
    from nnfp.store.db import FingerprintDB

    root, _ = setup
    index = tmp_path / "shared"
    outcome = {}

    def run(folder):
        try:
            build_index(root / folder, index, model=root / "tiny.keras", index_type="flat", progress=False,
                        chunk_files=1, on_chunk=lambda _: threading.Event().wait(0.2))
            outcome[folder] = "built"
        except OutputFolderError as error:
            outcome[folder] = str(error)

    threads = [threading.Thread(target=run, args=(folder,)) for folder in ("music", "other")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    built = [folder for folder, result in outcome.items() if result == "built"]
    assert len(built) == 1, outcome  # the second waited for the first, then was refused
    (refused,) = set(outcome) - set(built)
    assert "already holds an nnfp index; pass --overwrite" in outcome[refused]
    db = FingerprintDB.load(index)
    assert sorted(t["path"] for t in db.tracks) == sorted(os.listdir(root / built[0]))
    for track in db.tracks:  # every track holds the fingerprints of its own audio
        rows = np.flatnonzero(db.segment_track == track["track_id"])
        expected = _fingerprints_of(root / built[0] / track["path"], root / "tiny.keras")
        np.testing.assert_allclose(db.embeddings[rows], expected, atol=1e-4)
    assert sorted(os.listdir(tmp_path)) == ["shared"]  # no lock, .partial or temporary folder left
    assert main(["index", "verify", str(index)]) == 0


def test_a_chunk_of_another_plan_is_never_reused(setup, tmp_path):
    """A chunk left in the work folder by another catalogue (same names, other audio) is made again."""
    from nnfp.catalogue.build import build_index
    from nnfp.catalogue.chunks import partial_dir
    from nnfp.store.db import FingerprintDB

    root, _ = setup
    index = tmp_path / "idx"
    stop = RuntimeError("stopped after the first chunk")

    def interrupt(chunk):
        raise stop

    with pytest.raises(RuntimeError):
        build_index(root / "music", index, model=root / "tiny.keras", progress=False, chunk_files=2, on_chunk=interrupt)
    work = partial_dir(index)
    (chunk,) = sorted(work.glob("chunk_*.npz"))
    with np.load(chunk) as done:
        stale = {key: done[key] for key in done.files}
    stale["embeddings"] = np.roll(stale["embeddings"], 3, axis=0)  # another catalogue's rows
    stale.pop("plan_sha256", None)
    np.savez(chunk, **stale)
    report = build_index(root / "music", index, model=root / "tiny.keras", progress=False, chunk_files=2)
    assert report.resumed_chunks == 0
    db = FingerprintDB.load(index)
    rows = np.flatnonzero(db.segment_track == 0)
    np.testing.assert_allclose(
        db.embeddings[rows], _fingerprints_of(root / "music" / "track_00.wav", root / "tiny.keras"), atol=1e-4
    )


def _two_versions(setup, tmp_path):
    """A copy of the test index, `(folder, its DB, the DB with every row added again)`: two
    versions of one folder for a writer to swap between."""
    from nnfp.store.db import FingerprintDB

    _, index = setup
    target = tmp_path / "idx"
    shutil.copytree(index, target)
    small = FingerprintDB.load(target, mmap=False)
    big = FingerprintDB.load(target, mmap=False)
    big.add(np.asarray(small.embeddings), small.segment_track, small.segment_start, small.tracks)
    return target, small, big


def test_readers_during_writes_never_see_a_mixed_folder(setup, tmp_path):
    from nnfp.store.db import FingerprintDB

    target, small, big = _two_versions(setup, tmp_path)
    errors, loads, done = [], [0], threading.Event()

    def read():
        while not done.is_set():
            try:
                db = FingerprintDB.load(target)
                assert db.n_segments == len(db.segment_track) == sum(1 for _ in db.segment_start)
                loads[0] += 1
            except Exception as error:  # noqa: BLE001 -- every failure is a finding
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for swap in range(30):
            (big if swap % 2 else small).save(target)
    finally:
        done.set()
        reader.join()
    assert errors == [] and loads[0] > 0


def test_a_load_that_two_swaps_overlap_is_made_again(setup, tmp_path, monkeypatch):
    from nnfp.store import db as db_module
    from nnfp.store.db import FingerprintDB

    target, small, big = _two_versions(setup, tmp_path)
    real_load, calls = FingerprintDB._load.__func__, []

    def load_while_swapped_twice(cls, directory, **kwargs):
        calls.append(directory)
        if len(calls) == 1:  # A -> B -> A': the first folder deleted, its number free for the next
            big.save(target)
            small.save(target)
        return real_load(cls, directory, **kwargs)

    monkeypatch.setattr(FingerprintDB, "_load", classmethod(load_while_swapped_twice))
    assert FingerprintDB.load(target).n_segments == small.n_segments
    assert len(calls) == 2

    def swap_every_time(cls, directory, **kwargs):
        (big if len(calls) % 2 else small).save(target)
        calls.append(directory)
        return real_load(cls, directory, **kwargs)

    monkeypatch.setattr(FingerprintDB, "_load", classmethod(swap_every_time))
    monkeypatch.setattr(db_module, "_LOAD_PATIENCE_S", 0.2)
    with pytest.raises(db_module.IndexBusyError, match="replaced again and again while being read"):
        FingerprintDB.load(target)


def test_user_files_in_an_index_and_the_lock_name_survive(setup, tmp_path):
    from nnfp.catalogue.build import (
        IndexLockedError,
        add_to_index,
        build_index,
        index_lock,
        lock_path,
    )

    root, index = setup
    target = tmp_path / "idx"
    shutil.copytree(index, target)
    (target / "NOTES.txt").write_text("my notes")
    (tmp_path / ".idx.lock").write_text("a user's file")  # the lock's name in earlier versions
    add_to_index(target, root / "other", progress=False)
    assert (target / "NOTES.txt").read_text() == "my notes"
    build_index(root / "music", target, model=root / "tiny.keras", progress=False, overwrite=True)
    assert (target / "NOTES.txt").read_text() == "my notes"
    assert (tmp_path / ".idx.lock").read_text() == "a user's file"
    lock_path(target).write_text("not a lock")  # a file where nnfp's lock goes: used for nothing
    with pytest.raises(IndexLockedError, match="is not an nnfp lock file"):
        with index_lock(target):
            pass
    assert lock_path(target).read_text() == "not a lock"


def test_adding_the_same_audio_under_another_name_is_refused(setup, tmp_path, capsys):
    from nnfp.store.db import FingerprintDB

    root, index = setup
    target = tmp_path / "idx"
    shutil.copytree(index, target)
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(root / "music" / "track_01.wav", more / "copy_of_01.wav")
    shutil.copy(root / "other" / "track_20.wav", more / "new.wav")
    shutil.copy(root / "other" / "track_20.wav", more / "new_again.wav")
    assert main(["index", "add", str(target), str(more), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "copy_of_01.wav: the same audio as 'track_01.wav', already in the index" in out
    assert "new_again.wav: the same audio as 'new.wav'" in out
    paths = [t["path"] for t in FingerprintDB.load(target).tracks]
    assert paths == [f"track_{i:02d}.wav" for i in range(4)] + ["new.wav"]


# ------------------------------------------------------------- damaged fingerprints


def test_a_damaged_fingerprint_is_found_without_an_integrity_record(setup, tmp_path, monkeypatch):
    import nnfp.store.db
    from nnfp.catalogue.identify import Identifier
    from nnfp.store.integrity import CorruptIndexError

    root, index = setup
    target = tmp_path / "idx"
    shutil.copytree(index, target)
    meta = json.loads((target / "tracks.json").read_text())
    meta.pop("integrity")  # an index of an older nnfp: no checksums
    (target / "tracks.json").write_text(json.dumps(meta))
    store = np.load(target / "embeddings.npy", mmap_mode="r+")
    store[2:12] *= 1.53  # the rows of a query at the start of track 0
    store.flush()
    del store
    with pytest.raises(CorruptIndexError, match=r"embeddings.npy: damaged: row 2 has norm 1.53"):
        nnfp.store.db.FingerprintDB.load(target)
    assert main(["index", "verify", str(target)]) == 2
    # Too large to check on load: the search finds it, and no score above 1 is ever reported.
    monkeypatch.setattr(nnfp.store.db, "CHECKSUM_ON_LOAD_BYTES", 0)
    identifier = Identifier(target, min_score=None)
    query = sf.read(root / "music" / "track_00.wav", dtype="float32")[0][RATE : 4 * RATE]
    with pytest.raises(CorruptIndexError, match=r"a similarity of 1\.5.*at most 1"):
        identifier.identify_audio(query)


# ------------------------------------------------------------------------ dead air


@pytest.fixture(scope="module")
def dead_air(tmp_path_factory):
    """An index (the shipped model and its calibration) of three tracks, one with 20 s of
    digital silence in the middle (a hidden-track gap)."""
    from nnfp.catalogue.build import build_index
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("dead_air")
    (root / "music").mkdir()
    for seed in range(2):
        sf.write(root / "music" / f"song_{seed}.wav", compose_track(seed, 20.0, RATE), RATE)
    gap = np.concatenate([compose_track(7, 15.0, RATE), np.zeros(20 * RATE, np.float32), compose_track(8, 15.0, RATE)])
    sf.write(root / "music" / "hidden_track.wav", gap, RATE)
    build_index(root / "music", root / "index", progress=False)
    return root


def _quiet_noise(seconds, dbfs, seed):
    rng = np.random.default_rng(seed)
    noise = np.convolve(rng.standard_normal(int(seconds * RATE)), np.ones(4) / 2, mode="same")  # room-like, low-passed
    return (noise / noise.std() * 10 ** (dbfs / 20)).astype(np.float32)


def test_silence_in_a_catalogue_track_is_stored_as_dead_air(dead_air):
    from nnfp.store.db import FingerprintDB

    db = FingerprintDB.load(dead_air / "index")
    track = next(t["track_id"] for t in db.tracks if t["path"] == "hidden_track.wav")
    rows = np.flatnonzero(db.segment_track == track)
    norms = np.linalg.norm(db.embeddings[rows], axis=1)
    starts = db.segment_start[rows]
    inside = (starts >= 15.0) & (starts + 1.0 <= 35.0)  # segments wholly in the silence
    assert inside.sum() == 39 and np.all(norms[inside] == 0.0)
    assert np.allclose(norms[~inside], 1.0, atol=1e-4)
    meta = json.loads((dead_air / "index" / "tracks.json").read_text())
    assert meta["zero_rows"] == 39


@pytest.mark.parametrize("dbfs", [-40, -50])
def test_quiet_noise_never_matches_a_tracks_silence(dead_air, dbfs):
    from nnfp.catalogue.identify import Identifier

    identifier = Identifier(dead_air / "index")  # the calibrated thresholds
    for seconds in (3, 10):
        assert identifier.identify_audio(_quiet_noise(seconds, dbfs, seed=seconds)) == []
    loose = Identifier(dead_air / "index", min_score=None)
    best = loose.identify_audio(_quiet_noise(10, dbfs, seed=1))[0]
    assert best.score < 0.5, best


def test_a_query_of_dead_air_is_refused(dead_air):
    from nnfp.catalogue.identify import Identifier, QueryError

    identifier = Identifier(dead_air / "index")
    with pytest.raises(QueryError, match=r"dead air \(every 1 s segment is below -60 dBFS"):
        identifier.identify_audio(_quiet_noise(5, -65, seed=3))


@pytest.mark.parametrize("kind", ["silence", "quiet noise"])
def test_monitor_reports_no_play_on_dead_air(dead_air, kind):
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.monitor import monitor_stream

    identifier = Identifier(dead_air / "index")
    audio = np.zeros(60 * RATE, np.float32) if kind == "silence" else _quiet_noise(60, -50, seed=5)
    audio[: RATE // 10] += 1e-4  # not digital zero throughout: a real recording's first click
    assert list(monitor_stream(identifier, [audio], kind)) == []
    # The monitor still finds the track around its silence.
    track = sf.read(dead_air / "music" / "hidden_track.wav", dtype="float32")[0]
    plays = list(monitor_stream(identifier, [np.concatenate([audio, track])], kind))
    assert [p.track for p in plays] and {p.track for p in plays} == {"hidden_track.wav"}


# ---------------------------------------------------------------- output folders


def test_make_irs_and_evaluate_refuse_a_folder_of_user_files(setup, tmp_path):
    root, index = setup
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    assert main(["data", "make-irs", str(mine), "2"]) == 2
    assert main(["evaluate", str(index), "--out", str(mine), "--n-queries", "4", "--lengths", "1"]) == 2
    assert sorted(os.listdir(mine)) == ["thesis.txt"] and (mine / "thesis.txt").read_text() == "years of work"
    irs = tmp_path / "irs"
    assert main(["data", "make-irs", str(irs), "2"]) == 0
    assert main(["data", "make-irs", str(irs), "2"]) == 0  # its own folder: made again
    assert sorted(p.name for p in irs.glob("rir_*.wav")) == ["rir_00000.wav", "rir_00001.wav"]


def test_a_search_wider_than_the_calibration_is_refused(dead_air):
    """Thresholds fitted with 4 phases, 32 refined windows, 20 neighbours and 2 interpolated positions
    (the shipped calibration) would admit more false matches in a wider search."""
    from nnfp.catalogue.identify import Identifier

    index = dead_air / "index"
    fitted = json.loads((index / "calibration.json").read_text())
    assert (fitted["phases"], fitted["refine"], fitted["k_probe"], fitted["interpolate"]) == (4, 32, 20, 2)
    assert fitted["interpolated_score"] == "own"  # fitted with interpolated windows reporting their own score
    # fitted with today's speed grid (recorded, or the steps of before when it records none), so a
    # plain search uses the default steps
    from nnfp.catalogue.speeds import fitted_speed_steps
    from nnfp.defaults import DEFAULT_SPEEDS, SPEED_STEPS

    assert (fitted["speeds"], fitted_speed_steps(fitted)) == (list(DEFAULT_SPEEDS), SPEED_STEPS)
    for wider, flag in (({"phases": 8}, "--phases 8 (fitted with 4)"), ({"refine": None}, "--refine all (fitted with 32)"),
                        ({"k_probe": 50}, "--k-probe 50 (fitted with 20)")):
        with pytest.raises(ValueError, match=re.escape(flag)):
            Identifier(index, **wider)
        Identifier(index, min_score=0.8, **wider)  # a fixed threshold overrides the calibration
    narrower = Identifier(index, phases=2, k_probe=10)  # fewer chances: the target still holds
    assert narrower.match_threshold(3.0) == Identifier(index).match_threshold(3.0)


def test_thresholds_of_another_hop_or_model_are_refused(dead_air):
    from nnfp.catalogue.calibration import Calibration
    from nnfp.catalogue.identify import Identifier

    index = dead_air / "index"
    fitted = Calibration.load(index / "calibration.json")
    digest = json.loads((index / "tracks.json").read_text())["metadata"]["model_digest"]
    same = Calibration(fitted.lengths_s, fitted.min_score, info=dict(fitted.info, hop_seconds=0.5, model_digest=digest))
    assert Identifier(index, calibration=same).match_threshold(3.0) == fitted.threshold(3.0)
    coarser = Calibration(fitted.lengths_s, fitted.min_score, info=dict(fitted.info, hop_seconds=1.0))
    with pytest.raises(ValueError, match=r"an index hop of 0.5 s \(fitted on 1 s: more windows\)"):
        Identifier(index, calibration=coarser)
    other = Calibration(fitted.lengths_s, fitted.min_score, info=dict(fitted.info, model_digest="0" * 40))
    with pytest.raises(ValueError, match="fitted on another model's fingerprints"):
        Identifier(index, calibration=other)
    assert Identifier(index, calibration=other, min_score=0.8).match_threshold(3.0) == 0.8
