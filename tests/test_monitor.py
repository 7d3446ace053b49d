"""`nnfp monitor`: plays of catalogue tracks in a generated broadcast, from files and stdin."""

import io
import json

import numpy as np
import pytest
import soundfile as sf

from nnfp.catalogue.fingerprint import DEFAULT_MODEL_PATH
from nnfp.cli import main
from nnfp.corpus.noise import make_noise
from nnfp.corpus.synth import compose_track

RATE = 8000

pytestmark = pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(), reason="needs the packaged model")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An index of 3 generated 40 s tracks (packaged model) and one unknown track."""
    root = tmp_path_factory.mktemp("monitor")
    music = root / "music"
    music.mkdir()
    tracks = {}
    for i, name in enumerate(["a.wav", "b.wav", "c.wav"]):
        tracks[name] = compose_track(300 + i, 40.0, RATE)
        sf.write(music / name, tracks[name], RATE, subtype="PCM_16")
    tracks["unknown"] = compose_track(900, 40.0, RATE)
    index = root / "index"
    assert main(["index", "build", str(music), str(index), "--index-type", "flat", "--quiet"]) == 0
    return {"root": root, "index": index, "tracks": tracks}


def _mix(parts, fades, seed=0, snr_db=15.0):
    """Concatenates `parts` with linear crossfades (`fades[i]` s between part i and i+1), plus noise."""
    out = parts[0].astype(np.float32)
    for part, fade in zip(parts[1:], fades, strict=True):
        n = int(fade * RATE)
        if n:
            ramp = np.linspace(0, 1, n, dtype=np.float32)
            overlap = out[-n:] * (1 - ramp) + part[:n] * ramp
            out = np.concatenate([out[:-n], overlap, part[n:]])
        else:
            out = np.concatenate([out, part])
    noise = make_noise(seed, len(out) / RATE + 0.1, RATE, kind="pink")[: len(out)]
    rms = np.sqrt(np.mean(out**2))
    return (out + noise / np.sqrt(np.mean(noise**2)) * rms * 10 ** (-snr_db / 20)).astype(np.float32)


def _cut(track, start, end):
    return track[int(start * RATE) : int(end * RATE)]


def _monitor_json(args, capsys):
    capsys.readouterr()
    assert main(["monitor", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_three_plays_with_crossfade_and_unknown_stretch(setup, tmp_path, capsys):
    t = setup["tracks"]
    # a 2..27 s | 2 s crossfade | b 5..30 s | unknown 15 s | c 8..33 s
    audio = _mix(
        [_cut(t["a.wav"], 2, 27), _cut(t["b.wav"], 5, 30), _cut(t["unknown"], 10, 25), _cut(t["c.wav"], 8, 33)],
        [2.0, 0.0, 0.0],
    )
    path = tmp_path / "mix.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    plays = _monitor_json([str(setup["index"]), str(path)], capsys)
    expected = [("a.wav", 0.0, 24.0, 2.0), ("b.wav", 24.0, 48.0, 6.0), ("c.wav", 63.0, 88.0, 8.0)]
    assert [p["track"] for p in plays] == ["a.wav", "b.wav", "c.wav"]
    for play, (track, start, end, track_start) in zip(plays, expected, strict=True):
        assert play["track"] == track
        assert abs(play["start_s"] - start) <= 1.5, play
        assert abs(play["end_s"] - end) <= 1.5, play
        assert abs(play["track_start_s"] - track_start) <= 1.5, play
    # The JSON lines carry exactly the documented fields; the speed grid is on by default (the
    # index's calibration was fitted with one) and each play reports its speed: here unchanged.
    assert list(plays[0]) == ["recording", "start_s", "end_s", "track", "track_start_s", "score", "speed"]
    assert plays[0]["recording"] == str(path) and 0 < plays[0]["score"] <= 1
    assert all(abs(p["speed"] - 1.0) <= 0.005 for p in plays), plays
    # `--speeds off`: the catalogue's speed only, the same plays without a speed.
    single = _monitor_json([str(setup["index"]), str(path), "--speeds", "off"], capsys)
    assert [p["track"] for p in single] == ["a.wav", "b.wav", "c.wav"]
    assert all("speed" not in p for p in single)
    for one, grid in zip(single, plays, strict=True):
        assert abs(one["start_s"] - grid["start_s"]) <= 1.0 and abs(one["end_s"] - grid["end_s"]) <= 1.0, (one, grid)

    # stdin: the same audio as raw 16-bit PCM gives the same plays.
    pcm = sf.read(path, dtype="int16")[0].astype("<i2").tobytes()

    class FakeStdin:
        buffer = io.BytesIO(pcm)

    capsys.readouterr()
    import sys

    saved, sys.stdin = sys.stdin, FakeStdin()
    try:
        assert main(["monitor", str(setup["index"]), "-", "--json"]) == 0
    finally:
        sys.stdin = saved
    from_stdin = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["recording"] for p in from_stdin] == ["-"] * 3
    assert [{**p, "recording": None} for p in from_stdin] == [{**p, "recording": None} for p in plays]


def test_own_process_on_a_piped_stream_gives_the_plays_of_main(setup, tmp_path, capsys):
    # `nnfp monitor -` as users run it: its own process (one thread per op, model calls on
    # every core, read-ahead, the fast exit), PCM piped in, JSON lines piped out.
    import subprocess
    import sys

    t = setup["tracks"]
    audio = _mix([_cut(t["b.wav"], 3, 28), _cut(t["unknown"], 0, 8), _cut(t["a.wav"], 10, 35)], [1.0, 0.0], seed=3)
    path = tmp_path / "piped.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    expected = _monitor_json([str(setup["index"]), str(path)], capsys)
    assert [p["track"] for p in expected] == ["b.wav", "a.wav"]
    pcm = sf.read(path, dtype="int16")[0].astype("<i2").tobytes()
    out = subprocess.run(
        [sys.executable, "-m", "nnfp.cli", "monitor", str(setup["index"]), "-", "--json"],
        input=pcm, capture_output=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    piped = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [{**p, "recording": None} for p in piped] == [{**p, "recording": None} for p in expected]


def test_same_track_twice_is_two_plays(setup, tmp_path, capsys):
    a = setup["tracks"]["a.wav"]
    # a 5..25 s | 6 s jingle | a 5..25 s | a 5..25 s again, back to back: three plays, told
    # apart by the jump of the alignment (track time - recording time), not by the track.
    parts = [_cut(a, 5, 25), _cut(setup["tracks"]["unknown"], 0, 6), _cut(a, 5, 25), _cut(a, 5, 25)]
    audio = _mix(parts, [0.0, 0.0, 0.0], seed=1)
    path = tmp_path / "twice.wav"
    sf.write(path, audio, RATE, subtype="PCM_16")
    plays = _monitor_json([str(setup["index"]), str(path)], capsys)
    assert [p["track"] for p in plays] == ["a.wav"] * 3
    for play, (start, end) in zip(plays, [(0, 20), (26, 46), (46, 66)], strict=True):
        assert abs(play["start_s"] - start) <= 1.5, play
        assert abs(play["end_s"] - end) <= 1.5, play
        assert abs(play["track_start_s"] - 5) <= 1.5, play


def test_timeline_and_errors(setup, tmp_path, capsys):
    path = tmp_path / "a.wav"
    sf.write(path, _mix([_cut(setup["tracks"]["a.wav"], 0, 20)], []), RATE, subtype="PCM_16")
    capsys.readouterr()
    assert main(["monitor", str(setup["index"]), str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}:" and "a.wav" in out[1] and out[1].strip().startswith("0:00:")
    assert main(["monitor", str(setup["index"]), str(tmp_path / "missing.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nnfp monitor: error:") and "missing.wav" in err[0]


def test_noisy_patch_inside_a_play_keeps_one_play(setup, tmp_path, capsys):
    a = setup["tracks"]["a.wav"]
    # a 0..36 s with 12..24 s buried 20 dB under loud noise (a talk-over, a bad patch): the
    # track comes back at the same alignment, so it is one play, not two.
    clean = _cut(a, 0, 36).copy()
    patch = slice(12 * RATE, 24 * RATE)
    noise = make_noise(7, 12.1, RATE, kind="pink")[: 12 * RATE]
    rms = np.sqrt(np.mean(clean[patch] ** 2))
    clean[patch] = clean[patch] + noise / np.sqrt(np.mean(noise**2)) * rms * 10.0
    path = tmp_path / "patch.wav"
    sf.write(path, _mix([clean], [], seed=2), RATE, subtype="PCM_16")
    plays = _monitor_json([str(setup["index"]), str(path)], capsys)
    assert [p["track"] for p in plays] == ["a.wav"], plays
    assert abs(plays[0]["start_s"]) <= 1.5 and abs(plays[0]["end_s"] - 36) <= 1.5, plays
    # With a dropout allowance shorter than the patch, it is two plays of one alignment.
    capsys.readouterr()
    assert main(["monitor", str(setup["index"]), str(path), "--json", "--max-gap", "4"]) == 0
    split = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["track"] for p in split] == ["a.wav", "a.wav"], split


def _traffic_patch(audio, start_s, end_s, snr_db, seed):
    """`audio` with traffic noise at `snr_db` (against the whole track's level) over start..end s."""
    noisy = audio.astype(np.float32).copy()
    patch = slice(int(start_s * RATE), int(end_s * RATE))
    noise = make_noise(seed, (patch.stop - patch.start) / RATE + 0.1, RATE, kind="traffic")[: patch.stop - patch.start]
    rms = np.sqrt(np.mean(audio**2))
    noisy[patch] += noise / np.sqrt(np.mean(noise**2)) * rms * 10 ** (-snr_db / 20)
    return noisy


def test_play_is_held_through_noise_while_its_alignment_stays_the_best_place(setup, tmp_path, capsys):
    # a 0..40 s with traffic noise 9 dB above it over 12..27 s: no window there clears the
    # threshold, but a at the play's alignment stays among the index's best places, so the
    # play is held past a dropout allowance (8 s) shorter than the patch: one play.
    audio = _traffic_patch(setup["tracks"]["a.wav"], 12, 27, -9.0, seed=5)
    path = tmp_path / "held.wav"
    sf.write(path, _mix([audio], [], seed=4), RATE, subtype="PCM_16")
    plays = _monitor_json([str(setup["index"]), str(path), "--max-gap", "8"], capsys)
    assert [p["track"] for p in plays] == ["a.wav"], plays
    assert abs(plays[0]["start_s"]) <= 1.5 and abs(plays[0]["end_s"] - 40) <= 1.5, plays


def test_play_starting_in_a_noisy_patch_starts_with_it(setup, tmp_path, capsys):
    # unknown 0..20 s | a 0..40 s, its first 12 s under traffic noise as loud as it: a is the
    # best place there before any window clears the threshold, so the play starts at 20 s
    # (not where the noise ends, 32 s).
    t = setup["tracks"]
    audio = np.concatenate([_cut(t["unknown"], 0, 20), _traffic_patch(t["a.wav"], 0, 12, 0.0, seed=7)])
    path = tmp_path / "lead.wav"
    sf.write(path, _mix([audio], [], seed=5), RATE, subtype="PCM_16")
    plays = _monitor_json([str(setup["index"]), str(path)], capsys)
    assert [p["track"] for p in plays] == ["a.wav"], plays
    assert abs(plays[0]["start_s"] - 20) <= 1.5 and abs(plays[0]["track_start_s"]) <= 1.5, plays
    assert abs(plays[0]["end_s"] - 60) <= 1.5, plays


def test_one_recording_under_two_names_continues_the_play(setup, tmp_path, capsys):
    # An index holding a.wav and a cut of it (a_cut.wav = a from 10.06 s, 0.06 s off the grid): a match on the cut
    # at the play's alignment continues a play of a; b.wav, or the cut elsewhere, does not.
    from nnfp.catalogue.monitor import _Candidate, _Monitor
    from nnfp.store.db import FingerprintDB, Match

    music = tmp_path / "music"
    music.mkdir()
    a = setup["tracks"]["a.wav"]
    sf.write(music / "a.wav", a, RATE, subtype="PCM_16")
    sf.write(music / "a_cut.wav", a[int(10.06 * RATE) :], RATE, subtype="PCM_16")
    sf.write(music / "b.wav", setup["tracks"]["b.wav"], RATE, subtype="PCM_16")
    index = tmp_path / "index"
    assert main(["index", "build", str(music), str(index), "--index-type", "flat", "--quiet"]) == 0
    db = FingerprintDB.load(index)
    ids = {track["path"]: track["track_id"] for track in db.tracks}
    monitor = _Monitor(db, 0.5, window=9, step=2, max_gap=60, min_windows=3, tolerance=1.0, k_probe=20,
                       seg_seconds=1.0, batch=64)
    # A play of a at delta 0 (track time = recording time), confirmed; window w = 40 (20 s).
    play = _Candidate(ids["a.wav"], "a.wav", 0.0, 30, 38, [0.9] * 5, [0.0] * 5, 15.0, confirmed=True)
    monitor.candidates.append(play)

    def match(path, offset_s):
        return Match(ids[path], path, offset_s, 0.8, 0)

    assert monitor._agreeing(match("a_cut.wav", 20.0 - 10.06), 20.0 - 10.06 - 20.0, w=40) is play
    assert monitor._agreeing(match("a_cut.wav", 20.0 - 10.06 + 8.0), 8.0 - 10.06, w=40) is None
    assert monitor._agreeing(match("b.wav", 20.0), 0.0, w=40) is None
    # Without the window (rivals of one track), only the same track agrees.
    assert monitor._agreeing(match("a_cut.wav", 20.0 - 10.06), -10.06) is None


def test_bars_repeated_inside_a_track_give_one_play(tmp_path, capsys):
    # A track whose first 15 s come back at 15 s: each window of the play matches two
    # alignments of the same track. The alignments are rivals of one play: one detection.
    part = compose_track(410, 15.0, RATE)
    track = np.concatenate([part, part, compose_track(411, 15.0, RATE)])
    music = tmp_path / "music"
    music.mkdir()
    sf.write(music / "loop.wav", track, RATE, subtype="PCM_16")
    sf.write(music / "other.wav", compose_track(412, 30.0, RATE), RATE, subtype="PCM_16")
    index = tmp_path / "index"
    assert main(["index", "build", str(music), str(index), "--index-type", "flat", "--quiet"]) == 0
    path = tmp_path / "loop-play.wav"
    sf.write(path, _mix([_cut(track, 5, 45)], [], seed=3), RATE, subtype="PCM_16")
    plays = _monitor_json([str(index), str(path)], capsys)
    assert [p["track"] for p in plays] == ["loop.wav"], plays
    assert abs(plays[0]["start_s"]) <= 1.5 and abs(plays[0]["end_s"] - 40) <= 1.5, plays


def test_read_ahead_keeps_order_raises_in_place_and_stops_with_its_consumer():
    import threading

    from nnfp.catalogue.monitor import read_ahead

    assert list(read_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("bad block")

    got = []
    with pytest.raises(ValueError, match="bad block"):
        for item in read_ahead(failing()):
            got.append(item)
    assert got == [1, 2]  # the items before the error, then the error itself

    produced = []
    finished = threading.Event()

    def endless():
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            finished.set()

    stream = read_ahead(endless(), depth=1)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert finished.wait(5)  # the producer stopped (it did not read the whole source)
    assert len(produced) <= 3 + 2


def _stop_monitor(argv, signum, pcm=None, timeout=120):
    """Runs `nnfp monitor ARGV --json` in a process of its own (PCM on its stdin, which stays
    open), sends it `signum` once it has printed its first play; returns (exit code, plays, stderr)."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "nnfp.cli", "monitor", *argv, "--json"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        if pcm is not None:
            process.stdin.write(pcm)
            process.stdin.flush()
        first = process.stdout.readline()
        process.send_signal(signum)
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    return process.returncode, [json.loads(line) for line in (first + out).decode().splitlines()], err.decode()


@pytest.mark.parametrize(
    ("signum", "source"), [("SIGINT", "stdin"), ("SIGINT", "stdin, one speed"), ("SIGTERM", "file")]
)
def test_a_stop_signal_reports_the_play_in_progress_as_cut_short(setup, tmp_path, signum, source):
    # Ctrl-C or a service manager's SIGTERM: the play in progress comes out as a last line
    # marked cut short, the seconds read go to stderr, and the exit code is 128 + the signal's.
    # With the speed grid (the default) a play is out once every speed's stream has passed its
    # end by --max-gap: the stream stays open, with 60 s of audio after the first play.
    import signal

    t = setup["tracks"]
    if source.startswith("stdin"):  # a then b, and the stream stays open: the reader waits for more
        audio = _mix([t["a.wav"], t["b.wav"], _cut(t["c.wav"], 0, 20)], [0.0, 0.0])
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        argv, name = [str(setup["index"]), "-"], "-"
        if source.endswith("one speed"):
            argv += ["--speeds", "off"]
    else:  # 20 min of a, b, c, a, ...: far from its end when the first play is out
        path = tmp_path / "long.wav"
        sf.write(path, np.concatenate([t["a.wav"], t["b.wav"], t["c.wav"]] * 10), RATE, subtype="PCM_16")
        pcm, argv, name = None, [str(setup["index"]), str(path)], str(path)
    code, plays, err = _stop_monitor(argv, getattr(signal, signum), pcm)
    assert code == 128 + getattr(signal, signum), err[-3000:]
    assert "Traceback" not in err and "Fatal Python error" not in err, err[-3000:]
    assert plays[0]["track"] == "a.wav" and "cut_short" not in plays[0], plays
    assert plays[-1]["cut_short"] is True and plays[-1]["track"] != plays[-2]["track"], plays
    assert all("cut_short" not in p for p in plays[:-1]), plays
    assert f"nnfp monitor: {name}: stopped by {signum} after " in err, err[-3000:]


@pytest.mark.parametrize(
    ("pcm", "code", "note"),
    [
        (b"", 2, "-: read 0.0 s of audio (empty input; expected raw 16-bit little-endian mono PCM at --rate 8000 Hz)"),
        (b"\x01", 2, "-: read 0.0 s of audio (an odd number of bytes, 1: expected raw 16-bit little-endian mono PCM"),
        (bytes(2 * RATE * 6), 0, "-: read 6.0 s of audio (every sample is 0: silence)"),
    ],
    ids=["empty", "odd", "zeros"],
)
def test_stdin_says_how_much_audio_it_read(setup, capsys, monkeypatch, pcm, code, note):
    class FakeStdin:
        buffer = io.BytesIO(pcm)

    monkeypatch.setattr("sys.stdin", FakeStdin())
    capsys.readouterr()
    assert main(["monitor", str(setup["index"]), "-"]) == code
    captured = capsys.readouterr()
    assert f"nnfp monitor: {note}" in captured.err, captured.err
    assert captured.out.splitlines() == ["-:", "  (no catalogue track detected)"]


def test_a_file_piped_to_stdin_is_named(setup, tmp_path, capsys, monkeypatch):
    # A WAV file given as `-` is read as raw PCM, header and all: say so.
    path = tmp_path / "a.wav"
    sf.write(path, _cut(setup["tracks"]["a.wav"], 0, 20), RATE, subtype="PCM_16")

    class FakeStdin:
        buffer = io.BytesIO(path.read_bytes())

    monkeypatch.setattr("sys.stdin", FakeStdin())
    capsys.readouterr()
    assert main(["monitor", str(setup["index"]), "-"]) == 0
    err = capsys.readouterr().err
    assert "nnfp monitor: -: read 20.0 s of audio (the input starts like a WAV file, not raw PCM" in err, err


def test_identify_points_a_query_longer_than_every_track_to_monitor(setup, tmp_path, capsys):
    t = setup["tracks"]
    path = tmp_path / "long.wav"
    sf.write(path, _mix([t["a.wav"], t["b.wav"]], [0.0]), RATE, subtype="PCM_16")
    hint = (
        "the query (80.0 s) is longer than every catalogue track (longest 40.0 s): "
        "to find tracks inside a long recording use `nnfp monitor`"
    )
    capsys.readouterr()
    main(["identify", str(setup["index"]), str(path)])
    assert hint in capsys.readouterr().out
    main(["identify", str(setup["index"]), str(path), "--json"])
    assert json.loads(capsys.readouterr().out)["hint"] == hint
    main(["identify", str(setup["index"]), str(_write(tmp_path / "short.wav", _cut(t["a.wav"], 0, 10))), "--json"])
    assert "hint" not in json.loads(capsys.readouterr().out)


def _write(path, audio):
    sf.write(path, audio, RATE, subtype="PCM_16")
    return path
