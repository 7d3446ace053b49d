"""The fingerprint store on faiss and on Milvus Lite, side by side (issue 25).

    python benchmarks/store.py [--tracks 300] [--track-seconds 30] [--queries 60]
                               [--synthetic 1M] [--workdir /tmp/nnfp-store-bench]

1. One generated catalogue (`--tracks` composed tracks of `--track-seconds`, 8 kHz), indexed by
   the shipped model with `nnfp index build` (flat, exact) into faiss and into a Milvus Lite file
   (`--backend milvus`), each build a fresh process: wall time (fingerprinting included, the
   same for both) and peak RSS; then the store alone (`FingerprintDB.build` of the same
   fingerprints: faiss add vs Milvus Lite inserts). Queries: degraded excerpts of catalogue
   tracks (`synthesize_queries`: noise and a room at 0-10 dB SNR; 1, 3 and 10 s) and excerpts of
   tracks not in the catalogue, identified in one fresh process per backend (`Identifier`, the
   index's calibration deciding): p50/p95 latency per query, peak RSS, disk, and how often
   Milvus gives faiss' top-1 (track and offset) and decision.
2. Synthetic scale on Milvus Lite (`--synthetic`, 0 to skip): random unit vectors (d=128,
   tracks of 360 segments) inserted into an HNSW collection through `FingerprintDB.build`
   (`milvus=`), saved, reopened in a fresh process: insert rate, disk, RSS, p50/p95 of 10 s
   queries (19 segments: ANN search, rows fetched by id, exact re-scoring), top-1 found.

Prints one table per part. Numbers depend on the machine and its load: say which.
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
D = 128
TRACK_SEGMENTS = 360
QUERY_SEGMENTS = 19
RATE = 8000
LENGTHS = (1.0, 3.0, 10.0)


def _parse_size(text):
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "KM" else text) * scale)


def _dir_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _run(args, label):
    """`python -c ... ARGS` in a fresh process -> (wall seconds, peak RSS bytes, stdout)."""
    from _child import run_child

    code, out, err, wall, rss = run_child([sys.executable, *map(str, args)], cwd=ROOT)
    if code != 0:
        raise SystemExit(f"{label} failed ({code}):\n{err.decode()[-3000:]}")
    return wall, rss, out.decode()


def _nnfp(*args):
    return ["-c", "import sys; from nnfp.cli import main; sys.exit(main(sys.argv[1:]))", *map(str, args)]


# ------------------------------------------------------------------ part 1: one catalogue, two stores


def make_catalogue(workdir, n_tracks, seconds, n_unknown=40):
    import soundfile as sf

    from nnfp.corpus.synth import compose_track

    for folder, seeds in (("music", range(n_tracks)), ("unknown", range(100_000, 100_000 + n_unknown))):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            path = workdir / folder / f"track_{seed:06d}.wav"
            if not path.exists():
                sf.write(path, compose_track(seed, seconds, RATE), RATE, subtype="PCM_16")


def make_queries(workdir, index_dir, n_queries):
    """Degraded catalogue excerpts (`n_queries` per length) and unknown excerpts, as `queries.npz`."""
    import soundfile as sf

    from nnfp.catalogue.queries import synthesize_queries
    from nnfp.store.db import FingerprintDB

    db = FingerprintDB.load(index_dir)
    durations = {t["track_id"]: t["duration_s"] for t in db.tracks}
    first_rows = dict(zip(*(a.tolist() for a in np.unique(db.segment_track, return_index=True)), strict=True))
    paths = {t["track_id"]: workdir / "music" / t["path"] for t in db.tracks}
    waves, kinds = [], []
    for seconds in LENGTHS:
        found, _ = synthesize_queries(
            durations, lambda i: sf.read(paths[i], dtype="float32"), first_rows, n_queries, sample_rate=RATE, seconds=seconds,
            seed=int(seconds),
        )
        waves += found
        kinds += [f"known {seconds:g} s"] * len(found)
    rng = np.random.default_rng(7)
    for path in sorted((workdir / "unknown").iterdir()):
        audio, _ = sf.read(path, dtype="float32")
        start = int(rng.integers(0, len(audio) - 3 * RATE))
        excerpt = audio[start : start + 3 * RATE]
        waves.append(excerpt + rng.standard_normal(len(excerpt)).astype(np.float32) * np.std(excerpt) * 0.3)
        kinds.append("unknown 3 s")
    lengths = np.array([len(w) for w in waves])
    np.savez(workdir / "queries.npz", audio=np.concatenate(waves), lengths=lengths, kinds=np.array(kinds))
    db.close()


def child_identify(index_dir, queries_path, out_path):
    """In a fresh process: identifies every query; per query the answer and its latency."""
    from nnfp.catalogue.identify import Identifier

    started = time.perf_counter()
    every = Identifier(index_dir, min_score=None)
    decides = Identifier(index_dir, db=every.db, embedder=every.embedder)  # the index's calibration
    load_s = time.perf_counter() - started
    data = np.load(queries_path)
    bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
    queries = [data["audio"][a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for query in queries[:5]:  # warm-up: first calls compile and fill caches
        every.identify_audio(query, n_results=1)
    answers, latencies = [], []
    for query in queries:
        began = time.perf_counter()
        (top,) = every.identify_audio(query, n_results=1)
        latencies.append(time.perf_counter() - began)
        answers.append([top.track_id, top.offset_s, top.score, bool(decides.identify_audio(query, n_results=1))])
    search = search_latencies(every.db, 100, seed=2)
    Path(out_path).write_text(json.dumps({"answers": answers, "latencies": latencies, "load_s": load_s, "search": search}))


def search_latencies(db, n_queries, seed):
    """Seconds of `db.search` (candidates, rows, exact scores; no model) for 10 s queries made of
    DB rows with noise (cosine ~0.7 to their source, like a noisy 0-10 dB query), and the share
    found at their row."""
    rng = np.random.default_rng(seed)
    first_rows = np.flatnonzero(np.r_[True, db.segment_track[1:] != db.segment_track[:-1]])
    counts = np.diff(np.r_[first_rows, len(db.segment_track)])
    latencies, found, fetched = [], 0, []
    if db.backend == "milvus":  # rows fetched by id per query
        fetch = db.index.fetch
        db.index.fetch = lambda ids: fetched.append(len(ids)) or fetch(ids)
    for q in range(n_queries + 10):
        track = int(rng.choice(np.flatnonzero(counts >= QUERY_SEGMENTS)))
        row = int(first_rows[track] + rng.integers(counts[track] - QUERY_SEGMENTS + 1))
        clean = np.asarray(db.embeddings[row : row + QUERY_SEGMENTS])
        noise = rng.standard_normal(clean.shape).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        query = 0.7 * clean + 0.71 * noise
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        if db.backend == "milvus":
            db.index.rows.forget()  # each query fetches its rows from the collection
        began = time.perf_counter()
        match = db.search(query, k_probe=20, n_results=1)
        if q >= 10:  # warm-up excluded
            latencies.append(time.perf_counter() - began)
            found += bool(match) and match[0].segment_index == row
    return {"latencies": latencies, "found": found / n_queries, "rows_fetched": sum(fetched) / (n_queries + 10)}


def store_only(index_dir, workdir):
    """Seconds to put the same fingerprints into each store (`FingerprintDB.build`, flat)."""
    from nnfp.store.db import FingerprintDB
    from nnfp.store.milvus import MilvusTarget

    db = FingerprintDB.load(index_dir, mmap=False)
    rows = (np.asarray(db.embeddings), db.segment_track, db.segment_start, db.tracks)
    times = {}
    started = time.perf_counter()
    FingerprintDB.build(*rows, index_type="flat")
    times["faiss"] = time.perf_counter() - started
    lite = workdir / "store-only" / "milvus.db"
    shutil.rmtree(lite.parent, ignore_errors=True)
    lite.parent.mkdir(parents=True)
    started = time.perf_counter()
    FingerprintDB.build(*rows, index_type="flat", milvus=MilvusTarget(None, "nnfp_store_only", lite, replace=True)).close()
    times["milvus"] = time.perf_counter() - started
    shutil.rmtree(lite.parent, ignore_errors=True)
    return times, db.n_segments


def catalogue_part(args, workdir):
    make_catalogue(workdir, args.tracks, args.track_seconds)
    results = {}
    for backend in ("faiss", "milvus"):
        index = workdir / f"index-{backend}"
        shutil.rmtree(index, ignore_errors=True)
        wall, rss, _ = _run(_nnfp("index", "build", workdir / "music", index, "--index-type", "flat", "--quiet",
                                  "--backend", backend), f"index build --backend {backend}")
        results[backend] = {"build_s": wall, "build_rss": rss, "disk": _dir_bytes(index)}
    make_queries(workdir, workdir / "index-faiss", args.queries)
    for backend in ("faiss", "milvus"):
        out = workdir / f"answers-{backend}.json"
        wall, rss, _ = _run([__file__, "--child", workdir / f"index-{backend}", workdir / "queries.npz", out],
                            f"identify on {backend}")
        found = json.loads(out.read_text())
        results[backend].update(query_rss=rss, answers=found["answers"], latencies=np.array(found["latencies"]),
                                load_s=found["load_s"], search=np.array(found["search"]["latencies"]),
                                found=found["search"]["found"], rows_fetched=found["search"]["rows_fetched"])
    store_s, n_segments = store_only(workdir / "index-faiss", workdir)
    kinds = np.load(workdir / "queries.npz")["kinds"]
    faiss_answers, milvus_answers = results["faiss"]["answers"], results["milvus"]["answers"]
    same_top = np.array([a[:2] == b[:2] for a, b in zip(faiss_answers, milvus_answers, strict=True)])
    same_decision = np.array([a[3] == b[3] for a, b in zip(faiss_answers, milvus_answers, strict=True)])
    score_gap = max(abs(a[2] - b[2]) for a, b in zip(faiss_answers, milvus_answers, strict=True))

    print(f"\n## One catalogue, two stores: {args.tracks} generated tracks x {args.track_seconds:g} s, "
          f"{n_segments} segments (flat, shipped model), {len(kinds)} queries")
    print("| store | build (nnfp index build) | store only | build peak RSS | open index | identify p50 | "
          "identify p95 | search p50 | search p95 | identify peak RSS | disk |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for backend in ("faiss", "milvus"):
        r = results[backend]
        name = "faiss (flat)" if backend == "faiss" else "Milvus Lite (FLAT)"
        print(
            f"| {name} | {r['build_s']:.1f} s | {store_s[backend]:.2f} s | {r['build_rss'] / 2**20:.0f} MB | "
            f"{r['load_s']:.2f} s | {1000 * np.percentile(r['latencies'], 50):.1f} ms | "
            f"{1000 * np.percentile(r['latencies'], 95):.1f} ms | {1000 * np.percentile(r['search'], 50):.1f} ms | "
            f"{1000 * np.percentile(r['search'], 95):.1f} ms | {r['query_rss'] / 2**20:.0f} MB | {r['disk'] / 2**20:.1f} MB |"
        )
    print("\n| queries | n | Milvus top-1 = faiss top-1 (track, offset) | same decision | faiss p50 | Milvus p50 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind in [*dict.fromkeys(kinds.tolist()), "all"]:
        mask = np.ones(len(kinds), bool) if kind == "all" else kinds == kind
        print(
            f"| {kind} | {mask.sum()} | {100 * same_top[mask].mean():.1f} % | {100 * same_decision[mask].mean():.1f} % | "
            f"{1000 * np.median(results['faiss']['latencies'][mask]):.1f} ms | "
            f"{1000 * np.median(results['milvus']['latencies'][mask]):.1f} ms |"
        )
    print(f"largest top-1 score difference: {score_gap:.2e}; search (10 s queries of noisy DB rows, no model) "
          f"found at their row: faiss {100 * results['faiss']['found']:.0f} %, Milvus {100 * results['milvus']['found']:.0f} % "
          f"({results['milvus']['rows_fetched']:.0f} rows fetched by id per query)")


# ------------------------------------------------------------------ part 2: synthetic scale on Milvus Lite


def synthetic_build(n, workdir):
    """n random unit vectors into a Milvus Lite HNSW collection (`FingerprintDB.build`), saved."""
    from nnfp.store.db import FingerprintDB
    from nnfp.store.milvus import LITE_FILE, MilvusTarget

    index_dir = workdir / f"synthetic-{n}"
    work = workdir / f"synthetic-{n}.work"
    shutil.rmtree(index_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = np.lib.format.open_memmap(work / "store.npy", mode="w+", dtype=np.float32, shape=(n, D))
    rng = np.random.default_rng(0)
    for first in range(0, n, 500_000):
        x = rng.standard_normal((min(500_000, n - first), D), dtype=np.float32)
        store[first : first + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    store.flush()
    n_tracks = -(-n // TRACK_SEGMENTS)
    tracks = [{"track_id": i, "path": f"random/{i:07d}.wav", "duration_s": 180.0} for i in range(n_tracks)]
    started = time.perf_counter()
    db = FingerprintDB.build(
        store, (np.arange(n) // TRACK_SEGMENTS).astype(np.int32),
        (0.5 * (np.arange(n) % TRACK_SEGMENTS)).astype(np.float32), tracks, index_type="hnsw", hnsw_m=16,
        ef_search=64, milvus=MilvusTarget(None, "nnfp_synthetic", work / LITE_FILE, replace=True),
    )
    insert_s = time.perf_counter() - started
    db.save(index_dir)
    db.close()
    shutil.rmtree(work)
    print(json.dumps({"insert_s": insert_s, "total_s": time.perf_counter() - started}))


def child_synthetic(index_dir, n_queries, out_path):
    from nnfp.store.db import FingerprintDB

    started = time.perf_counter()
    db = FingerprintDB.load(index_dir, threads=1)
    load_s = time.perf_counter() - started
    found = search_latencies(db, n_queries, seed=1)
    Path(out_path).write_text(json.dumps({**found, "load_s": load_s}))


def synthetic_part(args, workdir):
    n = _parse_size(args.synthetic)
    wall, build_rss, out = _run([__file__, "--synthetic-build", n, workdir], f"synthetic build of {n}")
    built = json.loads(out.strip().splitlines()[-1])
    index_dir = workdir / f"synthetic-{n}"
    out_path = workdir / f"synthetic-{n}.json"
    _, query_rss, _ = _run([__file__, "--child-synthetic", index_dir, args.synthetic_queries, out_path], "synthetic queries")
    found = json.loads(out_path.read_text())
    latencies = np.array(found["latencies"])
    print(f"\n## Synthetic scale on Milvus Lite: {n} random 128-d segments, HNSW (M=16, ef 64), 10 s queries (19 segments)")
    print("| segments | insert + index | rows/s | build peak RSS | disk | open | query p50 | query p95 | "
          "query peak RSS | top-1 found |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {n:,} | {built['total_s']:.0f} s | {n / built['insert_s']:,.0f} | {build_rss / 2**30:.2f} GB | "
        f"{_dir_bytes(index_dir) / 2**30:.2f} GB | {found['load_s']:.1f} s | {1000 * np.percentile(latencies, 50):.0f} ms | "
        f"{1000 * np.percentile(latencies, 95):.0f} ms | {query_rss / 2**30:.2f} GB | {100 * found['found']:.0f} % |"
    )
    if "rows_fetched" in found:
        print(f"rows fetched by id per query: {found['rows_fetched']:.0f}")


def main():
    if sys.argv[1:2] == ["--child"]:
        return child_identify(*sys.argv[2:5])
    if sys.argv[1:2] == ["--synthetic-build"]:
        return synthetic_build(int(sys.argv[2]), Path(sys.argv[3]))
    if sys.argv[1:2] == ["--child-synthetic"]:
        return child_synthetic(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=300)
    parser.add_argument("--track-seconds", type=float, default=30.0)
    parser.add_argument("--queries", type=int, default=60, help="degraded catalogue queries per length (1, 3, 10 s)")
    parser.add_argument("--synthetic", default="1M", help="segments of the synthetic Milvus Lite run (0: skip)")
    parser.add_argument("--synthetic-queries", type=int, default=200)
    parser.add_argument("--workdir", default="/tmp/nnfp-store-bench")
    parser.add_argument("--skip-catalogue", action="store_true")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not args.skip_catalogue:
        catalogue_part(args, workdir)
    if _parse_size(args.synthetic):
        synthetic_part(args, workdir)


if __name__ == "__main__":
    main()
