"""`nnfp monitor`: every catalogue track played in long recordings or a live stream."""

import json
import signal
import sys
import threading

from nnfp.cli.exit_codes import BAD_INPUT, OK, stopped_by
from nnfp.cli.identify import print_threshold_notes
from nnfp.cli.text import one_line, printable
from nnfp.defaults import FILE_BATCH_SIZE, STREAM_BATCH_SIZE

__all__ = ["cmd_monitor"]


class _Stopped(BaseException):
    """A stop signal that cannot wait for the plays in progress (a BaseException, as
    KeyboardInterrupt: no `except Exception` on the way turns it into an error)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _signal_name(signum):
    return signal.Signals(signum).name


class _StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (a service manager, `kill`) while `nnfp monitor` runs.

    Once `graceful` is set (the monitor is reading audio), the first signal only sets
    `event` and `signum`: the stream ends, what was read is searched and the plays in
    progress are reported cut short. Before that (loading the index and the model) and
    at a second signal, `_Stopped` is raised at once. The handlers before are restored on
    exit, so a `main([...])` inside a Python session leaves them as they were.
    """

    def __init__(self):
        self.event = threading.Event()
        self.signum = None
        self.graceful = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only it may set handlers
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _handle(self, signum, frame):
        if self.graceful and self.signum is None:
            self.signum = signum
            self.event.set()
            return
        raise _Stopped(signum)


def cmd_monitor(args):
    with _StopSignals() as stopper:
        try:
            return _monitor_recordings(args, stopper)
        except _Stopped as stopped:
            print(f"nnfp monitor: stopped by {_signal_name(stopped.signum)}", file=sys.stderr)
            return stopped_by(stopped.signum)


def _monitor_speeds(speeds):
    """`--speeds` of `nnfp monitor` with its grid step (`MONITOR_SPEED_STEP` unless given)."""
    from nnfp.defaults import MONITOR_SPEED_STEP

    if speeds is None or speeds == "auto":
        return speeds
    return (*speeds[:2], speeds[2] if len(speeds) == 3 else MONITOR_SPEED_STEP)


def _monitor_recordings(args, stopper):
    from nnfp.audio.io import AudioError
    from nnfp.catalogue.identify import Identifier
    from nnfp.catalogue.monitor import (
        format_detection,
        input_note,
        monitor_stream,
        read_blocks,
        read_pcm_blocks,
    )

    # "auto" (default): `monitor_stream`'s default grid where the index's calibration searches speeds;
    # `--speeds LO:HI` (step MONITOR_SPEED_STEP unless given) that grid; `off` (None): the catalogue's speed only
    speeds = _monitor_speeds(args.speeds)
    identifier = Identifier(
        args.index_dir, model=args.model, k_probe=args.k_probe, threads=args.threads,
        nprobe=args.nprobe, trust_model=args.trust_model, runtime=args.runtime,
        min_score="calibrated" if args.min_score is None else args.min_score, speeds=speeds,
    )
    print_threshold_notes("monitor", args.min_score, identifier)
    stopper.graceful = True  # from here on a signal ends the stream and the plays in progress are reported
    failed = 0
    for i, recording in enumerate(args.recordings):
        if stopper.signum is not None:
            print(f"nnfp monitor: stopped by {_signal_name(stopper.signum)}; not read: "
                  + ", ".join(printable(r) for r in args.recordings[i:]), file=sys.stderr)
            break
        stats = {}  # audio read (`n_samples`, `peak`), and for stdin its bytes
        if recording == "-":
            blocks = read_pcm_blocks(
                sys.stdin.buffer, args.rate, identifier.sample_rate, stop=stopper.event, stats=stats
            )
        else:
            blocks = read_blocks(recording, identifier.sample_rate)
        batch_size = args.batch_size or (STREAM_BATCH_SIZE if recording == "-" else FILE_BATCH_SIZE)
        if not args.json:
            print(f"{printable(recording)}:", flush=True)
        found = cut_short = 0
        try:
            for play in monitor_stream(
                identifier, blocks, recording, window_seconds=args.window, max_gap_seconds=args.max_gap,
                min_score=args.min_score, batch_size=batch_size, stop=stopper.event, stats=stats,
                speeds=speeds,
            ):
                found += 1
                cut_short += play.cut_short
                if args.json:
                    line = json.dumps(play.as_dict())
                else:
                    line = "  " + format_detection(play)
                    if play.cut_short:
                        line += f"  (cut short: stopped by {_signal_name(stopper.signum)})"
                print(line, flush=True)
        except AudioError as error:
            failed += 1
            print(f"nnfp monitor: error: {one_line(error)}", file=sys.stderr)
            continue
        if not args.json and not found:
            print("  (no catalogue track detected)", flush=True)
        seconds = stats.get("n_samples", 0) / identifier.sample_rate
        if stopper.signum is not None:
            summary = f"stopped by {_signal_name(stopper.signum)} after {seconds:.1f} s of audio"
            if cut_short:
                summary += f"; {cut_short} play{'s' * (cut_short > 1)} in progress reported cut short"
        else:
            note = input_note(stats, args.rate if recording == "-" else None)
            summary = f"read {seconds:.1f} s of audio" + (f" ({note})" if note else "")
            failed += not stats.get("n_samples")
        print(f"nnfp monitor: {printable(recording)}: {summary}", file=sys.stderr, flush=True)
    if stopper.signum is not None:
        return stopped_by(stopper.signum)
    return BAD_INPUT if failed else OK
