"""LiteRT vs TensorFlow: `nnfp identify`, `index build` and `monitor` as whole processes, and
in-process fingerprint throughput, side by side.

    python benchmarks/runtimes.py [--quick] [--out DIR] [--tracks 40] [--track-seconds 60]
                                  [--broadcast-minutes 10] [--pairs 5] [--build-pairs 3]
                                  [--monitor-pairs 3] [--rounds 5] [--segments 1024] [--queries 20]
                                  [--seed 0] [--keep]

Everything is generated (`nnfp.corpus.synth.compose_track`, 8 kHz, written as 16-bit WAV
with soundfile) into a fresh work folder (`--out`, which must be new or empty; default a
temporary folder, removed at the end unless `--keep`):

- a catalogue of `--tracks` tracks of `--track-seconds` (default 40 x 60 s = 40 min);
- `q10.wav`, a 10 s cut of a catalogue track at a random sample offset, and `--queries`
  more 10 s queries for the answer check (half clean, half with white noise at 5-15 dB SNR,
  and a quarter of them cut from music that is not in the catalogue);
- `broadcast.wav`: `--broadcast-minutes` of 20-45 s excerpts of catalogue tracks with 10-25 s
  of unknown music between them, under pink noise at 15 dB SNR.

Each command runs as its own process (`nnfp.cli.main` in a fresh Python, as the `nnfp` script
does), its wall time and own peak RSS read by `_child.run_child` (`VmHWM`); the process also
reports whether TensorFlow was imported. The two runtimes take turns (LiteRT, TensorFlow,
LiteRT, ...) after one untimed warm-up each (page cache, the XLA program cache), so a busy
machine slows both alike; tables give the median (min-max) and the ratio of the medians.

- `index build CATALOGUE IDX --runtime litert|tensorflow --overwrite --quiet` (separate
  folders): wall, audio seconds / wall, the "fingerprinting ran at Nx real time" the command
  prints, and how close the two indexes' stored fingerprints are.
- `identify IDX q10.wav --json --runtime ...` on the LiteRT-built index, and once per runtime
  all the answer-check queries in one process: identical answers means the same tracks and
  offsets in every match, scores within 1e-3.
- `monitor IDX broadcast.wav --json --runtime ...`: wall, broadcast seconds / wall, plays
  found (a play >= 10 s covered >= 50 % by detections of its track), detections equal.
- in this process: `LiteFingerprinter.fingerprint` of the shipped float32 LiteRT model and of a
  float16 export (`nnfp export nnfp/weights/default.keras OUT --format litert --quantize
  float16`) against the TensorFlow fingerprinter (`nnfp.runtime.load_fingerprinter`, XLA, one
  thread per op as the CLI runs it) on the same `--segments` 1 s segments of the catalogue:
  segments/s, x real time at the index's 0.5 s hop, least and mean cosine with TensorFlow, and
  the least over segments above -60 dBFS (dead air, stored as zero rows, is never compared).
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
RATE = 8000
HOP_SECONDS = 0.5
RUNTIMES = ("litert", "tensorflow")
LABEL = {"litert": "LiteRT", "tensorflow": "TensorFlow"}
SCORE_TOLERANCE = 1e-3
# A fresh Python running the CLI as the `nnfp` script does, which says on stderr whether
# TensorFlow was imported (a LiteRT answer must not start it).
CLI = (
    "import sys\n"
    "from nnfp.cli import main\n"
    "try:\n"
    "    rc = main(sys.argv[1:])\n"
    "finally:\n"
    "    print('nnfp-benchmark: tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)
DEFAULTS = {
    "tracks": 40, "track_seconds": 60.0, "queries": 20, "broadcast_minutes": 10.0,
    "pairs": 5, "build_pairs": 3, "monitor_pairs": 3, "rounds": 5, "segments": 1024,
}
QUICK = {
    "tracks": 6, "track_seconds": 30.0, "queries": 4, "broadcast_minutes": 2.0,
    "pairs": 2, "build_pairs": 1, "monitor_pairs": 1, "rounds": 2, "segments": 256,
}


# ----------------------------------------------------------------------------- processes


def nnfp(args):
    """`nnfp ARGS` in a fresh process -> dict(wall, rss, stdout, stderr, tensorflow)."""
    from _child import run_child

    command = [sys.executable, "-c", CLI, *map(str, args)]
    returncode, stdout, stderr, wall, rss = run_child(command, cwd=ROOT, text=True)
    if returncode != 0:
        sys.exit(f"nnfp {' '.join(map(str, args))} failed ({returncode}):\n{stderr[-3000:]}")
    return {
        "wall": wall, "rss": rss, "stdout": stdout, "stderr": stderr,
        "tensorflow": "tensorflow imported: True" in stderr,
    }


def alternate(make_args, pairs, warm_up=True):
    """Runs `make_args(runtime)` for both runtimes in turn: {runtime: [result, ...]} (warm-up dropped)."""
    results = {runtime: [] for runtime in RUNTIMES}
    for i in range(pairs + int(warm_up)):
        for runtime in RUNTIMES:
            result = nnfp(make_args(runtime))
            if i or not warm_up:
                results[runtime].append(result)
            print(f"  {runtime:>10} run {i}{' (warm-up)' if warm_up and not i else ''}: "
                  f"{result['wall']:.2f} s, {result['rss'] / 2**20:.0f} MB", file=sys.stderr, flush=True)
    return results


# ----------------------------------------------------------------------------- tables


def spread(values, fmt):
    values = [float(v) for v in values]
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(np.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def ratio(tensorflow, litert):
    return f"{np.median(tensorflow) / np.median(litert):.2f}×"


def table(title, header, rows):
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def timing_rows(results, seconds=None):
    """Wall, x real time (when `seconds` of audio) and peak RSS rows of `alternate` results."""
    wall = {r: [x["wall"] for x in results[r]] for r in RUNTIMES}
    rss = {r: [x["rss"] / 2**20 for x in results[r]] for r in RUNTIMES}
    rows = [["wall (s)", spread(wall["litert"], "{:.2f}"), spread(wall["tensorflow"], "{:.2f}"),
             ratio(wall["tensorflow"], wall["litert"])]]
    if seconds is not None:
        speed = {r: [seconds / w for w in wall[r]] for r in RUNTIMES}
        rows.append(["audio s / wall s (whole process)", spread(speed["litert"], "{:.0f}×"),
                     spread(speed["tensorflow"], "{:.0f}×"), ratio(speed["tensorflow"], speed["litert"])])
    rows.append(["peak RSS (MB)", spread(rss["litert"], "{:.0f}"), spread(rss["tensorflow"], "{:.0f}"),
                 ratio(rss["tensorflow"], rss["litert"])])
    rows.append(["TensorFlow imported", *(_yes_no([x["tensorflow"] for x in results[r]]) for r in RUNTIMES), ""])
    return rows


def _yes_no(flags):
    return "yes" if all(flags) else "no" if not any(flags) else f"{sum(flags)}/{len(flags)} runs"


# ----------------------------------------------------------------------------- audio


def write_wav(path, audio):
    sf.write(path, np.clip(audio, -1.0, 1.0), RATE, subtype="PCM_16")


def cut(rng, audio, seconds):
    n = int(round(seconds * RATE))
    start = int(rng.integers(0, len(audio) - n + 1))
    return audio[start : start + n], start / RATE


def add_noise(rng, audio, snr_db, noise=None):
    noise = rng.standard_normal(len(audio)) if noise is None else noise[: len(audio)]
    rms = np.sqrt(np.mean(np.square(audio))) or 1e-3
    noise = noise * rms / (np.sqrt(np.mean(np.square(noise))) or 1.0) * 10.0 ** (-snr_db / 20.0)
    return (audio + noise).astype(np.float32)


def generate(work, sizes, rng):
    """Catalogue, queries and broadcast -> (catalogue tracks, query truth, broadcast truth)."""
    from nnfp.corpus.noise import make_noise
    from nnfp.corpus.synth import compose_track

    catalogue = work / "catalogue"
    catalogue.mkdir()
    tracks = {}
    for i in range(sizes["tracks"]):
        name = f"track_{i:03d}.wav"
        tracks[name] = compose_track(1000 + i, sizes["track_seconds"], RATE)
        write_wav(catalogue / name, tracks[name])
    names = sorted(tracks)
    unknown_seed = iter(range(9000, 10000))

    name = names[int(rng.integers(len(names)))]
    audio, offset = cut(rng, tracks[name], 10.0)
    write_wav(work / "q10.wav", audio)
    queries = {"q10.wav": {"track": name, "offset_s": offset}}
    (work / "queries").mkdir()
    for j in range(sizes["queries"]):
        path = work / "queries" / f"q{j:03d}.wav"
        if j % 4 == 3:  # not in the catalogue
            audio, truth = compose_track(next(unknown_seed), 10.0, RATE), None
        else:
            name = names[int(rng.integers(len(names)))]
            audio, offset = cut(rng, tracks[name], 10.0)
            truth = {"track": name, "offset_s": offset}
        if j % 2:
            audio = add_noise(rng, audio, rng.uniform(5.0, 15.0))
        write_wav(path, audio)
        queries[str(path)] = truth

    total = int(sizes["broadcast_minutes"] * 60 * RATE)
    parts, plays, at = [], [], 0
    while at < total:
        name = names[int(rng.integers(len(names)))]
        seconds = min(rng.uniform(20.0, 45.0), sizes["track_seconds"] - 1.0)
        audio, offset = cut(rng, tracks[name], seconds)
        plays.append({"track": name, "start_s": at / RATE, "end_s": (at + len(audio)) / RATE, "track_start_s": offset})
        parts.append(audio)
        at += len(audio)
        gap = compose_track(next(unknown_seed), rng.uniform(10.0, 25.0), RATE)
        parts.append(gap)
        at += len(gap)
    broadcast = np.concatenate(parts)[:total]
    plays = [{**p, "end_s": min(p["end_s"], total / RATE)} for p in plays if p["start_s"] < total / RATE]
    broadcast = add_noise(rng, broadcast, 15.0, make_noise(int(rng.integers(1 << 30)), total / RATE + 1, RATE, kind="pink"))
    write_wav(work / "broadcast.wav", broadcast)
    return tracks, queries, {"seconds": total / RATE, "plays": plays}


# ----------------------------------------------------------------------------- answers


def identify_answers(stdout):
    """{query: [(track, offset_s, score), ...]} from `identify --json` lines."""
    answers = {}
    for line in stdout.splitlines():
        if line.strip().startswith("{"):
            item = json.loads(line)
            answers[item["query"]] = [(m["track"], m["offset_s"], m["score"]) for m in item["matches"]]
    return answers


def compare_matches(a, b, keys):
    """(identical, largest score difference) of two lists of matches; `keys`: positions compared exactly."""
    if len(a) != len(b):
        return False, float("inf")
    score_diff = max((abs(x[-1] - y[-1]) for x, y in zip(a, b, strict=True)), default=0.0)
    same = all(tuple(x[k] for k in keys) == tuple(y[k] for k in keys) for x, y in zip(a, b, strict=True))
    return same and score_diff <= SCORE_TOLERANCE, score_diff


def right_answers(answers, truth):
    """(known queries answered with the right track within 0.5 s, known queries, unknown queries with no match, unknown)."""
    right = known = silent = unknown = 0
    for query, expected in truth.items():
        matches = answers.get(query, [])
        if expected is None:
            unknown += 1
            silent += not matches
        else:
            known += 1
            right += bool(matches) and matches[0][0] == expected["track"] and abs(matches[0][1] - expected["offset_s"]) <= 0.5
    return right, known, silent, unknown


def plays_found(truth, detections):
    """Truth plays >= 10 s covered >= 50 % by detections of their track."""
    found = long = 0
    for play in truth["plays"]:
        length = play["end_s"] - play["start_s"]
        if length < 10.0:
            continue
        long += 1
        covered = sum(
            max(0.0, min(play["end_s"], d["end_s"]) - max(play["start_s"], d["start_s"]))
            for d in detections if d["track"] == play["track"]
        )
        found += covered >= 0.5 * length
    return found, long


def detections_of(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip().startswith("{")]


# ----------------------------------------------------------------------------- groups


def bench_build(work, sizes, seconds):
    print("\nindex build ...", file=sys.stderr, flush=True)
    results = alternate(
        lambda runtime: ["index", "build", work / "catalogue", work / f"idx-{runtime}", "--runtime", runtime,
                         "--overwrite", "--quiet"],
        sizes["build_pairs"],
    )
    printed = {
        r: [float(re.search(r"ran at (\d+(?:\.\d+)?)x real time", x["stdout"]).group(1)) for x in results[r]]
        for r in RUNTIMES
    }
    rows = timing_rows(results, seconds)
    rows.insert(2, ["fingerprinting x real time (printed)", spread(printed["litert"], "{:.0f}×"),
                    spread(printed["tensorflow"], "{:.0f}×"), ratio(printed["tensorflow"], printed["litert"])])
    a = np.load(work / "idx-litert" / "embeddings.npy")
    b = np.load(work / "idx-tensorflow" / "embeddings.npy")
    sa, sb = np.load(work / "idx-litert" / "segments.npz"), np.load(work / "idx-tensorflow" / "segments.npz")
    same_rows = a.shape == b.shape and all(np.array_equal(sa[k], sb[k]) for k in ("track", "start"))
    if same_rows:
        live = (np.linalg.norm(a, axis=1) > 0) & (np.linalg.norm(b, axis=1) > 0)
        cosine = np.sum(a[live] * b[live], axis=1)
        agreement = (f"{len(a)} segments, same rows; cosine min {cosine.min():.7f}, mean {cosine.mean():.7f}; "
                     f"zero rows {int((~live).sum())}")
    else:
        agreement = f"different segment tables: {a.shape} vs {b.shape}"
    rows.append(["stored fingerprints, LiteRT vs TensorFlow index", agreement, "", ""])
    table(
        f"`nnfp index build` of {len(list((work / 'catalogue').iterdir()))} tracks ({seconds / 60:.0f} min of audio), "
        f"{sizes['build_pairs']} runs each, alternating",
        ["index build", "--runtime litert", "--runtime tensorflow", "TensorFlow / LiteRT"], rows,
    )


def bench_identify(work, sizes, truth):
    print("\nidentify ...", file=sys.stderr, flush=True)
    index = work / "idx-litert"
    results = alternate(lambda runtime: ["identify", index, work / "q10.wav", "--json", "--runtime", runtime], sizes["pairs"])
    q10 = {r: [identify_answers(x["stdout"])[str(work / "q10.wav")] for x in results[r]] for r in RUNTIMES}
    runs_agree = all(compare_matches(q10["litert"][0], m, (0, 1))[0] for r in RUNTIMES for m in q10[r])
    top = q10["litert"][0][0] if q10["litert"][0] else None
    expected = truth["q10.wav"]

    queries = [q for q in truth if q != "q10.wav"]
    many = {r: identify_answers(nnfp(["identify", index, *queries, "--json", "--runtime", r])["stdout"]) for r in RUNTIMES}
    same, worst = 0, 0.0
    for query in queries:
        identical, diff = compare_matches(many["litert"].get(query, []), many["tensorflow"].get(query, []), (0, 1))
        same += identical
        worst = max(worst, diff)
    checked = {r: right_answers(many[r], {q: truth[q] for q in queries}) for r in RUNTIMES}

    rows = timing_rows(results)
    rows.append([
        "q10.wav answer, every run",
        f"{top[0]} at {top[1]:.2f} s, score {top[2]:.4f}" if top else "no match",
        "identical" if runs_agree else "DIFFERENT",
        f"truth {expected['track']} at {expected['offset_s']:.2f} s",
    ])
    rows.append([
        f"{len(queries)} more 10 s queries, one process each",
        "; ".join(f"{LABEL[r]}: {c[0]}/{c[1]} right, {c[2]}/{c[3]} unknown unmatched" for r, c in checked.items()),
        f"{same}/{len(queries)} identical",
        f"largest score difference {worst:.1e}",
    ])
    table(
        f"`nnfp identify IDX q10.wav --json` (a 10 s query; flat index of the catalogue), {sizes['pairs']} runs each, alternating",
        ["identify", "--runtime litert", "--runtime tensorflow", "TensorFlow / LiteRT"], rows,
    )


def bench_monitor(work, sizes, broadcast):
    print("\nmonitor ...", file=sys.stderr, flush=True)
    index = work / "idx-litert"
    results = alternate(
        lambda runtime: ["monitor", index, work / "broadcast.wav", "--json", "--runtime", runtime], sizes["monitor_pairs"]
    )
    found = {r: [detections_of(x["stdout"]) for x in results[r]] for r in RUNTIMES}

    def as_tuples(detections):
        return [(d["track"], d["start_s"], d["end_s"], d["track_start_s"], d["score"]) for d in detections]

    identical, worst = compare_matches(as_tuples(found["litert"][0]), as_tuples(found["tensorflow"][0]), (0, 1, 2, 3))
    stable = all(as_tuples(runs[0]) == as_tuples(d) for runs in found.values() for d in runs)
    rows = timing_rows(results, broadcast["seconds"])
    cells = []
    for r in RUNTIMES:
        hit, long = plays_found(broadcast, found[r][0])
        cells.append(f"{hit}/{long} plays found, {len(found[r][0])} detections")
    rows.append(["plays ≥ 10 s found (≥ 50 % covered)", *cells,
                 ("identical" if identical else "DIFFERENT") + f" (largest score difference {worst:.1e})"
                 + ("" if stable else "; runs of one runtime differ")])
    table(
        f"`nnfp monitor IDX broadcast.wav --json` ({broadcast['seconds'] / 60:.0f} min: {len(broadcast['plays'])} "
        f"catalogue excerpts, unknown music between, pink noise at 15 dB SNR), {sizes['monitor_pairs']} runs each, alternating",
        ["monitor", "--runtime litert", "--runtime tensorflow", "TensorFlow / LiteRT"], rows,
    )


def bench_throughput(work, sizes, tracks):
    print("\nin-process throughput ...", file=sys.stderr, flush=True)
    from nnfp.audio.segments import quiet_segments, segment_waveform

    keras_path = ROOT / "nnfp" / "weights" / "default.keras"
    lite_paths = {"LiteRT float32": ROOT / "nnfp" / "weights" / "default.litert", "LiteRT float16": work / "lite-float16"}
    nnfp(["export", keras_path, lite_paths["LiteRT float16"], "--format", "litert", "--quantize", "float16"])

    per_track = -(-sizes["segments"] // len(tracks))
    segments = np.concatenate([
        segment_waveform(tracks[name], RATE, int(HOP_SECONDS * RATE))[:per_track] for name in sorted(tracks)
    ])[: sizes["segments"]]
    segments = np.ascontiguousarray(segments, np.float32)

    import nnfp.runtime as runtime
    from nnfp.lite import LITERT_MODEL_FILE, LiteFingerprinter, read_spec

    runtime.use_inference_threads()  # as the nnfp fingerprinting commands run TensorFlow
    models = {"TensorFlow (XLA)": runtime.load_fingerprinter(keras_path)}
    models.update({name: LiteFingerprinter(path) for name, path in lite_paths.items()})
    for model in models.values():  # compile (XLA), allocate (XNNPACK)
        model.fingerprint(segments[:64])
    times = {name: [] for name in models}
    outputs = {}
    for _ in range(sizes["rounds"]):
        for name, model in models.items():
            started = time.perf_counter()
            outputs[name] = model.fingerprint(segments)
            times[name].append(time.perf_counter() - started)
    reference = outputs["TensorFlow (XLA)"]
    live = ~quiet_segments(segments)  # dead air is stored as zero rows and never searched
    tf_rate = [len(segments) / t for t in times["TensorFlow (XLA)"]]
    rows = []
    for name in models:
        rate = [len(segments) / t for t in times[name]]
        row = [name, spread(rate, "{:.0f}"), spread([r * HOP_SECONDS for r in rate], "{:.0f}×"),
               f"{np.median(rate) / np.median(tf_rate):.2f}×"]
        if name in lite_paths:
            cosine = np.sum(reference * outputs[name], axis=1)
            size = (lite_paths[name] / LITERT_MODEL_FILE).stat().st_size
            parity = read_spec(lite_paths[name]).get("parity", {})
            row += [f"{cosine.min():.7f} / {cosine.mean():.7f}", f"{cosine[live].min():.7f}", f"{size:,}",
                    f"{parity.get('cosine_min', float('nan')):.7f} / {parity.get('cosine_mean', float('nan')):.7f}"]
        else:
            row += ["—", "—", f"{keras_path.stat().st_size:,} (.keras)", "—"]
        rows.append(row)
    table(
        f"In-process `fingerprint` of the same {len(segments)} 1 s segments of the catalogue, {sizes['rounds']} rounds, "
        f"taking turns; LiteRT {models['LiteRT float32'].num_threads} XNNPACK threads, "
        f"TensorFlow {runtime.inference_workers()} calls at once",
        ["runtime", "segments/s", "x real time (0.5 s hop)", "vs TensorFlow", "cosine with TensorFlow min / mean",
         f"min over the {int(live.sum())} segments above -60 dBFS", "model bytes", "export parity gate min / mean (63 segments)"],
        rows,
    )


# ----------------------------------------------------------------------------- main


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in ("tensorflow", "ai-edge-litert", "faiss-cpu"):
        try:
            out.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def _cpu():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--out", default=None, help="work folder, new or empty (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the default temporary work folder")
    parser.add_argument("--seed", type=int, default=0)
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, help=f"default {value}")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else DEFAULTS)
    sizes.update({k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None})

    if args.out:
        work, made = Path(args.out), False
        if work.exists() and (not work.is_dir() or any(work.iterdir())):
            sys.exit(f"--out {work}: exists and is not an empty folder; give a new one")
        work.mkdir(parents=True, exist_ok=True)
    else:
        work, made = Path(tempfile.mkdtemp(prefix="nnfp-runtimes-")), True
    started = time.perf_counter()
    try:
        rng = np.random.default_rng(args.seed)
        tracks, queries, broadcast = generate(work, sizes, rng)
        seconds = sum(len(t) for t in tracks.values()) / RATE
        print(f"nnfp runtimes benchmark: {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {_cpu()}; "
              f"{_versions()}; seed {args.seed}; work folder {work}")
        bench_build(work, sizes, seconds)
        bench_identify(work, sizes, queries)
        bench_monitor(work, sizes, broadcast)
        bench_throughput(work, sizes, tracks)
        print(f"\n(total {time.perf_counter() - started:.0f} s)")
    finally:
        if made and not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
