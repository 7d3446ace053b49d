"""`nnfp` command line: train, model-summary, export, data, index build|merge|add|remove|calibrate|verify,
identify, monitor, serve, evaluate, demo.

`main` parses (`nnfp.cli.parser`: the command tree; `nnfp.cli.options`: the shared options and their
validators), runs the command's function (one module per command group) and turns the errors a user
can fix into one line and an exit status of `nnfp.cli.exit_codes`.
"""

import errno
import hashlib
import io
import os
import platform
import signal
import sys
from pathlib import Path

from nnfp.cli.exit_codes import BAD_INPUT, BROKEN_PIPE, stopped_by
from nnfp.cli.parser import build_parser
from nnfp.cli.text import one_line

__all__ = ["build_parser", "main", "xla_cache_directory"]


def xla_cache_directory(environ=None):
    """The folder of persistent XLA programs for this TensorFlow and CPU, or None when off."""
    from importlib.metadata import PackageNotFoundError, version

    from nnfp.defaults import cache_home

    environ = os.environ if environ is None else environ
    base = environ.get("NNFP_XLA_CACHE")
    if base is not None and base.strip().lower() in ("", "off", "0", "none"):
        return None
    if base is None:
        base = cache_home(environ) / "xla"
    try:
        tf_version = version("tensorflow")
    except PackageNotFoundError:
        tf_version = "unknown"
    cpu = platform.machine()
    try:  # programs are compiled for this CPU's instruction set
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
        cpu += "-" + hashlib.sha256(flags.encode()).hexdigest()[:12]
    except (OSError, StopIteration):
        cpu += "-" + hashlib.sha256(platform.processor().encode()).hexdigest()[:12]
    return Path(base) / f"tf{tf_version}-{cpu}"


def _use_xla_cache():
    """Points TensorFlow's persistent XLA cache at `xla_cache_directory()` (before TF starts).

    TensorFlow writes each entry to a temporary file and renames it, so concurrent
    commands and interrupted ones leave no partial entry. A TF_XLA_FLAGS that already
    names a cache is left alone.
    """
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" in flags:
        return
    directory = xla_cache_directory()
    if directory is None:
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as without the cache
        return
    os.environ["TF_XLA_FLAGS"] = f"{flags} --tf_xla_persistent_cache_directory={directory}".strip()


def _hide_native_logs():
    """Sends file descriptor 2 to /dev/null for the rest of the process and Python's `sys.stderr`
    (nnfp's messages, progress bars, tracebacks) to a copy of the original descriptor.

    TensorFlow, XLA and CUDA write their C++ log lines straight to descriptor 2: start-up
    probes (no GPU), and notes of the persistent XLA cache (an entry first tried as text, the
    CPU features it was compiled for), which say nothing about the command and which a user
    cannot tell from a fault. TF_CPP_MIN_LOG_LEVEL does not reach the lines absl writes before
    it is initialised, so only the descriptor keeps them out. `--verbose` shows them.
    """
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no descriptor 2 (an embedded interpreter)
        return
    encoding, errors = sys.stderr.encoding, sys.stderr.errors
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = io.TextIOWrapper(io.FileIO(real, "w"), encoding=encoding, errors=errors,
                                  line_buffering=True, write_through=True)


# Commands that run the model and never train (`main` sets TensorFlow's threads for them).
_FINGERPRINTING_COMMANDS = (
    "index build", "index add", "index calibrate", "index verify", "identify", "monitor", "evaluate",
)


def main(argv=None):
    args = build_parser().parse_args(argv)
    command = " ".join(
        [args.command] + [getattr(args, f"{args.command}_command", None) or ""]
    ).strip()  # "index build", "data prepare", "identify"
    if argv is not None:  # main([...]) inside a Python session: Ctrl-C is the session's
        return _main(args, command, argv)
    try:
        return _main(args, command, argv)
    except KeyboardInterrupt:
        # Ctrl-C before a command installs its own handling (`monitor`), e.g. while TensorFlow
        # loads: no traceback. Whatever was written is whole (`nnfp.outputs`); a build resumes.
        print(f"\nnnfp {command}: interrupted (SIGINT)", file=sys.stderr)
        _exit_now(stopped_by(signal.SIGINT))


def _main(args, command, argv):
    _use_xla_cache()
    if argv is None and not args.verbose:  # a process of its own (main([...]) leaves its session's streams)
        _hide_native_logs()
    own_process = argv is None and command in _FINGERPRINTING_COMMANDS
    if own_process:
        # A process of its own (not main([...]) inside a Python session): it only
        # fingerprints, so one thread per op and one model call per core, should TensorFlow
        # start at all (LiteRT needs none of it).
        from nnfp import defaults

        defaults.INFERENCE_PROCESS = True
    import warnings

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # nnfp's own warnings are about the user's files (nnfp.audio.io.TruncatedAudioWarning:
        # a cut mp3): one line each, without Python's file:line, written between progress bars.
        if not category.__module__.startswith("nnfp."):
            return python_show_warning(message, category, filename, lineno, file, line)
        from tqdm import tqdm

        tqdm.write(f"nnfp: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():  # a main([...]) inside a Python session leaves its hook as it was
        python_show_warning, warnings.showwarning = warnings.showwarning, show_warning
        status = _run(args, command)
    if own_process:
        _exit_now(status)
    return status


def _run(args, command):
    from nnfp.config import ConfigError
    from nnfp.extras import MissingExtraError

    try:
        return args.func(args)
    except MissingExtraError as error:  # an optional package the command needs: the extra to install
        print(f"nnfp {command}: error: {one_line(error)}", file=sys.stderr)
        return BAD_INPUT
    except BrokenPipeError:  # `nnfp monitor ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush
        return BROKEN_PIPE
    except (ConfigError, FileNotFoundError, ValueError) as error:
        print(f"nnfp {command}: error: {one_line(error)}", file=sys.stderr)
        return BAD_INPUT
    except OSError as error:  # a full disk, no permission, a lock not obtained...
        hint = ""
        if error.errno == errno.ENOSPC:
            hint = "; free some space and run again (an existing index or output folder was left as it was)"
        print(f"nnfp {command}: error: {one_line(error)}{hint}", file=sys.stderr)
        return BAD_INPUT


def _exit_now(status):
    """Ends a fingerprinting process without tearing down the interpreter.

    Its output is written and closed by now (`nnfp.outputs` renames finished files into
    place); what remains is unloading TensorFlow, which took 1.4-1.7 s of every command
    (two 30-min `nnfp monitor` runs: `main` returned at 15.7 s and 15.2 s, the process
    ended at 17.4 s and 16.7 s). Python's exit handlers are skipped, so the standard
    streams are flushed here.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(status or 0)


if __name__ == "__main__":
    sys.exit(main())
