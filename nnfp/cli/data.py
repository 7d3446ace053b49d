"""`nnfp data prepare` and `nnfp data make-irs`: an audio cache decoded once, simulated rooms."""

from nnfp.cli.exit_codes import OK

__all__ = ["cmd_data_make_irs", "cmd_data_prepare"]


def cmd_data_prepare(args):
    from nnfp.audio.prepare import format_summary, prepare_audio

    summary = prepare_audio(
        args.src, args.out_dir, sample_rate=args.sample_rate, min_seconds=args.min_seconds,
        workers=args.workers, shard_megabytes=args.shard_mb, progress=not args.quiet,
    )
    print(format_summary(summary))
    return OK


def cmd_data_make_irs(args):
    from nnfp.corpus.rooms import make_room_impulse_responses

    paths = make_room_impulse_responses(
        args.out_dir, args.n, sample_rate=args.sample_rate, seed=args.seed, max_seconds=args.max_seconds
    )
    print(f"wrote {len(paths)} impulse responses to {args.out_dir}")
    return OK
