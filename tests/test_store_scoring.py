"""`nnfp.store.scoring`: candidate windows and sequence scores of `FingerprintDB`, on hand-made
stores, against loops in NumPy."""

import numpy as np
import pytest

from nnfp.store.db import FingerprintDB
from nnfp.store.integrity import CorruptIndexError


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _db(lengths, d=8, seed=0):
    """Random unit rows, tracks 0, 1, ... of `lengths` rows on a 0.5 s hop."""
    rng = np.random.default_rng(seed)
    embeddings = _unit(rng.standard_normal((sum(lengths), d)))
    segment_track = np.repeat(np.arange(len(lengths)), lengths)
    segment_start = np.concatenate([0.5 * np.arange(n) for n in lengths])
    tracks = [{"track_id": i, "path": f"{i}.wav", "duration_s": 0.5 * n} for i, n in enumerate(lengths)]
    return FingerprintDB.build(embeddings, segment_track, segment_start, tracks, index_type="flat", threads=1)


def _track_bounds(lengths):
    """First and last row of the track of every row, by counting."""
    begin, end = [], []
    first = 0
    for n in lengths:
        begin += [first] * n
        end += [first + n - 1] * n
        first += n
    return np.array(begin), np.array(end)


def _noisy_copy(db, first, n, seed=1, noise=0.3):
    rng = np.random.default_rng(seed)
    rows = np.asarray(db.embeddings[first : first + n])
    return _unit(rows + noise * rng.standard_normal(rows.shape) / np.sqrt(rows.shape[1]))


def test_candidate_starts_are_the_offset_compensated_brute_force_neighbours():
    lengths = [12, 3, 20, 9]
    db = _db(lengths)
    begin, end = _track_bounds(lengths)
    embeddings = np.asarray(db.embeddings, np.float64)
    for first, n, k in [(2, 5, 3), (15, 4, 1), (30, 6, 5), (0, 13, 2)]:
        query = _noisy_copy(db, first, n, seed=first)
        expected = set()
        for i, q in enumerate(query):
            for row in np.argsort(-(embeddings @ q))[:k]:
                start = int(row) - i
                # fits in its track, or the track is shorter than the query (scored on the overlap)
                if start >= 0 and (start + n - 1 <= end[start] or end[start] - begin[start] + 1 < n):
                    expected.add(start)
        np.testing.assert_array_equal(db.candidate_starts(query, k_probe=k), sorted(expected))


def test_exact_query_has_its_own_window_as_a_candidate_and_scores_one():
    db = _db([10, 10])
    query = np.asarray(db.embeddings[13:17])
    starts = db.candidate_starts(query, k_probe=1)
    np.testing.assert_array_equal(starts, [13])
    np.testing.assert_allclose(db.sequence_scores(query, starts), [1.0], atol=1e-6)


def test_sequence_scores_are_window_means_with_rows_past_the_track_counting_zero():
    lengths = [6, 2, 9]
    db = _db(lengths, d=5, seed=3)
    _, end = _track_bounds(lengths)
    query = _unit(np.random.default_rng(4).standard_normal((4, 5)))
    starts = np.array([0, 2, 5, 6, 7, 8, 13])  # 5, 6, 7 and 13 run past their track
    expected = []
    for start in starts:
        total = 0.0
        for i, q in enumerate(query):
            if start + i <= end[start]:
                total += float(np.dot(q.astype(np.float64), np.asarray(db.embeddings[start + i], np.float64)))
        expected.append(total / len(query))
    np.testing.assert_allclose(db.sequence_scores(query, starts), expected, rtol=1e-6, atol=1e-7)
    assert db.sequence_scores(query, np.array([], np.int64)).shape == (0,)


def test_interpolated_scores_are_means_over_normalised_mixtures_of_neighbouring_rows():
    db = _db([15, 12], d=6, seed=5)
    query = _noisy_copy(db, 3, 4)
    starts = np.array([0, 3, 7, 15, 19])
    embeddings = np.asarray(db.embeddings, np.float64)
    for fraction in (0.25, 0.5, 0.8):
        expected = []
        for start in starts:
            sims = []
            for i, q in enumerate(query):
                mixed = (1 - fraction) * embeddings[start + i] + fraction * embeddings[start + i + 1]
                sims.append(np.dot(mixed / np.linalg.norm(mixed), q))
            expected.append(np.mean(sims))
        np.testing.assert_allclose(db.interpolated_scores(query, starts, fraction), expected, rtol=1e-5, atol=1e-6)
    # No fraction of a hop: the stored windows themselves.
    np.testing.assert_allclose(
        db.interpolated_scores(query, starts, 0.0), db.sequence_scores(query, starts), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(ValueError, match="needs its next row in its track"):
        db.interpolated_scores(query, np.array([11]), 0.5)  # 11 + 4 = 15: the next track's first row


def test_interpolated_and_later_starts_stay_in_their_track():
    db = _db([6, 4])  # rows 0-5 and 6-9
    # 0: no earlier row; 6: its earlier row is in track 0; 4 + 2 > 5 leaves 4 but keeps 3.
    np.testing.assert_array_equal(db.interpolated_starts([0, 6, 4], n_query=2), [0, 3, 6])
    # 1 -> 3 fits; 4 -> 6 leaves track 0; 7 -> 9 has no room for 2 rows.
    np.testing.assert_array_equal(db.later_starts([1, 4, 7], rows=2, n_query=2), [3])
    np.testing.assert_array_equal(db.later_starts([1, 2, 8], rows=-1, n_query=2), [0, 1, 7])


def test_starts_from_hits_votes_drop_misses_and_removed_tracks():
    db = _db([6, 4])
    hits = np.array([[2, 7, -1], [3, 8, 0]])  # segment 1's row 0 proposes start -1
    np.testing.assert_array_equal(db.starts_from_hits(hits), [2, 7])
    query = np.asarray(db.embeddings[6:8])  # every row is a neighbour: every window of 2 rows
    np.testing.assert_array_equal(db.candidate_starts(query, k_probe=10), [0, 1, 2, 3, 4, 6, 7, 8])
    db.remove([1])
    np.testing.assert_array_equal(db.starts_from_hits(hits), [2])
    np.testing.assert_array_equal(db.candidate_starts(query, k_probe=10), [0, 1, 2, 3, 4])


def test_neighbours_are_the_brute_force_top_k():
    db = _db([30, 25], d=8, seed=7)
    query = _noisy_copy(db, 10, 5, noise=1.0)
    expected = np.argsort(-(np.asarray(db.embeddings, np.float64) @ query.T.astype(np.float64)), axis=0)[:4].T
    np.testing.assert_array_equal(db.neighbours(query, k_probe=4), expected)
    assert db.neighbours(query, k_probe=500).shape == (5, 55)  # at most every row
    with pytest.raises(ValueError, match="k_probe=0"):
        db.neighbours(query, k_probe=0)


def test_queries_must_be_unit_rows_of_the_store_dimension():
    db = _db([5, 5], d=8)
    with pytest.raises(ValueError, match=r"must have shape \(n_segments, 8\)\. Received: shape=\(2, 7\)"):
        db.sequence_scores(np.ones((2, 7), np.float32), [0])
    bad = _unit(np.ones((3, 8)))
    bad[1] *= 2.0
    with pytest.raises(ValueError, match="row 1 with norm 2"):
        db.candidate_starts(bad)
    # A (d,) vector is one segment; a zero row (dead air) is a valid query row.
    one = np.asarray(db.embeddings[4])
    np.testing.assert_allclose(db.sequence_scores(one, [4]), [1.0], atol=1e-6)
    np.testing.assert_allclose(db.sequence_scores(np.zeros((2, 8), np.float32), [0]), [0.0])


def test_a_similarity_above_one_is_a_damaged_store():
    db = _db([5, 5], d=8)
    query = np.asarray(db.embeddings[3:5]).copy()
    db.embeddings[3] *= 1.5  # a damaged row, found at search time
    with pytest.raises(CorruptIndexError, match=r"a similarity of 1\.5.*at most 1.*row 3 has norm 1\.5"):
        db.sequence_scores(query, [3])
    db = _db([5, 5], d=8)
    query = np.asarray(db.embeddings[6:8]).copy()
    db.embeddings[7] = np.nan  # normalised mixtures hide a scale, not a NaN
    with pytest.raises(CorruptIndexError, match="a similarity of inf"):
        db.interpolated_scores(query, [6], 0.5)
