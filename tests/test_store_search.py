"""`nnfp.store.search`: scored windows ranked into distinct places (`FingerprintDB.places`,
`search`), on a hand-made store with hand-computed answers."""

import numpy as np
import pytest

from nnfp.store.db import FingerprintDB, Match


def _db():
    """Track 7 (rows 0-9) and track 9 (rows 10-19), one row every 0.5 s."""
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((20, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    segment_track = np.repeat([7, 9], 10)
    segment_start = np.tile(0.5 * np.arange(10), 2)
    tracks = [{"track_id": 7, "path": "a.wav", "duration_s": 5.0}, {"track_id": 9, "path": "b.wav", "duration_s": 5.0}]
    return FingerprintDB.build(embeddings, segment_track, segment_start, tracks, index_type="flat", threads=1)


def _answers(matches):
    return [(m.track_id, m.offset_s, round(m.score, 6), m.segment_index) for m in matches]


def test_places_are_best_first_and_one_per_second_of_a_track():
    db = _db()
    starts = [0, 1, 2, 10, 5, 11]
    scores = [0.9, 0.8, 0.95, 0.7, 0.6, 0.65]
    # Row 2 (1.0 s) first; row 0 (0.0 s) is 1.0 s away: another place; row 1 (0.5 s) is not;
    # row 10 is track 9's; row 11 (0.5 s) is within 1 s of it; row 5 (2.5 s) is another place.
    assert _answers(db.places(starts, scores)) == [
        (7, 1.0, 0.95, 2), (7, 0.0, 0.9, 0), (9, 0.0, 0.7, 10), (7, 2.5, 0.6, 5),
    ]
    assert _answers(db.places(starts, scores, n_results=2)) == [(7, 1.0, 0.95, 2), (7, 0.0, 0.9, 0)]
    # No collapse: every window, best first.
    assert [m.segment_index for m in db.places(starts, scores, n_results=10, collapse_seconds=0)] == [2, 0, 1, 10, 11, 5]
    assert [m.segment_index for m in db.places(starts, scores, collapse_seconds=3.0)] == [2, 10]


def test_places_shift_offsets_and_report_other_scores_than_they_rank_by():
    db = _db()
    starts, scores = [4, 14], [0.5, 0.6]
    shifted = db.places(starts, scores, shifts=[0.25, 0.125])
    assert [(m.track_id, m.offset_s) for m in shifted] == [(9, 1.875), (7, 1.75)]
    # Ranked by `scores`, reported and thresholded on `reported`.
    ranked = db.places(starts, scores, reported=[0.8, 0.3], min_score=0.2)
    assert _answers(ranked) == [(9, 2.0, 0.3, 14), (7, 2.0, 0.8, 4)]
    assert _answers(db.places(starts, scores, reported=[0.8, 0.3], min_score=0.5)) == [(7, 2.0, 0.8, 4)]
    assert db.places(starts, scores, min_score=0.7) == []
    # Equal scores keep the order the windows came in.
    assert [m.segment_index for m in db.places([14, 4, 0], [0.5, 0.5, 0.5])] == [14, 4, 0]


def test_a_removed_track_is_never_a_place():
    db = _db()
    db.remove([7])
    assert _answers(db.places([0, 12, 5], [0.9, 0.4, 0.8])) == [(9, 1.0, 0.4, 12)]


def test_search_finds_the_copied_window_with_score_one():
    db = _db()
    query = np.asarray(db.embeddings[13:17])
    best = db.search(query, k_probe=3, n_results=3)
    assert best[0] == Match(track_id=9, path="b.wav", offset_s=1.5, score=pytest.approx(1.0, abs=1e-6), segment_index=13)
    assert all(m.score < best[0].score for m in best[1:])
    # The same answer from neighbours looked up beforehand.
    assert db.search(query, n_results=3, hits=db.neighbours(query, k_probe=3)) == best
    with pytest.raises(ValueError, match="n_results=0"):
        db.search(query, n_results=0)
