"""The options of the `nnfp` commands: one validator (argparse `type=`) per kind of value, and the
parent parsers (argparse `parents=`) of the options several commands share.

Each validator accepts or refuses a value the same way in every command that has the option, and
refuses it with one message, `argument --FLAG: expected WHAT, received 'TEXT'` (argparse names the
flag), before anything is read or written.
"""

import argparse
import math
from types import SimpleNamespace

__all__ = [
    "finite_float",
    "fraction",
    "index_params",
    "integer",
    "non_negative_float",
    "port",
    "positive_float",
    "positive_int",
    "refine_windows",
    "shared_options",
    "speed_setting",
    "store_options",
]


def _checked(text, convert, accept, expected):
    """`convert(text)` when it succeeds and `accept`s the value, else the one message of its validator."""
    try:
        value = convert(text)
    except (TypeError, ValueError):
        accepted = False
    else:
        accepted = accept(value)
    if not accepted:
        raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}")
    return value


def positive_int(text):
    """A count: --k-probe, --n-queries, --threads, --nprobe, --batch-size, --ef-search, --top-k, ..."""
    return _checked(text, int, lambda value: value >= 1, "a whole number >= 1")


def integer(text):
    """Any whole number: --seed."""
    return _checked(text, int, lambda value: True, "a whole number")


def finite_float(text):
    """A score or a level: --min-score, --snr-range, --pitch."""
    return _checked(text, float, math.isfinite, "a finite number")


def positive_float(text):
    """A length, a rate or a size: --hop, --window, --lengths, --speed, --max-upload-mb, ..."""
    return _checked(text, float, lambda value: math.isfinite(value) and value > 0, "a number > 0")


def non_negative_float(text):
    """A wait or a duration that may be zero: --max-gap, --lock-timeout, --min-seconds."""
    return _checked(text, float, lambda value: math.isfinite(value) and value >= 0, "a number >= 0")


def fraction(text):
    """A rate or a probability below 1: --target, --confidence (0: the point estimate)."""
    return _checked(text, float, lambda value: 0 <= value < 1, "a number >= 0 and < 1")


def port(text):
    """A TCP port, 0 for a free one: --port."""
    return _checked(text, int, lambda value: 0 <= value <= 65535, "a port number 0-65535")


def refine_windows(text):
    """--refine: a count of windows, or `all` (None: every phase searched in faiss)."""
    if text == "all":
        return None
    return _checked(text, int, lambda value: value >= 1, "'all' or a whole number >= 1")


def speed_setting(text):
    """--speeds: `LO:HI[:STEP]`, `off` (None) or `auto` (kept), as `nnfp.catalogue.speeds.parse_speeds`."""
    from nnfp.catalogue.speeds import parse_speeds

    return _checked(
        text, parse_speeds, lambda value: True,
        "LO:HI or LO:HI:STEP with 0.5 <= LO <= 1 <= HI <= 2 and 0.001 <= STEP <= 0.2 (e.g. 0.92:1.08 or "
        "0.96:1.04:0.02), or off",
    )


def shared_options():
    """The parent parsers of the options several commands share, one attribute per group.

    Each option is defined here once, with its validator, default and help; a command takes
    the groups it has with `parents=[...]`.
    """
    from nnfp.defaults import (
        DEFAULT_INTERPOLATE,
        DEFAULT_K_PROBE,
        DEFAULT_PHASES,
        DEFAULT_REFINE,
        DEFAULT_SPEEDS,
        INDEX_TYPES,
        RUNTIMES,
    )
    from nnfp.store.milvus import BACKENDS, TOKEN_VARIABLES

    names = (
        "config", "overrides", "quiet", "seed", "sample_rate", "model", "index_model", "trust_model", "runtime",
        "threads", "k_probe", "nprobe", "index", "store", "fingerprint", "overwrite_index", "lock_timeout",
        "phases", "queries",
    )
    shared = SimpleNamespace(**{name: argparse.ArgumentParser(add_help=False) for name in names})

    # Configs: train, model-summary, demo.
    shared.config.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    shared.overrides.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 (repeatable)",
    )

    shared.quiet.add_argument("--quiet", action="store_true", help="no progress bar")
    shared.seed.add_argument("--seed", type=integer, default=0)
    shared.sample_rate.add_argument("--sample-rate", type=positive_int, default=8000,
                                    help="target rate in Hz (default 8000)")

    # The model: the one an index is built with, or an override of the index's own.
    shared.model.add_argument(
        "--model", default=None, help="run directory, .keras file or SavedModel (default: the packaged model)"
    )
    shared.index_model.add_argument("--model", default=None, help="override the index's model")
    shared.trust_model.add_argument(
        "--trust-model", action="store_true",
        help="allow a TensorFlow SavedModel, which can run arbitrary operations when loaded "
        "(.keras models load in Keras safe mode and need no flag)",
    )
    shared.runtime.add_argument(
        "--runtime", choices=RUNTIMES, default="auto",
        help="what runs the model: auto (default) LiteRT where the model has a LiteRT copy (an index built "
        "by this nnfp has one; no TensorFlow is started), else TensorFlow; litert or tensorflow insist on one",
    )

    # Searching a saved index.
    shared.threads.add_argument("--threads", type=positive_int, default=1, help="faiss threads (default 1)")
    shared.k_probe.add_argument("--k-probe", type=positive_int, default=DEFAULT_K_PROBE,
                                help=f"faiss neighbours per query segment (default {DEFAULT_K_PROBE})")
    shared.nprobe.add_argument("--nprobe", type=positive_int, default=None, help="IVF lists visited (default: as built)")

    # Building an index: its vector index, where its fingerprints live, how they are computed.
    shared.index.add_argument(
        "--index-type", default="auto", choices=("auto", *INDEX_TYPES),
        help="vector index; auto: flat (exact) below 100k segments (~14 h), ivfpq above (hnsw on --backend milvus)",
    )
    shared.index.add_argument("--nlist", type=positive_int, default=None, help="IVF lists (default ~4*sqrt(segments))")
    shared.index.add_argument("--m", type=positive_int, default=None, help="PQ sub-quantisers, divides d (default 16)")
    shared.index.add_argument("--nbits", type=positive_int, default=None, help="bits per PQ code (default 8)")
    shared.index.add_argument("--nprobe", type=positive_int, default=None,
                              help="IVF lists visited per search (default 16)")
    shared.index.add_argument("--hnsw-m", dest="hnsw_m", type=positive_int, default=None,
                              help="HNSW degree (default 32)")
    shared.index.add_argument("--ef-search", dest="ef_search", type=positive_int, default=None,
                              help="HNSW search breadth (default 128)")
    shared.index.add_argument("--train-size", dest="train_size", type=positive_int, default=None,
                              help="IVF/PQ training sample")
    shared.store.add_argument(
        "--backend", choices=BACKENDS, default="faiss",
        help="where the fingerprints live: faiss (default) in INDEX_DIR; milvus in a Milvus collection, in a "
        "Milvus Lite file inside INDEX_DIR or on the server --milvus-uri (INDEX_DIR keeps the rest: tracks, "
        'model, calibration, integrity record); needs "nnfp[milvus]"',
    )
    shared.store.add_argument(
        "--milvus-uri", dest="milvus_uri", default=None, metavar="URI",
        help=f"with --backend milvus: a Milvus server or cluster, e.g. http://localhost:19530 (its token from "
        f"${TOKEN_VARIABLES[0]} or ${TOKEN_VARIABLES[1]}); default: a Milvus Lite file inside INDEX_DIR",
    )
    shared.store.add_argument(
        "--collection", default=None, metavar="NAME",
        help="with --backend milvus: the collection (default nnfp_<INDEX_DIR name>)",
    )
    shared.fingerprint.add_argument(
        "--batch-size", type=positive_int, default=256,
        help="segments gathered per step (the model runs them in calls of 16, one per core at once)",
    )
    shared.fingerprint.add_argument("--chunk-files", type=positive_int, default=32, help="files per resumable chunk")
    shared.overwrite_index.add_argument("--overwrite", action="store_true",
                                        help="replace an existing nnfp index at INDEX_DIR")
    shared.lock_timeout.add_argument(
        "--lock-timeout", type=non_negative_float, default=None, metavar="SECONDS",
        help="give up after waiting this long for another writer of the same index (default: wait)",
    )

    # Queries: how each is searched (identify, index calibrate, evaluate), how they are made
    # (index calibrate, evaluate).
    shared.phases.add_argument("--phases", type=positive_int, default=DEFAULT_PHASES,
                               help=f"query phases per index hop (default {DEFAULT_PHASES})")
    shared.phases.add_argument("--refine", type=refine_windows, default=DEFAULT_REFINE,
                               help=f"phase-0 windows scored at the other phases (default {DEFAULT_REFINE}; "
                               "all: search every phase in faiss)")
    shared.phases.add_argument("--interpolate", type=positive_int, default=DEFAULT_INTERPOLATE,
                               help="for a query too short for a second phase (1 s): positions per index hop at "
                               "which its best windows are scored again with DB fingerprints interpolated between "
                               f"rows (default {DEFAULT_INTERPOLATE}; 1: off)")
    shared.phases.add_argument(
        "--speeds", type=speed_setting, default="auto", metavar="LO:HI[:STEP]|off",
        help="playback speeds searched (default: those the index's calibration was fitted with, or "
        f"{DEFAULT_SPEEDS[0]:g}:{DEFAULT_SPEEDS[1]:g} without one: a song played up to "
        f"{100 * (1 - DEFAULT_SPEEDS[0]):g} %% slow or {100 * (DEFAULT_SPEEDS[1] - 1):g} %% fast; the grid step "
        "follows the query's length unless STEP is given); off: only the catalogue's own speed",
    )
    shared.queries.add_argument("--lengths", type=positive_float, nargs="+", default=[1, 2, 3, 5, 6, 10],
                                help="query lengths in seconds")
    shared.queries.add_argument("--snr-range", type=finite_float, nargs=2, default=[0.0, 10.0],
                                metavar=("LOW", "HIGH"))
    shared.queries.add_argument("--noise-dir", default=None, help="background noise folder (default: generated noise)")
    shared.queries.add_argument("--ir-dir", default=None, help="impulse response folder (default: generated rooms)")
    return shared


def index_params(args):
    """The vector-index options given (`shared_options().index`), as keyword arguments."""
    names = ("nlist", "m", "nbits", "nprobe", "hnsw_m", "ef_search", "train_size")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def store_options(args):
    """`--backend`, `--milvus-uri`, `--collection` as given (`shared_options().store`), as keyword arguments."""
    given = {"backend": args.backend if args.backend != "faiss" else None, "milvus_uri": args.milvus_uri,
             "collection": args.collection}
    return {name: value for name, value in given.items() if value is not None}
