#!/usr/bin/env python
"""Alignment sharpness of the top answer (`Identifier.sharpness`), per kind of query.

    python scripts/alignment_sharpness.py INDEX OUT_DIR [--seconds 10]

For each query the top answer's score at its alignment minus the mean score of the same query
fingerprints (phase 0, at the answer's grid speed) at alignments 1-5 s away in the same track. A
right answer sits at one place of its track; a sustained sound (noise, applause, a drone) that
resembles a stationary stretch of a track scores nearly as well a few seconds away. Queries as
the model card's held-out rows make them (rooms `irs-test`, noise `noise-test` at 0-10 dB):
100 in-catalogue (seed 0), 300 of `noise-test` (seed 11), 100 of generated applause (seed 5)
and 100 of `unknown-train` (seed 6). Writes OUT_DIR/KIND.npz (confidence, sharpness, answer).
"""

import argparse
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("index")
    parser.add_argument("out_dir")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)

    from nnfp.catalogue.identify import Identifier, QueryError
    from nnfp.catalogue.queries import degradation_settings, index_queries

    identifier = Identifier(args.index)
    degradation = degradation_settings(
        identifier, (0.0, 10.0), DATA / "eval" / "noise-test", DATA / "irs-test", None, True, True
    )
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def sharpness(wave):
        try:
            query = identifier.query(wave)
        except QueryError:  # silent or constant: no answer, as `nnfp identify` gives none
            return None
        matches = identifier.rank_query(query, n_results=1, max_seconds=args.seconds)
        if not matches:
            return None
        best = matches[0]
        return best.confidence, identifier.sharpness(query, best, args.seconds), best.track_id, best.offset_s

    def run(name, waves, info=None):
        results = [sharpness(w) for w in waves]
        arrays = {
            "confidence": np.array([r[0] if r else np.nan for r in results]),
            "sharpness": np.array([r[1] if r else np.nan for r in results]),
            "track": np.array([r[2] if r else -1 for r in results]),
            "offset_s": np.array([r[3] if r else np.nan for r in results]),
        }
        if info is not None:
            arrays.update(true_track=info["track"], true_offset_s=info["offset_s"])
        np.savez(out / f"{name}.npz", **arrays)
        print(name, len(results), flush=True)

    run("known", *index_queries(identifier, 100, args.seconds, degradation, 0, aligned=False))
    for name, folder, seed, n in (
        ("noise-test", DATA / "eval" / "noise-test", 11, 300),
        ("applause", DATA / "generated" / "applause", 5, 100),
        ("unknown-train", DATA / "eval" / "unknown-train", 6, 100),
    ):
        waves, _ = index_queries(identifier, n, args.seconds, degradation, seed, aligned=False, unknown_dir=folder)
        run(name, waves)


if __name__ == "__main__":
    main()
