"""Match / no-match thresholds calibrated per query length ("not in the catalogue" is an answer).

A query's best sequence score is compared with a threshold that depends on the query
length: short queries of music that is not in the catalogue reach much higher scores
than long ones. `calibrate` picks, for every calibrated length, the lowest threshold
whose false-match rate on out-of-catalogue queries is at most a target (1 % by
default) **with 95 % confidence**: the one-sided Clopper-Pearson upper bound of the
rate, given the false matches counted among the calibration queries, must not exceed
the target. With 300 queries this admits no false match at all; with 1,000 queries up
to 4. A point estimate (`confidence=None`: at most `target * n` false matches) fits the
calibration set and transfers poorly: 1 % on the calibration music was 1.7 % on other
music (MODEL_CARD.md). It also reports the fraction of right answers of in-catalogue
queries that the threshold keeps.

Thresholds are stored as JSON:
`{"lengths_s": [...], "min_score": [...], "target_false_match": 0.01, ..., "sha256": ...}`,
next to a model (`default.keras` -> `default.calibration.json`; copied into every index
built with it) or inside an index (`INDEX/calibration.json`, which takes precedence).

The decision's inputs check themselves. The file is left out of the index's integrity
record (`nnfp index calibrate` replaces it), so it carries its own digest: `sha256` of its
other content, written by `save` and compared by `load` (a file without one, written by an
older nnfp, is accepted with a note). Thresholds are cosine scores, finite and within
[-1, 1]. An index records whether it was built with a calibration (metadata `calibrated`;
an index from before that record: whether the model it was built from has one), and
`index_calibration` refuses an index whose calibration is missing or altered, unless a
fixed threshold overrides it. `save_replacing` keeps the file it replaces as `<name>.bak`.

>>> calibration = Calibration.load("my_index/calibration.json")
>>> calibration.threshold(3.0)  # the 3 s threshold; shorter lengths use the shortest one
0.61
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from nnfp.defaults import DEFAULT_MIN_SCORE
from nnfp.outputs import atomic_write_bytes, atomic_write_json
from nnfp.store.integrity import meta_digest

__all__ = [
    "INDEX_CALIBRATION_FILE",
    "NO_SHARPNESS_FLOOR",
    "Calibration",
    "CalibrationError",
    "backup_path",
    "calibrate",
    "check_replaceable",
    "check_sample_size",
    "confidence_bound",
    "format_calibration_table",
    "index_calibration",
    "leave_one_group_out",
    "leave_one_kind_out",
    "model_calibration_path",
    "off_speed_margins",
    "save_replacing",
    "sharpness_yields",
    "source_group",
    "smallest_sample_size",
]

INDEX_CALIBRATION_FILE = "calibration.json"
DIGEST_KEY = "sha256"  # the file's digest of the rest of its content
NO_SHARPNESS_FLOOR = -2.0  # a length without a sharpness floor (cosine differences are >= -2)
OFF_SPEED_MIN_ANSWERS = 30  # `off_speed_margins`: fewer answers on a side measure no level
# "lead" (`nnfp.catalogue.identify.lead`): the weight of the score's lead over the query's impostor
# level in a calibration fitted now, and in one that does not record its weight (older nnfp).
LEAD_WEIGHT = 1.0
LEGACY_LEAD_WEIGHT = 0.25
# "lead" also adds VOTE_WEIGHT x the answer's segment votes (`nnfp.catalogue.identify.segment_votes`:
# the share of the query's segments whose own nearest row is the answer's); a calibration records
# it (`vote_weight`), one without it counts no votes.
VOTE_WEIGHT = 0.3
SCORE_SLACK = 1e-3  # float32 inner products of unit vectors (and `calibrate`'s rounding up) pass +-1 by a hair
WHAT_TO_DO = (
    "restore it (`nnfp index calibrate` keeps the file it replaces beside it as <name>.bak), recalibrate "
    "(`nnfp index calibrate INDEX --unknown DIR`), or pass `--min-score X`, which overrides it"
)


class CalibrationError(ValueError):
    """A calibration that is missing where one was recorded, altered since it was written, or
    invalid. The message names the file (`problem`) and what to do."""

    def __init__(self, problem):
        super().__init__(f"{problem}; {WHAT_TO_DO}")
        self.problem = problem


def model_calibration_path(model_path):
    """Where a model's calibration lives: `x.keras` -> `x.calibration.json`, a folder -> `folder/calibration.json`."""
    model_path = Path(model_path)
    if model_path.is_dir():
        return model_path / INDEX_CALIBRATION_FILE
    return model_path.with_name(model_path.stem + ".calibration.json")


@dataclasses.dataclass
class Calibration:
    """Per-length score thresholds for deciding match vs "not in the catalogue".

    Args:
        lengths_s: calibrated query lengths in seconds, increasing.
        min_score: the threshold of each length: a match needs a confidence >= it, its
            score, or with `info["decision"]` "margin" its lead over the best other track,
            measured against at least `info["rival_floor"]` of that length ("lead": plus a
            share of its lead over the query's impostor level; `nnfp.catalogue.identify.lead`).
            With a speed search, an answer found at another speed than the catalogue's has
            its confidence lowered by the length's `info["off_speed_margin"]` first
            (`off_speed_margins`). With `info["sharpness_floor"]`, an answer must also be at
            least that much sharper than the same query 1-5 s away in its track
            (`nnfp.catalogue.identify.alignment_sharpness`; fitted on in-catalogue queries),
            unless its confidence reaches the length's `info["sharpness_yield"]` (above every
            flat out-of-catalogue answer fitted on: `nnfp.catalogue.calibration.sharpness_yields`;
            a calibration without it holds every answer to the floor).
        target_false_match: the false-match rate the thresholds were chosen for.
        info: anything else stored with them (kept fractions, query counts, data, phases).

    A query of a calibrated length uses that length's threshold; one between two calibrated
    lengths the higher of their two (chance does not always reach less with length: a lead
    threshold may rise from 3 to 5 s), one below them all the shortest length's, one above
    them all the longest's (`at_length`).
    """

    lengths_s: list
    min_score: list
    target_false_match: float = 0.01
    info: dict = dataclasses.field(default_factory=dict)
    # Remarks of `load` (a file without a digest), for the caller to show.
    notes: list = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.lengths_s = [float(x) for x in self.lengths_s]
        self.min_score = [float(x) for x in self.min_score]
        if not self.lengths_s or len(self.lengths_s) != len(self.min_score):
            raise ValueError(
                "`lengths_s` and `min_score` must be non-empty lists of equal length. "
                f"Received: lengths_s={self.lengths_s}, min_score={self.min_score}"
            )
        if any(b <= a for a, b in zip(self.lengths_s, self.lengths_s[1:], strict=False)):
            raise ValueError(f"`lengths_s` must increase. Received: lengths_s={self.lengths_s}")
        bound, what = confidence_bound(self.info)
        if not all(np.isfinite(self.min_score)) or any(abs(x) > bound + SCORE_SLACK for x in self.min_score):
            raise ValueError(
                f"`min_score` must be finite and within [-{bound:g}, {bound:g}] ({what}). "
                f"Received: min_score={self.min_score}"
            )

    def threshold(self, query_seconds):
        """The minimum score for a match of a `query_seconds` long query."""
        return self.at_length(self.min_score, query_seconds)

    def at_length(self, values, query_seconds):
        """The entry of per-length `values` (one per `lengths_s`) that a `query_seconds` long
        query uses: a calibrated length's own; between two calibrated lengths, the higher of
        theirs (thresholds, rival floors and off-speed margins are all stricter higher); the
        shortest length's below them all, the longest's above."""
        position = int(np.searchsorted(self.lengths_s, float(query_seconds) + 1e-6, side="right")) - 1
        if position < 0:
            return values[0]
        exact = abs(self.lengths_s[position] - float(query_seconds)) <= 1e-6
        if exact or position + 1 >= len(values):
            return values[position]
        return max(values[position], values[position + 1])

    def to_json(self):
        return {
            "lengths_s": self.lengths_s,
            "min_score": self.min_score,
            "target_false_match": self.target_false_match,
            **self.info,
        }

    def save(self, path):
        """Writes the JSON file (atomically) with the digest of its content."""
        path = Path(path)
        payload = self.to_json()
        atomic_write_json(path, {**payload, DIGEST_KEY: _digest(payload)})
        return path

    @classmethod
    def load(cls, path):
        """Reads a calibration file and checks it.

        Raises:
            CalibrationError: unreadable or not a calibration; its content does not match
                its digest (altered since it was written); invalid thresholds.
        """
        path = Path(path)
        try:
            payload = json.loads(path.read_text())
            if not isinstance(payload, dict) or "lengths_s" not in payload or "min_score" not in payload:
                raise ValueError("no `lengths_s` and `min_score`")
        except (OSError, ValueError) as error:
            raise CalibrationError(
                f"{path}: not a calibration file ({type(error).__name__}: {error}); expected JSON "
                '{"lengths_s": [...], "min_score": [...]}'
            ) from error
        digest = payload.pop(DIGEST_KEY, None)
        if digest is not None and digest != _digest(payload):
            raise CalibrationError(
                f"{path}: altered since it was written (its content does not match its {DIGEST_KEY})"
            )
        try:
            calibration = cls(
                payload.pop("lengths_s"), payload.pop("min_score"), payload.pop("target_false_match", 0.01), info=payload
            )
        except (ValueError, TypeError) as error:
            raise CalibrationError(f"{path}: invalid calibration ({error})") from error
        if digest is None:
            calibration.notes.append(
                f"{path}: no digest (written by an older nnfp): accepted unchecked; recalibrate "
                "(`nnfp index calibrate`) to have it checked"
            )
        return calibration


def confidence_bound(info):
    """The largest magnitude a confidence (and so a threshold) can have under the decision of a
    calibration's `info`, and what it is: a cosine score is within [-1, 1], its margin over
    another track's within [-2, 2], and "lead" adds `lead_weight` x a lead of at most 2 and
    `vote_weight` x votes of at most 1."""
    decision = info.get("decision", "score")
    if decision == "margin":
        return 2.0, "margins of cosine scores"
    if decision == "lead":
        bound = 2.0 + 2.0 * float(info.get("lead_weight", LEGACY_LEAD_WEIGHT)) + float(info.get("vote_weight", 0.0))
        return bound, "leads of cosine scores"
    return 1.0, "cosine scores"


def _digest(payload):
    """SHA-256 of a calibration's JSON content (as read back, keys sorted), its digest left out."""
    return meta_digest({key: value for key, value in payload.items() if key != DIGEST_KEY})


def _expects_calibration(metadata):
    """Whether an index was built with a calibration: its metadata's `calibrated`; an index from
    before that record copied its model's calibration when the model had one."""
    recorded = metadata.get("calibrated")
    if recorded is not None:
        return bool(recorded)
    source = metadata.get("model_source")
    return bool(source) and model_calibration_path(source).is_file()


def index_calibration(index_dir, metadata, model=None, required=True):
    """The calibration a saved index decides with, checked: `(Calibration or None, notes)`.

    `INDEX/calibration.json` when present. Else, when the index was built with one (see
    `_expects_calibration`), it is missing: an error. Else the calibration of `model` (a
    model path overriding the index's) when it has one, else None (the caller's default
    threshold applies; a note says so).

    Args:
        index_dir: the index folder.
        metadata: the index's metadata (`FingerprintDB.metadata`).
        model: a model path overriding the index's, or None.
        required: False when a fixed threshold overrides the calibration: a missing,
            altered or invalid one is then a note instead of an error.

    Raises:
        CalibrationError: (`required`) missing, altered or invalid.
    """
    path = Path(index_dir) / INDEX_CALIBRATION_FILE
    try:
        if path.is_file():
            calibration = Calibration.load(path)
            return calibration, list(calibration.notes)
        if _expects_calibration(metadata):
            raise CalibrationError(f"{path}: missing (the index was built with a calibration)")
        own = model_calibration_path(model) if model is not None else None
        if own is not None and own.is_file():
            calibration = Calibration.load(own)
            return calibration, [f"{path}: none; the calibration of the model {own} applies", *calibration.notes]
    except CalibrationError as error:
        if required:
            raise
        return None, [error.problem]
    if not required:
        return None, [f"{index_dir}: no calibration (built without one)"]
    return None, [
        f"{index_dir}: no calibration (built without one): the default threshold {DEFAULT_MIN_SCORE:g} applies, "
        "which no false-match rate backs; calibrate it with `nnfp index calibrate`"
    ]


def backup_path(path):
    """Where `save_replacing` keeps the file it replaces: `<name>.bak` beside it (the latest one)."""
    path = Path(path)
    return path.with_name(path.name + ".bak")


def _is_calibration_file(path):
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and "lengths_s" in payload and "min_score" in payload


def check_replaceable(path):
    """Refuses (`ValueError`) to write a calibration over anything but a calibration file."""
    path = Path(path)
    if path.is_dir() or (path.exists() and not _is_calibration_file(path)):
        raise ValueError(
            f"{path}: exists and is not an nnfp calibration file; not overwriting it: choose another `--out` "
            "or move it away"
        )


def save_replacing(calibration, path, any_file=False):
    """Saves `calibration` at `path`, first copying the file there (if any) to `backup_path(path)`.

    Only a calibration file is replaced (`check_replaceable`), unless `any_file` (the
    calibration inside an index, however damaged, is the index's own). Returns the backup's
    path, or None when there was nothing to replace.
    """
    path = Path(path)
    if not any_file:
        check_replaceable(path)
    backup = None
    if path.is_file():
        backup = backup_path(path)
        atomic_write_bytes(backup, path.read_bytes())
    calibration.save(path)
    return backup


def binomial_upper_bound(k, n, confidence=0.95):
    """One-sided Clopper-Pearson upper confidence bound of a rate seen `k` times in `n` trials.

    The `p` with P(Binomial(n, p) <= k) = 1 - confidence: the `confidence` quantile of
    Beta(k + 1, n - k); 1.0 when k >= n.

    >>> round(binomial_upper_bound(0, 300), 4)  # no false match in 300 queries
    0.0099
    """
    from scipy.stats import beta

    k, n = int(k), int(n)
    if n <= 0 or k < 0:
        raise ValueError(f"Expected 0 <= k and n > 0. Received: k={k}, n={n}")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    if k >= n:
        return 1.0
    return float(beta.ppf(confidence, k + 1, n - k))


def smallest_sample_size(target_false_match, confidence=0.95):
    """Fewest out-of-catalogue queries that can show a false-match rate <= the target at `confidence`.

    With none of n queries matching, the Clopper-Pearson upper bound is
    1 - (1 - confidence) ** (1 / n); the smallest n where it is <= the target.

    >>> smallest_sample_size(0.01, 0.95)  # 0 of 299: <= 0.997 %
    299
    """
    if not 0 < target_false_match < 1:
        raise ValueError(
            f"`target_false_match` must be in (0, 1) to be shown at a confidence. Received: {target_false_match}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1). Received: confidence={confidence}")
    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-target_false_match)))
    while binomial_upper_bound(0, n, confidence) > target_false_match:  # the closed form's rounding
        n += 1
    while n > 1 and binomial_upper_bound(0, n - 1, confidence) <= target_false_match:
        n -= 1
    return n


def _percent(rate):
    return f"{100 * rate:.3g} %"


def check_sample_size(n_unknown, target_false_match, confidence=0.95):
    """Refuses (`ValueError`) `n_unknown` out-of-catalogue queries (per kind) too few to show
    `target_false_match` at `confidence` even if none of them matched. `confidence=None`
    (point estimate) claims no confidence and is not checked."""
    if confidence is None:
        return
    needed = smallest_sample_size(target_false_match, confidence)
    n_unknown = int(n_unknown)
    if n_unknown >= needed:
        return
    shown = binomial_upper_bound(0, n_unknown, confidence)
    raise ValueError(
        f"{n_unknown} out-of-catalogue queries per folder cannot show a false-match rate <= "
        f"{_percent(target_false_match)} at {_percent(confidence)} confidence: with none of them matching "
        f"they bound it at {_percent(shown)} only. {needed} queries are the fewest for the target "
        f"(none matching bounds it at {_percent(binomial_upper_bound(0, needed, confidence))}): pass "
        f"`--n-unknown {needed}` or more (default: `--n-queries`), a `--target` of at least "
        f"{math.ceil(shown * 1000) / 1000:g}, or `--confidence 0` for a point estimate that claims no confidence"
    )


def allowed_false_matches(n, target_false_match, confidence=0.95):
    """Most false matches among `n` calibration queries that still meet the target.

    With `confidence`, the largest k whose Clopper-Pearson upper bound is <= the target
    (-1 when even k = 0 is not enough: then no out-of-catalogue score may pass);
    without (`None`), floor(target * n).
    """
    if confidence is None:
        return int(np.floor(target_false_match * n + 1e-9))
    k = -1
    while k + 1 < n and binomial_upper_bound(k + 1, n, confidence) <= target_false_match:
        k += 1
    return k


def _kind_thresholds(unknown, allowed):
    """Per length, just above the (allowed + 1)-th best out-of-catalogue score of one kind."""
    thresholds = []
    for j in range(unknown.shape[1]):
        found = unknown[:, j][np.isfinite(unknown[:, j])]
        ranked = np.sort(found)[::-1]
        if allowed < 0:  # too few calibration queries to show the target: above every one of them
            threshold = float(np.nextafter(ranked[0], np.inf)) if len(ranked) else -1.0
        elif len(ranked) <= allowed:  # (almost) no out-of-catalogue query found a candidate at all
            threshold = -1.0  # the lowest cosine score: every candidate is a match
        else:
            threshold = float(np.nextafter(ranked[allowed], np.inf))
        thresholds.append(threshold)
    return thresholds


def calibrate(lengths_s, known_scores, known_right, unknown_scores, target_false_match=0.01, confidence=0.95,
              known_off_speed=None, unknown_off_speed=None, decision=None, lead_weight=None, unknown_groups=None,
              sharpness_floors=None, known_sharpness=None, unknown_sharpness=None):
    """Lowest thresholds meeting `target_false_match` false matches, per query length.

    Args:
        lengths_s: (n_lengths,) query lengths.
        known_scores: (n_known, n_lengths) top-1 score of in-catalogue queries (NaN: no candidate).
        known_right: (n_known, n_lengths) bool, the top-1 answer is right (track + offset).
        unknown_scores: (n_unknown, n_lengths) top-1 score of out-of-catalogue queries, or
            a dict `{kind: scores}` of several kinds of them (music that is not indexed,
            environmental noise, speech). Then every kind must meet the target on its own:
            a length's threshold is the highest of the kinds' thresholds, so that 10 s of
            wind is held to the same false-match rate as 10 s of unknown music.
        target_false_match: allowed fraction of out-of-catalogue queries that match.
        confidence: the target must hold at this confidence (Clopper-Pearson upper
            bound over the calibration queries of each kind); `None`: point estimate.
        known_off_speed, unknown_off_speed: with a speed search, whether each top answer
            was found at another speed than the catalogue's (shaped as `known_scores` and
            `unknown_scores`); then an off-speed margin is fitted (`off_speed_margins`), the
            confidences of those answers are lowered by it before the thresholds are fitted,
            and leaving a kind out refits the margin too.
        unknown_groups: with kinds, `{kind: (n,) source group of each query}` (the package
            its file came from, `source_group`; None: unknown): each group of a kind is left
            out in turn as well (`leave_one_group_out`, in `info["leave_one_package_out"]`).
        sharpness_floors: (n_lengths,) the sharpness floor of each length
            (`nnfp.catalogue.identify.alignment_sharpness`; `NO_SHARPNESS_FLOOR`: none), fitted
            on the in-catalogue queries alone; with it `known_sharpness` and `unknown_sharpness`
            (the top answers' sharpness, shaped as the scores; NaN clears any floor): the
            thresholds are fitted without the floor, the sharpness yield is fitted above every
            flat out-of-catalogue answer (`sharpness_yields`, over the confidences as decided),
            and `right_kept` counts a right answer that is flat only where it reaches the yield.
        decision, lead_weight: what the confidences are (`nnfp.catalogue.identify.DECISIONS`)
            and, for "lead", the weight they were computed with; recorded in `info` (the
            thresholds' range depends on them: `confidence_bound`).

    Returns:
        A `Calibration`; `info` holds per length the right answers without a threshold
        (`right`), those kept by it (`right_kept`), the false-match rate reached
        (`false_match`, over all out-of-catalogue queries), the query counts, and with a
        `confidence` the upper bound of the false-match rate that the counts show
        (`false_match_bound`, the worst kind's; above the target when there were too few
        queries); with kinds, also `false_match_by_kind` and `n_unknown_by_kind`; with
        off-speed answers, `off_speed_margin`; with sharpness floors, `sharpness_floor`,
        `sharpness_yield` and (several kinds) `sharpness_yield_leave_one_kind_out`: each kind's
        flat answers that a yield fitted without it lets through.
    """
    known = np.asarray(known_scores, np.float64)
    right = np.asarray(known_right, bool)
    kinds = unknown_scores if isinstance(unknown_scores, dict) else {None: unknown_scores}
    kinds = {kind: np.asarray(scores, np.float64).reshape(len(scores), -1) for kind, scores in kinds.items()}
    if not kinds:
        raise ValueError("`unknown_scores` must hold at least one kind of out-of-catalogue queries.")
    if not 0 <= target_false_match < 1:
        raise ValueError(f"`target_false_match` must be in [0, 1). Received: {target_false_match}")
    if confidence is not None and not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1) or None. Received: confidence={confidence}")
    unlowered, off, margins = kinds, None, None
    if unknown_off_speed is not None:  # chance reaches higher over a speed grid than at the catalogue's speed
        off = unknown_off_speed if isinstance(unknown_off_speed, dict) else {None: unknown_off_speed}
        margins = off_speed_margins(kinds, off, target_false_match, confidence)
        kinds = _lowered(kinds, off, margins)
        if known_off_speed is not None:
            known = known - np.asarray(margins) * np.asarray(known_off_speed, bool).reshape(known.shape)
    allowed = {kind: allowed_false_matches(len(scores), target_false_match, confidence) for kind, scores in kinds.items()}
    per_kind = {kind: _kind_thresholds(scores, allowed[kind]) for kind, scores in kinds.items()}
    # Rounded up: stored scores stay on the safe side.
    thresholds = [round(max(values) + 5e-5, 4) for values in zip(*per_kind.values(), strict=True)]
    unknown = np.concatenate(list(kinds.values()))

    def false_counts(scores):
        return [int(np.sum(np.nan_to_num(scores[:, j], nan=-np.inf) >= t)) for j, t in enumerate(thresholds)]

    def false_rate(scores):
        return [count / len(scores) for count in false_counts(scores)]

    decided = np.nan_to_num(known, nan=-np.inf) >= np.asarray(thresholds)
    sharpness = None
    if sharpness_floors is not None:  # a flat answer is decided only from the yield on
        floors = np.asarray(sharpness_floors, np.float64)
        flat_kinds = unknown_sharpness if isinstance(unknown_sharpness, dict) else {None: unknown_sharpness}
        flat_kinds = {kind: np.asarray(flat_kinds[kind], np.float64).reshape(scores.shape)
                      for kind, scores in kinds.items()}
        yields = sharpness_yields(thresholds, floors, kinds, flat_kinds)
        sharpness = {"sharpness_floor": [float(f) for f in floors], "sharpness_yield": yields}
        if len(kinds) > 1:  # each kind's flat answers let through by a yield fitted without it
            sharpness["sharpness_yield_leave_one_kind_out"] = {
                kind: _flat_through(kind, kinds, flat_kinds, thresholds, floors) for kind in kinds
            }
        flat = np.asarray(known_sharpness, np.float64).reshape(known.shape) < floors
        decided &= ~flat | (np.nan_to_num(known, nan=-np.inf) >= np.asarray(yields))
    info = {
        "right": [float(np.mean(right[:, j])) for j in range(len(thresholds))],
        "right_kept": [float(x) for x in (right & decided).mean(axis=0)],
        "false_match": false_rate(unknown),
        "n_known": int(len(known)),
        "n_unknown": int(len(unknown)),
        "confidence": confidence,
        "allowed_false_matches": {kind: int(max(k, 0)) for kind, k in allowed.items()},
    }
    if None in kinds:  # one kind: the plain count, as files written before kinds hold it
        info["allowed_false_matches"] = info["allowed_false_matches"][None]
    if confidence is not None:  # what the sample shows: the worst kind's upper bound, per length
        bounds = [
            [binomial_upper_bound(k, len(scores), confidence) for k in false_counts(scores)] for scores in kinds.values()
        ]
        info["false_match_bound"] = [max(values) for values in zip(*bounds, strict=True)]
    if None not in kinds:
        info["false_match_by_kind"] = {kind: false_rate(scores) for kind, scores in kinds.items()}
        info["n_unknown_by_kind"] = {kind: int(len(scores)) for kind, scores in kinds.items()}
        if len(kinds) > 1:  # each kind at thresholds (and margin) fitted without it
            info["leave_one_kind_out"] = {
                kind: [round(rate, 4) for rate in rates["false_match"]]
                for kind, rates in leave_one_kind_out(unlowered, target_false_match, confidence, off).items()
            }
        if unknown_groups:
            info["leave_one_package_out"] = leave_one_group_out(
                unlowered, unknown_groups, target_false_match, confidence, off
            )
    if margins is not None:
        info["off_speed_margin"] = margins
    if sharpness is not None:
        info.update(sharpness)
    if decision is not None:
        info["decision"] = decision
        if decision == "lead":
            info["lead_weight"] = float(LEAD_WEIGHT if lead_weight is None else lead_weight)
    return Calibration(list(lengths_s), thresholds, float(target_false_match), info=info)


def _lowered(kinds, off_speed, margins):
    """Each kind's confidences with those of answers found at another speed lowered by the margins."""
    margins = np.asarray(margins)
    return {kind: scores - margins * np.asarray(off_speed[kind], bool).reshape(scores.shape) for kind, scores in kinds.items()}


def sharpness_yields(thresholds, floors, confidences, sharpness):
    """The confidence from which an answer no longer has to clear the sharpness floor, per length.

    The floor turns away flat answers: a sustained sound that resembles a steady stretch of a
    track scores nearly as well a few seconds away. So does a looped or steady passage of the
    right track, often with a confidence no chance resemblance reaches. The yield of a length is
    just above the highest confidence of any out-of-catalogue answer (every kind pooled) whose
    sharpness is below that length's floor, and never below its threshold: no flat answer of the
    audio fitted on would be let through by it. A length with no floor, or no flat answer, yields
    at its threshold.

    Args:
        thresholds: (n_lengths,) the fitted thresholds.
        floors: (n_lengths,) the sharpness floors (`NO_SHARPNESS_FLOOR`: none).
        confidences: `{kind: (n, n_lengths)}` each out-of-catalogue query's top confidence as the
            decision sees it (an off-speed answer's already lowered by the off-speed margin);
            NaN: no answer.
        sharpness: `{kind: (n, n_lengths)}` the sharpness of those answers (NaN: none measured,
            which clears any floor).

    Returns:
        A list of floats, one per length, rounded up to 4 decimals as the thresholds are.
    """
    out = []
    for j, (threshold, floor) in enumerate(zip(thresholds, floors, strict=True)):
        highest = -np.inf
        if floor > NO_SHARPNESS_FLOOR:
            for kind, values in confidences.items():
                values = np.asarray(values, np.float64)[:, j]
                flat = np.asarray(sharpness[kind], np.float64)[:, j] < floor  # NaN: not flat
                flat &= np.isfinite(values)
                if flat.any():
                    highest = max(highest, float(values[flat].max()))
        out.append(round(max(float(threshold), highest + 5e-5 if np.isfinite(highest) else float(threshold)), 4))
    return out


def _flat_through(held, confidences, sharpness, thresholds, floors):
    """The share of kind `held`'s flat answers (per length) that reach the thresholds and the
    yield fitted without that kind: what a yield lets through of audio it was not fitted on."""
    others = [kind for kind in confidences if kind != held]
    sure = sharpness_yields(thresholds, floors, {k: confidences[k] for k in others}, {k: sharpness[k] for k in others})
    values = np.nan_to_num(confidences[held], nan=-np.inf)
    through = (values >= np.asarray(thresholds)) & (sharpness[held] < np.asarray(floors))
    through &= values >= np.asarray(sure)
    return [round(float(rate), 4) for rate in through.mean(axis=0)]


def off_speed_margins(unknown_scores, unknown_off_speed, target_false_match=0.01, confidence=0.95,
                      min_answers=OFF_SPEED_MIN_ANSWERS):
    """Per length, how much more confidence an answer found at another playback speed than the
    catalogue's needs than one found at the catalogue's speed.

    A speed search gives out-of-catalogue audio one chance per grid speed: its best chance
    answer is found at another speed far more often, and scores higher there, than at the
    catalogue's. One threshold for both then holds answers at the catalogue's speed (most
    in-catalogue queries) to the level that chance reaches over the whole grid. The margin
    is the difference of the two levels that chance reaches: the threshold of the answers
    found at other speeds (as `calibrate` fits it, every kind on its own) minus that of those
    found at the catalogue's; an answer at another speed then has its confidence lowered by
    it (`Identifier.off_speed_margin`), and `calibrate` fits one threshold on the lowered
    confidences, so every kind still meets the target with the two kinds of answers together.

    Args:
        unknown_scores: `{kind: (n, n_lengths) confidences}` of the top answers of
            out-of-catalogue queries (NaN: no candidate).
        unknown_off_speed: `{kind: (n, n_lengths) bool}`, the top answer was found at another
            speed than the catalogue's.
        min_answers: the fewest answers of each side (all kinds together, per length) to
            measure a level on; with fewer, that length's margin is 0 (one threshold).

    Returns:
        A list of margins (>= 0, rounded up to 4 decimals), one per length.
    """
    kinds = {kind: np.asarray(scores, np.float64).reshape(len(scores), -1) for kind, scores in unknown_scores.items()}
    if set(kinds) != set(unknown_off_speed):
        raise ValueError(
            f"`unknown_off_speed` must name the kinds of `unknown_scores`. Received: {sorted(unknown_off_speed)} "
            f"for {sorted(kinds)}"
        )
    off = {kind: np.asarray(unknown_off_speed[kind], bool).reshape(kinds[kind].shape) for kind in kinds}
    allowed = {kind: allowed_false_matches(len(scores), target_false_match, confidence) for kind, scores in kinds.items()}

    def level(select):  # per length: the highest of the kinds' thresholds over the selected answers
        per_kind = [
            _kind_thresholds(np.where(select(off[kind]), scores, np.nan), allowed[kind])
            for kind, scores in kinds.items()
        ]
        return [max(values) for values in zip(*per_kind, strict=True)]

    def counts(select):
        return sum(np.sum(select(off[k]) & np.isfinite(s), axis=0) for k, s in kinds.items())

    at_speed, elsewhere = level(np.logical_not), level(lambda o: o)
    n_at, n_else = counts(np.logical_not), counts(lambda o: o)
    return [
        round(max(0.0, b - a) + 5e-5, 4) if min(na, ne) >= min_answers and b > a else 0.0
        for a, b, na, ne in zip(at_speed, elsewhere, n_at, n_else, strict=True)
    ]


def leave_one_kind_out(unknown_scores, target_false_match=0.01, confidence=0.95, off_speed=None):
    """How the thresholds carry to a kind of audio they were not fitted on.

    For each kind of `unknown_scores` (`{kind: (n, n_lengths) scores}`, at least two kinds),
    thresholds are fitted on the other kinds as `calibrate` fits them, and the kind's own
    false-match rate at them is measured. With `off_speed` (`{kind: (n, n_lengths) bool}`,
    as `calibrate`'s `unknown_off_speed`), the off-speed margin is refitted on the other
    kinds too, and every kind's confidences are lowered by it.

    Returns:
        `{kind: {"false_match": [rate per length], "bound": [one-sided upper bound at
        `confidence` (0.95 when None)]}}`.
    """
    kinds = {kind: np.asarray(scores, np.float64).reshape(len(scores), -1) for kind, scores in unknown_scores.items()}
    if len(kinds) < 2:
        raise ValueError(f"Leaving a kind out needs at least two kinds. Received: {list(kinds)}")
    out = {}
    for held, scores in kinds.items():
        others = [k for k in kinds if k != held]
        counts = _held_out_counts(
            {k: kinds[k] for k in others}, scores, target_false_match, confidence,
            None if off_speed is None else {k: off_speed[k] for k in others},
            None if off_speed is None else off_speed[held],
        )
        out[held] = {
            "false_match": [count / len(scores) for count in counts],
            "bound": [binomial_upper_bound(count, len(scores), confidence or 0.95) for count in counts],
        }
    return out


def _held_out_counts(fitted, held, target_false_match, confidence, fitted_off=None, held_off=None):
    """How many of the `held` (n, n_lengths) confidences reach, per length, the thresholds that
    `calibrate` fits on the kinds of `fitted` (`{kind: scores}`); with `fitted_off` and
    `held_off` (whether each answer was found at another speed), the off-speed margin is
    fitted on `fitted` too and every answer found elsewhere is lowered by it first."""
    if fitted_off is not None:
        margins = off_speed_margins(fitted, fitted_off, target_false_match, confidence)
        fitted = _lowered(fitted, fitted_off, margins)
        held = held - np.asarray(margins) * np.asarray(held_off, bool).reshape(held.shape)
    per_kind = [
        _kind_thresholds(scores, allowed_false_matches(len(scores), target_false_match, confidence))
        for scores in fitted.values()
    ]
    thresholds = [max(values) for values in zip(*per_kind, strict=True)]
    return [int(np.sum(np.nan_to_num(held[:, j], nan=-np.inf) >= t)) for j, t in enumerate(thresholds)]


def source_group(path, root):
    """The package (group of sources) an out-of-catalogue file belongs to: the first folder
    under `root` it lies in, else the part of its name before `__` (the layout of the data
    scripts: `PACKAGE__title__digest.wav`); None when neither says."""
    relative = Path(path).relative_to(root) if Path(path).is_relative_to(root) else Path(Path(path).name)
    if len(relative.parts) > 1:
        return relative.parts[0]
    stem = relative.stem
    return stem.split("__")[0] if "__" in stem else None


def leave_one_group_out(unknown_scores, groups, target_false_match=0.01, confidence=0.95, off_speed=None,
                        min_queries=10):
    """How the thresholds carry to a package of a kind that they were not fitted on.

    For each kind with at least two groups (`groups`: `{kind: (n,) group of each query, None
    for unknown}`) and each of its groups of at least `min_queries` queries, the thresholds
    (and with `off_speed` the off-speed margin) are fitted as `calibrate` fits them on every
    other query, that kind's other groups included, and the group's own false-match rate at
    them is measured: a music package of another genre, a noise package of other sources.

    Returns:
        `{kind: {group: {"n": queries, "false_match": [rate per length], "bound": [one-sided
        upper bound]}}}`, kinds and groups that cannot be left out omitted.
    """
    kinds = {kind: np.asarray(scores, np.float64).reshape(len(scores), -1) for kind, scores in unknown_scores.items()}
    off = None if off_speed is None else {k: np.asarray(off_speed[k], bool).reshape(kinds[k].shape) for k in kinds}
    out = {}
    for kind, scores in kinds.items():
        labels = np.asarray([None if g is None else str(g) for g in groups.get(kind, [None] * len(scores))], object)
        if len(labels) != len(scores):
            raise ValueError(f"`groups[{kind!r}]` must have one entry per query: {len(labels)} for {len(scores)}")
        named = sorted({g for g in labels if g is not None})
        if len(named) < 2:
            continue
        for group in named:
            held = labels == group
            if held.sum() < min_queries:
                continue
            counts = _held_out_counts(
                {**kinds, kind: scores[~held]}, scores[held], target_false_match, confidence,
                None if off is None else {**off, kind: off[kind][~held]}, None if off is None else off[kind][held],
            )
            out.setdefault(kind, {})[group] = {
                "n": int(held.sum()),
                "false_match": [round(c / held.sum(), 4) for c in counts],
                "bound": [round(binomial_upper_bound(c, int(held.sum()), confidence or 0.95), 4) for c in counts],
            }
    return out


def format_calibration_table(calibration, title="Calibrated thresholds"):
    """Text table: per length the threshold, false-match rate, right answers and those kept."""
    info = calibration.info
    label = {"margin": "min margin", "lead": "min lead"}.get(info.get("decision"), "min score")
    lines = [title, f"{'length':>7} {label:>10} {'false match':>12} {'right':>7} {'right kept':>11}"]
    for j, seconds in enumerate(calibration.lengths_s):
        lines.append(
            f"{seconds:>6g}s {calibration.min_score[j]:>10.4f} {100 * info['false_match'][j]:>11.1f}% "
            f"{100 * info['right'][j]:>6.1f}% {100 * info['right_kept'][j]:>10.1f}%"
        )
    for kind, rates in info.get("false_match_by_kind", {}).items():
        held_out = info.get("leave_one_kind_out", {}).get(kind)
        lines.append(
            f"  false match on {kind}: " + " / ".join(f"{100 * r:.1f}" for r in rates) + " %"
            + (f" (fitted without it: {' / '.join(f'{100 * r:.1f}' for r in held_out)} %)" if held_out else "")
        )
    for kind, packages in info.get("leave_one_package_out", {}).items():
        worst = max(packages, key=lambda g: (max(packages[g]["false_match"]), -packages[g]["n"]))
        rates = packages[worst]["false_match"]
        lines.append(
            f"  {kind}, each of its {len(packages)} packages fitted without it: worst {worst} "
            + " / ".join(f"{100 * r:.1f}" for r in rates) + f" % ({packages[worst]['n']} queries)"
        )
    floors = info.get("sharpness_floor") or ()
    if info.get("sharpness_yield") and any(f > -1.0 for f in floors):
        left_out = info.get("sharpness_yield_leave_one_kind_out") or {}
        worst = max((max(rates) for rates in left_out.values()), default=None)
        lines.append(
            "  sharpness floor " + " / ".join(f"{f:.4f}" for f in floors) + ", not asked of an answer with a confidence >= "
            + " / ".join(f"{y:.4f}" for y in info["sharpness_yield"])
            + (f" (each kind left out lets <= {100 * worst:.1f} % of it through)" if worst is not None else "")
        )
    if any(info.get("off_speed_margin") or ()):
        lines.append(
            "  an answer found at another speed than the catalogue's needs "
            + " / ".join(f"{m:.4f}" for m in info["off_speed_margin"]) + " more (off-speed margin)"
        )
    confidence = info.get("confidence")
    target = calibration.target_false_match
    if not confidence:
        how = ", point estimate: no confidence claimed (the rate on other audio can be higher)"
    elif "false_match_bound" in info:
        shown = max(info["false_match_bound"])
        how = f"; shown: <= {_percent(shown)} at {_percent(confidence)} confidence (Clopper-Pearson upper bound{', every kind' if 'false_match_by_kind' in info else ''})"
        if shown > target:
            how += " -- NOT the target: too few out-of-catalogue queries"
    else:  # written before the bound was recorded
        how = f" at {_percent(confidence)} confidence"
    lines.append(
        f"({info.get('n_known', '?')} in-catalogue and {info.get('n_unknown', '?')} out-of-catalogue queries; "
        f"target <= {_percent(target)} false matches{how})"
    )
    return "\n".join(lines)
