"""Play tracking: the plays of catalogue tracks in a stream of window results.

A *play* is a run of windows agreeing on one track whose offset advances one second per
second of recording (a constant alignment, `track time - recording time`). Each window's
result is its best places in the index (track, offset, score), best first, and those of them
that clear the decision threshold (its *matches*); `PlayTracker` turns these into plays:

- a match that continues a candidate at its alignment extends it; otherwise the best match
  opens a candidate, which becomes a play after `min_windows` agreeing windows; a play is
  reported when its first and last agreeing windows lie at least `min_span` apart (with the
  window's length there, two of them share no audio: overlapping windows hear mostly the same
  seconds and agree by chance together);
- plays survive short dropouts (talk-over, a noisy patch), and longer ones while their
  alignment stays among a window's best places at any score (`PlayTracker._hold`); a play
  confirmed in a noisy patch starts where its alignment was already the best place
  (`PlayTracker._lead_in`);
- plays end when another track is confirmed (track changes and crossfades; a crossfade's
  boundary is its middle) or after `max_gap` without being heard, and are emitted as soon as
  they end;
- the same track at another alignment (bars that repeat inside it) is a rival of the play,
  and the alignment with the most windows wins (`PlayTracker._yield_to_rival`); a play inside
  another track's play that goes on around it is dropped (`PlayTracker._nested`); one
  recording held under two names is one play (`PlayTracker._same_audio`);
- start and end are refined to the hop from the similarity of each recording segment to the
  aligned track segment (a two-level step fit).

No audio, model or index search happens here: the tracker keeps a ring of the recording's
recent fingerprints (for the refinement) and reads the database's stored rows; searching a
window is `PlayTracker.search`, which `nnfp.catalogue.monitor` implements over the index.
`PlayTracker.observe` takes one window's results directly. The figures behind the rules are in
docs/monitor.md.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from nnfp.defaults import SAME_AUDIO

__all__ = ["Candidate", "Detection", "PlayTracker", "mostly_shared"]

# The tracker's constants. Times in seconds; docs/monitor.md has the measurements behind them.

# Open candidate plays kept at once; beyond it the oldest unconfirmed one goes first.
_LIVE_CANDIDATES = 64
# An unconfirmed candidate lasts this long without an agreeing window, or `max_gap` where that
# is shorter: a long dropout allowance for plays must not give chance agreements in unknown
# music more time to add up.
_CANDIDATE_GAP_SECONDS = 10.0
# Drop of the aligned similarity (recording segment . aligned track segment) between the two
# levels of the step fit that marks a play's boundary; a smaller drop means the play runs to
# the end of the fitted region (the stream's or the track's start or end).
_STEP_MARGIN = 0.1
# Two tracks seen holding one recording (mean similarity of their aligned stored fingerprints
# over a window >= `nnfp.defaults.SAME_AUDIO`) are remembered with their alignment; at that
# alignment they count as one recording down to this similarity, where a remaster or another
# edit of it strays for a while (`PlayTracker.same_recording`). Pairs remembered at once:
_SAME_AUDIO_REMEMBERED = 0.5
_SAME_PAIRS_KEPT = 256
_SAME_PAIR_ALIGNMENTS = 8  # alignments remembered per pair
# A play is reported under the other name of its recording when that track's stored
# fingerprints are this much more like the recording over the play (mean similarity).
_RENAME_MARGIN = 0.005
# A candidate's alignment is the median of the alignments of its last this many agreeing
# windows: it follows a slow drift (a track played slightly fast) but not one stray window.
_ALIGNMENT_WINDOWS = 9
# Recent plays remembered after they were emitted: a rival alignment of an emitted play, or a
# chance match inside it (`_nested`), is still recognised once the play has ended.
_EMITTED_KEPT = 16
# A play's speed is corrected by the drift of its alignment (seconds of track time per second)
# once its segments held span this long (shorter: the stream's speed); the drift is clipped to
# +-_MAX_DRIFT.
_SPEED_FIT_SECONDS = 10.0
_MAX_DRIFT = 0.05
# Rows either side of a play's alignment searched for each segment's best row (`_play_speed`).
_DRIFT_ROWS = 4


@dataclasses.dataclass(frozen=True)
class Detection:
    """One play of a catalogue track in a recording.

    Attributes:
        recording: the recording's name (`"-"` for stdin).
        start_s, end_s: where the play starts and ends in the recording, in seconds.
        track: the track's relative path in the index.
        track_start_s: the track position playing at `start_s`.
        score: mean sequence score of the play's windows (mean cosine similarity).
        cut_short: the monitor was stopped while the play was still open (`monitor_stream`'s
            `stop`): it may have gone on after `end_s`. In `as_dict` only when True.
        speed: the speed the track plays at (1.03: 3 % fast), when the monitor searched
            several speeds (`monitor_stream`'s `speeds`); None otherwise (not in `as_dict`).
    """

    recording: str
    start_s: float
    end_s: float
    track: str
    track_start_s: float
    score: float
    cut_short: bool = False
    speed: float | None = None

    def as_dict(self):
        out = {
            "recording": self.recording,
            "start_s": round(self.start_s, 2),
            "end_s": round(self.end_s, 2),
            "track": self.track,
            "track_start_s": round(self.track_start_s, 2),
            "score": round(self.score, 4),
        }
        if self.speed is not None:
            out["speed"] = round(self.speed, 4)
        if self.cut_short:
            out["cut_short"] = True
        return out


@dataclasses.dataclass
class Candidate:
    """A run of windows agreeing on one track and one alignment."""

    track_id: int
    path: str
    delta: float  # track time - recording time, seconds
    first: int  # first agreeing window (segment number of its start)
    last: int  # last agreeing window
    scores: list
    deltas: list
    start_s: float  # refined start in the recording
    confirmed: bool = False
    heard: int = -1  # last window agreeing, or holding it (`PlayTracker._hold`)
    windows: list = dataclasses.field(default_factory=list)  # the agreeing windows, as `deltas`

    @property
    def latest(self):
        """The last window the candidate was heard in, agreeing or held."""
        return max(self.last, self.heard)


def mostly_shared(a, b):
    """Spans `a` and `b` (start, end) share at least half of the shorter one."""
    shared = min(a[1], b[1]) - max(a[0], b[0])
    return shared >= 0.5 * max(min(a[1] - a[0], b[1] - b[0]), 1e-9)


class PlayTracker:
    """The plays of catalogue tracks in a stream of fingerprints and their windows' places.

    Feed it the recording's fingerprints with `push` and call `windows` after each push: every
    window now complete is searched (`search`, which a subclass implements) and its results
    go through `observe`; the plays that ended are yielded. `windows(..., final=True)` at the
    end of the stream yields the plays still open. Windows are numbered by the segment they
    start at; `window`, `step` and `max_gap` are in segments.

    Args:
        db: the `nnfp.store.db.FingerprintDB` searched: its `hop_seconds`, `segment_track`,
            stored rows (`embeddings`), `sequence_scores` and `interpolated_scores` are read.
        window: segments per window.
        step: segments between window starts.
        max_gap: a confirmed play survives this many segments without an agreeing window (or
            longer while held, `_hold`).
        min_windows: agreeing windows a play needs to be reported.
        tolerance: seconds a window's alignment may stray from its candidate's.
        seg_seconds: the length of a segment, seconds.
        batch: segments pushed at a time (at most): sizes the ring of recent fingerprints.
        speed: the speed the stream was resampled from (its times are the track's), reported
            in each `Detection` (corrected by the play's drift); None: not reported.
        min_span: segments between the first and the last agreeing window a play needs to be
            reported (0: any; `nnfp.catalogue.monitor.monitor_stream` asks a window's length).
            A confirmed play that falls short is tracked like any other (it ends the plays
            before it, rival alignments yield to it) but never reported.

    Example (`windows` calls `search(w, query, hits)`, which returns the window's best places,
    best first, and those of them that clear the threshold; `nnfp.store.search.Match`es):

    >>> class Tracker(PlayTracker):
    ...     def search(self, w, query, hits):
    ...         places = self.db.search(query, n_results=3)
    ...         return places, [m for m in places if m.score >= 0.6]
    >>> tracker = Tracker(db, 9, 2, 60, 3, 1.0, 1.0, 64)
    >>> tracker.push(0, fingerprints); plays = list(tracker.windows("rec", final=True))
    """

    def __init__(self, db, window, step, max_gap, min_windows, tolerance, seg_seconds, batch, speed=None, min_span=0):
        self.db = db
        self.speed = speed  # the speed this stream was resampled from (its times are the track's)
        self.hop_s = float(db.hop_seconds)
        self.window, self.step, self.max_gap = window, step, max_gap  # in segments
        # Unconfirmed candidates get no longer than confirmed plays: a longer dropout allowance
        # for plays must not give chance agreements in unknown music more time to add up.
        self.candidate_gap = min(max_gap, max(int(round(_CANDIDATE_GAP_SECONDS / self.hop_s)), 1))
        self.min_windows, self.tolerance = min_windows, tolerance
        self.min_span = int(min_span)
        self.seg_seconds = seg_seconds
        self.candidates = []
        # (segment number, fingerprint, its nearest DB rows or None): the recent past. Each
        # segment is looked up once, when it arrives, and its rows serve every window holding it.
        self.ring = collections.deque()
        # Segments the windows of one batch and their refinements may look back at.
        self.keep = batch + max_gap + 4 * window + 8
        self.newest = -1
        tracks = db.segment_track
        boundaries = np.flatnonzero(tracks[1:] != tracks[:-1]) + 1
        begins = np.concatenate([[0], boundaries])
        ends = np.concatenate([boundaries, [len(tracks)]])
        self.rows_of = {int(tracks[b]): (int(b), int(e)) for b, e in zip(begins, ends, strict=True)}
        self.next_window = 0
        # (window, its best places at any score) of the last max_gap of windows: `_lead_in`.
        self.history = collections.deque(maxlen=max(max_gap // max(step, 1), 1) + 1)
        self.emitted = collections.deque(maxlen=_EMITTED_KEPT)  # (track, span, windows, first, last) of recent plays
        # {(track a, track b), a < b: [alignments (b's time - a's time) at which they held one recording]}
        self.same_pairs = collections.OrderedDict()

    # -- fingerprints ------------------------------------------------------

    def push(self, first, fingerprints, hits=None):
        """Adds the recording's segments `first, first + 1, ...`: their fingerprints and, for
        `search`, whatever it was given for each segment (`hits`, one per row, or None)."""
        for i, row in enumerate(fingerprints):
            self.ring.append((first + i, row, None if hits is None else hits[i]))
        self.newest = first + len(fingerprints) - 1
        while self.ring and self.ring[0][0] < self.newest - self.keep:
            self.ring.popleft()

    def _segments(self, lo, hi):
        """Segment numbers, fingerprints and `hits` (None when pushed without) of segments
        lo..hi (inclusive) still held."""
        base = self.ring[0][0]
        picked = [self.ring[i - base] for i in range(max(lo, base), min(hi, self.newest) + 1)]
        if not picked:
            return np.zeros(0, np.int64), None, None
        numbers, fingerprints, hits = zip(*picked, strict=True)
        return np.array(numbers), np.stack(fingerprints), None if hits[0] is None else np.stack(hits)

    def _track_rows(self, candidate, numbers):
        """DB rows of `candidate`'s track aligned with recording segments `numbers`, and
        which of them lie inside the track."""
        begin, end = self.rows_of[candidate.track_id]
        rows = begin + np.round((numbers * self.hop_s + candidate.delta) / self.hop_s).astype(np.int64)
        return rows, (rows >= begin) & (rows < end)

    def _at_alignment(self, candidate, match, t):
        """`match` (of a window starting at recording time `t`) is `candidate`'s track at
        its alignment, within the tolerance."""
        return match.track_id == candidate.track_id and abs(match.offset_s - t - candidate.delta) <= self.tolerance

    def _aligned_similarity(self, candidate, lo, hi):
        """Similarity of recording segments lo..hi to the track segments aligned with them.

        Only segments whose aligned track position lies inside the track are returned: a
        play cannot start before its track does or outlast it, and a made-up score for
        those segments would be the largest step in the fit and pull the boundary onto
        the track's edge (a track restarted after a jingle was cut seconds early).
        """
        numbers, query, _ = self._segments(lo, hi)
        if query is None:
            return numbers, np.zeros(0)
        rows, inside = self._track_rows(candidate, numbers)
        numbers, rows, query = numbers[inside], rows[inside], query[inside]
        sims = np.einsum("nd,nd->n", np.asarray(self.db.embeddings[rows], np.float32), query)
        return numbers, sims

    @staticmethod
    def _step(sims):
        """Best two-level fit of `sims`: (first index of the right part, left mean - right mean)."""
        if len(sims) < 2:
            return 0, 0.0
        left = np.cumsum(sims)[:-1]
        k = np.arange(1, len(sims))
        right = sims.sum() - left
        # Minimising the squared error of a step = maximising this between-part term.
        gain = left**2 / k + right**2 / (len(sims) - k)
        best = int(np.argmax(gain))
        return best + 1, float(left[best] / k[best] - right[best] / (len(sims) - k[best]))

    def _refine_start(self, candidate):
        numbers, sims = self._aligned_similarity(candidate, candidate.first - self.window, candidate.first + self.window - 1)
        if not len(sims):
            return candidate.first * self.hop_s
        split, drop = self._step(sims)
        if drop > -_STEP_MARGIN:  # no rise: the play starts with the region (stream or track start)
            split = 0
        b = numbers[split]
        if b == 0:
            return 0.0
        # A segment is counted as in the play once half of it is: unbiased to +-hop/2.
        return b * self.hop_s + self.seg_seconds / 2 - self.hop_s / 2

    def _refine_end(self, candidate):
        numbers, sims = self._aligned_similarity(candidate, candidate.last, candidate.last + 2 * self.window)
        if not len(sims):
            return candidate.last * self.hop_s + self.seg_seconds
        split, drop = self._step(sims)
        if drop < _STEP_MARGIN:  # no fall: the play lasts to the region's end (stream or track end)
            split = len(sims)
        e = numbers[max(split - 1, 0)]
        return e * self.hop_s + self.seg_seconds / 2 + self.hop_s / 2

    def _span(self, candidate):
        """Recording time from the candidate's start to the end of its last agreeing window."""
        return candidate.start_s, (candidate.last + self.window) * self.hop_s

    def _overlap(self, a, b):
        """Same track (or the same recording under another name, `_same_audio`) over mostly
        the same stretch of recording: rival alignments of one play (bars that repeat inside
        the track), not two plays of it (those follow each other)."""
        if not mostly_shared(self._span(a), self._span(b)):
            return False
        if a.track_id == b.track_id:
            return True
        return any(self._same_audio(a, b.track_id, w * self.hop_s + b.delta, w)
                   for w in {max(a.first, b.first), min(a.last, b.last)})

    def _yield_to_rival(self, candidate):
        """True when a live rival alignment of `candidate` holds at least as many agreeing
        windows; the rival then starts where `candidate` did, if earlier (one play)."""
        n = len(candidate.scores)
        for rival in self.candidates:
            if rival is not candidate and rival.confirmed and self._overlap(candidate, rival) and len(rival.scores) >= n:
                rival.start_s = min(rival.start_s, candidate.start_s)
                return True
        return False

    def _nested(self, candidate):
        """True when another track's play agreed both before and after all of `candidate`.

        That play went on through it at one alignment, so its track was heard all along and
        `candidate` is a chance match in a noisy patch of it (a few windows above the
        threshold inside a play held through loud noise), not a play.
        """
        plays = [(c.track_id, c.first, c.last) for c in self.candidates if c.confirmed and c is not candidate]
        plays += [(track, first, last) for track, _, _, first, last in self.emitted]
        return any(track != candidate.track_id and first < candidate.first and last > candidate.last
                   for track, first, last in plays)

    def _emit(self, candidate, recording, successor=None):
        """Yields the finished play unless a rival alignment of it holds more agreeing windows
        or it lies inside another play (`_nested`)."""
        if self._yield_to_rival(candidate) or self._nested(candidate):
            return
        if candidate.windows[-1] - candidate.windows[0] < self.min_span:
            return  # its agreeing windows heard too little audio apart (`min_span`)
        n = len(candidate.scores)
        span = self._span(candidate)
        if any(track == candidate.track_id and count >= n and mostly_shared(span, other)
               for track, other, count, _, _ in self.emitted):
            return
        self.emitted.append((candidate.track_id, span, n, candidate.first, candidate.last))
        yield self._finish(candidate, recording, successor)

    def _finish(self, candidate, recording, successor=None):
        end = self._refine_end(candidate)
        if successor is not None and candidate.start_s < successor.start_s < end:
            # A crossfade: both tracks are heard in between; the boundary is its middle.
            end = successor.start_s = (successor.start_s + end) / 2
        end = max(end, candidate.start_s + self.hop_s)
        delta = float(np.median(candidate.deltas))
        path, delta = self._best_name(candidate, delta, end)
        return Detection(
            recording=recording,
            start_s=float(candidate.start_s),
            end_s=float(end),
            track=path,
            track_start_s=float(max(candidate.start_s + delta, 0.0)),
            score=float(np.mean(candidate.scores)),
            speed=self._play_speed(candidate),
        )

    def _best_name(self, candidate, delta, end_s):
        """The name a play is reported under, and its alignment: its own track's, or that of a
        track remembered holding the same recording (`same_recording`) whose stored
        fingerprints are more like the recording over the play (a remaster and its original:
        the one that was played). Compared over the play's segments still held."""
        own = candidate.track_id
        names = [(other_b, delta + lag) for (a, other_b), lags in self.same_pairs.items() if a == own for lag in lags]
        names += [(a, delta - lag) for (a, b), lags in self.same_pairs.items() if b == own for lag in lags]
        if not names:
            return candidate.path, delta
        lo = int(np.ceil(candidate.start_s / self.hop_s))
        hi = int(np.floor((end_s - self.seg_seconds) / self.hop_s))

        def similarity(track_id, alignment):
            numbers, sims = self._aligned_similarity(
                dataclasses.replace(candidate, track_id=track_id, delta=alignment), lo, hi)
            return float(np.mean(sims)) if len(sims) else -np.inf

        mine = similarity(own, delta)
        best, best_similarity = (candidate.path, delta), mine
        paths = {t["track_id"]: t["path"] for t in self.db.tracks}
        for track_id, alignment in names:
            value = similarity(track_id, alignment)
            if value > best_similarity + _RENAME_MARGIN and self.db.is_live(track_id):
                best, best_similarity = (paths[track_id], alignment), value
        return best

    def _play_speed(self, candidate):
        """The speed of a play: the stream's, corrected by the drift of its alignment (a track
        played 1 % faster than the stream's speed gains 0.01 s of track time per second).

        The drift is fitted on the play's segments still held: each segment's best row of
        the track within `_DRIFT_ROWS` of the play's alignment, placed between rows by a
        parabola through its similarity to the best row and its neighbours, and a line through
        those positions (the median of the slopes of pairs at least `_SPEED_FIT_SECONDS / 2`
        apart: talk-over and noisy segments stray without moving it). The windows' own
        offsets lie on the index hop, too coarse for a drift of a fraction of a percent
        (their slope is the fallback where too few segments are held)."""
        if self.speed is None:
            return None
        drift = self._segment_drift(candidate)
        if drift is None:
            times = np.asarray(candidate.windows, np.float64) * self.hop_s
            if len(times) < 3 or np.ptp(times) < _SPEED_FIT_SECONDS:
                return self.speed
            drift = np.polyfit(times, np.asarray(candidate.deltas, np.float64), 1)[0]
        return float(self.speed * (1.0 + np.clip(drift, -_MAX_DRIFT, _MAX_DRIFT)))

    def _segment_drift(self, candidate):
        """Track seconds gained per recording second over the play (`_play_speed`); None when
        its held segments span less than `_SPEED_FIT_SECONDS`."""
        numbers, query, _ = self._segments(candidate.windows[0], candidate.windows[-1] + self.window - 1)
        if query is None or len(numbers) < 2 or np.ptp(numbers) * self.hop_s < _SPEED_FIT_SECONDS:
            return None
        begin, end = self.rows_of[candidate.track_id]
        aligned, _ = self._track_rows(candidate, numbers)
        lo = max(int(aligned.min()) - _DRIFT_ROWS - 1, begin)
        hi = min(int(aligned.max()) + _DRIFT_ROWS + 2, end)
        if hi - lo < 3:
            return None
        sims = np.asarray(query, np.float32) @ np.asarray(self.db.embeddings[lo:hi], np.float32).T
        near = np.abs(np.arange(lo, hi)[None, :] - aligned[:, None]) <= _DRIFT_ROWS
        masked = np.where(near, sims, -np.inf)
        best = np.argmax(masked, axis=1)
        inner = (best > 0) & (best < hi - lo - 1) & np.isfinite(masked[np.arange(len(best)), best])
        rows = np.arange(len(best))[inner]
        if len(rows) < 2:
            return None
        k = best[inner]
        left, mid, right = sims[rows, k - 1], sims[rows, k], sims[rows, k + 1]
        curve = left - 2 * mid + right
        shift = np.where(curve < 0, 0.5 * (left - right) / np.where(curve < 0, curve, -1.0), 0.0)
        position = (lo + k + np.clip(shift, -0.5, 0.5)) * self.hop_s  # track time of each segment
        times = numbers[inner] * self.hop_s
        i, j = np.triu_indices(len(times), 1)
        apart = times[j] - times[i] >= _SPEED_FIT_SECONDS / 2
        if not apart.any():
            return None
        slopes = (position[j[apart]] - position[i[apart]]) / (times[j[apart]] - times[i[apart]])
        return float(np.median(slopes) - 1.0)

    # -- windows -----------------------------------------------------------

    def windows(self, recording, final=False):
        """Searches every window now complete; yields the plays that ended."""
        while self.next_window + self.window - 1 <= self.newest:
            w = self.next_window
            _, query, hits = self._segments(w, w + self.window - 1)
            places, matches = self.search(w, query, hits)
            yield from self.observe(w, places, matches, recording)
            self.next_window += self.step
        if final:
            self.candidates = [c for c in self.candidates if c.confirmed]
            # Rival alignments of one play yield to the one with the most windows (fewest
            # first); the rest are reported in the order they started.
            for candidate in sorted(self.candidates, key=lambda c: len(c.scores)):
                if self._yield_to_rival(candidate):
                    self.candidates.remove(candidate)
            for candidate in sorted(self.candidates, key=lambda c: c.start_s):
                self.candidates.remove(candidate)
                yield from self._emit(candidate, recording)

    def search(self, w, query, hits):
        """Window `w`'s results: `(places, matches)`, its best places at any score, best first
        (`nnfp.store.search.Match`es; the holds and lead-ins look at them), and the places that
        clear the decision threshold, in the same order. `query`: the window's fingerprints
        (window, d); `hits`: what `push` was given for its segments (None if nothing)."""
        raise NotImplementedError("a PlayTracker subclass searches its windows (`search`)")

    def _agreeing(self, match, delta, exclude=(), w=None):
        """The candidate that `match` continues: its track at its alignment or, given the
        window `w`, a confirmed play of another track holding the same recording there."""
        for candidate in self.candidates:
            if (candidate.track_id == match.track_id and abs(candidate.delta - delta) <= self.tolerance
                    and candidate not in exclude):
                return candidate
        if w is not None:
            for candidate in self.candidates:
                if (candidate.confirmed and candidate.track_id != match.track_id and candidate not in exclude
                        and self._same_audio(candidate, match.track_id, match.offset_s, w)):
                    return candidate
        return None

    def _same_audio(self, candidate, track_id, offset_s, w):
        """True when the index holds the same recording in track `track_id` from `offset_s`
        (window `w`'s start) as at `candidate`'s alignment over window `w`.

        A catalogue may hold one recording under two names (an album track and its single,
        a cut of a longer piece). Both are the index's best places in turn and no system
        can tell which was played, so the play keeps the name it was found under instead
        of breaking into pieces at every change.

        The two tracks' rows need not be on one grid: the other track's rows are compared
        one row either way and half a row either way (normalised mixes of neighbouring
        rows, as `FingerprintDB.interpolated_scores`); the best mean similarity counts.
        """
        rows, inside = self._track_rows(candidate, np.arange(w, w + self.window))
        other_begin, other_end = self.rows_of[track_id]
        start = other_begin + int(round(offset_s / self.hop_s))
        # One row either way must stay in the other track (its last row: other_end - 1).
        if not inside.all() or start - 1 < other_begin or start + self.window >= other_end:
            return False
        mine = np.asarray(self.db.embeddings[rows], np.float32)
        starts = np.array([start - 1, start, start + 1])
        best = max(self.db.sequence_scores(mine, starts).max(), self.db.interpolated_scores(mine, starts[:2], 0.5).max())
        return self.same_recording(candidate.track_id, w * self.hop_s + candidate.delta, track_id, offset_s, best)

    def same_recording(self, track_a, time_a, track_b, time_b, similarity):
        """Whether track `track_a` at `time_a` and `track_b` at `time_b` (seconds) hold one
        recording, given the mean similarity of their stored fingerprints over a window there.

        At `SAME_AUDIO` or above they do, and the pair is remembered with its alignment (b's
        time - a's time). A remaster or another edit of a recording can stray below it for a
        stretch (a different mix of one passage): at an alignment already seen, the pair is
        still one recording down to `_SAME_AUDIO_REMEMBERED`. Without this, the two names
        take the best place in turn there, each the other's rival, and neither is reported.
        """
        if track_a == track_b:
            return False
        key, lag = ((track_a, track_b), time_b - time_a) if track_a < track_b else ((track_b, track_a), time_a - time_b)
        lags = self.same_pairs.get(key)
        if similarity >= SAME_AUDIO:
            if lags is None:
                lags = self.same_pairs[key] = []
                if len(self.same_pairs) > _SAME_PAIRS_KEPT:
                    self.same_pairs.popitem(last=False)
            self.same_pairs.move_to_end(key)
            if all(abs(lag - seen) > self.hop_s for seen in lags):
                lags.append(lag)
                del lags[:-_SAME_PAIR_ALIGNMENTS]  # the latest few (a loop shared by two tracks holds many)
            return True
        return (similarity >= _SAME_AUDIO_REMEMBERED and lags is not None
                and any(abs(lag - seen) <= self.hop_s for seen in lags))

    @staticmethod
    def _extend(candidate, w, match, delta):
        candidate.last = w
        candidate.scores.append(match.score)
        candidate.deltas.append(delta)
        candidate.windows.append(w)
        candidate.delta = float(np.median(candidate.deltas[-_ALIGNMENT_WINDOWS:]))

    def _open(self, w, match):
        delta = match.offset_s - w * self.hop_s
        candidate = Candidate(match.track_id, match.path, delta, w, w, [match.score], [delta], 0.0, windows=[w])
        candidate.start_s = self._refine_start(candidate)
        self.candidates.append(candidate)
        if len(self.candidates) > _LIVE_CANDIDATES:
            self.candidates.remove(min(self.candidates, key=lambda c: (c.confirmed, c.last)))
        return candidate

    def _hold(self, w, places, t, busy):
        """Confirmed plays whose alignment is among the window's best places (at any score)
        are still heard (talk-over, a loud noisy patch): they go on without a new score, and
        another play confirmed meanwhile does not end them. Their boundaries and `first`/`last`
        stay those of agreeing windows: in a small index a place is often among a window's few
        best places (3 in `nnfp monitor`) by chance, so a hold keeps a play open longer but never
        moves its end.

        The calibrated threshold guards a choice among every place of the index; this is
        one place chosen beforehand. In broadcasts, the alignment of the play before was
        practically never among the best places of a window of the unknown music after it,
        and it was there in most windows of plays below the threshold or at another place
        (docs/monitor.md).
        """
        for candidate in self.candidates:
            if candidate.confirmed and candidate.latest < w and not any(candidate is b for b in busy):
                if any(self._at_alignment(candidate, m, t) for m in places):
                    candidate.heard = w

    def _lead_in(self, candidate):
        """Moves a newly confirmed play's start back over the windows before its first
        agreeing one whose best place (at any score) was its alignment.

        A play that begins in a noisy patch is often the index's best place for many
        windows before one clears the threshold; it began with them. The walk stops after
        a window's length of windows with another best place (the play before, unknown
        music) or at the oldest window kept (`max_gap` back); the start is then refined
        from there.
        """
        first, misses = candidate.first, 0
        for w, places in reversed(self.history):
            if w >= candidate.first:
                continue
            if places and self._at_alignment(candidate, places[0], w * self.hop_s):
                first, misses = w, 0
            else:
                misses += self.step
                if misses > self.window:
                    break
        if first < candidate.first:
            candidate.first = first
            candidate.start_s = self._refine_start(candidate)

    def observe(self, w, places, matches, recording):
        """Takes window `w`'s results (`search`'s `places` and `matches`); yields the plays
        that ended with it. Windows come in order, `step` apart."""
        t = w * self.hop_s
        self.history.append((w, places))
        extended, used = None, None
        for match in matches:  # the best match that continues a candidate extends it
            extended = self._agreeing(match, match.offset_s - t, w=w)
            if extended is not None:
                same_track = extended.track_id == match.track_id
                self._extend(extended, w, match, match.offset_s - t if same_track else extended.delta)
                used = match
                break
        if extended is None and matches:
            extended, used = self._open(w, matches[0]), matches[0]
        # The same track at other alignments (its bars repeat) is followed too, so that the
        # alignment holding the play longest wins when the rivals are settled (`_emit`).
        rivals = []
        for match in matches:
            if extended is None or match is used or match.track_id != extended.track_id:
                continue
            delta = match.offset_s - t
            if abs(delta - extended.delta) <= self.tolerance:
                continue  # the same alignment, found again a little apart
            rival = self._agreeing(match, delta, exclude=(extended, *rivals))
            if rival is None:
                rival = self._open(w, match)
            else:
                self._extend(rival, w, match, delta)
            rivals.append(rival)
        self._hold(w, places, t, busy=(extended, *rivals))
        for rival in rivals:
            if not rival.confirmed and len(rival.scores) >= self.min_windows:
                rival.confirmed = True
        if extended is not None and not extended.confirmed and len(extended.scores) >= self.min_windows:
            extended.confirmed = True
            self._lead_in(extended)
            # A newly confirmed play ends the plays heard before it (track change, crossfade).
            for other in sorted(self.candidates, key=lambda c: c.start_s):
                if other is not extended and other.latest < extended.last:
                    if other.confirmed and self._overlap(other, extended):
                        continue  # rival alignments of one play: settled when one of them ends
                    self.candidates.remove(other)
                    if other.confirmed:
                        yield from self._emit(other, recording, successor=extended)
        for candidate in sorted(self.candidates, key=lambda c: c.start_s):
            if w - candidate.latest > (self.max_gap if candidate.confirmed else self.candidate_gap):
                self.candidates.remove(candidate)
                if candidate.confirmed:
                    yield from self._emit(candidate, recording)
