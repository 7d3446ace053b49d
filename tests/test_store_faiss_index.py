"""`nnfp.store.faiss_index`: the index factory's settings, and IVF inverted lists built in parts,
written to disk and read back memory-mapped, searching as one index filled at once."""

import numpy as np
import pytest

import nnfp.store.faiss_index
from nnfp.store.faiss_index import (
    add_in_chunks,
    default_nlist,
    index_settings,
    invlists_on_disk,
    invlists_to_ram,
    merge_parts_on_disk,
    read_index,
    set_nprobe,
    trained_index,
    write_index,
    write_index_on_disk,
)
from nnfp.store.folder import IVF_DATA_FILE


def _rows(n, d=8, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_default_nlist_is_four_square_roots_with_39_points_per_list():
    assert default_nlist(1_000_000) == 4000
    assert default_nlist(10_000) == 256  # 400 lists, lowered to 10,000 // 39
    assert default_nlist(100) == 2
    assert default_nlist(20) == 1


def test_index_settings():
    args = {"nlist": None, "m": 4, "nbits": 8, "nprobe": 16, "hnsw_m": 32, "ef_search": 128}
    assert index_settings("flat", 1000, 8, **args) == {}
    assert index_settings("ivf", 1000, 8, **args) == {"nlist": 25, "nprobe": 16}
    assert index_settings("ivfpq", 1000, 8, **args) == {"nlist": 25, "nprobe": 16, "m": 4, "nbits": 8}
    assert index_settings("hnsw", 1000, 8, **args) == {"hnsw_m": 32, "ef_search": 128}
    for index_type, change, message in [
        ("ivf", {"nlist": 1001}, r"`nlist` must be in \[1, n_segments=1000\]\. Received: nlist=1001"),
        ("ivf", {"nprobe": 0}, "nprobe=0"),
        ("ivfpq", {"m": 3}, "`m` must divide d=8. Received: m=3"),
        ("ivfpq", {"nbits": 17}, r"`nbits` must be in \[1, 16\]"),
        ("ivfpq", {"nbits": 10}, "it needs at least 1024. Received: n_segments=1000"),
        ("hnsw", {"hnsw_m": 1}, "Received: hnsw_m=1, ef_search=128"),
    ]:
        with pytest.raises(ValueError, match=message):
            index_settings(index_type, 1000, 8, **{**args, **change})


def _top(index, query, k):
    return index.search(query, k)[1]


def test_flat_index_added_in_chunks_finds_the_brute_force_neighbours(monkeypatch):
    monkeypatch.setattr(nnfp.store.faiss_index, "ADD_CHUNK_ROWS", 7)
    rows, query = _rows(50), _rows(5, seed=1)
    index = trained_index(rows, "flat", {}, None)
    add_in_chunks(index, rows)
    assert index.ntotal == 50
    np.testing.assert_array_equal(_top(index, query, 3), np.argsort(-(query @ rows.T), axis=1)[:, :3])


def test_ivf_parts_merged_on_disk_search_as_one_index(tmp_path, monkeypatch):
    monkeypatch.setattr(nnfp.store.faiss_index, "ADD_CHUNK_ROWS", 16)
    rows, query = _rows(300), _rows(6, seed=2)
    params = {"nlist": 4, "nprobe": 2}
    whole = trained_index(rows, "ivf", params, None)
    with pytest.raises(ValueError, match=r"add up to the 300 rows.*sum\(part_rows\)=299"):
        merge_parts_on_disk(whole, rows, [299], tmp_path / "short")
    merged = merge_parts_on_disk(whole, rows, [120, 0, 180], tmp_path / "work")  # `whole` stays empty
    assert whole.ntotal == 0
    add_in_chunks(whole, rows)
    set_nprobe(whole, 2)
    set_nprobe(merged, 2)
    assert invlists_on_disk(merged) and not invlists_on_disk(whole)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [IVF_DATA_FILE]  # parts removed
    np.testing.assert_array_equal(_top(merged, query, 5), _top(whole, query, 5))

    saved = tmp_path / "saved"
    saved.mkdir()
    write_index_on_disk(whole, saved / "index.faiss", saved / IVF_DATA_FILE)
    assert not invlists_on_disk(whole)  # written, not changed
    moved = tmp_path / "moved"
    saved.rename(moved)  # the lists are found beside index.faiss
    loaded = read_index(moved / "index.faiss", on_disk=True)
    assert invlists_on_disk(loaded)
    set_nprobe(loaded, 2)
    np.testing.assert_array_equal(_top(loaded, query, 5), _top(whole, query, 5))
    invlists_to_ram(loaded)
    assert not invlists_on_disk(loaded)
    add_in_chunks(loaded, rows[:10])
    assert loaded.ntotal == 310

    write_index(whole, tmp_path / "plain.faiss")
    np.testing.assert_array_equal(_top(read_index(tmp_path / "plain.faiss"), query, 5), _top(whole, query, 5))
