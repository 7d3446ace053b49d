"""Sharded index build (`index build --shard I/N` + `index merge`) against a single-process build."""

import json
import os

import faiss
import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """8 composed 6 s tracks (one in a subfolder) and a tiny random-init model."""
    from nnfp.corpus.synth import compose_track
    from nnfp.encoder import DivideAndEncode, Encoder
    from nnfp.frontend import LogMelSpectrogram
    from nnfp.model import FingerPrinter

    root = tmp_path_factory.mktemp("shards")
    music = root / "music"
    (music / "sub").mkdir(parents=True)
    for i in range(8):
        folder = music / "sub" if i == 5 else music
        sf.write(folder / f"track_{i}.wav", compose_track(100 + i, 6.0), 8000)
    model = FingerPrinter(LogMelSpectrogram(), Encoder(width=0.03125), DivideAndEncode(16))
    model.build((None, 8000))
    model.save(root / "tiny.keras")
    return {"root": root, "music": music, "model": root / "tiny.keras"}


def _build_sharded(catalogue, out, n_shards, capsys):
    for shard in range(n_shards):
        args = ["index", "build", str(catalogue["music"]), str(out), "--shard", f"{shard}/{n_shards}"]
        assert main([*args, "--model", str(catalogue["model"]), "--chunk-files", "2", "--quiet"]) == 0
        assert f"shard {shard}/{n_shards}: fingerprinted" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == [".nnfp-output.json"] + [f"shard-{i}-of-{n_shards}" for i in range(n_shards)]


def _assert_same_db(single, merged, queries):
    assert merged.tracks == single.tracks
    np.testing.assert_array_equal(merged.segment_track, single.segment_track)
    np.testing.assert_array_equal(merged.segment_start, single.segment_start)
    np.testing.assert_array_equal(np.asarray(merged.embeddings), np.asarray(single.embeddings))
    assert merged.index_type == single.index_type and merged.index.ntotal == single.index.ntotal
    for query in queries:
        a = single.search(query, k_probe=5, n_results=5)
        b = merged.search(query, k_probe=5, n_results=5)
        assert [(m.track_id, m.offset_s, m.segment_index) for m in b] == [
            (m.track_id, m.offset_s, m.segment_index) for m in a
        ]
        np.testing.assert_allclose([m.score for m in b], [m.score for m in a], atol=1e-6)


def _inverted_lists(db):
    ivf = faiss.extract_index_ivf(db.index)
    lists = ivf.invlists
    return [
        (
            faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy(),
            faiss.rev_swig_ptr(lists.get_codes(i), lists.list_size(i) * lists.code_size).copy(),
        )
        for i in range(ivf.nlist)
    ]


@pytest.mark.parametrize(
    "index_args",
    [["--index-type", "flat"], ["--index-type", "ivf", "--nlist", "4", "--nprobe", "1"],
     ["--index-type", "ivfpq", "--nlist", "2", "--m", "4", "--nbits", "4", "--nprobe", "1"]],
    ids=["flat", "ivf", "ivfpq"],
)
def test_sharded_build_equals_single_process_build(catalogue, index_args, tmp_path, capsys):
    from nnfp.catalogue.identify import Identifier
    from nnfp.store.db import FingerprintDB

    single_dir, shards, merged_dir = tmp_path / "single", tmp_path / "shards", tmp_path / "merged"
    common = ["--model", str(catalogue["model"]), "--chunk-files", "2", "--quiet"]
    assert main(["index", "build", str(catalogue["music"]), str(single_dir), *index_args, *common]) == 0
    _build_sharded(catalogue, shards, 3, capsys)
    shard_meta = [json.loads((shards / f"shard-{i}-of-3" / "shard.json").read_text()) for i in range(3)]
    assert [len(m["tracks"]) for m in shard_meta] == [2, 2, 4]  # runs of whole 2-file chunks
    dirs = [str(shards / f"shard-{i}-of-3") for i in (2, 0, 1)]  # any order
    assert main(["index", "merge", *dirs, str(merged_dir), *index_args, "--quiet"]) == 0
    assert "merged 3 shards: 8 tracks (88 segments" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["merged", "shards", "single"]  # no .partial/.tmp left

    single, merged = FingerprintDB.load(single_dir), FingerprintDB.load(merged_dir)
    assert {k: merged.tracks[0][k] for k in ("track_id", "path", "duration_s")} == {
        "track_id": 0, "path": "sub/track_5.wav", "duration_s": 6.0}  # sorted paths
    assert merged.tracks == single.tracks  # PCM digests included
    rng = np.random.default_rng(0)
    queries = []
    for start, length in [(3, 4), (20, 6), (45, 1), (60, 9), (80, 3), (33, 2)]:
        noisy = np.asarray(single.embeddings[start : start + length]) + 0.3 * rng.standard_normal((length, 16))
        queries.append((noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32))
    _assert_same_db(single, merged, queries)
    if "ivf" in index_args[1]:
        assert merged.index_params == dict(single.index_params, on_disk=True)
        assert "index.ivfdata" in os.listdir(merged_dir)
        for (ids_a, codes_a), (ids_b, codes_b) in zip(
            _inverted_lists(single), _inverted_lists(merged), strict=True
        ):
            np.testing.assert_array_equal(ids_b, ids_a)
            np.testing.assert_array_equal(codes_b, codes_a)

    # The model travels with the merged index; a renamed index still finds its lists.
    moved = tmp_path / "moved"
    os.rename(merged_dir, moved)
    audio = sf.read(catalogue["music"] / "track_3.wav", dtype="float32")[0][12000:36000]
    expected = Identifier(single_dir, min_score=None).identify_audio(audio, n_results=3)
    found = Identifier(moved, min_score=None).identify_audio(audio, n_results=3)
    assert [(m.path, m.offset_s) for m in found] == [(m.path, m.offset_s) for m in expected]
    assert found[0].path == "track_3.wav"


def test_merge_errors_and_empty_shards(catalogue, tmp_path, capsys):
    from nnfp.store.db import FingerprintDB

    shards = tmp_path / "shards"
    _build_sharded(catalogue, shards, 3, capsys)
    os.rename(shards / "shard-1-of-3", tmp_path / "elsewhere")
    (shards / "shard-1-of-3.partial").mkdir()
    assert main(["index", "merge", str(shards), str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert "missing shard(s) 1/3 of 3" in err and "unfinished: 1/3" in err
    assert not (tmp_path / "idx").exists()
    os.rmdir(shards / "shard-1-of-3.partial")
    os.rename(tmp_path / "elsewhere", shards / "shard-1-of-3")

    assert main(["index", "merge", str(shards / "shard-0-of-3"), str(shards), str(tmp_path / "idx")]) == 2
    assert "shard 0/3 (" in (err := capsys.readouterr().err) and "given twice" in err

    meta_path = shards / "shard-2-of-3" / "shard.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps(dict(meta, model_sha1="0" * 40)))
    assert main(["index", "merge", str(shards), str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert "shards were built differently: the model of shard 2/3" in err
    meta_path.write_text(json.dumps(meta))

    music = catalogue["music"]
    for bad in ("3/2", "2", "-1/2", "a/b"):
        assert main(["index", "build", str(music), str(tmp_path / "x"), f"--shard={bad}"]) == 2
        assert f"`--shard` must be I/N with 0 <= I < N, e.g. 0/4. Received: --shard {bad}" in capsys.readouterr().err
    assert main(["index", "build", str(music), str(tmp_path / "x"), "--shard", "0/2", "--nlist", "4"]) == 2
    assert "give the index options to `nnfp index merge`. Received: --nlist" in capsys.readouterr().err

    # More shards than files: empty shards merge like any other.
    small = tmp_path / "small"
    small.mkdir()
    for name in ("track_0.wav", "track_1.wav"):
        os.link(music / name, small / name)
    common = ["--model", str(catalogue["model"]), "--quiet"]
    for shard in range(3):
        assert main(["index", "build", str(small), str(tmp_path / "s3"), "--shard", f"{shard}/3", *common]) == 0
    assert "0 tracks" in capsys.readouterr().out
    assert main(["index", "merge", str(tmp_path / "s3"), str(tmp_path / "m3"), "--quiet"]) == 0
    assert main(["index", "build", str(small), str(tmp_path / "b3"), *common]) == 0
    merged, single = FingerprintDB.load(tmp_path / "m3"), FingerprintDB.load(tmp_path / "b3")
    _assert_same_db(single, merged, [np.asarray(single.embeddings[4:8])])


def test_index_add_after_merge_extends_the_merged_index(catalogue, tmp_path, capsys):
    # A merged IVF index keeps its lists on disk (index.ivfdata); `index add` appends to them
    # as it does to a single-process build, and the new tracks are found.
    from nnfp.catalogue.identify import Identifier
    from nnfp.corpus.synth import compose_track
    from nnfp.store.db import FingerprintDB

    more = tmp_path / "more"
    more.mkdir()
    for i in range(2):
        sf.write(more / f"new_{i}.wav", compose_track(300 + i, 5.0), 8000)
    index_args = ["--index-type", "ivf", "--nlist", "4", "--nprobe", "4"]
    common = ["--model", str(catalogue["model"]), "--chunk-files", "2", "--quiet"]
    single_dir, merged_dir = tmp_path / "single", tmp_path / "merged"
    assert main(["index", "build", str(catalogue["music"]), str(single_dir), *index_args, *common]) == 0
    _build_sharded(catalogue, tmp_path / "shards", 2, capsys)
    assert main(["index", "merge", str(tmp_path / "shards"), str(merged_dir), *index_args, "--quiet"]) == 0
    for index in (single_dir, merged_dir):
        assert main(["index", "add", str(index), str(more), "--quiet"]) == 0
    capsys.readouterr()
    single, merged = FingerprintDB.load(single_dir), FingerprintDB.load(merged_dir)
    assert [t["path"] for t in merged.tracks][-2:] == ["new_0.wav", "new_1.wav"] and len(merged.tracks) == 10
    assert merged.n_segments == single.n_segments == 88 + 2 * 9
    np.testing.assert_array_equal(np.asarray(merged.embeddings), np.asarray(single.embeddings))
    assert merged.index.ntotal == merged.n_segments and "index.ivfdata" in os.listdir(merged_dir)
    audio = sf.read(more / "new_1.wav", dtype="float32")[0][8000:32000]  # 3 s from 1.0 s
    match = Identifier(merged_dir, min_score=None).identify_audio(audio, n_results=1)[0]
    assert (match.path, match.offset_s) == ("new_1.wav", pytest.approx(1.0))
    assert main(["index", "verify", str(merged_dir)]) == 0
