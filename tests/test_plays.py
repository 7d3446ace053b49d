"""`nnfp.catalogue.plays`: the play tracker driven on constructed streams.

A database of random unit vectors (tracks of 200 rows, hop 0.5 s), a recording whose
fingerprints are copies of the rows of the tracks it plays (random vectors elsewhere: unknown
audio), and each window's places scripted from what it covers: a track covering 5 or more of a
window's 9 segments is a place, scored 0.9 x the fraction covered. With 1 s segments on a 0.5 s hop,
a play of recording segments b..e has its boundaries at b x 0.5 + 0.25 and e x 0.5 + 0.75 s
(a segment counts once half of it is in the play).
"""

import dataclasses

import numpy as np
import pytest

from nnfp.catalogue.plays import _SAME_AUDIO_REMEMBERED, PlayTracker
from nnfp.defaults import SAME_AUDIO
from nnfp.store.db import FingerprintDB
from nnfp.store.search import Match

D = 64
HOP = 0.5
ROWS = 200  # rows per track
WINDOW = 9  # segments per window (5 s)
A, B, C, LOOP, CUT = range(5)
PATHS = ["a.wav", "b.wav", "c.wav", "loop.wav", "a_cut.wav"]


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _db(cut_is_a=True, remastered=None):
    """a, b, c: random tracks; loop: its first 30 rows come back at rows 30-59 (repeated bars);
    a_cut: a from row 40 on (the same recording under another name), or random rows;
    `remastered=(lo, hi)`: a_cut's rows lo..hi-1 are another mix of a's (cosine 0.6 with them)."""
    rng = np.random.default_rng(0)
    rows = [_unit(rng.standard_normal((ROWS, D))) for _ in range(4)]
    rows[LOOP][30:60] = rows[LOOP][:30]
    rows.append(rows[A][40:].copy() if cut_is_a else _unit(rng.standard_normal((ROWS - 40, D))))
    if remastered:
        lo, hi = remastered
        other = _unit(rng.standard_normal((hi - lo, D)))
        other -= np.sum(other * rows[CUT][lo:hi], axis=1, keepdims=True) * rows[CUT][lo:hi]  # orthogonal to a
        rows[CUT][lo:hi] = _unit(0.6 * rows[CUT][lo:hi] + 0.8 * _unit(other))
    tracks = [{"track_id": i, "path": PATHS[i], "duration_s": HOP * len(r) + 0.5} for i, r in enumerate(rows)]
    return FingerprintDB.build(
        np.concatenate(rows), np.concatenate([np.full(len(r), i, np.int32) for i, r in enumerate(rows)]),
        np.concatenate([HOP * np.arange(len(r), dtype=np.float32) for r in rows]), tracks,
        hop_seconds=HOP, index_type="flat", threads=1,
    )


@pytest.fixture(scope="module")
def db():
    return _db()


def _begin(db, track):
    return int(np.flatnonzero(db.segment_track == track)[0])


def _recording(db, n, stretches, seed=1):
    """(n, D) fingerprints: random vectors except where `stretches` `(first, last, track, row)` play
    `track` from its row `row` over recording segments first..last (a crossfade sums both)."""
    mix = np.zeros((n, D), np.float32)
    for first, last, track, row in stretches:
        start = _begin(db, track) + row
        mix[first : last + 1] += db.embeddings[start : start + last - first + 1]
    unknown = ~mix.any(axis=1)
    mix[unknown] = np.random.default_rng(seed).standard_normal((int(unknown.sum()), D))
    return _unit(mix)


def _place(db, track, row, score):
    return Match(track, PATHS[track], row * HOP, score, _begin(db, track) + row)


def _covering(db, stretches, w):
    """The places of window `w` (segments w..w+8): each stretch covering 5 or more of them, at
    its alignment, scored 0.9 x the fraction covered; best first."""
    places = []
    for first, last, track, row in stretches:
        covered = min(last, w + WINDOW - 1) - max(first, w) + 1
        if 2 * covered > WINDOW:
            places.append(_place(db, track, row + w - first, 0.9 * covered / WINDOW))
    return sorted(places, key=lambda m: -m.score)


class Scripted(PlayTracker):
    """A tracker whose windows' places come from `script(w)`; matches: places scoring >= 0.45."""

    def __init__(self, db, script, **settings):
        settings = {"window": WINDOW, "step": 2, "max_gap": 60, "min_windows": 3, "tolerance": 1.0,
                    "seg_seconds": 1.0, "batch": 64, **settings}
        super().__init__(db, **settings)
        self.script = script

    def search(self, w, query, hits):
        assert query.shape == (WINDOW, D) and hits is None
        places = self.script(w)
        return places, [m for m in places if m.score >= 0.45]


def _plays(tracker, fingerprints):
    """The detections of a stream pushed 64 segments at a time, as `monitor_stream` does."""
    plays = []
    for first in range(0, len(fingerprints), 64):
        tracker.push(first, fingerprints[first : first + 64])
        plays += tracker.windows("rec")
    return plays + list(tracker.windows("rec", final=True))


def _summary(plays):
    return [(p.track, p.start_s, p.end_s, p.track_start_s) for p in plays]


def test_a_clean_play(db):
    # a from row 40 (20 s) over recording segments 20..99 (alignment +10 s), unknown audio around it.
    stretches = [(20, 99, A, 40)]
    plays = _plays(Scripted(db, lambda w: _covering(db, stretches, w)), _recording(db, 130, stretches))
    assert _summary(plays) == [("a.wav", 10.25, 50.25, 20.25)]
    # Windows 16..94: 5, 7, 9 (x 36), 8 and 6 of 9 segments covered.
    assert plays[0].score == pytest.approx((0.5 + 0.7 + 36 * 0.9 + 0.8 + 0.6) / 40)
    assert plays[0].speed is None and not plays[0].cut_short and plays[0].recording == "rec"


@pytest.mark.parametrize(
    ("gap", "expected"),
    [
        (16, [("a.wav", 10.25, 78.25, 20.25)]),  # 9 s without a window of a (w 56..70): one play
        (40, [("a.wav", 10.25, 30.25, 20.25), ("a.wav", 50.25, 90.25, 60.25)]),  # 21 s: two plays
    ],
)
def test_a_gap_shorter_than_max_gap_is_one_play_a_longer_one_two(db, gap, expected):
    # a at one alignment (+10 s) before and after `gap` segments of unknown audio; max_gap 10 s.
    stretches = [(20, 59, A, 40), (60 + gap, 139 + gap, A, 80 + gap)]
    tracker = Scripted(db, lambda w: _covering(db, stretches, w), max_gap=20)
    assert _summary(_plays(tracker, _recording(db, 170 + gap, stretches))) == expected


def test_a_crossfade_ends_the_play_before_in_its_middle(db):
    # a (alignment +10 s) over 20..79, b from row 30 (alignment -20 s) over 70..149: both are
    # heard over 70..79 (35-40.5 s). b is confirmed once a is no longer a place (window 80) and
    # ends a; each refined boundary lies in the crossfade, the reported one halfway between them.
    stretches = [(20, 79, A, 40), (70, 149, B, 30)]
    plays = _plays(Scripted(db, lambda w: _covering(db, stretches, w)), _recording(db, 180, stretches))
    assert _summary(plays) == [("a.wav", 10.25, 37.75, 20.25), ("b.wav", 37.75, 75.25, 17.75)]
    assert plays[0].score == pytest.approx((0.5 + 0.7 + 26 * 0.9 + 0.8 + 0.6) / 30)
    assert plays[1].score == pytest.approx((33 * 0.9 + 0.8 + 0.6) / 35)


def test_a_rival_alignment_of_repeated_bars_yields_to_the_one_with_more_windows(db):
    # loop's rows 0-29 come back at 30-59. Played from row 10 (alignment -5 s), windows inside
    # rows 10-29 also match rows 40-59 (+10 s) and windows inside rows 30-59 rows 0-29 (-20 s):
    # scripted first, both rivals are followed and confirmed (6 and 11 windows), then yield
    # to the played alignment.
    def script(stretches):
        def places(w):
            found = _covering(db, stretches, w)
            row = w - 10  # loop's row at the window's start
            if w >= 20 and row + WINDOW <= 60 and (row + WINDOW <= 30 or row >= 30):
                found.insert(0, _place(db, LOOP, row + 30 if row < 30 else row - 30, 0.9))
            return found

        return places

    stretches = [(20, 119, LOOP, 10)]
    tracker = Scripted(db, script(stretches))
    plays = _plays(tracker, _recording(db, 160, stretches))
    assert _summary(plays) == [("loop.wav", 10.25, 60.25, 5.25)]
    assert plays[0].score == pytest.approx((0.5 + 0.7 + 46 * 0.9 + 0.8 + 0.6) / 50)
    # The stream ends while the -20 s rival (windows 40..60) is still open: settled at the end.
    stretches = [(20, 69, LOOP, 10)]
    tracker = Scripted(db, script(stretches))
    assert _summary(_plays(tracker, _recording(db, 100, stretches))) == [("loop.wav", 10.25, 35.25, 5.25)]
    assert tracker.candidates == []


def test_a_chance_match_inside_another_tracks_held_play_is_dropped(db):
    # a (+10 s) over 20..159 with segments 70..89 under loud noise: windows 66..84 find a only
    # below the threshold (0.3, it is held) and 5 of them (72..80) c above it, at 0.6.
    stretches = [(20, 69, A, 40), (90, 159, A, 110)]  # a's clean segments
    fingerprints = _recording(db, 200, [(20, 159, A, 40)])
    noise = _unit(np.random.default_rng(2).standard_normal((20, D)))
    fingerprints[70:90] = _unit(fingerprints[70:90] + 3 * noise)

    def script(held):
        def places(w):
            found = _covering(db, stretches, w)
            if 72 <= w <= 80:
                found.insert(0, _place(db, C, w + 100, 0.6))
            if held and 66 <= w <= 84:
                found.append(_place(db, A, w + 20, 0.3))
            return found

        return places

    plays = _plays(Scripted(db, script(held=True)), fingerprints)
    assert _summary(plays) == [("a.wav", 10.25, 80.25, 20.25)]
    # Only agreeing windows score: 16..64 and 86..154, not the held ones.
    clean = (0.5 + 0.7 + 21 * 0.9 + 0.8 + 0.6) + (0.5 + 0.7 + 31 * 0.9 + 0.8 + 0.6)
    assert plays[0].score == pytest.approx(clean / 60)
    # Where a is not among the places in the noise, c's play ends a's and a starts again after it.
    plays = _plays(Scripted(db, script(held=False)), fingerprints)
    assert [p.track for p in plays] == ["a.wav", "c.wav", "a.wav"]


@pytest.mark.parametrize(("min_windows", "expected"), [(6, []), (5, [("a.wav", 10.25, 15.25, 20.25)])])
def test_too_few_agreeing_windows_are_no_play(db, min_windows, expected):
    # 5 s of a (segments 20..29): 5 windows (16..24) find it.
    stretches = [(20, 29, A, 40)]
    tracker = Scripted(db, lambda w: _covering(db, stretches, w), min_windows=min_windows)
    plays = _plays(tracker, _recording(db, 80, stretches))
    assert _summary(plays) == expected
    assert [p.score for p in plays] == pytest.approx([(0.5 + 0.7 + 0.9 + 0.8 + 0.6) / 5] * len(expected))


@pytest.mark.parametrize(("min_span", "expected"), [(9, []), (8, [("a.wav", 10.25, 15.25, 20.25)])])
def test_agreeing_windows_that_share_their_audio_are_no_play(db, min_span, expected):
    # The same 5 s of a: its 5 agreeing windows start at 16..24, 8 segments apart at most.
    stretches = [(20, 29, A, 40)]
    tracker = Scripted(db, lambda w: _covering(db, stretches, w), min_windows=3, min_span=min_span)
    assert _summary(_plays(tracker, _recording(db, 80, stretches))) == expected
    # 10 s of a (20..39): windows 16..34 agree, 18 segments apart; a window's length (9) is enough.
    stretches = [(20, 39, A, 40)]
    tracker = Scripted(db, lambda w: _covering(db, stretches, w), min_windows=3, min_span=WINDOW)
    assert _summary(_plays(tracker, _recording(db, 80, stretches))) == [("a.wav", 10.25, 20.25, 20.25)]


@pytest.mark.parametrize("speed", [0.985, 1.0, 1.012])
def test_a_plays_speed_is_its_drift_between_rows(db, speed):
    # a played `speed` x fast over segments 20..139 (60 s): segment n holds a at row
    # 10 + (n - 20) x speed, between two stored rows (their mix). The windows' places lie on
    # stored rows and stray by a row either way (as in noise), too coarse for the drift.
    first, last = 20, 139
    begin = _begin(db, A)
    fingerprints = _recording(db, 200, [])
    for n in range(first, last + 1):
        position = 10 + (n - first) * speed
        row, f = int(position), position - int(position)
        fingerprints[n] = _unit((1 - f) * db.embeddings[begin + row] + f * db.embeddings[begin + row + 1])

    stray = np.random.default_rng(3).integers(-1, 2, size=200)

    def places(w):
        if w < first or w + WINDOW - 1 > last:
            return []
        return [_place(db, A, int(round(10 + (w - first) * speed)) + stray[w], 0.9)]

    plays = _plays(Scripted(db, places, speed=1.0), fingerprints)
    assert len(plays) == 1 and plays[0].track == "a.wav"
    assert plays[0].speed == pytest.approx(speed, abs=0.002)


def test_one_recording_under_two_names_is_one_play():
    # a (+10 s) over 20..139; windows 40..100 find only a_cut, which holds a from row 40: a's
    # play goes on under its first name. Were a_cut another recording, it would be a play of its own.
    stretches = [(20, 139, A, 40)]

    def script(db):
        def places(w):
            if 40 <= w <= 100:
                return [_place(db, CUT, w - 20, 0.9)]
            return _covering(db, stretches, w)

        return places

    db = _db(cut_is_a=True)
    plays = _plays(Scripted(db, script(db)), _recording(db, 170, stretches))
    assert _summary(plays) == [("a.wav", 10.25, 70.25, 20.25)]
    assert plays[0].score == pytest.approx((0.5 + 0.7 + 56 * 0.9 + 0.8 + 0.6) / 60)
    other = _db(cut_is_a=False)
    plays = _plays(Scripted(other, script(other)), _recording(other, 170, stretches))
    assert [p.track for p in plays] == ["a.wav", "a_cut.wav", "a.wav"]


def test_a_pair_seen_holding_one_recording_is_remembered_at_its_alignment(db):
    tracker = PlayTracker(db, WINDOW, 2, 60, 3, 1.0, 1.0, 64)
    # never seen: only a window similarity of SAME_AUDIO or more makes two names one recording
    assert not tracker.same_recording(A, 30.0, CUT, 10.0, 0.8)
    assert tracker.same_recording(A, 30.0, CUT, 10.0, SAME_AUDIO)  # a's time - 20 s; remembered
    assert tracker.same_pairs == {(A, CUT): [-20.0]}
    # at that alignment (within a hop, either order), a remaster's stray passage still counts ...
    assert tracker.same_recording(A, 60.0, CUT, 40.25, 0.6) and tracker.same_recording(CUT, 50.0, A, 70.0, 0.6)
    # ... but not at another alignment, nor below _SAME_AUDIO_REMEMBERED, nor for another pair
    assert not tracker.same_recording(A, 60.0, CUT, 45.0, 0.8)
    assert not tracker.same_recording(A, 60.0, CUT, 40.0, _SAME_AUDIO_REMEMBERED - 0.01)
    assert not tracker.same_recording(A, 60.0, B, 40.0, 0.8) and not tracker.same_recording(A, 1.0, A, 1.0, 1.0)


def test_a_play_is_reported_under_the_name_whose_recording_was_played():
    # The stream plays a_cut (from its row 10), a remaster of a from a's row 40 whose rows 60-89
    # are another mix;
    # the windows name a first (the play opens under a.wav), a_cut first from window 40 on
    # (where the two hold the same audio: the pair is remembered). Over the play, the
    # recording is a_cut's rows exactly and a's only outside the remixed passage: it is
    # reported as a_cut, at a_cut's time.
    db = _db(remastered=(60, 90))
    stretches = [(20, 139, CUT, 10)]
    as_a = [(20, 139, A, 50)]

    def script(w):
        shift = -0.01 if w < 40 else 0.01
        cut_places = [dataclasses.replace(m, score=m.score + shift) for m in _covering(db, stretches, w)]
        return sorted(_covering(db, as_a, w) + cut_places, key=lambda m: -m.score)

    tracker = Scripted(db, script)
    plays = _plays(tracker, _recording(db, 170, stretches))
    assert _summary(plays) == [("a_cut.wav", 10.25, 70.25, 5.25)]
    assert list(tracker.same_pairs) == [(A, CUT)]
    # the reference: the mean similarity of the recording's segments to each name's aligned rows
    recording = _recording(db, 170, stretches)[20:140]
    a_rows = db.embeddings[_begin(db, A) + 50 : _begin(db, A) + 170]
    assert np.mean(np.sum(recording * a_rows, axis=1)) < 0.95  # the remixed passage
    # where a_cut is a's very audio, the play keeps the name it was found under
    plain = _db()
    plays = _plays(Scripted(plain, lambda w: sorted(_covering(plain, as_a, w) + _covering(plain, stretches, w),
                                                     key=lambda m: -m.score)),
                   _recording(plain, 170, stretches))
    assert [p.track for p in plays] == ["a.wav"]


def test_the_tracker_needs_a_search():
    tracker = PlayTracker(_db(), WINDOW, 2, 60, 3, 1.0, 1.0, 64)
    tracker.push(0, _unit(np.ones((WINDOW, D))))
    with pytest.raises(NotImplementedError, match="subclass searches its windows"):
        list(tracker.windows("rec"))
