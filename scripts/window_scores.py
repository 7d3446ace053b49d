#!/usr/bin/env python
"""Alternative window scores against nnfp's mean cosine similarity, on held-out queries.

    python scripts/window_scores.py INDEX --seed 2 [--n-queries 300] [--noise-dir DIR --ir-dir DIR]

Makes the noisy queries of `nnfp evaluate` (same seed, same degradation, random cuts),
fingerprints each at the index's 4 sub-hop phases once, then, for every query length,
finds the candidate windows of every phase (faiss, `k_probe` 20) and picks the best
window under each score of `SCORES`, computed from the per-segment similarities of the
window. Prints right track + offset (right track) per score and length. The mean row
reproduces `nnfp evaluate --refine all`. Used for MODEL_CARD.md ("Other window scores").
"""

import argparse

import numpy as np

LENGTHS = (1, 3, 5, 10)


def _trimmed(sims, fraction):
    drop = int(np.floor(fraction * sims.shape[1]))
    return np.sort(sims, axis=1)[:, drop:].mean(axis=1)


# name -> f(sims (windows, segments), hubness of the window's DB rows (same shape))
SCORES = {
    "mean (nnfp)": lambda s, h: s.mean(axis=1),
    "mean - 0.25 std": lambda s, h: s.mean(axis=1) - 0.25 * s.std(axis=1),
    "mean - 0.5 std": lambda s, h: s.mean(axis=1) - 0.5 * s.std(axis=1),
    "trimmed mean 10 %": lambda s, h: _trimmed(s, 0.1),
    "trimmed mean 25 %": lambda s, h: _trimmed(s, 0.25),
    "median": lambda s, h: np.median(s, axis=1),
    "mean + 0.5 min": lambda s, h: s.mean(axis=1) + 0.5 * s.min(axis=1),
    "power mean p=2": lambda s, h: np.mean(np.clip(s, 0, None) ** 2, axis=1),
    "power mean p=3": lambda s, h: np.mean(np.clip(s, 0, None) ** 3, axis=1),
    "hubness 0.25": lambda s, h: (s - 0.25 * h).mean(axis=1),
    "hubness 0.5": lambda s, h: (s - 0.5 * h).mean(axis=1),
    "hubness 1.0": lambda s, h: (s - 1.0 * h).mean(axis=1),
}


def hubness(embeddings, tracks, starts, k=10, exclude_seconds=1.5, block=2048):
    """Each DB row's mean similarity to its `k` nearest rows, not counting its own neighbourhood."""
    out = np.zeros(len(embeddings), np.float32)
    for first in range(0, len(embeddings), block):
        rows = np.arange(first, min(first + block, len(embeddings)))
        sims = embeddings[rows] @ embeddings.T
        own = (tracks[rows, None] == tracks[None, :]) & (np.abs(starts[rows, None] - starts[None, :]) < exclude_seconds)
        sims[own] = -1.0
        out[rows] = np.partition(sims, -k, axis=1)[:, -k:].mean(axis=1)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--noise-dir", default="data/eval/noise-test")
    parser.add_argument("--ir-dir", default="data/irs-test")
    args = parser.parse_args()

    from nnfp.runtime import use_inference_threads

    use_inference_threads()
    from nnfp.audio.segments import n_segments
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.queries import degradation_settings, index_queries

    identifier = Identifier(args.index, phases=4)
    db = identifier.db
    rate, segment, hop = identifier.sample_rate, identifier.embedder.segment_samples, identifier.hop_samples
    degradation = degradation_settings(identifier, (0.0, 10.0), args.noise_dir, args.ir_dir, None, True, True)
    waves, info = index_queries(identifier, args.n_queries, max(LENGTHS), degradation, args.seed, False)
    phases = [identifier.phase_fingerprints(np.asarray(w, np.float32)) for w in waves]

    embeddings = np.asarray(db.embeddings, np.float32)
    seg_track = np.asarray(db.segment_track)
    seg_start = np.asarray(db.segment_start, np.float64)
    hub = hubness(embeddings, seg_track, seg_start)
    track_end = db._track_end
    right = {name: np.zeros(len(LENGTHS)) for name in SCORES}
    track = {name: np.zeros(len(LENGTHS)) for name in SCORES}
    for q, query in enumerate(phases):
        for j, seconds in enumerate(LENGTHS):
            windows = []
            for shift, fingerprints in query:
                n = n_segments(int(round((seconds - shift) * rate)), segment, hop)
                if n < 1:
                    continue
                f = fingerprints[:n]
                window_starts = db.candidate_starts(f, k_probe=20)
                rows = window_starts[:, None] + np.arange(n)
                valid = rows <= track_end[window_starts][:, None]  # rows past the track count 0
                rows = np.minimum(rows, len(embeddings) - 1)
                sims = np.where(valid, np.einsum("cnd,nd->cn", embeddings[rows], f), 0.0)
                windows.append((shift, window_starts, sims, np.where(valid, hub[rows], 0.0)))
            for name, score in SCORES.items():
                best = []  # (score, start row, phase shift) of each phase's best window
                for shift, window_starts, sims, hubs in windows:
                    scores = score(sims, hubs)
                    i = int(np.argmax(scores))
                    best.append((float(scores[i]), int(window_starts[i]), shift))
                _, start, shift = max(best, key=lambda t: t[0])
                same_track = seg_track[start] == info["track"][q]
                track[name][j] += same_track
                right[name][j] += same_track and abs(seg_start[start] - shift - info["offset_s"][q]) <= 0.5
    n = len(phases)
    print(f"{n} queries (seed {args.seed}): right track + offset (right track), %, at "
          + " / ".join(f"{s} s" for s in LENGTHS))
    for name in SCORES:
        print(f"{name:>18}  " + "  ".join(
            f"{100 * right[name][j] / n:5.1f} ({100 * track[name][j] / n:5.1f})" for j in range(len(LENGTHS))))


if __name__ == "__main__":
    main()
