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

__all__ = ["GRID_UNIT", "parse_speeds", "speed_grid", "speed_step", "speeds_description"]

GRID_UNIT = 0.005  # every grid step is a whole number of these (0.5 %)


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


def speed_step(speeds, query_seconds):
    """The grid step for a query of `query_seconds` (the setting's own, else `SPEED_STEPS`)."""
    if speeds is not None and len(speeds) == 3:
        return float(speeds[2])
    return next(step for longest, step in SPEED_STEPS if query_seconds <= longest)


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


def speeds_description(speeds):
    """How a setting reads in messages and records: 'off', '0.92-1.08' or '0.92-1.08 step 0.01'."""
    if speeds is None:
        return "off"
    text = f"{speeds[0]:g}-{speeds[1]:g}"
    return text + (f" step {speeds[2]:g}" if len(speeds) == 3 else "")
