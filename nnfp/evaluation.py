"""The paper's search evaluation: hit rates of degraded query sequences against an index.

Follows `eval/eval_faiss.py` of mimbres/neural-audio-fp (Chang et al., ICASSP 2021):
every query is a sequence of consecutive 1 s segments (0.5 s hop) of a DB track,
degraded; for query lengths of 1, 2, 3, 5, 6 and 10 s (1, 3, 5, 9, 11, 19 segments)
the sequence search ranks candidate start rows of the DB and we count

- top-1 exact: the best candidate is the true start row,
- top-1 near: the best candidate is within one segment (±0.5 s) of it,
- top-3 / top-10 exact: the true start row is among the 3 / 10 best,
- song top-1: the best candidate lies in the right track (any offset).

Queries are synthesised deterministically from a seed: a random track, a random
hop-aligned start, background noise at a random SNR and an impulse response (from
given folders, or generated with `nnfp.corpus.make_noise` / `make_impulse_response`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np

__all__ = [
    "LENGTHS_SECONDS",
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
METRICS = ("top1_exact", "top1_near", "top3", "top10", "song_top1")
_LABELS = {
    "top1_exact": "top-1 exact",
    "top1_near": "top-1 near (±1 seg)",
    "top3": "top-3 exact",
    "top10": "top-10 exact",
    "song_top1": "song top-1",
}
N_RANKED = 10


def n_segments_for(seconds, hop_seconds=0.5, segment_seconds=1.0):
    return int(round((seconds - segment_seconds) / hop_seconds)) + 1


def hit_rates(predicted_rows, true_rows, predicted_tracks, true_tracks, valid=None):
    """Paper metrics from ranked predictions.

    Args:
        predicted_rows: (n_queries, n_lengths, k) ranked DB start rows, -1 padded.
        true_rows: (n_queries,) true start row of each query.
        predicted_tracks: (n_queries, n_lengths, k) track ids of the predictions, -1 padded.
        true_tracks: (n_queries,) true track id.
        valid: optional (n_queries, n_lengths) bool, False where a query is too short
            for a length (excluded from that length's rates).

    Returns:
        `{metric: (n_lengths,) percentages}` for `METRICS`, plus `"n"` (queries per length).
    """
    pred = np.asarray(predicted_rows)
    true = np.asarray(true_rows)[:, None, None]
    tracks = np.asarray(predicted_tracks)
    valid = np.ones(pred.shape[:2], bool) if valid is None else np.asarray(valid, bool)
    found = pred[..., 0] >= 0
    hits = {
        "top1_exact": pred[..., 0] == true[..., 0],
        "top1_near": found & (np.abs(pred[..., 0] - true[..., 0]) <= 1),
        "top3": np.any(pred[..., :3] == true, axis=-1),
        "top10": np.any(pred[..., :10] == true, axis=-1),
        "song_top1": found & (tracks[..., 0] == np.asarray(true_tracks)[:, None]),
    }
    n = valid.sum(axis=0)
    rates = {k: 100.0 * (v & valid).sum(axis=0) / np.maximum(n, 1) for k, v in hits.items()}
    rates["n"] = n
    return rates


def synthesize_queries(
    durations,
    load_track,
    track_first_rows,
    n_queries,
    seconds=10.0,
    hop_seconds=0.5,
    sample_rate=8000,
    snr_db_range=(0.0, 10.0),
    noise=None,
    impulse_responses=None,
    noise_kind=None,
    add_noise=True,
    add_reverb=True,
    seed=0,
):
    """Degraded excerpts of DB tracks at random hop-aligned offsets, deterministic from `seed`.

    Args:
        durations: `{track_id: seconds}` of the tracks queries may be cut from.
        load_track: `load_track(track_id)` -> waveform at `sample_rate` (called once per track).
        track_first_rows: `{track_id: DB row of the track's first segment}`.
        noise / impulse_responses: lists of waveforms to draw from; None generates
            one per query with `make_noise(kind=noise_kind)` / `make_impulse_response`.
        add_noise / add_reverb: False leaves that degradation out.

    Returns:
        `(waveforms list, info dict of arrays: track, true_row, offset_s, snr_db)`.
    """
    from nnfp.corpus import make_impulse_response, make_noise
    from nnfp.data import make_query

    length = int(round(seconds * sample_rate))
    hop = int(round(hop_seconds * sample_rate))
    eligible = sorted(t for t, d in durations.items() if int(round(d * sample_rate)) >= length)
    if not eligible:
        raise ValueError(f"No track is long enough for {seconds} s queries")
    rng = np.random.default_rng(seed)
    cache = {}
    waveforms, info = [], {"track": [], "true_row": [], "offset_s": [], "snr_db": []}
    for _ in range(int(n_queries)):
        track_id = eligible[int(rng.integers(len(eligible)))]
        if track_id not in cache:
            cache[track_id] = load_track(track_id)
        wave = cache[track_id]
        start_segment = int(rng.integers((len(wave) - length) // hop + 1))
        offset_s = start_segment * hop / sample_rate
        snr_db = float(rng.uniform(*snr_db_range))
        noise_seed, ir_seed = (int(s) for s in rng.integers(0, 2**31, size=2))
        noise_wave = ir = None
        if add_noise:
            if noise:
                source = noise[noise_seed % len(noise)]
                begin = noise_seed % max(1, len(source) - length) if len(source) > length else 0
                noise_wave = np.roll(source, -begin)
            else:
                noise_wave = make_noise(noise_seed, seconds, sample_rate, kind=noise_kind)
        if add_reverb:
            ir = (
                impulse_responses[ir_seed % len(impulse_responses)]
                if impulse_responses
                else make_impulse_response(ir_seed, sample_rate)
            )
        waveforms.append(
            make_query(
                wave, offset_s, seconds, noise=noise_wave, impulse_response=ir,
                snr_db=snr_db if add_noise else None, sample_rate=sample_rate,
            )
        )
        info["track"].append(track_id)
        info["true_row"].append(track_first_rows[track_id] + start_segment)
        info["offset_s"].append(offset_s)
        info["snr_db"].append(snr_db if add_noise else np.inf)
    return waveforms, {k: np.asarray(v) for k, v in info.items()}


def run_queries(identifier, waveforms, lengths_seconds=LENGTHS_SECONDS, progress=True):
    """Searches the first n segments of every query for every length.

    Returns `{"rows", "tracks", "scores"}` (n_queries, n_lengths, 10) ranked predictions
    (-1 / NaN padded), `"valid"` (n_queries, n_lengths) and `"search_ms"` per search.
    """
    from nnfp.index import _Progress

    db = identifier.db
    n_lengths = len(lengths_seconds)
    shape = (len(waveforms), n_lengths, N_RANKED)
    rows = np.full(shape, -1, np.int64)
    tracks = np.full(shape, -1, np.int64)
    scores = np.full(shape, np.nan)
    valid = np.zeros(shape[:2], bool)
    search_ms = []
    segment_seconds = identifier.embedder.segment_samples / identifier.sample_rate
    counts = [n_segments_for(s, db.hop_seconds, segment_seconds) for s in lengths_seconds]
    bar = _Progress(len(waveforms), "queries", enabled=progress)
    for q, wave in enumerate(waveforms):
        fingerprints = identifier.fingerprint(wave, name=f"query {q}")
        for j, n in enumerate(counts):
            if n > len(fingerprints):
                continue
            valid[q, j] = True
            started = time.perf_counter()
            matches = db.search(
                fingerprints[:n], top_k=identifier.k_probe, n_results=N_RANKED, min_score=None
            )
            search_ms.append(1000 * (time.perf_counter() - started))
            for r, match in enumerate(matches):
                rows[q, j, r] = match.segment_index
                tracks[q, j, r] = match.track_id
                scores[q, j, r] = match.score
        if q % 20 == 0 or q == len(waveforms) - 1:
            bar.update(q + 1)
    return {"rows": rows, "tracks": tracks, "scores": scores, "valid": valid, "search_ms": np.array(search_ms)}


def format_table(rates, lengths_seconds, counts, title="Search evaluation (hit rate, %)"):
    width = max(len(v) for v in _LABELS.values()) + 1
    header = f"{'query length':<{width}}" + "".join(f"{f'{s:g} s':>8}" for s in lengths_seconds)
    lines = [title, header, f"{'segments':<{width}}" + "".join(f"{c:>8}" for c in counts)]
    lines.append("-" * len(header))
    for key in METRICS:
        lines.append(f"{_LABELS[key]:<{width}}" + "".join(f"{v:>8.1f}" for v in rates[key]))
    lines.append(f"{'queries':<{width}}" + "".join(f"{int(v):>8}" for v in rates["n"]))
    return "\n".join(lines)


def markdown_table(rates, lengths_seconds, counts):
    head = "| metric | " + " | ".join(f"{s:g} s ({c} seg)" for s, c in zip(lengths_seconds, counts, strict=True)) + " |"
    rule = "| --- |" + " ---: |" * len(lengths_seconds)
    lines = [head, rule]
    for key in METRICS:
        lines.append(f"| {_LABELS[key]} | " + " | ".join(f"{v:.1f}" for v in rates[key]) + " |")
    lines.append("| queries | " + " | ".join(str(int(v)) for v in rates["n"]) + " |")
    return "\n".join(lines) + "\n"


def _atomic_bytes(path, data):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_results(out_dir, rates, lengths_seconds, counts, raw, query_info, settings, title):
    """Writes `scores.npz` (raw), `results.md`, `results.json` and `hit_rates.png`, each atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    _atomic_bytes(out_dir / "scores.npz", buffer.getvalue())
    markdown = f"# {title}\n\n" + markdown_table(rates, lengths_seconds, counts)
    markdown += "\n" + "".join(f"- {k}: {v}\n" for k, v in settings.items())
    _atomic_bytes(out_dir / "results.md", markdown.encode())
    payload = {
        "lengths_seconds": list(lengths_seconds),
        "n_segments": list(counts),
        "hit_rates": {k: np.asarray(v).tolist() for k, v in rates.items()},
        "settings": settings,
    }
    _atomic_bytes(out_dir / "results.json", json.dumps(payload, indent=1, default=str).encode())

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in METRICS:
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
    _atomic_bytes(out_dir / "hit_rates.png", png.getvalue())


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


def evaluate(
    out_dir,
    index_dir=None,
    db_dir=None,
    model=None,
    dummy_dir=None,
    query_dir=None,
    n_queries=2000,
    lengths_seconds=LENGTHS_SECONDS,
    snr_db_range=(0.0, 10.0),
    noise_dir=None,
    ir_dir=None,
    noise_kind=None,
    add_noise=True,
    add_reverb=True,
    seed=0,
    k_probe=20,
    index_type="auto",
    threads=1,
    progress=True,
    log=print,
    **index_params,
):
    """Runs the paper's evaluation and writes its files to `out_dir`; returns the hit rates.

    Either `index_dir` (a saved index; queries come from the tracks it was built
    from, i.e. its first source folder) or `db_dir` (an index is built in
    `out_dir/index` with `model`, plus the tracks of `dummy_dir` as distractors).
    Queries are synthesised from the DB tracks (see `synthesize_queries`) unless
    `query_dir` holds recorded queries and a `labels.csv`.
    """
    from nnfp.data import list_audio_files, load_audio, load_tracks
    from nnfp.index import Identifier, add_to_index, build_index

    out_dir = Path(out_dir)
    if (index_dir is None) == (db_dir is None):
        raise ValueError("Give either an index folder or a DB audio folder (--db), not both")
    if index_dir is None:
        index_dir = out_dir / "index"
        log(f"building the index of {db_dir} in {index_dir}")
        build_index(db_dir, index_dir, model=model, index_type=index_type, progress=progress, **index_params)
        if dummy_dir is not None:
            log(f"adding the dummy tracks of {dummy_dir}")
            add_to_index(index_dir, dummy_dir, progress=progress)
        model = None
    elif dummy_dir is not None:
        raise ValueError("--dummy-dir needs --db (add dummy tracks to an index with `nnfp index add`)")
    identifier = Identifier(index_dir, model=model, k_probe=k_probe, min_score=None, threads=threads)
    db = identifier.db
    rate = identifier.sample_rate
    source = db.metadata["sources"][0]
    by_id = {t["track_id"]: t for t in db.tracks}
    first_rows = dict(zip(*(a.tolist() for a in np.unique(db.segment_track, return_index=True)), strict=True))
    segment_seconds = identifier.embedder.segment_samples / rate
    counts = [n_segments_for(s, db.hop_seconds, segment_seconds) for s in lengths_seconds]

    if query_dir is None:
        ids = range(source["first_track_id"], source["first_track_id"] + source["n_tracks"])

        def load_track(track_id):
            return load_audio(Path(source["audio_dir"]) / by_id[track_id]["path"], rate)

        def bank(folder):
            if folder is None:
                return None
            arrays, _, _ = load_tracks(list_audio_files(folder), sample_rate=rate, min_seconds=0.0)
            return arrays or None

        waveforms, info = synthesize_queries(
            {i: by_id[i]["duration_s"] for i in ids}, load_track, first_rows, n_queries,
            seconds=max(lengths_seconds), hop_seconds=db.hop_seconds, sample_rate=rate,
            snr_db_range=snr_db_range, noise=bank(noise_dir), impulse_responses=bank(ir_dir),
            noise_kind=noise_kind, add_noise=add_noise, add_reverb=add_reverb, seed=seed,
        )
    else:
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
    rates = hit_rates(raw["rows"], info["true_row"], raw["tracks"], info["track"], raw["valid"])
    settings = {
        "index": str(Path(index_dir).absolute()),
        "index_type": db.index_type,
        "index_params": json.dumps(db.index_params),
        "db_tracks": len(db.tracks),
        "db_segments": db.n_segments,
        "queries": len(waveforms),
        "query_source": str(query_dir) if query_dir else "synthesised from the DB tracks",
        "noise": "none" if not add_noise else (str(noise_dir) if noise_dir else f"generated (kind={noise_kind or 'any'})"),
        "impulse_responses": "none" if not add_reverb else (str(ir_dir) if ir_dir else "generated"),
        "snr_db_range": list(snr_db_range),
        "seed": seed,
        "k_probe": k_probe,
        "median_search_ms": float(np.median(raw["search_ms"])) if len(raw["search_ms"]) else None,
    }
    title = f"nnfp evaluate: {len(waveforms)} queries, DB of {len(db.tracks)} tracks ({db.n_segments} segments)"
    save_results(out_dir, rates, lengths_seconds, counts, raw, info, settings, title)
    log(format_table(rates, lengths_seconds, counts, title=title))
    return rates
