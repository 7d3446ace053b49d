"""Search evaluation: how often `nnfp identify` names the right track and second.

Queries are cut from the DB tracks **at random sample positions** (`aligned=True`
keeps the paper's protocol of mimbres/neural-audio-fp `eval/eval_faiss.py`: starts on
the DB hop grid), from the source audio at its own sample rate: room (the full
impulse response, with the reverberation of the audio before the cut inside the
window), background noise at a random SNR, then resampled to the index rate like a
user's file. Every query is scored through `nnfp.catalogue.identify.Identifier`, the path of
`nnfp identify` (query phases, distinct places, the match threshold), for query
lengths of 1, 2, 3, 5, 6 and 10 s (prefixes of one degraded query), counting

- right track: the best match is the right track (any offset),
- right track + offset: ... and |offset - truth| <= 0.5 s,
- answered right: right track + offset and the match passes the decision rule
  (what a user gets: a wrong or missing answer otherwise),
- false match (queries cut from tracks NOT in the index, `unknown_dir`): the
  decision rule returned a match at all,
- the paper's metrics: top-1 exact / near (±1 row) / top-3 / top-10 exact on
  the DB row nearest to the truth, song top-1.

Deterministic from a seed (tracks, positions, SNRs, noise and rooms).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

from nnfp.audio.segments import n_segments
from nnfp.catalogue.speeds import speeds_description
from nnfp.defaults import DEFAULT_DECISION, DEFAULT_INTERPOLATE, DEFAULT_REFINE, DEFAULT_SPEEDS
from nnfp.outputs import atomic_write_bytes

__all__ = [
    "LENGTHS_SECONDS",
    "calibrate_index",
    "degradation_settings",
    "degrade",
    "index_queries",
    "METRICS",
    "evaluate",
    "format_table",
    "hit_rates",
    "markdown_table",
    "read_labels",
    "run_queries",
    "save_results",
    "synthesize_queries",
]

LENGTHS_SECONDS = (1, 2, 3, 5, 6, 10)
METRICS = ("track_top1", "offset_top1", "answered_right", "top1_exact", "top1_near", "top3", "top10", "song_top1")
OFFSET_TOLERANCE_S = 0.5  # |offset - truth| for a right offset
_LABELS = {
    "track_top1": "right track",
    "offset_top1": "right track+offset (±0.5 s)",
    "answered_right": "answered right (decision rule)",
    "false_match": "false match (not in index)",
    "top1_exact": "top-1 exact",
    "top1_near": "top-1 near (±1 seg)",
    "top3": "top-3 exact",
    "top10": "top-10 exact",
    "song_top1": "song top-1",
    "speed_right": "speed ±0.5 % (% of right answers)",
}
# `calibrate_index`: margins are measured against at least this quantile of the best other-track
# scores of the out-of-catalogue queries (scripts/decision_features.py: 0.9 kept the most right
# answers with every generated and recorded kind held out in turn at <= 2 % false matches).
RIVAL_FLOOR_QUANTILE = 0.9
SPEED_TOLERANCE = 0.005  # |reported / true speed - 1| for a right speed
N_RANKED = 10


def hit_rates(
    predicted_rows, true_rows, predicted_tracks, true_tracks, valid=None,
    predicted_offsets=None, true_offsets=None, decided=None, predicted_speeds=None, true_speeds=None,
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
    n = valid.sum(axis=0)
    rates = {k: 100.0 * (v & valid).sum(axis=0) / np.maximum(n, 1) for k, v in hits.items()}
    if "offset_top1" in hits and predicted_speeds is not None and true_speeds is not None:
        ratio = np.asarray(predicted_speeds)[..., 0] / np.asarray(true_speeds, np.float64)[:, None]
        right = hits["offset_top1"] & valid
        speed_right = right & (np.abs(ratio - 1.0) <= SPEED_TOLERANCE + 1e-9)
        rates["speed_right"] = 100.0 * speed_right.sum(axis=0) / np.maximum(right.sum(axis=0), 1)
    rates["n"] = n
    return rates


def altered(track, start, length, rate, speed=1.0, tempo=1.0, pitch=0.0, context=0):
    """The track around `start` played `speed` times fast (pitch and tempo together), `tempo`
    times fast (pitch kept) and `pitch` semitones higher (tempo kept), as
    `(waveform, start)`: `length` samples of the altered music follow `start`, with up to
    `context` samples of altered music before it (a room's tail). Unchanged: `(track, start)`."""
    if speed == 1.0 and tempo == 1.0 and pitch == 0.0:
        return track, start
    from nnfp.audio.io import resample

    pace = speed * tempo  # track seconds per query second
    first = max(0, start - int(np.ceil(context * pace)) - 1)
    last = min(len(track), start + int(np.ceil(length * pace)) + 2 * rate // 100)
    window = np.asarray(track[first:last], np.float32)
    if tempo != 1.0 or pitch != 0.0:
        from nnfp.pipeline.degrade import shift_pitch, stretch_tempo

        if tempo != 1.0:
            window = stretch_tempo(window, tempo, rate)
        if pitch != 0.0:
            window = shift_pitch(window, pitch, rate)
    if speed != 1.0:
        window = np.asarray(resample(window, rate, rate / speed), np.float32)
    out_start = int(round((start - first) / pace))
    if len(window) < out_start + length:  # rounding at the track's end
        window = np.pad(window, (0, out_start + length - len(window)))
    return window, out_start


def degrade(
    track, start, length, track_rate, sample_rate, noise=None, snr_db=None, impulse_response=None,
    speed=1.0, tempo=1.0, pitch=0.0,
):
    """A query as a user records it: `track[start:start+length]` (samples at `track_rate`) played in
    a room, with background noise, resampled to `sample_rate`. With `speed`, `tempo` or `pitch`
    (see `altered`) the music from `start` on is played faster or higher first: the query
    still holds `length` samples, starting at `start` in track time.

    The room convolves the audio before the cut too (as long as the impulse response), so
    the window holds the full reverberation tail of earlier audio; the result is rescaled
    to the energy of the dry excerpt. Noise (at `track_rate`, tiled if short) is added
    after the room at `snr_db`. Resampling is `nnfp.audio.io.resample` (soxr), like `load_audio`'s.
    """
    from scipy.signal import fftconvolve

    from nnfp.audio.io import resample

    track = np.asarray(track, np.float32)
    context = 0 if impulse_response is None else len(impulse_response)
    track, start = altered(track, start, length, track_rate, speed, tempo, pitch, context=context)
    dry = track[start : start + length].astype(np.float64)
    wet = dry
    if impulse_response is not None:
        ir = np.asarray(impulse_response, np.float64)
        context = min(start, len(ir) - 1)
        source = track[start - context : start + length].astype(np.float64)
        wet = fftconvolve(source, ir)[context : context + length]
        wet *= np.sqrt(np.mean(dry**2) / max(np.mean(wet**2), 1e-20))
    if noise is not None:
        noise = np.resize(np.asarray(noise, np.float64), length)
        scale = np.sqrt(np.mean(wet**2) * 10 ** (-snr_db / 10) / max(np.mean(noise**2), 1e-20))
        wet = wet + scale * noise
    out = wet.astype(np.float32)
    if track_rate != sample_rate:
        out = resample(out, track_rate, sample_rate)
    return np.ascontiguousarray(out, np.float32)


def _samples_needed(seconds, pace, rate):
    """Track samples a `seconds` query played `pace` times fast takes."""
    return int(round(seconds * rate)) if pace == 1.0 else int(np.ceil(seconds * pace * rate)) + 1


def synthesize_queries(
    durations,
    load_track,
    track_first_rows,
    n_queries,
    *,
    sample_rate,
    seconds=10.0,
    hop_seconds=0.5,
    snr_db_range=(0.0, 10.0),
    noise=None,
    impulse_responses=None,
    noise_kind=None,
    add_noise=True,
    add_reverb=True,
    aligned=False,
    seed=0,
    speed_range=None,
    tempo_range=None,
    pitch_range=None,
):
    """Degraded excerpts of tracks at random positions, deterministic from `seed` (see `degrade`).

    Args:
        durations: `{track_id: seconds}` of the tracks queries may be cut from.
        load_track: `load_track(track_id)` -> `(waveform, rate)` at the file's own rate (or a
            waveform at `sample_rate`), or None for a file that turned out unreadable; called
            once per track. Tracks shorter than a query once decoded are left out too.
        track_first_rows: `{track_id: DB row of the track's first segment}` (None: tracks
            not in the index; `true_row` is then -1).
        noise / impulse_responses: lists of waveforms at `sample_rate` to draw from; None
            generates one per query with `make_noise(kind=noise_kind)` / `make_impulse_response`.
        add_noise / add_reverb: False leaves that degradation out.
        aligned: starts on the `hop_seconds` grid (the paper's protocol) instead of at
            random sample positions.
        speed_range / tempo_range / pitch_range: (low, high) of a factor drawn uniformly per
            query (`degrade`'s `speed`, `tempo`, `pitch` in semitones); None: unchanged.
            Drawn from their own generator: the queries' tracks and starts stay those of
            the same seed without them, as far as the longer excerpts allow.

    Returns:
        `(waveforms list at sample_rate, info dict of arrays: track, true_row, offset_s, snr_db,
        speed, tempo, pitch)`.
    """
    from nnfp.audio.io import resample
    from nnfp.corpus.noise import make_noise
    from nnfp.corpus.rooms import make_impulse_response

    eligible = sorted(t for t, d in durations.items() if d >= seconds)
    if not eligible:
        raise ValueError(f"No track is long enough for {seconds} s queries")
    rng = np.random.default_rng(seed)
    alter_rng = np.random.default_rng([int(seed), 27])
    cache = {}
    waveforms, info = [], {"track": [], "true_row": [], "offset_s": [], "snr_db": [], "speed": [], "tempo": [], "pitch": []}
    most = max([1.0, *(r[1] for r in (speed_range, tempo_range) if r is not None)])
    speed_range, tempo_range = (tuple(r) if r is not None else (1.0, 1.0) for r in (speed_range, tempo_range))
    pitch_range = tuple(pitch_range) if pitch_range is not None else (0.0, 0.0)
    for _ in range(int(n_queries)):
        speed, tempo, pitch = (float(alter_rng.uniform(*r)) for r in (speed_range, tempo_range, pitch_range))
        pace = speed * tempo
        while True:
            track_id = eligible[int(rng.integers(len(eligible)))]
            if track_id not in cache:
                loaded = load_track(track_id)
                cache[track_id] = loaded if isinstance(loaded, tuple) or loaded is None else (loaded, sample_rate)
            if cache[track_id] is not None and len(cache[track_id][0]) >= _samples_needed(seconds, most, cache[track_id][1]):
                break
            # Unreadable, or shorter than its header said (a truncated file): never a query.
            eligible.remove(track_id)
            if not eligible:
                raise ValueError(f"No readable track is long enough for {seconds} s queries")
        wave, rate = cache[track_id]
        length = int(round(seconds * rate))
        need = _samples_needed(seconds, pace, rate)  # track samples the query plays
        if aligned:
            hop = int(round(hop_seconds * rate))
            start = int(rng.integers(n_segments(len(wave), need, hop))) * hop
        else:
            start = int(rng.integers(len(wave) - need + 1))
        offset_s = start / rate
        snr_db = float(rng.uniform(*snr_db_range))
        noise_seed, ir_seed = (int(s) for s in rng.integers(0, 2**31, size=2))
        noise_wave = ir = None
        if add_noise:
            if noise:
                source = noise[noise_seed % len(noise)]
                need = int(round(seconds * sample_rate))
                begin = noise_seed % max(1, len(source) - need) if len(source) > need else 0
                noise_wave = np.roll(source, -begin)
                if rate != sample_rate:
                    noise_wave = resample(noise_wave, sample_rate, rate)
            else:
                noise_wave = make_noise(noise_seed, seconds, rate, kind=noise_kind)
        if add_reverb:
            if impulse_responses:
                ir = impulse_responses[ir_seed % len(impulse_responses)]
                if rate != sample_rate:
                    ir = resample(ir, sample_rate, rate)
            else:
                ir = make_impulse_response(ir_seed, rate)
        waveforms.append(
            degrade(wave, start, length, rate, sample_rate, noise=noise_wave,
                    snr_db=snr_db if add_noise else None, impulse_response=ir, speed=speed, tempo=tempo, pitch=pitch)
        )
        info["speed"].append(speed)
        info["tempo"].append(tempo)
        info["pitch"].append(pitch)
        info["track"].append(track_id)
        row = -1
        if track_first_rows is not None:
            row = track_first_rows[track_id] + int(round(offset_s / hop_seconds))
        info["true_row"].append(row)
        info["offset_s"].append(offset_s)
        info["snr_db"].append(snr_db if add_noise else np.inf)
    return waveforms, {k: np.asarray(v) for k, v in info.items()}


def run_queries(identifier, waveforms, lengths_seconds=LENGTHS_SECONDS, progress=True):
    """Identifies the first `seconds` of every query for every length, as `nnfp identify` does.

    Uses the identifier's phases, distinct places and decision rule
    (`Identifier.match_threshold`); rankings are kept whatever the threshold.

    Returns `{"rows", "tracks", "offsets", "scores", "speeds", "confidences"}` (n_queries, n_lengths, 10) ranked
    predictions (-1 / NaN padded; rows are the DB rows nearest to the offsets),
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
    confidences = np.full(shape, np.nan)
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
            matches = identifier.rank_query(query, n_results=N_RANKED, min_score=None, max_seconds=seconds)
            search_ms.append(1000 * (time.perf_counter() - started))
            threshold = identifier.match_threshold(seconds)
            decided[q, j] = bool(matches) and (threshold is None or matches[0].confidence >= threshold)
            for r, match in enumerate(matches):
                rows[q, j, r] = first_rows[match.track_id] + max(0, int(round(match.offset_s / db.hop_seconds)))
                tracks[q, j, r] = match.track_id
                offsets[q, j, r] = match.offset_s
                scores[q, j, r] = match.score
                speeds[q, j, r] = match.speed
                confidences[q, j, r] = match.confidence
        bar.update(1)
    bar.close()
    return {
        "rows": rows, "tracks": tracks, "offsets": offsets, "scores": scores, "speeds": speeds,
        "confidences": confidences, "valid": valid,
        "decided": decided, "search_ms": np.array(search_ms), "fingerprint_ms": np.array(fingerprint_ms),
    }


def format_table(rates, lengths_seconds, counts, title="Search evaluation (hit rate, %)"):
    width = max(len(v) for v in _LABELS.values()) + 2
    header = f"{'query length':<{width}}" + "".join(f"{f'{s:g} s':>8}" for s in lengths_seconds)
    lines = [title, header, f"{'segments':<{width}}" + "".join(f"{c:>8}" for c in counts)]
    lines.append("-" * len(header))
    for key in (*METRICS, "speed_right", "false_match"):
        if key in rates:
            lines.append(f"{_LABELS[key]:<{width}}" + "".join(f"{v:>8.1f}" for v in rates[key]))
    lines.append(f"{'queries':<{width}}" + "".join(f"{int(v):>8}" for v in rates["n"]))
    if "n_unknown" in rates:
        lines.append(f"{'queries not in index':<{width}}" + "".join(f"{int(v):>8}" for v in rates["n_unknown"]))
    return "\n".join(lines)


def markdown_table(rates, lengths_seconds, counts):
    head = "| metric | " + " | ".join(f"{s:g} s ({c} seg)" for s, c in zip(lengths_seconds, counts, strict=True)) + " |"
    rule = "| --- |" + " ---: |" * len(lengths_seconds)
    lines = [head, rule]
    for key in (*METRICS, "speed_right", "false_match"):
        if key in rates:
            lines.append(f"| {_LABELS[key]} | " + " | ".join(f"{v:.1f}" for v in rates[key]) + " |")
    lines.append("| queries | " + " | ".join(str(int(v)) for v in rates["n"]) + " |")
    if "n_unknown" in rates:
        lines.append("| queries not in index | " + " | ".join(str(int(v)) for v in rates["n_unknown"]) + " |")
    return "\n".join(lines) + "\n"


def save_results(out_dir, rates, lengths_seconds, counts, raw, query_info, settings, title):
    """Writes `scores.npz` (raw), `results.md`, `results.json` and `hit_rates.png`, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        lengths_seconds=np.asarray(lengths_seconds, float),
        n_segments=np.asarray(counts),
        **{f"raw_{k}": v for k, v in raw.items()},
        **{f"query_{k}": v for k, v in query_info.items()},
        **{f"rate_{k}": np.asarray(v) for k, v in rates.items()},
    )
    atomic_write_bytes(out_dir / "scores.npz", buffer.getvalue())
    markdown = f"# {title}\n\n" + markdown_table(rates, lengths_seconds, counts)
    markdown += "\n" + "".join(f"- {k}: {v}\n" for k, v in settings.items())
    atomic_write_bytes(out_dir / "results.md", markdown.encode())
    payload = {
        "lengths_seconds": list(lengths_seconds),
        "n_segments": list(counts),
        "hit_rates": {k: np.asarray(v).tolist() for k, v in rates.items()},
        "settings": settings,
    }
    atomic_write_bytes(out_dir / "results.json", json.dumps(payload, indent=1, default=str).encode())

    from nnfp.extras import require

    require("matplotlib", "plots", f"{out_dir / 'hit_rates.png'} (the results are written)").use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in [k for k in METRICS if k in rates]:
        ax.plot(lengths_seconds, rates[key], marker="o", label=_LABELS[key])
    ax.set_xlabel("query length (s)")
    ax.set_ylabel("hit rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(list(lengths_seconds))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(out_dir / "hit_rates.png", png.getvalue())


def read_labels(query_dir):
    """`labels.csv` of a query folder: rows `query,track,offset_s` (paths relative to the folder / DB)."""
    path = Path(query_dir) / "labels.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: a query folder needs labels.csv with columns query,track,offset_s "
            "(query file relative to the folder, track path as in the index, offset in seconds)"
        )
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = {"query", "track", "offset_s"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return rows


def _query_sources(identifier):
    """`(durations, load_track, first_rows)` of the tracks of the index's first source folder."""
    import soundfile as sf

    from nnfp.audio.io import load_audio

    db = identifier.db
    source = db.metadata["sources"][0]
    by_id = {t["track_id"]: t for t in db.tracks}
    first_rows = dict(zip(*(a.tolist() for a in np.unique(db.segment_track, return_index=True)), strict=True))
    ids = range(source["first_track_id"], source["first_track_id"] + source["n_tracks"])

    def load_track(track_id):
        path = Path(source["audio_dir"]) / by_id[track_id]["path"]
        try:
            rate = int(sf.info(str(path)).samplerate)
        except Exception:  # formats libsndfile cannot read: decoded at the index rate
            rate = identifier.sample_rate
        return load_audio(path, rate), rate

    return {i: by_id[i]["duration_s"] for i in ids}, load_track, first_rows


def _unknown_sources(unknown_dir):
    """`(durations, load_track)` of the audio files of a folder of tracks that are not in the index."""
    import soundfile as sf

    from nnfp.audio.io import AudioError, load_audio
    from nnfp.audio.sources import list_audio_files

    files = list_audio_files(unknown_dir)
    durations, paths = {}, {}
    for i, path in enumerate(files):
        try:
            info = sf.info(str(path))
        except Exception:
            continue
        durations[i] = info.frames / info.samplerate
        paths[i] = (path, int(info.samplerate))

    def load_track(i):
        path, rate = paths[i]
        try:
            return load_audio(path, rate), rate
        except AudioError:
            return None  # unreadable after all: left out (never a made-up silent query)

    if not durations:
        raise FileNotFoundError(f"{unknown_dir}: no readable audio files for out-of-catalogue queries")
    return durations, load_track


def index_queries(identifier, n_queries, seconds, degradation, seed, aligned, unknown_dir=None):
    """Queries cut from the source files of an index's tracks (as `nnfp evaluate` makes them),
    or, with `unknown_dir`, from the audio files of a folder of tracks that are not in it.

    Args:
        identifier: an `nnfp.catalogue.identify.Identifier` (its index names the source folder).
        n_queries: number of queries.
        seconds: length of each query (shorter lengths are its prefixes).
        degradation: keyword arguments of `synthesize_queries`, see `degradation_settings`.
        seed: random seed; the same seed gives the same queries.
        aligned: cut on the index's hop grid (the paper's protocol) instead of anywhere.

    Returns:
        `(waveforms, info)` as `synthesize_queries`.
    """
    if unknown_dir is None:
        durations, load_track, first_rows = _query_sources(identifier)
    else:
        (durations, load_track), first_rows = _unknown_sources(unknown_dir), None
    return synthesize_queries(
        durations, load_track, first_rows, n_queries, seconds=seconds, hop_seconds=identifier.db.hop_seconds,
        sample_rate=identifier.sample_rate, aligned=aligned, seed=seed, **degradation,
    )


def degradation_settings(identifier, snr_db_range, noise_dir, ir_dir, noise_kind, add_noise, add_reverb):
    """The degradation arguments of `synthesize_queries`: noise and impulse responses read from
    folders at the index rate (None: generated ones), SNR range, and which of them to apply."""
    from nnfp.audio.sources import list_audio_files, load_tracks

    def bank(folder):
        if folder is None:
            return None
        arrays, _, _ = load_tracks(list_audio_files(folder), sample_rate=identifier.sample_rate, min_seconds=0.0)
        return arrays or None

    return {
        "snr_db_range": snr_db_range, "noise": bank(noise_dir) if add_noise else None,
        "impulse_responses": bank(ir_dir) if add_reverb else None, "noise_kind": noise_kind,
        "add_noise": add_noise, "add_reverb": add_reverb,
    }


def evaluate(
    out_dir,
    index_dir=None,
    db_dir=None,
    model=None,
    dummy_dir=None,
    query_dir=None,
    unknown_dir=None,
    n_queries=2000,
    n_unknown=None,
    lengths_seconds=LENGTHS_SECONDS,
    snr_db_range=(0.0, 10.0),
    noise_dir=None,
    ir_dir=None,
    noise_kind=None,
    add_noise=True,
    add_reverb=True,
    aligned=False,
    phases=None,
    refine=DEFAULT_REFINE,
    interpolate=DEFAULT_INTERPOLATE,
    speeds="auto",
    speed_range=None,
    tempo_range=None,
    pitch_range=None,
    min_score="calibrated",
    seed=0,
    k_probe=20,
    index_type="auto",
    threads=1,
    progress=True,
    log=print,
    trust_model=False,
    **index_params,
):
    """Runs the evaluation and writes its files to `out_dir`; returns the hit rates.

    Either `index_dir` (a saved index; queries come from the tracks it was built
    from, i.e. its first source folder) or `db_dir` (an index is built in
    `out_dir/index` with `model`, plus the tracks of `dummy_dir` as distractors).
    Queries are synthesised from the DB tracks (see `synthesize_queries`; random
    positions unless `aligned`) unless `query_dir` holds recorded queries and a
    `labels.csv`. `unknown_dir`: tracks not in the index, for the false-match rate
    (`n_unknown` queries, default `n_queries`). `phases`, `refine`, `interpolate`, `min_score`, `k_probe`,
    `speeds`: as for `nnfp.catalogue.identify.Identifier` (None phases: its default; None refine:
    every phase searched). `speed_range`, `tempo_range`, `pitch_range`: the known queries played
    faster, slower or higher by a factor drawn in the range (see `degrade`).
    """
    from nnfp.audio.io import load_audio
    from nnfp.catalogue.build import add_to_index, build_index
    from nnfp.catalogue.identify import Identifier
    from nnfp.defaults import DEFAULT_PHASES
    from nnfp.outputs import claim_output_dir, output_kind, write_marker

    if (index_dir is None) == (db_dir is None):
        raise ValueError("Give either an index folder or a DB audio folder (--db), not both")
    for name, span, lowest in (("speed", speed_range, 0.5), ("tempo", tempo_range, 0.5), ("pitch", pitch_range, -12.0)):
        if span is None:
            continue
        if query_dir is not None:
            raise ValueError(f"--{name} alters synthesised queries; recorded ones (--query-dir) are played as they are")
        low, high = (float(v) for v in span)
        if not lowest <= low <= high <= (2.0 if name != "pitch" else 12.0):
            raise ValueError(f"--{name} LO HI must satisfy {lowest:g} <= LO <= HI <= {2.0 if name != 'pitch' else 12.0:g}; got {low:g} {high:g}")
    # Before anything is built or written: a new or empty folder, or an earlier evaluation.
    claim_output_dir(out_dir, "evaluation", reuse=True, inputs=[db_dir, dummy_dir])
    out_dir = Path(out_dir)
    write_marker(out_dir, "evaluation")
    if index_dir is None:
        index_dir = out_dir / "index"
        if output_kind(index_dir) == "index":  # an earlier run of this evaluation built it
            check_reusable_index(index_dir, db_dir, dummy_dir, model, out_dir)
            log(f"reusing the index of {db_dir} in {index_dir} (built by an earlier run with the same audio and model)")
        else:
            log(f"building the index of {db_dir} in {index_dir}")
            build_index(
                db_dir, index_dir, model=model, index_type=index_type, progress=progress,
                trust_model=trust_model, **index_params,
            )
            if dummy_dir is not None:
                log(f"adding the dummy tracks of {dummy_dir}")
                add_to_index(index_dir, dummy_dir, progress=progress)
        model = None
    elif dummy_dir is not None:
        raise ValueError("--dummy-dir needs --db (add dummy tracks to an index with `nnfp index add`)")
    phases = DEFAULT_PHASES if phases is None else int(phases)
    identifier = Identifier(
        index_dir, model=model, k_probe=k_probe, min_score=min_score, threads=threads, phases=phases,
        refine=refine, interpolate=interpolate, trust_model=trust_model, nprobe=index_params.get("nprobe"),
        speeds=speeds,
    )
    identifier.db.set_search_params(ef_search=index_params.get("ef_search"))
    db = identifier.db
    rate = identifier.sample_rate
    segment, hop = identifier.embedder.segment_samples, identifier.hop_samples
    counts = [n_segments(int(round(s * rate)), segment, hop) for s in lengths_seconds]
    degradation = degradation_settings(identifier, snr_db_range, noise_dir, ir_dir, noise_kind, add_noise, add_reverb)
    known_degradation = dict(degradation, speed_range=speed_range, tempo_range=tempo_range, pitch_range=pitch_range)

    if query_dir is None:
        waveforms, info = index_queries(identifier, n_queries, max(lengths_seconds), known_degradation, seed, aligned)
    else:
        first_rows = dict(zip(*(a.tolist() for a in np.unique(db.segment_track, return_index=True)), strict=True))
        track_by_path = {t["path"]: t["track_id"] for t in db.tracks}
        waveforms, info = [], {"track": [], "true_row": [], "offset_s": [], "snr_db": []}
        for row in read_labels(query_dir):
            if row["track"] not in track_by_path:
                raise ValueError(f"labels.csv: track {row['track']!r} is not in the index")
            track_id = track_by_path[row["track"]]
            offset = float(row["offset_s"])
            waveforms.append(load_audio(Path(query_dir) / row["query"], rate))
            info["track"].append(track_id)
            info["true_row"].append(first_rows[track_id] + int(round(offset / db.hop_seconds)))
            info["offset_s"].append(offset)
            info["snr_db"].append(np.nan)
        info = {k: np.asarray(v) for k, v in info.items()}
        too_short = [i for i, w in enumerate(waveforms) if len(w) < identifier.embedder.segment_samples]
        if too_short:
            raise ValueError(f"{len(too_short)} queries are shorter than one segment (e.g. #{too_short[0]})")

    raw = run_queries(identifier, waveforms, lengths_seconds, progress=progress)
    rates = hit_rates(
        raw["rows"], info["true_row"], raw["tracks"], info["track"], raw["valid"],
        predicted_offsets=raw["offsets"], true_offsets=info["offset_s"], decided=raw["decided"],
        **({"predicted_speeds": raw["speeds"], "true_speeds": info["speed"]} if speed_range is not None else {}),
    )
    if unknown_dir is not None:
        unknown_waves, unknown_info = index_queries(
            identifier, n_queries if n_unknown is None else n_unknown, max(lengths_seconds), degradation,
            seed + 1, aligned, unknown_dir=unknown_dir,
        )
        unknown = run_queries(identifier, unknown_waves, lengths_seconds, progress=progress)
        n_unknown_valid = unknown["valid"].sum(axis=0)
        rates["false_match"] = 100.0 * (unknown["decided"] & unknown["valid"]).sum(axis=0) / np.maximum(n_unknown_valid, 1)
        rates["n_unknown"] = n_unknown_valid
        raw.update({f"unknown_{k}": v for k, v in unknown.items()})
    thresholds = [identifier.match_threshold(s) for s in lengths_seconds]
    settings = {
        "index": str(Path(index_dir).absolute()),
        "index_type": db.index_type,
        "index_params": json.dumps(db.index_params),
        "db_tracks": len(db.tracks),
        "db_segments": db.n_segments,
        "queries": len(waveforms),
        "query_source": str(query_dir) if query_dir else "synthesised from the DB tracks",
        "protocol": "hop-aligned starts (paper)" if aligned else "random sample positions",
        "unknown_queries": f"{int(rates['n_unknown'].max())} from {unknown_dir}" if unknown_dir else "none",
        "noise": "none" if not add_noise else (str(noise_dir) if noise_dir else f"generated (kind={noise_kind or 'any'})"),
        "impulse_responses": "none" if not add_reverb else (str(ir_dir) if ir_dir else "generated (full tails)"),
        "snr_db_range": list(snr_db_range),
        "seed": seed,
        "k_probe": k_probe,
        "phases": phases,
        "refine": "all" if refine is None else int(refine),
        "interpolate": int(interpolate),
        "speeds": speeds_description(identifier.speeds),
        "query_speed": "unchanged" if speed_range is None else f"{speed_range[0]:g}-{speed_range[1]:g}x",
        "query_tempo": "unchanged" if tempo_range is None else f"{tempo_range[0]:g}-{tempo_range[1]:g}x",
        "query_pitch": "unchanged" if pitch_range is None else f"{pitch_range[0]:+g} to {pitch_range[1]:+g} semitones",
        "match_threshold": "none" if min_score is None else ", ".join(
            f"{s:g} s: {t:.4f}" for s, t in zip(lengths_seconds, thresholds, strict=True)
        ) + (" (calibrated)" if min_score == "calibrated" and identifier.calibration is not None else ""),
        "median_search_ms": float(np.median(raw["search_ms"])) if len(raw["search_ms"]) else None,
        "median_fingerprint_ms": float(np.median(raw["fingerprint_ms"])) if len(raw["fingerprint_ms"]) else None,
    }
    title = f"nnfp evaluate: {len(waveforms)} queries, DB of {len(db.tracks)} tracks ({db.n_segments} segments)"
    save_results(out_dir, rates, lengths_seconds, counts, raw, info, settings, title)
    log(format_table(rates, lengths_seconds, counts, title=title))
    return rates


def check_reusable_index(index_dir, db_dir, dummy_dir, model, out_dir):
    """Refuses (`OutputFolderError`) to reuse the index an earlier `evaluate` built in `index_dir`
    unless it was built from `db_dir` (plus `dummy_dir`) with `model` (compared by `model_digest`)."""
    from nnfp.catalogue.fingerprint import model_digest, resolve_model
    from nnfp.outputs import OutputFolderError
    from nnfp.store.db import read_metadata

    def folder(path):  # as the index records it (`list_catalogue`): resolved, a file's folder
        path = Path(path).resolve()
        return str(path.parent if path.is_file() else path)

    metadata = read_metadata(index_dir)
    recorded = [source.get("audio_dir") for source in metadata.get("sources", [])]
    wanted = [folder(db_dir)] + ([folder(dummy_dir)] if dummy_dir is not None else [])
    model_path = resolve_model(model)
    differences = []
    if recorded != wanted:
        differences.append(f"built from {' + '.join(map(str, recorded)) or 'no recorded audio'}, "
                           f"not {' + '.join(wanted)}")
    if metadata.get("model_digest") != model_digest(model_path):
        differences.append(f"built with another model than {model_path}")
    if differences:
        raise OutputFolderError(
            f"{out_dir}: holds an earlier evaluation whose index {index_dir} was {' and '.join(differences)}; "
            "pass a new --out folder for this evaluation (nothing was written)"
        )


def calibrate_index(
    index_dir,
    unknown_dir,
    out=None,
    n_queries=500,
    lengths_seconds=LENGTHS_SECONDS,
    target_false_match=0.01,
    confidence=0.95,
    n_unknown=None,
    snr_db_range=(0.0, 10.0),
    noise_dir=None,
    ir_dir=None,
    noise_kind=None,
    add_noise=True,
    add_reverb=True,
    phases=None,
    refine=DEFAULT_REFINE,
    interpolate=DEFAULT_INTERPOLATE,
    speeds=DEFAULT_SPEEDS,
    decision=DEFAULT_DECISION,
    k_probe=20,
    seed=0,
    threads=1,
    progress=True,
    log=print,
    trust_model=False,
):
    """Calibrates the match threshold of an index per query length and saves it.

    In-catalogue queries are cut from the index's tracks, out-of-catalogue ones from the
    audio files of `unknown_dir` (not in the index), both at random positions with the
    degradation of `evaluate` (`n_queries` in-catalogue, `n_unknown` out-of-catalogue: the
    more, the lower the thresholds that `confidence` allows); `nnfp.catalogue.calibration.calibrate`
    picks the thresholds. `unknown_dir` may be a list of folders of different kinds of
    audio (music not in the index, environmental noise, speech): `n_unknown` queries are
    cut from each, and each kind must meet the target on its own. Saved
    to `out` (default `INDEX/calibration.json`, which `Identifier` then uses; write it
    next to a model, e.g. `nnfp/weights/default.calibration.json`, to ship it with the
    model: every index built with that model copies it).

    Refused before any query (`ValueError`): `n_unknown` too small to show the target at
    `confidence` even with no false match (`check_sample_size`: 299 for 1 % at 95 %;
    `confidence=None`, a point estimate, claims no confidence and is not checked), and an
    `out` that exists and is not a calibration file. The file replaced is kept beside it as
    `<name>.bak` (the latest one replaced); the index's own calibration is written under
    `index_lock(index_dir)`. `trust_model`: the index's model may be a SavedModel (as for
    `nnfp.catalogue.identify.Identifier`).

    Returns:
        The `nnfp.catalogue.calibration.Calibration`.
    """
    from nnfp.catalogue.build import index_lock
    from nnfp.catalogue.calibration import (
        INDEX_CALIBRATION_FILE,
        calibrate,
        check_replaceable,
        check_sample_size,
        format_calibration_table,
        save_replacing,
    )
    from nnfp.catalogue.identify import Identifier
    from nnfp.defaults import DEFAULT_PHASES

    n_unknown = n_queries if n_unknown is None else int(n_unknown)
    check_sample_size(n_unknown, target_false_match, confidence)
    own = Path(index_dir) / INDEX_CALIBRATION_FILE
    path = Path(out) if out is not None else own
    in_index = path.absolute() == own.absolute()
    if not in_index:
        check_replaceable(path)
    phases = DEFAULT_PHASES if phases is None else int(phases)
    identifier = Identifier(
        index_dir, k_probe=k_probe, min_score=None, threads=threads, phases=phases, refine=refine,
        interpolate=interpolate, trust_model=trust_model, speeds=speeds, decision=decision,
    )
    degradation = degradation_settings(identifier, snr_db_range, noise_dir, ir_dir, noise_kind, add_noise, add_reverb)
    seconds = max(lengths_seconds)
    known_waves, known_info = index_queries(identifier, n_queries, seconds, degradation, seed, aligned=False)
    folders = [unknown_dir] if isinstance(unknown_dir, (str, Path)) else list(unknown_dir)
    names = [Path(folder).name for folder in folders]
    if len(set(names)) != len(names):
        raise ValueError(f"Out-of-catalogue folders need distinct names (they name the kinds). Received: {folders}")
    known = run_queries(identifier, known_waves, lengths_seconds, progress=progress)
    unknown = {}
    for i, (name, folder) in enumerate(zip(names, folders, strict=True)):
        waves, _ = index_queries(
            identifier, n_unknown, seconds, degradation, seed + 1 + i, aligned=False, unknown_dir=folder
        )
        unknown[name] = run_queries(identifier, waves, lengths_seconds, progress=progress)
    error = np.abs(known["offsets"][..., 0] - known_info["offset_s"][:, None])
    right = (known["tracks"][..., 0] == known_info["track"][:, None]) & (error <= OFFSET_TOLERANCE_S + 1e-6)
    floors = None
    if identifier.decision == "margin":
        # With no threshold the margin is measured against the best other track (0 without
        # one): the rival is score - margin. Margins are then taken against at least a high
        # quantile of the out-of-catalogue rivals, so a weak rival does not make a weak
        # match look sure (`Identifier.rival_floor`).
        def rivals(raw):
            return raw["scores"][..., 0] - raw["confidences"][..., 0]

        pooled = np.concatenate([rivals(raw) for raw in unknown.values()])
        floors = [round(float(np.nanquantile(pooled[:, j], RIVAL_FLOOR_QUANTILE)), 4) for j in range(pooled.shape[1])]

        def confidences(raw):
            return raw["scores"][..., 0] - np.maximum(rivals(raw), np.asarray(floors))
    else:
        def confidences(raw):
            return raw["confidences"][..., 0]

    unknown = {name: confidences(raw) for name, raw in unknown.items()}
    calibration = calibrate(
        list(lengths_seconds), confidences(known), right, unknown[names[0]] if len(names) == 1 else unknown,
        target_false_match, confidence=confidence,
    )
    if floors is not None:
        calibration.info["rival_floor"] = floors
    calibration.info.update(
        phases=phases, refine="all" if refine is None else int(refine), interpolate=int(interpolate),
        speeds=None if identifier.speeds is None else list(identifier.speeds), decision=identifier.decision,
        k_probe=int(k_probe), seed=int(seed), index=str(Path(index_dir).absolute()),
        hop_seconds=float(identifier.db.hop_seconds), model_digest=identifier.db.metadata.get("model_digest"),
        unknown_dir=str(Path(folders[0]).absolute()) if len(folders) == 1 else [str(Path(f).absolute()) for f in folders],
        snr_db_range=list(snr_db_range),
        noise=str(noise_dir) if noise_dir else ("generated" if add_noise else "none"),
        impulse_responses=str(ir_dir) if ir_dir else ("generated" if add_reverb else "none"),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    if in_index:  # the index's own file, however damaged, is replaced (and kept as .bak)
        with index_lock(index_dir, log=log):
            backup = save_replacing(calibration, path, any_file=True)
    else:
        backup = save_replacing(calibration, path)
    log(format_calibration_table(calibration, title=f"Calibrated thresholds -> {path}"))
    if backup is not None:
        log(f"(the calibration it replaced is kept as {backup})")
    return calibration
