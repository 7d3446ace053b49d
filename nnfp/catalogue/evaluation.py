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

Deterministic from a seed (tracks, positions, SNRs, noise and rooms). The queries are made by
`nnfp.catalogue.queries`, ranked and counted by `nnfp.catalogue.metrics`, reported by
`nnfp.catalogue.reports`; `calibrate_index` fits the decision thresholds on the same kind of
queries (training audio only).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from nnfp.audio.segments import n_segments
from nnfp.catalogue.calibration import NO_SHARPNESS_FLOOR
from nnfp.catalogue.identify import (
    IMPOSTOR_PLACES,
    INTERPOLATED_OWN_SCORE,
    LEAD_WEIGHT,
    LEGACY_LEAD_WEIGHT,
    VOTE_WEIGHT,
    impostor_score,
)
from nnfp.catalogue.metrics import (
    LENGTHS_SECONDS,
    OFFSET_TOLERANCE_S,
    hit_rates,
    run_queries,
    same_audio_as_truth,
)
from nnfp.catalogue.queries import (
    PHONE_CALL,
    degradation_settings,
    index_queries,
    phone_call,
    read_labels,
)
from nnfp.catalogue.reports import format_table, save_results
from nnfp.catalogue.speeds import LEGACY_SPEED_STEPS, speed_steps_to_json, speeds_description
from nnfp.defaults import DEFAULT_DECISION, DEFAULT_INTERPOLATE, DEFAULT_REFINE, DEFAULT_SPEEDS
from nnfp.outputs import atomic_file

__all__ = ["calibrate_index", "check_reusable_index", "evaluate"]

# `calibrate_index`: margins are measured against at least this quantile of the best other-track
# scores of the out-of-catalogue queries (chosen by leave-one-kind-out: docs/defaults.md).
RIVAL_FLOOR_QUANTILE = 0.5
# `calibrate_index`: the sharpness floor of a length (`nnfp.catalogue.identify.alignment_sharpness`)
# keeps all but this share of the right answers of the in-catalogue queries (fitted on them alone,
# so it holds the same for any kind of out-of-catalogue audio); a length with fewer than
# SHARPNESS_MIN_RIGHT right answers has none (NO_SHARPNESS_FLOOR).
SHARPNESS_QUANTILE = 0.025
SHARPNESS_MIN_RIGHT = 40


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
    phone=False,
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
    faster, slower or higher by a factor drawn in the range (see `degrade`). `phone`: every
    synthesised query (known and unknown), after its room and noise, through a phone's
    microphone, gain control and speech codec (`nnfp.catalogue.queries.phone_call`).
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
    if phone and query_dir is not None:
        raise ValueError("--phone alters synthesised queries; recorded ones (--query-dir) are played as they are")
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
        if phone:
            waveforms = phone_call(waveforms, rate, seed)
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
        same_audio=same_audio_as_truth(db, raw["rows"], info["true_row"], counts),
    )
    if unknown_dir is not None:
        unknown_waves, unknown_info = index_queries(
            identifier, n_queries if n_unknown is None else n_unknown, max(lengths_seconds), degradation,
            seed + 1, aligned, unknown_dir=unknown_dir,
        )
        if phone:
            unknown_waves = phone_call(unknown_waves, rate, seed + 1)
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
        "speeds": speeds_description(identifier.speeds, identifier.speed_steps),
        "query_speed": "unchanged" if speed_range is None else f"{speed_range[0]:g}-{speed_range[1]:g}x",
        "query_tempo": "unchanged" if tempo_range is None else f"{tempo_range[0]:g}-{tempo_range[1]:g}x",
        "query_pitch": "unchanged" if pitch_range is None else f"{pitch_range[0]:+g} to {pitch_range[1]:+g} semitones",
        "query_phone": PHONE_CALL if phone else "none",
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


def _steps_record(speeds, steps):
    """What a calibration records of its grid's steps by query length: none without a speed
    search or with a step of its own (`speeds` (lo, hi, step)), else `steps` as JSON."""
    return None if speeds is None or len(speeds) == 3 else speed_steps_to_json(steps)


_WORK_PART = 100  # queries per part kept by `calibrate_index(work_dir=...)`
_WORK_KEYS = ("rows", "tracks", "offsets", "scores", "speeds", "found_speeds", "confidences", "valid", "decided")


def _run_kept(identifier, waves, lengths_seconds, progress, work_dir, name, settings):
    """`run_queries` over `waves`; with a `work_dir`, in parts of `_WORK_PART` queries, each
    saved there (atomically) as it is done and reused when saved with the same `settings`.

    The result's `lead_weight` holds, per query, the impostor-lead weight its confidences
    were computed with (`Identifier.lead_weight`; a part saved without it: the legacy
    weight), which `calibrate_index` takes back out: parts of another weight are reused."""
    if work_dir is None:
        raw = run_queries(identifier, waves, lengths_seconds, progress=progress)
        return {**raw, "lead_weight": np.full(len(waves), identifier.lead_weight)}
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for first in range(0, len(waves), _WORK_PART):
        path = work_dir / f"{name}.{first // _WORK_PART:04d}.npz"
        # the queries of a part depend on the seed and where the part starts, not on how many follow
        count = len(waves[first : first + _WORK_PART])
        key = json.dumps({**settings, "part": name, "first": first, "count": count}, sort_keys=True)
        changed = []
        if path.exists():
            try:
                with np.load(path) as saved:
                    stored = str(saved["settings"])
                    part = {k: saved[k] for k in _WORK_KEYS}
                    # saved before the sharpness was kept: NaN (an in-catalogue part is made again)
                    part["sharpness"] = saved["sharpness"] if "sharpness" in saved.files else None
                    part["votes"] = saved["votes"] if "votes" in saved.files else None
                    part["segment_scores"] = saved["segment_scores"] if "segment_scores" in saved.files else None
            except (OSError, ValueError, KeyError) as error:
                raise ValueError(
                    f"{path}: not a saved part of a calibration ({type(error).__name__}: {error}); "
                    "give another --work-dir"
                ) from error
            stored = json.loads(stored)
            if "speed_steps" not in stored:  # saved before the steps were recorded: the legacy ones
                stored["speed_steps"] = _steps_record(stored.get("speeds"), LEGACY_SPEED_STEPS)
            weight = float(stored.get("lead_weight", LEGACY_LEAD_WEIGHT))
            changed = sorted(k for k, v in json.loads(key).items() if stored.get(k) != v and k != "lead_weight")
            if part["sharpness"] is None:
                if name == "known":
                    changed = changed or ["sharpness"]
                else:
                    part["sharpness"] = np.full(part["valid"].shape, np.nan)
            if part["votes"] is None or part["segment_scores"] is None:  # saved before they were kept: made again
                changed = changed or ["votes"]
            if changed and changed not in (["count"], ["sharpness"], ["votes"]):
                raise ValueError(
                    f"{path}: saved by a calibration with other settings (different: {', '.join(changed)}); "
                    "give another --work-dir, or the settings it was saved with"
                )
        if not path.exists() or changed:  # new, or the last part of a run with fewer queries: (re)made
            raw = run_queries(identifier, waves[first : first + _WORK_PART], lengths_seconds, progress=progress)
            part = {k: raw[k] for k in (*_WORK_KEYS, "sharpness", "votes", "segment_scores")}
            weight = identifier.lead_weight
            with atomic_file(path) as tmp, open(tmp, "wb") as handle:
                np.savez_compressed(handle, settings=np.asarray(key), **part)
        parts.append({**part, "lead_weight": np.full(len(part["valid"]), weight)})
    return {k: np.concatenate([p[k] for p in parts])
            for k in (*_WORK_KEYS, "sharpness", "votes", "segment_scores", "lead_weight")}


def _off_speed(raw):
    """Whether each query's top answer (per length) was found at another speed than the catalogue's."""
    speeds = raw["found_speeds"][..., 0]
    return np.isfinite(speeds) & (np.abs(speeds - 1.0) > 1e-9)


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
    scores_out=None,
    work_dir=None,
):
    """Calibrates the match threshold of an index per query length and saves it.

    In-catalogue queries are cut from the index's tracks, out-of-catalogue ones from the
    audio files of `unknown_dir` (not in the index), both at random positions with the
    degradation of `evaluate` (`n_queries` in-catalogue, `n_unknown` out-of-catalogue: the
    more, the lower the thresholds that `confidence` allows); `nnfp.catalogue.calibration.calibrate`
    picks the thresholds. `unknown_dir` may be a list of folders of different kinds of
    audio (music not in the index, environmental noise, speech): `n_unknown` queries (or one
    count per folder) are
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

    `scores_out`: a `.npz` file for the ranked scores, confidences, tracks and valid lengths of
    every query (`known/...`, `unknown:KIND/...`) and `known/right`, to study other decision
    rules on the same queries.

    `work_dir`: a folder (made if missing) that keeps the ranked answers of every 100
    queries as they are done; a run stopped halfway and started again with the same
    settings reuses them (a calibration of thousands of queries takes hours), as does one
    with more queries (the first queries of a seed are the same however many follow), and
    one with other settings is refused with the settings that differ.

    Returns:
        The `nnfp.catalogue.calibration.Calibration`.
    """
    from nnfp.audio.sources import list_audio_files
    from nnfp.catalogue.build import index_lock
    from nnfp.catalogue.calibration import (
        INDEX_CALIBRATION_FILE,
        calibrate,
        check_replaceable,
        check_sample_size,
        format_calibration_table,
        save_replacing,
        source_group,
    )
    from nnfp.catalogue.identify import Identifier
    from nnfp.defaults import DEFAULT_PHASES

    folders = [unknown_dir] if isinstance(unknown_dir, (str, Path)) else list(unknown_dir)
    if n_unknown is None:
        counts = [int(n_queries)] * len(folders)
    elif isinstance(n_unknown, (int, np.integer)):
        counts = [int(n_unknown)] * len(folders)
    else:  # one count per folder
        counts = [int(n) for n in n_unknown]
        if len(counts) != len(folders):
            raise ValueError(f"`n_unknown` must be one count or one per folder: {len(counts)} for {len(folders)} folders")
    for count in sorted(set(counts)):
        check_sample_size(count, target_false_match, confidence)
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
    names = [Path(folder).name for folder in folders]
    if len(set(names)) != len(names):
        raise ValueError(f"Out-of-catalogue folders need distinct names (they name the kinds). Received: {folders}")
    steps_record = _steps_record(identifier.speeds, identifier.speed_steps)  # recorded, and in the parts
    work = None
    if work_dir is not None:  # what every part of the run depends on (`_run_kept`)
        work = {
            "index": str(Path(index_dir).absolute()), "model_digest": identifier.db.metadata.get("model_digest"),
            "n_segments": int(identifier.db.n_segments), "n_tracks": len(identifier.db.tracks),
            "hop_seconds": float(identifier.db.hop_seconds), "lengths_s": [float(x) for x in lengths_seconds],
            "phases": phases, "refine": refine, "interpolate": int(interpolate), "k_probe": int(k_probe),
            "speeds": None if identifier.speeds is None else list(identifier.speeds), "decision": identifier.decision,
            "speed_steps": steps_record,
            "snr_db_range": [float(x) for x in snr_db_range], "noise_dir": None if noise_dir is None else str(Path(noise_dir).absolute()),
            "ir_dir": None if ir_dir is None else str(Path(ir_dir).absolute()), "noise_kind": noise_kind, "add_noise": bool(add_noise),
            "add_reverb": bool(add_reverb), "seed": int(seed), "lead_weight": identifier.lead_weight,
            "interpolated_score": INTERPOLATED_OWN_SCORE,
        }
    known = known_raw = _run_kept(identifier, known_waves, lengths_seconds, progress, work_dir, "known", work)
    unknown, groups = {}, {}
    for i, (name, folder) in enumerate(zip(names, folders, strict=True)):
        waves, info = index_queries(
            identifier, counts[i], seconds, degradation, seed + 1 + i, aligned=False, unknown_dir=folder
        )
        files = list_audio_files(folder)  # `info["track"]` indexes them (`unknown_sources`)
        groups[name] = [source_group(files[int(t)], folder) for t in info["track"]]
        unknown[name] = _run_kept(
            identifier, waves, lengths_seconds, progress, work_dir, f"unknown-{i}-{name}",
            None if work is None else {**work, "folder": str(Path(folder).absolute())},
        )
    unknown_raw = dict(unknown)
    error = np.abs(known["offsets"][..., 0] - known_info["offset_s"][:, None])
    right = (known["tracks"][..., 0] == known_info["track"][:, None]) & (error <= OFFSET_TOLERANCE_S + 1e-6)
    if scores_out is not None:  # the ranked scores behind the thresholds, to study other rules on
        arrays = {"lengths_s": np.asarray(lengths_seconds, float), "known/right": right}
        for name, raw in (("known", known), *((f"unknown:{n}", r) for n, r in unknown.items())):
            keys = ("scores", "confidences", "tracks", "speeds", "found_speeds", "valid", "lead_weight", "votes",
                    "segment_scores")
            arrays.update({f"{name}/{key}": raw[key] for key in keys})
        with atomic_file(scores_out) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    # the top answer was found at another speed than the catalogue's (`off_speed_margins`)
    known_off = _off_speed(known)
    unknown_off = {name: _off_speed(raw) for name, raw in unknown.items()}
    floors = None
    if identifier.decision in ("margin", "lead"):
        # With no threshold the margin is measured against the best other track (0 without
        # one): the rival is score - confidence + the lead over the impostor level ("lead":
        # `impostor_score` of the ranked places, all of which `run_queries` keeps, times the
        # weight the confidence was computed with). Margins are then taken against at least a
        # high quantile of the out-of-catalogue rivals, so a weak rival does not make a weak
        # match look sure (`Identifier.rival_floor`), and the lead is counted with `LEAD_WEIGHT`.
        def parts(raw):  # (score, rival, lead over the impostor level) of each top answer
            scores = raw["scores"]
            lift = np.zeros(scores.shape[:2])  # score - impostor level (0 without one)
            if identifier.decision == "lead":
                for index in np.ndindex(lift.shape):
                    impostor = impostor_score(scores[index][:IMPOSTOR_PLACES])
                    if impostor is not None:
                        lift[index] = scores[index][0] - impostor
            rival = scores[..., 0] - raw["confidences"][..., 0] + raw["lead_weight"][:, None] * lift
            return scores[..., 0], rival, LEAD_WEIGHT * lift

        known_parts, unknown_parts = parts(known), {name: parts(raw) for name, raw in unknown.items()}
        pooled = np.concatenate([rival for _, rival, _ in unknown_parts.values()])
        floors = [round(float(np.nanquantile(pooled[:, j], RIVAL_FLOOR_QUANTILE)), 4) for j in range(pooled.shape[1])]

        def confidences(score, rival, extra, votes):
            return score - np.maximum(rival, np.asarray(floors)) + extra + VOTE_WEIGHT * np.nan_to_num(votes)

        votes = identifier.decision == "lead"  # the lead counts the segment votes (`Identifier.votes`)
        known = confidences(*known_parts, known_raw["votes"] if votes else 0.0)
        unknown = {name: confidences(*p, unknown_raw[name]["votes"] if votes else 0.0)
                   for name, p in unknown_parts.items()}
    else:
        known = known["confidences"][..., 0]
        unknown = {name: raw["confidences"][..., 0] for name, raw in unknown.items()}

    # the sharpness floor per length: all but SHARPNESS_QUANTILE of the right answers clear it
    known_sharpness = known_raw["sharpness"]
    sharp = np.where(right, known_sharpness, np.nan)
    sharpness_floors = [
        round(math.floor(float(np.nanquantile(column, SHARPNESS_QUANTILE)) * 1e4) / 1e4, 4)
        if np.isfinite(column).sum() >= SHARPNESS_MIN_RIGHT else NO_SHARPNESS_FLOOR
        for column in sharp.T
    ]
    searched = identifier.speeds is not None  # an off-speed margin is fitted (`off_speed_margins`)
    calibration = calibrate(
        list(lengths_seconds), known, right, unknown[names[0]] if len(names) == 1 else unknown,
        target_false_match, confidence=confidence, known_off_speed=known_off if searched else None,
        unknown_off_speed=(unknown_off[names[0]] if len(names) == 1 else unknown_off) if searched else None,
        decision=identifier.decision, lead_weight=LEAD_WEIGHT, unknown_groups=groups if len(names) > 1 else None,
        sharpness_floors=sharpness_floors, known_sharpness=known_sharpness,
        unknown_sharpness={name: unknown_raw[name]["sharpness"] for name in names} if len(names) > 1
        else unknown_raw[names[0]]["sharpness"],
    )
    if identifier.decision == "lead":
        calibration.info["vote_weight"] = VOTE_WEIGHT
    calibration.info["sharpness_quantile"] = SHARPNESS_QUANTILE
    if floors is not None:
        calibration.info["rival_floor"] = floors
        calibration.info["rival_floor_quantile"] = RIVAL_FLOOR_QUANTILE
    calibration.info.update(
        phases=phases, refine="all" if refine is None else int(refine), interpolate=int(interpolate),
        interpolated_score=INTERPOLATED_OWN_SCORE,
        speeds=None if identifier.speeds is None else list(identifier.speeds), decision=identifier.decision,
        **({} if steps_record is None else {"speed_steps": steps_record}),
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

