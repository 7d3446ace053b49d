"""How a query sequence is scored: the candidate windows its segments' neighbours propose, and
the sequence score of each window (exact, or interpolated between stored rows).

A song is cut into 1 s segments on a `hop_seconds` hop; every segment has an
L2-normalised fingerprint. A query of `n` consecutive segments (same hop) is
matched as in the paper's evaluation (mimbres/neural-audio-fp `eval/eval_faiss.py`):
each query segment retrieves `k_probe` nearest DB segments, each hit at DB row `c`
for query segment `i` proposes the sequence start `c - i`, and every proposed
start is scored by the mean inner product of the `n` query segments with the
`n` stored DB segments that follow it.
"""

from __future__ import annotations

import numpy as np

from nnfp.store.integrity import REBUILD_HINT, CorruptIndexError
from nnfp.store.rows import NORM_TOLERANCE, bad_norms, readable_rows

__all__ = ["SequenceScoring"]

# sequence_scores works on tiles of at most this many (query row, candidate) pairs:
# ~32 MB of gathered float32 rows at d=128, whatever the query length.
_SCORE_TILE_PAIRS = 65_536
_SCORE_TILE_QUERY_ROWS = 64


class SequenceScoring:
    """The candidate windows and sequence scores of `FingerprintDB` (a base class of it).

    Works on the database's `index` (`search(x, k)`), its stored rows `embeddings`,
    `segment_track`, `dim`, `n_segments`, `source`, and the tables `FingerprintDB` keeps
    of its tracks (`_track_begin`, `_track_end`, `_removed_ids`, `_set_threads`).
    """

    def candidate_starts(self, query_embeddings, k_probe=20):
        """Unique DB rows where a query sequence could start (offset-compensated hits)."""
        return self.candidate_starts_batch([query_embeddings], k_probe=k_probe)[0]

    def candidate_starts_batch(self, queries, k_probe=20):
        """`candidate_starts` of several queries (e.g. the phases of one) in one faiss search.

        One search of all their segments is several times faster than one per query: faiss
        multiplies with BLAS only from `nnfp.store.faiss_index.BLAS_MIN_QUERIES` query vectors on.
        """
        queries = [self._check_query(query) for query in queries]
        hits = self.neighbours(np.concatenate(queries), k_probe=k_probe)
        bounds = np.cumsum([0] + [len(query) for query in queries])
        return [self.starts_from_hits(hits[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def probe_width(self, k_probe):
        """The rows `neighbours` returns per segment: `k_probe`, or fewer in a smaller DB."""
        k = min(int(k_probe), self.n_segments)
        if k < 1:
            raise ValueError(f"`k_probe` must be >= 1. Received: k_probe={k_probe}")
        return k

    def neighbours(self, query_embeddings, k_probe=20):
        """The `k_probe` nearest DB rows of each query segment: (n, k) int64, -1 where none.

        A stream searched window by window (`nnfp monitor`) looks each segment up once
        and reuses its rows in every window that holds it (`starts_from_hits`).
        """
        query = self._check_query(query_embeddings)
        k = self.probe_width(k_probe)
        self._set_threads()
        _, hits = self.index.search(query, k)
        return hits

    def starts_from_hits(self, hits):
        """Candidate start rows of a query sequence from its segments' `neighbours` (in order).

        Segment i's neighbour row r votes for a sequence starting at r - i; the unique
        starts whose window fits in its track are returned (as `candidate_starts`).
        """
        hits = np.asarray(hits)
        n_query = len(hits)
        starts = hits - np.arange(n_query)[:, None]
        starts = starts[(hits >= 0) & (starts >= 0)]
        return self._fitting(np.unique(starts), n_query)

    def later_starts(self, starts, rows, n_query):
        """The start rows `rows` rows after each of `starts` in the same track, whose
        window of `n_query` segments fits (as `starts_from_hits`); unique, sorted."""
        starts = np.asarray(starts, np.int64)
        moved = starts + int(rows)
        inside = (moved >= self._track_begin[starts]) & (moved <= self._track_end[starts])
        moved = np.unique(moved[inside])
        return self._fitting(moved, n_query)

    def _fitting(self, starts, n_query):
        # A window running into the next track is no match, unless the query is
        # longer than the whole track: then it is kept and scored on the overlap.
        fits = starts + n_query - 1 <= self._track_end[starts]
        too_short = self._track_end[starts] - self._track_begin[starts] + 1 < n_query
        return self._live_starts(starts[fits | too_short])

    def _live_starts(self, starts):
        """`starts` less the rows of removed tracks (never scored, never answered)."""
        if not self._removed_ids.size or not len(starts):
            return starts
        return starts[~np.isin(self.segment_track[starts], self._removed_ids)]

    def sequence_scores(self, query_embeddings, starts):
        """Mean inner product of the query with the DB window at each start row.

        Window rows beyond the start's track (a query longer than the track)
        contribute 0, so such partial matches are penalised, not dropped.
        Returns (len(starts),) float64.
        """
        query = self._check_query(query_embeddings)
        n_query = len(query)
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size == 0:
            return np.zeros(0)
        # Query row i counts for candidate c while start_c + i is still in c's track.
        n_valid = np.minimum(self._track_end[starts] - starts + 1, n_query)  # (n_candidates,)
        totals = np.zeros(len(starts), dtype=np.float64)
        stored = readable_rows(self.embeddings)
        # Tiles of (query rows x candidates) keep memory flat whatever the query length
        # (one (n_query, n_candidates, d) array was 26 GB for a 30-minute query).
        query_rows = min(n_query, _SCORE_TILE_QUERY_ROWS)
        n_per_tile = max(1, _SCORE_TILE_PAIRS // query_rows)
        for first in range(0, n_query, query_rows):
            offsets = np.arange(first, min(first + query_rows, n_query))  # (q,)
            live = np.flatnonzero(n_valid > first)  # candidates with rows left in their track
            for tile in range(0, len(live), n_per_tile):
                cands = live[tile : tile + n_per_tile]
                rows = starts[cands, None] + offsets  # (c, q)
                valid = offsets < n_valid[cands, None]
                rows = np.minimum(rows, self.n_segments - 1)
                # Only the c * q products that count: sim[c, i] = <q_i, db[start_c + i]>.
                windows = np.asarray(stored[rows.T], dtype=np.float32)  # (q, c, d)
                sims = np.matmul(windows, query[offsets, :, None])[:, :, 0].T  # (c, q)
                self._check_similarities(sims, rows)
                totals[cands] += np.where(valid, sims, 0.0).sum(axis=1, dtype=np.float64)
        return totals / n_query

    def _check_similarities(self, sims, rows):
        """Inner products of unit vectors lie in [-1, 1]: anything else is a damaged store
        (found at search time in an index too large to check on load)."""
        if sims.size and not (np.abs(sims).max() <= 1.0 + NORM_TOLERANCE):  # NaN fails too
            bad, norms = bad_norms(np.asarray(self.embeddings[np.unique(rows)], np.float32))
            row = int(np.unique(rows)[bad[0]]) if bad.size else -1
            raise CorruptIndexError(
                f"{self.source or 'the fingerprint store'}: damaged: a similarity of "
                f"{np.nanmax(np.abs(sims)):.4g} (fingerprints are unit vectors: at most 1)"
                + (f"; row {row} has norm {norms[bad[0]]:.4g}" if bad.size else "")
                + f"; {REBUILD_HINT}"
            )

    def interpolated_starts(self, starts, n_query):
        """The windows around `starts` that `interpolated_scores` can score: each start and
        the one a row earlier in its track, whose window plus one more row stays in the
        track; unique, sorted."""
        starts = np.asarray(starts, np.int64)
        earlier = starts - 1
        both = np.unique(np.concatenate([starts, earlier[earlier >= self._track_begin[starts]]]))
        return both[both + int(n_query) <= self._track_end[both]]

    def interpolated_scores(self, query_embeddings, starts, fraction):
        """`sequence_scores` of windows `fraction` of a hop past each start (0 < fraction < 1).

        The fingerprint of a DB segment between rows r and r + 1 is estimated as the unit
        vector along `(1 - fraction) db[r] + fraction db[r + 1]`; every window must have
        its next row in its track (`interpolated_starts`). Returns (len(starts),) float64.
        """
        query = self._check_query(query_embeddings)
        starts = np.asarray(starts, dtype=np.int64)
        if starts.size and np.any(starts + len(query) > self._track_end[starts]):
            raise ValueError("every window of `interpolated_scores` needs its next row in its track")
        totals = np.zeros(len(starts), dtype=np.float64)
        n_per_tile = max(1, _SCORE_TILE_PAIRS // min(len(query), _SCORE_TILE_QUERY_ROWS))
        for first in range(0, len(query), _SCORE_TILE_QUERY_ROWS):
            offsets = np.arange(first, min(first + _SCORE_TILE_QUERY_ROWS, len(query)))
            for tile in range(0, len(starts), n_per_tile):
                rows = starts[tile : tile + n_per_tile, None] + offsets  # (c, q)
                unique_rows, where = np.unique(np.concatenate([rows, rows + 1]), return_inverse=True)
                block = np.asarray(self.embeddings[unique_rows], dtype=np.float32)
                where = where.reshape(2, *rows.shape)
                mixed = (1.0 - fraction) * block[where[0]] + fraction * block[where[1]]  # (c, q, d)
                mixed /= np.maximum(np.linalg.norm(mixed, axis=-1, keepdims=True), 1e-12)
                totals[tile : tile + n_per_tile] += np.einsum("cqd,qd->c", mixed, query[offsets], dtype=np.float64)
        if totals.size and not (np.abs(totals).max() <= len(query) * (1.0 + NORM_TOLERANCE)):
            self._check_similarities(np.array([np.inf]), starts)
        return totals / len(query)

    def _check_query(self, query_embeddings):
        query = np.asarray(query_embeddings, dtype=np.float32)
        if query.ndim == 1:
            query = query[None]
        if query.ndim != 2 or query.shape[1] != self.dim or len(query) == 0:
            raise ValueError(
                f"`query_embeddings` must have shape (n_segments, {self.dim}). "
                f"Received: shape={np.shape(query_embeddings)}"
            )
        bad, norms = bad_norms(query)
        if bad.size:
            raise ValueError(
                f"`query_embeddings` must be unit vectors (or zero for dead air). Received: row {bad[0]} "
                f"with norm {norms[bad[0]]:.4g}"
            )
        return np.ascontiguousarray(query)
