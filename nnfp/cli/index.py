"""`nnfp index build|merge|add|remove|calibrate|verify`: a catalogue's fingerprint index made,
extended, shrunk, calibrated and checked."""

import sys
from pathlib import Path

from nnfp.cli.exit_codes import BAD_INPUT, OK
from nnfp.cli.options import index_params, store_options
from nnfp.cli.text import printable

__all__ = [
    "cmd_index_add",
    "cmd_index_build",
    "cmd_index_calibrate",
    "cmd_index_merge",
    "cmd_index_remove",
    "cmd_index_verify",
]


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
            print(f"  {printable(path)}: {reason}")


def cmd_index_build(args):
    from nnfp.catalogue.build import build_index
    from nnfp.catalogue.shards import build_shard, parse_shard, shard_dir_name

    if args.shard is not None:
        shard, n_shards = parse_shard(args.shard)
        given = [f"--{name.replace('_', '-')}" for name in index_params(args) | store_options(args)]
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
        return OK
    report = build_index(
        args.audio_dir, args.index_dir, model=args.model, trust_model=args.trust_model, index_type=args.index_type,
        hop_seconds=args.hop, batch_size=args.batch_size, chunk_files=args.chunk_files, progress=not args.quiet,
        overwrite=args.overwrite, runtime=args.runtime, **index_params(args), **store_options(args),
    )
    _print_report(report, "indexed")
    return OK


def cmd_index_add(args):
    from nnfp.catalogue.build import add_to_index

    report = add_to_index(
        args.index_dir, args.audio_dir, batch_size=args.batch_size, chunk_files=args.chunk_files,
        progress=not args.quiet, trust_model=args.trust_model, lock_timeout=args.lock_timeout,
        runtime=args.runtime,
    )
    _print_report(report, "added")
    return OK


def cmd_index_remove(args):
    from nnfp.catalogue.build import remove_tracks

    removed = remove_tracks(
        args.index_dir, args.tracks, lock_timeout=args.lock_timeout, progress=True,
        compact=True if args.compact else None,
    )
    for track in removed:
        print(f"removed {track['track_id']}: {printable(track['path'])}")
    return OK


def cmd_index_verify(args):
    from nnfp.catalogue.build import verify_index

    problems, notes = verify_index(args.index_dir, model=args.model, trust_model=args.trust_model)
    for note in notes:
        print(f"note: {note}")
    if problems:
        for problem in problems:
            print(f"PROBLEM: {problem}")
        print(f"{args.index_dir}: {len(problems)} problem(s); each line says what to do")
        return BAD_INPUT
    print(f"{args.index_dir}: OK (every file matches its checksum; the model reproduces the probe fingerprints)"
          if not notes else f"{args.index_dir}: OK as far as it can be checked")
    return OK


def cmd_index_merge(args):
    from nnfp.catalogue.shards import merge_shards

    report = merge_shards(
        args.shard_dirs, args.index_dir, index_type=args.index_type, progress=not args.quiet,
        overwrite=args.overwrite, **index_params(args), **store_options(args),
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
    return OK


def cmd_index_calibrate(args):
    from nnfp.catalogue.evaluation import calibrate_index

    n_unknown = args.n_unknown
    if n_unknown is not None and len(n_unknown) not in (1, len(args.unknown)):
        print(f"nnfp index calibrate: --n-unknown takes one count, or one per --unknown folder: {len(n_unknown)} "
              f"counts for {len(args.unknown)} folders", file=sys.stderr)
        return BAD_INPUT
    if n_unknown is not None and len(n_unknown) == 1:
        n_unknown = n_unknown[0]
    calibrate_index(
        args.index_dir, args.unknown, out=args.out, n_queries=args.n_queries, lengths_seconds=tuple(args.lengths),
        target_false_match=args.target, confidence=args.confidence or None, n_unknown=n_unknown,
        snr_db_range=tuple(args.snr_range), noise_dir=args.noise_dir,
        ir_dir=args.ir_dir, phases=args.phases, refine=args.refine, interpolate=args.interpolate, k_probe=args.k_probe, seed=args.seed,
        speeds=args.speeds, decision=args.decision,
        progress=not args.quiet, trust_model=args.trust_model, work_dir=args.work_dir,
    )
    return OK

