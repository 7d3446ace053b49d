"""Index build/add, identify and evaluate end to end with a small model trained on the embedded corpus."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main

TINY = [
    "train.jit_compile=false",  # XLA compiles in ~10 s: worth it for long runs, not for 2-step tests
    "encoder.width=0.0625",
    "projection.embedding_dim=32",
    "embedded.n_tracks=6",
    "embedded.n_val_tracks=2",
    "embedded.track_seconds=12",
    "embedded.n_noise=2",
    "embedded.n_irs=2",
    "train.batch_size=16",
    "train.n_anchors=8",
    "train.val_batch_size=8",
    "train.steps_per_epoch=200",
    "train.epochs=1",
    "train.mini_search_scopes=[1,3]",
    "train.verbose=0",
    "train.tensorboard=false",
    "train.similarity_images=false",
    "optimizer.learning_rate=0.001",
    "data.val_max_segments=16",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small model trained ~30 s on an 8-track embedded corpus, and an index of the corpus."""
    from nnfp.config import CONFIG_DIR, load_config
    from nnfp.training import embedded_corpus, train

    root = tmp_path_factory.mktemp("index")
    previous = os.environ.get("NNFP_CACHE")
    os.environ["NNFP_CACHE"] = str(root / "cache")
    try:
        config = load_config(CONFIG_DIR / "demo.yaml", TINY)
        corpus = embedded_corpus(config)
        train(config, root / "run", log=lambda *_: None)
    finally:
        if previous is None:
            os.environ.pop("NNFP_CACHE", None)
        else:
            os.environ["NNFP_CACHE"] = previous
    index = root / "built" / "idx"
    assert main(["index", "build", str(corpus.music_dir), str(index), "--model", str(root / "run"), "--quiet"]) == 0
    return {"root": root, "music": corpus.music_dir, "run": root / "run", "index": index}


def _query(music, name, start, seconds, seed, snr_db=15.0):
    from nnfp.audio.io import load_audio
    from nnfp.catalogue.queries import degrade
    from nnfp.corpus.noise import make_noise
    from nnfp.corpus.rooms import make_impulse_response

    track = load_audio(music / name)
    return degrade(
        track, int(round(start * 8000)), int(round(seconds * 8000)), 8000, 8000, noise=make_noise(seed, seconds + 1),
        snr_db=snr_db, impulse_response=make_impulse_response(seed),
    )


def test_index_folder_is_complete_and_atomic(setup):
    from nnfp.store.db import FingerprintDB

    index = setup["index"]
    assert sorted(os.listdir(index.parent)) == ["idx"]  # no .partial / .tmp folders left
    assert {"embeddings.npy", "segments.npz", "tracks.json", "index.faiss", "model.keras"} <= set(os.listdir(index))
    db = FingerprintDB.load(index)
    assert isinstance(db.embeddings, np.memmap)  # exact vectors are read from disk at search time
    assert len(db.tracks) == 8 and db.n_segments == 8 * 23  # 12 s -> 23 segments on a 0.5 s hop
    assert db.index_type == "flat"
    pcm, rate = sf.read(setup["music"] / "track_0003.wav", dtype="float32")  # written at the index rate
    assert rate == 8000
    digest = hashlib.sha256(pcm.astype(np.float32).tobytes()).hexdigest()  # of the decoded samples
    assert db.tracks[3] == {"track_id": 3, "path": "track_0003.wav", "duration_s": 12.0, "pcm_sha256": digest}
    np.testing.assert_allclose(db.segment_start[:3], [0.0, 0.5, 1.0])
    assert db.metadata["sources"][0]["n_tracks"] == 8 and db.metadata["skipped"] == []


def test_identifies_noisy_reverberant_excerpts_at_random_offsets(setup):
    from nnfp.catalogue.identify import Identifier

    identifier = Identifier(setup["index"], min_score=None)
    rng = np.random.default_rng(0)
    correct = 0
    n = 20
    for q in range(n):
        track = identifier.db.tracks[int(rng.integers(8))]
        start = float(rng.uniform(0, 12 - 4))  # not aligned to the hop
        query = _query(setup["music"], track["path"], start, 4.0, seed=q, snr_db=float(rng.uniform(10, 20)))
        match = identifier.identify_audio(query, n_results=1)[0]
        correct += match.path == track["path"] and abs(match.offset_s - start) <= 0.5
    assert correct / n >= 0.7, correct


def test_identify_cli_json_text_and_bad_queries(setup, tmp_path, capsys):
    query = _query(setup["music"], "track_0005.wav", 3.0, 5.0, seed=7, snr_db=20)
    good = tmp_path / "good.flac"
    up = np.repeat(query, 2)  # 16 kHz stereo: resampled and mixed down on read
    sf.write(good, np.stack([up, up], axis=1), 16000)
    short = tmp_path / "short.wav"
    sf.write(short, query[:4000], 8000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")

    args = ["identify", str(setup["index"]), str(short), str(good), str(bad), "--json", "--top-k", "3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [line["query"] for line in lines] == [str(short), str(good), str(bad)]
    first = lines[1]
    assert set(first) == {"query", "matches"} and 1 <= len(first["matches"]) <= 3
    assert set(first["matches"][0]) == {"track", "offset_s", "score", "confidence", "speed"}
    assert first["matches"][0]["track"] == "track_0005.wav"
    assert abs(first["matches"][0]["offset_s"] - 3.0) <= 0.5
    scores = [m["score"] for m in first["matches"]]
    assert scores == sorted(scores, reverse=True)
    assert lines[0]["matches"] == [] and "too short" in lines[0]["error"]
    assert lines[2]["matches"] == [] and "cannot decode" in lines[2]["error"]
    assert "too short: 0.50 s" in captured.err and str(bad) in captured.err

    assert main(["identify", str(setup["index"]), str(good), "--min-score", "1.01"]) == 0
    assert "no match" in capsys.readouterr().out
    assert main(["identify", str(setup["index"]), str(good), "--top-k", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{good}:" and out[1].startswith("  1. track_0005.wav  offset ")
    assert main(["identify", str(setup["index"]), str(short), str(bad)]) == 1  # all failed


def test_build_with_a_denser_hop(setup, tmp_path, capsys):
    from nnfp.store.db import FingerprintDB

    dense = tmp_path / "dense"
    args = ["index", "build", str(setup["music"]), str(dense), "--model", str(setup["run"]), "--quiet"]
    assert main([*args, "--hop", "0.25"]) == 0
    coarse, fine = FingerprintDB.load(setup["index"]), FingerprintDB.load(dense)
    assert fine.hop_seconds == 0.25
    for track in coarse.tracks:  # 12 s tracks: 23 segments at 0.5 s, 45 at 0.25 s
        rows_c = np.flatnonzero(coarse.segment_track == track["track_id"])
        rows_f = np.flatnonzero(fine.segment_track == track["track_id"])
        assert len(rows_f) == 2 * len(rows_c) - 1
        np.testing.assert_allclose(fine.segment_start[rows_f[::2]], coarse.segment_start[rows_c])
        # Every other dense segment is a coarse one: the same fingerprint.
        np.testing.assert_allclose(fine.embeddings[rows_f[::2]], coarse.embeddings[rows_c], atol=1e-5)

    bad = tmp_path / "bad"
    assert main([*args[:3], str(bad), *args[4:], "--hop", "0.00001"]) == 2
    assert "hop_seconds` (--hop) must be a whole number of samples at 8000 Hz" in capsys.readouterr().err
    assert not bad.exists()


def test_build_resumes_after_interruption_then_add(setup, tmp_path, capsys):
    from nnfp.catalogue.build import build_index
    from nnfp.store.db import FingerprintDB

    first, more = tmp_path / "first", tmp_path / "more"
    first.mkdir()
    (more / "sub").mkdir(parents=True)
    for i in range(3):
        shutil.copy(setup["music"] / f"track_000{i}.wav", first)
    for i in range(3, 5):
        shutil.copy(setup["music"] / f"track_000{i}.wav", more / "sub")
    (more / "broken.wav").write_bytes(b"garbage")
    index = tmp_path / "out" / "idx"

    def crash(chunk):
        if chunk == 1:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        build_index(first, index, model=setup["run"], chunk_files=1, progress=False, on_chunk=crash)
    partial = tmp_path / "out" / "idx.partial"
    assert not index.exists() and len(list(partial.glob("chunk_*.npz"))) == 2

    report = build_index(first, index, model=setup["run"], chunk_files=1, progress=False)
    assert report.resumed_chunks == 2 and report.n_tracks == 3 and report.n_segments == 3 * 23
    assert sorted(os.listdir(index.parent)) == ["idx"]
    reference = FingerprintDB.load(setup["index"])
    np.testing.assert_allclose(report.db.embeddings, reference.embeddings[: 3 * 23], atol=1e-5)

    assert main(["index", "add", str(index), str(more), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "added 2 tracks" in out and "broken.wav" in out
    db = FingerprintDB.load(index)
    assert [t["path"] for t in db.tracks] == [
        "track_0000.wav", "track_0001.wav", "track_0002.wav", "sub/track_0003.wav", "sub/track_0004.wav",
    ]
    assert [t["track_id"] for t in db.tracks] == [0, 1, 2, 3, 4]
    assert db.metadata["skipped"][0][0] == "broken.wav" and len(db.metadata["sources"]) == 2
    assert sorted(os.listdir(index.parent)) == ["idx"]
    query = tmp_path / "q.wav"
    sf.write(query, _query(setup["music"], "track_0004.wav", 5.0, 5.0, seed=3, snr_db=20), 8000)
    assert main(["identify", str(index), str(query), "--json"]) == 0
    match = json.loads(capsys.readouterr().out)["matches"][0]
    assert match["track"] == "sub/track_0004.wav" and abs(match["offset_s"] - 5.0) <= 0.5

    assert main(["index", "add", str(index), str(more), "--quiet"]) == 0  # already indexed: no-op
    assert "added 0 tracks" in capsys.readouterr().out
    assert len(FingerprintDB.load(index).tracks) == 5


def test_no_default_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import nnfp.catalogue.fingerprint

    monkeypatch.setattr(nnfp.catalogue.fingerprint, "DEFAULT_MODEL_PATH", tmp_path / "none.keras")
    (tmp_path / "music").mkdir()
    sf.write(tmp_path / "music" / "a.wav", np.zeros(16000, "float32"), 8000)
    assert main(["index", "build", str(tmp_path / "music"), str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert "no default model ships with this version of nnfp; pass --model RUN_DIR|FILE.keras|SAVEDMODEL_DIR" in err


def test_hit_rates_known_answers():
    from nnfp.catalogue.metrics import hit_rates

    true_rows = np.array([10, 20, 30, 40])
    true_tracks = np.array([1, 2, 3, 4])
    rows = np.full((4, 1, 10), -1)
    rows[0, 0, :3] = [10, 5, 6]  # exact
    rows[1, 0, :3] = [21, 20, 7]  # near, top-3
    rows[2, 0, :10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 30]  # top-10 only
    tracks = np.full((4, 1, 10), -1)
    tracks[:, 0, 0] = [1, 2, 9, 9]
    rates = hit_rates(rows, true_rows, tracks, true_tracks)
    assert rates["top1_exact"].tolist() == [25.0]
    assert rates["top1_near"].tolist() == [50.0]
    assert rates["top3"].tolist() == [50.0]
    assert rates["top10"].tolist() == [75.0]
    assert rates["song_top1"].tolist() == [50.0]
    assert rates["n"].tolist() == [4]


def test_evaluate_writes_files_and_matches_naive_reference(setup, tmp_path, capsys):
    from nnfp.audio.io import load_audio
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.metrics import hit_rates
    from nnfp.catalogue.queries import synthesize_queries

    out = tmp_path / "eval"
    args = [
        "evaluate", str(setup["index"]), "--n-queries", "12", "--lengths", "1", "2", "3",
        "--k-probe", "1000", "--seed", "3", "--out", str(out), "--quiet", "--aligned", "--phases", "1",
        "--speeds", "off",  # the paper's search at one speed, as the reference below
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "top-1 exact" in printed and "song top-1" in printed
    assert sorted(os.listdir(out)) == [".nnfp-output.json", "hit_rates.png", "results.json", "results.md", "scores.npz"]
    assert (out / "hit_rates.png").read_bytes()[:4] == b"\x89PNG"
    assert "| top-1 exact |" in (out / "results.md").read_text()
    result = json.loads((out / "results.json").read_text())
    raw = np.load(out / "scores.npz")
    assert raw["raw_rows"].shape == (12, 3, 10)

    # Independent reference: exhaustive scores of every valid DB start, ranked with NumPy.
    identifier = Identifier(setup["index"], min_score=None)
    db = identifier.db
    first_rows = {int(t): int(np.flatnonzero(db.segment_track == t)[0]) for t in np.unique(db.segment_track)}
    waves, info = synthesize_queries(
        {t["track_id"]: t["duration_s"] for t in db.tracks},
        lambda i: load_audio(setup["music"] / db.tracks[i]["path"]),
        first_rows, 12, sample_rate=identifier.sample_rate, seconds=3.0, seed=3, aligned=True,
    )
    np.testing.assert_array_equal(info["true_row"], raw["query_true_row"])
    embeddings = np.asarray(db.embeddings, np.float64)
    track_end = np.array([np.flatnonzero(db.segment_track == t)[-1] for t in db.segment_track])
    rows = np.full((12, 3, 10), -1)
    tracks = np.full((12, 3, 10), -1)
    for q, wave in enumerate(waves):
        fingerprints = identifier.fingerprint(wave).astype(np.float64)
        for j, n in enumerate((1, 3, 5)):
            starts = np.array([s for s in range(db.n_segments) if s + n - 1 <= track_end[s]])
            scores = np.array([np.mean(np.sum(fingerprints[:n] * embeddings[s : s + n], axis=1)) for s in starts])
            kept = []  # distinct places: one per track and second (neighbouring offsets collapse)
            for s in starts[np.argsort(-scores, kind="stable")]:
                if all(db.segment_track[k] != db.segment_track[s] or abs(int(k) - int(s)) >= 2 for k in kept):
                    kept.append(s)
                if len(kept) == 10:
                    break
            rows[q, j, : len(kept)] = kept
            tracks[q, j, : len(kept)] = db.segment_track[kept]
    expected = hit_rates(rows, info["true_row"], tracks, info["track"])
    for key in ("top1_exact", "top1_near", "top3", "top10", "song_top1"):
        np.testing.assert_allclose(result["hit_rates"][key], expected[key], err_msg=key)
    np.testing.assert_array_equal(raw["raw_rows"][:, :, 0], rows[:, :, 0])
