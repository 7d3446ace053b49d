"""`nnfp.store.rows`: stored fingerprints are unit vectors or zero (dead air), and the rows given
to a store are checked before anything is written."""

import numpy as np
import pytest

import nnfp.store.rows
from nnfp.store.integrity import CorruptIndexError
from nnfp.store.rows import bad_norms, check_segments, check_store, count_zero_rows


def _rows(n, d=4, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_bad_norms_allow_float32_rounding_and_dead_air_only():
    rows = _rows(6)
    rows[1] *= 1 + 5e-4  # within the tolerance of 1e-3
    rows[2] *= 1 + 2e-3
    rows[3] = 0.0  # dead air
    rows[4] = np.nan
    rows[5] *= 0.5
    bad, norms = bad_norms(rows)
    assert bad.tolist() == [2, 4, 5]
    np.testing.assert_allclose(norms[[0, 1, 2, 3, 5]], [1.0, 1.0005, 1.002, 0.0, 0.5], rtol=1e-6)


def test_zero_rows_are_counted_across_chunks_and_other_rows_must_be_unit(monkeypatch):
    monkeypatch.setattr(nnfp.store.rows, "ADD_CHUNK_ROWS", 4)
    rows = _rows(11)
    rows[[0, 5, 6, 10]] = 0.0
    assert count_zero_rows(rows) == 4
    rows[6] = rows[7] * 3.0
    rows[7] *= 3.0
    # The first bad row of the chunk (rows 4-7) is named by its row in the whole store.
    with pytest.raises(ValueError, match=r"`embeddings`: row 6 has norm 3 \(2 such rows in rows 4-7\)"):
        count_zero_rows(rows)
    with pytest.raises(CorruptIndexError, match=r"^store\.npy: damaged: row 6 has norm 3 .*rebuild the index"):
        count_zero_rows(rows, where="store.npy")


def test_check_store_compares_zero_rows_with_the_record(tmp_path):
    rows = _rows(5)
    rows[2] = 0.0
    check_store(rows, {"zero_rows": 1}, tmp_path)
    check_store(rows, {}, tmp_path)  # an older folder records no count
    with pytest.raises(CorruptIndexError, match=r"embeddings\.npy: damaged: 1 zero fingerprints, 2 dead-air rows"):
        check_store(rows, {"zero_rows": 2}, tmp_path)


def _tracks(*ids):
    return [{"track_id": i, "path": f"{i}.wav", "duration_s": 2.0} for i in ids]


def test_check_segments_normalises_types_and_keeps_the_track_flags():
    tracks = _tracks(3, 8)
    tracks[0].update(pcm_sha256="ab", removed=True, extra="dropped")
    embeddings, segment_track, segment_start, clean = check_segments(
        _rows(5).astype(np.float64), [3, 3, 8, 8, 8], [0, 0.5, 0, 0.5, 1.0], tracks
    )
    assert (embeddings.dtype, segment_track.dtype, segment_start.dtype) == (np.float32, np.int32, np.float32)
    assert embeddings.flags.c_contiguous
    assert clean == [
        {"track_id": 3, "path": "3.wav", "duration_s": 2.0, "pcm_sha256": "ab", "removed": True},
        {"track_id": 8, "path": "8.wav", "duration_s": 2.0},
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"embeddings": np.zeros((0, 4), np.float32)}, r"non-empty 2-D array .*shape=\(0, 4\)"),
        ({"d": 5}, r"d=5 columns like the database\. Received: embeddings.shape=\(4, 4\)"),
        ({"segment_track": [1, 1, 2]}, r"shape \(4,\), one entry per embedding"),
        ({"segment_track": [1.0, 1.0, 2.0, 2.0]}, "must hold integer track ids"),
        ({"tracks": [{"track_id": 1, "path": "1.wav"}, *_tracks(2)]}, r"missing \['duration_s'\]"),
        ({"tracks": _tracks(1, 2, 1)}, r"unique\. Received: track_ids=\[1, 2, 1\]"),
        ({"segment_track": [1, 1, 2, 5]}, r"absent from `tracks`\. Received: unknown ids=\[5\]"),
        ({"segment_track": [1, 2, 1, 2]}, "contiguous rows, in time order. Received: 4 runs for 2 tracks"),
    ],
)
def test_check_segments_errors(change, message):
    given = {"embeddings": _rows(4), "segment_track": [1, 1, 2, 2], "segment_start": [0, 0.5, 0, 0.5],
             "tracks": _tracks(1, 2), "d": None}
    given.update(change)
    with pytest.raises(ValueError, match=message):
        check_segments(**given)
