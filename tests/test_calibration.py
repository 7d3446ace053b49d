"""Calibration files check themselves: a missing, altered or out-of-range calibration stops
the commands that decide with it (or `nnfp index verify` reports it), and `nnfp index
calibrate` claims only the false-match bound its sample supports, keeps a backup of what
it replaces and never overwrites a file that is not a calibration.

Uses the shipped model on two generated 8 s tracks (index built with a copy of the model
that has a calibration of its own beside it, as `default.keras` has).
"""

import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf

from nnfp.catalogue import calibration as calibration_module
from nnfp.catalogue.build import build_index, lock_path
from nnfp.catalogue.calibration import (
    Calibration,
    allowed_false_matches,
    binomial_upper_bound,
    calibrate,
    format_calibration_table,
    model_calibration_path,
)
from nnfp.catalogue.fingerprint import DEFAULT_MODEL_PATH
from nnfp.cli import main

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(), reason="no shipped model")

RATE = 8000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("calibration")
    music, unknown = root / "music", root / "unknown"
    music.mkdir()
    unknown.mkdir()
    for i in range(2):
        sf.write(music / f"track_{i}.wav", compose_track(40 + i, 8.0, RATE), RATE, subtype="PCM_16")
    sf.write(unknown / "other.wav", compose_track(940, 8.0, RATE), RATE, subtype="PCM_16")
    model = root / "m.keras"
    shutil.copyfile(DEFAULT_MODEL_PATH, model)
    Calibration([1, 3], [0.999, 0.995], info={"note": "test"}).save(root / "m.calibration.json")
    build_index(music, root / "index", model=model, index_type="flat", progress=False)
    query = root / "query.wav"
    sf.write(query, compose_track(40, 8.0, RATE)[2 * RATE : 5 * RATE], RATE)
    return {"root": root, "index": root / "index", "unknown": unknown, "query": query}


@pytest.fixture
def index(setup, tmp_path):
    """A copy of the calibrated index, free to damage."""
    copy = tmp_path / "index"
    shutil.copytree(setup["index"], copy)
    return copy


def _edit(path, **changes):
    payload = json.loads(path.read_text())
    payload.update(changes)
    path.write_text(json.dumps(payload))


def _no_queries(monkeypatch):
    """Makes any query of `calibrate_index` fail the test: refusals come before the work."""
    import nnfp.catalogue.evaluation as evaluation

    def fail(*args, **kwargs):
        raise AssertionError("a calibration query was made before the refusal")

    monkeypatch.setattr(evaluation, "index_queries", fail)
    monkeypatch.setattr(evaluation, "run_queries", fail)


# ------------------------------------------------------------------ the file checks itself


def test_saved_calibration_carries_a_digest_of_its_content(tmp_path):
    path = Calibration([1, 3], [0.8, 0.7], info={"n_unknown": 300}).save(tmp_path / "c.json")
    payload = json.loads(path.read_text())
    assert len(payload["sha256"]) == 64
    loaded = Calibration.load(path)
    assert loaded.min_score == [0.8, 0.7] and loaded.info == {"n_unknown": 300} and loaded.notes == []
    _edit(path, min_score=[0.8, 0.0])  # a threshold edited by hand: the digest no longer fits
    with pytest.raises(calibration_module.CalibrationError, match=r"c\.json: altered since it was written"):
        Calibration.load(path)


def test_calibration_without_digest_is_accepted_with_a_note(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"lengths_s": [1, 3], "min_score": [0.8, 0.7]}))
    loaded = Calibration.load(path)
    assert loaded.min_score == [0.8, 0.7]
    assert len(loaded.notes) == 1 and "no digest (written by an older nnfp)" in loaded.notes[0]


@pytest.mark.parametrize("scores", [[0.8, -5.0], [1.5, 0.7], [0.8, float("nan")]])
def test_thresholds_outside_the_cosine_range_are_refused(tmp_path, scores):
    with pytest.raises(ValueError, match=r"within \[-1, 1\]"):
        Calibration([1, 3], scores)
    path = tmp_path / "bad.json"  # no digest: checked for range all the same
    path.write_text(json.dumps({"lengths_s": [1, 3], "min_score": scores}))
    with pytest.raises(calibration_module.CalibrationError, match=r"bad\.json: invalid calibration.*within \[-1, 1\]"):
        Calibration.load(path)


def test_shipped_calibration_has_a_valid_digest_and_falls_with_length():
    shipped = Calibration.load(model_calibration_path(DEFAULT_MODEL_PATH))
    assert shipped.notes == []
    # leads over the best other track, measured against rival floors that fall with length;
    # monitor's 5 s windows have their own length
    assert shipped.info["decision"] == "lead" and shipped.info["speeds"] == [0.92, 1.08]
    assert shipped.lengths_s == [1.0, 3.0, 5.0, 10.0] and all(0 < t < 0.5 for t in shipped.min_score)
    floors = shipped.info["rival_floor"]
    assert floors == sorted(floors, reverse=True) and all(0 < f < 1 for f in floors)
    # fitted with the speed search's off-speed margin (answers at other speeds need more)
    margins = shipped.info["off_speed_margin"]
    assert len(margins) == 4 and all(0 <= m < 0.5 for m in margins) and max(margins) > 0
    # a flat answer is still answered from a confidence above every flat chance answer fitted on
    yields = shipped.info["sharpness_yield"]
    assert len(yields) == 4 and all(y >= t for y, t in zip(yields, shipped.min_score, strict=True))
    assert max(shipped.info["sharpness_yield_leave_one_kind_out"]["noise-train"]) <= 0.01


def test_index_calibration_follows_what_the_index_records(tmp_path):
    # Built with a calibration (metadata "calibrated": true) and the file gone: an error.
    with pytest.raises(calibration_module.CalibrationError, match=r"calibration\.json: missing.*nnfp index calibrate.*--min-score"):
        calibration_module.index_calibration(tmp_path, {"calibrated": True})
    # Built without one: the default threshold applies, and says so.
    calibration, notes = calibration_module.index_calibration(tmp_path, {"calibrated": False})
    assert calibration is None and "no calibration" in notes[0] and "0.5" in notes[0]
    # An index from before the record: built with a calibration when its model had one.
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    assert calibration_module.index_calibration(tmp_path, {"model_source": str(model)})[0] is None
    Calibration([1], [0.9]).save(tmp_path / "m.calibration.json")
    with pytest.raises(calibration_module.CalibrationError, match="missing"):
        calibration_module.index_calibration(tmp_path, {"model_source": str(model)})
    # A fixed threshold overrides: the problem becomes a note.
    calibration, notes = calibration_module.index_calibration(tmp_path, {"calibrated": True}, required=False)
    assert calibration is None and "missing" in notes[0]


# ------------------------------------------------------------------ commands that decide


def test_deleted_calibration_stops_identify_and_min_score_overrides_it(index, setup, capsys):
    (index / "calibration.json").unlink()
    assert main(["identify", str(index), str(setup["query"])]) == 2
    err = capsys.readouterr().err
    assert f"{index / 'calibration.json'}: missing" in err
    assert "nnfp index calibrate" in err and "--min-score" in err
    assert main(["identify", str(index), str(setup["query"]), "--min-score", "0.3", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["matches"][0]["track"] == "track_0.wav"
    assert "--min-score 0.3 overrides the index's calibration" in captured.err
    assert main(["index", "verify", str(index)]) == 2
    assert f"PROBLEM: {index / 'calibration.json'}: missing" in capsys.readouterr().out


def test_monitor_with_min_score_runs_without_the_calibration_and_says_it_overrides(index, setup, capsys):
    (index / "calibration.json").unlink()
    assert main(["monitor", str(index), str(setup["query"]), "--json"]) == 2
    assert "calibration.json: missing" in capsys.readouterr().err
    assert main(["monitor", str(index), str(setup["query"]), "--json", "--min-score", "0.5"]) == 0
    assert "--min-score 0.5 overrides the index's calibration" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", [0.0, -5.0])
def test_altered_calibration_stops_identify_and_fails_verify(index, setup, capsys, threshold):
    _edit(index / "calibration.json", min_score=[threshold, threshold])
    assert main(["identify", str(index), str(setup["query"])]) == 2
    err = capsys.readouterr().err
    assert f"{index / 'calibration.json'}: altered since it was written" in err and "--min-score" in err
    assert main(["index", "verify", str(index)]) == 2
    out = capsys.readouterr().out
    assert f"PROBLEM: {index / 'calibration.json'}: altered since it was written" in out


def test_intact_index_verifies_and_identifies_with_its_calibration(index, setup, capsys):
    assert main(["index", "verify", str(index)]) == 0
    assert main(["identify", str(index), str(setup["query"])]) == 0
    captured = capsys.readouterr()
    assert "1. track_0.wav  offset 2.0 s" in captured.out
    # a calibration that records no speed search and no "interpolated_score" (older nnfp): searched
    # at one speed, interpolated windows scored as it was fitted; each said once
    assert captured.err.splitlines() == [
        "nnfp identify: note: the calibrated thresholds were fitted without a speed search: a song played "
        "faster or slower than the catalogue is not searched for; recalibrate (`nnfp index calibrate INDEX "
        "--unknown DIR`) to search speeds",
        "nnfp identify: note: the calibrated thresholds were fitted when a 1 s query's windows between two "
        "index rows reported the score of a row beside them, and are applied so; recalibrate (`nnfp index "
        "calibrate INDEX --unknown DIR`) to score them as themselves (more 1 s queries answered right)",
    ]


# ------------------------------------------------------------------ nnfp index calibrate


def test_binomial_upper_bound_keeps_the_numbers_of_the_bisection_it_replaced():
    # (k, n, confidence) -> the bound that the earlier 60-step bisection of P(Binomial(n, p) <= k)
    # returned; scipy's Beta quantile gives them to 1e-11 and the same thresholds.
    bisected = {
        (0, 1, 0.95): 0.9500000000000001, (0, 300, 0.95): 0.00993608194445771,
        (2, 300, 0.95): 0.02083623052702466, (5, 50, 0.9): 0.1776181276173772,
        (150, 300, 0.99): 0.5684434307026489, (999, 1000, 0.95): 0.999948708021091,
        (1, 10000, 0.5): 0.00016782900661882396, (500, 1000, 0.95): 0.5264822687643052,
    }
    for (k, n, confidence), bound in bisected.items():
        assert binomial_upper_bound(k, n, confidence) == pytest.approx(bound, rel=1e-10, abs=0)
    assert binomial_upper_bound(300, 300) == 1.0
    assert [allowed_false_matches(1000, t) for t in (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)] == [-1, 1, 4, 12, 38, 84]
    assert [allowed_false_matches(300, t) for t in (0.005, 0.01, 0.02, 0.05, 0.1)] == [-1, 0, 1, 8, 21]
    assert [calibration_module.smallest_sample_size(0.001, c) for c in (0.5, 0.9, 0.95, 0.99)] == [693, 2302, 2995, 4603]
    with pytest.raises(ValueError, match="Received: k=3, n=0"):
        binomial_upper_bound(3, 0)


def test_smallest_sample_size_is_the_clopper_pearson_zero_count():
    assert calibration_module.smallest_sample_size(0.01, 0.95) == 299  # 1 - 0.05 ** (1 / 299) = 0.997 %
    assert binomial_upper_bound(0, 299) <= 0.01 < binomial_upper_bound(0, 298)
    assert calibration_module.smallest_sample_size(0.05, 0.95) == 59


def test_calibrate_refuses_a_sample_too_small_for_the_target_before_any_query(index, setup, capsys, monkeypatch):
    _no_queries(monkeypatch)
    before = (index / "calibration.json").read_bytes()
    args = ["index", "calibrate", str(index), "--unknown", str(setup["unknown"]), "--n-queries", "20", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    # 0 false matches of 20 bound the rate at 13.9 % (95 %); 299 queries are needed for 1 %.
    assert "20 out-of-catalogue queries" in err and "13.9 %" in err
    assert "299" in err and "0.997 %" in err and "--confidence 0" in err
    assert (index / "calibration.json").read_bytes() == before
    assert not (index / "calibration.json.bak").exists()


def test_calibrate_out_refuses_to_overwrite_a_file_that_is_not_a_calibration(index, setup, tmp_path, capsys, monkeypatch):
    _no_queries(monkeypatch)
    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "notes"}')
    args = ["index", "calibrate", str(index), "--unknown", str(setup["unknown"]), "--out", str(notes),
            "--target", "0.25", "--n-queries", "12", "--quiet"]
    assert main(args) == 2
    assert f"{notes}: exists and is not an nnfp calibration" in capsys.readouterr().err
    assert notes.read_text() == '{"my": "notes"}'


def test_calibrate_backs_up_what_it_replaces_under_the_index_lock(index, setup, tmp_path, capsys, monkeypatch):
    lock = lock_path(index)
    locked = []
    save = Calibration.save
    monkeypatch.setattr(Calibration, "save", lambda self, path: locked.append(lock.exists()) or save(self, path))
    before = (index / "calibration.json").read_bytes()
    # 12 out-of-catalogue queries, none matching, bound the rate at 22.1 % (95 %): enough for 25 %.
    args = ["index", "calibrate", str(index), "--unknown", str(setup["unknown"]), "--n-queries", "12",
            "--lengths", "1", "3", "--target", "0.25", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "<= 22.1 % at 95 % confidence" in out
    assert (index / "calibration.json.bak").read_bytes() == before
    assert locked == [True] and not lock.exists()
    assert Calibration.load(index / "calibration.json").notes == []
    assert main(["index", "verify", str(index)]) == 0
    # --out onto an existing calibration: replaced, the old one kept beside it.
    out_file = tmp_path / "m.calibration.json"
    shutil.copyfile(index / "calibration.json.bak", out_file)
    assert main([*args, "--out", str(out_file)]) == 0
    assert (tmp_path / "m.calibration.json.bak").read_bytes() == before
    assert Calibration.load(out_file).info["n_unknown"] == 12


def test_point_estimate_claims_no_confidence():
    unknown = np.linspace(0.0, 0.99, 100)[:, None]
    known, right = np.array([[0.995]]), np.array([[True]])
    table = format_calibration_table(calibrate([3.0], known, right, unknown, confidence=None))
    assert "point estimate: no confidence claimed" in table
    bounded = format_calibration_table(calibrate([3.0], known, right, unknown))
    # 100 queries, none above the threshold: 2.95 % at 95 %, not the 1 % target
    assert "<= 2.95 % at 95 % confidence" in bounded


def _count_query_runs(monkeypatch):
    """Counts the queries of every `run_queries` call of `calibrate_index` (one entry per call)."""
    import nnfp.catalogue.evaluation as evaluation

    runs = []
    real = evaluation.run_queries
    monkeypatch.setattr(evaluation, "run_queries", lambda identifier, waves, *a, **k: runs.append(len(waves))
                        or real(identifier, waves, *a, **k))
    return runs


def _drop_part_setting(part, key):
    """Rewrites a saved calibration work part as one saved before its settings held `key`."""
    with np.load(part) as saved:
        arrays = {name: saved[name] for name in saved.files}
    stored = json.loads(str(arrays["settings"]))
    del stored[key]
    np.savez_compressed(part, **{**arrays, "settings": np.asarray(json.dumps(stored, sort_keys=True))})


def test_calibrate_work_dir_resumes_what_was_done_and_refuses_other_settings(index, setup, tmp_path, capsys, monkeypatch):
    import nnfp.catalogue.evaluation as evaluation

    monkeypatch.setattr(evaluation, "_WORK_PART", 5)  # 12 queries of each kind: parts of 5, 5 and 2
    runs = _count_query_runs(monkeypatch)
    work = tmp_path / "work"
    args = ["index", "calibrate", str(index), "--unknown", str(setup["unknown"]), "--n-queries", "12",
            "--lengths", "1", "3", "--target", "0.25", "--speeds", "off", "--quiet", "--work-dir", str(work)]
    assert main(args) == 0
    assert runs == [5, 5, 2, 5, 5, 2]
    assert sorted(p.name for p in work.iterdir()) == [
        *(f"known.000{i}.npz" for i in range(3)), *(f"unknown-0-unknown.000{i}.npz" for i in range(3))]
    first = Calibration.load(index / "calibration.json")
    runs.clear()
    assert main(args) == 0  # everything kept: no query searched again, the same thresholds
    assert runs == []
    again = Calibration.load(index / "calibration.json")
    assert again.min_score == first.min_score and again.info["right_kept"] == first.info["right_kept"]
    (work / "unknown-0-unknown.0001.npz").unlink()  # a run stopped there goes on from that part
    assert main(args) == 0
    assert runs == [5] and Calibration.load(index / "calibration.json").min_score == first.min_score
    runs.clear()
    assert main([*args, "--n-unknown", "15"]) == 0  # more unknown queries: only the new ones are made
    assert runs == [5]  # the last part had 2 queries, now 5
    assert Calibration.load(index / "calibration.json").info["n_unknown"] == 15
    capsys.readouterr()
    runs.clear()
    assert main([*args, "--n-unknown", "15", "20"]) == 2  # two counts for one folder: refused before any query
    assert "--n-unknown takes one count, or one per --unknown folder: 2 counts for 1 folders" in capsys.readouterr().err
    assert runs == []
    assert main([*args, "--seed", "5"]) == 2  # other queries: refused, nothing mixed
    err = capsys.readouterr().err
    assert "known.0000.npz: saved by a calibration with other settings (different: seed)" in err
    assert len(list(work.iterdir())) == 6
    assert first.info["interpolated_score"] == "own"
    # a part saved before interpolated windows reported their own score: refused, not mixed in
    _drop_part_setting(work / "known.0000.npz", "interpolated_score")
    assert main(args) == 2
    assert "known.0000.npz: saved by a calibration with other settings (different: interpolated_score)" in (
        capsys.readouterr().err)


def test_calibration_records_its_speed_steps_and_parts_saved_before_count_as_the_legacy_ones(
        index, setup, tmp_path, capsys, monkeypatch):
    """The grid's steps by query length are recorded (`speed_steps`) and are part of the work
    parts' settings; a part saved before they were recorded was searched in `LEGACY_SPEED_STEPS`:
    refused under other steps, reused under those."""
    import nnfp.catalogue.evaluation as evaluation
    import nnfp.catalogue.identify as identify
    from nnfp.catalogue.speeds import LEGACY_SPEED_STEPS, speed_steps_to_json
    from nnfp.defaults import SPEED_STEPS

    monkeypatch.setattr(evaluation, "_WORK_PART", 6)
    runs = _count_query_runs(monkeypatch)
    work = tmp_path / "work"
    args = ["index", "calibrate", str(index), "--unknown", str(setup["unknown"]), "--n-queries", "12",
            "--lengths", "1", "3", "--target", "0.25", "--speeds", "0.98:1.02", "--quiet", "--work-dir", str(work)]
    assert main(args) == 0
    assert Calibration.load(index / "calibration.json").info["speed_steps"] == speed_steps_to_json(SPEED_STEPS)
    finer = ((2.0, 0.005), (4.0, 0.01), (math.inf, 0.02))  # were the default steps to change...
    monkeypatch.setattr(identify, "SPEED_STEPS", finer)
    capsys.readouterr()
    assert main(args) == 2  # ...parts searched in the steps of before are refused, not mixed in
    assert "known.0000.npz: saved by a calibration with other settings (different: speed_steps)" in capsys.readouterr().err
    shutil.rmtree(work)
    assert main(args) == 0
    assert Calibration.load(index / "calibration.json").info["speed_steps"] == speed_steps_to_json(finer)
    for part in work.iterdir():  # as saved before the steps were recorded
        _drop_part_setting(part, "speed_steps")
    capsys.readouterr()
    assert main(args) == 2
    assert "known.0000.npz: saved by a calibration with other settings (different: speed_steps)" in capsys.readouterr().err
    monkeypatch.setattr(identify, "SPEED_STEPS", LEGACY_SPEED_STEPS)  # a search in the steps of before
    runs.clear()
    assert main(args) == 0 and runs == []  # every part reused
    assert Calibration.load(index / "calibration.json").info["speed_steps"] == speed_steps_to_json(LEGACY_SPEED_STEPS)


def test_calibrate_work_dir_parts_of_another_lead_weight_are_reused_exactly(index, setup, tmp_path, monkeypatch):
    """Saved parts carry the weight their confidences were computed with (older ones: the
    legacy weight); it is taken back out, so they give the thresholds of a fresh run."""
    import nnfp.catalogue.evaluation as evaluation
    import nnfp.catalogue.identify as identify

    monkeypatch.setattr(evaluation, "_WORK_PART", 6)
    args = ["index", "calibrate", str(index), "--unknown", str(setup["unknown"]), "--n-queries", "12",
            "--lengths", "1", "3", "--target", "0.25", "--speeds", "off", "--quiet"]
    assert main(args) == 0  # a fresh run, every confidence at the current weight
    fresh = Calibration.load(index / "calibration.json")
    assert fresh.info["decision"] == "lead" and fresh.info["lead_weight"] == identify.LEAD_WEIGHT
    # 12 in-catalogue queries: too few right answers to fit a sharpness floor on (40)
    assert fresh.info["sharpness_floor"] == [evaluation.NO_SHARPNESS_FLOOR] * 2
    assert fresh.info["sharpness_yield"] == fresh.min_score  # no floor: nothing for a yield to waive
    work = tmp_path / "work"
    with monkeypatch.context() as patch:  # parts saved by a calibration of another weight
        patch.setattr(identify, "LEAD_WEIGHT", 0.1)
        assert main([*args, "--work-dir", str(work)]) == 0
    assert main([*args, "--work-dir", str(tmp_path / "current")]) == 0
    with np.load(work / "known.0000.npz") as part, np.load(tmp_path / "current" / "known.0000.npz") as current:
        assert json.loads(str(part["settings"]))["lead_weight"] == 0.1
        assert json.loads(str(current["settings"]))["lead_weight"] == identify.LEAD_WEIGHT
        # the saved confidences differ (by the weight's share of the lead over the impostor level)
        assert np.nanmax(np.abs(part["confidences"] - current["confidences"])) > 0.01
    runs = []
    monkeypatch.setattr(evaluation, "run_queries", lambda *a, **k: runs.append(1))  # nothing may be searched
    assert main([*args, "--work-dir", str(work)]) == 0
    again = Calibration.load(index / "calibration.json")
    assert runs == []
    np.testing.assert_allclose(again.min_score, fresh.min_score, atol=1.01e-4)
    assert again.info["right_kept"] == fresh.info["right_kept"] and again.info["lead_weight"] == fresh.info["lead_weight"]


def test_sharpness_yields_against_a_loop_over_the_flat_answers():
    """The yield of a length is just above the most confident flat out-of-catalogue answer of
    any kind (sharpness below the floor; NaN sharpness is not flat, NaN confidence is no
    answer), never below the threshold; a length without a floor yields at its threshold."""
    from nnfp.catalogue.calibration import NO_SHARPNESS_FLOOR, sharpness_yields

    rng = np.random.default_rng(2)
    thresholds, floors = [0.30, 0.20, 0.10, 0.25], [0.15, 0.12, 0.10, NO_SHARPNESS_FLOOR]
    confidences = {k: rng.uniform(-0.2, 0.6, (50, 4)) for k in ("music", "noise")}
    sharpness = {k: rng.uniform(-0.1, 0.5, (50, 4)) for k in ("music", "noise")}
    confidences["noise"][3, 1] = 0.95  # the most confident answer of length 2 is not flat...
    sharpness["noise"][3, 1] = np.nan  # ...as nothing was measured
    confidences["music"][7, 2] = np.nan  # no answer
    sharpness["music"][7, 2] = -1.0
    confidences["music"][:, 0] = np.minimum(confidences["music"][:, 0], 0.29)  # length 1: all below...
    confidences["noise"][:, 0] = np.minimum(confidences["noise"][:, 0], 0.29)  # ...the threshold
    got = sharpness_yields(thresholds, floors, confidences, sharpness)
    expected = []
    for j in range(4):
        highest = None
        for kind in confidences:
            for c, s in zip(confidences[kind][:, j], sharpness[kind][:, j], strict=True):
                if floors[j] > NO_SHARPNESS_FLOOR and np.isfinite(c) and s < floors[j]:
                    highest = c if highest is None else max(highest, c)
        expected.append(thresholds[j] if highest is None else max(thresholds[j], highest))
    assert got[0] == thresholds[0] and got[3] == thresholds[3]
    for j in (1, 2):
        assert expected[j] < got[j] <= expected[j] + 1e-4  # rounded up to 4 decimals, above every flat answer
        assert got[j] < 0.9  # the confident answer with no sharpness measured is not counted
    assert got == [round(g, 4) for g in got]


def test_calibrate_fits_the_sharpness_yield_and_counts_right_answers_kept_by_it():
    """`calibrate` with sharpness floors: the thresholds are those fitted without them, the yield
    is `sharpness_yields` over the confidences as decided (off-speed answers lowered by the
    fitted margin), each kind left out is counted at a yield fitted without it, and "right kept"
    counts a flat right answer only from the yield on; checked against plain loops."""
    from nnfp.catalogue.calibration import sharpness_yields

    rng = np.random.default_rng(5)
    lengths, n_known = [1.0, 3.0], 200
    unknown = {k: rng.normal(0.0, 0.1, (1000, 2)) for k in ("music", "noise", "tones")}
    unknown_off = {k: rng.random((1000, 2)) < 0.5 for k in unknown}
    unknown_sharp = {k: rng.uniform(-0.1, 0.4, (1000, 2)) for k in unknown}
    unknown["music"][:3] = 0.6  # three chance answers above any threshold (4 of 1,000 are allowed)...
    unknown_sharp["music"][:3] = 0.0  # ...and flat, so the yield rises above the threshold
    unknown_off["music"][:3] = False
    known = rng.normal(0.25, 0.12, (n_known, 2))
    known_off = rng.random((n_known, 2)) < 0.1
    known_sharp = rng.uniform(-0.05, 0.5, (n_known, 2))
    right = rng.random((n_known, 2)) < 0.8
    floors = [0.05, 0.1]
    plain = calibrate(lengths, known, right, unknown, known_off_speed=known_off, unknown_off_speed=unknown_off)
    cal = calibrate(lengths, known, right, unknown, known_off_speed=known_off, unknown_off_speed=unknown_off,
                    sharpness_floors=floors, known_sharpness=known_sharp, unknown_sharpness=unknown_sharp)
    assert cal.min_score == plain.min_score  # the floor plays no part in the thresholds
    margins = np.asarray(cal.info["off_speed_margin"])
    decided = {k: unknown[k] - margins * unknown_off[k] for k in unknown}
    yields = sharpness_yields(cal.min_score, floors, decided, unknown_sharp)
    assert cal.info["sharpness_floor"] == floors and cal.info["sharpness_yield"] == yields
    assert any(y > t for y, t in zip(yields, cal.min_score, strict=True))  # some flat answer sits above a threshold
    for j in range(2):
        kept = 0
        for i in range(n_known):
            confidence = known[i, j] - (margins[j] if known_off[i, j] else 0.0)
            flat = known_sharp[i, j] < floors[j]
            kept += bool(right[i, j] and confidence >= cal.min_score[j] and (not flat or confidence >= yields[j]))
        assert cal.info["right_kept"][j] == pytest.approx(kept / n_known)
    assert cal.info["right_kept"][0] < plain.info["right_kept"][0]  # flat right answers below the yield are lost
    for held in unknown:
        others = [k for k in unknown if k != held]
        sure = sharpness_yields(cal.min_score, floors, {k: decided[k] for k in others},
                                {k: unknown_sharp[k] for k in others})
        for j in range(2):
            through = sum(
                bool(c >= cal.min_score[j] and f < floors[j] and c >= sure[j])
                for c, f in zip(decided[held][:, j], unknown_sharp[held][:, j], strict=True)
            )
            assert cal.info["sharpness_yield_leave_one_kind_out"][held][j] == pytest.approx(through / 1000, abs=5e-5)
    assert max(cal.info["sharpness_yield_leave_one_kind_out"]["music"]) > 0  # fitted without them, they get through
    assert "sharpness_yield" not in plain.info


def test_a_length_between_calibrated_ones_uses_the_stricter_of_the_two():
    calibration = Calibration([1, 3, 5], [0.5, 0.3, 0.4], info={"rival_floor": [0.7, 0.6, 0.65]})
    thresholds = [calibration.threshold(s) for s in (0.5, 1, 2, 3, 4, 5, 6, 30)]
    assert thresholds == [0.5, 0.5, 0.5, 0.3, 0.4, 0.4, 0.4, 0.4]
    assert [calibration.at_length(calibration.info["rival_floor"], s) for s in (2, 3, 4.5)] == [0.7, 0.6, 0.65]


def test_calibrate_counts_segment_votes_and_remakes_parts_saved_without_them(index, setup, tmp_path, monkeypatch):
    """A "lead" calibration records its vote weight; its saved parts keep the top answers' segment
    votes (shares in [0, 1]); a part saved before votes were kept is searched again."""
    import nnfp.catalogue.evaluation as evaluation
    from nnfp.catalogue.calibration import VOTE_WEIGHT

    monkeypatch.setattr(evaluation, "_WORK_PART", 6)
    work = tmp_path / "work"
    args = ["index", "calibrate", str(index), "--unknown", str(setup["unknown"]), "--n-queries", "12",
            "--lengths", "1", "3", "--target", "0.25", "--speeds", "off", "--quiet", "--work-dir", str(work)]
    assert main(args) == 0
    first = Calibration.load(index / "calibration.json")
    assert first.info["vote_weight"] == VOTE_WEIGHT > 0
    with np.load(work / "known.0000.npz") as part:
        votes, valid, tracks = part["votes"], part["valid"], part["tracks"][..., 0]
        similarities = part["segment_scores"]
        saved = {k: part[k] for k in part.files if k != "votes"}
    answered = valid & (tracks >= 0)
    assert answered.any() and np.all((votes[answered] >= 0) & (votes[answered] <= 1))
    assert np.isnan(votes[~answered]).all()
    # the top answer's similarity per segment: 1 at 1 s, 5 at 3 s (0.5 s hop), NaN after
    assert similarities.shape == (*votes.shape, 5)
    counts = np.isfinite(similarities).sum(axis=2)
    assert np.all(counts[answered[:, 0], 0] == 1) and np.all(counts[answered[:, 1], 1] == 5)
    assert np.all(np.abs(similarities[np.isfinite(similarities)]) <= 1 + 1e-5)
    np.savez_compressed(work / "known.0000.npz", **saved)  # as an older nnfp saved it
    runs = _count_query_runs(monkeypatch)
    assert main(args) == 0
    assert runs == [6]  # that part only
    again = Calibration.load(index / "calibration.json")
    np.testing.assert_allclose(again.min_score, first.min_score, atol=1.01e-4)
