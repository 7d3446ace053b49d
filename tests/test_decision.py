"""The decision statistic: a match's confidence (its lead over the best other track), the
same recording under two names, and the decision taken on it by `Identifier`, against
NumPy references on constructed fingerprints."""

import dataclasses

import numpy as np
import pytest

from nnfp.catalogue.identify import (
    IMPOSTOR_PLACES,
    LEAD_WEIGHT,
    LEGACY_LEAD_WEIGHT,
    SAME_AUDIO,
    Identifier,
    Query,
    impostor_score,
    lead,
    margins,
    same_audio,
    window_similarity,
)
from nnfp.store.db import FingerprintDB, Match

D = 32


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def db():
    """Five random tracks of 20 rows; track 4 is track 1's audio under another name."""
    rng = np.random.default_rng(3)
    rows = [unit(rng.standard_normal((20, D))) for _ in range(4)]
    rows.append(unit(rows[1] + 0.05 * rng.standard_normal((20, D))))  # a second copy, slightly re-encoded
    tracks = [{"track_id": t, "path": f"t{t}.wav", "duration_s": 10.5} for t in range(5)]
    return FingerprintDB.build(
        np.concatenate(rows), np.repeat(np.arange(5), 20), np.tile(0.5 * np.arange(20), 5), tracks,
        index_type="flat", threads=1, metadata={"sample_rate": 8000},
    )


def place(track, row, score):
    return Match(track_id=track, path=f"t{track}.wav", offset_s=0.5 * (row % 20), score=score, segment_index=row)


class Embedder:
    """Fingerprints are given, not computed."""

    segment_samples = 8000


def fixed_query(identifier, fingerprints):
    """A `Query` of `identifier` whose fingerprints are the constructed `fingerprints` (6 rows)
    at every speed and phase, whatever its (silent) audio."""

    class Fixed(Query):
        def prepare(self, requests):
            pass

        def fingerprints(self, speed=1.0, phases=None, seconds=None):
            return [(0.0, fingerprints)]

    return Fixed(identifier, np.zeros(8000 + 5 * 4000, np.float32))


def split_query(db):
    """6 noisy copies of track 2's rows 43-48, the last 2 replaced by track 3's rows 66-67: 4 of
    its 6 segments point at track 2 by themselves."""
    emb = np.asarray(db.embeddings)
    rng = np.random.default_rng(21)
    query = unit(emb[43:49] + 0.1 * rng.standard_normal((6, D)))
    query[4:] = unit(emb[66:68] + 0.1 * rng.standard_normal((2, D)))
    return query


def lead_identifier(db, threshold=-3.0, **info):
    """An `Identifier` of `db` (one speed, one phase) under a one-length "lead" calibration."""
    from nnfp.catalogue.calibration import Calibration

    calibration = Calibration([1.0], [threshold], info={"decision": "lead", "lead_weight": 1.0, **info})
    return Identifier(None, db=db, embedder=Embedder(), calibration=calibration, speeds=None, phases=1)


def test_same_audio_matches_the_mean_cosine_of_the_two_windows(db):
    emb = np.asarray(db.embeddings)
    for first, other, n in ((22, 82, 6), (22, 42, 6), (0, 60, 20), (30, 85, 12)):
        reference = np.mean(np.sum(emb[first : first + n] * emb[other : other + n], axis=1))
        assert same_audio(db, first, other, n) == (reference >= SAME_AUDIO)
    assert same_audio(db, 22, 82, 6) and not same_audio(db, 22, 42, 6)


def test_window_similarity_of_a_memory_mapped_store_against_a_reference(db, tmp_path):
    db.save(tmp_path / "db")
    mapped = FingerprintDB.load(tmp_path / "db", mmap=True)
    assert isinstance(mapped.embeddings, np.memmap)
    emb = np.asarray(db.embeddings, np.float64)
    # rows 95-99 are the last: a window there holds as many rows as are left
    for first, other, n in ((22, 82, 6), (0, 60, 20), (30, 85, 12), (97, 10, 6), (10, 98, 6)):
        m = min(n, 100 - first, 100 - other)
        reference = np.mean(np.sum(emb[first : first + m] * emb[other : other + m], axis=1))
        assert window_similarity(mapped, first, other, n) == pytest.approx(reference, abs=1e-6)
        assert window_similarity(db, first, other, n) == pytest.approx(reference, abs=1e-6)
    assert window_similarity(mapped, 100, 3, 6) == -np.inf


def test_margins_against_a_reference(db):
    places = [place(0, 3, 0.9), place(0, 10, 0.85), place(2, 45, 0.6), place(3, 65, 0.5)]
    # reference: score minus the best score of a place of another track
    expected = [0.9 - 0.6, 0.85 - 0.6, 0.6 - 0.9, 0.5 - 0.9]
    np.testing.assert_allclose(margins(db, places, 4), expected)
    # no other track among the places: the whole score is the lead
    np.testing.assert_allclose(margins(db, places[:2], 4), [0.9, 0.85])
    # the same recording under another name (track 4 = track 1) is no rival; the next one is
    dup = [place(1, 22, 0.9), place(4, 82, 0.89), place(3, 65, 0.4)]
    np.testing.assert_allclose(margins(db, dup, 6), [0.9 - 0.4, 0.89 - 0.4, 0.4 - 0.9])


def test_lead_adds_a_share_of_the_lead_over_the_impostor_level(db):
    assert (IMPOSTOR_PLACES, LEAD_WEIGHT, LEGACY_LEAD_WEIGHT) == (10, 1.0, 0.25)
    scores = [0.9, 0.6, 0.58, 0.55, 0.52, 0.5, 0.49, 0.47, 0.46, 0.45, 0.2]
    assert impostor_score(scores) == 0.45  # the 10th best, whatever follows
    assert impostor_score(scores[::-1]) == 0.45 and impostor_score(scores[:9]) is None
    assert impostor_score([*scores[:9], float("nan")]) is None  # a NaN is no place
    # reference: (score - max(rival, floor)) + weight (score - impostor)
    assert lead(0.9, 0.6, 0.45) == pytest.approx(0.3 + 1.0 * 0.45)
    assert lead(0.9, 0.6, 0.45, floor=0.7) == pytest.approx(0.2 + 0.45)
    assert lead(0.9, 0.6, 0.45, weight=0.25) == pytest.approx(0.3 + 0.25 * 0.45)
    assert lead(0.9, 0.6, None) == pytest.approx(0.3)
    # margins(decision="lead"): one impostor level for the query, each place's own margin
    places = [place(0, r, s) for r, s in zip(range(8), scores[:8], strict=True)]
    places += [place(2, 45, 0.46), place(3, 65, 0.45)]
    expected = [s - 0.46 + 0.25 * (s - 0.45) for s in scores[:8]]  # track 0: its rival is track 2
    expected += [0.46 - 0.9 + 0.25 * 0.01, 0.45 - 0.9]
    np.testing.assert_allclose(margins(db, places, 4, decision="lead", weight=0.25), expected, atol=1e-12)
    expected = [s - 0.46 + (s - 0.45) for s in scores[:8]] + [0.46 - 0.9 + 0.01, 0.45 - 0.9]
    np.testing.assert_allclose(margins(db, places, 4, decision="lead"), expected, atol=1e-12)
    np.testing.assert_allclose(margins(db, places[:9], 4, decision="lead"), margins(db, places[:9], 4))


def test_identifier_confidence_is_the_lead_over_other_tracks(db):
    identifier = Identifier(None, db=db, embedder=Embedder(), min_score=None, speeds=None, phases=1, decision="margin")
    rng = np.random.default_rng(5)
    emb = np.asarray(db.embeddings)
    query = unit(emb[43:49] + 0.3 * rng.standard_normal((6, D)))  # track 2, rows 3-8
    found = identifier.rank([(0.0, query)], n_results=50, min_score=None, track_best=(best := {}))
    # reference: every window of every track scored by brute force
    windows = {(t, r): float(np.mean(np.sum(query * emb[20 * t + r : 20 * t + r + 6], axis=1)))
               for t in range(5) for r in range(15)}
    top = max(windows, key=windows.get)
    assert top == (2, 3) and found[0].score == pytest.approx(windows[top], abs=1e-5)
    for track, (score, _start) in best.items():  # the best window of each candidate track
        assert score <= max(v for (t, _), v in windows.items() if t == track) + 1e-5
    matches = identifier.rank_query(fixed_query(identifier, query), n_results=3)
    rival = max(best[t][0] for t in best if t != 2)
    assert matches[0].track_id == 2
    assert matches[0].confidence == pytest.approx(matches[0].score - rival, abs=1e-9)
    assert matches[0].confidence > 0.2  # well clear of every other track
    # a threshold on the confidence: the decision keeps or drops the answer
    assert identifier.rank_query(fixed_query(identifier, query), n_results=3, min_score=matches[0].confidence + 1e-6) == []
    kept = identifier.rank_query(fixed_query(identifier, query), n_results=3, min_score=matches[0].confidence - 1e-6)
    assert [m.track_id for m in kept] == [2]


def test_decision_setting_is_checked(db):
    with pytest.raises(ValueError, match="decision"):
        Identifier(None, db=db, embedder=Embedder(), min_score=None, decision="vote")
    assert Identifier(None, db=db, embedder=Embedder(), min_score=0.5).decision == "score"  # a raw threshold
    assert Identifier(None, db=db, embedder=Embedder(), min_score=None).decision == "lead"


def test_lead_weight_is_the_calibrations(db):
    """The impostor lead is weighted as the thresholds were fitted: a calibration records its
    weight; one from an older nnfp, without it, was fitted with the legacy weight."""
    from nnfp.catalogue.calibration import Calibration

    def identifier(info):
        calibration = Calibration([1.0], [0.5], info={"decision": "lead", **info})
        return Identifier(None, db=db, embedder=Embedder(), calibration=calibration, speeds=None, phases=1)

    legacy, fitted = identifier({}), identifier({"lead_weight": 0.6})
    assert (legacy.decision, legacy.lead_weight, fitted.lead_weight) == ("lead", LEGACY_LEAD_WEIGHT, 0.6)
    unfitted = Identifier(None, db=db, embedder=Embedder(), min_score=None, speeds=None, phases=1)
    assert unfitted.lead_weight == LEAD_WEIGHT  # what a calibration run computes, and records
    rng = np.random.default_rng(8)
    query = unit(np.asarray(db.embeddings)[23:29] + 0.3 * rng.standard_normal((6, D)))  # track 1
    a, b = (ident.rank_query(fixed_query(ident, query), n_results=IMPOSTOR_PLACES) for ident in (legacy, fitted))
    impostor = impostor_score([m.score for m in a])
    assert impostor is not None and len(a) == IMPOSTOR_PLACES
    assert [(m.track_id, m.segment_index) for m in a] == [(m.track_id, m.segment_index) for m in b]
    # the same places; confidences differ by exactly the change of weight x the lead over the impostor level
    np.testing.assert_allclose([y.confidence - x.confidence for x, y in zip(a, b, strict=True)],
                               [(0.6 - 0.25) * (m.score - impostor) for m in a], atol=1e-9)


def test_calibration_range_follows_the_decision():
    from nnfp.catalogue.calibration import Calibration, confidence_bound

    assert confidence_bound({}) == (1.0, "cosine scores")
    assert confidence_bound({"decision": "margin"})[0] == 2.0
    assert confidence_bound({"decision": "lead"})[0] == 2.0 + 2 * LEGACY_LEAD_WEIGHT
    assert confidence_bound({"decision": "lead", "lead_weight": 1.0})[0] == 4.0
    Calibration([1.0], [1.5], info={"decision": "lead", "lead_weight": 1.0})  # a lead above 1 is possible
    for info, value in (({}, 1.5), ({"decision": "margin"}, 2.1), ({"decision": "lead"}, 2.6)):
        with pytest.raises(ValueError, match=r"`min_score` must be finite and within"):
            Calibration([1.0], [value], info=info)


def test_alignment_sharpness_against_a_reference(db):
    from nnfp.catalogue.identify import alignment_sharpness

    assert db.hop_seconds == 0.5
    emb = np.asarray(db.embeddings)
    rng = np.random.default_rng(9)
    query = unit(emb[43:49] + 0.2 * rng.standard_normal((6, D)))  # track 2, rows 3-8

    def window(r):
        return float(np.mean(np.sum(query * emb[r : r + 6], axis=1)))

    # reference: rows of track 2 1-5 s (2-10 rows) away whose 6-row window stays in the track
    away = [r for r in range(40, 55) if 2 <= abs(r - 43) <= 10]
    expected = window(43) - np.mean([window(r) for r in away])
    assert alignment_sharpness(db, query, 43, 2) == pytest.approx(expected, abs=1e-5)
    assert expected > 0.5  # random tracks: the right alignment stands alone
    # a stationary sound: the same fingerprint in every row scores alike everywhere
    flat = np.repeat(unit(emb[40:60].mean(axis=0, keepdims=True)), 6, axis=0)
    assert abs(alignment_sharpness(db, flat, 43, 2)) < 0.1
    # a window with no other in its track to compare with: NaN
    assert np.isnan(alignment_sharpness(db, unit(rng.standard_normal((20, D))), 40, 2))


def noisy_rows_of_track_2(db):
    """6 query fingerprints: rows 43-48 of `db` (track 2) with noise; their right place is sharp."""
    rng = np.random.default_rng(5)
    return unit(np.asarray(db.embeddings)[43:49] + 0.3 * rng.standard_normal((6, D)))


def margin_identifier(db, **info):
    """An `Identifier` of `db` whose calibration decides on the margin, threshold 0, with `info` added."""
    from nnfp.catalogue.calibration import Calibration

    calibration = Calibration([1.0], [0.0], info={"decision": "margin", **info})
    return Identifier(None, db=db, embedder=Embedder(), calibration=calibration, speeds=None, phases=1)


def test_the_sharpness_floor_decides_with_the_threshold(db):
    """A calibration's sharpness floor turns away an answer below it, whatever its lead; none,
    or a fixed threshold, decides on the confidence alone."""
    query = noisy_rows_of_track_2(db)

    plain = margin_identifier(db)
    best = plain.rank_query(fixed_query(plain, query), n_results=1, min_score=0.0)[0]
    sharpness = plain.sharpness(fixed_query(plain, query), best, 3.5)
    assert best.track_id == 2 and sharpness > 0.3 and plain.sharp_enough(fixed_query(plain, query), best, 3.5)
    above = margin_identifier(db, sharpness_floor=[round(sharpness + 0.01, 4)])
    below = margin_identifier(db, sharpness_floor=[round(sharpness - 0.01, 4)])
    assert above.rank_query(fixed_query(above, query), n_results=1, min_score=0.0) == []
    assert [m.track_id for m in below.rank_query(fixed_query(below, query), n_results=1, min_score=0.0)] == [2]
    # the fingerprint API too (`Identifier.search`: the fingerprints given, one phase)
    assert 2 not in [m.track_id for m in above.search(query)]
    assert [m.track_id for m in below.search(query)][:1] == [2]
    fixed = Identifier(None, db=db, embedder=Embedder(), calibration=above.calibration, min_score=0.0, speeds=None,
                       phases=1, decision="margin")
    assert fixed.sharp_enough(fixed_query(fixed, query), best, 3.5)  # a threshold given: no floor


def test_a_confident_answer_needs_no_sharpness(db):
    """With a calibration's `sharpness_yield`, an answer below the sharpness floor is still
    answered when its confidence reaches the yield (in `rank_query`, the fingerprint API and
    `clears_sharpness`), and turned away when it does not."""
    query = noisy_rows_of_track_2(db)

    plain = margin_identifier(db)
    best = plain.rank_query(fixed_query(plain, query), n_results=1, min_score=0.0)[0]
    sharpness = plain.sharpness(fixed_query(plain, query), best, 3.5)
    floor = [round(sharpness + 0.01, 4)]  # the answer is flat to this floor
    sure = margin_identifier(db, sharpness_floor=floor, sharpness_yield=[round(best.confidence - 0.01, 4)])
    unsure = margin_identifier(db, sharpness_floor=floor, sharpness_yield=[round(best.confidence + 0.01, 4)])
    assert [m.track_id for m in sure.rank_query(fixed_query(sure, query), n_results=1, min_score=0.0)] == [2]
    assert unsure.rank_query(fixed_query(unsure, query), n_results=1, min_score=0.0) == []
    assert [m.track_id for m in sure.search(query)][:1] == [2]
    assert 2 not in [m.track_id for m in unsure.search(query)]
    assert sure.clears_sharpness(sharpness, 3.5, best.confidence)
    assert not sure.clears_sharpness(sharpness, 3.5)  # no confidence given: the floor alone
    assert not unsure.clears_sharpness(sharpness, 3.5, best.confidence)
    assert sure.sharpness_yield(3.5) == pytest.approx(best.confidence - 0.01, abs=1e-4)
    assert margin_identifier(db, sharpness_floor=floor).sharpness_yield(3.5) is None  # fitted before the yield


def test_monitor_windows_meet_the_sharpness_floor(db):
    from nnfp.catalogue.identify import alignment_sharpness
    from nnfp.catalogue.monitor import _Monitor

    query = noisy_rows_of_track_2(db)

    def window_matches(floor, sure=None):
        monitor = _Monitor(db, 0.0, window=6, step=1, max_gap=20, min_windows=2, tolerance=1.0, k_probe=20,
                           seg_seconds=1.0, batch=8, decision="margin", sharpness_floor=floor, sharpness_yield=sure)
        return monitor.search(0, query, None)[1]

    plain = window_matches(None)
    assert [m.track_id for m in plain[:1]] == [2]
    sharpness = alignment_sharpness(db, query, plain[0].segment_index, 2)
    assert sharpness > 0.3
    assert 2 not in [m.track_id for m in window_matches(sharpness + 0.01)]
    assert [m.track_id for m in window_matches(sharpness - 0.01)][:1] == [2]
    # a window whose confidence reaches the yield needs no sharpness; one below it still does
    confidence = plain[0].confidence
    assert confidence is not None and confidence > 0.3
    assert [m.track_id for m in window_matches(sharpness + 0.01, confidence - 0.01)][:1] == [2]
    assert 2 not in [m.track_id for m in window_matches(sharpness + 0.01, confidence + 0.01)]


def test_segment_votes_against_a_brute_force_reference(db):
    """Each segment votes when its aligned row beats every row outside the alignment (rows one
    hop either side in the same track) and outside the same audio under another name; the
    alignment is the best of the rows around the one given."""
    from nnfp.catalogue.identify import segment_votes

    emb = np.asarray(db.embeddings)
    tracks = np.asarray(db.segment_track)
    rng = np.random.default_rng(11)

    def reference(query, first, track):
        votes = []
        for i, q in enumerate(query):
            a = first + i
            own = (np.abs(np.arange(len(emb)) - a) <= 1) & (tracks == track)
            same = emb @ emb[a] >= 0.9
            votes.append(float(q @ emb[a]) >= float(np.max((emb @ q)[~own & ~same])) - 1e-6)
        return float(np.mean(votes))

    query = unit(emb[43:49] + 0.1 * rng.standard_normal((6, D)))  # track 2, rows 3-8
    query[3:] = unit(emb[66:69] + 0.1 * rng.standard_normal((3, D)))  # its last 3 segments sound like track 3
    expected = reference(query, 43, 2)
    assert expected == pytest.approx(0.5)
    assert segment_votes(db, query, 43, 2) == pytest.approx(expected)
    assert segment_votes(db, query, 44, 2) == pytest.approx(expected)  # a row off: the best alignment is found
    # track 1 is also stored as track 4: its copy's rows are no rivals, every segment votes
    copy = unit(emb[22:28] + 0.2 * rng.standard_normal((6, D)))
    assert reference(copy, 22, 1) == segment_votes(db, copy, 22, 1) == 1.0
    # random segments resemble other rows more than any chosen alignment
    noise = unit(rng.standard_normal((6, D)))
    votes = segment_votes(db, noise, 63, 3)
    assert votes == pytest.approx(reference(noise, 63, 3)) and votes < 0.5
    assert np.isnan(segment_votes(db, noise, 78, 3))  # no 6-row window of track 3 around row 78


def test_a_calibration_with_a_vote_weight_adds_the_votes_to_every_confidence(db):
    """`vote_weight` x `segment_votes` is added to the confidence of each place, in `rank_query`
    and in the fingerprint API; a calibration without it (fitted before votes) counts none."""
    from nnfp.catalogue.calibration import confidence_bound
    from nnfp.catalogue.identify import segment_votes

    query = split_query(db)  # 4 of 6 segments point at track 2
    plain, voting = lead_identifier(db), lead_identifier(db, vote_weight=0.5)
    assert plain.vote_weight == 0.0 and voting.vote_weight == 0.5
    before = plain.rank_query(fixed_query(plain, query), n_results=3, min_score=-3.0)
    after = voting.rank_query(fixed_query(voting, query), n_results=3, min_score=-3.0)
    assert [m.track_id for m in before] == [m.track_id for m in after] and before[0].track_id == 2
    for b, a in zip(before, after, strict=True):
        votes = segment_votes(db, query, b.segment_index, b.track_id)
        assert a.confidence - b.confidence == pytest.approx(0.5 * np.nan_to_num(votes), abs=1e-6)
    assert segment_votes(db, query, before[0].segment_index, 2) == pytest.approx(4 / 6)
    # a threshold keeps the very places it keeps of the full ranking (votes are counted where they can decide)
    for threshold in (after[0].confidence - 1e-3, after[0].confidence + 1e-3, after[1].confidence - 1e-3):
        kept = voting.rank_query(fixed_query(voting, query), n_results=3, min_score=threshold)
        assert kept == [m for m in after if m.confidence >= threshold]
    # the fingerprint API decides alike
    found, plain_found = voting.search(query, n_results=1)[0], plain.search(query, n_results=1)[0]
    assert found.track_id == plain_found.track_id == 2
    assert found.confidence - plain_found.confidence == pytest.approx(0.5 * 4 / 6, abs=1e-6)
    everything = voting.search(query, n_results=3)
    for threshold in (found.confidence - 1e-3, found.confidence + 1e-3, everything[1].confidence - 1e-3):
        strict = lead_identifier(db, threshold, vote_weight=0.5)
        assert strict.search(query, n_results=3) == [m for m in everything if m.confidence >= threshold]
    # a threshold's magnitude may grow by the weight
    assert confidence_bound({"decision": "lead", "lead_weight": 1.0, "vote_weight": 0.5})[0] == 4.5


def test_monitor_windows_count_the_votes_of_their_segments(db):
    """A window's confidence adds `vote_weight` x its segment votes, as `Identifier.search`."""
    from nnfp.catalogue.identify import segment_votes
    from nnfp.catalogue.monitor import _Monitor

    query = split_query(db)
    identifier = lead_identifier(db, vote_weight=0.5)
    best = identifier.search(query, n_results=1)[0]
    votes = segment_votes(db, query, best.segment_index, 2)
    assert best.track_id == 2 and votes == pytest.approx(4 / 6)

    def window_tracks(threshold, vote_weight):
        monitor = _Monitor(db, threshold, window=6, step=1, max_gap=20, min_windows=2, tolerance=1.0, k_probe=20,
                           seg_seconds=1.0, batch=8, decision="lead", lead_weight=1.0, vote_weight=vote_weight)
        return [m.track_id for m in monitor.search(0, query, None)[1]]

    just_above = best.confidence - 0.01  # reached with the votes only
    assert window_tracks(just_above, 0.5)[:1] == [2]
    assert 2 not in window_tracks(just_above, 0.0)
    assert 2 not in window_tracks(best.confidence + 0.01, 0.5)


def test_aligned_similarities_against_a_reference(db):
    from nnfp.catalogue.identify import aligned_similarities

    emb = np.asarray(db.embeddings)
    rng = np.random.default_rng(4)
    query = unit(emb[43:49] + 0.2 * rng.standard_normal((6, D)))
    for row in (42, 43, 44):  # the best of the rows around the one given: 43
        first, similarities = aligned_similarities(db, query, row, 2)
        assert first == 43
        np.testing.assert_allclose(similarities, np.sum(query * emb[43:49], axis=1), atol=1e-6)
    assert aligned_similarities(db, query, 78, 3) == (None, None)  # no 6-row window of track 3 there


def test_votes_and_similarities_are_the_separate_ones_from_one_alignment(db):
    """`Identifier.votes_and_similarities` (what `evaluate` keeps) equals `Identifier.votes` and
    `aligned_similarities` computed apart, for a match that fits and one that does not."""
    from nnfp.catalogue.identify import aligned_similarities

    query = split_query(db)
    identifier = lead_identifier(db, vote_weight=0.5)
    searched = fixed_query(identifier, query)
    seconds = searched.seconds
    matches = identifier.rank_query(searched, n_results=3, min_score=-3.0)
    assert matches
    for match in matches:
        votes, similarities = identifier.votes_and_similarities(searched, match, seconds)
        assert votes == pytest.approx(identifier.votes(searched, match, seconds), abs=1e-9)
        _, reference = aligned_similarities(db, query, match.segment_index, match.track_id)
        np.testing.assert_allclose(similarities, reference, atol=1e-7)
    assert identifier.votes_and_similarities(searched, matches[0], seconds)[0] == pytest.approx(4 / 6)
    far = dataclasses.replace(matches[0], segment_index=78, track_id=3)  # no 6-row window of track 3 there
    votes, similarities = identifier.votes_and_similarities(searched, far, seconds)
    assert votes == 0.0 and similarities.shape == (0,)
