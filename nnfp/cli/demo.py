"""`nnfp demo`: train briefly on the embedded corpus, index it, identify degraded queries, and
show the shipped model at work through the command line."""

import time
from pathlib import Path

import numpy as np

from nnfp.cli.exit_codes import OK

__all__ = ["cmd_demo"]


def cmd_demo(args):
    import keras

    from nnfp.audio.sources import list_audio_files, load_tracks
    from nnfp.callbacks import MiniSearchValidation
    from nnfp.catalogue.build import build_index
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.queries import degrade
    from nnfp.config import CONFIG_DIR, load_config
    from nnfp.corpus.noise import make_noise
    from nnfp.corpus.rooms import make_impulse_response
    from nnfp.training import build_model, train
    from nnfp.training_data import embedded_corpus, prepare_data

    started = time.perf_counter()
    config = load_config(args.config or CONFIG_DIR / "demo.yaml", args.overrides)
    run_dir = Path(args.run_dir)
    rate = config["frontend"]["sample_rate"]

    print("== 1. untrained model: mini-search on the validation tracks ==")
    keras.utils.set_random_seed(config["train"]["seed"])  # the same "before" on every run
    untrained = build_model(config)
    data = prepare_data(config)
    probe = MiniSearchValidation(data.val_originals, data.val_replicas, config["train"]["mini_search_scopes"])
    probe.set_model(untrained)
    before = probe.evaluate()["g(f)"]
    print(f"top-1 g(f), 1 segment, before training: {before['top1'][0]:.1f}%")

    print("== 2. training ==")
    model, _, summary = train(config, run_dir)
    probe.set_model(model)
    after = probe.evaluate()["g(f)"]
    print(
        f"top-1 g(f), 1 segment: {before['top1'][0]:.1f}% before -> {after['top1'][0]:.1f}% after "
        f"({summary['train_seconds']:.0f} s"
        + (f", median step {summary['median_step_seconds']:.3f} s)" if summary["median_step_seconds"] else "; run already complete)")
    )

    print("== 3. fingerprint and index the whole corpus ==")
    corpus = embedded_corpus(config)
    report = build_index(
        corpus.music_dir, run_dir / "index", model=run_dir, index_type="flat", sample_rate=rate,
        hop_seconds=config["data"]["hop_seconds"], progress=False, overwrite=True,  # the demo's own index
    )
    print(
        f"{report.n_tracks} tracks, {report.n_segments} segments; fingerprinting ran at "
        f"{report.realtime_factor:.0f}x real time"
    )
    identifier = Identifier(run_dir / "index", min_score=None, db=report.db)
    tracks, paths, _ = load_tracks(list_audio_files(corpus.music_dir), sample_rate=rate)
    names = [p.relative_to(corpus.music_dir).as_posix() for p in paths]

    print("== 4. identify degraded queries from held-out tracks (unseen noise and rooms, 0-10 dB SNR) ==")
    n_train = config["embedded"]["n_tracks"]
    rng = np.random.default_rng(2024)
    lengths = (1, 2, 3, 5, 6, 10)
    rows = []
    for seconds in lengths:
        track_hits = offset_hits = 0
        latencies = []
        for q in range(args.queries):
            track_id = int(rng.integers(n_train, len(tracks)))
            track = tracks[track_id]
            start = float(rng.uniform(0, len(track) / rate - seconds))
            seed = 100_000 + 1000 * seconds + q
            query = degrade(  # as `nnfp evaluate` degrades its queries: a room, then noise
                track, int(round(start * rate)), int(round(seconds * rate)), rate, rate,
                noise=make_noise(seed, seconds + 1.0, rate), snr_db=float(rng.uniform(0, 10)),
                impulse_response=make_impulse_response(seed, rate),
            )
            t1 = time.perf_counter()
            matches = identifier.identify_audio(query, n_results=1)
            latencies.append(time.perf_counter() - t1)
            if matches and matches[0].path == names[track_id]:
                track_hits += 1
                offset_hits += abs(matches[0].offset_s - start) <= 0.5
        rows.append((seconds, 100 * track_hits / args.queries, 100 * offset_hits / args.queries, np.median(latencies)))
    print(f"{'query':>6} | {'track top-1':>11} | {'track+offset (±0.5 s)':>21} | {'median ms/query':>15}")
    for seconds, track_rate, offset_rate, latency in rows:
        print(f"{seconds:>5}s | {track_rate:>10.1f}% | {offset_rate:>20.1f}% | {1000 * latency:>15.1f}")
    print(f"({args.queries} queries per length, DB of {len(tracks)} tracks; chance = {100 / len(tracks):.1f}%)")
    _demo_shipped_model(corpus.music_dir, run_dir, tracks[-1], rate)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; run directory: {run_dir}")
    return OK


def _demo_shipped_model(music_dir, run_dir, track, rate):
    """Identify a degraded excerpt with the model that ships with nnfp, through the CLI."""
    import soundfile as sf

    from nnfp.catalogue.fingerprint import DEFAULT_MODEL_PATH
    from nnfp.catalogue.queries import degrade
    from nnfp.corpus.noise import make_noise
    from nnfp.corpus.rooms import make_impulse_response

    if not DEFAULT_MODEL_PATH.exists():
        print("== 5. (no default model ships with this version of nnfp: skipped) ==")
        return
    print("== 5. the shipped default model (trained on real music): identify a degraded excerpt ==")
    query = degrade(
        track, int(12.3 * rate), 5 * rate, rate, rate, noise=make_noise(7, 6.0, rate), snr_db=5.0,
        impulse_response=make_impulse_response(7, rate),
    )
    query_path = Path(run_dir) / "query.wav"
    sf.write(query_path, query, rate)
    index_dir = Path(run_dir) / "index-default"
    print(f"$ nnfp index build {music_dir} {index_dir} --index-type flat --quiet --overwrite")
    _nnfp("index", "build", str(music_dir), str(index_dir), "--index-type", "flat", "--quiet", "--overwrite")
    print(f"$ nnfp identify {index_dir} {query_path} --json   "
          "# 5 s from 12.3 s of the last track, 5 dB SNR noise + room")
    _nnfp("identify", str(index_dir), str(query_path), "--json")


def _nnfp(*args):
    """Runs `nnfp ARGS` as a user would, in a process of its own (its output goes to ours)."""
    import subprocess
    import sys

    sys.stdout.flush()  # our lines first, then the command's
    subprocess.run([sys.executable, "-m", "nnfp.cli", *args], check=False)
