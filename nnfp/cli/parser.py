"""The `nnfp` command tree: every command, its own options, the shared ones it takes
(`nnfp.cli.options.shared_options`), and the function that runs it."""

import argparse

from nnfp.cli.data import cmd_data_make_irs, cmd_data_prepare
from nnfp.cli.demo import cmd_demo
from nnfp.cli.evaluate import cmd_evaluate
from nnfp.cli.exit_codes import EXIT_STATUS_HELP
from nnfp.cli.identify import cmd_identify
from nnfp.cli.index import (
    cmd_index_add,
    cmd_index_build,
    cmd_index_calibrate,
    cmd_index_merge,
    cmd_index_remove,
    cmd_index_verify,
)
from nnfp.cli.model import cmd_export, cmd_model_summary, cmd_train
from nnfp.cli.monitor import cmd_monitor
from nnfp.cli.options import (
    finite_float,
    fraction,
    non_negative_float,
    port,
    positive_float,
    positive_int,
    shared_options,
    speed_setting,
)
from nnfp.cli.serve import cmd_serve

__all__ = ["XLA_CACHE_HELP", "build_parser"]

XLA_CACHE_HELP = (
    "Compiled XLA programs of the model are kept in $NNFP_XLA_CACHE (default: the xla "
    "folder of nnfp's cache, $NNFP_CACHE or ~/.cache/nnfp; 'off' keeps none), one folder per "
    "TensorFlow version and CPU, so a command after the first skips the seconds of "
    "compiling. Deleting the folder is always safe."
)


class _ParagraphsHelpFormatter(argparse.HelpFormatter):
    """Wraps the description and epilog as argparse does, but keeps their blank-line paragraphs."""

    def _fill_text(self, text, width, indent):
        return "\n\n".join(super(_ParagraphsHelpFormatter, self)._fill_text(part, width, indent)
                             for part in text.split("\n\n"))


def build_parser():
    parser = argparse.ArgumentParser(
        prog="nnfp", description="Neural audio fingerprinting with Keras.",
        epilog=f"{EXIT_STATUS_HELP}\n\n{XLA_CACHE_HELP}", formatter_class=_ParagraphsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    shared = shared_options()
    _add_model_commands(sub, shared)
    _add_data_commands(sub, shared)
    _add_index_commands(sub, shared)
    _add_search_commands(sub, shared)
    _add_verbose_argument(parser)
    return parser


def _options():
    """A parser of options only, the parent (argparse `parents=`) of one command or of several."""
    return argparse.ArgumentParser(add_help=False)


def _add_command(sub, name, func, own, shared=(), **kwargs):
    """`nnfp ... NAME`, run by `func`: its own options (`own`, listed first in its help), then the
    groups of `shared_options()` it has in common with other commands."""
    command = sub.add_parser(name, parents=[own, *shared], **kwargs)
    command.set_defaults(func=func)
    return command


def _add_model_commands(sub, shared):
    own = _options()
    own.add_argument("--run-dir", required=True, help="output directory (config, checkpoints, logs)")
    _add_command(sub, "train", cmd_train, own, [shared.config, shared.overrides],
                 help="train a fingerprinter from a YAML config")

    own = _options()
    own.add_argument("legacy_config", nargs="?", default=None, metavar="CONFIG", help="deprecated: use --config")
    _add_command(sub, "model-summary", cmd_model_summary, own, [shared.config, shared.overrides],
                 help="print the Keras summary of a config's model")

    own = _options()
    own.add_argument("run_dir", metavar="RUN_DIR|MODEL", help="run directory (or .keras file)")
    own.add_argument("out_dir", help="new or empty folder (or an earlier export, with --overwrite)")
    own.add_argument(
        "--format", choices=("savedmodel", "litert"), default="savedmodel",
        help="savedmodel (default): a TF SavedModel; litert: model.tflite + spec.json, run without "
        "TensorFlow by ai-edge-litert, checked against the Keras model before it is written",
    )
    own.add_argument(
        "--quantize", choices=("none", "float16", "int8"), default=None,
        help="litert weights: none (float32, default), float16 (half the size), or int8 (encoder "
        "weights; refused unless its fingerprints keep cosine >= 0.999 and 100%% own-nearest-neighbour "
        "against the Keras model)",
    )
    own.add_argument("--overwrite", action="store_true", help="replace an existing nnfp export at OUT_DIR")
    _add_command(sub, "export", cmd_export, own, help="export a trained run as a TF SavedModel or a LiteRT model")

    own = _options()
    own.add_argument("--config", default=None, help="default: configs/demo.yaml")
    own.add_argument("--run-dir", default="runs/demo")
    own.add_argument("--queries", type=positive_int, default=50, help="queries per query length")
    _add_command(sub, "demo", cmd_demo, own, [shared.overrides],
                 help="train briefly on the embedded corpus, index it, identify noisy queries")


def _add_data_commands(sub, shared):
    data = sub.add_parser("data", help="dataset tools: prepare an audio cache, simulate room impulse responses")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    own = _options()
    own.add_argument("src", metavar="SRC_DIR", help="folder of audio files, or a .csv/.json manifest (path[,track_id])")
    own.add_argument("out_dir", metavar="OUT_DIR")
    own.add_argument("--min-seconds", type=non_negative_float, default=1.0, help="skip shorter files (default 1.0)")
    own.add_argument("--workers", type=positive_int, default=None, help="decoding threads (default: CPU count)")
    own.add_argument("--shard-mb", type=positive_float, default=64.0, help="shard size in MB (default 64)")
    _add_command(data_sub, "prepare", cmd_data_prepare, own, [shared.sample_rate, shared.quiet],
                 help="decode + resample SRC_DIR once into an int16 cache OUT_DIR (resumable)")

    own = _options()
    own.add_argument("out_dir", metavar="OUT_DIR")
    own.add_argument("n", metavar="N", type=positive_int)
    own.add_argument("--max-seconds", type=positive_float, default=1.0, help="cut impulse responses to this length")
    _add_command(data_sub, "make-irs", cmd_data_make_irs, own, [shared.sample_rate, shared.seed],
                 help='simulate N room impulse responses (needs "nnfp[rooms]")')


def _add_index_commands(sub, shared):
    from nnfp.defaults import DEFAULT_DECISION

    index = sub.add_parser("index", help="build, extend or merge (sharded build) a fingerprint index")
    index_sub = index.add_subparsers(dest="index_command", required=True)

    own = _options()
    own.add_argument("audio_dir")
    own.add_argument(
        "index_dir",
        help="output index folder (new, empty, or an nnfp index with --overwrite; never a folder nnfp did "
        "not create); with --shard, the folder receiving shard-I-of-N/",
    )
    own.add_argument(
        "--hop", type=positive_float, default=0.5,
        help="seconds between indexed segments (default 0.5, the paper's; 0.25 doubles the index and "
        "lines 1 s queries up better)",
    )
    own.add_argument(
        "--shard", default=None, metavar="I/N",
        help="fingerprint only shard I of N (0 <= I < N) into INDEX_DIR/shard-I-of-N; "
        "combine the N shards with `nnfp index merge`",
    )
    _add_command(
        index_sub, "build", cmd_index_build, own,
        [shared.overwrite_index, shared.model, shared.trust_model, shared.index, shared.store, shared.fingerprint,
         shared.quiet, shared.runtime],
        help="fingerprint every track of AUDIO_DIR into INDEX_DIR (resumable)",
    )

    own = _options()
    own.add_argument("shard_dirs", nargs="+", metavar="SHARD_DIR", help="OUT_DIR/shard-I-of-N folders, or OUT_DIR")
    own.add_argument("index_dir", metavar="INDEX_DIR")
    _add_command(
        index_sub, "merge", cmd_index_merge, own, [shared.overwrite_index, shared.index, shared.store, shared.quiet],
        help="combine the shards of `index build --shard I/N` runs into INDEX_DIR",
    )

    own = _options()
    own.add_argument("index_dir")
    own.add_argument("audio_dir", metavar="more_audio_dir")
    _add_command(
        index_sub, "add", cmd_index_add, own,
        [shared.fingerprint, shared.quiet, shared.trust_model, shared.runtime, shared.lock_timeout],
        help="append the tracks of MORE_AUDIO_DIR to INDEX_DIR",
    )

    own = _options()
    own.add_argument("index_dir")
    own.add_argument("tracks", nargs="+", metavar="TRACK", help="a track id or the track's path as indexed")
    own.add_argument("--compact", action="store_true", help="rebuild the index without the removed tracks' rows now")
    _add_command(
        index_sub, "remove", cmd_index_remove, own, [shared.lock_timeout],
        help="remove tracks from INDEX_DIR: they are never answered again (only tracks.json is "
        "rewritten, until removed tracks hold half the index: then it is compacted)",
    )

    own = _options()
    own.add_argument("index_dir")
    own.add_argument("--unknown", required=True, nargs="+", metavar="DIR",
                     help="folders of audio NOT in the index (out-of-catalogue queries); several folders are "
                     "kinds (e.g. music, noise, speech), each held to the target on its own")
    own.add_argument("--out", default=None, help="where to write it (default INDEX_DIR/calibration.json; "
                     "MODEL.calibration.json next to a .keras model ships it with the model)")
    own.add_argument("--n-queries", type=positive_int, default=500, help="queries of each kind (default 500)")
    own.add_argument("--n-unknown", type=positive_int, nargs="+", default=None, metavar="N",
                     help="out-of-catalogue queries per folder: one count for every folder, or one per --unknown "
                     "folder in their order (default: --n-queries; 1000 lets a 1 %% target at 95 %% confidence "
                     "admit 4 false matches)")
    own.add_argument("--target", type=fraction, default=0.01, help="false-match rate allowed (default 0.01)")
    own.add_argument("--confidence", type=fraction, default=0.95,
                     help="the target must hold at this confidence (Clopper-Pearson upper bound over the "
                     "out-of-catalogue queries; default 0.95; 0: point estimate, fits the calibration music only)")
    own.add_argument("--decision", choices=("lead", "margin", "score"), default=DEFAULT_DECISION,
                     help="what the thresholds apply to: margin, a match's score minus the best score of any other "
                     "track; lead, the margin plus the score's lead over the query's 10th best place; "
                     f"or score, the similarity itself (default {DEFAULT_DECISION})")
    own.add_argument("--work-dir", default=None,
                     help="keep the ranked answers of every 100 queries here as they are done; a run stopped "
                     "halfway and started again with the same options and --work-dir goes on where it stopped")
    _add_command(
        index_sub, "calibrate", cmd_index_calibrate, own,
        [shared.queries, shared.phases, shared.k_probe, shared.seed, shared.trust_model, shared.quiet],
        help="calibrate the match threshold per query length (<= 1 %% false matches) into "
        "INDEX_DIR/calibration.json",
    )

    own = _options()
    own.add_argument("index_dir")
    own.add_argument("--model", default=None, help="check this model instead of the index's own")
    _add_command(
        index_sub, "verify", cmd_index_verify, own, [shared.trust_model],
        help="check every file of INDEX_DIR against its checksum and its model against the probes",
    )


def _add_search_commands(sub, shared):
    from nnfp.defaults import DEFAULT_MIN_SCORE, DEFAULT_MONITOR_SPEEDS, MONITOR_SPEED_STEP

    own = _options()
    own.add_argument("index_dir")
    own.add_argument("queries", nargs="+", metavar="QUERY", help="audio files, any format/rate, >= 1 s")
    own.add_argument("--json", action="store_true", help="one JSON object per query and line")
    own.add_argument("--top-k", type=positive_int, default=5, help="matches printed per query (default 5)")
    own.add_argument(
        "--min-score", type=finite_float, default=None,
        help="fixed match threshold (default: the index's calibrated threshold for the query's length, "
        f"or {DEFAULT_MIN_SCORE} when the index has no calibration)",
    )
    _add_command(
        sub, "identify", cmd_identify, own,
        [shared.k_probe, shared.phases, shared.nprobe, shared.threads, shared.index_model, shared.trust_model,
         shared.runtime],
        help="find the track and offset of query recordings",
    )

    own = _options()
    own.add_argument("index_dir")
    own.add_argument(
        "recordings", nargs="+", metavar="RECORDING",
        help="audio files, any format/rate; - reads raw 16-bit little-endian mono PCM from stdin",
    )
    own.add_argument("--json", action="store_true", help="one JSON object per detected play and line, as it ends")
    own.add_argument("--rate", type=positive_int, default=8000, help="sample rate of the PCM on stdin (default 8000)")
    own.add_argument("--window", type=positive_float, default=5.0,
                     help="seconds of audio per searched window (default 5)")
    own.add_argument("--max-gap", dest="max_gap", type=non_negative_float, default=30.0,
                     help="a play survives this many seconds without a match (longer while its track stays "
                     "among the best places at its alignment) and goes on if its track returns at the same "
                     "alignment; it is reported at most this long after it was last heard (default 30)")
    own.add_argument("--min-score", type=finite_float, default=None,
                     help="window score threshold (default: the index's calibrated threshold)")
    own.add_argument("--batch-size", type=positive_int, default=None,
                     help="segments per inference batch (default: 256 for files; 16, 8 s of audio, for stdin, "
                     "so a live stream's detections do not wait for 128 s of it)")
    own.add_argument(
        "--speeds", type=speed_setting, default="auto", metavar="LO:HI[:STEP]|off",
        help=f"playback speeds monitored, e.g. {DEFAULT_MONITOR_SPEEDS[0]:g}:{DEFAULT_MONITOR_SPEEDS[1]:g} "
        f"(steps of {MONITOR_SPEED_STEP:g} unless given; radio plays songs up to 4 %% fast); off: the catalogue's "
        f"own speed only, about 3x faster; default: {DEFAULT_MONITOR_SPEEDS[0]:g}:{DEFAULT_MONITOR_SPEEDS[1]:g} "
        "where the index's calibration was fitted with a speed grid, else off",
    )
    _add_command(
        sub, "monitor", cmd_monitor, own,
        [shared.k_probe, shared.nprobe, shared.threads, shared.index_model, shared.trust_model, shared.runtime],
        help="every catalogue track played in long recordings or a stream (-: raw PCM on stdin)",
    )

    own = _options()
    own.add_argument("index_dir", metavar="INDEX_DIR")
    own.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    own.add_argument("--port", type=port, default=8000,
                     help="port (default 8000; 0: a free one, named in the ready line)")
    own.add_argument(
        "--token", default=None,
        help="bearer token that POST /tracks and DELETE /tracks/ID need (default: $NNFP_TOKEN; "
        "without one they are refused); reads need none",
    )
    own.add_argument("--max-upload-mb", dest="max_upload_mb", type=positive_float, default=50.0,
                     help="larger uploads are refused with 413 (default 50)")
    _add_command(
        sub, "serve", cmd_serve, own, [shared.runtime],
        help='answer identify, monitor and catalogue changes over HTTP (needs "nnfp[serve]")',
        description="Serves INDEX_DIR over HTTP (FastAPI + uvicorn): POST /identify, POST /monitor, "
        "WebSocket /stream, GET|POST /tracks, DELETE /tracks/ID, GET /health, GET /metrics, a web page "
        "at / and the API's documentation at /docs. Prints `serving INDEX_DIR on http://HOST:PORT` "
        "when it is ready; SIGINT or SIGTERM stop it.",
    )

    own = _options()
    own.add_argument("index_dir", nargs="?", default=None, help="a saved index (or use --db)")
    own.add_argument("--db", default=None, help="DB audio folder: build an index of it in OUT/index")
    own.add_argument("--dummy-dir", default=None, help="extra distractor tracks added to the --db index")
    own.add_argument("--query-dir", default=None, help="recorded queries with labels.csv (query,track,offset_s)")
    own.add_argument("--n-queries", type=positive_int, default=2000, help="synthesised queries (default 2000)")
    own.add_argument("--noise-kind", default=None, help="generated noise kind, e.g. babble for speech-like background")
    own.add_argument("--no-noise", action="store_true", help="no background noise")
    own.add_argument("--no-reverb", action="store_true", help="no impulse response")
    own.add_argument("--clean", action="store_true", help="no degradation at all")
    own.add_argument("--aligned", action="store_true",
                     help="cut queries on the DB hop grid (the paper's protocol); default: random sample positions")
    own.add_argument("--unknown-dir", default=None, help="tracks NOT in the index: queries for the false-match rate")
    own.add_argument("--n-unknown", type=positive_int, default=None,
                     help="out-of-catalogue queries (default: --n-queries)")
    own.add_argument("--speed", type=positive_float, nargs=2, default=None, metavar=("LO", "HI"),
                     help="play each query faster or slower (pitch with tempo, by resampling) by a factor drawn "
                     "in [LO, HI], e.g. 0.96 1.04")
    own.add_argument("--tempo", type=positive_float, nargs=2, default=None, metavar=("LO", "HI"),
                     help="change each query's tempo only (pitch kept) by a factor drawn in [LO, HI]")
    own.add_argument("--pitch", type=finite_float, nargs=2, default=None, metavar=("LO", "HI"),
                     help="shift each query's pitch only (tempo kept) by LO to HI semitones")
    own.add_argument("--phone", action="store_true",
                     help="send every synthesised query (after its room and noise) through a phone: microphone "
                     "band and colour, automatic gain control, AMR-NB or Opus speech codec")
    own.add_argument("--min-score", type=finite_float, default=None,
                     help="fixed match threshold (default: the index's calibrated threshold per query length)")
    own.add_argument("--out", default="runs/evaluate", help="output folder (default runs/evaluate)")
    _add_command(
        sub, "evaluate", cmd_evaluate, own,
        [shared.queries, shared.seed, shared.k_probe, shared.threads, shared.phases, shared.model,
         shared.trust_model, shared.index, shared.quiet],
        help="the paper's search evaluation: hit rates against query length",
    )


def _add_verbose_argument(parser, root=True):
    """`--verbose` on `nnfp` and on every command (`nnfp identify ... --verbose`): a command's
    flag, when absent, leaves the one given before the command as it was."""
    parser.add_argument(
        "--verbose", action="store_true", default=False if root else argparse.SUPPRESS,
        help="also show the log lines of TensorFlow, XLA and CUDA (hidden otherwise: start-up "
        "probes, compile-cache notes; run again with it when a command ends without a message)",
    )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                _add_verbose_argument(command, root=False)
