"""Identifier: sub-hop query phases, distinct places, silent queries, calibrated match thresholds.

Uses the shipped model (`nnfp/weights/default.keras`) on three generated 12 s tracks.
"""

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from nnfp.catalogue.build import build_index
from nnfp.catalogue.calibration import (
    Calibration,
    allowed_false_matches,
    binomial_upper_bound,
    calibrate,
)
from nnfp.catalogue.fingerprint import DEFAULT_MODEL_PATH
from nnfp.catalogue.identify import Identifier, QueryError
from nnfp.cli import main

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(), reason="no shipped model")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from nnfp.corpus.generate import generate_corpus

    root = tmp_path_factory.mktemp("identify")
    corpus = generate_corpus(root / "corpus", n_tracks=3, track_seconds=12, n_noise=1, n_irs=1, seed=3)
    model = root / "m.keras"  # a copy of the shipped model with its own calibration file
    shutil.copyfile(DEFAULT_MODEL_PATH, model)
    Calibration([1, 3], [0.999, 0.995], info={"note": "test"}).save(root / "m.calibration.json")
    build_index(corpus.music_dir, root / "idx", model=model, index_type="flat", progress=False)
    track, rate = sf.read(corpus.music_dir / "track_0001.wav", dtype="float32")
    assert rate == 8000
    reference = Identifier(root / "idx", min_score=None)  # loads the model once for the module
    return {
        "root": root, "index": root / "idx", "music": corpus.music_dir, "track": track,
        "shared": {"db": reference.db, "embedder": reference.embedder},
    }


def test_phase_search_finds_an_off_grid_query_at_the_right_offset(setup):
    query = setup["track"][int(4.2 * 8000) : int(7.2 * 8000)]  # 0.2 s off the 0.5 s grid
    identifier = Identifier(setup["index"], min_score=None, phases=4, **setup["shared"])
    best = identifier.identify_audio(query)[0]
    assert best.path == "track_0001.wav"
    assert abs(best.offset_s - 4.2) <= 0.1
    one_phase = Identifier(setup["index"], min_score=None, phases=1, **setup["shared"])
    grid = one_phase.identify_audio(query)[0].offset_s
    assert grid % 0.5 == 0  # the paper's search: offsets on the index hop only


def test_refined_phases_match_searching_every_phase(setup):
    # Phase 0 searched in faiss and its best windows scored at the other phases gives
    # the places of searching every phase (the same scores: same windows, same sums).
    refined = Identifier(setup["index"], min_score=None, phases=4, refine=8, **setup["shared"])
    every = Identifier(setup["index"], min_score=None, phases=4, refine=None, **setup["shared"])
    track = setup["track"]
    for start in (0.0, 1.3, 2.2, 4.2, 5.45, 7.1):
        query = track[int(start * 8000) : int((start + 3.3) * 8000)]
        phases = refined.phase_fingerprints(query)
        got = [(m.path, m.offset_s, m.score) for m in refined.rank(phases, n_results=1)]
        want = [(m.path, m.offset_s, m.score) for m in every.rank(phases, n_results=1)]
        assert got == want
        assert abs(got[0][1] - start) <= 0.0625 + 1e-9  # the phase nearest the cut won


def test_later_starts_stay_in_their_track_and_fit_the_query(setup):
    db = setup["shared"]["db"]
    rows = np.flatnonzero(db.segment_track == 1)
    first, last = int(rows[0]), int(rows[-1])
    starts = np.array([first, last - 5, last - 4, last])
    np.testing.assert_array_equal(db.later_starts(starts, 1, 5), [first + 1, last - 4])  # last: next track
    np.testing.assert_array_equal(db.later_starts(starts, 0, 5), [first, last - 5, last - 4])


def test_interpolated_scores_equal_the_formula(setup):
    db = setup["shared"]["db"]
    rows = np.flatnonzero(db.segment_track == 1)
    first, last = int(rows[0]), int(rows[-1])
    # A row earlier stays in the track; the window plus one row must fit in it.
    np.testing.assert_array_equal(
        db.interpolated_starts(np.array([first, first + 3, last - 2]), 3), [first, first + 2, first + 3, last - 3]
    )
    rng = np.random.default_rng(0)
    query = rng.normal(size=(3, db.dim)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    starts = np.array([first, first + 2, first + 7])
    embeddings = np.asarray(db.embeddings, np.float64)
    for fraction in (0.25, 0.5):
        want = []
        for start in starts:
            mixed = (1 - fraction) * embeddings[start : start + 3] + fraction * embeddings[start + 1 : start + 4]
            mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
            want.append(np.mean(np.sum(mixed * query, axis=1)))
        np.testing.assert_allclose(db.interpolated_scores(query, starts, fraction), want, atol=1e-6)
    with pytest.raises(ValueError, match="next row in its track"):
        db.interpolated_scores(query, np.array([last - 2]), 0.5)


def _halfway_score(db, match, fingerprint):
    # independent reference: the query's cosine with the normalised mean of the two DB rows around
    before = (db.segment_track == match.track_id) & (np.abs(db.segment_start - (match.offset_s - 0.25)) < 1e-6)
    row = int(np.flatnonzero(before)[0])
    pair = np.asarray(db.embeddings[row : row + 2], np.float64)
    mixed = pair.sum(axis=0) / np.linalg.norm(pair.sum(axis=0))
    return float(mixed @ fingerprint), float((pair @ fingerprint).max())


def test_interpolation_places_a_1s_query_between_two_db_rows(setup):
    # A 1 s query has a single phase: cut halfway between two DB rows, only the
    # interpolated DB fingerprints put it at its offset. Such a place reports its own
    # (interpolated) score; with a calibration fitted before it did (no "interpolated_score"),
    # the score of the better of the two DB windows around it, as that calibration was fitted.
    db, track = setup["shared"]["db"], setup["track"]
    plain = Identifier(setup["index"], min_score=None, interpolate=1, speeds=None, **setup["shared"])
    halves = Identifier(setup["index"], min_score=None, interpolate=2, speeds=None, **setup["shared"])
    legacy = Identifier(setup["index"], calibration=Calibration([1, 3], [0.0, 0.0]), interpolate=2, speeds=None,
                        **setup["shared"])
    assert halves.interpolated_own_score and not legacy.interpolated_own_score
    assert any("recalibrate" in note for note in legacy.calibration_notes)
    # with one phase no window is interpolated, so there is nothing to note
    one_phase = Identifier(setup["index"], calibration=Calibration([1, 3], [0.0, 0.0]), interpolate=2, phases=1,
                           speeds=None, **setup["shared"])
    assert not any("between two index rows" in note for note in one_phase.calibration_notes)
    hits = between = 0
    for start in (2.25, 4.25, 6.75, 9.25):
        query = track[int(start * 8000) : int((start + 1) * 8000)]
        assert plain.identify_audio(query)[0].offset_s % 0.5 == 0
        best = halves.identify_audio(query)[0]
        hits += best.path == "track_0001.wav" and abs(best.offset_s - start) < 1e-6
        if abs(best.offset_s % 0.5 - 0.25) < 1e-6:
            between += 1
            own, around = _halfway_score(db, best, halves.fingerprint(query)[0])
            assert best.score == pytest.approx(own, abs=1e-5)
            old = legacy.identify_audio(query)[0]
            assert (old.path, old.offset_s) == (best.path, best.offset_s)
            assert old.score == pytest.approx(around, abs=1e-5)
    assert hits >= 3 and between >= 3


def test_the_speed_search_keeps_the_interpolated_order_of_a_1s_query(setup):
    # With several speeds searched, places rank by `speed_ranking_keys` on their scores; an
    # interpolated window ranks there as at one speed (by its own score), so a repeat of the
    # same bars on the index grid does not win again.
    track = setup["track"]
    one = Identifier(setup["index"], min_score=None, speeds=None, **setup["shared"])
    grid = Identifier(setup["index"], min_score=None, speeds=(0.96, 1.04), **setup["shared"])
    between = 0
    for start in (2.25, 4.25, 6.75, 9.25):
        query = track[int(start * 8000) : int((start + 1) * 8000)]
        alone = one.identify_audio(query)[0]
        searched = grid.identify_audio(query)[0]
        assert (searched.path, searched.offset_s) == (alone.path, alone.offset_s)
        assert searched.score == pytest.approx(alone.score, abs=1e-6)
        between += abs(alone.offset_s % 0.5 - 0.25) < 1e-6
    assert between >= 1


def test_interpolation_leaves_queries_with_several_phases_alone(setup):
    plain = Identifier(setup["index"], min_score=None, interpolate=1, speeds=None, **setup["shared"])
    quarters = Identifier(setup["index"], min_score=None, interpolate=4, speeds=None, **setup["shared"])
    phases = plain.phase_fingerprints(setup["track"][int(2.3 * 8000) : int(5.6 * 8000)])
    assert len(phases) == 4
    assert plain.rank(phases, n_results=5) == quarters.rank(phases, n_results=5)
    with pytest.raises(ValueError, match="`interpolate` must be >= 1"):
        Identifier(setup["index"], interpolate=0, **setup["shared"])


def test_phases_are_cut_at_fractions_of_the_hop_and_short_ones_dropped(setup):
    identifier = Identifier(setup["index"], min_score=None, phases=4, **setup["shared"])
    phases = identifier.phase_fingerprints(setup["track"][: 8000 + 2500])  # 1.3125 s
    assert [shift for shift, _ in phases] == [0.0, 0.125, 0.25]  # 0.375 s leaves < 1 s
    assert [len(f) for _, f in phases] == [1, 1, 1]


def test_neighbouring_offsets_collapse_into_one_place(setup):
    db = setup["shared"]["db"]
    first = int(np.flatnonzero(db.segment_track == 1)[0])
    starts = np.array([first + 4, first + 5, first + 6, first + 12])  # 2.0, 2.5, 3.0 and 6.0 s
    scores = np.array([0.5, 0.9, 0.7, 0.6])
    places = db.places(starts, scores, n_results=5)
    assert [(m.offset_s, m.score) for m in places] == [(2.5, 0.9), (6.0, 0.6)]
    assert len(db.places(starts, scores, n_results=5, collapse_seconds=0)) == 4
    shifted = db.places(starts, scores, shifts=np.full(4, 0.25), n_results=1)
    assert shifted[0].offset_s == 2.25
    query = setup["track"][int(2.3 * 8000) : int(7.3 * 8000)]
    matches = Identifier(setup["index"], min_score=None, **setup["shared"]).identify_audio(query, n_results=10)
    for i, a in enumerate(matches):
        for b in matches[i + 1 :]:
            assert a.track_id != b.track_id or abs(a.offset_s - b.offset_s) >= 1.0


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros(16000, np.float32), "silent (peak -200 dBFS); nothing to identify"),
        (np.full(16000, 1e-4, np.float32), "silent (peak -80 dBFS)"),
        (np.full(16000, 0.5, np.float32), "constant (DC offset only)"),
        (1e-4 * np.sign(np.sin(np.arange(16000))).astype(np.float32) * 0.25 + 2e-3, "near-silent"),
    ],
)
def test_silent_near_silent_and_constant_queries_are_rejected(setup, audio, message):
    identifier = Identifier(setup["index"], **setup["shared"])
    with pytest.raises(QueryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        identifier.identify_audio(audio, name="query.wav")


def test_index_build_copies_the_model_calibration_and_identify_applies_it(setup):
    index = setup["index"]
    assert json.loads((index / "calibration.json").read_text())["min_score"] == [0.999, 0.995]
    identifier = Identifier(index, **setup["shared"])
    assert identifier.match_threshold(0.5) == 0.999 and identifier.match_threshold(2.9) == 0.999
    assert identifier.match_threshold(3.0) == 0.995 and identifier.match_threshold(30) == 0.995
    query = setup["track"][int(4.2 * 8000) : int(7.2 * 8000)]
    score = Identifier(index, min_score=None, **setup["shared"]).identify_audio(query)[0].score
    assert score < 0.995
    assert identifier.identify_audio(query) == []  # below the stored threshold: not in the catalogue
    short = Identifier(index, min_score=None, **setup["shared"]).identify_audio(query[:16000])[0].score  # 2 s
    below = Identifier(index, **setup["shared"], calibration=Calibration([1, 3], [short + 0.01, score - 0.01]))
    assert below.identify_audio(query)[0].path == "track_0001.wav"  # 3 s threshold below the score
    # 2 s: the higher of the 1 and 3 s thresholds, above its score
    assert below.match_threshold(2.0) == max(short + 0.01, score - 0.01)
    assert below.identify_audio(query[:16000]) == []
    above = Identifier(index, **setup["shared"], calibration=Calibration([1, 3], [short - 0.01, min(score, short) - 0.01]))
    assert above.identify_audio(query[:16000])[0].path == "track_0001.wav"
    assert Identifier(index, min_score=0.1, **setup["shared"]).match_threshold(3.0) == 0.1  # explicit wins


def test_index_calibrate_with_kinds_rewrites_the_calibration_of_a_usable_index(setup, tmp_path, capsys):
    # An index built with a calibrated model holds a copy of that calibration; `index
    # calibrate` replaces it (another size: the integrity record must not refuse the index)
    # and holds each folder of out-of-catalogue audio to the target on its own.
    from nnfp.corpus.noise import make_noise
    from nnfp.corpus.synth import compose_track

    index = tmp_path / "idx"
    build_index(setup["music"], index, model=setup["root"] / "m.keras", index_type="flat", progress=False)
    kinds = {"music": lambda i: compose_track(700 + i, 12.0, 8000), "noise": lambda i: make_noise(i, 12.0, 8000, kind="rain")}
    for kind, make in kinds.items():
        (tmp_path / kind).mkdir()
        for i in range(2):
            sf.write(tmp_path / kind / f"{kind}_{i}.wav", make(i), 8000, subtype="PCM_16")
    args = ["index", "calibrate", str(index), "--unknown", str(tmp_path / "music"), str(tmp_path / "noise"),
            "--n-queries", "12", "--n-unknown", "12", "--lengths", "1", "3", "--target", "0.25", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "false match on music:" in out and "false match on noise:" in out
    saved = json.loads((index / "calibration.json").read_text())
    assert saved["n_unknown_by_kind"] == {"music": 12, "noise": 12}
    # 12 queries (none matching) show <= 22.1 % at 95 %: every threshold lies above every out-of-catalogue score.
    assert saved["false_match_by_kind"] == {"music": [0.0, 0.0], "noise": [0.0, 0.0]}
    assert saved["min_score"] != [0.999, 0.995]
    identifier = Identifier(index, **setup["shared"])  # the index loads, with the new thresholds
    assert identifier.match_threshold(3.0) == saved["min_score"][1]
    assert main(["index", "verify", str(index)]) == 0


def test_identify_cli_no_match_and_silent_query(setup, tmp_path, capsys):
    query = tmp_path / "clip.wav"
    sf.write(query, setup["track"][int(4.2 * 8000) : int(7.2 * 8000)], 8000)
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(16000, np.float32), 8000)
    assert main(["identify", str(setup["index"]), str(query)]) == 0
    out = capsys.readouterr().out
    assert "no match (not in the catalogue" in out and "calibrated threshold 0.995 for a 3.0 s query" in out
    assert "no place scored >= the" in out  # this calibration thresholds the score (a lead: "led every other track by")
    assert main(["identify", str(setup["index"]), str(query), str(silent), "--json", "--min-score", "0.3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["matches"][0]["track"] == "track_0001.wav"
    assert abs(lines[0]["matches"][0]["offset_s"] - 4.2) <= 0.1
    assert lines[1]["matches"] == [] and "silent" in lines[1]["error"]


def test_calibrate_picks_the_lowest_threshold_with_at_most_the_target_false_matches():
    unknown = np.linspace(0.0, 0.99, 100)[:, None]  # out-of-catalogue best scores
    known = np.array([[0.2], [0.985], [0.995], [0.999]])
    right = np.array([[True], [True], [False], [True]])
    calibration = calibrate([3.0], known, right, unknown, target_false_match=0.01, confidence=None)
    # point estimate: 1 false match allowed of 100: just above the 2nd best unknown score (0.98)
    assert 0.98 < calibration.min_score[0] <= 0.9801
    assert calibration.info["false_match"] == [0.01]
    assert calibration.info["right_kept"] == [0.5]  # 0.985 and 0.999 kept; 0.995 is a wrong answer
    assert calibration.info["right"] == [0.75]


def test_calibrate_holds_every_kind_of_unknown_audio_to_the_target():
    # Two kinds of out-of-catalogue queries, 100 each, two lengths. Point estimate, 1 %:
    # each kind may put 1 score above the threshold. Music scores high at 1 s, noise at 10 s.
    rng = np.random.default_rng(0)
    music = np.stack([rng.uniform(0.5, 0.9, 100), rng.uniform(0.2, 0.5, 100)], axis=1)
    noise = np.stack([rng.uniform(0.1, 0.6, 100), rng.uniform(0.3, 0.7, 100)], axis=1)
    known = np.array([[0.95, 0.8], [0.92, 0.55]])
    right = np.ones((2, 2), bool)
    calibration = calibrate([1.0, 10.0], known, right, {"music": music, "noise": noise}, 0.01, confidence=None)
    # Independent reference: the 2nd best score of each kind, the higher of the two kinds.
    expected = [max(np.sort(music[:, j])[-2], np.sort(noise[:, j])[-2]) for j in range(2)]
    for threshold, value in zip(calibration.min_score, expected, strict=True):
        assert value < threshold <= value + 2e-4
    by_kind = calibration.info["false_match_by_kind"]
    assert by_kind["music"][0] == 0.01 and by_kind["noise"][1] == 0.01  # the kind that set each length
    assert by_kind["noise"][0] == 0.0 and by_kind["music"][1] == 0.0
    assert calibration.info["n_unknown_by_kind"] == {"music": 100, "noise": 100}
    assert calibration.info["right_kept"] == [1.0, 0.5]  # 0.55 < the 10 s threshold set by noise
    # Music alone gives the lower 10 s threshold that let noise through.
    alone = calibrate([1.0, 10.0], known, right, music, 0.01, confidence=None)
    assert alone.min_score[1] < np.sort(noise[:, 1])[-2]


def test_allowed_false_matches_meet_the_target_at_95_percent():
    # binomial_upper_bound is scipy's Beta quantile (test_calibration checks its numbers)
    assert binomial_upper_bound(4, 1000) <= 0.01 < binomial_upper_bound(5, 1000)
    assert allowed_false_matches(300, 0.01) == 0  # 0/300 -> 0.99 % at 95 % confidence
    assert allowed_false_matches(1000, 0.01) == 4
    assert allowed_false_matches(100, 0.01) == -1  # no count of 100 queries shows 1 %
    assert allowed_false_matches(1000, 0.01, confidence=None) == 10


def test_calibrate_with_confidence_admits_fewer_false_matches():
    unknown = np.linspace(0.0, 0.999, 1000)[:, None]
    known = np.array([[0.9], [0.999]])
    right = np.array([[True], [True]])
    calibration = calibrate([3.0], known, right, unknown, target_false_match=0.01)
    # 4 false matches allowed of 1000 at 95 %: just above the 5th best unknown score
    fifth = np.sort(unknown[:, 0])[-5]
    assert fifth < calibration.min_score[0] <= fifth + 2e-4
    assert calibration.info["false_match"] == [0.004] and calibration.info["allowed_false_matches"] == 4
    few = calibrate([3.0], known, right, unknown[:100], target_false_match=0.01)
    assert few.min_score[0] > unknown[:100].max()  # 100 queries cannot show 1 %: above all of them
    with pytest.raises(ValueError, match="confidence"):
        calibrate([3.0], known, right, unknown, confidence=1.0)


def test_identify_cli_names_the_sharpness_floor_it_turned_an_answer_away_by(setup, tmp_path, capsys):
    index = tmp_path / "index"
    shutil.copytree(setup["index"], index)
    query = tmp_path / "clip.wav"
    sf.write(query, setup["track"][int(4.2 * 8000) : int(7.2 * 8000)], 8000)

    def calibrate_with(floor):
        info = {"decision": "lead", "lead_weight": 1.0, "rival_floor": [0.0, 0.0], "sharpness_floor": [floor, floor]}
        Calibration([1, 3], [-0.5, -0.5], info=info).save(index / "calibration.json")

    calibrate_with(-1.0)  # every answer clears it: the track is found
    assert main(["identify", str(index), str(query), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["matches"][0]["track"] == "track_0001.wav"
    calibrate_with(1.9)  # no answer stands that far above its own track: not in the catalogue, and why
    assert main(["identify", str(index), str(query)]) == 0
    out = capsys.readouterr().out
    assert "no place led every other track by >= the calibrated threshold -0.500 and stood >= 1.900 above" in out
    info = {"decision": "lead", "lead_weight": 1.0, "vote_weight": 0.3, "sharpness_floor": [1.9, 1.9]}
    Calibration([1, 3], [-0.5, -0.5], info=info).save(index / "calibration.json")
    assert main(["identify", str(index), str(query)]) == 0  # with votes the confidence is named for what it is
    assert ("no place reached a confidence (its lead over every other track + 0.3 x its segment votes) >= the "
            "calibrated threshold -0.500 and stood >= 1.900 above") in capsys.readouterr().out
