"""`nnfp identify`: the track and offset of each query recording."""

import json
import sys

from nnfp.cli.exit_codes import NOTHING_ANSWERED, OK
from nnfp.cli.text import one_line, printable

__all__ = ["cmd_identify", "print_threshold_notes"]


def print_threshold_notes(command, min_score, identifier):
    """Where the match threshold comes from, on stderr: `--min-score` overriding the index's
    calibration, and the notes of the calibration lookup (none, from an older nnfp, ...)."""
    if min_score is not None:
        print(f"nnfp {command}: note: --min-score {min_score:g} overrides the index's calibration", file=sys.stderr)
    for note in identifier.calibration_notes:
        print(f"nnfp {command}: note: {one_line(note)}", file=sys.stderr)


def cmd_identify(args):
    from nnfp.audio.io import AudioError
    from nnfp.catalogue.identify import Identifier, QueryError, identify_result

    identifier = Identifier(
        args.index_dir, model=args.model, k_probe=args.k_probe,
        min_score="calibrated" if args.min_score is None else args.min_score,
        threads=args.threads, nprobe=args.nprobe, trust_model=args.trust_model, phases=args.phases,
        refine=args.refine, interpolate=args.interpolate, runtime=args.runtime, speeds=args.speeds,
    )
    print_threshold_notes("identify", args.min_score, identifier)
    if identifier.db.integrity is None:
        print(f"nnfp identify: note: {args.index_dir} records no checksums (built by an older nnfp); "
              "rebuild it to have its files checked", file=sys.stderr)
    failed = 0
    for query in args.queries:
        try:
            matches = identifier.identify_file(query, n_results=args.top_k)
        except (AudioError, QueryError) as error:
            failed += 1
            print(f"nnfp identify: error: {one_line(error)}", file=sys.stderr)
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
            if identifier.decision == "score":
                what = "scored"
            elif identifier.vote_weight:  # the confidence is not the lead alone
                what = f"reached a confidence (its lead over every other track + {identifier.vote_weight:g} x its segment votes)"
            else:
                what = "led every other track by"
            floor = identifier.sharpness_floor(seconds)
            sure = identifier.sharpness_yield(seconds)
            sharp = "" if floor is None else f" and stood >= {floor:.3f} above its own track 1-5 s away" + (
                f" (or reached >= {sure:.3f})" if sure is not None else "")
            print(
                f"{printable(query)}: no match (not in the catalogue: no place {what} >= the {how}"
                f"threshold {threshold:.3f}{sharp} for a {seconds:.1f} s query)"
            )
        else:
            print(f"{printable(query)}:")
            for rank, m in enumerate(matches, 1):
                speed = f"  speed {m.speed:.3f}" if identifier.speeds is not None else ""
                confidence = f"  confidence {m.confidence:.3f}" if identifier.decision != "score" else ""
                print(f"  {rank}. {printable(m.path)}  offset {m.offset_s:.1f} s  score {m.score:.3f}{confidence}{speed}")
        if hint:
            print(f"  note: {hint}")
    return NOTHING_ANSWERED if failed == len(args.queries) else OK
