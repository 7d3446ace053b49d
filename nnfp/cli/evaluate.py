"""`nnfp evaluate`: the paper's search evaluation, hit rates against query length."""

from nnfp.cli.exit_codes import OK
from nnfp.cli.options import index_params

__all__ = ["cmd_evaluate"]


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
        speed_range=args.speed, tempo_range=args.tempo, pitch_range=args.pitch, phone=args.phone,
        min_score="calibrated" if args.min_score is None else args.min_score,
        index_type=args.index_type, threads=args.threads, progress=not args.quiet,
        **index_params(args),
    )
    return OK
