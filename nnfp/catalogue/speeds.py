"""The playback speeds a query is searched at (`Identifier(speeds=...)`, `--speeds`).

A song played 3 % fast (as radio stations do) is 3 % shorter and every frequency is 3 %
higher: its fingerprints no longer match the catalogue's. The speed search undoes a grid of
candidate speeds (the query is resampled as if played back at each) and keeps the best
place; the grid is geometric around 1.0 with a step that the model tolerates between two
neighbours (finer for short queries, which tolerate less: `nnfp.defaults.SPEED_STEPS`).

>>> speed_grid((0.96, 1.04), 0.02)
(0.960885, 0.980248, 1.0, 1.020151, 1.040707)
"""

import math

from nnfp.defaults import DEFAULT_SPEEDS, SPEED_STEPS

__all__ = [
    "GRID_UNIT",
    "LEGACY_SPEED_STEPS",
    "fitted_speed_steps",
    "parse_speeds",
    "speed_grid",
    "speed_step",
    "speed_steps_from_json",
    "speed_steps_to_json",
    "speeds_description",
]

GRID_UNIT = 0.005  # every grid step is a whole number of these (0.5 %)
# The steps of calibrations fitted before they recorded theirs (`"speed_steps"`, 2026-12-08).
LEGACY_SPEED_STEPS = ((2.0, 0.01), (5.0, 0.015), (math.inf, 0.02))


def parse_speeds(text):
    """`--speeds` text -> a speed setting: `"off"` -> None, `"LO:HI"` -> (lo, hi) (step by
    query length), `"LO:HI:STEP"` -> (lo, hi, step), `"auto"` (the calibration's) kept;
    raises ValueError for anything else."""
    text = str(text).strip().lower()
    if text in ("off", "none", "1", "1.0"):
        return None
    if text == "auto":
        return "auto"
    if text == "default":
        return tuple(DEFAULT_SPEEDS)
    parts = text.split(":")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (2, 3):
        raise ValueError(f"expected LO:HI or LO:HI:STEP (e.g. 0.92:1.08 or 0.96:1.04:0.02) or off; got {text!r}")
    return check_speeds(values)


def check_speeds(speeds):
    """Validates a speed setting (None, (lo, hi) or (lo, hi, step)); returns it as a tuple or None."""
    if speeds is None:
        return None
    values = tuple(float(v) for v in speeds)
    if len(values) not in (2, 3) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"`speeds` must be None, (lo, hi) or (lo, hi, step). Received: speeds={speeds}")
    lo, hi = values[:2]
    if not 0.5 <= lo <= 1.0 <= hi <= 2.0:
        raise ValueError(f"`speeds` must satisfy 0.5 <= lo <= 1 <= hi <= 2. Received: speeds={speeds}")
    if len(values) == 3 and not 0.001 <= values[2] <= 0.2:
        raise ValueError(f"the speed step must be between 0.001 and 0.2. Received: speeds={speeds}")
    return values


def speed_step(speeds, query_seconds, steps=None):
    """The grid step for a query of `query_seconds`: the setting's own, else that of `steps`
    ((longest query seconds, step) pairs, shortest first; None: `SPEED_STEPS`)."""
    if speeds is not None and len(speeds) == 3:
        return float(speeds[2])
    return next(step for longest, step in (SPEED_STEPS if steps is None else steps) if query_seconds <= longest)


def speed_steps_to_json(steps):
    """(longest, step) pairs -> a JSON list (`[[2.0, 0.005], ..., [null, 0.02]]`: null, any length)."""
    return [[None if math.isinf(longest) else float(longest), float(step)] for longest, step in steps]


def speed_steps_from_json(value, name="speed_steps"):
    """The inverse of `speed_steps_to_json`, checked: lengths increasing, the last one unbounded
    (null), every step in [0.001, 0.2]. Raises ValueError naming `name` otherwise."""
    try:
        steps = tuple((math.inf if longest is None else float(longest), float(step)) for longest, step in value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be a list of [longest seconds or null, step] pairs. Received: {value!r}") from error
    longest = [a for a, _ in steps]
    if (not steps or not math.isinf(longest[-1]) or any(b <= a for a, b in zip(longest[:-1], longest[1:], strict=True))
            or not all(0.001 <= step <= 0.2 for _, step in steps)):
        raise ValueError(
            f"`{name}` must list increasing lengths ending with null (any longer query), each step in "
            f"[0.001, 0.2]. Received: {value!r}"
        )
    return steps


def fitted_speed_steps(info):
    """The grid steps a calibration (its `info`) was fitted with: its `"speed_steps"`, or
    `LEGACY_SPEED_STEPS` for one fitted before they were recorded."""
    value = info.get("speed_steps")
    return LEGACY_SPEED_STEPS if value is None else speed_steps_from_json(value, "calibration speed_steps")


def speed_grid(speeds, step):
    """Speeds (lo, hi[, ...]) -> the geometric grid around 1.0 that covers [lo, hi] (each speed
    within half a step of a grid point), 1.0 included. The step is rounded to a whole number
    of `GRID_UNIT` steps, so that the grids of all steps share their speeds (a query searched
    at several lengths fingerprints each speed once)."""
    if speeds is None:
        return (1.0,)
    lo, hi = float(speeds[0]), float(speeds[1])
    unit = math.log1p(GRID_UNIT)
    ratio = unit * max(1, round(math.log1p(step) / unit))
    first = math.floor(math.log(lo) / ratio + 0.5)
    last = math.ceil(math.log(hi) / ratio - 0.5)
    return tuple(round(math.exp(ratio * k), 6) for k in range(min(first, 0), max(last, 0) + 1))


def speeds_description(speeds, steps=None):
    """How a setting reads in messages and records: 'off', '0.92-1.08 step 0.01', or with the
    steps by query length (`steps`, given): '0.92-1.08 step 0.005 to 2 s, 0.01 to 4 s, 0.02 beyond'."""
    if speeds is None:
        return "off"
    text = f"{speeds[0]:g}-{speeds[1]:g}"
    if len(speeds) == 3:
        return text + f" step {speeds[2]:g}"
    if steps is None:
        return text
    parts = [f"{step:g} " + ("beyond" if math.isinf(longest) else f"to {longest:g} s") for longest, step in steps]
    return text + " step " + ", ".join(parts)
