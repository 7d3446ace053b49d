"""Identify query audio against a saved index: which track, where, how sure.

>>> identifier = Identifier("my_index")
>>> identifier.identify_file("clip.wav")[0]  # Match(track_id, path, offset_s, score, ...)
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from nnfp.audio.segments import QUIET_DBFS, n_segments, segment_levels_db, segment_waveform
from nnfp.catalogue.calibration import LEAD_WEIGHT, LEGACY_LEAD_WEIGHT, VOTE_WEIGHT
from nnfp.catalogue.fingerprint import (
    fingerprint_segments,
    index_embedder,
    index_sample_rate,
    resolve_model,
)
from nnfp.catalogue.speeds import (
    check_speeds,
    fitted_speed_steps,
    speed_grid,
    speed_step,
    speeds_description,
)
from nnfp.defaults import (
    DEFAULT_DECISION,
    DEFAULT_INTERPOLATE,
    DEFAULT_K_PROBE,
    DEFAULT_MIN_SCORE,
    DEFAULT_PHASES,
    DEFAULT_REFINE,
    DEFAULT_SPEEDS,
    SAME_AUDIO,
    SPEED_LEVEL_PLACES,
    SPEED_LEVEL_WEIGHT,
    SPEED_PENALTY,
    SPEED_STEPS,
)
from nnfp.store.db import FingerprintDB
from nnfp.store.rows import readable_rows

__all__ = [
    "CALIBRATED",
    "DECISIONS",
    "IMPOSTOR_PLACES",
    "INTERPOLATED_OWN_SCORE",
    "LEAD_WEIGHT",
    "LEGACY_LEAD_WEIGHT",
    "SHARPNESS_SHIFTS_S",
    "VOTE_NEIGHBOURS",
    "VOTE_WEIGHT",
    "aligned_similarities",
    "alignment_sharpness",
    "segment_votes",
    "with_votes",
    "sharp_matches",
    "speed_ranking_keys",
    "Identifier",
    "Query",
    "QueryError",
    "identify_result",
    "impostor_score",
    "lead",
    "margins",
    "same_audio",
    "window_similarity",
]

CALIBRATED = "calibrated"  # Identifier(min_score=...): the calibrated threshold of the query's length
SILENT_PEAK_DB = -60.0  # queries quieter than this (peak, dBFS) are rejected as silent
SILENT_RMS_DB = -70.0  # ... and those whose varying part is below this RMS level (dBFS)
INTERPOLATED_OWN_SCORE = "own"  # a calibration's "interpolated_score": interpolated windows report their own
_ONE_BATCH_SEGMENTS = 256  # query phases fingerprinted as one batch up to this many segments
DECISIONS = ("score", "margin", "lead")  # what a match's confidence is: `Identifier(decision=...)`
# "lead": the margin plus LEAD_WEIGHT x the score's lead over the query's IMPOSTOR_PLACES-th best
# distinct place (its own impostor level: how far the answer stands out of everything it resembles).
# Chosen by leave-one-kind-out on the calibration's 7 kinds with the speed grid on, and checked on
# 14 kinds never fitted (MODEL_CARD.md, "Decision"; scripts/decision_scan.py). A calibration
# records the weight it was fitted with (`info["lead_weight"]`); one without it was fitted with
# LEGACY_LEAD_WEIGHT (both defined in `nnfp.catalogue.calibration`).
IMPOSTOR_PLACES = 10
# Alignment sharpness (`alignment_sharpness`): the answer's score minus the mean score of the same
# query fingerprints at alignments SHARPNESS_SHIFTS_S (least, most seconds) away in the same track.
# A calibration may hold a floor per length (`sharpness_floor`, fitted on the right answers of its
# in-catalogue queries only: `nnfp.catalogue.evaluation.SHARPNESS_QUANTILE`); an answer below it
# is "not in the catalogue" (a sustained sound that resembles a stationary stretch of a track
# scores nearly as well a few seconds away; a right answer sits at one place) unless its
# confidence reaches the calibration's `sharpness_yield` of that length: above every flat answer
# of the fitted out-of-catalogue audio (`nnfp.catalogue.calibration.sharpness_yields`), where a
# looped or steady passage of the right track is still answered.
SHARPNESS_SHIFTS_S = (1.0, 5.0)
# Segment votes (`segment_votes`): a segment votes for its answer when no row the index returns
# among its VOTE_NEIGHBOURS nearest, outside the answer's alignment (at most 3 of them) and the
# same audio under another name (3 more per copy), is more similar to it than the aligned row.
VOTE_NEIGHBOURS = 8
_SAME_AUDIO_CHECKS = 3  # rival tracks checked for being the same recording, best first
_RIVAL_PLACES = 10  # distinct places ranked per speed (their tracks are the rivals)
_REFINED_SPEEDS = 2  # the grid speeds other than 1.0 whose best phase-0 place is searched at every phase
# The query's impostor level (`impostor_score`) is the IMPOSTOR_PLACES-th best score of its best
# distinct places ordered by their score, less this for a place found at another speed: the
# places the shipped calibration's "lead" was fitted on (2026-12-06, when places ranked so). It
# is part of the decision statistic, which must not move when the ranking does.
IMPOSTOR_SPEED_PENALTY = 0.04


def identify_result(query, matches, hint=None):
    """The object `nnfp identify --json` prints for one query (and `nnfp serve` answers):
    `{"query", "matches": [{"track", "offset_s", "score", "confidence", "speed"}, ...]}`, plus
    `"hint"` when given."""
    found = [
        {
            "track": m.path, "offset_s": round(m.offset_s, 3), "score": round(m.score, 4),
            **({"confidence": round(m.confidence, 4)} if m.confidence is not None else {}),
            "speed": round(m.speed, 4),
        }
        for m in matches
    ]
    return {"query": query, "matches": found, **({"hint": hint} if hint else {})}


def _wider_speeds(mine, fitted, my_steps=None, fitted_steps=None):
    """Whether a speed setting searches speeds (or a finer grid) beyond the one fitted; the
    steps by query length are `my_steps` and `fitted_steps` where a setting names none (None:
    `nnfp.defaults.SPEED_STEPS`)."""
    if mine is None:
        return False
    if fitted is None:
        return True
    if mine[0] < fitted[0] - 1e-9 or mine[1] > fitted[1] + 1e-9:
        return True
    # a finer grid than fitted at any length: more chances. Steps change only at the tables'
    # lengths, so those lengths and one beyond them all cover every query length.
    lengths = {longest for table in (my_steps or SPEED_STEPS, fitted_steps or SPEED_STEPS)
               for longest, _ in table if np.isfinite(longest)}
    lengths |= {1.0, 3.0, 10.0, max(lengths, default=0.0) + 1.0}
    return any(
        speed_step(mine, seconds, my_steps) < speed_step(fitted, seconds, fitted_steps) - 1e-12 for seconds in lengths
    )


class QueryError(ValueError):
    """A query that cannot be searched (too short, silent, constant). The message starts with the query name."""


def window_similarity(db, first, other, n_rows):
    """The mean cosine of the DB windows of `n_rows` rows at `first` and `other` (as many rows
    as both have left; -inf when one has none)."""
    n = int(min(n_rows, db.n_segments - first, db.n_segments - other))
    if n < 1:
        return -np.inf
    rows = readable_rows(db.embeddings)  # a memmap's slicing costs more than this sum (monitor calls it often)
    a = np.asarray(rows[first : first + n], np.float32)
    b = np.asarray(rows[other : other + n], np.float32)
    return float(np.sum(a * b, axis=1).sum() / n)


def same_audio(db, first, other, n_rows):
    """Whether the DB windows of `n_rows` rows at `first` and `other` hold the same audio
    (`window_similarity` >= `nnfp.defaults.SAME_AUDIO`: one recording indexed under two names)."""
    return window_similarity(db, first, other, n_rows) >= SAME_AUDIO


def impostor_score(scores):
    """The query's impostor level: the `IMPOSTOR_PLACES`-th best of its distinct places' scores;
    None with fewer places (no lead over it is counted)."""
    scores = np.sort(np.asarray([s for s in scores if np.isfinite(s)], np.float64))[::-1]
    return float(scores[IMPOSTOR_PLACES - 1]) if len(scores) >= IMPOSTOR_PLACES else None


def lead(score, rival, impostor, floor=0.0, weight=LEAD_WEIGHT):
    """The "lead" confidence: `score - max(rival, floor)` (the margin) plus `weight` x
    `score - impostor` (`impostor_score`; nothing added when it is None)."""
    out = score - max(rival, floor)
    if impostor is not None:
        out += weight * (score - impostor)
    return out


def alignment_sharpness(db, fingerprints, row, track_id):
    """How much better the query `fingerprints` score at the DB window starting at `row` than at
    the windows of the same track `SHARPNESS_SHIFTS_S` away either side (their mean); NaN when
    the track has no such window."""
    fingerprints = np.asarray(fingerprints, np.float32)
    n = max(len(fingerprints), 1)
    least, most = (round(s / db.hop_seconds) for s in SHARPNESS_SHIFTS_S)
    shifts = np.array([k for k in range(-most, most + 1) if abs(k) >= max(least, 1)], np.int64)
    rows = int(row) + shifts
    rows = rows[(rows >= 0) & (rows + n <= db.n_segments)]
    rows = rows[(db.segment_track[rows] == track_id) & (db.segment_track[rows + n - 1] == track_id)]
    if not len(rows):
        return float("nan")
    at = float(db.sequence_scores(fingerprints, np.array([int(row)]))[0])
    return at - float(np.mean(db.sequence_scores(fingerprints, rows)))


def aligned_similarities(db, fingerprints, row, track_id):
    """`(first row, (n,) similarities)`: each of the query `fingerprints` (consecutive segments)
    against its DB row in the window of track `track_id` starting at `row` or a row either side
    (the best mean score: a match found at another query phase lies between two rows); `(None,
    None)` when no such window fits in the track."""
    fingerprints = np.asarray(fingerprints, np.float32)
    n = len(fingerprints)
    rows = np.arange(int(row) - 1, int(row) + 2)
    rows = rows[(rows >= 0) & (rows + n <= db.n_segments)]
    rows = rows[(db.segment_track[rows] == track_id) & (db.segment_track[rows + n - 1] == track_id)]
    if not n or not len(rows):
        return None, None
    first = int(rows[np.argmax(db.sequence_scores(fingerprints, rows))])
    return first, np.sum(fingerprints * np.asarray(db.embeddings[first : first + n], np.float32), axis=1)


def segment_votes(db, fingerprints, row, track_id, hits=None, aligned=None):
    """The share of the query `fingerprints` (consecutive segments) that point at the place by
    themselves: segment i votes when its DB row at the alignment is at least as similar to it as
    the most similar row the index returns outside that alignment (`VOTE_NEIGHBOURS` nearest;
    rows one hop either side of the aligned one, in the same track, are the alignment's, and a
    row whose cosine with the aligned row reaches `SAME_AUDIO` holds the same audio). The
    alignment is the window starting at `row` or a row either side of it in track `track_id`
    (the best mean score: a match found at another query phase lies between two rows). NaN
    when no such window fits in the track. `hits`: the segments' `neighbours`, already looked
    up (at least `VOTE_NEIGHBOURS` per segment; the places of one query share them).
    `aligned`: `aligned_similarities(db, fingerprints, row, track_id)`, already computed.

    A right answer is found segment by segment: most of its segments' nearest rows are its
    own. A chance resemblance of a longer query is the best mean over many middling segments,
    most of which resemble some other place more.
    """
    fingerprints = np.asarray(fingerprints, np.float32)
    n = len(fingerprints)
    first, at = aligned_similarities(db, fingerprints, row, track_id) if aligned is None else aligned
    if first is None:
        return float("nan")
    aligned = first + np.arange(n)
    hits = db.neighbours(fingerprints, k_probe=VOTE_NEIGHBOURS) if hits is None else np.asarray(hits)
    hit_tracks = db.segment_track[np.maximum(hits, 0)]
    near = (hits >= 0) & ~np.isin(hit_tracks, db.removed_track_ids)  # a removed track's rows are no rivals
    near &= ~((np.abs(hits - aligned[:, None]) <= 1) & (hit_tracks == track_id))
    other = np.full(n, -np.inf)
    if near.any():
        # every row needed, read once from the (memory-mapped) store in row order
        rows = np.unique(np.concatenate([hits[near], aligned]))
        block = np.asarray(readable_rows(db.embeddings)[rows], np.float32)
        candidates = block[np.searchsorted(rows, np.where(near, hits, rows[0]))]  # (n, k, d)
        # a row holding the aligned row's audio (one recording under two names) is no rival
        own = block[np.searchsorted(rows, aligned)]
        rival = near & (np.matmul(candidates, own[:, :, None])[:, :, 0] < SAME_AUDIO)
        similar = np.matmul(candidates, fingerprints[:, :, None])[:, :, 0]
        other = np.max(np.where(rival, similar, -np.inf), axis=1).astype(np.float64)
    heard = np.any(fingerprints != 0, axis=1)  # a quiet segment (zeros: `fingerprint_segments`) never votes
    return float(np.mean(heard & (at >= other - 1e-6)))


def with_votes(confidences, places, vote_weight, threshold, votes_of):
    """The `confidences` of `places` plus `vote_weight` x `votes_of(place)` (NaN: 0), for the
    places whose confidence the votes (at most 1) can carry over `threshold` (None: every
    place); the others stay as they are, turned away by it either way. How `rank_query`, the
    fingerprint API and `monitor`'s windows count the segment votes (`segment_votes`)."""
    if not vote_weight:
        return list(confidences)
    return [
        c + vote_weight * float(np.nan_to_num(votes_of(m))) if threshold is None or c + vote_weight >= threshold else c
        for m, c in zip(places, confidences, strict=True)
    ]


def reaches(confidence, level):
    """Whether a `confidence` (None or NaN: none) reaches `level` (None: nothing reaches it)."""
    return level is not None and confidence is not None and bool(np.isfinite(confidence)) and confidence >= level


def sharp_matches(db, fingerprints, matches, floor, sure=None):
    """The `matches` of `fingerprints` whose `alignment_sharpness` is not below `floor` (all of
    them with no floor; NaN, a track with nothing to compare with, passes), or whose
    `confidence` reaches `sure` (the calibration's `sharpness_yield`; None: every match is
    held to the floor)."""
    if floor is None:
        return list(matches)
    return [
        m for m in matches
        if reaches(m.confidence, sure) or not alignment_sharpness(db, fingerprints, m.segment_index, m.track_id) < floor
    ]


def margins(db, places, n_rows, floor=0.0, decision="margin", same=None, weight=LEAD_WEIGHT):
    """Each place's score minus the best score of a place of another track among `places`, or
    `floor` where that is lower (`Identifier.rival_floor`; the same recording under another
    name is no rival); with `decision="lead"`, plus `weight` x the lead over the impostor
    level of `places` (`lead`). `same(place, other)`: whether two places of different tracks hold the
    same recording (default: `same_audio` over `n_rows` rows)."""
    if same is None:
        def same(place, other):
            return same_audio(db, place.segment_index, other.segment_index, n_rows)

    impostor = impostor_score([p.score for p in places]) if decision == "lead" else None
    out = []
    for place in places:
        rival = floor
        for other in places:  # best first
            if other.track_id != place.track_id and not same(place, other):
                rival = max(other.score, floor)
                break
        out.append(lead(place.score, rival, impostor, weight=weight))
    return out


def speed_ranking_keys(matches, penalty=SPEED_PENALTY, level_weight=SPEED_LEVEL_WEIGHT, places=SPEED_LEVEL_PLACES):
    """What the places a speed search found (`nnfp.store.db.Match`es, each with the grid
    speed it was found at) rank by: the score, less `penalty` for a place found at another
    speed than the catalogue's, less `level_weight` x the mean score of the other places
    among the `places` best found at the same speed (a speed at which the query resembles
    much of the catalogue earns less credit). A list of floats, one per match."""
    by_speed = {}
    for match in matches:
        by_speed.setdefault(match.found_speed, []).append(match.score)
    level = {}
    for speed, scores in by_speed.items():
        best = sorted(scores, reverse=True)[:places]
        level[speed] = (sum(best) - best[0]) / (len(best) - 1) if len(best) > 1 else 0.0
    return [
        m.score - level_weight * level[m.found_speed] - (penalty if m.found_speed != 1.0 else 0.0)
        for m in matches
    ]


def _best_per_track(db, starts, scores, track_best):
    """Updates `track_best` `{track_id: (score, start row)}` with the best of these windows."""
    if not len(starts):
        return
    tracks = db.segment_track[starts]
    order = np.lexsort((-scores, tracks))  # by track, best first
    first = np.ones(len(order), bool)
    first[1:] = tracks[order][1:] != tracks[order][:-1]
    for row in order[first]:
        track, score = int(tracks[row]), float(scores[row])
        if track not in track_best or score > track_best[track][0]:
            track_best[track] = (score, int(starts[row]))


def _peak_speed(scores):
    """The speed at the vertex of the parabola through three `{speed: score}` points (kept
    between the lowest and highest); the best-scoring speed when the scores do not make a
    peak or one is -inf (the place not found there)."""
    speeds = sorted(scores)
    values = [scores[s] for s in speeds]
    best = int(np.argmax(values))
    if len(speeds) != 3 or not np.all(np.isfinite(values)):
        return float(speeds[best])
    (x0, x1, x2), (y0, y1, y2) = np.log(speeds), values  # log speed: the grid is geometric
    denominator = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denominator
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denominator
    if a >= 0:
        return float(speeds[best])
    vertex = -b / (2 * a)
    return float(np.exp(np.clip(vertex, x0, x2)))


class Query:
    """A query waveform and its fingerprints at each playback speed searched (`Identifier.query`).

    `fingerprints(speed, phases, seconds)` resamples the query as if played at `speed` back
    to the catalogue's speed (a query 3 % fast is stretched by 1.03) and fingerprints its
    first `seconds` (in that speed's time) at every phase, or `phases`. Fingerprints are
    kept and extended as longer prefixes are asked for, so ranking several prefixes of one
    query (`nnfp evaluate`) at several speeds fingerprints every segment once.
    """

    def __init__(self, identifier, audio, name="query"):
        self.identifier = identifier
        self.audio = np.asarray(audio, np.float32)
        self.name = name
        self.seconds = len(self.audio) / identifier.sample_rate
        self._waveforms = {1.0: self.audio}
        self._prints = {}  # speed -> {shift in samples: (n, d) fingerprints of the first n segments}

    def waveform(self, speed=1.0):
        """The query resampled as if played at `speed` (1.03: stretched by 1.03)."""
        if speed not in self._waveforms:
            from nnfp.audio.io import resample

            rate = self.identifier.sample_rate
            audio = np.asarray(resample(self.audio, rate, rate * speed), np.float32)
            # a one-segment query undone from a slower speed is a little short: its tail is mirrored
            segment = self.identifier.embedder.segment_samples
            if len(audio) < segment <= len(self.audio):
                audio = np.pad(audio, (0, segment - len(audio)), mode="reflect")
            self._waveforms[speed] = audio
        return self._waveforms[speed]

    def fingerprints(self, speed=1.0, phases=None, seconds=None):
        """`[(shift_seconds, (n, d) fingerprints), ...]` per phase (see
        `Identifier.phase_fingerprints`), covering at least the first `seconds` (None: all)."""
        self.prepare([(speed, phases, seconds)])
        phases = self.identifier.phases if phases is None else int(phases)
        store = self._prints[speed]
        return [(shift / self.identifier.sample_rate, store[shift]) for shift in self._shifts(phases) if shift in store]

    def _shifts(self, phases):
        hop = self.identifier.hop_samples
        return sorted({int(round(p * hop / phases)) for p in range(phases)})

    def prepare(self, requests):
        """Fingerprints what `fingerprints(speed, phases, seconds)` needs for every request
        `(speed, phases, seconds)` not yet done, in one batch (one model call per batch rows
        instead of one per speed)."""
        identifier = self.identifier
        rate, hop, segment = identifier.sample_rate, identifier.hop_samples, identifier.embedder.segment_samples
        todo = {}  # (speed, shift) -> new segments
        for speed, phases, seconds in requests:
            phases = identifier.phases if phases is None else int(phases)
            audio = self.waveform(speed)
            upto = len(audio) if seconds is None else min(len(audio), int(np.ceil(seconds * rate)) + 1)
            store = self._prints.setdefault(speed, {})
            for shift in self._shifts(phases):
                have = len(store.get(shift, ())) + len(todo.get((speed, shift), ()))
                need = n_segments(max(upto - shift, 0), segment, hop)
                if need > have:
                    first = shift + have * hop
                    new = segment_waveform(audio[first : shift + (need - 1) * hop + segment], segment, hop)
                    todo[speed, shift] = np.concatenate([todo[speed, shift], new]) if (speed, shift) in todo else new
        if not todo:
            return
        views = list(todo.values())
        if sum(len(view) for view in views) <= _ONE_BATCH_SEGMENTS:
            fingerprints = fingerprint_segments(identifier.embedder, np.concatenate(views))
        else:  # a long query: batches are copied from the views, never the whole query
            fingerprints = np.concatenate([fingerprint_segments(identifier.embedder, view) for view in views])
        first = 0
        for (speed, shift), view in todo.items():
            new = fingerprints[first : first + len(view)]
            store = self._prints[speed]
            store[shift] = np.concatenate([store[shift], new]) if shift in store else new
            first += len(view)


class Identifier:
    """Identifies query audio against a saved index: which track, where, how sure.

    The query is fingerprinted at `phases` phases of the index hop (cut at 0,
    hop/phases, 2 hop/phases, ...; a phase is dropped when it leaves less than one
    segment). Phase 0 is matched with the index (per-segment top-k, offset
    compensation, mean inner product over the whole query); its `refine` best
    windows are scored at every other phase too, the best score per place wins,
    and offsets are corrected by the phase, so they have a resolution of
    hop/phases. A query too short for a second phase (1 s) is also scored between DB
    rows, with interpolated DB fingerprints (`interpolate`). Matches of one track less than `collapse_seconds` apart are one
    place. A match must score at least `match_threshold(query seconds)`, otherwise
    the answer is "not in the catalogue" (an empty list).

    Args:
        index_dir: a folder written by `build_index`.
        model: override the index's model (must produce the same fingerprints).
        k_probe: faiss neighbours per query segment.
        min_score: a fixed threshold; None keeps every candidate; `"calibrated"`
            (default): the index's calibration (`INDEX/calibration.json`, copied from
            the model's when the index was built) for the query's length, or
            `DEFAULT_MIN_SCORE` when the index was built without one (said in
            `calibration_notes`). A calibration that is missing (the index was built with
            one) or altered raises `CalibrationError` here; with a fixed threshold or None
            that is only a note.
        threads: faiss threads; 1 is fastest for single queries on small machines.
        nprobe: IVF lists visited (IVF indexes), None keeps the saved value.
        phases: query phases per index hop (1 = the paper's search).
        refine: only phase 0 is searched in faiss and its `refine` best windows are
            scored at the other phases (at the two DB rows around each); None searches
            every phase (4x the faiss work at 4 phases).
        interpolate: for a query too short for a second phase (1 s), positions per
            index hop at which its best windows are scored again, with DB fingerprints
            interpolated between neighbouring rows (1 = only the DB rows; `phases=1`,
            the paper's search, never interpolates); such a window reports the score of
            the better DB window next to it, which the threshold applies to.
        collapse_seconds: matches of one track closer than this are one place.
        calibration: a `Calibration` or a path overriding the index's.
        trust_model: allow a SavedModel (index's or `model`), which can run arbitrary
            TensorFlow operations; `.keras` models load in Keras safe mode regardless.
        runtime: what fingerprints queries: `"auto"` (default) the index's LiteRT copy of
            its model when its probes agree (no TensorFlow is imported), else TensorFlow;
            `"litert"` or `"tensorflow"` insist on one.
        speeds: the playback speeds searched (`nnfp.catalogue.speeds`): `(lo, hi)` (the
            grid step follows the query's length), `(lo, hi, step)`, or None (only the speed
            of the catalogue). `"auto"` (default): the speeds the calibrated thresholds were
            fitted with (none for a calibration fitted without a speed search, said in
            `calibration_notes`), `DEFAULT_SPEEDS` when no calibration applies. The query is resampled as if played at
            each grid speed and searched (phase 0 only) and the best two speeds at every
            phase; a match reports its speed (`Match.speed`; the best one's refined between
            grid points) and its offset in the track's own time.
        decision: what a match's `confidence` is, which the threshold applies to:
            `"score"` (the similarity), `"margin"` (the score's lead over the best window
            of any other track; the same recording under another name is no rival), or
            `"lead"` (the margin plus a weight x the score's lead over the query's
            `IMPOSTOR_PLACES`-th best distinct place: `lead`; the weight is the
            calibration's, `lead_weight`).
            `"auto"` (default): the calibration's; `"score"` with a fixed `min_score`;
            `DEFAULT_DECISION` with no threshold.

    Attributes:
        calibration_notes: remarks on the threshold's source (an index without a
            calibration, a calibration file from an older nnfp, one that a fixed
            threshold overrides and that is missing or altered), for the caller to show.

    The model must reproduce the probe fingerprints recorded in the index
    (`ModelMismatchError` otherwise), and the index's files their recorded sizes
    (and checksums, for indexes up to `nnfp.store.db.CHECKSUM_ON_LOAD_BYTES`).

    >>> identifier = Identifier("my_index")
    >>> matches = identifier.identify_file("clip.wav", n_results=3)
    >>> matches[0].path, matches[0].offset_s, matches[0].score
    """

    def __init__(
        self,
        index_dir,
        model=None,
        k_probe=DEFAULT_K_PROBE,
        min_score=CALIBRATED,
        threads=1,
        nprobe=None,
        db=None,
        embedder=None,
        phases=DEFAULT_PHASES,
        refine=DEFAULT_REFINE,
        interpolate=DEFAULT_INTERPOLATE,
        collapse_seconds=1.0,
        calibration=None,
        trust_model=False,
        runtime="auto",
        speeds="auto",
        decision="auto",
    ):
        from nnfp.catalogue.calibration import Calibration, index_calibration

        index_dir = Path(index_dir) if index_dir is not None else None
        if int(phases) < 1:
            raise ValueError(f"`phases` must be >= 1. Received: phases={phases}")
        if int(k_probe) < 1:
            raise ValueError(f"`k_probe` must be >= 1. Received: k_probe={k_probe}")
        if int(interpolate) < 1:
            raise ValueError(f"`interpolate` must be >= 1. Received: interpolate={interpolate}")
        if refine is not None and int(refine) < 1:
            raise ValueError(f"`refine` must be >= 1 or None (every phase searched). Received: refine={refine}")
        if min_score is not None and min_score != CALIBRATED and not np.isfinite(float(min_score)):
            raise ValueError(f"`min_score` must be a finite number. Received: min_score={min_score}")
        auto_speeds = isinstance(speeds, str) and speeds == "auto"
        self.speeds = None if auto_speeds else check_speeds(speeds)
        self.speed_steps = SPEED_STEPS  # the grid's step by query length (a setting without a step)
        self.db = db if db is not None else FingerprintDB.load(index_dir, threads=threads)
        if nprobe is not None:
            self.db.set_search_params(nprobe=nprobe)
        meta = self.db.metadata
        if embedder is None:
            rate = index_sample_rate(meta)
            embedder = index_embedder(index_dir, meta, rate, model=model, trust_model=trust_model, runtime=runtime)
        self.embedder = embedder
        self.sample_rate = index_sample_rate(meta)  # the model's, recorded by the index
        self.hop_samples = int(round(self.db.hop_seconds * self.sample_rate))
        self.k_probe = int(k_probe)
        self.min_score = min_score
        self.phases = int(phases)
        self.refine = None if refine is None else int(refine)
        self.interpolate = int(interpolate)
        self.collapse_seconds = collapse_seconds
        self.speed_penalty = SPEED_PENALTY
        self.speed_level_weight = SPEED_LEVEL_WEIGHT
        self.last_query_seconds = None  # length of the latest `identify_audio` query
        self.calibration_notes = []
        if calibration is None and index_dir is not None:
            calibration, self.calibration_notes = index_calibration(
                index_dir, meta, model=resolve_model(model) if model is not None else None,
                required=isinstance(min_score, str) and min_score == CALIBRATED,
            )
        elif calibration is not None and not isinstance(calibration, Calibration):
            calibration = Calibration.load(calibration)
            self.calibration_notes = list(calibration.notes)
        self.calibration = calibration
        calibrated = calibration is not None and isinstance(min_score, str) and min_score == CALIBRATED
        if decision == "auto":
            decision = (
                calibration.info.get("decision", "score") if calibrated
                else "score" if min_score is not None else DEFAULT_DECISION
            )
        if decision not in DECISIONS:
            raise ValueError(f"`decision` must be one of {DECISIONS} or 'auto'. Received: decision={decision!r}")
        self.decision = decision
        # the weight of the impostor lead ("lead"): the one the thresholds were fitted with
        self.lead_weight = (
            float(calibration.info.get("lead_weight", LEGACY_LEAD_WEIGHT)) if calibrated else LEAD_WEIGHT
        )
        # the weight of the segment votes in the confidence (`segment_votes`): the calibration's;
        # none without one (a calibration fitted before votes were counted has none either)
        self.vote_weight = float(calibration.info.get("vote_weight", 0.0)) if calibrated else 0.0
        if auto_speeds:
            self.speeds = check_speeds(calibration.info.get("speeds")) if calibrated else check_speeds(DEFAULT_SPEEDS)
            if calibrated and self.speeds is not None:  # the grid it was fitted with, finer or coarser
                self.speed_steps = fitted_speed_steps(calibration.info)
            if calibrated and self.speeds is None:
                self.calibration_notes.append(
                    "the calibrated thresholds were fitted without a speed search: a song played faster or "
                    "slower than the catalogue is not searched for; recalibrate (`nnfp index calibrate INDEX "
                    "--unknown DIR`) to search speeds"
                )
        # an interpolated window (a one-segment query) reports its own score, which calibrations
        # fitted since 2026-12-08 record; one fitted before reported the better DB window around it
        self.interpolated_own_score = (
            calibration.info.get("interpolated_score") == INTERPOLATED_OWN_SCORE if calibrated else True
        )
        if calibrated and self.interpolate > 1 and self.phases > 1 and not self.interpolated_own_score:
            self.calibration_notes.append(
                "the calibrated thresholds were fitted when a 1 s query's windows between two index rows "
                "reported the score of a row beside them, and are applied so; recalibrate (`nnfp index "
                "calibrate INDEX --unknown DIR`) to score them as themselves (more 1 s queries answered right)"
            )
        if calibrated:
            self._check_search_settings(calibration)

    def _check_search_settings(self, calibration):
        """Refuses a search that gives a query more chances of a false match than the one its
        thresholds were fitted with (more phases, refined windows, neighbours or interpolated
        positions): those thresholds would then admit more than their target. A search with
        fewer chances keeps the target (and finds fewer right answers)."""
        def more(mine, fitted):  # None: every window (refine) is more than any number
            if fitted is None or fitted == "all":
                return False
            return mine is None or int(mine) > int(fitted)

        info = calibration.info
        searched = {"phases": self.phases, "refine": self.refine, "k_probe": self.k_probe,
                    "interpolate": self.interpolate}
        flags = {"phases": "--phases", "refine": "--refine", "k_probe": "--k-probe", "interpolate": "--interpolate"}
        over = [
            f"{flags[key]} {'all' if mine is None else mine} (fitted with {info[key]})"
            for key, mine in searched.items()
            if key in info and more(mine, info[key])
        ]
        fitted_speeds = check_speeds(info.get("speeds"))  # absent: fitted without a speed search
        fitted_steps = fitted_speed_steps(info)
        if _wider_speeds(self.speeds, fitted_speeds, self.speed_steps, fitted_steps):
            over.append(
                f"--speeds {speeds_description(self.speeds, self.speed_steps)} "
                f"(fitted with {speeds_description(fitted_speeds, fitted_steps)})"
            )
        fitted_hop = info.get("hop_seconds")
        if fitted_hop is not None and self.db.hop_seconds < float(fitted_hop) - 1e-9:
            over.append(f"an index hop of {self.db.hop_seconds:g} s (fitted on {float(fitted_hop):g} s: more windows)")
        fitted_model = info.get("model_digest")
        if fitted_model and self.db.metadata.get("model_digest") not in (None, fitted_model):
            raise ValueError(
                "the calibrated thresholds were fitted on another model's fingerprints (model digest "
                f"{fitted_model[:12]}, this index's {self.db.metadata['model_digest'][:12]}): recalibrate "
                "(`nnfp index calibrate INDEX --unknown DIR`), or pass `--min-score X`, which overrides the calibration"
            )
        if over:
            raise ValueError(
                f"the calibrated thresholds were fitted with a narrower search than this one: {', '.join(over)}; "
                "with more chances a query of unknown audio matches more often than the calibration's target. "
                "Search with the calibrated settings, recalibrate with these (`nnfp index calibrate INDEX "
                "--unknown DIR` with the same options), or pass `--min-score X`, which overrides the calibration"
            )

    @property
    def min_query_seconds(self):
        return self.embedder.segment_samples / self.sample_rate

    def match_threshold(self, query_seconds):
        """The score a match of a `query_seconds` long query needs (None: every candidate is a match)."""
        if self.min_score is None:
            return None
        if self.min_score != CALIBRATED:
            return float(self.min_score)
        if self.calibration is None:  # an index built without one (a note says so); never a lost one
            return DEFAULT_MIN_SCORE
        return self.calibration.threshold(query_seconds)

    def long_query_hint(self, query_seconds):
        """A hint for a query longer than every track of the index (None otherwise).

        A query is matched as a whole: one longer than every track holds more than a
        track and matches none of them, however many it contains.
        """
        longest = max((float(track["duration_s"]) for track in self.db.live_tracks), default=0.0)
        if query_seconds is None or query_seconds <= longest:
            return None
        return (
            f"the query ({query_seconds:.1f} s) is longer than every catalogue track (longest {longest:.1f} s): "
            "to find tracks inside a long recording use `nnfp monitor`"
        )

    def check_audio(self, audio, name="query"):
        """Raises `QueryError` for a query too short, silent, near-silent or constant to identify."""
        audio = np.asarray(audio, np.float32)
        if len(audio) < self.embedder.segment_samples:
            raise QueryError(
                f"{name}: too short: {len(audio) / self.sample_rate:.2f} s; a query needs "
                f"at least {self.min_query_seconds:g} s of audio"
            )
        peak = float(np.max(np.abs(audio)))
        peak_db = 20 * np.log10(max(peak, 1e-10))
        if peak_db < SILENT_PEAK_DB:
            raise QueryError(f"{name}: silent (peak {peak_db:.0f} dBFS); nothing to identify")
        varying = audio - np.mean(audio)
        rms_db = 10 * np.log10(max(float(np.mean(np.square(varying, dtype=np.float64))), 1e-20))
        if rms_db < SILENT_RMS_DB:
            what = "constant (DC offset only)" if peak_db >= SILENT_PEAK_DB + 20 else "near-silent"
            raise QueryError(
                f"{name}: {what} (level {rms_db:.0f} dBFS RMS, peak {peak_db:.0f} dBFS); nothing to identify"
            )
        # Dead air is "nothing playing": quiet segments are left out of the search
        # (`fingerprint_segments`), and a query of nothing else has nothing to identify.
        levels = segment_levels_db(segment_waveform(audio, self.embedder.segment_samples, self.hop_samples))
        if levels.max() < QUIET_DBFS:
            raise QueryError(
                f"{name}: dead air (every {self.min_query_seconds:g} s segment is below {QUIET_DBFS:g} dBFS "
                f"RMS, the loudest {levels.max():.0f} dBFS); nothing to identify"
            )

    def fingerprint(self, audio, name="query"):
        """(n_samples,) waveform at the index rate -> (n_segments, d) fingerprints on the hop grid."""
        self.check_audio(audio, name=name)
        segments = segment_waveform(audio, self.embedder.segment_samples, self.hop_samples)
        return fingerprint_segments(self.embedder, segments)  # batches are copied from the view

    def phase_fingerprints(self, audio, name="query", phases=None):
        """Fingerprints of the query at every phase: list of `(shift_seconds, (n_segments, d))`.

        Phase p cuts the query `p * hop / phases` later; phases leaving less than one
        segment are dropped. All phases are fingerprinted in one batch. `phases`
        overrides the identifier's (1: phase 0 only).
        """
        self.check_audio(audio, name=name)
        audio = np.asarray(audio, np.float32)
        phases = self.phases if phases is None else int(phases)
        shifts = sorted({int(round(p * self.hop_samples / phases)) for p in range(phases)})
        views = [segment_waveform(audio[shift:], self.embedder.segment_samples, self.hop_samples) for shift in shifts]
        kept = [(shift, view) for shift, view in zip(shifts, views, strict=True) if len(view)]
        if sum(len(view) for _, view in kept) <= _ONE_BATCH_SEGMENTS:
            fingerprints = fingerprint_segments(self.embedder, np.concatenate([view for _, view in kept]))
        else:  # a long query: batches are copied from the views, never the whole query
            fingerprints = np.concatenate([fingerprint_segments(self.embedder, view) for _, view in kept])
        out, first = [], 0
        for shift, view in kept:
            out.append((shift / self.sample_rate, fingerprints[first : first + len(view)]))
            first += len(view)
        return out

    def rank(
        self, phase_fingerprints, n_results=5, min_score=None, max_seconds=None, interpolate=True, track_best=None
    ):
        """Best distinct places over the phases (see `phase_fingerprints`), best first.

        `max_seconds` uses only the segments that lie inside the query's first
        `max_seconds` (the fingerprints of a prefix of the query). `interpolate=False`
        leaves out the interpolated windows of a one-phase query. `track_best`: a dict
        that receives `{track_id: (best reported score, its start row)}` over every
        window scored (the rivals a match's confidence is measured against).
        """
        segment = self.embedder.segment_samples
        used = []
        for shift, fingerprints in phase_fingerprints:
            if max_seconds is not None:
                samples = int(round((max_seconds - shift) * self.sample_rate))
                fingerprints = fingerprints[: n_segments(samples, segment, self.hop_samples)]
            if len(fingerprints):
                used.append((shift, fingerprints))
        if not used:
            return []
        if self.refine is None or len(used) == 1:
            all_starts = self.db.candidate_starts_batch([f for _, f in used], k_probe=self.k_probe)
            all_scores = [self.db.sequence_scores(f, starts) for (_, f), starts in zip(used, all_starts, strict=True)]
        else:
            all_starts, all_scores = self._refined(used)
        all_shifts = [np.full(len(starts), shift) for (shift, _), starts in zip(used, all_starts, strict=True)]
        all_reported = list(all_scores)
        if interpolate and self.interpolate > 1 and self.phases > 1 and len(used) == 1:
            (shift, fingerprints), = used
            self._interpolated(shift, fingerprints, all_starts, all_scores, all_shifts, all_reported)
        if track_best is not None:
            _best_per_track(self.db, np.concatenate(all_starts), np.concatenate(all_reported), track_best)
        return self.db.places(
            np.concatenate(all_starts), np.concatenate(all_scores), shifts=np.concatenate(all_shifts),
            n_results=n_results, min_score=min_score, collapse_seconds=self.collapse_seconds,
            reported=np.concatenate(all_reported),
        )

    def _interpolated(self, shift, fingerprints, all_starts, all_scores, all_shifts, all_reported):
        # A query too short for a second phase (up to a segment plus hop/phases long):
        # its best `refine` windows and the windows a row earlier are scored again at
        # `interpolate - 1` fractions of the hop past their start, with DB fingerprints
        # interpolated between neighbouring rows (`interpolated_scores`). A place between
        # two DB rows, which phases cannot reach, can then out-rank a repeat of the same
        # bars that happens to lie on the grid. Such a window reports its interpolated
        # score, as a DB window does, and is a rival of other tracks' places with it; with
        # a calibration fitted before that (`interpolated_own_score` False) it reports, and
        # is decided on, the better score of the two DB windows around it. Longer queries
        # have real audio at every phase; there the interpolated windows changed no clean
        # answer and cost noisy ones (MODEL_CARD.md).
        n_best = self.refine if self.refine is not None else DEFAULT_REFINE
        (starts,), (scores,) = all_starts, all_scores
        best = starts[np.argsort(-scores, kind="stable")[:n_best]]
        windows = self.db.interpolated_starts(best, len(fingerprints))
        if not len(windows):
            return
        around = None if self.interpolated_own_score else np.maximum(
            self.db.sequence_scores(fingerprints, windows), self.db.sequence_scores(fingerprints, windows + 1)
        )
        for step in range(1, self.interpolate):
            fraction = step / self.interpolate
            interpolated = self.db.interpolated_scores(fingerprints, windows, fraction)
            all_starts.append(windows)
            all_scores.append(interpolated)
            all_shifts.append(np.full(len(windows), shift - fraction * self.db.hop_seconds))
            all_reported.append(interpolated if around is None else around)

    def _refined(self, used):
        # Only phase 0 is searched in faiss; the `refine` best of its windows are then
        # scored at every other phase, at the two DB rows that bracket them (a phase
        # shifts the query by less than one hop: the same row or the next).
        (_, first), *others = used
        starts = self.db.candidate_starts(first, k_probe=self.k_probe)
        scores = self.db.sequence_scores(first, starts)
        best = starts[np.argsort(-scores, kind="stable")[: self.refine]]
        all_starts, all_scores = [starts], [scores]
        for _, fingerprints in others:
            n = len(fingerprints)
            near = np.union1d(self.db.later_starts(best, 0, n), self.db.later_starts(best, 1, n))
            all_starts.append(near)
            all_scores.append(self.db.sequence_scores(fingerprints, near))
        return all_starts, all_scores

    def search(self, fingerprints, n_results=5):
        """Matches for fingerprints of consecutive segments on the hop grid (one phase, one
        speed), decided as `rank_query` decides (the calibration's confidence, threshold and
        sharpness floor; no off-speed margin: one speed is searched)."""
        seconds = ((len(fingerprints) - 1) * self.hop_samples + self.embedder.segment_samples) / self.sample_rate
        threshold = self.match_threshold(seconds)
        if self.decision == "score":
            matches = self.rank([(0.0, fingerprints)], n_results=n_results, min_score=threshold)
        else:  # the confidence the threshold applies to: the lead over the other tracks' places
            places = self.rank([(0.0, fingerprints)], n_results=max(int(n_results), _RIVAL_PLACES))
            leads = margins(self.db, places, len(fingerprints), self.rival_floor(seconds), self.decision,
                            weight=self.lead_weight)
            # the segments' neighbours are looked up once, and only if some place's votes can count
            hits = functools.cache(lambda: self.db.neighbours(fingerprints, k_probe=VOTE_NEIGHBOURS))
            leads = with_votes(leads, places, self.vote_weight, threshold, lambda m: segment_votes(
                self.db, fingerprints, m.segment_index, m.track_id, hits()))
            matches = [dataclasses.replace(m, confidence=lead) for m, lead in zip(places, leads, strict=True)]
            matches = [m for m in matches if threshold is None or m.confidence >= threshold][: int(n_results)]
        # on the fingerprints given
        return sharp_matches(self.db, fingerprints, matches, self.sharpness_floor(seconds), self.sharpness_yield(seconds))

    def query(self, audio, name="query"):
        """A `Query`: the waveform with its fingerprints at each searched speed, made when needed."""
        self.check_audio(audio, name=name)
        return Query(self, audio, name)

    def speed_grid(self, query_seconds):
        """The speeds a query of `query_seconds` is searched at (`(1.0,)` with the speed search off)."""
        if self.speeds is None:
            return (1.0,)
        return speed_grid(self.speeds, speed_step(self.speeds, query_seconds, self.speed_steps))

    def rank_query(self, query, n_results=5, min_score=None, max_seconds=None):
        """Best distinct places of a `Query` (or its first `max_seconds`) over the speed grid,
        each with its `confidence`; with `min_score`, only those whose confidence reaches it.

        Speed 1.0 is searched at every phase (the plain search); every other grid speed
        with phase 0 only; the two best of those at every phase. Places rank by
        `speed_ranking_keys` (the score, less `SPEED_PENALTY` off the catalogue's speed and
        a share of the level of the speed that found them). Matches of one track
        closer than `collapse_seconds` (in track time) are one place, whatever speed found
        them. The best match's speed is then refined between grid points (its score stays
        the grid search's). The confidence is the score (`decision="score"`), the
        score's lead over the best window of any other track (`"margin"`), or that plus a
        share of its lead over the query's impostor level (`"lead"`).
        """
        seconds = query.seconds if max_seconds is None else min(float(max_seconds), query.seconds)
        grid = self.speed_grid(seconds)
        track_best = {}
        wanted = max(int(n_results), _RIVAL_PLACES)

        def span(speed):  # the prefix's length in that speed's time
            return max(seconds * speed, self.min_query_seconds)

        def ranked(speed, phases=None):
            return [
                dataclasses.replace(match, speed=speed, found_speed=speed)
                for match in self.rank(
                    query.fingerprints(speed, phases, seconds=span(speed)), n_results=wanted,
                    max_seconds=span(speed), interpolate=phases is None, track_best=track_best,
                )
            ]

        query.prepare([(1.0, None, span(1.0)), *((speed, 1, span(speed)) for speed in grid if speed != 1.0)])
        found = ranked(1.0)
        if len(grid) > 1:
            coarse = {speed: ranked(speed, phases=1) for speed in grid if speed != 1.0}
            best = sorted(coarse, key=lambda s: -(coarse[s][0].score if coarse[s] else -np.inf))[:_REFINED_SPEEDS]
            if self.phases > 1:
                query.prepare([(speed, None, span(speed)) for speed in best if coarse[speed]])
            for speed in best:
                if self.phases > 1 and coarse[speed]:
                    coarse[speed] = ranked(speed)
            for matches in coarse.values():
                found.extend(matches)
        n_query = n_segments(int(round(seconds * self.sample_rate)), self.embedder.segment_samples, self.hop_samples)
        floor = self.rival_floor(seconds)
        off_margin = self.off_speed_margin(seconds)
        # one speed: `rank`'s order (interpolated windows rank by their own score); several: by score
        places = found[:wanted] if len(grid) == 1 else self._distinct(found, wanted)
        impostor = None
        if self.decision == "lead":  # over the places the calibrations were fitted with, whatever ranks first
            pool = places if len(grid) == 1 else self._distinct(
                found, IMPOSTOR_PLACES, keys=speed_ranking_keys(found, IMPOSTOR_SPEED_PENALTY, level_weight=0.0)
            )
            impostor = impostor_score([m.score for m in pool[:IMPOSTOR_PLACES]])
        matches = [
            dataclasses.replace(
                m, confidence=self._confidence(m, track_best, max(n_query, 1), floor, impostor)
                - (off_margin if m.found_speed != 1.0 else 0.0),
            )
            for m in places
        ]
        if self.vote_weight:  # the segment votes, of the places they can carry over `min_score`
            hits = {}  # the query segments' neighbours per grid speed, shared by its places
            voted = with_votes([m.confidence for m in matches], matches, self.vote_weight, min_score,
                               lambda m: self.votes(query, m, seconds, hits))
            matches = [dataclasses.replace(m, confidence=c) for m, c in zip(matches, voted, strict=True)]
        if min_score is not None:
            matches = [m for m in matches if m.confidence >= min_score and self.sharp_enough(query, m, seconds)]
        matches = matches[: int(n_results)]
        if matches and len(grid) > 1:
            best = matches[0]
            matches[0] = dataclasses.replace(best, speed=self._refined_speed(query, best, seconds))
        return matches

    def rival_floor(self, query_seconds):
        """The least rival score a margin is measured against for a query of `query_seconds`:
        the calibration's (`rival_floor`, a high quantile of the best other-track scores of
        out-of-catalogue queries), so that a weak or absent rival does not make a weak match
        look sure; 0 without one."""
        if self.decision not in ("margin", "lead"):
            return 0.0
        return self._calibrated_value("rival_floor", query_seconds)

    def _match_fingerprints(self, query, match, seconds):
        # The phase-0 fingerprints of `query`'s first `seconds` at the grid speed `match` was
        # found at (in that speed's time): what its sharpness, votes and similarities are of.
        span = max(seconds * match.found_speed, self.min_query_seconds)
        (_, fingerprints), *_ = query.fingerprints(match.found_speed, phases=1, seconds=span)
        n = n_segments(int(round(span * self.sample_rate)), self.embedder.segment_samples, self.hop_samples)
        return fingerprints[: max(n, 1)]

    def sharpness(self, query, match, seconds):
        """`alignment_sharpness` of a match of `query`'s first `seconds` (its phase-0
        fingerprints at the grid speed the match was found at)."""
        fingerprints = self._match_fingerprints(query, match, seconds)
        return alignment_sharpness(self.db, fingerprints, match.segment_index, match.track_id)

    def votes(self, query, match, seconds, hits=None):
        """`segment_votes` of a match of `query`'s first `seconds` (its phase-0 fingerprints at
        the grid speed the match was found at); 0 where the window does not fit. `hits`: a dict
        `{grid speed: neighbours}` kept across the places of one query."""
        fingerprints = self._match_fingerprints(query, match, seconds)
        if hits is None:
            hits = {}
        if match.found_speed not in hits:
            hits[match.found_speed] = self.db.neighbours(fingerprints, k_probe=VOTE_NEIGHBOURS)
        votes = segment_votes(self.db, fingerprints, match.segment_index, match.track_id, hits[match.found_speed])
        return 0.0 if np.isnan(votes) else votes

    def votes_and_similarities(self, query, match, seconds):
        """`(votes, similarities)` of a match of `query`'s first `seconds` (its phase-0
        fingerprints at the grid speed the match was found at), from one alignment and one
        neighbour search: `votes` as `Identifier.votes`, and `aligned_similarities`, one
        similarity per segment (an empty array where the window does not fit). What `evaluate`
        and `index calibrate` keep of a top answer (`run_queries`), to study decision statistics on."""
        fingerprints = self._match_fingerprints(query, match, seconds)
        aligned = aligned_similarities(self.db, fingerprints, match.segment_index, match.track_id)
        if aligned[0] is None:
            return 0.0, np.zeros(0)
        hits = self.db.neighbours(fingerprints, k_probe=VOTE_NEIGHBOURS)
        votes = segment_votes(self.db, fingerprints, match.segment_index, match.track_id, hits, aligned=aligned)
        return (0.0 if np.isnan(votes) else votes), aligned[1]

    def sharp_enough(self, query, match, seconds):
        """Whether a match clears the calibration's sharpness floor for a `seconds` query
        (`sharpness_floor`; always without one, with a threshold given instead, where the
        track has no window to compare with, or where the match's confidence reaches the
        calibration's `sharpness_yield`: then its sharpness is not computed)."""
        if self.sharpness_floor(seconds) is None or self._sure(match.confidence, seconds):  # nothing to compute
            return True
        return self.clears_sharpness(self.sharpness(query, match, seconds), seconds)

    def clears_sharpness(self, sharpness, seconds, confidence=None):
        """Whether a match of this `sharpness` (`sharpness`) clears the floor of a `seconds`
        query (`sharpness_floor`; always without one; NaN: nothing to compare with, clears),
        or, given its `confidence`, reaches the calibration's `sharpness_yield`."""
        floor = self.sharpness_floor(seconds)
        return floor is None or not sharpness < floor or self._sure(confidence, seconds)

    def sharpness_yield(self, query_seconds):
        """The confidence from which a `query_seconds` query's answer no longer has to clear
        the sharpness floor (the calibration's `sharpness_yield`, `nnfp.catalogue.calibration.sharpness_yields`:
        above every flat answer of the out-of-catalogue audio it was fitted on); None without
        one (a calibration fitted before it: every answer is held to the floor), or with a
        threshold given instead."""
        values = self.calibration.info.get("sharpness_yield") if self.calibration is not None else None
        if not values or self.min_score != CALIBRATED:
            return None
        return float(self.calibration.at_length(values, query_seconds))

    def _sure(self, confidence, seconds):
        return reaches(confidence, self.sharpness_yield(seconds))

    def sharpness_floor(self, query_seconds):
        """The calibration's sharpness floor for a `query_seconds` query (`sharpness_floor`);
        None without one, or with a threshold given instead."""
        floors = self.calibration.info.get("sharpness_floor") if self.calibration is not None else None
        if not floors or self.min_score != CALIBRATED:
            return None
        return float(self.calibration.at_length(floors, query_seconds))

    def off_speed_margin(self, query_seconds):
        """How much the confidence of an answer found at another speed than the catalogue's is
        lowered for a query of `query_seconds`: the calibration's (`off_speed_margin`,
        `nnfp.catalogue.calibration.off_speed_margins`: chance reaches higher over a speed
        grid than at one speed); 0 without one, or with a threshold given instead."""
        return self._calibrated_value("off_speed_margin", query_seconds)

    def _calibrated_value(self, key, query_seconds):
        # A per-length value of the calibration in use (`Calibration.at_length`, as its
        # threshold); 0 without one, or with a threshold given instead.
        values = self.calibration.info.get(key) if self.calibration is not None else None
        if not values or self.min_score != CALIBRATED:
            return 0.0
        return float(self.calibration.at_length(values, query_seconds))

    def _confidence(self, match, track_best, n_query, floor=0.0, impostor=None):
        if self.decision == "score":
            return match.score
        rival = 0.0  # no window of another track among the candidates: none came close
        checked = 0
        for track, (score, start) in sorted(track_best.items(), key=lambda item: -item[1][0]):
            if track == match.track_id or not self.db.is_live(track):
                continue
            if checked < _SAME_AUDIO_CHECKS and same_audio(self.db, match.segment_index, start, n_query):
                checked += 1
                continue  # the same recording under another name is not a rival
            rival = score
            break
        return lead(match.score, rival, impostor, floor, self.lead_weight)

    def _refined_speed(self, query, match, seconds):
        # The speed of the best place, finer than the grid: the query's prefix is
        # fingerprinted (phase 0) at its speed and a third of a step either side, and
        # scored at the place's DB rows only (no new search: the decision keeps the grid
        # search's score); the vertex of the parabola through the three scores is reported.
        step = speed_step(self.speeds, seconds, self.speed_steps)
        rows = np.arange(match.segment_index - 1, match.segment_index + 2)
        rows = rows[(rows >= 0) & (rows < self.db.n_segments)]
        rows = rows[self.db.segment_track[rows] == match.track_id]
        speeds = [match.speed * (1.0 + step / 3) ** side for side in (-1, 0, 1)]
        spans = [max(seconds * speed, self.min_query_seconds) for speed in speeds]
        query.prepare([(speed, 1, span) for speed, span in zip(speeds, spans, strict=True)])
        scores = {}
        for speed, span in zip(speeds, spans, strict=True):
            (_, fingerprints), *_ = query.fingerprints(speed, phases=1, seconds=span)
            n = n_segments(int(round(span * self.sample_rate)), self.embedder.segment_samples, self.hop_samples)
            scores[speed] = float(self.db.sequence_scores(fingerprints[:n], rows).max()) if len(rows) else -np.inf
        return _peak_speed(scores)

    def _distinct(self, matches, n_results, keys=None):
        # The best `n_results` places of `matches` by `keys` (default: `speed_ranking_keys`),
        # one per track and `collapse_seconds`.
        kept, out = {}, []
        if keys is None:
            keys = speed_ranking_keys(matches, self.speed_penalty, self.speed_level_weight)
        for _, match in sorted(zip(keys, matches, strict=True), key=lambda pair: -pair[0]):
            offsets = kept.setdefault(match.track_id, [])
            if self.collapse_seconds and any(abs(match.offset_s - o) < self.collapse_seconds for o in offsets):
                continue
            offsets.append(match.offset_s)
            out.append(match)
            if len(out) == int(n_results):
                break
        return out

    def identify_audio(self, audio, n_results=5, name="query"):
        """Best matches (list of `nnfp.store.db.Match`, best first) for a waveform at the index rate.

        An empty list means "not in the catalogue": no place scored `match_threshold`.
        With the speed search on (`speeds`) every match reports the speed it plays at.

        Raises:
            QueryError: too short, silent, near-silent or constant audio.
        """
        self.last_query_seconds = len(audio) / self.sample_rate
        query = self.query(audio, name=name)
        threshold = self.match_threshold(self.last_query_seconds)
        return self.rank_query(query, n_results=n_results, min_score=threshold)

    def identify_file(self, path, n_results=5):
        """Reads any audio file (resampled, mixed to mono) and returns its best matches.

        Raises:
            nnfp.audio.io.AudioError: unreadable file. QueryError: too short, silent or constant.
        """
        from nnfp.audio.io import load_audio

        audio = load_audio(path, self.sample_rate)
        return self.identify_audio(audio, n_results=n_results, name=str(path))
