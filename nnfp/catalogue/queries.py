"""Queries as users record them, for `evaluate` and `calibrate_index`: excerpts of catalogue
tracks (or of audio not in the catalogue) cut at random sample positions, played at another
speed, tempo or key (`altered`), through a room (the full impulse response, with the
reverberation of the audio before the cut inside the window) and background noise at a random
SNR, then resampled to the index rate like a user's file. Deterministic from a seed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from nnfp.audio.segments import n_segments

__all__ = [
    "PHONE_CALL",
    "altered",
    "degradation_settings",
    "degrade",
    "index_queries",
    "phone_call",
    "query_sources",
    "read_labels",
    "synthesize_queries",
    "unknown_sources",
]

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


PHONE_CALL = (
    "a phone's microphone band and colour (high-pass 100-400 Hz, low-pass 2.8-3.8 kHz, shelf and resonance), "
    "its automatic gain control and a speech codec (AMR-NB 4.75-12.2 kbit/s or Opus 8-16 kbit/s)"
)


def phone_call(waveforms, sample_rate, seed):
    """`waveforms` (equal lengths, at `sample_rate`) as a phone would send them: each through
    its own microphone band (`RandomBandLimit`), automatic gain control (`RandomGainControl`)
    and speech codec (`RandomCodec`: AMR-NB or Opus), in that order, with the layers' default
    ranges (`PHONE_CALL`); the same draws for the same `seed`. A list of float32 arrays."""
    from nnfp.pipeline.field import RandomBandLimit, RandomCodec, RandomGainControl

    if not len(waveforms):
        return []
    lengths = {len(w) for w in waveforms}
    if len(lengths) != 1:
        raise ValueError(f"phone_call needs waveforms of one length. Received lengths {sorted(lengths)[:4]}")
    seeds = np.random.default_rng([int(seed), 31]).integers(0, 2**31, size=3)
    chain = [
        RandomBandLimit(sample_rate=sample_rate, seed=int(seeds[0])),
        RandomGainControl(sample_rate=sample_rate, seed=int(seeds[1])),
        RandomCodec(sample_rate=sample_rate, seed=int(seeds[2])),
    ]
    out = []
    for first in range(0, len(waveforms), 64):  # a bounded batch: 64 x 10 s is 20 MB
        batch = np.stack(waveforms[first : first + 64]).astype(np.float32)
        for layer in chain:
            batch = np.asarray(layer(batch, training=True))
        out.extend(np.asarray(w, np.float32) for w in batch)
    return out


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


def query_sources(identifier):
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


def unknown_sources(unknown_dir):
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
        durations, load_track, first_rows = query_sources(identifier)
    else:
        (durations, load_track), first_rows = unknown_sources(unknown_dir), None
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

