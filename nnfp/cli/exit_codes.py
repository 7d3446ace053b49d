"""The exit statuses of every `nnfp` command: one table, printed by `nnfp --help`."""

__all__ = ["BAD_INPUT", "BROKEN_PIPE", "EXIT_STATUS_HELP", "NOTHING_ANSWERED", "OK", "stopped_by"]

OK = 0
# Every query of `nnfp identify` failed (some failing: OK, each one named on stderr). Python
# itself exits with 1 after an unexpected error (a traceback).
NOTHING_ANSWERED = 1
# A bad option (argparse exits with it too), a missing or damaged file, index or model, a refused
# output folder, a missing optional package, a recording `nnfp monitor` could not read or found empty.
BAD_INPUT = 2
BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command stopped by a closed pipe


def stopped_by(signum):
    """The status of a command stopped by a signal, as a shell reports it: 130 SIGINT, 143 SIGTERM."""
    return 128 + signum


EXIT_STATUS_HELP = (
    "Exit status: 0 success; 1 when every query of `nnfp identify` failed (some failing: 0, each "
    "one named on stderr), or an unexpected error (a traceback); 2 bad input or usage: a bad "
    "option, a missing or damaged file, index or model, a refused output folder, a missing optional "
    "package (the message names the extra to install), a recording "
    "`nnfp monitor` could not read or found empty; 130 or 143 stopped by SIGINT (Ctrl-C) or SIGTERM; 141 the "
    "reader of the output went away (a closed pipe, e.g. `| head`)."
)
