"""Every catalogue track played in a long recording or a live stream, with its start and end.

The recording is fingerprinted once, streaming, on the index hop; windows of a few
seconds slide over the stream of fingerprints and are searched in the index. A *play*
is a run of windows agreeing on one track whose offset advances one second per second
of recording (a constant `track time - recording time`). Plays survive short dropouts
(talk-over, a noisy patch), and longer ones while their alignment stays among the
index's best places for a window at any score (`_Monitor._hold`); a play confirmed in a
noisy patch starts where its alignment was already the best place (`_Monitor._lead_in`).
Plays end when another track is confirmed (track changes and crossfades) or after
`max_gap_seconds` without being heard, and are emitted as soon as they end; a play
inside another track's play that goes on around it is dropped (`_Monitor._nested`), and
one recording held under two names is one play (`_Monitor._same_audio`). Start and end
are then refined to the hop from the similarity of each recording segment to the
aligned track segment.

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

from nnfp.audio.segments import n_segments
from nnfp.catalogue.fingerprint import iter_fingerprints
from nnfp.catalogue.identify import margins
from nnfp.catalogue.speeds import check_speeds, speed_grid
from nnfp.defaults import MONITOR_SPEED_STEP

__all__ = [
    "Detection",
    "format_detection",
    "input_note",
    "monitor_stream",
    "read_ahead",
    "read_blocks",
    "read_pcm_blocks",
]

_RIVAL_PLACES = 10  # places of a window ranked for its margin (their other tracks are the rivals)
_LIVE_CANDIDATES = 64  # open candidate plays kept at once (the oldest unconfirmed go first)
_STEP_MARGIN = 0.1  # aligned-similarity drop that marks a play's boundary
_CANDIDATE_GAP_SECONDS = 10.0  # an unconfirmed candidate lasts this long without an agreeing window
# Mean similarity of two tracks' aligned DB fingerprints over a window above which they hold
# the same recording there (`_Monitor._same_audio`). In the 68-track held-out index, windows of two
# different tracks reached at most 0.80 (285k random pairs); a game's `menu` and the
# `menu_enhanced` it was cut from: median 0.97.
_SAME_AUDIO = 0.9


@dataclasses.dataclass(frozen=True)
class Detection:
    """One play of a catalogue track in a recording.

    Attributes:
        recording: the recording's name (`"-"` for stdin).
        start_s, end_s: where the play starts and ends in the recording, in seconds.
        track: the track's relative path in the index.
        track_start_s: the track position playing at `start_s`.
        score: mean sequence score of the play's windows (mean cosine similarity).
        cut_short: the monitor was stopped while the play was still open (`monitor_stream`'s
            `stop`): it may have gone on after `end_s`. In `as_dict` only when True.
        speed: the speed the track plays at (1.03: 3 % fast), when the monitor searched
            several speeds (`monitor_stream`'s `speeds`); None otherwise (not in `as_dict`).
    """

    recording: str
    start_s: float
    end_s: float
    track: str
    track_start_s: float
    score: float
    cut_short: bool = False
    speed: float | None = None

    def as_dict(self):
        out = {
            "recording": self.recording,
            "start_s": round(self.start_s, 2),
            "end_s": round(self.end_s, 2),
            "track": self.track,
            "track_start_s": round(self.track_start_s, 2),
            "score": round(self.score, 4),
        }
        if self.speed is not None:
            out["speed"] = round(self.speed, 4)
        if self.cut_short:
            out["cut_short"] = True
        return out


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


# -------------------------------------------------------------------------- plays


@dataclasses.dataclass
class _Candidate:
    """A run of windows agreeing on one track and one alignment."""

    track_id: int
    path: str
    delta: float  # track time - recording time, seconds
    first: int  # first agreeing window (segment number of its start)
    last: int  # last agreeing window
    scores: list
    deltas: list
    start_s: float  # refined start in the recording
    confirmed: bool = False
    heard: int = -1  # last window agreeing, or holding it (`_Monitor._hold`)
    windows: list = dataclasses.field(default_factory=list)  # the agreeing windows, as `deltas`

    @property
    def latest(self):
        """The last window the candidate was heard in, agreeing or held."""
        return max(self.last, self.heard)


class _Monitor:
    def __init__(
        self, db, threshold, window, step, max_gap, min_windows, tolerance, k_probe, seg_seconds, batch, speed=None,
        decision="score", rival_floor=0.0,
    ):
        self.db = db
        self.rival_floor = rival_floor  # `Identifier.rival_floor` of a window
        self.decision = decision  # what `threshold` applies to (`nnfp.catalogue.identify.DECISIONS`)
        self.speed = speed  # the speed this stream was resampled from (its times are the track's)
        self.hop_s = float(db.hop_seconds)
        self.threshold = threshold
        self.window, self.step, self.max_gap = window, step, max_gap  # in segments
        # Unconfirmed candidates get no longer than confirmed plays: a longer dropout allowance
        # for plays must not give chance agreements in unknown music more time to add up.
        self.candidate_gap = min(max_gap, max(int(round(_CANDIDATE_GAP_SECONDS / self.hop_s)), 1))
        self.min_windows, self.tolerance, self.k_probe = min_windows, tolerance, k_probe
        self.seg_seconds = seg_seconds
        self.candidates = []
        # (segment number, fingerprint, its k_probe nearest DB rows): the recent past. Each
        # segment is looked up once, when it arrives, and its rows serve every window holding it.
        self.ring = collections.deque()
        # Segments the windows of one batch and their refinements may look back at.
        self.keep = batch + max_gap + 4 * window + 8
        self.newest = -1
        tracks = db.segment_track
        boundaries = np.flatnonzero(tracks[1:] != tracks[:-1]) + 1
        begins = np.concatenate([[0], boundaries])
        ends = np.concatenate([boundaries, [len(tracks)]])
        self.rows_of = {int(tracks[b]): (int(b), int(e)) for b, e in zip(begins, ends, strict=True)}
        self.next_window = 0
        # (window, its best places at any score) of the last max_gap of windows: `_lead_in`.
        self.history = collections.deque(maxlen=max(max_gap // max(step, 1), 1) + 1)
        self.emitted = collections.deque(maxlen=16)  # (track, span, windows, first, last) of recent plays

    # -- fingerprints ------------------------------------------------------

    def push(self, first, fingerprints):
        hits = self.db.neighbours(fingerprints, k_probe=self.k_probe)  # one faiss search per batch
        for i, row in enumerate(fingerprints):
            self.ring.append((first + i, row, hits[i]))
        self.newest = first + len(fingerprints) - 1
        while self.ring and self.ring[0][0] < self.newest - self.keep:
            self.ring.popleft()

    def _segments(self, lo, hi):
        """Segment numbers, fingerprints and DB neighbours of segments lo..hi (inclusive) still held."""
        base = self.ring[0][0]
        picked = [self.ring[i - base] for i in range(max(lo, base), min(hi, self.newest) + 1)]
        if not picked:
            return np.zeros(0, np.int64), None, None
        numbers, fingerprints, hits = zip(*picked, strict=True)
        return np.array(numbers), np.stack(fingerprints), np.stack(hits)

    def _track_rows(self, candidate, numbers):
        """DB rows of `candidate`'s track aligned with recording segments `numbers`, and
        which of them lie inside the track."""
        begin, end = self.rows_of[candidate.track_id]
        rows = begin + np.round((numbers * self.hop_s + candidate.delta) / self.hop_s).astype(np.int64)
        return rows, (rows >= begin) & (rows < end)

    def _at_alignment(self, candidate, match, t):
        """`match` (of a window starting at recording time `t`) is `candidate`'s track at
        its alignment, within the tolerance."""
        return match.track_id == candidate.track_id and abs(match.offset_s - t - candidate.delta) <= self.tolerance

    def _aligned_similarity(self, candidate, lo, hi):
        """Similarity of recording segments lo..hi to the track segments aligned with them.

        Only segments whose aligned track position lies inside the track are returned: a
        play cannot start before its track does or outlast it, and a made-up score for
        those segments would be the largest step in the fit and pull the boundary onto
        the track's edge (a track restarted after a jingle was cut 4.75 s early).
        """
        numbers, query, _ = self._segments(lo, hi)
        if query is None:
            return numbers, np.zeros(0)
        rows, inside = self._track_rows(candidate, numbers)
        numbers, rows, query = numbers[inside], rows[inside], query[inside]
        sims = np.einsum("nd,nd->n", np.asarray(self.db.embeddings[rows], np.float32), query)
        return numbers, sims

    @staticmethod
    def _step(sims):
        """Best two-level fit of `sims`: (first index of the right part, left mean - right mean)."""
        if len(sims) < 2:
            return 0, 0.0
        left = np.cumsum(sims)[:-1]
        k = np.arange(1, len(sims))
        right = sims.sum() - left
        # Minimising the squared error of a step = maximising this between-part term.
        gain = left**2 / k + right**2 / (len(sims) - k)
        best = int(np.argmax(gain))
        return best + 1, float(left[best] / k[best] - right[best] / (len(sims) - k[best]))

    def _refine_start(self, candidate):
        numbers, sims = self._aligned_similarity(candidate, candidate.first - self.window, candidate.first + self.window - 1)
        if not len(sims):
            return candidate.first * self.hop_s
        split, drop = self._step(sims)
        if drop > -_STEP_MARGIN:  # no rise: the play starts with the region (stream or track start)
            split = 0
        b = numbers[split]
        if b == 0:
            return 0.0
        # A segment is counted as in the play once half of it is: unbiased to +-hop/2.
        return b * self.hop_s + self.seg_seconds / 2 - self.hop_s / 2

    def _refine_end(self, candidate):
        numbers, sims = self._aligned_similarity(candidate, candidate.last, candidate.last + 2 * self.window)
        if not len(sims):
            return candidate.last * self.hop_s + self.seg_seconds
        split, drop = self._step(sims)
        if drop < _STEP_MARGIN:  # no fall: the play lasts to the region's end (stream or track end)
            split = len(sims)
        e = numbers[max(split - 1, 0)]
        return e * self.hop_s + self.seg_seconds / 2 + self.hop_s / 2

    def _span(self, candidate):
        """Recording time from the candidate's start to the end of its last agreeing window."""
        return candidate.start_s, (candidate.last + self.window) * self.hop_s

    @staticmethod
    def _mostly_shared(a, b):
        """Spans `a` and `b` share at least half of the shorter one."""
        shared = min(a[1], b[1]) - max(a[0], b[0])
        return shared >= 0.5 * max(min(a[1] - a[0], b[1] - b[0]), 1e-9)

    def _overlap(self, a, b):
        """Same track (or the same recording under another name, `_same_audio`) over mostly
        the same stretch of recording: rival alignments of one play (bars that repeat inside
        the track), not two plays of it (those follow each other)."""
        if not self._mostly_shared(self._span(a), self._span(b)):
            return False
        if a.track_id == b.track_id:
            return True
        return any(self._same_audio(a, b.track_id, w * self.hop_s + b.delta, w)
                   for w in {max(a.first, b.first), min(a.last, b.last)})

    def _yield_to_rival(self, candidate):
        """True when a live rival alignment of `candidate` holds at least as many agreeing
        windows; the rival then starts where `candidate` did, if earlier (one play)."""
        n = len(candidate.scores)
        for rival in self.candidates:
            if rival is not candidate and rival.confirmed and self._overlap(candidate, rival) and len(rival.scores) >= n:
                rival.start_s = min(rival.start_s, candidate.start_s)
                return True
        return False

    def _nested(self, candidate):
        """True when another track's play agreed both before and after all of `candidate`.

        That play went on through it at one alignment, so its track was heard all along and
        `candidate` is a chance match in a noisy patch of it (in a broadcast, 5 windows at
        score 0.67 inside a play held through 30 s of 5 dB traffic noise), not a play.
        """
        plays = [(c.track_id, c.first, c.last) for c in self.candidates if c.confirmed and c is not candidate]
        plays += [(track, first, last) for track, _, _, first, last in self.emitted]
        return any(track != candidate.track_id and first < candidate.first and last > candidate.last
                   for track, first, last in plays)

    def _emit(self, candidate, recording, successor=None):
        """Yields the finished play unless a rival alignment of it holds more agreeing windows
        or it lies inside another play (`_nested`)."""
        if self._yield_to_rival(candidate) or self._nested(candidate):
            return
        n = len(candidate.scores)
        span = self._span(candidate)
        if any(track == candidate.track_id and count >= n and self._mostly_shared(span, other)
               for track, other, count, _, _ in self.emitted):
            return
        self.emitted.append((candidate.track_id, span, n, candidate.first, candidate.last))
        yield self._finish(candidate, recording, successor)

    def _finish(self, candidate, recording, successor=None):
        end = self._refine_end(candidate)
        if successor is not None and candidate.start_s < successor.start_s < end:
            # A crossfade: both tracks are heard in between; the boundary is its middle.
            end = successor.start_s = (successor.start_s + end) / 2
        end = max(end, candidate.start_s + self.hop_s)
        delta = float(np.median(candidate.deltas))
        return Detection(
            recording=recording,
            start_s=float(candidate.start_s),
            end_s=float(end),
            track=candidate.path,
            track_start_s=float(max(candidate.start_s + delta, 0.0)),
            score=float(np.mean(candidate.scores)),
            speed=self._play_speed(candidate),
        )

    def _play_speed(self, candidate):
        """The speed of a play: the stream's, corrected by the drift of its alignment (a track
        played 1 % faster than the stream's speed gains 0.01 s of track time per second)."""
        if self.speed is None:
            return None
        times = np.asarray(candidate.windows, np.float64) * self.hop_s
        if len(times) < 3 or np.ptp(times) < 10.0:
            return self.speed
        slope = np.polyfit(times, np.asarray(candidate.deltas, np.float64), 1)[0]
        return float(self.speed * (1.0 + np.clip(slope, -0.05, 0.05)))

    # -- windows -----------------------------------------------------------

    def windows(self, recording, final=False):
        """Searches every window now complete; yields the plays that ended."""
        while self.next_window + self.window - 1 <= self.newest:
            yield from self._window(self.next_window, recording)
            self.next_window += self.step
        if final:
            self.candidates = [c for c in self.candidates if c.confirmed]
            # Rival alignments of one play yield to the one with the most windows (fewest
            # first); the rest are reported in the order they started.
            for candidate in sorted(self.candidates, key=lambda c: len(c.scores)):
                if self._yield_to_rival(candidate):
                    self.candidates.remove(candidate)
            for candidate in sorted(self.candidates, key=lambda c: c.start_s):
                self.candidates.remove(candidate)
                yield from self._emit(candidate, recording)

    def _agreeing(self, match, delta, exclude=(), w=None):
        """The candidate that `match` continues: its track at its alignment or, given the
        window `w`, a confirmed play of another track holding the same recording there."""
        for candidate in self.candidates:
            if (candidate.track_id == match.track_id and abs(candidate.delta - delta) <= self.tolerance
                    and candidate not in exclude):
                return candidate
        if w is not None:
            for candidate in self.candidates:
                if (candidate.confirmed and candidate.track_id != match.track_id and candidate not in exclude
                        and self._same_audio(candidate, match.track_id, match.offset_s, w)):
                    return candidate
        return None

    def _same_audio(self, candidate, track_id, offset_s, w):
        """True when the index holds the same recording in track `track_id` from `offset_s`
        (window `w`'s start) as at `candidate`'s alignment over window `w`.

        A catalogue may hold one recording under two names (an album track and its single,
        a cut of a longer piece). Both are the index's best places in turn and no system
        can tell which was played, so the play keeps the name it was found under instead
        of breaking into pieces at every change.

        The two tracks' rows need not be on one grid: the other track's rows are compared
        one row either way and half a row either way (normalised mixes of neighbouring
        rows, as `FingerprintDB.interpolated_scores`); the best mean similarity counts.
        """
        rows, inside = self._track_rows(candidate, np.arange(w, w + self.window))
        other_begin, other_end = self.rows_of[track_id]
        start = other_begin + int(round(offset_s / self.hop_s))
        # One row either way must stay in the other track (its last row: other_end - 1).
        if not inside.all() or start - 1 < other_begin or start + self.window >= other_end:
            return False
        mine = np.asarray(self.db.embeddings[rows], np.float32)
        starts = np.array([start - 1, start, start + 1])
        best = max(self.db.sequence_scores(mine, starts).max(), self.db.interpolated_scores(mine, starts[:2], 0.5).max())
        return best >= _SAME_AUDIO

    @staticmethod
    def _extend(candidate, w, match, delta):
        candidate.last = w
        candidate.scores.append(match.score)
        candidate.deltas.append(delta)
        candidate.windows.append(w)
        candidate.delta = float(np.median(candidate.deltas[-9:]))

    def _open(self, w, match):
        delta = match.offset_s - w * self.hop_s
        candidate = _Candidate(match.track_id, match.path, delta, w, w, [match.score], [delta], 0.0, windows=[w])
        candidate.start_s = self._refine_start(candidate)
        self.candidates.append(candidate)
        if len(self.candidates) > _LIVE_CANDIDATES:
            self.candidates.remove(min(self.candidates, key=lambda c: (c.confirmed, c.last)))
        return candidate

    def _hold(self, w, places, t, busy):
        """Confirmed plays whose alignment is among the window's best places (at any score)
        are still heard (talk-over, a loud noisy patch): they go on without a new score, and
        another play confirmed meanwhile does not end them. Their boundaries and `first`/`last`
        stay those of agreeing windows: in a small index a place is often among the best 3 by
        chance, so a hold keeps a play open longer but never moves its end.

        The calibrated threshold guards a choice among every place of the index; this is
        one place chosen beforehand. In 3 h broadcasts, the alignment of the play before
        was never among the best 3 places of a window of the unknown music after it
        (0 of 2,442 windows), and it was there in 742 of the 897 windows of plays below
        the threshold or at another place.
        """
        for candidate in self.candidates:
            if candidate.confirmed and candidate.latest < w and not any(candidate is b for b in busy):
                if any(self._at_alignment(candidate, m, t) for m in places):
                    candidate.heard = w

    def _lead_in(self, candidate):
        """Moves a newly confirmed play's start back over the windows before its first
        agreeing one whose best place (at any score) was its alignment.

        A play that begins in a noisy patch is often the index's best place for many
        windows before one clears the threshold (20 such windows, 20 s, in a 3 h
        broadcast); it began with them. The walk stops after a window's length of
        windows with another best place (the play before, unknown music) or at the
        oldest window kept (`max_gap` back); the start is then refined from there.
        """
        first, misses = candidate.first, 0
        for w, places in reversed(self.history):
            if w >= candidate.first:
                continue
            if places and self._at_alignment(candidate, places[0], w * self.hop_s):
                first, misses = w, 0
            else:
                misses += self.step
                if misses > self.window:
                    break
        if first < candidate.first:
            candidate.first = first
            candidate.start_s = self._refine_start(candidate)

    def _window(self, w, recording):
        _, query, hits = self._segments(w, w + self.window - 1)
        # Dead air (half the window or more in quiet segments, zero fingerprints) is nothing
        # playing: no place is heard, agrees with a play or holds it.
        quiet = np.count_nonzero(~query.any(axis=1))
        if self.decision == "margin":  # a window's confidence: its lead over any other track
            ranked = [] if 2 * quiet >= len(query) else self.db.search(query, hits=hits, n_results=_RIVAL_PLACES)
            places = ranked[:3]
            leads = margins(self.db, ranked, len(query), self.rival_floor)[:3]
            matches = [m for m, lead in zip(places, leads, strict=True) if lead >= self.threshold]
        else:
            places = [] if 2 * quiet >= len(query) else self.db.search(query, hits=hits, n_results=3)
            matches = [m for m in places if m.score >= self.threshold]
        t = w * self.hop_s
        self.history.append((w, places))
        extended, used = None, None
        for match in matches:  # the best match that continues a candidate extends it
            extended = self._agreeing(match, match.offset_s - t, w=w)
            if extended is not None:
                same_track = extended.track_id == match.track_id
                self._extend(extended, w, match, match.offset_s - t if same_track else extended.delta)
                used = match
                break
        if extended is None and matches:
            extended, used = self._open(w, matches[0]), matches[0]
        # The same track at other alignments (its bars repeat) is followed too, so that the
        # alignment holding the play longest wins when the rivals are settled (`_emit`).
        rivals = []
        for match in matches:
            if extended is None or match is used or match.track_id != extended.track_id:
                continue
            delta = match.offset_s - t
            if abs(delta - extended.delta) <= self.tolerance:
                continue  # the same alignment, found again a little apart
            rival = self._agreeing(match, delta, exclude=(extended, *rivals))
            if rival is None:
                rival = self._open(w, match)
            else:
                self._extend(rival, w, match, delta)
            rivals.append(rival)
        self._hold(w, places, t, busy=(extended, *rivals))
        for rival in rivals:
            if not rival.confirmed and len(rival.scores) >= self.min_windows:
                rival.confirmed = True
        if extended is not None and not extended.confirmed and len(extended.scores) >= self.min_windows:
            extended.confirmed = True
            self._lead_in(extended)
            # A newly confirmed play ends the plays heard before it (track change, crossfade).
            for other in sorted(self.candidates, key=lambda c: c.start_s):
                if other is not extended and other.latest < extended.last:
                    if other.confirmed and self._overlap(other, extended):
                        continue  # rival alignments of one play: settled when one of them ends
                    self.candidates.remove(other)
                    if other.confirmed:
                        yield from self._emit(other, recording, successor=extended)
        for candidate in sorted(self.candidates, key=lambda c: c.start_s):
            if w - candidate.latest > (self.max_gap if candidate.confirmed else self.candidate_gap):
                self.candidates.remove(candidate)
                if candidate.confirmed:
                    yield from self._emit(candidate, recording)


def _multi_speed(embedder, blocks, hop_samples, batch_size, stats, states, recording, max_gap_seconds, rate, stop):
    """`monitor_stream` over several speeds: one `_Monitor` per grid speed, each fed the stream
    resampled as if played at that speed (its times are then track-speed times: a recording
    time is its time / speed). The streams are fingerprinted in step (the one furthest behind
    in recording time goes next), so they hold little audio. A play is reported once no
    stream can still find one overlapping it; of plays that share most of their stretch
    of recording, the one with the most evidence (mean score x length) is kept."""
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

    streams = {
        speed: iter_fingerprints(
            embedder, resampled(copy, speed), hop_samples, batch_size
        )
        for speed, copy in zip(rate_speeds, copies, strict=True)
    }
    hop_s = states[rate_speeds[0]].hop_s
    reached = dict.fromkeys(rate_speeds, 0.0)  # recording seconds fingerprinted per stream
    pending = []

    def in_recording_time(play, speed):
        return dataclasses.replace(play, start_s=play.start_s / speed, end_s=play.end_s / speed)

    def settle(final):
        frontier = min(reached.values())
        ready = []
        for play in sorted(pending, key=lambda p: p.end_s):
            span = (play.start_s, play.end_s)
            open_elsewhere = any(  # a play still open over most of this stretch may replace it
                c.confirmed and _Monitor._mostly_shared((c.start_s / speed, c.latest * hop_s / speed), span)
                for speed, st in states.items() for c in st.candidates
            )
            if final or (play.end_s + max_gap_seconds < frontier and not open_elsewhere):
                ready.append(play)
        for play in ready:
            pending.remove(play)
        return ready

    def add(play):
        def evidence(p):
            return p.score * (p.end_s - p.start_s)

        span = (play.start_s, play.end_s)
        rivals = [p for p in pending if _Monitor._mostly_shared(span, (p.start_s, p.end_s))]
        if any(evidence(p) >= evidence(play) for p in rivals):
            return
        for p in rivals:
            pending.remove(p)
        pending.append(play)

    live = set(rate_speeds)
    while live:
        speed = min(live, key=lambda s: reached[s])
        try:
            first, fingerprints = next(streams[speed])
        except StopIteration:
            live.discard(speed)
            for play in states[speed].windows(recording, final=True):
                add(in_recording_time(play, speed))
            continue
        states[speed].push(first, fingerprints)
        reached[speed] = (first + len(fingerprints)) * hop_s / speed
        for play in states[speed].windows(recording):
            add(in_recording_time(play, speed))
        yield from sorted(settle(final=False), key=lambda p: p.start_s)
    cut_short = stop is not None and stop.is_set()
    for play in sorted(settle(final=True), key=lambda p: p.start_s):
        yield dataclasses.replace(play, cut_short=True) if cut_short else play


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
    tolerance_seconds=1.0,
    min_score=None,
    batch_size=64,
    stop=None,
    stats=None,
    speeds=None,
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
        tolerance_seconds: how far a window's alignment (track time - recording time)
            may stray from its play's.
        min_score: window score threshold; None: `identifier.match_threshold(window_seconds)`
            (the index's calibrated threshold for a query of one window).
        batch_size: segments fingerprinted per model call.
        stop: optional `threading.Event` (a signal handler sets it): once it is set, the
            stream ends after the block being read, the audio read so far is searched, and
            the plays still open are yielded with `cut_short=True`.
        stats: optional dict; `n_samples` (audio read, at the index rate) and `peak` are
            kept in it.
        speeds: playback speeds searched (`nnfp.catalogue.speeds`): `(lo, hi)` or
            `(lo, hi, step)` (default step `MONITOR_SPEED_STEP`); None: only the catalogue's
            speed. The stream is resampled as if played at each grid speed and monitored at
            each; plays found at several speeds, or rival plays of one stretch, keep the
            one with the most evidence (score x length), and each reports its speed.

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
    if min_score is None:
        min_score = identifier.match_threshold(window_seconds)

    def state(speed=None):
        return _Monitor(
            db, min_score, window, segments(step_seconds), segments(max_gap_seconds), int(min_windows),
            float(tolerance_seconds), identifier.k_probe, seg_seconds, int(batch_size), speed=speed,
            decision=identifier.decision, rival_floor=identifier.rival_floor(window_seconds),
        )

    if stop is not None:
        blocks = _until(stop, blocks)
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
