"""Sub-hop query phases: accuracy and latency for 1, 2, 4 and 8 phases (plus k_probe and decision statistics).

`--refine all 32` compares searching every phase in faiss with searching phase 0 and
scoring its 32 best windows at the other phases (`Identifier(refine=...)`).

Queries are cut at random sample positions from the index's tracks, played in a
generated room (full tail) with generated noise at 0-10 dB SNR (`nnfp.catalogue.evaluation`),
and identified like `nnfp identify`. The 8 phases of every query are fingerprinted
once; fewer phases use a subset of them (the shifts of 1, 2 and 4 phases are shifts
of 8). Search latency is the single-thread time of `Identifier.rank` for the 10 s
queries; fingerprinting of all phases is reported separately.

With `--unknown DIR` (tracks not in the index) it also compares decision
statistics: the fraction of right answers kept at <= 1 % false matches for the raw
score and for the margin between the best and the second-best distinct track.

    python benchmarks/phases.py INDEX [--unknown DIR] [--queries 200] [--k-probe 20 50] [--refine all 32]
"""

import argparse
import time

import numpy as np

from nnfp.catalogue.calibration import allowed_false_matches
from nnfp.catalogue.identify import Identifier
from nnfp.catalogue.queries import degradation_settings, index_queries
from nnfp.defaults import DEFAULT_REFINE

LENGTHS = (1, 2, 3, 5, 6, 10)


def _rates(identifier, phase_sets, info, lengths, k_probe, collect_scores=False):
    right_track = np.zeros((len(phase_sets), len(lengths)), bool)
    right_offset = np.zeros_like(right_track)
    best = np.full(right_track.shape, np.nan)
    margin = np.full(right_track.shape, np.nan)
    latency = []
    identifier.k_probe = k_probe
    for q, phases in enumerate(phase_sets):
        for j, seconds in enumerate(lengths):
            started = time.perf_counter()
            matches = identifier.rank(phases, n_results=10, min_score=None, max_seconds=seconds)
            if seconds == max(lengths):
                latency.append(1000 * (time.perf_counter() - started))
            if not matches:
                continue
            top = matches[0]
            best[q, j] = top.score
            other = [m.score for m in matches[1:] if m.track_id != top.track_id]
            margin[q, j] = top.score - (other[0] if other else 0.0)
            if info is not None and top.track_id == info["track"][q]:
                right_track[q, j] = True
                right_offset[q, j] = abs(top.offset_s - info["offset_s"][q]) <= 0.5 + 1e-6
    return right_track, right_offset, best, margin, np.array(latency)


def _kept_at(target, known_stat, right, unknown_stat):
    """Fraction of right answers kept by the lowest threshold with <= target false matches."""
    allowed = allowed_false_matches(len(unknown_stat), target, confidence=None)
    ranked = np.sort(np.nan_to_num(unknown_stat, nan=-np.inf))[::-1]
    threshold = np.nextafter(ranked[allowed], np.inf) if allowed < len(ranked) else -np.inf
    return float(np.mean(right & (np.nan_to_num(known_stat, nan=-np.inf) >= threshold)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index")
    parser.add_argument("--unknown", default=None, help="folder of tracks not in the index")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--phases", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--k-probe", type=int, nargs="+", default=[20])
    parser.add_argument(
        "--refine", nargs="+", default=[str(DEFAULT_REFINE)],
        help="'all' searches every phase in faiss; N searches phase 0 and scores its N best windows at the other phases",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clean", action="store_true", help="no noise and no room")
    args = parser.parse_args()

    most = max(args.phases)
    if any(most % p for p in args.phases):
        raise SystemExit(f"every --phases value must divide {most}")
    identifier = Identifier(args.index, min_score=None, phases=most, threads=1)
    degradation = degradation_settings(identifier, (0.0, 10.0), None, None, None, not args.clean, not args.clean)
    waves, info = index_queries(identifier, args.queries, max(LENGTHS), degradation, args.seed, aligned=False)
    started = time.perf_counter()
    all_phases = [identifier.phase_fingerprints(w) for w in waves]
    fingerprint_ms = 1000 * (time.perf_counter() - started) / len(waves)
    per_phase_ms = fingerprint_ms / most

    print(f"{args.queries} queries at random positions ({'clean' if args.clean else 'room + noise 0-10 dB'}), "
          f"index of {len(identifier.db.tracks)} tracks ({identifier.db.n_segments} segments)")
    header = f"{'phases':>6} {'refine':>6} {'k_probe':>7} | " + " ".join(f"{f'{s}s trk/off':>13}" for s in LENGTHS)
    header += " | search p50 ms (10 s) | fingerprint ms (10 s)"
    print(header)
    print("-" * len(header))
    results = {}
    refines = [None if r == "all" else int(r) for r in args.refine]
    for k_probe in args.k_probe:
        for p in args.phases:
            step = most // p
            subsets = [phases[::step] for phases in all_phases]
            identifier.phases = p  # as `--phases p`: one phase (the paper's search) never interpolates
            for refine in refines if p > 1 else refines[:1]:
                identifier.refine = refine
                track, offset, best, margin, latency = _rates(identifier, subsets, info, LENGTHS, k_probe)
                results.setdefault((p, k_probe), (offset, best, margin))
                cells = " ".join(
                    f"{100 * t.mean():>6.1f}/{100 * o.mean():>5.1f}" for t, o in zip(track.T, offset.T, strict=True)
                )
                name = "all" if refine is None else refine
                print(f"{p:>6} {name:>6} {k_probe:>7} | {cells} | {np.median(latency):>20.2f} | {per_phase_ms * p:>21.0f}")
    identifier.refine, identifier.phases = refines[0], most

    if args.unknown:
        unknown_waves, _ = index_queries(
            identifier, args.queries, max(LENGTHS), degradation, args.seed + 1, aligned=False, unknown_dir=args.unknown
        )
        unknown_phases = [identifier.phase_fingerprints(w) for w in unknown_waves]
        print("\nright answers (track+offset) kept at <= 1 % false matches on out-of-catalogue queries")
        print(f"{'phases':>6} {'statistic':>10} | " + " ".join(f"{f'{s} s':>7}" for s in LENGTHS))
        for p in args.phases:
            step = most // p
            subsets = [phases[::step] for phases in unknown_phases]
            identifier.phases = p
            _, _, u_best, u_margin, _ = _rates(identifier, subsets, None, LENGTHS, args.k_probe[0])
            offset, best, margin = results[p, args.k_probe[0]]
            for name, known_stat, unknown_stat in (("score", best, u_best), ("margin", margin, u_margin)):
                kept = [_kept_at(0.01, known_stat[:, j], offset[:, j], unknown_stat[:, j]) for j in range(len(LENGTHS))]
                print(f"{p:>6} {name:>10} | " + " ".join(f"{100 * k:>6.1f}%" for k in kept))


if __name__ == "__main__":
    main()
