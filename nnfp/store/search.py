"""Search and ranking: the best distinct places (`Match`) among a query's scored windows."""

from __future__ import annotations

import dataclasses

import numpy as np

from nnfp.store.scoring import SequenceScoring

__all__ = ["Match", "SequenceSearch"]


@dataclasses.dataclass(frozen=True)
class Match:
    """One search result: a track and the offset of the query inside it.

    Attributes:
        track_id: id of the matched track.
        path: the track's relative path.
        offset_s: start of the matched window inside the track, in seconds.
        score: mean inner product of query and DB segments over the window.
        segment_index: DB row of the window's first segment.
        speed: the playback speed at which the query plays the track (1.03: 3 % fast);
            `offset_s` is in the track's own time (`nnfp.catalogue.identify.Identifier`'s
            speed search; 1.0 for a search at one speed).
        confidence: the value the decision "in the catalogue" was taken on
            (`nnfp.catalogue.identify.Identifier`; None where no decision was taken).
        found_speed: the speed of the search grid the match was found at (`speed` is
            refined between grid points from it; the decision goes by this one).
    """

    track_id: int
    path: str
    offset_s: float
    score: float
    segment_index: int
    speed: float = 1.0
    confidence: float | None = None
    found_speed: float = 1.0


class SequenceSearch(SequenceScoring):
    """`FingerprintDB.search` and `places` (a base class of `FingerprintDB`): the scored windows
    of `SequenceScoring` ranked into distinct places, using the database's `segment_track`,
    `segment_start` and track table (`_track_by_id`, `_removed_ids`).
    """

    def search(self, query_embeddings, k_probe=20, n_results=5, min_score=None, collapse_seconds=1.0, hits=None):
        """Finds the tracks and offsets best matching a query of consecutive segments.

        Args:
            query_embeddings: (n, d) fingerprints of consecutive query segments
                on the DB hop (a (d,) vector is one segment).
            k_probe: faiss neighbours retrieved per query segment.
            n_results: number of matches returned, best first.
            min_score: drop matches whose score is below this.
            collapse_seconds: matches of one track whose offsets differ by less than
                this are one place; only the best scoring is kept (None or 0 keeps
                every candidate window).
            hits: optional `neighbours` of the query's segments, already looked up
                (a stream searched window by window looks each segment up once);
                then no faiss search is made and `k_probe` is not used.

        Returns:
            A list of up to `n_results` `Match`, distinct places, sorted by
            decreasing score.
        """
        if int(n_results) < 1:
            raise ValueError(f"`n_results` must be >= 1. Received: n_results={n_results}")
        if hits is None:
            starts = self.candidate_starts(query_embeddings, k_probe=k_probe)
        else:
            starts = self.starts_from_hits(hits)
        scores = self.sequence_scores(query_embeddings, starts)
        return self.places(starts, scores, n_results=n_results, min_score=min_score, collapse_seconds=collapse_seconds)

    def places(
        self, starts, scores, shifts=None, n_results=5, min_score=None, collapse_seconds=1.0, reported=None
    ):
        """Best distinct places among scored candidate windows (`search`'s last step).

        Args:
            starts: (n,) DB start rows; scores: (n,) their sequence scores.
            shifts: optional (n,) seconds subtracted from each window's offset (the
                query phase that produced it: the query was cut that much later).
            n_results, min_score, collapse_seconds: as for `search`.
            reported: optional (n,) scores the matches report and `min_score` applies
                to, when the windows are ranked by other `scores` (interpolated windows,
                `nnfp.catalogue.identify.Identifier`, report the score of a real DB window).

        Returns:
            Up to `n_results` `Match`, best first; per track, no two offsets closer
            than `collapse_seconds`.
        """
        starts = np.asarray(starts, np.int64)
        scores = np.asarray(scores, np.float64)
        offsets = self.segment_start[starts].astype(np.float64)
        if shifts is not None:
            offsets = offsets - np.asarray(shifts, np.float64)
        reported = scores if reported is None else np.asarray(reported, np.float64)
        order = np.argsort(-scores, kind="stable")
        if min_score is not None:
            order = order[reported[order] >= min_score]
        tracks = self.segment_track[starts]
        if self._removed_ids.size:  # a removed track is never answered, whatever produced its windows
            order = order[~np.isin(tracks[order], self._removed_ids)]
        kept = {}  # track id -> offsets already reported
        matches = []
        for row in order:
            track_id = int(tracks[row])
            offset = float(offsets[row])
            if collapse_seconds and any(abs(offset - o) < collapse_seconds for o in kept.get(track_id, ())):
                continue
            kept.setdefault(track_id, []).append(offset)
            track = self._track_by_id[track_id]
            matches.append(
                Match(
                    track_id=track["track_id"],
                    path=track["path"],
                    offset_s=offset,
                    score=float(reported[row]),
                    segment_index=int(starts[row]),
                )
            )
            if len(matches) == int(n_results):
                break
        return matches
