"""Speed search: the grid, the refined speed, and songs played faster or slower found by
`Identifier`, `monitor_stream` and `evaluate`'s query degradation."""

import json
import math

import numpy as np
import pytest
import soundfile as sf

from nnfp.audio.io import resample
from nnfp.catalogue.identify import Identifier, _peak_speed, _wider_speeds, speed_ranking_keys
from nnfp.catalogue.speeds import (
    LEGACY_SPEED_STEPS,
    fitted_speed_steps,
    parse_speeds,
    speed_grid,
    speed_step,
    speed_steps_from_json,
    speed_steps_to_json,
)
from nnfp.corpus.synth import compose_track
from nnfp.defaults import SPEED_STEPS

RATE = 8000


def played_at(audio, speed):
    """`audio` played `speed` times fast (pitch and tempo together)."""
    return np.asarray(resample(np.asarray(audio, np.float32), RATE, RATE / speed), np.float32)


def test_parse_speeds_forms_and_errors():
    assert parse_speeds("off") is None
    assert parse_speeds("0.92:1.08") == (0.92, 1.08)
    assert parse_speeds("0.96:1.04:0.02") == (0.96, 1.04, 0.02)
    for bad in ("fast", "0.9", "1.1:0.9", "0.9:1.1:0.5", "0.2:1.0", "nan:1.1"):
        with pytest.raises(ValueError):
            parse_speeds(bad)


def test_speed_grid_covers_the_range_within_half_a_step():
    for low, high, step in ((0.92, 1.08, 0.01), (0.92, 1.08, 0.02), (0.96, 1.04, 0.015)):
        grid = np.array(speed_grid((low, high), step))
        assert 1.0 in grid and np.all(np.diff(grid) > 0)
        np.testing.assert_allclose(grid[1:] / grid[:-1], 1 + step, atol=2e-4)  # geometric
        for speed in np.linspace(low, high, 101):  # every speed in range is near a grid point
            assert np.min(np.abs(np.log(grid / speed))) <= np.log1p(step) / 2 + 1e-4
    assert len(speed_grid((0.92, 1.08), 0.01)) == 17
    assert speed_grid(None, 0.01) == (1.0,)
    assert speed_step((0.9, 1.1), 1.0) == SPEED_STEPS[0][1] and speed_step((0.9, 1.1), 10.0) == SPEED_STEPS[-1][1]
    assert speed_step((0.9, 1.1), 1.0, LEGACY_SPEED_STEPS) == 0.01
    assert speed_step((0.9, 1.1, 0.05), 1.0) == 0.05


def test_peak_speed_is_the_vertex_of_the_parabola():
    rng = np.random.default_rng(0)
    for _ in range(20):
        true = rng.uniform(0.95, 1.05)
        middle = true * np.exp(rng.uniform(-0.004, 0.004))
        speeds = [middle / 1.005, middle, middle * 1.005]
        curve = -3.0 * (np.log(speeds) - np.log(true)) ** 2 + 0.8
        scores = dict(zip(speeds, curve, strict=True))
        # reference: np.polyfit's parabola through the three points, in log speed
        a, b, _ = np.polyfit(np.log(speeds), curve, 2)
        assert _peak_speed(scores) == pytest.approx(np.exp(-b / (2 * a)), rel=1e-9)
        assert _peak_speed(scores) == pytest.approx(true, rel=1e-6)
    # best at an end, or a place not found at one side: the best speed itself
    assert _peak_speed({0.99: 0.5, 1.0: 0.6, 1.01: 0.7}) == 1.01  # no peak: the best
    assert _peak_speed({0.99: 0.6, 1.0: 0.5, 1.01: 0.55}) == 0.99  # a trough
    assert _peak_speed({0.99: -np.inf, 1.0: 0.6, 1.01: 0.5}) == 1.0


def test_speed_ranking_keys_against_a_numpy_reference():
    from nnfp.store.search import Match

    rng = np.random.default_rng(3)
    speeds = np.array([1.0, 0.95, 1.03, 1.08])
    found = rng.choice(speeds, size=60)
    found[:3] = [1.0, 0.95, 1.08]  # every speed at least once; 1.08 has a single place below
    found[3:][found[3:] == 1.08] = 1.03
    scores = rng.uniform(0.1, 0.9, size=60)
    def match(track, score, speed):
        return Match(track, "t", 0.0, float(score), 0, speed=float(speed), found_speed=float(speed))

    matches = [match(i, s, v) for i, (s, v) in enumerate(zip(scores, found, strict=True))]
    keys = speed_ranking_keys(matches, penalty=0.06, level_weight=0.25, places=10)
    # reference: per speed, the mean of the 2nd..10th best scores (0 for a speed with one place)
    expected = scores - 0.06 * (found != 1.0)
    for speed in speeds:
        at = found == speed
        ordered = -np.sort(-scores[at])[:10]
        level = ordered[1:].mean() if at.sum() > 1 else 0.0
        expected[at] -= 0.25 * level
    np.testing.assert_allclose(keys, expected, rtol=0, atol=1e-12)
    assert (found == 1.08).sum() == 1 and keys[2] == pytest.approx(scores[2] - 0.06)
    # a place at a speed where the query resembles much of the catalogue ranks below an equal score elsewhere
    crowded = [match(0, 0.7, 1.05)] + [match(1, 0.6, 1.05) for _ in range(9)]
    alone = [match(2, 0.7, 0.97), match(3, 0.2, 0.97)]
    keys = speed_ranking_keys(crowded + alone, penalty=0.0, level_weight=0.25)
    assert keys[0] == pytest.approx(0.7 - 0.25 * 0.6) and keys[10] == pytest.approx(0.7 - 0.25 * 0.2)


def test_a_wider_or_finer_speed_search_than_fitted_is_wider():
    assert _wider_speeds((0.92, 1.08), None)
    assert not _wider_speeds(None, None) and not _wider_speeds(None, (0.92, 1.08))
    assert not _wider_speeds((0.92, 1.08), (0.92, 1.08))
    assert _wider_speeds((0.9, 1.08), (0.92, 1.08))
    assert _wider_speeds((0.96, 1.04, 0.005), (0.92, 1.08), fitted_steps=LEGACY_SPEED_STEPS)  # finer than 1 %
    assert not _wider_speeds((0.96, 1.04, 0.02), (0.92, 1.08), fitted_steps=LEGACY_SPEED_STEPS)
    # steps by query length: finer at any length is wider, also between the lengths 1, 3 and 10 s
    coarse = ((2.0, 0.01), (5.0, 0.015), (math.inf, 0.02))
    assert not _wider_speeds((0.92, 1.08), (0.92, 1.08), coarse, coarse)
    assert not _wider_speeds((0.92, 1.08), (0.92, 1.08), ((math.inf, 0.02),), coarse)
    assert _wider_speeds((0.92, 1.08), (0.92, 1.08), coarse, ((math.inf, 0.02),))
    assert _wider_speeds((0.92, 1.08), (0.92, 1.08), ((6.0, 0.015), (math.inf, 0.02)), coarse)  # 5-6 s queries
    assert not _wider_speeds((0.92, 1.08), (0.92, 1.08), ((4.0, 0.015), (math.inf, 0.02)), coarse)


def test_speed_steps_records_round_trip_and_bad_ones_are_refused():
    steps = ((2.0, 0.005), (4.0, 0.01), (math.inf, 0.02))
    record = speed_steps_to_json(steps)
    assert record == [[2.0, 0.005], [4.0, 0.01], [None, 0.02]]
    assert speed_steps_from_json(json.loads(json.dumps(record))) == steps
    assert fitted_speed_steps({"speeds": [0.92, 1.08]}) == LEGACY_SPEED_STEPS  # fitted before steps were recorded
    assert fitted_speed_steps({"speed_steps": record}) == steps
    assert [speed_step((0.92, 1.08), seconds, steps) for seconds in (1, 2, 2.5, 4, 4.5, 100)] == [
        0.005, 0.005, 0.01, 0.01, 0.02, 0.02]
    for bad in ([[2.0, 0.01]], [[None, 0.5]], [[3.0, 0.01], [2.0, 0.01], [None, 0.02]], "0.01", [[None]]):
        with pytest.raises(ValueError, match="speed_steps"):
            speed_steps_from_json(bad)


@pytest.fixture(scope="module")
def speed_index(tmp_path_factory):
    """An index of four generated tracks with the packaged model."""
    from nnfp.catalogue.build import build_index

    root = tmp_path_factory.mktemp("speeds")
    tracks = root / "tracks"
    tracks.mkdir()
    music = {}
    for i in range(4):
        music[f"t{i}.wav"] = compose_track(700 + i, 40.0, RATE)
        sf.write(tracks / f"t{i}.wav", music[f"t{i}.wav"], RATE)
    build_index(tracks, root / "index", progress=False)
    return root / "index", music


def test_a_track_played_5_percent_fast_is_found_with_its_speed_and_offset(speed_index):
    index, music = speed_index
    identifier = Identifier(index, min_score=None)
    start = 12.3  # track seconds, off the 0.5 s grid
    for speed in (1.05, 0.95):
        query = played_at(music["t2.wav"][int(start * RATE) :], speed)[: 6 * RATE]
        best = identifier.identify_audio(query, n_results=1)[0]
        assert best.path == "t2.wav"
        assert abs(best.offset_s - start) <= 0.5
        assert best.speed == pytest.approx(speed, abs=0.005)
        # the search at one speed does not find it
        plain = Identifier(index, min_score=None, speeds=None, db=identifier.db, embedder=identifier.embedder)
        missed = plain.identify_audio(query, n_results=1)
        assert not missed or missed[0].score < best.score - 0.2


def test_the_speed_ranking_moves_the_order_of_places_never_their_confidence(speed_index):
    # The "lead" confidence counts the query's impostor level, fitted with the calibration: a
    # ranking that puts other places first must leave every place's confidence as it was.
    index, music = speed_index
    shipped = Identifier(index, min_score=None, decision="lead")
    other = Identifier(index, min_score=None, decision="lead", db=shipped.db, embedder=shipped.embedder)
    other.speed_penalty, other.speed_level_weight = 0.5, 1.0
    noise = 0.05 * np.random.default_rng(0).standard_normal(3 * RATE).astype(np.float32)
    query = played_at(music["t3.wav"][int(9.6 * RATE) :], 1.03)[: 3 * RATE] + noise
    a = shipped.rank_query(shipped.query(query), n_results=200)
    b = other.rank_query(other.query(query), n_results=200)
    assert [(m.track_id, m.offset_s) for m in a] != [(m.track_id, m.offset_s) for m in b]  # another order
    confidence = {(m.track_id, m.offset_s, m.found_speed): m.confidence for m in a}
    shared = [m for m in b if (m.track_id, m.offset_s, m.found_speed) in confidence]
    assert len(shared) >= 10
    for m in shared:
        assert m.confidence == pytest.approx(confidence[m.track_id, m.offset_s, m.found_speed], abs=1e-9)


def test_evaluate_searches_a_one_second_prefix_as_identify_searches_the_cut_file(speed_index):
    # Undone from a slower speed, a 1 s query is padded; the prefix of a longer query must not
    # fill that pad with audio a 1 s query does not have.
    from nnfp.catalogue.metrics import run_queries

    index, music = speed_index
    identifier = Identifier(index, min_score=None)
    for start in (7.4, 21.9):
        wave = played_at(music["t1.wav"][int(start * RATE) :], 0.95)[: 4 * RATE]
        raw = run_queries(identifier, [wave], lengths_seconds=(1.0, 3.0), progress=False)
        for j, seconds in enumerate((1.0, 3.0)):
            cut = identifier.rank_query(identifier.query(wave[: int(seconds * RATE)]), n_results=10)
            assert raw["tracks"][0, j, 0] == cut[0].track_id
            assert raw["scores"][0, j, 0] == pytest.approx(cut[0].score, abs=1e-6)
            assert raw["offsets"][0, j, 0] == pytest.approx(cut[0].offset_s, abs=1e-9)
        assert raw["found_speeds"][0, 0, 0] < 1.0  # found at a slower grid speed: padded there


def test_unchanged_queries_keep_their_answer_and_report_speed_one(speed_index):
    index, music = speed_index
    identifier = Identifier(index, min_score=None)
    plain = Identifier(index, min_score=None, speeds=None, db=identifier.db, embedder=identifier.embedder)
    for name, start in (("t0.wav", 3.1), ("t3.wav", 20.75)):
        query = music[name][int(start * RATE) : int((start + 3) * RATE)]
        a, b = identifier.identify_audio(query, n_results=1)[0], plain.identify_audio(query, n_results=1)[0]
        assert (a.path, a.offset_s) == (b.path, b.offset_s) == (name, pytest.approx(start, abs=0.13))
        assert a.score == pytest.approx(b.score, abs=1e-6)
        assert a.speed == pytest.approx(1.0, abs=0.005)


def test_monitor_reports_plays_at_their_speed(speed_index):
    from nnfp.catalogue.monitor import monitor_stream

    index, music = speed_index
    identifier = Identifier(index, min_score=None, decision="score")  # window scores >= min_score below
    first = played_at(music["t1.wav"][5 * RATE :], 1.03)[: 30 * RATE]
    second = played_at(music["t3.wav"][2 * RATE :], 0.97)[: 30 * RATE]
    broadcast = np.concatenate([first, second])
    blocks = [broadcast[i : i + 4 * RATE] for i in range(0, len(broadcast), 4 * RATE)]
    plays = list(monitor_stream(identifier, blocks, "b.wav", min_score=0.6, speeds=(0.96, 1.04, 0.02)))
    assert [p.track for p in plays] == ["t1.wav", "t3.wav"]
    for play, speed, begin, track_start in zip(plays, (1.03, 0.97), (0.0, 30.0), (5.0, 2.0), strict=True):
        # the grid's speed (step 2 %: 1.02 or 1.04 for 1.03), moved by the drift of the play's
        # segments between the stored rows
        assert play.speed == pytest.approx(speed, abs=0.005)
        assert abs(play.start_s - begin) <= 1.5
        assert abs(play.track_start_s - (track_start + speed * (play.start_s - begin))) <= 0.6
        assert json.loads(json.dumps(play.as_dict()))["speed"] == round(play.speed, 4)
    single = list(monitor_stream(identifier, blocks, "b.wav", min_score=0.6, speeds=None))
    assert all(p.speed is None and "speed" not in p.as_dict() for p in single)
    # The default ("auto"): the index's calibration searches speeds, so the default grid does.
    assert identifier.speeds is not None
    assert list(monitor_stream(identifier, blocks, "b.wav", min_score=0.6)) == plays


def test_monitor_speeds_skip_the_model_while_a_play_is_followed(speed_index, monkeypatch):
    # While one speed's play is heard, the other speeds' segments wait unfingerprinted; when it
    # ends they are fingerprinted from shortly before its last agreeing window on (not all the
    # `_GATED_LOOKBACK_SECONDS` they hold), so the next play, at another speed, is found from
    # its start, and little is fingerprinted twice over. (Waking with the whole 12 s look-back
    # fingerprinted 561 of the 675 rows; following only plays that could be reported, 449 of
    # them with a 4 s look-back.)
    import nnfp.catalogue.monitor as monitor

    index, music = speed_index
    identifier = Identifier(index, min_score=None, decision="score")
    parts = [played_at(music["t1.wav"][5 * RATE :], 1.03)[: 33 * RATE], played_at(music["t3.wav"][2 * RATE :], 0.97)[: 35 * RATE]]
    broadcast = np.concatenate(parts)
    blocks = [broadcast[i : i + 4 * RATE] for i in range(0, len(broadcast), 4 * RATE)]
    rows = []
    fingerprint = identifier.embedder.fingerprint

    def counted(windows, *args, **kwargs):
        rows.append(len(windows))
        return fingerprint(windows, *args, **kwargs)

    monkeypatch.setattr(identifier.embedder, "fingerprint", counted)
    # these generated tracks played 3 % off score about 0.5 a window, at the grid's nearest speed
    plays = list(monitor.monitor_stream(identifier, blocks, "b.wav", min_score=0.4, speeds=(0.96, 1.04, 0.02)))
    assert [p.track for p in plays] == ["t1.wav", "t3.wav"], plays
    for play, speed, begin, end in zip(plays, (1.03, 0.97), (0.0, 33.0), (33.0, 68.0), strict=True):
        assert play.speed == pytest.approx(speed, abs=0.01)  # from the one speed that followed it
        assert abs(play.start_s - begin) <= 1.5, play
        assert abs(play.end_s - end) <= 1.5, play
    every_speed = 5 * (len(broadcast) // (RATE // 2) - 1)  # 5 speeds x 135 segments without the gate
    assert sum(rows) < 0.65 * every_speed, (sum(rows), every_speed)


def test_degrade_plays_the_excerpt_faster_from_its_start():
    from nnfp.catalogue.queries import degrade

    track = compose_track(9, 20.0, RATE)
    start, length = 4 * RATE + 123, 3 * RATE
    out = degrade(track, start, length, RATE, RATE, speed=1.04)
    reference = played_at(track[start : start + int(length * 1.04) + RATE], 1.04)[:length]
    assert len(out) == length
    # the same audio as the excerpt resampled on its own (the edges differ by the filter)
    inner = slice(200, length - 200)
    assert np.corrcoef(out[inner], reference[inner])[0, 1] > 0.999


def test_query_tempo_and_pitch_changes_keep_the_start_and_the_length():
    from nnfp.catalogue.queries import altered, degrade

    t = np.arange(20 * RATE) / RATE
    track = (np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    start, length = 5 * RATE, 3 * RATE
    for tempo, pitch in ((1.05, 0.0), (0.95, 0.0), (1.0, 1.0), (1.0, -1.0)):
        wave, at = altered(track, start, length, RATE, tempo=tempo, pitch=pitch)
        assert len(wave) >= at + length
        out = degrade(track, start, length, RATE, RATE, tempo=tempo, pitch=pitch)
        assert len(out) == length and np.isfinite(out).all()
        # a tempo change keeps the 440 Hz tone; a pitch shift moves it by 2 ** (semitones / 12)
        spectrum = np.abs(np.fft.rfft(out * np.hanning(length)))
        peak_hz = np.argmax(spectrum) * RATE / length
        assert peak_hz == pytest.approx(440 * 2 ** (pitch / 12), abs=2.0)


def test_an_answer_at_another_speed_needs_the_calibrated_off_speed_margin_more(speed_index):
    from nnfp.catalogue.calibration import Calibration
    from nnfp.catalogue.monitor import monitor_stream

    index, music = speed_index
    plain = Identifier(index, min_score=None, decision="score")
    info = {"decision": "score", "speeds": [0.92, 1.08], "off_speed_margin": [0.3]}
    calibrated = Identifier(
        index, calibration=Calibration([1.0], [0.0], info=info), db=plain.db, embedder=plain.embedder
    )
    assert calibrated.off_speed_margin(3.0) == 0.3 and plain.off_speed_margin(3.0) == 0.0
    fast = played_at(music["t2.wav"][int(12.3 * RATE) :], 1.05)[: 6 * RATE]
    same = music["t0.wav"][3 * RATE : 9 * RATE]
    for query, lowered in ((fast, 0.3), (same, 0.0)):
        a, b = calibrated.identify_audio(query, n_results=1)[0], plain.identify_audio(query, n_results=1)[0]
        assert (a.path, a.score) == (b.path, pytest.approx(b.score, abs=1e-6))
        assert a.confidence == pytest.approx(b.confidence - lowered, abs=1e-6)  # decision "score": the score
        assert (a.found_speed != 1.0) == (lowered > 0)
    # monitor: windows heard at another speed need the margin more (here more than any score reaches)
    info["off_speed_margin"] = [1.5]
    strict = Identifier(index, calibration=Calibration([1.0], [0.6], info=info), db=plain.db, embedder=plain.embedder)
    broadcast = np.concatenate([played_at(music["t1.wav"][5 * RATE :], 1.03)[: 30 * RATE], music["t3.wav"][: 30 * RATE]])
    blocks = [broadcast[i : i + 4 * RATE] for i in range(0, len(broadcast), 4 * RATE)]
    found = list(monitor_stream(strict, blocks, "b.wav", speeds=(0.96, 1.04, 0.02)))
    assert [(p.track, round(p.speed, 2)) for p in found] == [("t3.wav", 1.0)]  # its own drift, near 0
    info["off_speed_margin"] = [0.0]
    both = Identifier(index, calibration=Calibration([1.0], [0.6], info=info), db=plain.db, embedder=plain.embedder)
    assert [p.track for p in monitor_stream(both, blocks, "b.wav", speeds=(0.96, 1.04, 0.02))] == ["t1.wav", "t3.wav"]


def test_a_calibration_searches_the_grid_it_was_fitted_with_and_refuses_a_finer_one(speed_index):
    # The grid's steps are part of what a calibration was fitted with: searched as recorded
    # ("auto" speeds), as before for one fitted before they were recorded, and an explicit
    # finer grid is refused, naming both.
    from nnfp.catalogue.calibration import Calibration

    index, _ = speed_index
    plain = Identifier(index, min_score=None)
    shared = {"db": plain.db, "embedder": plain.embedder}
    coarse = {"decision": "score", "speeds": [0.92, 1.08], "speed_steps": [[None, 0.04]]}
    fitted = Identifier(index, calibration=Calibration([1.0], [0.5], info=coarse), **shared)
    assert fitted.speed_grid(1.0) == speed_grid((0.92, 1.08), 0.04) and len(fitted.speed_grid(1.0)) == 5
    legacy = Identifier(index, calibration=Calibration([1.0], [0.5], info={"decision": "score", "speeds": [0.92, 1.08]}),
                        **shared)
    assert legacy.speed_grid(1.0) == speed_grid((0.92, 1.08), 0.01) and legacy.speed_grid(10.0) == speed_grid(
        (0.92, 1.08), 0.02)
    assert plain.speed_steps == SPEED_STEPS  # no calibration: today's steps
    with pytest.raises(ValueError, match=r"--speeds 0\.92-1\.08 step .*fitted with 0\.92-1\.08 step 0\.04 beyond"):
        Identifier(index, calibration=Calibration([1.0], [0.5], info=coarse), speeds=(0.92, 1.08), **shared)
    # as coarse as fitted: searched
    same = Identifier(index, calibration=Calibration([1.0], [0.5], info=coarse), speeds=(0.92, 1.08, 0.04), **shared)
    assert same.speed_grid(3.0) == fitted.speed_grid(3.0)
