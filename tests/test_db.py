"""`nnfp.store.db`: `FingerprintDB` build, search against NumPy references, save/load, add,
and long queries scored in tiles."""

import os
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import nnfp.outputs
import nnfp.store.scoring
from nnfp.store.db import FingerprintDB, Match

D = 64


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_tracks(rng, n_tracks=30, d=D, first_id=0, min_len=40, max_len=120, step=0.5):
    """Random-walk tracks: neighbouring segments are correlated (cosine ~0.88) like audio."""
    embeddings, segment_track, segment_start, tracks = [], [], [], []
    for track_id in range(first_id, first_id + n_tracks):
        n_segments = int(rng.integers(min_len, max_len + 1))
        x = rng.standard_normal(d)
        rows = []
        for _ in range(n_segments):
            x = x / np.linalg.norm(x) + step * rng.standard_normal(d) / np.sqrt(d)
            rows.append(x)
        embeddings.append(unit(np.array(rows)))
        segment_track += [track_id] * n_segments
        segment_start.append(0.5 * np.arange(n_segments))
        tracks.append(
            {
                "track_id": track_id,
                "path": f"a/{track_id}.wav",
                "duration_s": 0.5 * n_segments + 0.5,
            }
        )
    return (
        np.concatenate(embeddings),
        np.array(segment_track),
        np.concatenate(segment_start),
        tracks,
    )


def noisy(x, rng, noise):
    return unit(x + noise * rng.standard_normal(x.shape) / np.sqrt(x.shape[-1]))


def sample_queries(rng, segment_track, n_queries, db_embeddings, noise=1.0, lengths=(3, 11)):
    """Noisy copies of n consecutive segments of one track, at random rows."""
    queries = []
    while len(queries) < n_queries:
        n = int(rng.integers(*lengths))
        row = int(rng.integers(0, len(segment_track) - n))
        if segment_track[row] == segment_track[row + n - 1]:
            queries.append((row, noisy(db_embeddings[row : row + n], rng, noise)))
    return queries


@pytest.fixture(scope="module")
def data():
    return make_tracks(np.random.default_rng(0))


@pytest.fixture(scope="module")
def flat_db(data):
    return FingerprintDB.build(*data, index_type="flat", threads=1)


# --------------------------------------------------------------- references


def naive_sequence_score(db_embeddings, query, start):
    """eval_faiss.py: mean of diag(q @ db[start:start+n].T)."""
    window = np.asarray(db_embeddings[start : start + len(query)], dtype=np.float64)
    return np.mean(np.diag(query.astype(np.float64) @ window.T))


# ------------------------------------------------------------------- search


@pytest.mark.parametrize(
    "index_type, min_rate",
    [("flat", 0.95), ("ivf", 0.90), ("ivfpq", 0.90), ("hnsw", 0.90)],
)
def test_search_finds_track_and_offset(data, index_type, min_rate):
    embeddings, segment_track, segment_start, tracks = data
    db = FingerprintDB.build(*data, index_type=index_type, threads=1)
    rng = np.random.default_rng(5)
    queries = sample_queries(rng, segment_track, 150, embeddings, noise=1.2)
    hits = 0
    for row, query in queries:
        best = db.search(query)[0]
        hits += (
            best.track_id == segment_track[row]
            and best.offset_s == segment_start[row]
            and best.path == f"a/{segment_track[row]}.wav"
        )
    assert hits / len(queries) >= min_rate


def test_search_scores_match_naive_reference(data, flat_db):
    embeddings, segment_track, _, _ = data
    rng = np.random.default_rng(6)
    for _, query in sample_queries(rng, segment_track, 20, embeddings):
        matches = flat_db.search(query, k_probe=20, n_results=50)
        assert all(isinstance(m, Match) for m in matches)
        scores = [m.score for m in matches]
        assert scores == sorted(scores, reverse=True)
        assert len({(m.track_id, m.offset_s) for m in matches}) == len(matches)
        for match in matches:
            expected = naive_sequence_score(embeddings, query, match.segment_index)
            assert match.score == pytest.approx(expected, abs=1e-6)
            # Windows never run into the next track.
            window = segment_track[match.segment_index : match.segment_index + len(query)]
            assert len(window) == len(query) and np.all(window == match.track_id)

        # Candidate starts follow eval_faiss.py: every offset-compensated top-k hit.
        _, hits = flat_db.index.search(query, 20)
        expected_starts = {
            int(hit - i) for i in range(len(query)) for hit in hits[i] if hit - i >= 0
        }
        expected_starts = {
            s
            for s in expected_starts
            if s + len(query) <= len(segment_track)
            and segment_track[s + len(query) - 1] == segment_track[s]
        }
        assert set(flat_db.candidate_starts(query, k_probe=20).tolist()) == expected_starts


def test_search_min_score_and_random_queries(data, flat_db):
    embeddings, segment_track, _, _ = data
    rng = np.random.default_rng(7)
    row, query = sample_queries(rng, segment_track, 1, embeddings, noise=0.3)[0]
    true_score = flat_db.search(query)[0].score
    assert true_score > 0.8
    matches = flat_db.search(query, min_score=0.5)
    assert matches[0].segment_index == row
    assert all(m.score >= 0.5 for m in matches)
    for _ in range(10):
        random_query = unit(rng.standard_normal((8, D)))
        assert flat_db.search(random_query, min_score=0.5) == []
        assert len(flat_db.search(random_query, n_results=3)) == 3


def test_query_longer_than_any_track():
    rng = np.random.default_rng(8)
    data = make_tracks(rng, n_tracks=4, min_len=6, max_len=10)
    embeddings, segment_track, _, _ = data
    db = FingerprintDB.build(*data, index_type="flat", threads=1)
    first = np.flatnonzero(segment_track == 2)
    query = noisy(embeddings[first[0] : first[0] + 20], rng, 0.3)  # runs into track 3
    best = db.search(query)[0]
    assert best.track_id == 2 and best.offset_s == 0.0
    # Positions past the end of the track count as 0 in the mean.
    overlap = len(first)
    expected = np.sum(query[:overlap].astype(np.float64) * embeddings[first]) / len(query)
    assert best.score == pytest.approx(expected, abs=1e-6)


def test_single_segment_query(data, flat_db):
    embeddings, segment_track, segment_start, _ = data
    best = flat_db.search(embeddings[100])[0]  # a (d,) vector is a 1-segment query
    assert best.segment_index == 100 and best.score == pytest.approx(1.0, abs=1e-6)


def test_build_and_search_errors(data, flat_db):
    embeddings, segment_track, segment_start, tracks = data
    with pytest.raises(ValueError, match="index_type='foo'"):
        FingerprintDB.build(*data, index_type="foo")
    with pytest.raises(ValueError, match="m must divide|`m` must divide"):
        FingerprintDB.build(*data, index_type="ivfpq", m=7)
    with pytest.raises(ValueError, match="nlist"):
        FingerprintDB.build(*data, index_type="ivf", nlist=len(embeddings) + 1)
    with pytest.raises(ValueError, match="Too few segments"):
        FingerprintDB.build(
            embeddings[:100], segment_track[:100], segment_start[:100], tracks, index_type="ivfpq"
        )
    with pytest.raises(ValueError, match="segment_track"):
        FingerprintDB.build(embeddings, segment_track[:-1], segment_start, tracks)
    with pytest.raises(ValueError, match="absent from `tracks`"):
        FingerprintDB.build(embeddings, segment_track, segment_start, tracks[:-1])
    interleaved = np.arange(len(segment_track)) % 2  # tracks 0 and 1 alternate
    with pytest.raises(ValueError, match="contiguous"):
        FingerprintDB.build(embeddings, interleaved, segment_start, tracks)
    with pytest.raises(ValueError, match=r"shape \(n_segments, 64\)"):
        flat_db.search(np.zeros((3, 32), np.float32))
    # Small DB: the default nlist is lowered to have >= 39 training points per list.
    small = FingerprintDB.build(
        embeddings[:300], segment_track[:300], segment_start[:300], tracks, index_type="ivf"
    )
    assert small.index_params["nlist"] == 300 // 39


# ---------------------------------------------------------------- save/load


@pytest.mark.parametrize("index_type", ["flat", "ivfpq", "hnsw"])
def test_save_load_round_trip(tmp_path, data, index_type):
    embeddings, segment_track, _, _ = data
    db = FingerprintDB.build(*data, index_type=index_type, nprobe=8, threads=1)
    target = tmp_path / "db"
    db.save(target)
    db.save(target)  # replacing an existing DB
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]
    assert sorted(p.name for p in target.iterdir()) == [
        ".nnfp-output.json",  # marks the folder as an nnfp index (nnfp.outputs)
        "embeddings.npy",
        "index.faiss",
        "segments.npz",
        "tracks.json",
    ]

    loaded = FingerprintDB.load(target)
    assert isinstance(loaded.embeddings, np.memmap)
    np.testing.assert_array_equal(loaded.embeddings, db.embeddings)
    np.testing.assert_array_equal(loaded.segment_track, db.segment_track)
    np.testing.assert_array_equal(loaded.segment_start, db.segment_start)
    assert loaded.tracks == db.tracks
    assert loaded.index_type == index_type and loaded.index_params == db.index_params
    assert loaded.hop_seconds == 0.5
    rng = np.random.default_rng(9)
    for _, query in sample_queries(rng, segment_track, 10, embeddings):
        assert loaded.search(query) == db.search(query)
    assert not isinstance(FingerprintDB.load(target, mmap=False).embeddings, np.memmap)


def test_load_missing(tmp_path, flat_db):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FingerprintDB.load(tmp_path / "nowhere")
    flat_db.save(tmp_path / "db")
    (tmp_path / "db" / "index.faiss").unlink()
    with pytest.raises(FileNotFoundError, match="index.faiss"):
        FingerprintDB.load(tmp_path / "db")


def test_add_then_search(tmp_path, data):
    db = FingerprintDB.build(*data, index_type="ivf", threads=1)
    db.save(tmp_path / "db")
    db = FingerprintDB.load(tmp_path / "db")
    n_before = len(db)
    rng = np.random.default_rng(10)
    new_embeddings, new_track, new_start, new_tracks = make_tracks(
        rng, n_tracks=3, min_len=30, max_len=40
    )
    new_track = new_track + 100  # caller-side ids; the DB renumbers them to continue
    for track in new_tracks:
        track["track_id"] += 100
    assigned = db.add(new_embeddings, new_track, new_start, new_tracks)
    assert assigned == [30, 31, 32]
    assert [t["track_id"] for t in db.tracks[-3:]] == [30, 31, 32]
    assert len(db) == n_before + len(new_embeddings) == db.index.ntotal

    for local_row, query in sample_queries(rng, new_track, 10, new_embeddings, noise=0.5):
        best = db.search(query)[0]
        assert best.segment_index == n_before + local_row
        assert best.track_id == 30 + new_track[local_row] - 100
        assert best.path == f"a/{new_track[local_row] - 100}.wav"
        assert best.offset_s == new_start[local_row]

    db.save(tmp_path / "db")
    reloaded = FingerprintDB.load(tmp_path / "db")
    assert len(reloaded) == len(db) and reloaded.next_track_id == 33


def _saved_and_loaded(tmp_path, data, index_type):
    """`data` built as `index_type` (IVF-Flat "ivf_on_disk": lists in index.ivfdata), saved, loaded mmap=True."""
    on_disk = index_type == "ivf_on_disk"
    db = FingerprintDB.build(
        *data, index_type="ivf" if on_disk else index_type, nprobe=8, threads=1,
        on_disk_dir=tmp_path / "ivf-build" if on_disk else None,
    )
    db.save(tmp_path / "db")
    return FingerprintDB.load(tmp_path / "db")


@pytest.mark.parametrize("index_type", ["flat", "ivfpq", "ivf_on_disk"])
def test_add_with_work_dir_appends_through_a_memory_mapped_file(tmp_path, monkeypatch, data, index_type):
    monkeypatch.setattr(nnfp.store.db, "ADD_CHUNK_ROWS", 1000)  # several chunks, the last one short
    embeddings, segment_track, segment_start, tracks = data
    new = make_tracks(np.random.default_rng(11), n_tracks=3, first_id=30, min_len=30, max_len=40)
    everything = (
        np.concatenate([embeddings, new[0]]), np.concatenate([segment_track, new[1]]),
        np.concatenate([segment_start, new[2]]), tracks + new[3],
    )
    db = _saved_and_loaded(tmp_path, data, index_type)
    assert isinstance(db.embeddings, np.memmap) and len(db) > 2 * 1000
    work = tmp_path / "work"
    work.mkdir()
    (work / "theirs.npy").write_bytes(b"not ours")

    assert db.add(*new, work_dir=work) == [30, 31, 32]
    scratch = sorted(work.glob("rows-*.npy"))
    assert len(scratch) == 1 and isinstance(db.embeddings, np.memmap)
    assert Path(db.embeddings.filename) == scratch[0]  # not an in-RAM copy
    np.testing.assert_array_equal(db.embeddings, everything[0])
    assert len(db) == db.index.ntotal == len(everything[0])

    work_file = os.stat(scratch[0])
    db.save(tmp_path / "db")
    assert sorted(p.name for p in work.iterdir()) == ["theirs.npy"]  # its file gone, nothing else touched
    assert isinstance(db.embeddings, np.memmap) and Path(db.embeddings.filename) == tmp_path / "db" / "embeddings.npy"
    saved = os.stat(tmp_path / "db" / "embeddings.npy")
    assert (saved.st_ino, saved.st_dev) == (work_file.st_ino, work_file.st_dev)  # linked: not written twice
    assert saved.st_nlink == 1 and stat.S_IMODE(saved.st_mode) == 0o666 & ~nnfp.outputs._UMASK
    reloaded = FingerprintDB.load(tmp_path / "db")
    reloaded.save(tmp_path / "copy")  # a loaded store (read-only) is copied: the same bytes
    assert os.stat(tmp_path / "copy" / "embeddings.npy").st_ino != saved.st_ino
    assert (tmp_path / "copy" / "embeddings.npy").read_bytes() == (tmp_path / "db" / "embeddings.npy").read_bytes()
    np.testing.assert_array_equal(reloaded.embeddings, everything[0])
    np.testing.assert_array_equal(reloaded.segment_track, everything[1])
    np.testing.assert_array_equal(reloaded.segment_start, everything[2])
    assert reloaded.tracks == FingerprintDB.build(*everything, threads=1).tracks
    assert reloaded.index_params.get("on_disk", False) == (index_type == "ivf_on_disk")
    if index_type == "flat":
        reference = FingerprintDB.build(*everything, index_type="flat", threads=1)  # in one go
    else:  # IVF types are not retrained by `add`: today's in-RAM add of the same index
        reference = _saved_and_loaded(tmp_path / "reference", data, index_type)
        reference.add(*new)  # no work_dir: rows concatenated in RAM
        assert not isinstance(reference.embeddings, np.memmap)
    rng = np.random.default_rng(12)
    queries = sample_queries(rng, segment_track, 10, embeddings, noise=0.5)
    queries += sample_queries(rng, new[1], 10, new[0], noise=0.5)  # rows of the added tracks
    for _, query in queries:
        assert reloaded.search(query) == reference.search(query) == db.search(query)
    assert [reloaded.search(query)[0].track_id for _, query in queries[10:]] == [new[1][row] for row, _ in queries[10:]]


def test_a_save_that_fails_after_linking_the_work_rows_leaves_both_versions_whole(tmp_path, monkeypatch, data):
    db = _saved_and_loaded(tmp_path, data, "flat")
    before = {p.name: p.read_bytes() for p in (tmp_path / "db").iterdir() if p.is_file()}
    work = tmp_path / "work"
    work.mkdir()
    new = make_tracks(np.random.default_rng(15), n_tracks=2, first_id=30, min_len=30, max_len=40)
    db.add(*new, work_dir=work)
    (scratch,) = work.iterdir()

    def broken(index, path):
        raise OSError("simulated full disk")

    monkeypatch.setattr(nnfp.store.db, "write_index", broken)
    with pytest.raises(OSError, match="simulated"):
        db.save(tmp_path / "db")
    assert {p.name: p.read_bytes() for p in (tmp_path / "db").iterdir() if p.is_file()} == before
    assert list(work.iterdir()) == [scratch] and os.stat(scratch).st_nlink == 1  # the link went with the folder
    monkeypatch.undo()
    db.save(tmp_path / "db")
    assert list(work.iterdir()) == []
    reloaded = FingerprintDB.load(tmp_path / "db")
    np.testing.assert_array_equal(reloaded.embeddings, np.concatenate([data[0], new[0]]))


def test_add_with_work_dir_leaves_no_file_on_error_close_or_collection(tmp_path, monkeypatch, data):
    import gc

    work = tmp_path / "work"
    work.mkdir()
    db = _saved_and_loaded(tmp_path, data, "flat")
    new = make_tracks(np.random.default_rng(13), n_tracks=2, first_id=30, min_len=30, max_len=40)

    def broken(index):
        raise RuntimeError("simulated faiss failure")

    monkeypatch.setattr(nnfp.store.db, "invlists_on_disk", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        db.add(*new, work_dir=work)
    assert list(work.iterdir()) == [] and len(db) == len(data[0]) and isinstance(db.embeddings, np.memmap)
    monkeypatch.undo()

    db.add(*new, work_dir=work)
    first = sorted(work.iterdir())
    db.add(*make_tracks(np.random.default_rng(14), n_tracks=1, first_id=40, min_len=30, max_len=40), work_dir=work)
    assert len(list(work.iterdir())) == 1 and sorted(work.iterdir()) != first  # the earlier file went
    db.close()
    assert list(work.iterdir()) == []

    db = _saved_and_loaded(tmp_path / "again", data, "flat")
    db.add(*new, work_dir=work)
    assert len(list(work.iterdir())) == 1
    del db
    gc.collect()
    assert list(work.iterdir()) == []

    in_ram = FingerprintDB.build(*data, index_type="flat", threads=1)
    in_ram.add(*new, work_dir=work)  # rows in RAM: concatenated, no file
    assert list(work.iterdir()) == [] and not isinstance(in_ram.embeddings, np.memmap)


def test_candidate_starts_batch_equals_one_search_per_query(data, flat_db):
    # One faiss search of every phase's segments (BLAS path) finds the same start rows
    # as a search per phase, and each start is a row where some hit's sequence begins.
    rng = np.random.default_rng(7)
    queries = [q for _, q in sample_queries(rng, data[1], 6, data[0], noise=0.8)]
    batched = flat_db.candidate_starts_batch(queries, k_probe=5)
    assert len(batched) == len(queries)
    for query, starts in zip(queries, batched, strict=True):
        np.testing.assert_array_equal(starts, flat_db.candidate_starts(query, k_probe=5))
        scores = query @ data[0].T  # (n, n_segments) exact inner products
        top = np.argsort(-scores, axis=1)[:, :5] - np.arange(len(query))[:, None]
        assert set(starts.tolist()) <= set(top[top >= 0].tolist())


def test_starts_from_stored_neighbours_equal_a_search(data, flat_db):
    # `nnfp monitor` looks each segment up once and builds every window's candidates
    # from the stored rows: the same starts, scores and matches as searching the window.
    rng = np.random.default_rng(8)
    stream = np.concatenate([q for _, q in sample_queries(rng, data[1], 3, data[0], noise=0.5)])
    hits = flat_db.neighbours(stream, k_probe=5)
    assert hits.shape == (len(stream), 5)
    for first in range(0, len(stream) - 4):
        window = stream[first : first + 4]
        starts = flat_db.starts_from_hits(hits[first : first + 4])
        np.testing.assert_array_equal(starts, flat_db.candidate_starts(window, k_probe=5))
        stored = flat_db.search(window, hits=hits[first : first + 4], n_results=3)
        assert stored == flat_db.search(window, k_probe=5, n_results=3)


# ----------------------------------------------------------------------------- long queries


def _dense_sequence_scores(db, query, starts):
    """The former one-shot formula: an (n_query, n_candidates, d) array."""
    rows = starts[:, None] + np.arange(len(query))
    valid = rows <= db._track_end[starts][:, None]
    rows = np.minimum(rows, db.n_segments - 1)
    windows = np.asarray(db.embeddings, np.float32)[rows.T]
    sims = np.matmul(windows, query[:, :, None])[:, :, 0].T
    return np.where(valid, sims, 0.0).sum(axis=1, dtype=np.float64) / len(query)


def _random_db(rng, lengths, d):
    from nnfp.store.db import FingerprintDB

    embeddings = rng.standard_normal((sum(lengths), d)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    segment_track = np.repeat(np.arange(len(lengths)), lengths)
    segment_start = np.concatenate([0.5 * np.arange(n) for n in lengths])
    tracks = [{"track_id": i, "path": f"{i}.wav", "duration_s": 0.5 * n} for i, n in enumerate(lengths)]
    return FingerprintDB.build(embeddings, segment_track, segment_start, tracks, index_type="flat", threads=1)


@pytest.mark.parametrize("tile_pairs, tile_rows", [(7, 3), (1000, 64), (65_536, 64)])
def test_tiled_sequence_scores_equal_the_dense_formula(monkeypatch, tile_pairs, tile_rows):
    monkeypatch.setattr(nnfp.store.scoring, "_SCORE_TILE_PAIRS", tile_pairs)
    monkeypatch.setattr(nnfp.store.scoring, "_SCORE_TILE_QUERY_ROWS", tile_rows)
    rng = np.random.default_rng(3)
    db = _random_db(rng, [40, 7, 90, 25], d=24)  # queries longer than some tracks
    for n_query in (1, 5, 30, 120):
        query = rng.standard_normal((n_query, 24)).astype(np.float32)
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        starts = np.sort(rng.choice(db.n_segments, size=60, replace=False)).astype(np.int64)
        # Sums are float64 in both; float32 dot products may round differently per tile shape.
        np.testing.assert_allclose(
            db.sequence_scores(query, starts), _dense_sequence_scores(db, query, starts), rtol=1e-6, atol=1e-7
        )


def test_long_query_scoring_memory_does_not_grow_with_query_times_candidates():
    rng = np.random.default_rng(4)
    d, n_query, n_candidates = 64, 1200, 1500
    db = _random_db(rng, [2000, 1500], d=d)
    query = rng.standard_normal((n_query, d)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    starts = np.arange(0, 3000, 2, dtype=np.int64)[:n_candidates]
    dense_bytes = n_query * n_candidates * d * 4  # 460 MB for the one-shot formula
    tracemalloc.start()
    try:
        scores = db.sequence_scores(query, starts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 60e6 < dense_bytes / 7, f"peak {peak / 1e6:.0f} MB"
    check = starts[::100]
    np.testing.assert_allclose(scores[::100], _dense_sequence_scores(db, query, check), rtol=1e-6, atol=1e-7)
