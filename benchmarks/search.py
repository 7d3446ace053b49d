"""Search at scale: build time, bytes per segment, query latency, recall; fingerprinting throughput.

    python benchmarks/search.py [--sizes 1M,10M] [--model runs/demo] [--workdir /tmp/nnfp-bench]

1. Scale (random unit vectors, d=128, tracks of 360 segments = 3 min): for each size an
   IVF-PQ `FingerprintDB` is built from a memory-mapped store written in chunks (never
   the whole float32 matrix in RAM), saved, then reopened in a fresh process that
   measures its RAM (anonymous RSS delta: faiss index + segment tables; the exact
   vectors stay on disk, memory-mapped) and the p50/p95 latency of 10 s queries
   (19 segments: faiss search + offset compensation + exact re-scoring) on one thread.
2. Recall: the embedded corpus fingerprinted by a real model; top-1 of IVF-PQ / IVF /
   HNSW sequence search compared with exact flat search, for degraded 10 s and 1 s queries.
3. Fingerprinting throughput on CPU (seconds of audio per second, 0.5 s hop) for the
   demo (width 0.25) and paper (width 1.0) models.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

D = 128
TRACK_SEGMENTS = 360
QUERY_SEGMENTS = 19


def _parse_size(text):
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if text[-1] in "KM" else text) * scale)


def _scale_params(n):
    # ~sqrt(N)-ish lists, rounded to a power of two; 64 training points per list.
    nlist = 1024 if n <= 2_000_000 else 4096
    return {"nlist": nlist, "m": 16, "nbits": 8, "nprobe": 16, "train_size": 64 * nlist}


def _status_kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _dir_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class _PeakAnon:
    """Samples the anonymous RSS (heap, not page cache / mapped files) in a thread."""

    def __enter__(self):
        self.peak_kb, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb("RssAnon"))
            time.sleep(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build_random(n, workdir, threads):
    """Writes n random unit vectors in chunks to a memmap, builds + saves an IVF-PQ DB."""
    from nnfp.store.db import FingerprintDB

    with _PeakAnon() as peak:
        info = _build_random(n, workdir, threads, FingerprintDB)
    info["peak_anon_gb"] = peak.peak_kb / 2**20
    return info


def _build_random(n, workdir, threads, FingerprintDB):
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    store_path = workdir / f"store-{n}.npy"
    started = time.perf_counter()
    store = np.lib.format.open_memmap(store_path, mode="w+", dtype=np.float32, shape=(n, D))
    rng = np.random.default_rng(0)
    chunk = 500_000
    for first in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - first), D), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        store[first : first + len(x)] = x
    store.flush()
    generate_s = time.perf_counter() - started
    n_tracks = -(-n // TRACK_SEGMENTS)
    segment_track = (np.arange(n) // TRACK_SEGMENTS).astype(np.int32)
    segment_start = (0.5 * (np.arange(n) % TRACK_SEGMENTS)).astype(np.float32)
    tracks = [
        {"track_id": i, "path": f"random/{i:07d}.wav", "duration_s": 180.0} for i in range(n_tracks)
    ]
    params = _scale_params(n)
    started = time.perf_counter()
    db = FingerprintDB.build(
        store, segment_track, segment_start, tracks, index_type="ivfpq", threads=threads, **params
    )
    built_s = time.perf_counter() - started
    index_dir = workdir / f"db-{n}"
    db.save(index_dir)
    save_s = time.perf_counter() - started - built_s
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    del db, store, segment_track, segment_start, tracks
    store_path.unlink()
    return {
        "generate_s": generate_s,
        "build_s": built_s,
        "save_s": save_s,
        "peak_rss_gb": peak_rss_gb,
        "index_dir": str(index_dir),
        "params": params,
    }


def measure(index_dir, n_queries, seed=1):
    """In a fresh process: RAM of the opened DB and single-thread latency of 19-segment queries."""
    import faiss

    from nnfp.store.db import FingerprintDB

    faiss.omp_set_num_threads(1)
    anon0, file0 = _status_kb("RssAnon"), _status_kb("RssFile")
    db = FingerprintDB.load(index_dir, mmap=True, threads=1)
    anon1, file1 = _status_kb("RssAnon"), _status_kb("RssFile")
    rng = np.random.default_rng(seed)
    latencies, hits = [], 0
    for q in range(n_queries + 20):
        track = int(rng.integers(db.segment_track[-1] + 1))
        row = track * TRACK_SEGMENTS + int(rng.integers(TRACK_SEGMENTS - QUERY_SEGMENTS))
        clean = np.asarray(db.embeddings[row : row + QUERY_SEGMENTS])
        # A degraded copy: cosine ~0.7 to its source, like a noisy 0-10 dB query.
        noise = rng.standard_normal(clean.shape).astype(np.float32)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        query = 0.7 * clean + 0.71 * noise
        query /= np.linalg.norm(query, axis=1, keepdims=True)
        started = time.perf_counter()
        match = db.search(query, k_probe=20, n_results=1)
        elapsed = time.perf_counter() - started
        if q >= 20:  # warm-up excluded
            latencies.append(elapsed)
            hits += bool(match) and match[0].segment_index == row
    anon2, file2 = _status_kb("RssAnon"), _status_kb("RssFile")
    return {
        "n_segments": db.n_segments,
        "ram_anon_gb": (anon2 - anon0) / 2**20,
        "ram_file_gb": (file2 - file0) / 2**20,
        "ram_after_load_gb": (anon1 - anon0 + file1 - file0) / 2**20,
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "top1_found": hits / max(1, len(latencies)),
    }


def recall(model, n_queries, seed=0):
    """Top-1 agreement of approximate indexes with exact flat search on real fingerprints."""
    from nnfp.audio.io import load_audio
    from nnfp.audio.sources import list_audio_files, load_tracks
    from nnfp.catalogue.fingerprint import fingerprint_tracks
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.queries import synthesize_queries
    from nnfp.config import CONFIG_DIR, load_config
    from nnfp.store.db import FingerprintDB
    from nnfp.training import build_model, embedded_corpus

    config = load_config(CONFIG_DIR / "demo.yaml")
    corpus = embedded_corpus(config)
    if model is None:
        from nnfp.runtime import _KerasFingerprinter

        embedder, label = _KerasFingerprinter(build_model(config)), "random-init demo model (no --model, no runs/demo)"
    else:
        from nnfp.runtime import load_fingerprinter

        embedder, label = load_fingerprinter(model), str(model)
    tracks, paths, _ = load_tracks(list_audio_files(corpus.music_dir))
    embeddings, owners, starts = fingerprint_tracks(embedder, tracks, 4000)
    table = [{"track_id": i, "path": p.name, "duration_s": len(t) / 8000} for i, (p, t) in enumerate(zip(paths, tracks, strict=True))]
    first_rows = {i: int(np.flatnonzero(owners == i)[0]) for i in range(len(tracks))}
    waves, _ = synthesize_queries(
        {i: len(t) / 8000 for i, t in enumerate(tracks)}, lambda i: load_audio(paths[i]), first_rows,
        n_queries, sample_rate=8000, seconds=10.0, seed=seed,
    )
    dbs = {
        name: FingerprintDB.build(embeddings, owners, starts / 8000, table, index_type=name, threads=1, **kw)
        for name, kw in (("flat", {}), ("ivfpq", {"m": 16, "nbits": 8, "nprobe": 16}), ("ivf", {"nprobe": 16}), ("hnsw", {}))
    }
    identifier = Identifier(None, min_score=None, db=dbs["flat"], embedder=embedder)
    fingerprints = [identifier.fingerprint(w) for w in waves]
    rows = {}
    for name, db in dbs.items():
        rows[name] = {
            n: np.array([(db.search(f[:n], k_probe=20, n_results=1) or [None])[0].segment_index for f in fingerprints])
            for n in (1, QUERY_SEGMENTS)
        }
    agreement = {
        name: {n: 100 * float(np.mean(rows[name][n] == rows["flat"][n])) for n in (1, QUERY_SEGMENTS)}
        for name in dbs if name != "flat"
    }
    return {"model": label, "n_segments": len(embeddings), "params": {k: v.index_params for k, v in dbs.items()}, "agreement": agreement}


def throughput(seconds=60.0, batch_size=128):
    from nnfp.catalogue.fingerprint import fingerprint_tracks
    from nnfp.config import CONFIG_DIR, load_config
    from nnfp.corpus.synth import compose_track
    from nnfp.runtime import _KerasFingerprinter
    from nnfp.training import build_model

    audio = compose_track(1, seconds, 8000)
    results = {}
    for name, path in (("demo (width 0.25)", CONFIG_DIR / "demo.yaml"), ("paper (width 1.0)", CONFIG_DIR / "default.yaml")):
        embedder = _KerasFingerprinter(build_model(load_config(path)))
        fingerprint_tracks(embedder, [audio[: 8000 * 8]], 4000, batch_size)  # trace and warm up
        fingerprint_tracks(embedder, [audio], 4000, batch_size)
        started = time.perf_counter()
        emb, _, _ = fingerprint_tracks(embedder, [audio], 4000, batch_size)
        elapsed = time.perf_counter() - started
        results[name] = {"audio_s_per_s": seconds / elapsed, "segments_per_s": len(emb) / elapsed}
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M", help="comma-separated DB sizes in segments")
    parser.add_argument("--queries", type=int, default=300, help="latency queries per size")
    parser.add_argument("--recall-queries", type=int, default=300)
    parser.add_argument("--model", default=None, help="model for the recall check (default: runs/demo if present)")
    parser.add_argument("--workdir", default="/tmp/nnfp-bench", help="scratch folder (about 5.5 GB per 10M segments)")
    parser.add_argument("--threads", type=int, default=2, help="faiss threads for building")
    parser.add_argument("--keep", action="store_true", help="keep the built databases")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: scale,recall,throughput")
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(args._measure, args.queries)))
        return
    skip = set(filter(None, args.skip.split(",")))
    lines = []

    if "scale" not in skip:
        lines += [
            "Scale: IVF-PQ on random unit vectors (d=128), 10 s queries = 19 segments, 1 search thread",
            f"{'segments':>10} {'audio':>8} {'params':>28} {'gen s':>6} {'build s':>8} {'save s':>7} "
            f"{'disk B/seg':>10} {'(faiss)':>8} {'RAM B/seg':>9} {'RAM GB':>7} {'+pages GB':>9} {'p50 ms':>7} {'p95 ms':>7} {'found':>6}",
        ]
        for size in [_parse_size(s) for s in args.sizes.split(",")]:
            info = build_random(size, args.workdir, args.threads)
            out = subprocess.run(
                [sys.executable, __file__, "--_measure", info["index_dir"], "--queries", str(args.queries)],
                check=True, capture_output=True, text=True,
            ).stdout
            m = json.loads(out.strip().splitlines()[-1])
            disk = _dir_bytes(info["index_dir"]) / size
            faiss_disk = (Path(info["index_dir"]) / "index.faiss").stat().st_size / size
            p = info["params"]
            params = f"nlist={p['nlist']} PQ{p['m']}x{p['nbits']} nprobe={p['nprobe']}"
            lines.append(
                f"{size:>10} {size * 0.5 / 3600:>7.0f}h {params:>28} {info['generate_s']:>6.0f} {info['build_s']:>8.0f} "
                f"{info['save_s']:>7.0f} {disk:>10.0f} {faiss_disk:>8.0f} {m['ram_anon_gb'] * 2**30 / size:>9.0f} "
                f"{m['ram_anon_gb']:>7.2f} {m['ram_file_gb']:>9.2f} {m['p50_ms']:>7.2f} {m['p95_ms']:>7.2f} {100 * m['top1_found']:>5.0f}%"
            )
            lines.append(
                f"{'':>10} build: peak heap {info['peak_anon_gb']:.2f} GB (peak RSS {info['peak_rss_gb']:.1f} GB "
                "counting the mapped store pages it wrote and read)"
            )
            print("\n".join(lines[-2:]), flush=True)
            if not args.keep:
                shutil.rmtree(info["index_dir"], ignore_errors=True)
        lines += [
            "  RAM = heap (anonymous RSS) growth of a fresh process after opening the DB and running the",
            "  queries: faiss codes + ids + centroids + segment tables. The exact vectors (512 B/segment) stay",
            "  on disk, memory-mapped; '+pages' is the page cache those queries touched (shared, reclaimable).",
            "  found = exact top-1 of a synthetic degraded query (cosine 0.7 to its source).",
            "",
        ]

    if "recall" not in skip:
        model = args.model or ("runs/demo" if Path("runs/demo/model.keras").exists() else None)
        r = recall(model, args.recall_queries)
        lines.append(f"Recall: top-1 agreement with exact flat search, real fingerprints of the embedded corpus ({r['n_segments']} segments)")
        lines.append(f"  model: {r['model']}; {args.recall_queries} degraded queries (0-10 dB noise + room IR)")
        lines.append(f"{'index':>8} {'params':>40} {'1 s (1 seg)':>12} {'10 s (19 seg)':>14}")
        for name, agreement in r["agreement"].items():
            lines.append(f"{name:>8} {json.dumps(r['params'][name]):>40} {agreement[1]:>11.1f}% {agreement[QUERY_SEGMENTS]:>13.1f}%")
        lines.append("")

    if "throughput" not in skip:
        t = throughput()
        lines.append("Fingerprinting throughput (CPU, batch 128, 0.5 s hop, random-init weights)")
        for name, v in t.items():
            lines.append(f"  {name:<20} {v['audio_s_per_s']:>8.1f} s of audio / s   ({v['segments_per_s']:.0f} segments / s)")
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
