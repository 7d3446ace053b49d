"""`nnfp serve` under load: throughput and latency with 1, 4 and 8 clients, memory over many
requests, and queries answered while tracks are added and removed.

    python benchmarks/serve.py [--quick] [--seconds 30] [--requests 10000] [--levels 1 4 8]
                               [--tracks 20] [--track-seconds 30] [--out DIR] [--keep] [--seed 0]

Everything is generated into a work folder (`--out`, which it creates: it must not exist or
be empty; default a temporary folder, removed at the end unless `--keep`; a folder it did
not create is never removed): `--tracks` tracks of `--track-seconds`
(`nnfp.corpus.synth.compose_track`, 8 kHz, 16-bit WAV with soundfile), indexed by
`nnfp index build MUSIC IDX --quiet` (the packaged model, LiteRT). Queries are 5 s excerpts
at random sample offsets, half of them under white noise at 5-15 dB SNR, sent as WAV uploads
(`POST /identify`) by client threads, each with its own `httpx.Client` (keep-alive). An
answer is right when its first match is the excerpt's track at an offset within 0.5 s.

Each part runs its own server, `nnfp serve IDX --port 0 --token TOKEN` in a fresh process
(stderr, uvicorn's log with a line per request, in `server-*.log`), warmed by a few untimed
queries; its memory is read from `/proc/PID/status` (`VmRSS` now, `VmHWM` its peak since
it started).

1. Load: 1, 4 and 8 clients (`--levels`), each posting queries back to back for
   `--seconds`, one server per level: requests/s, p50/p95 latency, errors (non-200 or no
   answer), right answers, the server's peak RSS.
2. Memory: 4 clients send `--requests` queries in all; the server's RSS after the first
   500 (warm) and at checkpoints up to the last, and the growth from the warm figure
   (target <= 5 %).
3. Changes: 4 clients query a copy of the index while another thread adds a track
   (`POST /tracks`, bearer token) and removes one (`DELETE /tracks/{id}`), a few times,
   a few seconds apart. A third of the queries are cut from the tracks being removed and a
   sixth from those being added. Reported: requests/s, p95 (all queries, and those
   answered while a change was running), errors (must be 0), and the two promises of
   `Catalogue`: no query sent after a removal returned names the removed track (in any
   match), and every query of an added track sent after its addition returned finds it.

`--quick` (smoke run): 6 s per level, 1,000 requests, one add and one delete.
Tables are printed as markdown and written to `DIR/results.md` (figures in `results.json`).
"""

import argparse
import io
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
QUERY_SECONDS = 5.0
OFFSET_TOLERANCE_S = 0.5
WARM_REQUESTS = 500
TOKEN = "benchmark-token-0123456789"
CLIENT_TIMEOUT_S = 120.0


# ----------------------------------------------------------------------------- audio


def wav_bytes(audio):
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def add_noise(rng, audio, snr_db):
    noise = rng.standard_normal(len(audio))
    rms = np.sqrt(np.mean(np.square(audio))) or 1e-3
    noise *= rms / np.sqrt(np.mean(np.square(noise))) * 10.0 ** (-snr_db / 20.0)
    return (audio + noise).astype(np.float32)


def make_queries(rng, tracks, names, n):
    """`n` 5 s excerpts of `tracks[name]` for names drawn from `names`, half under noise:
    dicts (name, wav, track, offset_s, snr_db)."""
    queries = []
    length = int(QUERY_SECONDS * RATE)
    for i in range(n):
        track = names[int(rng.integers(len(names)))]
        audio = tracks[track]
        start = int(rng.integers(0, len(audio) - length + 1))
        excerpt = audio[start : start + length]
        snr_db = float(rng.uniform(5.0, 15.0)) if i % 2 else None
        if snr_db is not None:
            excerpt = add_noise(rng, excerpt, snr_db)
        queries.append({
            "name": f"q{i:04d}.wav", "wav": wav_bytes(excerpt), "track": track,
            "offset_s": start / RATE, "snr_db": snr_db,
        })
    return queries


def is_right(query, answer):
    matches = answer.get("matches") or []
    return bool(matches) and matches[0]["track"] == query["track"] and (
        abs(matches[0]["offset_s"] - query["offset_s"]) <= OFFSET_TOLERANCE_S
    )


# ----------------------------------------------------------------------------- the server


def memory_kb(pid):
    """{"VmRSS": kB, "VmHWM": kB} of process `pid`."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(":", 1)[0]
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(line.split()[1])
    return found


class Server:
    """`nnfp serve INDEX --port 0 --token TOKEN` in a fresh process, its log in `log_path`."""

    def __init__(self, index, log_path):
        self.log_path = Path(log_path)
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        began = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nnfp.cli", "serve", str(index), "--port", "0", "--token", TOKEN],
            stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT,
        )
        self.url = None
        deadline = time.monotonic() + 180
        while self.url is None:
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                sys.exit(f"nnfp serve did not start; its log:\n{self.log_path.read_text()[-3000:]}")
            ready, _, _ = select.select([self.process.stdout], [], [], 1.0)
            if ready:
                line = self.process.stdout.readline()
                if line.startswith("serving "):
                    self.url = line.split(" on ", 1)[1].strip()
        self.start_seconds = time.perf_counter() - began

    @property
    def pid(self):
        return self.process.pid

    def memory_mb(self):
        return {key: kb / 1024 for key, kb in memory_kb(self.pid).items()}

    def stop(self):
        """SIGTERM, then the log's tracebacks (a list of their last lines)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        text = self.log_path.read_text(errors="replace")
        return [block.strip().splitlines()[-1] for block in text.split("Traceback")[1:]]


# ----------------------------------------------------------------------------- clients


class Load:
    """Client threads posting queries to `url` until `stop()` is true: each result is a dict
    (query, sent, answered, status, answer or error), appended to `results`."""

    def __init__(self, url, queries, clients, pick=None):
        self.url, self.queries, self.clients = url, queries, clients
        self.pick = pick or (lambda rng: queries[int(rng.integers(len(queries)))])
        self.results = []
        self._lock = threading.Lock()

    def run(self, stop, seed=0):
        """Runs the clients until `stop(n_sent)` is true; the wall seconds it took."""
        import httpx

        sent = [0]

        def client(i):
            rng = np.random.default_rng([seed, i])
            with httpx.Client(base_url=self.url, timeout=CLIENT_TIMEOUT_S) as http:
                while True:
                    with self._lock:
                        if stop(sent[0]):
                            return
                        sent[0] += 1
                    query = self.pick(rng)
                    result = {"query": query, "sent": time.perf_counter()}
                    try:
                        response = http.post("/identify", files={"file": (query["name"], query["wav"], "audio/wav")})
                        result["status"] = response.status_code
                        if response.status_code == 200:
                            result["answer"] = response.json()
                        else:
                            result["error"] = f"{response.status_code}: {response.text[:200]}"
                    except Exception as error:  # counted as an error, the client goes on
                        result["status"] = None
                        result["error"] = f"{type(error).__name__}: {error}"
                    result["answered"] = time.perf_counter()
                    with self._lock:
                        self.results.append(result)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(self.clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - began


def warm_up(url, queries, n=8):
    Load(url, queries, clients=4).run(lambda sent: sent >= n, seed=12345)


def summarise(results, seconds):
    latencies = np.array([r["answered"] - r["sent"] for r in results]) * 1000.0
    ok = [r for r in results if r["status"] == 200]
    errors = len(results) - len(ok)
    right = sum(is_right(r["query"], r["answer"]) for r in ok)
    return {
        "requests": len(results), "seconds": seconds, "rps": len(results) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        "p95_ms": float(np.percentile(latencies, 95)) if len(latencies) else float("nan"),
        "errors": errors, "right": right, "right_rate": right / len(ok) if ok else float("nan"),
        "error_samples": sorted({r["error"] for r in results if "error" in r})[:5],
        "wrong_samples": [
            {"track": r["query"]["track"], "offset_s": r["query"]["offset_s"], "snr_db": r["query"]["snr_db"],
             "first_match": (r["answer"]["matches"] or [None])[0]}
            for r in ok if not is_right(r["query"], r["answer"])
        ][:10],
    }


# ----------------------------------------------------------------------------- parts


def part_load(work, index, queries, levels, seconds, out):
    rows = []
    for clients in levels:
        server = Server(index, work / f"server-load-{clients}.log")
        try:
            warm_up(server.url, queries)
            load = Load(server.url, queries, clients)
            deadline = time.perf_counter() + seconds
            wall = load.run(lambda sent, end=deadline: time.perf_counter() >= end, seed=clients)
            memory = server.memory_mb()
        finally:
            tracebacks = server.stop()
        summary = summarise(load.results, wall)
        summary.update(clients=clients, peak_rss_mb=memory["VmHWM"], rss_mb=memory["VmRSS"],
                       tracebacks=tracebacks, start_s=server.start_seconds, load_average=os.getloadavg()[0])
        rows.append(summary)
        print(f"  {clients} client(s): {summary['requests']} requests in {wall:.1f} s, "
              f"{summary['errors']} errors, peak RSS {memory['VmHWM']:.0f} MB", file=sys.stderr, flush=True)
    out["load"] = rows
    return table(
        f"Load: 5 s WAV queries (half under 5-15 dB noise) posted back to back for {seconds:g} s "
        "per level, one fresh server per level",
        ["clients", "requests", "requests/s", "p50 (ms)", "p95 (ms)", "errors", "right answers",
         "server peak RSS (MB)", "load avg (1 min)"],
        [[r["clients"], r["requests"], f"{r['rps']:.1f}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", r["errors"],
          f"{r['right']}/{r['requests'] - r['errors']} ({100 * r['right_rate']:.1f} %)", f"{r['peak_rss_mb']:.0f}", f"{r['load_average']:.1f}"]
         for r in rows],
    )


def part_memory(work, index, queries, n_requests, out):
    warm = min(WARM_REQUESTS, n_requests // 2)
    step = 1000 if n_requests >= 5000 else 100
    checkpoints = [warm] + [c for c in range(step, n_requests, step) if c > warm] + [n_requests]
    server = Server(index, work / "server-memory.log")
    results, rows = [], []
    try:
        warm_up(server.url, queries)
        load = Load(server.url, queries, clients=4)
        done, wall = 0, 0.0
        for checkpoint in checkpoints:
            # The clients stop at each checkpoint so RSS is read with no request running.
            wall += load.run(lambda sent, n=checkpoint - done: sent >= n, seed=checkpoint)
            done = checkpoint
            memory = server.memory_mb()
            rows.append({"requests": done, "rss_mb": memory["VmRSS"], "hwm_mb": memory["VmHWM"]})
            print(f"  {done} requests: RSS {memory['VmRSS']:.1f} MB (peak {memory['VmHWM']:.1f})",
                  file=sys.stderr, flush=True)
        results = load.results
    finally:
        tracebacks = server.stop()
    summary = summarise(results, wall)
    base = rows[0]["rss_mb"]
    for row in rows:
        row["growth_pct"] = 100.0 * (row["rss_mb"] - base) / base
    out["memory"] = {"checkpoints": rows, "summary": summary, "tracebacks": tracebacks}
    text = table(
        f"Memory: 4 clients, {n_requests:,} requests in all; the server's RSS with no request running "
        f"(growth from the RSS after the first {warm} requests; target <= 5 %)",
        ["requests answered", "RSS (MB)", "peak RSS (MB)", "growth from warm"],
        [[f"{r['requests']:,}", f"{r['rss_mb']:.1f}", f"{r['hwm_mb']:.1f}", f"{r['growth_pct']:+.2f} %"]
         for r in rows],
    )
    text += (
        f"\n{summary['requests']:,} requests in {wall:.0f} s ({summary['rps']:.1f}/s), p50 "
        f"{summary['p50_ms']:.0f} ms, p95 {summary['p95_ms']:.0f} ms, {summary['errors']} errors, "
        f"{summary['right']}/{summary['requests'] - summary['errors']} right answers; RSS growth "
        f"{rows[-1]['growth_pct']:+.2f} % ({'within' if rows[-1]['growth_pct'] <= 5.0 else 'OVER'} the 5 % target)\n"
    )
    print(text.splitlines()[-1])
    return text


def part_changes(work, index, tracks, names, rounds, rng, out):
    """Adds track `new_r` and removes catalogue track `victims[r]` for r < rounds, under load."""
    import httpx

    changed_index = work / "index-changes"
    shutil.copytree(index, changed_index)
    new_tracks = {f"new_{r}.wav": compose(5000 + r, len(tracks[names[0]]) / RATE) for r in range(rounds)}
    victims = names[-rounds:]  # removed: the last catalogue tracks
    steady = names[: len(names) - rounds]
    all_tracks = {**tracks, **new_tracks}
    pools = {
        "steady": make_queries(rng, tracks, steady, 64),
        "removed": make_queries(rng, tracks, victims, 32),
        "added": make_queries(rng, all_tracks, sorted(new_tracks), 32),
    }

    def pick(client_rng):
        draw = client_rng.random()
        pool = pools["steady"] if draw < 0.5 else pools["removed"] if draw < 0.5 + 1 / 3 else pools["added"]
        return pool[int(client_rng.integers(len(pool)))]

    server = Server(changed_index, work / "server-changes.log")
    changes, finished = [], threading.Event()
    try:
        warm_up(server.url, pools["steady"])
        ids = {t["track"]: t["id"] for t in httpx.get(f"{server.url}/tracks", timeout=60).json()["tracks"]}
        auth = {"Authorization": f"Bearer {TOKEN}"}

        def change_all():
            try:
                with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S, headers=auth) as http:
                    for r in range(rounds):
                        time.sleep(3.0)
                        name = f"new_{r}.wav"
                        began = time.perf_counter()
                        response = http.post("/tracks", files={"file": (name, wav_bytes(new_tracks[name]))})
                        changes.append({"kind": "add", "track": name, "began": began, "ended": time.perf_counter(),
                                        "status": response.status_code, "body": response.json()})
                        time.sleep(3.0)
                        began = time.perf_counter()
                        response = http.delete(f"/tracks/{ids[victims[r]]}")
                        changes.append({"kind": "delete", "track": victims[r], "began": began,
                                        "ended": time.perf_counter(), "status": response.status_code,
                                        "body": response.json()})
                    time.sleep(3.0)  # queries after the last change
            finally:
                finished.set()

        changer = threading.Thread(target=change_all, daemon=True)
        load = Load(server.url, None, clients=4, pick=pick)
        changer.start()
        wall = load.run(lambda sent: finished.is_set())
        changer.join()
        listed = {t["track"] for t in httpx.get(f"{server.url}/tracks", timeout=60).json()["tracks"]}
    finally:
        tracebacks = server.stop()

    results = load.results
    removed_at = {c["track"]: c["ended"] for c in changes if c["kind"] == "delete" and c["status"] == 200}
    added_at = {c["track"]: c["ended"] for c in changes if c["kind"] == "add" and c["status"] == 201}
    windows = [(c["began"], c["ended"]) for c in changes]
    ok = [r for r in results if r["status"] == 200]

    def names_in(r):
        return {m["track"] for m in r["answer"]["matches"]}

    after_removal = [r for r in ok if r["query"]["track"] in removed_at and r["sent"] > removed_at[r["query"]["track"]]]
    stale = [r for r in after_removal if r["query"]["track"] in names_in(r)]
    after_add = [r for r in ok if r["query"]["track"] in added_at and r["sent"] > added_at[r["query"]["track"]]]
    found = [r for r in after_add if is_right(r["query"], r["answer"])]
    found_track = [r for r in after_add if r["answer"]["matches"] and r["answer"]["matches"][0]["track"] == r["query"]["track"]]
    before_removal = [r for r in ok if r["query"]["track"] in victims
                      and r["answered"] < removed_at.get(r["query"]["track"], float("inf"))]
    steady_ok = [r for r in ok if r["query"]["track"] in steady]
    during = [r for r in results if any(r["sent"] < end and r["answered"] > begin for begin, end in windows)]
    summary = summarise(results, wall)
    during_summary = summarise(during, wall) if during else None
    change_errors = [c for c in changes if c["status"] not in (200, 201)]
    out["changes"] = {
        "summary": summary, "during": during_summary, "tracebacks": tracebacks,
        "changes": [{k: v for k, v in c.items() if k not in ("began", "ended")} | {"seconds": c["ended"] - c["began"]}
                    for c in changes],
        "after_removal": len(after_removal), "stale": len(stale), "after_add": len(after_add), "found": len(found),
        "found_track": len(found_track), "listed_ok": listed.isdisjoint(removed_at) and set(added_at) <= listed,
    }
    text = table(
        f"Changes: 4 clients querying while {rounds} track(s) are added (POST /tracks) and "
        f"{rounds} removed (DELETE /tracks/ID), 3 s apart",
        ["queries", "requests", "requests/s", "p50 (ms)", "p95 (ms)", "errors"],
        [["all, whole run", summary["requests"], f"{summary['rps']:.1f}", f"{summary['p50_ms']:.0f}",
          f"{summary['p95_ms']:.0f}", summary["errors"]]]
        + ([["in flight during a change", during_summary["requests"], "", f"{during_summary['p50_ms']:.0f}",
             f"{during_summary['p95_ms']:.0f}", during_summary["errors"]]] if during_summary else []),
    )
    text += table(
        "Changes, one by one",
        ["change", "track", "status", "seconds"],
        [[c["kind"], c["track"], c["status"], f"{c['ended'] - c['began']:.2f}"] for c in changes],
    )
    text += table(
        "Changes: what the queries saw",
        ["check", "result"],
        [
            ["queries of a removed track sent after its DELETE returned",
             f"{len(after_removal)}; {len(stale)} named it ({'never answered: OK' if not stale else 'STALE ANSWERS'})"],
            ["queries of an added track sent after its POST returned",
             f"{len(after_add)}; right track {len(found_track)}, right track and offset {len(found)} "
             f"({'all found: OK' if len(found_track) == len(after_add) else 'SOME NOT FOUND'})"],
            ["queries of tracks still in the index (right track and offset)",
             f"{sum(is_right(r['query'], r['answer']) for r in steady_ok)}/{len(steady_ok)}"],
            ["queries of a track to be removed, answered before its removal (right)",
             f"{sum(is_right(r['query'], r['answer']) for r in before_removal)}/{len(before_removal)}"],
            ["errors (queries / changes)", f"{summary['errors']} / {len(change_errors)}"],
            ["GET /tracks afterwards: removed gone, added listed", "yes" if out["changes"]["listed_ok"] else "NO"],
            ["server tracebacks", len(tracebacks)],
        ],
    )
    if summary["error_samples"]:
        text += "\nquery errors: " + "; ".join(summary["error_samples"]) + "\n"
    return text


# ----------------------------------------------------------------------------- main


def compose(seed, seconds):
    from nnfp.corpus.synth import compose_track

    return compose_track(seed, seconds, RATE)


def table(title, header, rows):
    lines = [f"\n{title}\n", "| " + " | ".join(header) + " |",
             "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def machine():
    import platform

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{model}, {os.cpu_count()} CPU(s) seen, load average {os.getloadavg()[0]:.2f} at the start"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 s per level, 1,000 requests, 1 change each")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load level (default 30; quick 6)")
    parser.add_argument("--requests", type=int, default=None, help="requests of the memory part (default 10000; quick 1000)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8], help="concurrent clients (default 1 4 8)")
    parser.add_argument("--rounds", type=int, default=None, help="adds and deletes under load (default 3; quick 1)")
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--track-seconds", type=float, default=30.0)
    parser.add_argument("--out", default=None, help="work folder it creates (must not exist, or be empty); kept")
    parser.add_argument("--keep", action="store_true", help="keep the default temporary work folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (6.0 if args.quick else 30.0)
    n_requests = args.requests if args.requests is not None else (1000 if args.quick else 10000)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if not 1 <= rounds < args.tracks:
        sys.exit(f"--rounds must be 1..{args.tracks - 1} (tracks are removed from the catalogue)")
    if n_requests < 2:
        sys.exit("--requests must be at least 2")
    try:
        import httpx  # noqa: F401
    except ImportError:
        sys.exit('benchmarks/serve.py needs httpx and the server\'s packages: pip install "nnfp[serve,test]"')

    if args.out:
        work = Path(args.out)
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            sys.exit(f"--out {work}: exists and is not an empty folder; give a new one")
        work.mkdir(parents=True, exist_ok=True)
        remove_after = False
    else:
        work = Path(tempfile.mkdtemp(prefix="nnfp-serve-bench-"))
        remove_after = not args.keep
    conditions = machine()
    print(f"work folder {work}; {conditions}", file=sys.stderr, flush=True)
    rng = np.random.default_rng(args.seed)
    report = {"conditions": conditions, "args": vars(args)}
    try:
        music = work / "music"
        music.mkdir()
        tracks = {}
        for i in range(args.tracks):
            name = f"track_{i:03d}.wav"
            tracks[name] = compose(1000 + i, args.track_seconds)
            sf.write(music / name, tracks[name], RATE, subtype="PCM_16")
        names = sorted(tracks)
        index = work / "index"
        began = time.perf_counter()
        built = subprocess.run(
            [sys.executable, "-m", "nnfp.cli", "index", "build", str(music), str(index), "--quiet"],
            capture_output=True, text=True, cwd=ROOT,
        )
        if built.returncode != 0:
            sys.exit(f"nnfp index build failed ({built.returncode}):\n{built.stderr[-3000:]}")
        print(f"index of {args.tracks} x {args.track_seconds:g} s built in {time.perf_counter() - began:.1f} s",
              file=sys.stderr, flush=True)
        queries = make_queries(rng, tracks, names, 200)

        header = (
            f"# nnfp serve benchmark\n\n{conditions}; {args.tracks} generated tracks x "
            f"{args.track_seconds:g} s, index built by `nnfp index build --quiet` (packaged model, LiteRT); "
            f"client threads on the same machine as the server.\n"
        )
        print(header)
        texts = [header]
        texts.append(part_load(work, index, queries, args.levels, seconds, report))
        texts.append(part_memory(work, index, queries, n_requests, report))
        texts.append(part_changes(work, index, tracks, names, rounds, rng, report))
        report["load_average_end"] = os.getloadavg()
        (work / "results.md").write_text("\n".join(texts))
        (work / "results.json").write_text(json.dumps(report, indent=1, default=str))
        print(f"\nresults in {work}/results.md" + (" (removed: temporary)" if remove_after else ""),
              file=sys.stderr)
    finally:
        if remove_after:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
