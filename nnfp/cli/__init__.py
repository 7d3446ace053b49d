"""`nnfp` command line: train, model-summary, export, index build|add|merge, identify, monitor, evaluate, demo."""

import argparse
import errno
import hashlib
import io
import json
import os
import platform
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from nnfp.cli.demo import cmd_demo

__all__ = ["main"]


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

    config = args.config
    if args.legacy_config is not None:
        if config is not None:
            print("error: give the config once, as --config", file=sys.stderr)
            return 2
        print("note: `nnfp model-summary CONFIG` is deprecated; use `nnfp model-summary --config CONFIG`", file=sys.stderr)
        config = args.legacy_config
    model = build_model(load_config(config, args.overrides))
    model.summary(expand_nested=True, line_length=110)
    print(f"params: {model.count_params()}")
    return 0


def cmd_export(args):
    from nnfp.config import load_config
    from nnfp.outputs import claim_output_dir

    if args.format == "savedmodel" and args.quantize is not None:
        raise ValueError(
            "--quantize applies to --format litert only (a SavedModel keeps the model's float32 "
            "weights); nothing was written"
        )
    run_dir = Path(args.run_dir)
    config_path = run_dir / "config.yaml"
    config = load_config(config_path) if config_path.exists() else None
    claim_output_dir(args.out_dir, "export", overwrite=args.overwrite, inputs=[run_dir])  # before loading
    if args.format == "litert":
        from nnfp.export import export_litert
        from nnfp.lite import LITERT_MODEL_FILE, read_spec

        quantize = args.quantize or "none"
        out = export_litert(
            run_dir, args.out_dir, quantize=quantize, overwrite=args.overwrite, inputs=[run_dir], config=config
        )
        spec = read_spec(out)
        parity = spec["parity"]
        size = (out / LITERT_MODEL_FILE).stat().st_size
        print(
            f"exported {out} (LiteRT, {quantize}, {size / 1e6:.1f} MB; serve: waveforms (batch, "
            f"{spec['segment_samples']}) -> fingerprint (batch, {spec['embedding_dim']}); against the Keras "
            f"model on {parity['segments']} segments: cosine min {parity['cosine_min']:.7f}, mean "
            f"{parity['cosine_mean']:.7f}, {100 * parity['own_neighbour']:.1f} % own-nearest-neighbour)"
        )
        return 0
    from nnfp.export import export_saved_model, load_fingerprinter, resolve_model_path

    already = f"{run_dir}: already an exported model; export needs a run directory or .keras file"
    if not resolve_model_path(run_dir).is_file():  # a SavedModel or LiteRT folder: never loaded here
        raise ValueError(already)
    embedder = load_fingerprinter(run_dir)
    if not hasattr(embedder, "model"):
        raise ValueError(already)
    out = export_saved_model(embedder.model, args.out_dir, config, overwrite=args.overwrite, inputs=[run_dir])
    print(f"exported {out} (serving_default: waveforms (batch, {embedder.segment_samples}) -> fingerprint)")
    return 0


def _index_params(args):
    names = ("nlist", "m", "nbits", "nprobe", "hnsw_m", "ef_search", "train_size")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _store_options(args):
    """`--backend`, `--milvus-uri`, `--collection` as given (`_add_store_arguments`)."""
    given = {"backend": args.backend if args.backend != "faiss" else None, "milvus_uri": args.milvus_uri,
             "collection": args.collection}
    return {name: value for name, value in given.items() if value is not None}


def _print_report(report, action):
    fresh = report.audio_seconds if report.fresh_audio_seconds is None else report.fresh_audio_seconds
    print(
        f"{action} {report.n_tracks} tracks ({report.n_segments} segments, "
        f"{report.audio_seconds / 3600:.2f} h of audio)"
        + (f"; fingerprinting ran at {report.realtime_factor:.0f}x real time" if fresh > 0 else "")
        + (f"; {report.resumed_chunks} chunks reused from an interrupted run" if report.resumed_chunks else "")
    )
    db = report.db
    print(f"index: {db.index_type} {db.index_params}, {len(db.tracks)} tracks, {db.n_segments} segments in total")
    if report.skipped:
        print(f"skipped {len(report.skipped)} files:")
        for path, reason in report.skipped:
            print(f"  {_printable(path)}: {reason}")


def _printable(name):
    """A file name on one line: names with newlines or other control characters are quoted, escaped."""
    name = str(name)
    return name if name.isprintable() else repr(name)


def cmd_index_build(args):
    from nnfp.catalogue.build import build_index
    from nnfp.catalogue.shards import build_shard, parse_shard, shard_dir_name

    if args.shard is not None:
        shard, n_shards = parse_shard(args.shard)
        given = [f"--{name.replace('_', '-')}" for name in _index_params(args) | _store_options(args)]
        if args.index_type != "auto":
            given.insert(0, "--index-type")
        if given:
            raise ValueError(
                "a --shard build only fingerprints; give the index options to `nnfp index merge`. "
                f"Received: {' '.join(given)}"
            )
        report = build_shard(
            args.audio_dir, args.index_dir, shard, n_shards, model=args.model, trust_model=args.trust_model,
            hop_seconds=args.hop, batch_size=args.batch_size, chunk_files=args.chunk_files, progress=not args.quiet,
        )
        out = Path(args.index_dir) / shard_dir_name(shard, n_shards)
        print(
            f"shard {shard}/{n_shards}: fingerprinted {report.n_tracks} tracks ({report.n_segments} segments, "
            f"{report.audio_seconds / 3600:.2f} h of audio) into {out}"
            + (f"; {report.resumed_chunks} chunks reused from an interrupted run" if report.resumed_chunks else "")
        )
        for path, reason in report.skipped:
            print(f"  skipped {path}: {reason}")
        return 0
    report = build_index(
        args.audio_dir, args.index_dir, model=args.model, trust_model=args.trust_model, index_type=args.index_type,
        hop_seconds=args.hop, batch_size=args.batch_size, chunk_files=args.chunk_files, progress=not args.quiet,
        overwrite=args.overwrite, runtime=args.runtime, **_index_params(args), **_store_options(args),
    )
    _print_report(report, "indexed")
    return 0


def cmd_index_add(args):
    from nnfp.catalogue.build import add_to_index

    report = add_to_index(
        args.index_dir, args.audio_dir, batch_size=args.batch_size, chunk_files=args.chunk_files,
        progress=not args.quiet, trust_model=args.trust_model, lock_timeout=args.lock_timeout,
        runtime=args.runtime,
    )
    _print_report(report, "added")
    return 0


def cmd_index_remove(args):
    from nnfp.catalogue.build import remove_tracks

    removed = remove_tracks(
        args.index_dir, args.tracks, lock_timeout=args.lock_timeout, progress=True,
        compact=True if args.compact else None,
    )
    for track in removed:
        print(f"removed {track['track_id']}: {_printable(track['path'])}")
    return 0


def cmd_index_verify(args):
    from nnfp.catalogue.build import verify_index

    problems, notes = verify_index(args.index_dir, model=args.model, trust_model=args.trust_model)
    for note in notes:
        print(f"note: {note}")
    if problems:
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print(f"{args.index_dir}: {len(problems)} problem(s); each line says what to do")
        return 2
    print(f"{args.index_dir}: OK (every file matches its checksum; the model reproduces the probe fingerprints)"
          if not notes else f"{args.index_dir}: OK as far as it can be checked")
    return 0


def cmd_index_merge(args):
    from nnfp.catalogue.shards import merge_shards

    report = merge_shards(
        args.shard_dirs, args.index_dir, index_type=args.index_type, progress=not args.quiet,
        overwrite=args.overwrite, **_index_params(args), **_store_options(args),
    )
    db = report.db
    print(
        f"merged {db.metadata['shards']['n_shards']} shards: {report.n_tracks} tracks "
        f"({report.n_segments} segments, {report.audio_seconds / 3600:.2f} h of audio) into {args.index_dir}"
    )
    print(f"index: {db.index_type} {db.index_params}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} files while fingerprinting:")
        for path, reason in report.skipped:
            print(f"  {path}: {reason}")
    return 0


def _print_threshold_notes(command, min_score, identifier):
    """Where the match threshold comes from, on stderr: `--min-score` overriding the index's
    calibration, and the notes of the calibration lookup (none, from an older nnfp, ...)."""
    if min_score is not None:
        print(f"nnfp {command}: note: --min-score {min_score:g} overrides the index's calibration", file=sys.stderr)
    for note in identifier.calibration_notes:
        print(f"nnfp {command}: note: {_one_line(note)}", file=sys.stderr)


def cmd_identify(args):
    from nnfp.audio.io import AudioError
    from nnfp.catalogue.identify import Identifier, QueryError, identify_result

    identifier = Identifier(
        args.index_dir, model=args.model, k_probe=args.k_probe,
        min_score="calibrated" if args.min_score is None else args.min_score,
        threads=args.threads, nprobe=args.nprobe, trust_model=args.trust_model, phases=args.phases,
        refine=args.refine, interpolate=args.interpolate, runtime=args.runtime, speeds=args.speeds,
    )
    _print_threshold_notes("identify", args.min_score, identifier)
    if identifier.db.integrity is None:
        print(f"nnfp identify: note: {args.index_dir} records no checksums (built by an older nnfp); "
              "rebuild it to have its files checked", file=sys.stderr)
    failed = 0
    for query in args.queries:
        try:
            matches = identifier.identify_file(query, n_results=args.top_k)
        except (AudioError, QueryError) as error:
            failed += 1
            print(f"nnfp identify: error: {_one_line(error)}", file=sys.stderr)
            if args.json:
                print(json.dumps({"query": query, "matches": [], "error": str(error)}), flush=True)
            continue
        hint = identifier.long_query_hint(identifier.last_query_seconds)
        if args.json:
            print(json.dumps(identify_result(query, matches, hint)), flush=True)
            continue
        if not matches:
            seconds = identifier.last_query_seconds
            threshold = identifier.match_threshold(seconds)
            how = "calibrated " if args.min_score is None and identifier.calibration is not None else ""
            what = "led every other track by" if identifier.decision == "margin" else "scored"
            print(
                f"{_printable(query)}: no match (not in the catalogue: no place {what} >= the {how}"
                f"threshold {threshold:.3f} for a {seconds:.1f} s query)"
            )
        else:
            print(f"{_printable(query)}:")
            for rank, m in enumerate(matches, 1):
                speed = f"  speed {m.speed:.3f}" if identifier.speeds is not None else ""
                confidence = f"  confidence {m.confidence:.3f}" if identifier.decision != "score" else ""
                print(f"  {rank}. {_printable(m.path)}  offset {m.offset_s:.1f} s  score {m.score:.3f}{confidence}{speed}")
        if hint:
            print(f"  note: {hint}")
    return 1 if failed == len(args.queries) else 0


# Segments per model call of `nnfp monitor`: a file is read as fast as it decodes (fewer,
# larger batches: ~12 % faster on a 30-min broadcast with `read_ahead`); a live stream's
# detections wait for a batch, so stdin takes 32 s of audio at a time.
FILE_BATCH_SIZE = 256
STREAM_BATCH_SIZE = 64


class _Stopped(BaseException):
    """A stop signal that cannot wait for the plays in progress (a BaseException, as
    KeyboardInterrupt: no `except Exception` on the way turns it into an error)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _signal_name(signum):
    return signal.Signals(signum).name


class _StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (a service manager, `kill`) while `nnfp monitor` runs.

    Once `graceful` is set (the monitor is reading audio), the first signal only sets
    `event` and `signum`: the stream ends, what was read is searched and the plays in
    progress are reported cut short. Before that (loading the index and the model) and
    at a second signal, `_Stopped` is raised at once. The handlers before are restored on
    exit, so a `main([...])` inside a Python session leaves them as they were.
    """

    def __init__(self):
        self.event = threading.Event()
        self.signum = None
        self.graceful = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum, frame):
        if self.graceful and self.signum is None:
            self.signum = signum
            self.event.set()
            return
        raise _Stopped(signum)


def cmd_monitor(args):
    with _StopSignals() as stopper:
        try:
            return _monitor_recordings(args, stopper)
        except _Stopped as stopped:
            print(f"nnfp monitor: stopped by {_signal_name(stopped.signum)}", file=sys.stderr)
            return 128 + stopped.signum


def _monitor_speeds(speeds):
    """`--speeds` of `nnfp monitor` with its grid step (`MONITOR_SPEED_STEP` unless given)."""
    from nnfp.defaults import MONITOR_SPEED_STEP

    if speeds is None or speeds == "auto":
        return speeds
    return (*speeds[:2], speeds[2] if len(speeds) == 3 else MONITOR_SPEED_STEP)


def _monitor_recordings(args, stopper):
    from nnfp.audio.io import AudioError
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.monitor import (
        format_detection,
        input_note,
        monitor_stream,
        read_blocks,
        read_pcm_blocks,
    )

    identifier = Identifier(
        args.index_dir, model=args.model, k_probe=args.k_probe, threads=args.threads,
        nprobe=args.nprobe, trust_model=args.trust_model, runtime=args.runtime,
        min_score="calibrated" if args.min_score is None else args.min_score, speeds=_monitor_speeds(args.speeds),
    )
    # "auto" (default): one speed; `--speeds LO:HI` (e.g. 0.96:1.04, step MONITOR_SPEED_STEP) monitors a grid
    speeds = None if identifier.speeds is None or args.speeds == "auto" else _monitor_speeds(args.speeds)
    _print_threshold_notes("monitor", args.min_score, identifier)
    stopper.graceful = True  # from here on a signal ends the stream and the plays in progress are reported
    failed = 0
    for i, recording in enumerate(args.recordings):
        if stopper.signum is not None:
            print(f"nnfp monitor: stopped by {_signal_name(stopper.signum)}; not read: "
                  + ", ".join(_printable(r) for r in args.recordings[i:]), file=sys.stderr)
            break
        stats = {}  # audio read (`n_samples`, `peak`), and for stdin its bytes
        if recording == "-":
            blocks = read_pcm_blocks(
                sys.stdin.buffer, args.rate, identifier.sample_rate, stop=stopper.event, stats=stats
            )
        else:
            blocks = read_blocks(recording, identifier.sample_rate)
        batch_size = args.batch_size or (STREAM_BATCH_SIZE if recording == "-" else FILE_BATCH_SIZE)
        if not args.json:
            print(f"{_printable(recording)}:", flush=True)
        found = cut_short = 0
        try:
            for play in monitor_stream(
                identifier, blocks, recording, window_seconds=args.window, max_gap_seconds=args.max_gap,
                min_score=args.min_score, batch_size=batch_size, stop=stopper.event, stats=stats,
        speeds=speeds,
            ):
                found += 1
                cut_short += play.cut_short
                if args.json:
                    line = json.dumps(play.as_dict())
                else:
                    line = "  " + format_detection(play)
                    if play.cut_short:
                        line += f"  (cut short: stopped by {_signal_name(stopper.signum)})"
                print(line, flush=True)
        except AudioError as error:
            failed += 1
            print(f"nnfp monitor: error: {_one_line(error)}", file=sys.stderr)
            continue
        if not args.json and not found:
            print("  (no catalogue track detected)", flush=True)
        seconds = stats.get("n_samples", 0) / identifier.sample_rate
        if stopper.signum is not None:
            summary = f"stopped by {_signal_name(stopper.signum)} after {seconds:.1f} s of audio"
            if cut_short:
                summary += f"; {cut_short} play{'s' * (cut_short > 1)} in progress reported cut short"
        else:
            note = input_note(stats, args.rate if recording == "-" else None)
            summary = f"read {seconds:.1f} s of audio" + (f" ({note})" if note else "")
            failed += not stats.get("n_samples")
        print(f"nnfp monitor: {_printable(recording)}: {summary}", file=sys.stderr, flush=True)
    if stopper.signum is not None:
        return 128 + stopper.signum
    return 2 if failed else 0


def cmd_serve(args):
    try:
        from nnfp.serve import Catalogue, create_app, serve
    except ImportError as error:
        print(f"nnfp serve: error: {error}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("NNFP_TOKEN") or None
    app = create_app(Catalogue(args.index_dir, runtime=args.runtime), token=token, max_upload_mb=args.max_upload_mb)
    return serve(
        app, host=args.host, port=args.port,
        on_ready=lambda url: print(f"serving {args.index_dir} on {url}", flush=True),
    )


def _port(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535, received {text!r}")
    return value


def cmd_index_calibrate(args):
    from nnfp.catalogue.evaluation import calibrate_index

    calibrate_index(
        args.index_dir, args.unknown, out=args.out, n_queries=args.n_queries, lengths_seconds=tuple(args.lengths),
        target_false_match=args.target, confidence=args.confidence or None, n_unknown=args.n_unknown,
        snr_db_range=tuple(args.snr_range), noise_dir=args.noise_dir,
        ir_dir=args.ir_dir, phases=args.phases, refine=args.refine, interpolate=args.interpolate, k_probe=args.k_probe, seed=args.seed,
        speeds=args.speeds, decision=args.decision,
        progress=not args.quiet, trust_model=args.trust_model,
    )
    return 0


def cmd_evaluate(args):
    from nnfp.catalogue.evaluation import evaluate

    evaluate(
        args.out, index_dir=args.index_dir, db_dir=args.db, model=args.model, dummy_dir=args.dummy_dir,
        query_dir=args.query_dir, n_queries=args.n_queries, trust_model=args.trust_model, lengths_seconds=tuple(args.lengths),
        snr_db_range=tuple(args.snr_range), noise_dir=args.noise_dir, ir_dir=args.ir_dir,
        noise_kind=args.noise_kind, add_noise=not (args.clean or args.no_noise),
        add_reverb=not (args.clean or args.no_reverb), seed=args.seed, k_probe=args.k_probe,
        unknown_dir=args.unknown_dir, n_unknown=args.n_unknown, aligned=args.aligned, phases=args.phases,
        refine=args.refine, interpolate=args.interpolate, speeds=args.speeds,
        speed_range=args.speed, tempo_range=args.tempo, pitch_range=args.pitch,
        min_score="calibrated" if args.min_score is None else args.min_score,
        index_type=args.index_type, threads=args.threads, progress=not args.quiet,
        **_index_params(args),
    )
    return 0


def _add_index_arguments(parser, model=True):
    from nnfp.defaults import INDEX_TYPES

    if model:
        parser.add_argument("--model", default=None, help="run directory, .keras file or SavedModel (default: the packaged model)")
        _add_trust_argument(parser)
    parser.add_argument(
        "--index-type", default="auto", choices=("auto", *INDEX_TYPES),
        help="vector index; auto: flat (exact) below 100k segments (~14 h), ivfpq above (hnsw on --backend milvus)",
    )
    parser.add_argument("--nlist", type=_positive_int, default=None, help="IVF lists (default ~4*sqrt(segments))")
    parser.add_argument("--m", type=_positive_int, default=None, help="PQ sub-quantisers, divides d (default 16)")
    parser.add_argument("--nbits", type=_positive_int, default=None, help="bits per PQ code (default 8)")
    parser.add_argument("--nprobe", type=_positive_int, default=None, help="IVF lists visited per search (default 16)")
    parser.add_argument("--hnsw-m", dest="hnsw_m", type=_positive_int, default=None, help="HNSW degree (default 32)")
    parser.add_argument("--ef-search", dest="ef_search", type=_positive_int, default=None, help="HNSW search breadth (default 128)")
    parser.add_argument("--train-size", dest="train_size", type=_positive_int, default=None, help="IVF/PQ training sample")


def _add_store_arguments(parser):
    from nnfp.store.milvus import BACKENDS, TOKEN_VARIABLES

    parser.add_argument(
        "--backend", choices=BACKENDS, default="faiss",
        help="where the fingerprints live: faiss (default) in INDEX_DIR; milvus in a Milvus collection, in a "
        "Milvus Lite file inside INDEX_DIR or on the server --milvus-uri (INDEX_DIR keeps the rest: tracks, "
        'model, calibration, integrity record); needs "nnfp[milvus]"',
    )
    parser.add_argument(
        "--milvus-uri", dest="milvus_uri", default=None, metavar="URI",
        help=f"with --backend milvus: a Milvus server or cluster, e.g. http://localhost:19530 (its token from "
        f"${TOKEN_VARIABLES[0]} or ${TOKEN_VARIABLES[1]}); default: a Milvus Lite file inside INDEX_DIR",
    )
    parser.add_argument(
        "--collection", default=None, metavar="NAME",
        help="with --backend milvus: the collection (default nnfp_<INDEX_DIR name>)",
    )


def _add_trust_argument(parser):
    parser.add_argument(
        "--trust-model", action="store_true",
        help="allow a TensorFlow SavedModel, which can run arbitrary operations when loaded "
        "(.keras models load in Keras safe mode and need no flag)",
    )


def _add_runtime_argument(parser):
    from nnfp.defaults import RUNTIMES

    parser.add_argument(
        "--runtime", choices=RUNTIMES, default="auto",
        help="what runs the model: auto (default) LiteRT where the model has a LiteRT copy (an index built "
        "by this nnfp has one; no TensorFlow is started), else TensorFlow; litert or tensorflow insist on one",
    )


def _add_phase_arguments(parser):
    from nnfp.defaults import DEFAULT_INTERPOLATE, DEFAULT_PHASES, DEFAULT_REFINE

    parser.add_argument("--phases", type=_positive_int, default=DEFAULT_PHASES,
                        help=f"query phases per index hop (default {DEFAULT_PHASES})")
    parser.add_argument("--refine", type=_refine, default=DEFAULT_REFINE,
                        help=f"phase-0 windows scored at the other phases (default {DEFAULT_REFINE}; "
                        "all: search every phase in faiss)")
    parser.add_argument("--interpolate", type=_positive_int, default=DEFAULT_INTERPOLATE,
                        help="for a query too short for a second phase (1 s): positions per index hop at which "
                        "its best windows are scored again with DB fingerprints interpolated between rows "
                        f"(default {DEFAULT_INTERPOLATE}; 1: off)")
    _add_speeds_argument(parser)


def _add_speeds_argument(parser):
    from nnfp.defaults import DEFAULT_SPEEDS

    parser.add_argument(
        "--speeds", type=_speeds, default="auto", metavar="LO:HI[:STEP]|off",
        help="playback speeds searched (default: those the index's calibration was fitted with, or "
        f"{DEFAULT_SPEEDS[0]:g}:{DEFAULT_SPEEDS[1]:g} without one: a song played up to "
        f"{100 * (1 - DEFAULT_SPEEDS[0]):g} %% slow or {100 * (DEFAULT_SPEEDS[1] - 1):g} %% fast; the grid step follows "
        "the query's length unless STEP is given); off: only the catalogue's own speed",
    )


def _speeds(text):
    from nnfp.catalogue.speeds import parse_speeds

    try:
        return parse_speeds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _refine(text):
    if text == "all":
        return None
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'all' or a whole number >= 1, received {text!r}") from None


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, received {text!r}")
    return value


def _finite_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, received {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, received {text!r}")
    return value


def _positive_float(text):
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, received {text!r}")
    return value


def _non_negative_float(text):
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, received {text!r}")
    return value


def _one_line(error):
    """An error message on one line (file names with newlines are escaped)."""
    return str(error).replace("\r", "\\r").replace("\n", "\\n")


def _add_fingerprint_arguments(parser):
    parser.add_argument(
        "--batch-size", type=_positive_int, default=256,
        help="segments gathered per step (the model runs them in calls of 16, one per core at once)",
    )
    parser.add_argument("--chunk-files", type=_positive_int, default=32, help="files per resumable chunk")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_data_prepare(args):
    from nnfp.audio.prepare import format_summary, prepare_audio

    summary = prepare_audio(
        args.src, args.out_dir, sample_rate=args.sample_rate, min_seconds=args.min_seconds,
        workers=args.workers, shard_megabytes=args.shard_mb, progress=not args.quiet,
    )
    print(format_summary(summary))
    return 0


def cmd_data_make_irs(args):
    from nnfp.corpus.rooms import make_room_impulse_responses

    paths = make_room_impulse_responses(
        args.out_dir, args.n, sample_rate=args.sample_rate, seed=args.seed, max_seconds=args.max_seconds
    )
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
    p.add_argument("--sample-rate", type=_positive_int, default=8000, help="target rate in Hz (default 8000)")
    p.add_argument("--min-seconds", type=_non_negative_float, default=1.0, help="skip shorter files (default 1.0)")
    p.add_argument("--workers", type=_positive_int, default=None, help="decoding threads (default: CPU count)")
    p.add_argument("--shard-mb", type=_positive_float, default=64.0, help="shard size in MB (default 64)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_prepare)
    p = data_sub.add_parser("make-irs", help='simulate N room impulse responses (needs "nnfp[rooms]")')
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("n", metavar="N", type=_positive_int)
    p.add_argument("--sample-rate", type=_positive_int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seconds", type=_positive_float, default=1.0, help="cut impulse responses to this length")
    p.set_defaults(func=cmd_data_make_irs)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nnfp", description="Neural audio fingerprinting with Keras.",
        epilog=f"{EXIT_STATUS_HELP}\n\n{XLA_CACHE_HELP}", formatter_class=_ParagraphsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a fingerprinter from a YAML config")
    _add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("model-summary", help="print the Keras summary of a config's model")
    p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("legacy_config", nargs="?", default=None, metavar="CONFIG", help="deprecated: use --config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_model_summary)

    p = sub.add_parser("export", help="export a trained run as a TF SavedModel or a LiteRT model")
    p.add_argument("run_dir", metavar="RUN_DIR|MODEL", help="run directory (or .keras file)")
    p.add_argument("out_dir", help="new or empty folder (or an earlier export, with --overwrite)")
    p.add_argument(
        "--format", choices=("savedmodel", "litert"), default="savedmodel",
        help="savedmodel (default): a TF SavedModel; litert: model.tflite + spec.json, run without "
        "TensorFlow by ai-edge-litert, checked against the Keras model before it is written",
    )
    p.add_argument(
        "--quantize", choices=("none", "float16", "int8"), default=None,
        help="litert weights: none (float32, default), float16 (half the size), or int8 (encoder "
        "weights; refused unless its fingerprints keep cosine >= 0.999 and 100%% own-nearest-neighbour "
        "against the Keras model)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing nnfp export at OUT_DIR")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="train briefly on the embedded corpus, index it, identify noisy queries")
    p.add_argument("--config", default=None, help="default: configs/demo.yaml")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--queries", type=_positive_int, default=50, help="queries per query length")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.set_defaults(func=cmd_demo)

    _add_data_commands(sub)

    from nnfp.defaults import (
        DEFAULT_DECISION,
        DEFAULT_K_PROBE,
        DEFAULT_MIN_SCORE,
        DEFAULT_MONITOR_SPEEDS,
        MONITOR_SPEED_STEP,
    )

    index = sub.add_parser("index", help="build, extend or merge (sharded build) a fingerprint index")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    p = index_sub.add_parser("build", help="fingerprint every track of AUDIO_DIR into INDEX_DIR (resumable)")
    p.add_argument("audio_dir")
    p.add_argument(
        "index_dir",
        help="output index folder (new, empty, or an nnfp index with --overwrite; never a folder nnfp did "
        "not create); with --shard, the folder receiving shard-I-of-N/",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing nnfp index at INDEX_DIR")
    p.add_argument(
        "--hop", type=_positive_float, default=0.5,
        help="seconds between indexed segments (default 0.5, the paper's; 0.25 doubles the index and "
        "lines 1 s queries up better)",
    )
    p.add_argument(
        "--shard", default=None, metavar="I/N",
        help="fingerprint only shard I of N (0 <= I < N) into INDEX_DIR/shard-I-of-N; "
        "combine the N shards with `nnfp index merge`",
    )
    _add_index_arguments(p)
    _add_store_arguments(p)
    _add_fingerprint_arguments(p)
    _add_runtime_argument(p)
    p.set_defaults(func=cmd_index_build)
    p = index_sub.add_parser(
        "merge", help="combine the shards of `index build --shard I/N` runs into INDEX_DIR"
    )
    p.add_argument("shard_dirs", nargs="+", metavar="SHARD_DIR", help="OUT_DIR/shard-I-of-N folders, or OUT_DIR")
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing nnfp index at INDEX_DIR")
    _add_index_arguments(p, model=False)
    _add_store_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index_merge)
    p = index_sub.add_parser("add", help="append the tracks of MORE_AUDIO_DIR to INDEX_DIR")
    p.add_argument("index_dir")
    p.add_argument("audio_dir", metavar="more_audio_dir")
    _add_fingerprint_arguments(p)
    _add_trust_argument(p)
    _add_runtime_argument(p)
    p.add_argument(
        "--lock-timeout", type=_non_negative_float, default=None, metavar="SECONDS",
        help="give up after waiting this long for another add of the same index (default: wait)",
    )
    p.set_defaults(func=cmd_index_add)
    p = index_sub.add_parser(
        "remove", help="remove tracks from INDEX_DIR: they are never answered again (only tracks.json is "
        "rewritten, until removed tracks hold half the index: then it is compacted)",
    )
    p.add_argument("index_dir")
    p.add_argument("tracks", nargs="+", metavar="TRACK", help="a track id or the track's path as indexed")
    p.add_argument("--compact", action="store_true", help="rebuild the index without the removed tracks' rows now")
    p.add_argument(
        "--lock-timeout", type=_non_negative_float, default=None, metavar="SECONDS",
        help="give up after waiting this long for another writer of the same index (default: wait)",
    )
    p.set_defaults(func=cmd_index_remove)
    p = index_sub.add_parser(
        "calibrate",
        help="calibrate the match threshold per query length (<= 1 %% false matches) into INDEX_DIR/calibration.json",
    )
    p.add_argument("index_dir")
    p.add_argument("--unknown", required=True, nargs="+", metavar="DIR",
                   help="folders of audio NOT in the index (out-of-catalogue queries); several folders are "
                        "kinds (e.g. music, noise, speech), each held to the target on its own")
    p.add_argument("--out", default=None, help="where to write it (default INDEX_DIR/calibration.json; "
                   "MODEL.calibration.json next to a .keras model ships it with the model)")
    p.add_argument("--n-queries", type=_positive_int, default=500, help="queries of each kind (default 500)")
    p.add_argument("--lengths", type=_positive_float, nargs="+", default=[1, 2, 3, 5, 6, 10], help="query lengths in seconds")
    p.add_argument("--n-unknown", type=_positive_int, default=None,
                   help="out-of-catalogue queries per folder (default: --n-queries; 1000 lets a 1 %% target at 95 %% "
                   "confidence admit 4 false matches)")
    p.add_argument("--target", type=_finite_float, default=0.01, help="false-match rate allowed (default 0.01)")
    p.add_argument("--confidence", type=_finite_float, default=0.95,
                   help="the target must hold at this confidence (Clopper-Pearson upper bound over the "
                   "out-of-catalogue queries; default 0.95; 0: point estimate, fits the calibration music only)")
    p.add_argument("--snr-range", type=_finite_float, nargs=2, default=[0.0, 10.0], metavar=("LOW", "HIGH"))
    p.add_argument("--noise-dir", default=None, help="background noise folder (default: generated noise)")
    p.add_argument("--ir-dir", default=None, help="impulse response folder (default: generated rooms)")
    _add_phase_arguments(p)
    p.add_argument("--decision", choices=("margin", "score"), default=DEFAULT_DECISION,
                   help="what the thresholds apply to: margin, a match's score minus the best score of any other "
                   f"track, or score, the similarity itself (default {DEFAULT_DECISION})")
    p.add_argument("--k-probe", type=_positive_int, default=DEFAULT_K_PROBE)
    p.add_argument("--seed", type=int, default=0)
    _add_trust_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index_calibrate)
    p = index_sub.add_parser(
        "verify", help="check every file of INDEX_DIR against its checksum and its model against the probes"
    )
    p.add_argument("index_dir")
    p.add_argument("--model", default=None, help="check this model instead of the index's own")
    _add_trust_argument(p)
    p.set_defaults(func=cmd_index_verify)

    p = sub.add_parser("identify", help="find the track and offset of query recordings")
    p.add_argument("index_dir")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="audio files, any format/rate, >= 1 s")
    p.add_argument("--json", action="store_true", help="one JSON object per query and line")
    p.add_argument("--top-k", type=_positive_int, default=5, help="matches printed per query (default 5)")
    p.add_argument("--k-probe", type=_positive_int, default=DEFAULT_K_PROBE, help=f"faiss neighbours per query segment (default {DEFAULT_K_PROBE})")
    p.add_argument(
        "--min-score", type=_finite_float, default=None,
        help="fixed match threshold (default: the index's calibrated threshold for the query's length, "
        f"or {DEFAULT_MIN_SCORE} when the index has no calibration)",
    )
    _add_phase_arguments(p)
    p.add_argument("--nprobe", type=_positive_int, default=None, help="IVF lists visited (default: as built)")
    p.add_argument("--threads", type=_positive_int, default=1, help="faiss threads (default 1)")
    p.add_argument("--model", default=None, help="override the index's model")
    _add_trust_argument(p)
    _add_runtime_argument(p)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser(
        "monitor", help="every catalogue track played in long recordings or a stream (-: raw PCM on stdin)"
    )
    p.add_argument("index_dir")
    p.add_argument(
        "recordings", nargs="+", metavar="RECORDING",
        help="audio files, any format/rate; - reads raw 16-bit little-endian mono PCM from stdin",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per detected play and line, as it ends")
    p.add_argument("--rate", type=_positive_int, default=8000, help="sample rate of the PCM on stdin (default 8000)")
    p.add_argument("--window", type=_positive_float, default=5.0, help="seconds of audio per searched window (default 5)")
    p.add_argument("--max-gap", dest="max_gap", type=_non_negative_float, default=30.0,
                   help="a play survives this many seconds without a match (longer while its track stays "
                        "among the best places at its alignment) and goes on if its track returns at the same "
                        "alignment; it is reported at most this long after it was last heard (default 30)")
    p.add_argument("--min-score", type=_finite_float, default=None,
                   help="window score threshold (default: the index's calibrated threshold)")
    p.add_argument("--k-probe", type=_positive_int, default=DEFAULT_K_PROBE)
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="segments per inference batch (default: 256 for files; 64, 32 s of audio, for stdin, "
                        "so a live stream's detections do not wait for 128 s of it)")
    p.add_argument("--nprobe", type=_positive_int, default=None, help="IVF lists visited (default: as built)")
    p.add_argument("--threads", type=_positive_int, default=1, help="faiss threads (default 1)")
    p.add_argument("--model", default=None, help="override the index's model")
    p.add_argument(
        "--speeds", type=_speeds, default="auto", metavar="LO:HI[:STEP]|off",
        help=f"playback speeds monitored, e.g. {DEFAULT_MONITOR_SPEEDS[0]:g}:{DEFAULT_MONITOR_SPEEDS[1]:g} (steps of "
        f"{MONITOR_SPEED_STEP:g} unless given; radio plays songs up to 4 %% fast; each speed costs a pass of the model, "
        "5.5x slower for 5 speeds); default: the catalogue's own speed only",
    )
    _add_trust_argument(p)
    _add_runtime_argument(p)
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser(
        "serve", help='answer identify, monitor and catalogue changes over HTTP (needs "nnfp[serve]")',
        description="Serves INDEX_DIR over HTTP (FastAPI + uvicorn): POST /identify, POST /monitor, "
        "WebSocket /stream, GET|POST /tracks, DELETE /tracks/ID, GET /health, GET /metrics, a web page "
        "at / and the API's documentation at /docs. Prints `serving INDEX_DIR on http://HOST:PORT` "
        "when it is ready; SIGINT or SIGTERM stop it.",
    )
    p.add_argument("index_dir", metavar="INDEX_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: a free one, named in the ready line)")
    p.add_argument(
        "--token", default=None,
        help="bearer token that POST /tracks and DELETE /tracks/ID need (default: $NNFP_TOKEN; "
        "without one they are refused); reads need none",
    )
    p.add_argument("--max-upload-mb", dest="max_upload_mb", type=_positive_float, default=50.0,
                   help="larger uploads are refused with 413 (default 50)")
    _add_runtime_argument(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("evaluate", help="the paper's search evaluation: hit rates against query length")
    p.add_argument("index_dir", nargs="?", default=None, help="a saved index (or use --db)")
    p.add_argument("--db", default=None, help="DB audio folder: build an index of it in OUT/index")
    p.add_argument("--dummy-dir", default=None, help="extra distractor tracks added to the --db index")
    p.add_argument("--query-dir", default=None, help="recorded queries with labels.csv (query,track,offset_s)")
    p.add_argument("--n-queries", type=_positive_int, default=2000, help="synthesised queries (default 2000)")
    p.add_argument("--lengths", type=_positive_float, nargs="+", default=[1, 2, 3, 5, 6, 10], help="query lengths in seconds")
    p.add_argument("--snr-range", type=_finite_float, nargs=2, default=[0.0, 10.0], metavar=("LOW", "HIGH"))
    p.add_argument("--noise-dir", default=None, help="background noise folder (default: generated noise)")
    p.add_argument("--noise-kind", default=None, help="generated noise kind, e.g. babble for speech-like background")
    p.add_argument("--ir-dir", default=None, help="impulse response folder (default: generated rooms)")
    p.add_argument("--no-noise", action="store_true", help="no background noise")
    p.add_argument("--no-reverb", action="store_true", help="no impulse response")
    p.add_argument("--clean", action="store_true", help="no degradation at all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k-probe", type=_positive_int, default=DEFAULT_K_PROBE)
    p.add_argument("--threads", type=_positive_int, default=1, help="faiss threads (default 1)")
    p.add_argument("--aligned", action="store_true",
                   help="cut queries on the DB hop grid (the paper's protocol); default: random sample positions")
    p.add_argument("--unknown-dir", default=None, help="tracks NOT in the index: queries for the false-match rate")
    p.add_argument("--n-unknown", type=_positive_int, default=None, help="out-of-catalogue queries (default: --n-queries)")
    p.add_argument("--speed", type=_positive_float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="play each query faster or slower (pitch with tempo, by resampling) by a factor drawn "
                   "in [LO, HI], e.g. 0.96 1.04")
    p.add_argument("--tempo", type=_positive_float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="change each query's tempo only (pitch kept) by a factor drawn in [LO, HI]")
    p.add_argument("--pitch", type=_finite_float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="shift each query's pitch only (tempo kept) by LO to HI semitones")
    _add_phase_arguments(p)
    p.add_argument("--min-score", type=_finite_float, default=None,
                   help="fixed match threshold (default: the index's calibrated threshold per query length)")
    p.add_argument("--out", default="runs/evaluate", help="output folder (default runs/evaluate)")
    _add_index_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
    _add_verbose_argument(parser)
    return parser


def _add_verbose_argument(parser, root=True):
    """`--verbose` on `nnfp` and on every command (`nnfp identify ... --verbose`): a command's
    flag, when absent, leaves the one given before the command as it was."""
    parser.add_argument(
        "--verbose", action="store_true", default=False if root else argparse.SUPPRESS,
        help="also show the log lines of TensorFlow, XLA and CUDA (hidden otherwise: start-up "
        "probes, compile-cache notes; run again with it when a command ends without a message)",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_verbose_argument(command, root=False)


class _ParagraphsHelpFormatter(argparse.HelpFormatter):
    """Wraps the description and epilog as argparse does, but keeps their blank-line paragraphs."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(super(_ParagraphsHelpFormatter, self)._fill_text(part, width, indent)
                             for part in text.split("\n\n"))


EXIT_STATUS_HELP = (
    "Exit status: 0 success; 1 when every query of `nnfp identify` failed (some failing: 0, each "
    "one named on stderr), or an unexpected error (a traceback); 2 bad input or usage: a bad "
    "option, a missing or damaged file, index or model, a refused output folder, a missing optional "
    "package (the message names the extra to install), a recording "
    "`nnfp monitor` could not read or found empty; 130 or 143 stopped by SIGINT (Ctrl-C) or SIGTERM; 141 the "
    "reader of the output went away (a closed pipe, e.g. `| head`)."
)

XLA_CACHE_HELP = (
    "Compiled XLA programs of the model are kept in $NNFP_XLA_CACHE (default: the xla "
    "folder of nnfp's cache, $NNFP_CACHE or ~/.cache/nnfp; 'off' keeps none), one folder per "
    "TensorFlow version and CPU, so a command after the first skips the seconds of "
    "compiling. Deleting the folder is always safe."
)


def xla_cache_directory(environ=None):
    """The folder of persistent XLA programs for this TensorFlow and CPU, or None when off."""
    from importlib.metadata import PackageNotFoundError, version

    from nnfp.defaults import cache_home

    environ = os.environ if environ is None else environ
    base = environ.get("NNFP_XLA_CACHE")
    if base is not None and base.strip().lower() in ("", "off", "0", "none"):
        return None
    if base is None:
        base = cache_home(environ) / "xla"
    try:
        tf_version = version("tensorflow")
    except PackageNotFoundError:
        tf_version = "unknown"
    cpu = platform.machine()
    try:  # programs are compiled for this CPU's instruction set
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        cpu += "-" + hashlib.sha256(flags.encode()).hexdigest()[:12]
    except (OSError, StopIteration):
        cpu += "-" + hashlib.sha256(platform.processor().encode()).hexdigest()[:12]
    return Path(base) / f"tf{tf_version}-{cpu}"


def _use_xla_cache():
    """Points TensorFlow's persistent XLA cache at `xla_cache_directory()` (before TF starts).

    TensorFlow writes each entry to a temporary file and renames it, so concurrent
    commands and interrupted ones leave no partial entry. A TF_XLA_FLAGS that already
    names a cache is left alone.
    """
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" in flags:
        return
    directory = xla_cache_directory()
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as without the cache
        return
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={directory}".strip()


def _hide_native_logs():
    """Sends file descriptor 2 to /dev/null for the rest of the process and Python's `sys.stderr`
    (nnfp's messages, progress bars, tracebacks) to a copy of the original descriptor.

    TensorFlow, XLA and CUDA write their C++ log lines straight to descriptor 2: start-up
    probes (no GPU), and notes of the persistent XLA cache (an entry first tried as text, the
    CPU features it was compiled for), which say nothing about the command and which a user
    cannot tell from a fault. TF_CPP_MIN_LOG_LEVEL does not reach the lines absl writes before
    it is initialised, so only the descriptor keeps them out. `--verbose` shows them.
    """
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (an embedded interpreter)
        return
    encoding, errors = sys.stderr.encoding, sys.stderr.errors
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = io.TextIOWrapper(io.FileIO(real, "w"), encoding=encoding, errors=errors,
                                  line_buffering=True, write_through=True)


# Commands that run the model and never train (`main` sets TensorFlow's threads for them).
_FINGERPRINTING_COMMANDS = (
    "index build", "index add", "index calibrate", "index verify", "identify", "monitor", "evaluate",
)


def main(argv=None):
    args = build_parser().parse_args(argv)
    command = " ".join(
        [args.command] + [getattr(args, f"{args.command}_command", None) or ""]
    ).strip()  # "index build", "data prepare", "identify"
    if argv is not None:  # main([...]) inside a Python session: Ctrl-C is the session's
        return _main(args, command, argv)
    try:
        return _main(args, command, argv)
    except KeyboardInterrupt:
        # Ctrl-C before a command installs its own handling (`monitor`), e.g. while TensorFlow
        # loads: no traceback. Whatever was written is whole (`nnfp.outputs`); a build resumes.
        print(f"\nnnfp {command}: interrupted (SIGINT)", file=sys.stderr)
        _exit_now(130)


def _main(args, command, argv):
    _use_xla_cache()
    if argv is None and not args.verbose:  # a process of its own (main([...]) leaves its session's streams)
        _hide_native_logs()
    own_process = argv is None and command in _FINGERPRINTING_COMMANDS
    if own_process:
        # A process of its own (not main([...]) inside a Python session): it only
        # fingerprints, so one thread per op and one model call per core, should TensorFlow
        # start at all (LiteRT needs none of it).
        from nnfp import defaults

        defaults.INFERENCE_PROCESS = True
    import warnings

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # nnfp's own warnings are about the user's files (nnfp.audio.io.TruncatedAudioWarning:
        # a cut mp3): one line each, without Python's file:line, written between progress bars.
        if not category.__module__.startswith("nnfp."):
            return python_show_warning(message, category, filename, lineno, file, line)
        from tqdm import tqdm

        tqdm.write(f"nnfp: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():  # a main([...]) inside a Python session leaves its hook as it was
        python_show_warning, warnings.showwarning = warnings.showwarning, show_warning
        status = _run(args, command)
    if own_process:
        _exit_now(status)
    return status


def _run(args, command):
    from nnfp.config import ConfigError
    from nnfp.extras import MissingExtraError

    try:
        return args.func(args)
    except MissingExtraError as error:  # an optional package the command needs: the extra to install
        print(f"nnfp {command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `nnfp monitor ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush
        return 141  # 128 + SIGPIPE, as a shell reports a command stopped by a closed pipe
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"nnfp {command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, no permission, a lock not obtained...
        hint = ""
        if error.errno == errno.ENOSPC:
            hint = "; free some space and run again (an existing index or output folder was left as it was)"
        print(f"nnfp {command}: error: {_one_line(error)}{hint}", file=sys.stderr)
        return 2


def _exit_now(status):
    """Ends a fingerprinting process without tearing down the interpreter.

    Its output is written and closed by now (`nnfp.outputs` renames finished files into
    place); what remains is unloading TensorFlow, which took 1.4-1.7 s of every command
    (two 30-min `nnfp monitor` runs: `main` returned at 15.7 s and 15.2 s, the process
    ended at 17.4 s and 16.7 s). Python's exit handlers are skipped, so the standard
    streams are flushed here.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(status or 0)


if __name__ == "__main__":
    sys.exit(main())
