"""Identify query audio against a saved index: which track, where, how sure.

>>> identifier = Identifier("my_index")
>>> identifier.identify_file("clip.wav")[0]  # Match(track_id, path, offset_s, score, ...)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nnfp.audio.segments import QUIET_DBFS, n_segments, segment_levels_db, segment_waveform
from nnfp.catalogue.fingerprint import fingerprint_segments, index_embedder, resolve_model
from nnfp.defaults import (
    DEFAULT_INTERPOLATE,
    DEFAULT_K_PROBE,
    DEFAULT_MIN_SCORE,
    DEFAULT_PHASES,
    DEFAULT_REFINE,
)
from nnfp.store.db import FingerprintDB

__all__ = ["CALIBRATED", "Identifier", "QueryError", "identify_result"]

CALIBRATED = "calibrated"  # Identifier(min_score=...): the calibrated threshold of the query's length
SILENT_PEAK_DB = -60.0  # queries quieter than this (peak, dBFS) are rejected as silent
SILENT_RMS_DB = -70.0  # ... and those whose varying part is below this RMS level (dBFS)
_ONE_BATCH_SEGMENTS = 256  # query phases fingerprinted as one batch up to this many segments


def identify_result(query, matches, hint=None):
    """The object `nnfp identify --json` prints for one query (and `nnfp serve` answers):
    `{"query", "matches": [{"track", "offset_s", "score"}, ...]}`, plus `"hint"` when given."""
    found = [{"track": m.path, "offset_s": round(m.offset_s, 3), "score": round(m.score, 4)} for m in matches]
    return {"query": query, "matches": found, **({"hint": hint} if hint else {})}


class QueryError(ValueError):
    """A query that cannot be searched (too short, silent, constant). The message starts with the query name."""


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
        self.db = db if db is not None else FingerprintDB.load(index_dir, threads=threads)
        if nprobe is not None:
            self.db.set_search_params(nprobe=nprobe)
        meta = self.db.metadata
        if embedder is None:
            rate = int(meta.get("sample_rate", 8000))
            embedder = index_embedder(index_dir, meta, rate, model=model, trust_model=trust_model, runtime=runtime)
        self.embedder = embedder
        self.sample_rate = int(meta.get("sample_rate", 8000))
        self.hop_samples = int(round(self.db.hop_seconds * self.sample_rate))
        self.k_probe = int(k_probe)
        self.min_score = min_score
        self.phases = int(phases)
        self.refine = None if refine is None else int(refine)
        self.interpolate = int(interpolate)
        self.collapse_seconds = collapse_seconds
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
        if calibration is not None and isinstance(min_score, str) and min_score == CALIBRATED:
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

    def phase_fingerprints(self, audio, name="query"):
        """Fingerprints of the query at every phase: list of `(shift_seconds, (n_segments, d))`.

        Phase p cuts the query `p * hop / phases` later; phases leaving less than one
        segment are dropped. All phases are fingerprinted in one batch.
        """
        self.check_audio(audio, name=name)
        audio = np.asarray(audio, np.float32)
        shifts = sorted({int(round(p * self.hop_samples / self.phases)) for p in range(self.phases)})
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

    def rank(self, phase_fingerprints, n_results=5, min_score=None, max_seconds=None):
        """Best distinct places over the phases (see `phase_fingerprints`), best first.

        `max_seconds` uses only the segments that lie inside the query's first
        `max_seconds` (the fingerprints of a prefix of the query).
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
        if self.interpolate > 1 and self.phases > 1 and len(used) == 1:
            (shift, fingerprints), = used
            self._interpolated(shift, fingerprints, all_starts, all_scores, all_shifts, all_reported)
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
        # bars that happens to lie on the grid. These windows rank by their interpolated
        # score but report (and are thresholded on) the better score of the two DB
        # windows around them, so "not in the catalogue" keeps the calibrated meaning of
        # a real window's score. Longer queries have real audio at every phase; there the
        # interpolated windows changed no clean answer and cost noisy ones (MODEL_CARD.md).
        n_best = self.refine if self.refine is not None else DEFAULT_REFINE
        (starts,), (scores,) = all_starts, all_scores
        best = starts[np.argsort(-scores, kind="stable")[:n_best]]
        windows = self.db.interpolated_starts(best, len(fingerprints))
        if not len(windows):
            return
        around = np.maximum(
            self.db.sequence_scores(fingerprints, windows), self.db.sequence_scores(fingerprints, windows + 1)
        )
        for step in range(1, self.interpolate):
            fraction = step / self.interpolate
            all_starts.append(windows)
            all_scores.append(self.db.interpolated_scores(fingerprints, windows, fraction))
            all_shifts.append(np.full(len(windows), shift - fraction * self.db.hop_seconds))
            all_reported.append(around)

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
        """Matches for fingerprints of consecutive segments on the hop grid (one phase)."""
        seconds = ((len(fingerprints) - 1) * self.hop_samples + self.embedder.segment_samples) / self.sample_rate
        return self.rank([(0.0, fingerprints)], n_results=n_results, min_score=self.match_threshold(seconds))

    def identify_audio(self, audio, n_results=5, name="query"):
        """Best matches (list of `nnfp.store.db.Match`, best first) for a waveform at the index rate.

        An empty list means "not in the catalogue": no place scored `match_threshold`.

        Raises:
            QueryError: too short, silent, near-silent or constant audio.
        """
        self.last_query_seconds = len(audio) / self.sample_rate
        phases = self.phase_fingerprints(audio, name=name)
        threshold = self.match_threshold(self.last_query_seconds)
        return self.rank(phases, n_results=n_results, min_score=threshold)

    def identify_file(self, path, n_results=5):
        """Reads any audio file (resampled, mixed to mono) and returns its best matches.

        Raises:
            nnfp.audio.io.AudioError: unreadable file. QueryError: too short, silent or constant.
        """
        from nnfp.audio.io import load_audio

        audio = load_audio(path, self.sample_rate)
        return self.identify_audio(audio, n_results=n_results, name=str(path))
