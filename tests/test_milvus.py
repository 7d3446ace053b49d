"""The fingerprint store on Milvus (issue 25), on Milvus Lite files: the same answers and decisions
as faiss, add and remove alike, a killed build or add resumed with one row per segment, the
integrity record of the collection, the command line and `nnfp serve` on a Milvus index."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main

RATE = 8000
N_TRACKS = 10  # 6 s each: 11 segments on the 0.5 s hop, 110 rows
ROWS_PER_TRACK = 11


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model):
    """Generated music, an untrained tiny model, and a flat index of `music/` on each backend."""
    from nnfp.catalogue.build import build_index
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("milvus")
    tiny_model(root / "tiny.keras", seed=3)
    for folder, seeds in (("music", range(N_TRACKS)), ("more", range(30, 32)), ("unknown", range(60, 63))):
        (root / folder).mkdir()
        for seed in seeds:
            sf.write(root / folder / f"track_{seed:02d}.wav", compose_track(seed, 6.0, RATE), RATE)
    for backend in ("faiss", "milvus"):
        build_index(root / "music", root / backend, model=root / "tiny.keras", index_type="flat", progress=False,
                    backend=backend)
    return root


def _copy(root, backend, tmp_path):
    target = tmp_path / backend
    shutil.copytree(root / backend, target)
    return target


def _queries(root, n, seed):
    """`n` excerpts (1-3 s, noisy, at random offsets) of the catalogue, and 3 s of out-of-catalogue music."""
    rng = np.random.default_rng(seed)
    queries = []
    for _ in range(n):
        track = int(rng.integers(N_TRACKS))
        audio, _ = sf.read(root / "music" / f"track_{track:02d}.wav", dtype="float32")
        seconds = float(rng.choice([1.0, 2.0, 3.0]))
        start = int(rng.integers(0, len(audio) - int(seconds * RATE)))
        excerpt = audio[start : start + int(seconds * RATE)]
        noise = rng.standard_normal(len(excerpt)).astype(np.float32)
        queries.append(excerpt + noise * np.std(excerpt) / 10 ** (rng.uniform(5, 20) / 20))
    for name in sorted(os.listdir(root / "unknown")):
        audio, _ = sf.read(root / "unknown" / name, dtype="float32")
        queries.append(audio[RATE : 4 * RATE])
    return queries


def _answers(index, root, paths, n_results=5):
    """`{path: [(track_id, offset, score), ...]}` for an exact 2 s excerpt (at 1 s) of each track."""
    from nnfp.catalogue.identify import Identifier

    identifier = Identifier(index, min_score=None)
    answers = {}
    for path in paths:
        audio, _ = sf.read(root / path, dtype="float32")
        answers[path] = [
            (m.track_id, m.offset_s, round(m.score, 4))
            for m in identifier.identify_audio(audio[RATE : 3 * RATE], n_results=n_results)
        ]
    return answers


def _rows(db):
    """Every primary key of a Milvus-backed DB's collection, sorted."""
    found = db.index.client.query(db.index.target.collection, filter="row >= 0", output_fields=["row"], limit=16384)
    return np.sort([entity["row"] for entity in found])


# ------------------------------------------------------------------ the same answers


def test_milvus_answers_like_faiss_top1_and_decision(setup):
    from nnfp.catalogue.identify import Identifier

    queries = _queries(setup, 40, seed=0)
    top, decided = {}, {}
    for backend in ("faiss", "milvus"):
        every = Identifier(setup / backend, min_score=None)  # top-1, whatever its score
        top[backend] = [every.identify_audio(q, n_results=1)[0] for q in queries]
        # The untrained model scores everything high: a threshold that accepts half the queries.
        threshold = float(np.median([match.score for match in top["faiss"]]))
        decides = Identifier(setup / backend, db=every.db, embedder=every.embedder, min_score=threshold)
        decided[backend] = [bool(decides.identify_audio(q, n_results=1)) for q in queries]
    same_top = np.mean([
        (a.track_id, a.offset_s) == (b.track_id, b.offset_s) for a, b in zip(top["faiss"], top["milvus"], strict=True)
    ])
    same_decision = np.mean([a == b for a, b in zip(decided["faiss"], decided["milvus"], strict=True)])
    assert same_top >= 0.995 and same_decision >= 0.995, (same_top, same_decision)
    assert 0 < sum(decided["milvus"]) < len(queries)  # both decisions were taken
    np.testing.assert_allclose([m.score for m in top["milvus"]], [m.score for m in top["faiss"]], atol=1e-6)


def test_candidates_and_rows_are_faiss_ones_on_hand_made_vectors(tmp_path):
    from nnfp.store.db import FingerprintDB
    from nnfp.store.milvus import MilvusTarget

    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((300, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    embeddings[7] = 0.0  # dead air
    track = np.repeat(np.arange(10), 30).astype(np.int32)
    start = np.tile(np.arange(30) * 0.5, 10).astype(np.float32)
    tracks = [{"track_id": i, "path": f"t{i}.wav", "duration_s": 15.0} for i in range(10)]
    target = MilvusTarget(None, "nnfp_hand", tmp_path / "work" / "milvus.db", replace=True)
    db = FingerprintDB.build(embeddings, track, start, tracks, index_type="flat", milvus=target)
    reference = FingerprintDB.build(embeddings, track, start, tracks, index_type="flat")
    queries = embeddings[[3, 50, 299]] + 0.05 * rng.standard_normal((3, 8)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.testing.assert_array_equal(db.neighbours(queries, k_probe=12), reference.neighbours(queries, k_probe=12))
    np.testing.assert_array_equal(db.embeddings[[299, 7, 0, 7]], embeddings[[299, 7, 0, 7]])  # exact, by id
    np.testing.assert_array_equal(db.embeddings[-1], embeddings[-1])
    np.testing.assert_array_equal(np.asarray(db.embeddings), embeddings)
    calls = []
    fetch = db.index.fetch
    db.index.fetch = lambda ids: calls.append(len(ids)) or fetch(ids)
    starts = np.array([0, 31, 100])
    np.testing.assert_allclose(db.sequence_scores(queries, starts), reference.sequence_scores(queries, starts), atol=1e-6)
    assert calls == []  # every row came from the cache
    assert db.search(queries)[0] == reference.search(queries)[0]
    db.close()


# ------------------------------------------------------------------ the folder and its integrity


def test_index_folder_keeps_the_small_files_and_the_lite_file(setup):
    from nnfp.catalogue.build import verify_index
    from nnfp.store.db import FingerprintDB

    index = setup / "milvus"
    names = sorted(os.listdir(index))
    assert {"tracks.json", "model.keras", "milvus.db", ".nnfp-output.json"} <= set(names)
    assert not {"embeddings.npy", "index.faiss", "segments.npz"} & set(names)
    meta = json.loads((index / "tracks.json").read_text())
    store = meta["store"]
    assert (store["backend"], store["uri"], store["lite_file"], store["collection"]) == (
        "milvus", None, "milvus.db", "nnfp_milvus"
    )
    assert store["segments_file"] in names and len(store["probe"]["rows"]) == 8
    assert not [name for name in meta["integrity"]["files"] if name.startswith("milvus.db")]
    assert {"model.keras", store["segments_file"]} <= set(meta["integrity"]["files"])
    assert verify_index(index) == ([], [])
    db = FingerprintDB.load(index)
    assert (db.backend, db.n_segments, db.index.count()) == ("milvus", N_TRACKS * ROWS_PER_TRACK, N_TRACKS * ROWS_PER_TRACK)
    np.testing.assert_array_equal(np.asarray(db.embeddings), FingerprintDB.load(setup / "faiss").embeddings)
    assert main(["index", "verify", str(index)]) == 0


def test_a_changed_collection_is_found_on_load(setup, tmp_path):
    from nnfp.store.db import FingerprintDB
    from nnfp.store.integrity import CorruptIndexError
    from nnfp.store.milvus import MilvusError

    index = _copy(setup, "milvus", tmp_path)
    db = FingerprintDB.load(index)
    name = db.index.target.collection
    probe = json.loads((index / "tracks.json").read_text())["store"]["probe"]["rows"]
    vector = np.asarray(db.embeddings[probe[3]])
    db.index.client.upsert(name, [{"row": probe[3], "track": int(db.segment_track[probe[3]]), "vector": -vector}])
    with pytest.raises(CorruptIndexError, match="stored fingerprints differ from the ones recorded"):
        FingerprintDB.load(index)
    db.index.client.upsert(name, [{"row": probe[3], "track": int(db.segment_track[probe[3]]), "vector": vector}])
    FingerprintDB.load(index)
    db.index.client.delete(name, ids=[5])
    with pytest.raises(CorruptIndexError, match="holds 109 of the index's 110 live rows"):
        FingerprintDB.load(index)
    assert main(["index", "verify", str(index)]) == 2
    db.close()
    shutil.rmtree(index / "milvus.db")
    with pytest.raises(FileNotFoundError, match="is missing its Milvus Lite folder"):
        FingerprintDB.load(index)

    # Milvus Lite serves one process: a file open in another one is refused, with what to do.
    index = _copy(setup, "milvus", tmp_path / "other")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pymilvus import MilvusClient; "
         f"client = MilvusClient({str(index / 'milvus.db')!r}); print('open', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(MilvusError, match="open in another process .*--milvus-uri"):
            FingerprintDB.load(index)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert FingerprintDB.load(index).n_live_segments == N_TRACKS * ROWS_PER_TRACK


# ------------------------------------------------------------------ add, remove, killed writers


def test_add_and_remove_behave_as_on_faiss(setup, tmp_path):
    from nnfp.catalogue.build import add_to_index, compact_index, remove_tracks, verify_index
    from nnfp.store.db import FingerprintDB

    paths = [f"music/track_{i:02d}.wav" for i in range(N_TRACKS)] + ["more/track_30.wav", "more/track_31.wav"]
    answers = {}
    for backend in ("faiss", "milvus"):
        index = _copy(setup, backend, tmp_path)
        report = add_to_index(index, setup / "more", progress=False)
        assert (report.n_tracks, report.n_segments) == (2, 2 * ROWS_PER_TRACK)
        # Milvus deletes the removed rows from its collection, as a compaction drops them from faiss:
        # the same rows are left to search (uncompacted, faiss' neighbour lists still hold them).
        removed = remove_tracks(index, [1, "track_04.wav"], compact=backend == "faiss")
        assert [t["track_id"] for t in removed] == [1, 4]
        answers[backend] = _answers(index, setup, paths)
        assert verify_index(index)[0] == []
        db = FingerprintDB.load(index)
        assert (db.n_live_segments, db.removed_track_ids) == (110, [1, 4])
        if backend == "milvus":
            assert db.n_segments == 132  # row numbers stay: the segment table keeps the removed rows
            assert db.index.count() == 110  # the removed tracks' rows left the collection
            assert _rows(db).tolist() == [r for r in range(132) if db.segment_track[r] not in (1, 4)]
            assert compact_index(index) == 0  # nothing to compact
            assert remove_tracks(index, [0], compact=True)[0]["track_id"] == 0  # --compact: nothing more to do
            assert FingerprintDB.load(index).index.count() == 99
    assert answers["milvus"] == answers["faiss"]
    for path in paths:
        assert not {1, 4} & {track_id for track_id, _, _ in answers["milvus"][path]}
    assert answers["milvus"]["more/track_31.wav"][0][:2] == (11, 1.0)


def test_a_killed_build_run_again_stores_each_segment_once(setup, tmp_path, monkeypatch):
    import nnfp.store.milvus as milvus
    from nnfp.catalogue.build import build_index
    from nnfp.catalogue.chunks import partial_dir
    from nnfp.store.db import FingerprintDB

    monkeypatch.setattr(milvus, "INSERT_BATCH_ROWS", 16)  # 110 rows: 7 batches
    insert = milvus.MilvusIndex.insert_batch
    calls = []

    def killed_after_three(self, first_row, *args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(first_row)
        return insert(self, first_row, *args, **kwargs)

    index = tmp_path / "index"
    monkeypatch.setattr(milvus.MilvusIndex, "insert_batch", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_index(setup / "music", index, model=setup / "tiny.keras", index_type="flat", progress=False, backend="milvus")
    assert calls == [0, 16, 32] and not index.exists() and (partial_dir(index) / "milvus.db").is_dir()

    calls.clear()
    monkeypatch.setattr(milvus.MilvusIndex, "insert_batch", lambda self, first_row, *a, **k: calls.append(first_row) or insert(self, first_row, *a, **k))
    report = build_index(setup / "music", index, model=setup / "tiny.keras", index_type="flat", progress=False, backend="milvus")
    assert report.resumed_chunks == 1 and calls == [48, 64, 80, 96]  # only the rows not stored before
    assert not partial_dir(index).exists()
    db = FingerprintDB.load(index)
    assert db.index.count() == 110 and _rows(db).tolist() == list(range(110))
    np.testing.assert_array_equal(np.asarray(db.embeddings), FingerprintDB.load(setup / "faiss").embeddings)

    # A killed add: its rows past the index's are ignored, then replaced by the add run again.
    calls.clear()
    monkeypatch.setattr(milvus.MilvusIndex, "insert_batch", killed_after_three)
    calls.extend([None, None])  # the kill comes after one batch of the add (22 rows: 2 batches)
    table = (index / "tracks.json").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        main(["index", "add", str(index), str(setup / "more"), "--quiet"])
    assert (index / "tracks.json").read_bytes() == table
    db = FingerprintDB.load(index)
    assert db.n_segments == 110 and db.index.count() == 126  # 16 rows past the index: not answered
    assert db.neighbours(np.asarray(db.embeddings[:110]), k_probe=110).max() < 110
    monkeypatch.setattr(milvus.MilvusIndex, "insert_batch", insert)
    assert main(["index", "add", str(index), str(setup / "more"), "--quiet"]) == 0
    db = FingerprintDB.load(index)
    assert db.index.count() == 132 and _rows(db).tolist() == list(range(132))


# ------------------------------------------------------------------ the command line and the server


def test_cli_builds_on_milvus_and_refuses_bad_options(setup, tmp_path, capsys):
    music, model = str(setup / "music"), str(setup / "tiny.keras")
    index = tmp_path / "cli"
    assert main(["index", "build", music, str(index), "--model", model, "--backend", "milvus",
                 "--collection", "fingerprints_v1", "--index-type", "hnsw", "--quiet"]) == 0
    assert "index: hnsw" in capsys.readouterr().out
    meta = json.loads((index / "tracks.json").read_text())
    assert (meta["store"]["collection"], meta["index_type"]) == ("fingerprints_v1", "hnsw")
    query = tmp_path / "query.wav"
    audio, _ = sf.read(setup / "music" / "track_06.wav", dtype="float32")
    sf.write(query, audio[2 * RATE : 5 * RATE], RATE)
    outputs = []
    for folder in (setup / "faiss", index):
        assert main(["identify", str(folder), str(query), "--json"]) == 0
        outputs.append(json.loads(capsys.readouterr().out))
        assert main(["monitor", str(folder), str(query), "--json"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0]["matches"][0]["track"] == "track_06.wav" and outputs[0]["matches"][0]["offset_s"] == 2.0
    assert outputs[2]["matches"][0] == outputs[0]["matches"][0]
    assert outputs[3] == outputs[1]

    for extra, message in [
        (["--milvus-uri", "http://localhost:19530"], "--milvus-uri and --collection go with --backend milvus"),
        (["--backend", "milvus", "--milvus-uri", "localhost"], "must be a Milvus server address"),
        (["--backend", "milvus", "--collection", "9 lives"], "a Milvus collection name is 1-255 letters"),
        (["--backend", "milvus", "--index-type", "ivfpq"], "Milvus Lite has no IVF_PQ index"),
        (["--backend", "milvus", "--shard", "0/2"], "a --shard build only fingerprints"),
        (["--backend", "milvus", "--milvus-uri", "http://127.0.0.1:9"], "cannot connect to Milvus"),
    ]:
        assert main(["index", "build", music, str(tmp_path / "refused"), "--model", model, "--quiet", *extra]) == 2
        assert message in capsys.readouterr().err, extra
        assert not (tmp_path / "refused" / "tracks.json").exists()


def test_a_collection_on_a_server_by_uri(setup, tmp_path, monkeypatch, capsys):
    """The server path (`--milvus-uri`), against the gRPC server Milvus Lite runs in this process."""
    from milvus_lite import server_manager_instance
    from pymilvus import MilvusClient

    from nnfp.catalogue.build import add_to_index, remove_tracks
    from nnfp.store.db import FingerprintDB
    from nnfp.store.integrity import CorruptIndexError

    data = str(tmp_path / "server.db")
    uri = server_manager_instance.start_and_get_uri(data)
    music, model, index = str(setup / "music"), str(setup / "tiny.keras"), tmp_path / "remote"
    try:
        monkeypatch.setenv("NNFP_MILVUS_TOKEN", "root:Milvus")  # read from the environment, never written
        assert main(["index", "build", music, str(index), "--model", model, "--backend", "milvus",
                     "--milvus-uri", uri, "--quiet"]) == 0
        capsys.readouterr()
        assert "milvus.db" not in os.listdir(index) and "root:Milvus" not in (index / "tracks.json").read_text()
        store = json.loads((index / "tracks.json").read_text())["store"]
        assert (store["uri"], store["lite_file"], store["collection"]) == (uri, None, "nnfp_remote")
        db = FingerprintDB.load(index)
        query = np.asarray(db.embeddings[50:54])
        assert db.index.count() == 110 and db.search(query)[0].track_id == 4

        # The same server under another address, as seen from another host: $NNFP_MILVUS_URI.
        other_address = uri.replace("127.0.0.1", "localhost")
        monkeypatch.setenv("NNFP_MILVUS_URI", other_address)
        moved = FingerprintDB.load(index)
        assert moved.index.target.uri == other_address and moved.search(query) == db.search(query)
        monkeypatch.delenv("NNFP_MILVUS_URI")

        # Writers through the server: add and remove change the collection and the folder.
        assert add_to_index(index, setup / "more", progress=False).n_tracks == 2
        remove_tracks(index, [3])
        db = FingerprintDB.load(index)
        assert db.index.count() == 121 and _rows(db).tolist() == [r for r in range(132) if not 33 <= r < 44]
        assert json.loads((index / "tracks.json").read_text())["store"]["uri"] == uri

        # Another catalogue for the same collection: refused (nothing written) without --overwrite.
        other = ["index", "build", str(setup / "more"), str(tmp_path / "other"), "--model", model, "--quiet",
                 "--backend", "milvus", "--milvus-uri", uri, "--collection", "nnfp_remote"]
        assert main(other) == 2
        assert "holds the fingerprints of another nnfp index; pass --overwrite" in capsys.readouterr().err
        assert FingerprintDB.load(index).index.count() == 121
        # A collection nnfp did not create is never written to, even with --overwrite.
        MilvusClient(uri=uri).create_collection("theirs", dimension=16)
        assert main([*other[:-1], "theirs", "--overwrite"]) == 2
        assert "a collection nnfp did not create; nnfp never writes into or drops it" in capsys.readouterr().err
        assert main([*other, "--overwrite"]) == 0  # ours: replaced
        with pytest.raises(CorruptIndexError, match="holds 22 of the index's 121 live rows"):
            FingerprintDB.load(index)  # the first index lost its collection to the second: found on load
    finally:
        server_manager_instance.release_server(data)


def test_shard_jobs_merge_into_one_collection(setup, tmp_path, capsys):
    from nnfp.store.db import FingerprintDB

    music, model, shards = str(setup / "music"), str(setup / "tiny.keras"), tmp_path / "shards"
    for shard in range(2):
        assert main(["index", "build", music, str(shards), "--shard", f"{shard}/2", "--model", model, "--quiet"]) == 0
    index = tmp_path / "merged"
    assert main(["index", "merge", str(shards), str(index), "--backend", "milvus", "--collection", "merged",
                 "--index-type", "flat", "--quiet"]) == 0
    assert "merged 2 shards: 10 tracks (110 segments" in capsys.readouterr().out
    merged, single = FingerprintDB.load(index), FingerprintDB.load(setup / "faiss")
    assert (merged.backend, merged.index.target.collection, merged.tracks) == ("milvus", "merged", single.tracks)
    np.testing.assert_array_equal(np.asarray(merged.embeddings), single.embeddings)  # rows in one order
    assert _rows(merged).tolist() == list(range(110))
    query = np.asarray(single.embeddings[30:35])
    assert merged.search(query) == single.search(query)


def test_calibrate_and_serve_work_on_a_milvus_index(setup, tmp_path):
    from fastapi.testclient import TestClient

    from nnfp.serve import Catalogue, create_app

    index = _copy(setup, "milvus", tmp_path)
    assert main(["index", "calibrate", str(index), "--unknown", str(setup / "unknown"), "--n-queries", "12",
                 "--lengths", "1", "3", "--target", "0.5", "--quiet"]) == 0
    assert (index / "calibration.json").is_file() and main(["index", "verify", str(index)]) == 0

    client = TestClient(create_app(Catalogue(index), token="secret"))
    auth = {"Authorization": "Bearer secret"}
    assert len(client.get("/tracks").json()["tracks"]) == N_TRACKS
    new = (setup / "more" / "track_30.wav").read_bytes()
    added = client.post("/tracks", files={"file": ("upload.wav", new)}, data={"name": "new.wav"}, headers=auth)
    assert added.status_code == 201 and added.json() == {"id": N_TRACKS, "track": "new.wav"}, added.text
    assert client.delete("/tracks/2", headers=auth).status_code == 200
    assert {t["track"] for t in client.get("/tracks").json()["tracks"]} == (
        {f"track_{i:02d}.wav" for i in range(N_TRACKS)} - {"track_02.wav"} | {"new.wav"}
    )
    audio, _ = sf.read(setup / "more" / "track_30.wav", dtype="float32")
    sf.write(tmp_path / "q.wav", audio[RATE : 4 * RATE], RATE)
    answer = client.post("/identify", files={"file": ("q.wav", (tmp_path / "q.wav").read_bytes())}).json()
    assert (answer["matches"][0]["track"], answer["matches"][0]["offset_s"]) == ("new.wav", 1.0)
    assert main(["index", "verify", str(index)]) == 0
