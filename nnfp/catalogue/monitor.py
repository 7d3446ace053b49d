"""Every catalogue track played in a long recording or a live stream, with its start and end.

The recording is fingerprinted once, streaming, on the index hop; windows of a few
seconds slide over the stream of fingerprints and are searched in the index. Each window's
best places and the ones that clear the calibrated decision go to a play tracker
(`nnfp.catalogue.plays.PlayTracker`): a *play* is a run of windows agreeing on one track whose
offset advances one second per second of recording; plays survive dropouts, end when another
track is confirmed or after `max_gap_seconds` without being heard, and are emitted as soon as
they end, their start and end refined to the hop. This module reads the audio (files, raw PCM
on stdin), searches the windows (`_Monitor`) and, with `speeds`, runs one tracker per
playback speed (`_multi_speed`).

Memory is constant in the recording length: audio is consumed block by block and only
a ring of recent fingerprints is kept.

>>> identifier = Identifier("my_index")
>>> for play in monitor_stream(identifier, read_blocks("broadcast.mp3", 8000), "broadcast.mp3"):
...     print(play.start_s, play.end_s, play.track, play.track_start_s)
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import select
import threading

import numpy as np

from nnfp.audio.segments import fingerprint_segments, n_segments
from nnfp.catalogue.fingerprint import iter_fingerprints, iter_segments
from nnfp.catalogue.identify import (
    LEAD_WEIGHT,
    margins,
    segment_votes,
    sharp_matches,
    window_similarity,
    with_votes,
)
from nnfp.catalogue.plays import Candidate, Detection, PlayTracker, mostly_shared
from nnfp.catalogue.speeds import check_speeds, speed_grid
from nnfp.defaults import DEFAULT_MONITOR_SPEEDS, MONITOR_SPEED_STEP

__all__ = [
    "Detection",
    "format_detection",
    "input_note",
    "monitor_stream",
    "read_ahead",
    "read_blocks",
    "read_pcm_blocks",
]

# The window search's constants (the play tracker's are at the top of nnfp.catalogue.plays).
_WINDOW_PLACES = 3  # best places of a window handed to the tracker (matches, holds, lead-ins)
_RIVAL_PLACES = 10  # places of a window ranked for its margin (their other tracks are the rivals)
# With several speeds, while one speed's play is followed the others skip the model (`_followed`):
_GATED_BATCH = 16  # segments per stream and turn (the gate opens and closes this often)
_GATED_LOOKBACK_SECONDS = 12.0  # audio a waiting stream holds back at most, fingerprinted when it wakes
_FOLLOW_WINDOWS = 2  # a confirmed play is followed once it agreed in this many windows in a row
_UNFOLLOW_WINDOWS = 4  # ... until this many windows in a row do not agree
# The fingerprinting thread works on an item while the one before is searched, so it follows
# what the search decided after the item before that (the same on every run: `_Gate`).
_GATE_LAG = 2
# ... and when it wakes, the held segments from this long before the followed play's last
# agreeing window on are fingerprinted (the next play starts after that), the older ones not
_WAKE_MARGIN_SECONDS = 1.0

# The play tracker's names as they were imported from here.
_Candidate = Candidate


def _clock(seconds):
    seconds = max(float(seconds), 0.0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours)}:{int(minutes):02d}:{secs:04.1f}"


def format_detection(detection):
    """A readable timeline line: `0:01:02.0 - 0:02:31.5  track.wav  (from 0:00:30.5, score 0.81)`."""
    speed = f", speed {detection.speed:.3f}" if detection.speed is not None else ""
    return (
        f"{_clock(detection.start_s)} - {_clock(detection.end_s)}  {detection.track}  "
        f"(from {_clock(detection.track_start_s)}, score {detection.score:.2f}{speed})"
    )


# ------------------------------------------------------------------------ audio in


def read_blocks(path, sample_rate, block_seconds=30.0):
    """Float32 mono blocks of an audio file at `sample_rate`, decoded as they are needed."""
    from nnfp.audio.io import stream_audio

    return stream_audio(path, sample_rate, block_seconds=block_seconds)


def read_pcm_blocks(stream, rate, sample_rate, block_seconds=1.0, stop=None, stats=None):
    """Float32 mono blocks at `sample_rate` from raw 16-bit little-endian mono PCM at `rate`.

    Blocks are short (a live stream should not wait for 30 s of audio before it is read).

    Args:
        stream: a binary file object (`sys.stdin.buffer`).
        stop: optional `threading.Event`: once it is set the blocks end, with the samples
            read so far, within 0.1 s even while the stream sends nothing. The stream is
            then read through its file descriptor (`select`), never inside a blocking read:
            a thread blocked there would hold the stream's lock at interpreter exit.
        stats: optional dict; `n_bytes` and `head` (the first bytes) are kept in it, for
            `input_note`.
    """
    resampler = None
    if rate != sample_rate:
        from nnfp.audio.io import stream_resampler

        resampler = stream_resampler(rate, sample_rate)
    n_bytes = 2 * max(int(block_seconds * rate), 1)
    read = _stoppable_reader(stream, stop)
    pending = b""
    while True:
        chunk = read(n_bytes - len(pending))
        last = not chunk
        pending += chunk or b""
        if stats is not None and chunk:
            stats["n_bytes"] = stats.get("n_bytes", 0) + len(chunk)
            if len(stats.get("head", b"")) < _HEAD_BYTES:
                stats["head"] = (stats.get("head", b"") + chunk)[:_HEAD_BYTES]
        if len(pending) >= n_bytes or last:
            usable = len(pending) - len(pending) % 2
            block = np.frombuffer(pending[:usable], "<i2").astype(np.float32) / 32768.0
            pending = pending[usable:] if not last else b""
            if resampler is not None:
                block = resampler.resample_chunk(block, last=last)
            if len(block):
                yield block
        if last:
            return


def _stoppable_reader(stream, stop):
    """`read(n)`: up to `n` bytes of `stream`, `b""` at its end or once `stop` is set."""
    try:
        fd = stream.fileno() if stop is not None else None
    except (AttributeError, OSError, ValueError):  # io.BytesIO and the like: no descriptor
        fd = None
    if fd is None:
        return lambda n: b"" if stop is not None and stop.is_set() else stream.read(n)

    def read(n):
        while not stop.is_set():
            if select.select([fd], [], [], 0.1)[0]:
                return os.read(fd, n)
        return b""

    return read


_HEAD_BYTES = 12
# How files of common formats begin: given as `-`, they are read as raw PCM, header and all.
_FILE_SIGNATURES = [
    (b"RIFF", "a WAV file"),
    (b"ID3", "an MP3 file"),
    (b"fLaC", "a FLAC file"),
    (b"OggS", "an Ogg file"),
    (b"FORM", "an AIFF file"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM file"),
]


def input_note(stats, rate=None):
    """What is odd about the audio a recording gave, in words, or None.

    `stats` holds what `read_pcm_blocks` (`n_bytes`, `head`) and `monitor_stream`
    (`n_samples`, `peak`) kept in it; `rate`: the rate of PCM read with `read_pcm_blocks`,
    None for a file. Notes: empty input, a file's header on stdin, an odd byte count (not
    16-bit PCM), a file without samples, silence.
    """
    if rate is not None:
        pcm = f"expected raw 16-bit little-endian mono PCM at --rate {rate} Hz"
        n_bytes, head = stats.get("n_bytes", 0), stats.get("head", b"")
        if n_bytes == 0:
            return f"empty input; {pcm}"
        kind = next((kind for magic, kind in _FILE_SIGNATURES if head.startswith(magic)), None)
        if kind is None and head[4:8] == b"ftyp":
            kind = "an MP4/M4A file"
        if kind is not None:
            return (
                f"the input starts like {kind}, not raw PCM: its header was read as samples; pass the file's "
                f"name instead of -, or decode it first (ffmpeg -i FILE -f s16le -ac 1 -ar {rate} -)"
            )
        if n_bytes % 2:
            return f"an odd number of bytes, {n_bytes}: {pcm}"
    if not stats.get("n_samples"):
        return "the file holds no samples" if rate is None else None
    if stats.get("peak", 0.0) == 0.0:
        return "every sample is 0: silence"
    return None


def _until(stop, blocks):
    """`blocks`, ending after the first one read once `stop` is set."""
    iterator = iter(blocks)
    try:
        for block in iterator:
            yield block
            if stop.is_set():
                return
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # a decoder's file is closed now, not when collected
            close()


# ------------------------------------------------------------------------ windows


class _Monitor(PlayTracker):
    """A `PlayTracker` over the index: each segment's `k_probe` nearest DB rows are looked up
    once, as it arrives (`push`), and every window is searched with them and decided on
    `decision` (`nnfp.catalogue.identify.DECISIONS`) against `threshold`."""

    def __init__(
        self, db, threshold, window, step, max_gap, min_windows, tolerance, k_probe, seg_seconds, batch, speed=None,
        decision="score", rival_floor=0.0, lead_weight=LEAD_WEIGHT, sharpness_floor=None, min_span=0,
        vote_weight=0.0, sharpness_yield=None,
    ):
        super().__init__(db, window, step, max_gap, min_windows, tolerance, seg_seconds, batch, speed=speed,
                         min_span=min_span)
        self.rival_floor = rival_floor  # `Identifier.rival_floor` of a window
        self.lead_weight = lead_weight  # `Identifier.lead_weight`
        self.vote_weight = vote_weight  # `Identifier.vote_weight`
        self.sharpness_floor = sharpness_floor  # the calibration's, of a window (None: no floor)
        # the confidence from which a window's match needs no sharpness (`Identifier.sharpness_yield`,
        # raised by the off-speed margin at other speeds, as `threshold`; None: every match needs it)
        self.sharpness_yield = sharpness_yield
        self.decision = decision  # what `threshold` applies to (`nnfp.catalogue.identify.DECISIONS`)
        self.threshold = threshold
        self.k_probe = k_probe

    def push(self, first, fingerprints):
        # one faiss search per batch, of the segments that are not dead air (zeros)
        heard = np.flatnonzero(np.any(fingerprints, axis=1))
        if len(heard) == len(fingerprints):
            hits = self.db.neighbours(fingerprints, k_probe=self.k_probe)
        else:
            hits = np.full((len(fingerprints), self.db.probe_width(self.k_probe)), -1, np.int64)
            if len(heard):
                hits[heard] = self.db.neighbours(fingerprints[heard], k_probe=self.k_probe)
        super().push(first, fingerprints, hits)

    def search(self, w, query, hits):
        # Dead air (half the window or more in quiet segments, zero fingerprints) is nothing
        # playing: no place is heard, agrees with a play or holds it.
        quiet = np.count_nonzero(~query.any(axis=1))
        if self.decision in ("margin", "lead"):  # a window's confidence: its lead over any other track
            ranked = [] if 2 * quiet >= len(query) else self.db.search(query, hits=hits, n_results=_RIVAL_PLACES)
            places = ranked[:_WINDOW_PLACES]
            def same(place, other):  # the same recording under another name is no rival (remembered pairs too)
                similarity = window_similarity(self.db, place.segment_index, other.segment_index, len(query))
                return self.same_recording(place.track_id, place.offset_s, other.track_id, other.offset_s, similarity)

            leads = margins(self.db, ranked, len(query), self.rival_floor, self.decision, same, self.lead_weight)
            leads = leads[:_WINDOW_PLACES]
            # the votes of the window's segments, where they can decide (as `Identifier.rank_query`)
            leads = with_votes(leads, places, self.vote_weight, self.threshold,
                               lambda m: segment_votes(self.db, query, m.segment_index, m.track_id, hits))
            matches = [dataclasses.replace(m, confidence=lead)
                       for m, lead in zip(places, leads, strict=True) if lead >= self.threshold]
        else:
            places = [] if 2 * quiet >= len(query) else self.db.search(query, hits=hits, n_results=_WINDOW_PLACES)
            matches = [m for m in places if m.score >= self.threshold]
        # as `Identifier.sharp_enough`: a flat match is no match
        return places, sharp_matches(self.db, query, matches, self.sharpness_floor, self.sharpness_yield)


def _multi_speed(embedder, blocks, hop_samples, batch_size, stats, states, recording, max_gap_seconds, rate, stop):
    """`monitor_stream` over several speeds: one `_Monitor` per grid speed, each fed the stream
    resampled as if played at that speed (its times are then track-speed times: a recording
    time is its time / speed). The streams are fingerprinted in step (the one furthest behind
    in recording time goes next), so they hold little audio; while one speed's play is heard
    (`_followed`), the others skip the model and keep the last `_GATED_LOOKBACK_SECONDS` of
    their audio; once it is no longer heard, they fingerprint what they kept from
    `_WAKE_MARGIN_SECONDS` before its last agreeing window on. A play is reported once no stream
    can still find one overlapping it; of plays that share most of their stretch of
    recording, the one with the most evidence (mean score x length) is kept."""
    import itertools

    from nnfp.audio.io import stream_resampler

    rate_speeds = list(states)

    def counted(source):  # the recording's own samples, before any resampling
        for block in source:
            block = np.asarray(block, np.float32).reshape(-1)
            if stats is not None and len(block):
                stats["n_samples"] = stats.get("n_samples", 0) + len(block)
                stats["peak"] = max(stats.get("peak", 0.0), float(np.abs(block).max()))
            yield block

    copies = itertools.tee(counted(blocks), len(rate_speeds))

    def resampled(source, speed):
        if speed == 1.0:
            yield from source
            return
        resampler = stream_resampler(rate, rate * speed)
        for block in source:
            yield resampler.resample_chunk(np.asarray(block, np.float32))
        yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)

    step = min(batch_size, _GATED_BATCH)  # segments per stream and turn: the gate acts this often
    streams = {
        speed: iter_segments(resampled(copy, speed), embedder.segment_samples, hop_samples, step)
        for speed, copy in zip(rate_speeds, copies, strict=True)
    }
    hop_s = states[rate_speeds[0]].hop_s
    dim = states[rate_speeds[0]].db.dim
    lookback = int(round(_GATED_LOOKBACK_SECONDS / hop_s))
    gate = _Gate()  # (the speed followed, where to resume), decided below, read by in_step

    def in_step():
        # (speed, first, fingerprints) of every stream, the one furthest behind in recording
        # time first, then (speed, None, None) once a stream has ended. Runs in `read_ahead`'s
        # thread: the next batch is fingerprinted while this one is searched. While a play is
        # followed at one speed, the other streams' segments wait unfingerprinted `lookback`
        # segments long and then go out as dead air (zeros); once it is no longer heard, the
        # waiting segments from `resume` (recording seconds: shortly before its last agreeing
        # window) on are fingerprinted, so a play that began meanwhile is found from its start.
        ahead = dict.fromkeys(rate_speeds, 0.0)  # recording seconds cut per stream
        waiting = {speed: collections.deque() for speed in rate_speeds}  # (first, waveforms)
        live = set(rate_speeds)
        n_items = 0  # items yielded so far

        def fingerprinted(speed, first=None, windows=None, resume=None):
            # the segments waiting at `speed`, then these (if any), fingerprinted; those
            # starting before `resume` (recording seconds) go out as dead air
            held = waiting[speed]
            if windows is not None:
                held.append((first, windows))
            first, windows = held[0][0], np.concatenate([w for _, w in held])
            held.clear()
            skip = 0 if resume is None else int(np.clip(np.ceil(resume * speed / hop_s) - first, 0, len(windows)))
            out = np.zeros((len(windows), dim), np.float32)
            if skip < len(windows):
                out[skip:] = fingerprint_segments(embedder, windows[skip:], batch_size=step)
            return first, out

        def items(speed):
            # this stream's next items (none while its segments wait)
            try:
                first, windows = next(streams[speed])
            except StopIteration:
                live.discard(speed)
                if waiting[speed]:
                    yield speed, *fingerprinted(speed)
                yield speed, None, None
                return
            ahead[speed] = (first + len(windows)) * hop_s / speed
            following, resume = gate.get(n_items) or (None, 0.0)
            if following is None or following == speed:
                yield speed, *fingerprinted(speed, first, windows, resume if waiting[speed] else None)
                return
            held = waiting[speed]
            held.append((first, windows))
            while sum(len(w) for _, w in held) - len(held[0][1]) >= lookback:
                old_first, old = held.popleft()
                yield speed, old_first, np.zeros((len(old), dim), np.float32)

        while live:
            for item in items(min(live, key=lambda s: ahead[s])):
                n_items += 1
                yield item

    reached = dict.fromkeys(rate_speeds, 0.0)  # recording seconds searched per stream
    pending = []  # plays found, not yet reported
    reported = collections.deque(maxlen=16)  # (track, span) of the latest plays reported

    def evidence(play):
        return play.score * (play.end_s - play.start_s)

    def in_recording_time(play, speed):
        return dataclasses.replace(play, start_s=play.start_s / speed, end_s=play.end_s / speed)

    def may_replace(play):
        # A play still open at some speed over most of `play`'s stretch may replace it, if it
        # holds as much evidence so far, or is still agreeing after every stream has passed
        # `play`'s end by `max_gap_seconds` (it may grow). One that strayed with less evidence
        # holds nothing up: a stream that has nothing more to hear (stdin left open) keeps its
        # held candidates open for good.
        span = (play.start_s, play.end_s)
        for speed, state in states.items():
            for c in state.candidates:
                start = c.start_s / speed
                if not c.confirmed or not mostly_shared((start, c.latest * hop_s / speed), span):
                    continue
                end = (c.last + state.window) * hop_s / speed
                if float(np.mean(c.scores)) * (end - start) >= evidence(play) or end > play.end_s + max_gap_seconds:
                    return True
        return False

    def settle(final):
        frontier = min(reached.values())
        ready = [p for p in sorted(pending, key=lambda p: p.end_s)
                 if final or (p.end_s + max_gap_seconds < frontier and not may_replace(p))]
        for play in ready:
            pending.remove(play)
            reported.append((play.track, (play.start_s, play.end_s)))
        return ready

    def add(play):
        span = (play.start_s, play.end_s)
        if any(track == play.track and mostly_shared(span, other) for track, other in reported):
            return  # the same play, found at another speed once it was reported
        rivals = [p for p in pending if mostly_shared(span, (p.start_s, p.end_s))]
        if any(evidence(p) >= evidence(play) for p in rivals):
            return
        for p in rivals:
            pending.remove(p)
        pending.append(play)

    following, resume = None, 0.0
    try:
        for speed, first, fingerprints in read_ahead(in_step()):
            if first is None:  # this stream ended: its plays still open end here (cut short by a stop)
                reached[speed] = float("inf")
                cut_short = stop is not None and stop.is_set()
                for play in states[speed].windows(recording, final=True):
                    add(dataclasses.replace(in_recording_time(play, speed), cut_short=cut_short))
            else:
                states[speed].push(first, fingerprints)
                reached[speed] = (first + len(fingerprints)) * hop_s / speed
                for play in states[speed].windows(recording):
                    add(in_recording_time(play, speed))
                following = _followed(states, following)
                if following is not None:  # where the other speeds resume once it is no longer heard
                    resume = max(resume, _last_agreement(states[following]) * hop_s / following - _WAKE_MARGIN_SECONDS)
            gate.decide((following, resume))
            yield from sorted(settle(final=False), key=lambda p: p.start_s)
    finally:
        gate.close()
    yield from sorted(settle(final=True), key=lambda p: p.start_s)


class _Gate:
    """(The speed followed (`_followed`), where the other speeds resume) after each item
    `_multi_speed` searched, handed to the thread that fingerprints the items `_GATE_LAG`
    items later: what it fingerprints depends on the recording alone, not on how far ahead
    of the search the thread happens to be."""

    def __init__(self):
        self._values = collections.deque()  # after items taken, taken + 1, ...
        self._taken = 0  # items whose value the producer no longer needs
        self._condition = threading.Condition()
        self._closed = False

    def decide(self, value):
        """The value after the next item searched."""
        with self._condition:
            self._values.append(value)
            self._condition.notify_all()

    def close(self):
        """The search stopped: `get` waits no more."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def get(self, n_items):
        """The value after item `n_items - _GATE_LAG` (None before it), once it is decided."""
        k = n_items - _GATE_LAG
        if k < 0:
            return None
        with self._condition:
            while self._taken + len(self._values) <= k and not self._closed:
                self._condition.wait(0.1)
            while self._taken < k and self._values:
                self._values.popleft()
                self._taken += 1
            return self._values[0] if self._taken == k and self._values else None


def _followed(states, current):
    """The speed whose play the other speeds need not look for now, or None.

    A play is followed once it is confirmed (`PlayTracker.min_windows`) and agreed in each
    of the last `_FOLLOW_WINDOWS` windows of its stream, and until it has not agreed for
    `_UNFOLLOW_WINDOWS` windows: a track change, a talk-over or a noisy patch wakes the
    other speeds, which then fingerprint the seconds they let wait since shortly before its
    last agreeing window (`_multi_speed`, `_last_agreement`)."""
    def latest(state):  # its last window searched
        return state.next_window - state.step

    if current is not None:
        state = states[current]
        if any(c.windows[-1] > latest(state) - _UNFOLLOW_WINDOWS * state.step for c in _confirmed(state)):
            return current
    n = _FOLLOW_WINDOWS
    best, best_score = None, -np.inf
    for speed, state in states.items():
        for c in _confirmed(state):
            if len(c.windows) < n or c.windows[-n] < latest(state) - (n - 1) * state.step:
                continue  # not agreeing in each of the last n windows
            score = float(np.mean(c.scores[-n:]))
            if score > best_score:
                best, best_score = speed, score
    return best


def _confirmed(state):
    """The confirmed plays of a speed's tracker `state` (each has agreeing windows)."""
    return [c for c in state.candidates if c.confirmed and c.windows]


def _last_agreement(state):
    """The latest window (segment number of its start) in which a confirmed play of `state`
    agreed; 0 if none did."""
    return max((c.windows[-1] for c in _confirmed(state)), default=0)


def read_ahead(iterable, depth=1):
    """The items of `iterable`, computed up to `depth` items ahead in a thread of their own.

    The model and the decoders release the GIL, so the next batch is decoded and
    fingerprinted while this one is searched. An error of `iterable` is raised here, in
    order. Memory holds at most `depth + 1` items; once the consumer stops, the thread
    stops after the item it is computing.
    """
    items = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()
    end = object()

    def put(entry):
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterable:
                if not put((item, None)):
                    close = getattr(iterable, "close", None)
                    if close is not None:  # a generator's files are closed here, in its thread
                        close()
                    return
        except BaseException as error:  # handed to the consumer, which raises it
            put((end, error))
            return
        put((end, None))

    thread = threading.Thread(target=produce, name="nnfp-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def monitor_stream(
    identifier,
    blocks,
    recording="-",
    window_seconds=5.0,
    step_seconds=1.0,
    max_gap_seconds=30.0,
    min_windows=3,
    min_span_seconds=None,
    tolerance_seconds=1.0,
    min_score=None,
    batch_size=64,
    stop=None,
    stats=None,
    speeds="auto",
):
    """Detects the plays of catalogue tracks in a stream of audio blocks, as they end.

    Args:
        identifier: an `nnfp.catalogue.identify.Identifier` (its index, model and `k_probe`); build
            one from objects in memory with `Identifier(None, db=db, embedder=embedder)`.
        blocks: any iterable of float32 mono blocks at the index sample rate, of any sizes.
        recording: name reported in the detections.
        window_seconds: audio searched per window (a query of this length).
        step_seconds: recording time between window starts (a multiple of the hop).
        max_gap_seconds: a confirmed play survives this long without an agreeing window
            (talk-over, noise) and goes on if its track returns at the same alignment;
            longer gaps end it, unless its alignment stayed among the best places of
            the windows in between (held). A play is reported at most this long after it
            was last heard, unless another play starts first. Unconfirmed candidates
            last 10 s at most.
        min_windows: agreeing windows a play needs to be reported.
        min_span_seconds: recording time between the first and the last of them that a play
            needs; None: `window_seconds`, so that two of its windows share no audio (windows
            1 s apart hear mostly the same audio and agree by chance together: in broadcasts
            the false detections were 3-5 such windows; see docs/monitor.md).
        tolerance_seconds: how far a window's alignment (track time - recording time)
            may stray from its play's.
        min_score: window score threshold; None: `identifier.match_threshold(window_seconds)`
            (the index's calibrated threshold for a query of one window; a window heard at
            another speed than the catalogue's needs the calibration's off-speed margin
            more, `Identifier.off_speed_margin`).
        batch_size: segments fingerprinted per model call.
        stop: optional `threading.Event` (a signal handler sets it): once it is set, the
            stream ends after the block being read, the audio read so far is searched, and
            the plays still open are yielded with `cut_short=True`.
        stats: optional dict; `n_samples` (audio read, at the index rate) and `peak` are
            kept in it.
        speeds: playback speeds searched (`nnfp.catalogue.speeds`): `(lo, hi)` or
            `(lo, hi, step)` (default step `MONITOR_SPEED_STEP`); None: only the catalogue's
            speed; `"auto"` (default): `DEFAULT_MONITOR_SPEEDS` where `identifier` searches
            speeds (its calibration was fitted with a speed grid: the off-speed margin guards
            the extra chances), else only the catalogue's speed. The stream is resampled as if
            played at each grid speed and monitored at each; plays found at several speeds, or
            rival plays of one stretch, keep the one with the most evidence (score x length),
            and each reports its speed. Each speed costs a pass of the model, and a play is
            reported once every speed's stream has passed its end by `max_gap_seconds`.

    Yields:
        `Detection`s, each as soon as its play has ended (or the stream ended).
    """
    db = identifier.db
    hop_s = float(db.hop_seconds)
    sample_rate = identifier.sample_rate
    segment_samples = identifier.embedder.segment_samples
    seg_seconds = segment_samples / sample_rate

    def segments(seconds):  # whole segments of `seconds` of recording
        return max(int(round(seconds / hop_s)), 1)

    hop_samples = identifier.hop_samples
    window = max(n_segments(int(round(window_seconds * sample_rate)), segment_samples, hop_samples), 1)
    calibrated = min_score is None
    if min_score is None:
        min_score = identifier.match_threshold(window_seconds)

    # a window heard at another speed than the catalogue's needs the calibration's off-speed margin more
    off_margin = identifier.off_speed_margin(window_seconds) if calibrated else 0.0
    # ... and a window's match as sharp as the calibration's floor asks (`Identifier.sharp_enough`)
    sharpness_floor = identifier.sharpness_floor(window_seconds) if calibrated else None
    sharpness_yield = identifier.sharpness_yield(window_seconds) if calibrated else None

    span_seconds = window_seconds if min_span_seconds is None else float(min_span_seconds)
    min_span = segments(span_seconds) if span_seconds > 0 else 0  # in segments, as the tracker counts

    def state(speed=None):
        raise_by = off_margin if speed not in (None, 1.0) else 0.0  # heard at another speed: more is asked
        threshold = min_score + raise_by
        sure = None if sharpness_yield is None else sharpness_yield + raise_by
        return _Monitor(
            db, threshold, window, segments(step_seconds), segments(max_gap_seconds), int(min_windows),
            float(tolerance_seconds), identifier.k_probe, seg_seconds, int(batch_size), speed=speed,
            decision=identifier.decision, rival_floor=identifier.rival_floor(window_seconds),
            lead_weight=identifier.lead_weight, sharpness_floor=sharpness_floor,
            min_span=min_span, vote_weight=identifier.vote_weight, sharpness_yield=sure,
        )

    if stop is not None:
        blocks = _until(stop, blocks)
    if isinstance(speeds, str) and speeds == "auto":
        speeds = None if identifier.speeds is None else DEFAULT_MONITOR_SPEEDS
    if speeds is not None:
        grid = speed_grid(check_speeds(speeds), speeds[2] if len(speeds) == 3 else MONITOR_SPEED_STEP)
        yield from _multi_speed(
            identifier.embedder, blocks, hop_samples, int(batch_size), stats, {s: state(s) for s in grid},
            recording, max_gap_seconds, sample_rate, stop,
        )
        return
    state = state()
    stream = iter_fingerprints(identifier.embedder, blocks, hop_samples, int(batch_size), stats)
    for first, fingerprints in read_ahead(stream):
        state.push(first, fingerprints)
        yield from state.windows(recording)
    cut_short = stop is not None and stop.is_set()
    for play in state.windows(recording, final=True):
        yield dataclasses.replace(play, cut_short=True) if cut_short else play
