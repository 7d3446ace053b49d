"""What a search evaluation counts: queries ranked through `nnfp.catalogue.identify.Identifier`
at several lengths (`run_queries`, prefixes of one degraded query) and the hit rates of those
rankings against the truth (`hit_rates`): right track, right track + offset (±0.5 s), answered
right (and passing the decision rule), false matches of out-of-catalogue queries, the paper's
top-1 exact / near / top-3 / top-10 on the DB row nearest to the truth, song top-1, and the
reported speed.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from nnfp.audio.segments import n_segments

__all__ = [
    "LENGTHS_SECONDS",
    "METRICS",
    "N_RANKED",
    "OFFSET_TOLERANCE_S",
    "SPEED_TOLERANCE",
    "hit_rates",
    "run_queries",
    "same_audio_as_truth",
]

LENGTHS_SECONDS = (1, 2, 3, 5, 6, 10)
METRICS = ("track_top1", "offset_top1", "answered_right", "top1_exact", "top1_near", "top3", "top10", "song_top1")
OFFSET_TOLERANCE_S = 0.5  # |offset - truth| for a right offset
SPEED_TOLERANCE = 0.005  # |reported / true speed - 1| for a right speed
N_RANKED = 10


def hit_rates(
    predicted_rows, true_rows, predicted_tracks, true_tracks, valid=None,
    predicted_offsets=None, true_offsets=None, decided=None, predicted_speeds=None, true_speeds=None,
    same_audio=None,
):
    """Hit rates from ranked predictions.

    Args:
        predicted_rows: (n_queries, n_lengths, k) ranked DB start rows, -1 padded.
        true_rows: (n_queries,) true start row of each query (nearest grid row).
        predicted_tracks: (n_queries, n_lengths, k) track ids of the predictions, -1 padded.
        true_tracks: (n_queries,) true track id.
        valid: optional (n_queries, n_lengths) bool, False where a query is too short
            for a length (excluded from that length's rates).
        predicted_offsets: optional (n_queries, n_lengths, k) offsets in seconds.
        true_offsets: optional (n_queries,) true offsets in seconds.
        decided: optional (n_queries, n_lengths) bool, the top-1 passed the decision rule.
        predicted_speeds / true_speeds: optional (n_queries, n_lengths, k) reported and
            (n_queries,) true playback speeds: `"speed_right"` is the share of right
            track + offset answers whose speed is within `SPEED_TOLERANCE`.
        same_audio: optional (n_queries, n_lengths) bool, the top-1's DB rows hold the same audio
            as the truth's (`same_audio_as_truth`): `"offset_or_same"` counts a right track
            whose offset is right or lands on a repeat of the same bars (a loop, a chorus
            played twice alike), which no system can tell apart.

    Returns:
        `{metric: (n_lengths,) percentages}` for `METRICS` (the offset metrics need the
        offsets), plus `"n"` (queries per length).
    """
    pred = np.asarray(predicted_rows)
    true = np.asarray(true_rows)[:, None, None]
    tracks = np.asarray(predicted_tracks)
    valid = np.ones(pred.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    found = pred[..., 0] >= 0
    right_track = found & (tracks[..., 0] == np.asarray(true_tracks)[:, None])
    hits = {
        "track_top1": right_track,
        "top1_exact": pred[..., 0] == true[..., 0],
        # The neighbouring row may be the first or last row of another track: not "near".
        "top1_near": right_track & (np.abs(pred[..., 0] - true[..., 0]) <= 1),
        "top3": np.any(pred[..., :3] == true, axis=-1),
        "top10": np.any(pred[..., :10] == true, axis=-1),
        "song_top1": right_track,
    }
    if predicted_offsets is not None and true_offsets is not None:
        error = np.abs(np.asarray(predicted_offsets)[..., 0] - np.asarray(true_offsets)[:, None])
        hits["offset_top1"] = right_track & (error <= OFFSET_TOLERANCE_S + 1e-6)
        if decided is not None:
            hits["answered_right"] = hits["offset_top1"] & np.asarray(decided, bool)
        if same_audio is not None:
            hits["offset_or_same"] = hits["offset_top1"] | (right_track & np.asarray(same_audio, bool))
    n = valid.sum(axis=0)
    rates = {k: 100.0 * (v & valid).sum(axis=0) / np.maximum(n, 1) for k, v in hits.items()}
    if "offset_top1" in hits and predicted_speeds is not None and true_speeds is not None:
        ratio = np.asarray(predicted_speeds)[..., 0] / np.asarray(true_speeds, np.float64)[:, None]
        right = hits["offset_top1"] & valid
        speed_right = right & (np.abs(ratio - 1.0) <= SPEED_TOLERANCE + 1e-9)
        rates["speed_right"] = 100.0 * speed_right.sum(axis=0) / np.maximum(right.sum(axis=0), 1)
    rates["n"] = n
    return rates


def same_audio_as_truth(db, predicted_rows, true_rows, n_rows):
    """(n_queries, n_lengths) bool: the top-1 window of `n_rows[j]` DB rows holds the same audio
    as the true window (`nnfp.catalogue.identify.same_audio`: mean cosine of the two windows'
    fingerprints >= `SAME_AUDIO`); False where nothing was found."""
    from nnfp.catalogue.identify import same_audio

    predicted = np.asarray(predicted_rows)[..., 0]
    out = np.zeros(predicted.shape, bool)
    for q, j in zip(*np.nonzero(predicted >= 0), strict=True):
        row, truth = int(predicted[q, j]), int(true_rows[q])
        out[q, j] = row == truth or same_audio(db, row, truth, int(n_rows[j]))
    return out



def _padded_at_some_speed(identifier, seconds):
    """Whether a query of `seconds`, searched at the identifier's slowest grid speed, is
    shorter than one segment once undone (and so padded: `Query.waveform`)."""
    return seconds * min(identifier.speed_grid(seconds)) < identifier.min_query_seconds


def run_queries(identifier, waveforms, lengths_seconds=LENGTHS_SECONDS, progress=True):
    """Identifies the first `seconds` of every query for every length, as `nnfp identify` does.

    Uses the identifier's phases, distinct places and decision rule
    (`Identifier.match_threshold`); rankings are kept whatever the threshold.

    Returns `{"rows", "tracks", "offsets", "scores", "speeds", "found_speeds", "confidences"}`
    (n_queries, n_lengths, 10) ranked
    predictions (-1 / NaN padded; rows are the DB rows nearest to the offsets),
    `"sharpness"` and `"votes"` (n_queries, n_lengths: the top answer's `Identifier.sharpness`
    and `Identifier.votes`), `"segment_scores"` (n_queries, n_lengths, the longest length's
    segments: the top answer's similarity per segment, `Identifier.votes_and_similarities`, NaN-padded),
    `"valid"` (n_queries, n_lengths), `"decided"` (the top-1 passed the decision rule),
    `"search_ms"` per search and `"fingerprint_ms"` per query (all phases, full length).
    """
    from tqdm import tqdm

    from nnfp.catalogue.identify import QueryError

    db = identifier.db
    n_lengths = len(lengths_seconds)
    shape = (len(waveforms), n_lengths, N_RANKED)
    rows = np.full(shape, -1, np.int64)
    tracks = np.full(shape, -1, np.int64)
    offsets = np.full(shape, np.nan)
    scores = np.full(shape, np.nan)
    speeds = np.full(shape, np.nan)
    found_speeds = np.full(shape, np.nan)  # the grid speed each was found at (`speeds` are refined)
    confidences = np.full(shape, np.nan)
    sharpness = np.full(shape[:2], np.nan)  # the top answer's `Identifier.sharpness`
    votes = np.full(shape[:2], np.nan)  # the top answer's `Identifier.votes`
    # the top answer's similarity per segment (`Identifier.votes_and_similarities`), NaN-padded to the longest length's segments
    most = max(n_segments(int(round(s * identifier.sample_rate)), identifier.embedder.segment_samples,
                          identifier.hop_samples) for s in lengths_seconds) if len(lengths_seconds) else 0
    segment_scores = np.full((*shape[:2], max(most, 1)), np.nan)
    valid = np.zeros(shape[:2], bool)
    decided = np.zeros(shape[:2], bool)
    search_ms, fingerprint_ms = [], []
    rate = identifier.sample_rate
    first_rows = dict(zip(*(a.tolist() for a in np.unique(db.segment_track, return_index=True)), strict=True))
    bar = tqdm(total=len(waveforms), desc="queries", unit="query", disable=not progress, file=sys.stderr)
    for q, wave in enumerate(waveforms):
        wave = np.asarray(wave, np.float32)
        started = time.perf_counter()
        try:
            query = identifier.query(wave, name=f"query {q}")
            query.fingerprints(1.0)  # the plain search's fingerprints (the other speeds' when searched)
        except QueryError:
            query = None  # unusable audio: no answer at any length
        fingerprint_ms.append(1000 * (time.perf_counter() - started))
        for j, seconds in enumerate(lengths_seconds):
            if int(round(seconds * rate)) > len(wave) or seconds < identifier.min_query_seconds:
                continue
            valid[q, j] = True
            if query is None:
                continue
            started = time.perf_counter()
            searched, n = query, int(round(seconds * rate))
            if _padded_at_some_speed(identifier, seconds) and n < len(wave):
                # Undone from a slower speed, a one-segment query is padded (`Query.waveform`);
                # the longer query's resampled audio would fill that pad with audio a query of
                # `seconds` does not have. Search the prefix itself, as `identify` would a file.
                try:
                    searched = identifier.query(wave[:n], name=f"query {q}")
                except QueryError:
                    continue  # `identify` refuses this prefix (silent, near-silent): no answer
            matches = identifier.rank_query(searched, n_results=N_RANKED, min_score=None, max_seconds=seconds)
            search_ms.append(1000 * (time.perf_counter() - started))
            threshold = identifier.match_threshold(seconds)
            if matches:
                sharpness[q, j] = identifier.sharpness(searched, matches[0], seconds)
                votes[q, j], similarities = identifier.votes_and_similarities(searched, matches[0], seconds)
                similarities = similarities[: segment_scores.shape[2]]
                segment_scores[q, j, : len(similarities)] = similarities
            decided[q, j] = bool(matches) and (threshold is None or (
                matches[0].confidence >= threshold
                and identifier.clears_sharpness(sharpness[q, j], seconds, matches[0].confidence)))
            for r, match in enumerate(matches):
                rows[q, j, r] = first_rows[match.track_id] + max(0, int(round(match.offset_s / db.hop_seconds)))
                tracks[q, j, r] = match.track_id
                offsets[q, j, r] = match.offset_s
                scores[q, j, r] = match.score
                speeds[q, j, r] = match.speed
                found_speeds[q, j, r] = match.found_speed
                confidences[q, j, r] = match.confidence
        bar.update(1)
    bar.close()
    return {
        "rows": rows, "tracks": tracks, "offsets": offsets, "scores": scores, "speeds": speeds,
        "found_speeds": found_speeds, "confidences": confidences, "sharpness": sharpness, "votes": votes,
        "segment_scores": segment_scores, "valid": valid,
        "decided": decided, "search_ms": np.array(search_ms), "fingerprint_ms": np.array(fingerprint_ms),
    }

