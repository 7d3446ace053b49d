"""Search settings shared by the catalogue operations and the command line.

Kept free of heavy imports so that `nnfp --help` and `nnfp train` can name them
without loading faiss or TensorFlow.
"""

import os
from pathlib import Path

__all__ = [
    "DEFAULT_DECISION",
    "DEFAULT_INTERPOLATE",
    "DEFAULT_K_PROBE",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_PHASES",
    "DEFAULT_REFINE",
    "DEFAULT_MONITOR_SPEEDS",
    "DEFAULT_SPEEDS",
    "FILE_BATCH_SIZE",
    "STREAM_BATCH_SIZE",
    "MONITOR_SPEED_STEP",
    "SPEED_LEVEL_PLACES",
    "SPEED_LEVEL_WEIGHT",
    "SPEED_PENALTY",
    "INDEX_TYPES",
    "INFERENCE_PROCESS",
    "RUNTIMES",
    "SAME_AUDIO",
    "cache_home",
]

INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw")  # faiss index kinds of `FingerprintDB.build`
# Mean cosine of two tracks' stored fingerprints over a window above which they hold one
# recording under two names (an album track and its single, a cut of a longer piece): such a
# track is no rival of the other (`identify`'s lead) and its play is the other's (`monitor`).
# Windows of two different tracks stay well below it; a track and a cut of it mostly above.
SAME_AUDIO = 0.9
DEFAULT_K_PROBE = 20  # faiss neighbours per query segment (the original `k_probe`)
# Used only when neither the index nor its model has a calibration (`nnfp index calibrate`).
DEFAULT_MIN_SCORE = 0.5
# The figures behind the next three: docs/defaults.md.
# Query phases per index hop (`Identifier(phases=...)`, `--phases`): 2 search faster and score alike
# on noisy queries, but put more clean queries at a wrong offset.
DEFAULT_PHASES = 4
# Only phase 0 is searched in faiss; its best DEFAULT_REFINE windows are scored at the other
# phases (`Identifier(refine=...)`, `--refine`; None / "all" searches every phase): as accurate
# as searching every phase, and faster.
DEFAULT_REFINE = 32
# Positions per index hop at which the best windows of a one-phase query (1 s) are scored
# again with DB fingerprints interpolated between rows (`Identifier(interpolate=...)`,
# `--interpolate`; 1 = off): more 1 s queries at the right offset, no more false matches.
DEFAULT_INTERPOLATE = 2


def cache_home(environ=None):
    """nnfp's cache folder: `$NNFP_CACHE`, else `$XDG_CACHE_HOME/nnfp`, else `~/.cache/nnfp`.

    The one place an environment variable chooses where nnfp writes by default. It holds
    the generated corpus (`corpus-<parameters>`, unless `embedded.directory` names a folder)
    and the compiled XLA programs of the CLI (`xla/`, unless `$NNFP_XLA_CACHE` says otherwise).
    Everything in it can be deleted; it is made again when needed.
    """
    environ = os.environ if environ is None else environ
    if environ.get("NNFP_CACHE"):
        return Path(environ["NNFP_CACHE"]).expanduser()
    if environ.get("XDG_CACHE_HOME"):
        return Path(environ["XDG_CACHE_HOME"]) / "nnfp"
    return Path.home() / ".cache" / "nnfp"

# Set by the CLI for a process of its own that only fingerprints (index, identify, monitor,
# evaluate): TensorFlow, if it starts, then gives each op one thread (`nnfp.runtime`).
INFERENCE_PROCESS = False

# What a match's confidence is, which the calibrated threshold applies to (`Identifier(decision=...)`):
# "lead", the margin plus a share of the score's lead over the query's own impostor level (its 10th
# best place); "margin", the score's lead over the best window of any other track; "score", the
# similarity (`nnfp.catalogue.identify.lead`).
DEFAULT_DECISION = "lead"

# Speed search (`Identifier(speeds=...)`, `--speeds`): the query is also searched as if
# played at these speeds (lowest, highest). The grid step depends on the query's length:
# a short query tolerates less speed error (a speed change moves every frequency; a longer
# query has more segments to outvote it) and costs little to search at many speeds.
# SPEED_STEPS: (longest query seconds, relative step) pairs, shortest first.
DEFAULT_SPEEDS = (0.92, 1.08)
# Most queries play at the catalogue's speed: a place found at another speed ranks this much
# lower, and every place ranks lower by SPEED_LEVEL_WEIGHT x the mean score of the other
# places found at its speed among the best SPEED_LEVEL_PLACES (a speed at which the query
# resembles much of the catalogue earns less credit). Its score and confidence are unchanged.
# Chosen by measurement on training music: MODEL_CARD.md, "Songs played faster or slower".
SPEED_PENALTY = 0.06
SPEED_LEVEL_WEIGHT = 0.25
SPEED_LEVEL_PLACES = 10
# `nnfp monitor`'s speeds: broadcasts play songs up to a few % fast; each grid speed costs
# a pass of the model over the recording (MONITOR_SPEED_STEP: the grid's step).
DEFAULT_MONITOR_SPEEDS = (0.96, 1.04)
MONITOR_SPEED_STEP = 0.02
SPEED_STEPS = ((2.0, 0.01), (5.0, 0.015), (float("inf"), 0.02))

# Segments per model call of `nnfp monitor` (and serve's /monitor and /stream): a file is read as
# fast as it decodes (fewer, larger batches, faster with `read_ahead`); a live stream's detections
# wait for a batch, so a stream takes 8 s of audio at a time (LiteRT runs 16 rows a call anyway:
# `nnfp.lite.CALL_ROWS`; with the speed grid every speed's stream waits for its batch).
FILE_BATCH_SIZE = 256
STREAM_BATCH_SIZE = 16

RUNTIMES = ("auto", "litert", "tensorflow")  # --runtime: which runtime fingerprints audio
