"""`nnfp` command line: train, model-summary, export, demo."""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "fingerprint_tracks"]


def _add_train_arguments(parser):
    parser.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--run-dir", required=True, help="output directory (config, checkpoints, logs)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )


def _load_config(args):
    from nnfp.config import load_config

    return load_config(args.config, args.overrides)


def cmd_train(args):
    from nnfp.training import train

    config = _load_config(args)
    _, _, summary = train(config, args.run_dir)
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}, indent=1))
    return 0


def cmd_model_summary(args):
    from nnfp.config import load_config
    from nnfp.training import build_model

    model = build_model(load_config(args.config, args.overrides))
    model.summary(expand_nested=True, line_length=110)
    print(f"params: {model.count_params()}")
    return 0


def cmd_export(args):
    from nnfp.config import load_config
    from nnfp.export import export_saved_model, load_fingerprinter

    run_dir = Path(args.run_dir)
    config_path = run_dir / "config.yaml"
    config = load_config(config_path) if config_path.exists() else None
    embedder = load_fingerprinter(run_dir)
    if not hasattr(embedder, "model"):
        raise SystemExit(f"{run_dir}: already a SavedModel; export needs a run directory or .keras file")
    out = export_saved_model(embedder.model, args.out_dir, config)
    print(f"exported {out} (serving_default: waveforms (batch, {embedder.segment_samples}) -> fingerprint)")
    return 0


def fingerprint_tracks(embedder, tracks, hop_samples, batch_size=256):
    """Fingerprint each track's segments on a hop -> (embeddings, segment_track, segment_start_samples)."""
    from nnfp.data import segment_starts

    segment = embedder.segment_samples
    embeddings, owners, starts = [], [], []
    for index, track in enumerate(tracks):
        begin = segment_starts(len(track), segment, hop_samples)
        if len(begin) == 0:
            continue
        windows = np.stack([track[s : s + segment] for s in begin]).astype("float32")
        embeddings.append(embedder.fingerprint(windows, batch_size=batch_size))
        owners.append(np.full(len(begin), index, "int32"))
        starts.append(begin)
    return np.concatenate(embeddings), np.concatenate(owners), np.concatenate(starts)


def cmd_demo(args):
    from nnfp.callbacks import MiniSearchValidation
    from nnfp.config import CONFIG_DIR, load_config
    from nnfp.corpus import make_impulse_response, make_noise
    from nnfp.data import list_audio_files, load_tracks, make_query
    from nnfp.export import load_fingerprinter
    from nnfp.search import FingerprintDB
    from nnfp.training import build_model, embedded_corpus, prepare_data, train

    started = time.perf_counter()
    config = load_config(args.config or CONFIG_DIR / "demo.yaml", args.overrides)
    run_dir = Path(args.run_dir)
    rate = config["frontend"]["sample_rate"]

    print("== 1. untrained model: mini-search on the validation tracks ==")
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
        f"({summary['train_seconds']:.0f} s, median step {summary['median_step_seconds']:.3f} s)"
    )

    print("== 3. fingerprint and index the whole corpus ==")
    corpus = embedded_corpus(config)
    paths = list_audio_files(corpus.music_dir)
    tracks, paths, _ = load_tracks(paths, sample_rate=rate)
    embedder = load_fingerprinter(run_dir)
    hop = int(round(config["data"]["hop_seconds"] * rate))
    t0 = time.perf_counter()
    embeddings, owners, starts = fingerprint_tracks(embedder, tracks, hop)
    audio_seconds = sum(len(t) for t in tracks) / rate
    print(
        f"{len(tracks)} tracks, {len(embeddings)} segments; fingerprinting ran at "
        f"{audio_seconds / (time.perf_counter() - t0):.0f}x real time"
    )
    table = [
        {"track_id": i, "path": p.relative_to(corpus.music_dir).as_posix(), "duration_s": len(t) / rate}
        for i, (p, t) in enumerate(zip(paths, tracks, strict=False))
    ]
    db = FingerprintDB.build(embeddings, owners, starts / rate, table, hop_seconds=hop / rate, index_type="flat")
    db.save(run_dir / "index")

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
            query = make_query(
                track, start, seconds,
                noise=make_noise(seed, seconds + 1.0, rate),
                impulse_response=make_impulse_response(seed, rate),
                snr_db=float(rng.uniform(0, 10)), sample_rate=rate,
            )
            t1 = time.perf_counter()
            begin = np.arange(0, len(query) - embedder.segment_samples + 1, hop)
            segments = np.stack([query[s : s + embedder.segment_samples] for s in begin])
            matches = db.search(embedder.fingerprint(segments), top_k=20, n_results=1)
            latencies.append(time.perf_counter() - t1)
            if matches and matches[0].track_id == track_id:
                track_hits += 1
                offset_hits += abs(matches[0].offset_s - start) <= 0.5
        rows.append((seconds, 100 * track_hits / args.queries, 100 * offset_hits / args.queries, np.median(latencies)))
    print(f"{'query':>6} | {'track top-1':>11} | {'track+offset (±0.5 s)':>21} | {'median ms/query':>15}")
    for seconds, track_rate, offset_rate, latency in rows:
        print(f"{seconds:>5}s | {track_rate:>10.1f}% | {offset_rate:>20.1f}% | {1000 * latency:>15.1f}")
    print(f"({args.queries} queries per length, DB of {len(tracks)} tracks; chance = {100 / len(tracks):.1f}%)")
    print(f"demo finished in {time.perf_counter() - started:.0f} s; run directory: {run_dir}")
    return 0


def cmd_data_prepare(args):
    from nnfp.prepare import format_summary, prepare_audio

    summary = prepare_audio(
        args.src, args.out_dir, sample_rate=args.sample_rate, min_seconds=args.min_seconds,
        workers=args.workers, shard_megabytes=args.shard_mb, progress=not args.quiet,
    )
    print(format_summary(summary))
    return 0


def cmd_data_make_irs(args):
    from nnfp.rooms import make_room_impulse_responses

    try:
        paths = make_room_impulse_responses(
            args.out_dir, args.n, sample_rate=args.sample_rate, seed=args.seed, max_seconds=args.max_seconds
        )
    except ImportError as error:
        print(f"nnfp data make-irs: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} impulse responses to {args.out_dir}")
    return 0


def _add_data_commands(sub):
    data = sub.add_parser("data", help="dataset tools: prepare an audio cache, simulate room impulse responses")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "prepare", help="decode + resample SRC_DIR once into an int16 cache OUT_DIR (resumable)"
    )
    p.add_argument("src", metavar="SRC_DIR", help="folder of audio files, or a .csv/.json manifest (path[,track_id])")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--sample-rate", type=int, default=8000, help="target rate in Hz (default 8000)")
    p.add_argument("--min-seconds", type=float, default=1.0, help="skip shorter files (default 1.0)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count)")
    p.add_argument("--shard-mb", type=float, default=64.0, help="shard size in MB (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_prepare)
    p = data_sub.add_parser("make-irs", help='simulate N room impulse responses (needs "nnfp[rooms]")')
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("n", metavar="N", type=int)
    p.add_argument("--sample-rate", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=1.0, help="cut impulse responses to this length")
    p.set_defaults(func=cmd_data_make_irs)


def build_parser():
    parser = argparse.ArgumentParser(prog="nnfp", description="Neural audio fingerprinting with Keras.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a fingerprinter from a YAML config")
    _add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("model-summary", help="print the Keras summary of a config's model")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_model_summary)

    p = sub.add_parser("export", help="export a trained run as a TF SavedModel")
    p.add_argument("run_dir", help="run directory (or .keras file)")
    p.add_argument("out_dir")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="train briefly on the embedded corpus, index it, identify noisy queries")
    p.add_argument("--config", default=None, help="default: configs/demo.yaml")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--queries", type=int, default=50, help="queries per query length")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_demo)

    _add_data_commands(sub)
    return parser


def main(argv=None):
    from nnfp.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"nnfp {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
