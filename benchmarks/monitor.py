"""`nnfp monitor` on a simulated broadcast: recall, precision, false detections, boundaries, speed, RSS.

    python benchmarks/monitor.py [--minutes 30] [--catalogue DIR --unknown DIR --speech DIR --noise DIR]
                                 [--effects [DIR]] [--room] [--speed LO HI] [--model M]
                                 [--workdir /tmp/nnfp-monitor] [--seed 0]

The broadcast is a sequence of catalogue plays (20-90 s excerpts of indexed tracks at
random positions), unknown music (not in the index, 20-60 s) and speech (5-20 s),
joined by 0-3 s crossfades; with `--effects`, 10 % of the items are instead 30-180 s stretches
of sound effects and ambiences without music (a DIR's files, else generated applause, rain,
traffic, wind, clicks, babble and hum: a sports ground, a street, a studio left open);
30 % of the plays get 3-8 s of talk-over speech; background
noise at 5-20 dB SNR (redrawn every 30 s) lies under everything; `--room` convolves the
whole broadcast with a room impulse response. Without folders, everything is generated
(`nnfp.corpus`: composed tracks, babble as speech, generated noise). The index is built
from the catalogue with the model (default: the packaged one); the broadcast is written
as a 16-bit WAV beside `truth.json` (a play's boundaries are the middles of its
crossfades) and `nnfp monitor INDEX broadcast.wav --json` runs in a child process,
whose wall time and own peak RSS (`_child.run_child`) are reported.

Scores: a truth play (>= 10 s) is found when a detection of the same track covers >= 50 %
of it; a detection is correct when >= 50 % of it lies in a play of its track; false
detections per hour count detections mostly over unknown music, per hour of it (and
mostly over speech between items, per hour of speech; mostly over sound effects, per hour of them).

A catalogue may hold the same recording twice (a game's `menu` is a 3-minute cut of its
`menu_enhanced`): no system can tell which of the two a broadcast played. Such pairs are
found from the audio alone, not with the model (Pearson correlation >= 0.9 of the 10 ms RMS
envelopes over >= 30 s at the best lag), printed, and scored as one track in a second row;
the first row is strict.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 8000


def _audio_files(directory):
    from nnfp.audio.sources import list_audio_files

    return list_audio_files(directory) if directory else []


def _generated_tracks(out_dir, n, seconds, first_seed):
    from nnfp.corpus.synth import compose_track

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = out_dir / f"track_{i:04d}.wav"
        if not path.exists():
            sf.write(path, compose_track(first_seed + i, seconds, RATE), RATE, subtype="PCM_16")
        paths.append(path)
    return paths


class _Bank:
    """Audio files loaded on demand (or a generator), each drawn as a random excerpt."""

    def __init__(self, paths, make=None):
        self.paths, self.make, self.cache = list(paths), make, {}

    def excerpt(self, rng, seconds):
        n = int(round(seconds * RATE))
        if not self.paths:
            return self.make(int(rng.integers(1 << 30)), seconds + 0.1)[:n]
        from nnfp.audio.io import load_audio

        path = self.paths[int(rng.integers(len(self.paths)))]
        if path not in self.cache:
            self.cache[path] = load_audio(path, RATE)
        audio = self.cache[path]
        if len(audio) < n:
            audio = np.tile(audio, -(-n // len(audio)))
        start = int(rng.integers(len(audio) - n + 1))
        return audio[start : start + n]


def _rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def _effects_stretch(rng, effects, seconds):
    """`seconds` of sound effects without music: excerpts of 2-15 s, one after another, each at
    its own level (-6..+6 dB around the speech level), the joins faded over 50 ms."""
    n = int(round(seconds * RATE))
    out, at = np.zeros(n, np.float32), 0
    ramp = int(0.05 * RATE)
    while at < n:
        piece = effects.excerpt(rng, float(rng.uniform(2, 15)))[: n - at].astype(np.float32)
        piece = piece / _rms(piece) * 0.1 * 10 ** (rng.uniform(-6, 6) / 20)
        if len(piece) > 2 * ramp:
            piece[:ramp] *= np.linspace(0, 1, ramp, dtype=np.float32)
            piece[-ramp:] *= np.linspace(1, 0, ramp, dtype=np.float32)
        out[at : at + len(piece)] = piece
        at += len(piece)
    return out


def make_broadcast(rng, minutes, catalogue, catalogue_root, unknown, speech, noise, room=False, speed_range=None,
                   effects=None):
    """Returns `(audio, truth)`; truth: {"plays": [...], "unknown": [[start, end], ...], ...}.

    `effects`: a `_Bank` of sound effects; 10 % of the items are then 30-180 s of them.

    `speed_range`: every music item (plays and unknown music) is played at a speed drawn
    in it (resampled: pitch and tempo together, as radio stations speed songs up)."""
    from nnfp.audio.io import load_audio, resample

    speed_rng = np.random.default_rng(rng.integers(1 << 30)) if speed_range else None

    items, t = [], 0.0  # (kind, audio, start_s, fade_in_s, info)
    previous_music = False
    while t < minutes * 60:
        if effects is None:
            kind = rng.choice(["play", "unknown", "speech"], p=[0.6, 0.25, 0.15])
        else:
            kind = rng.choice(["play", "unknown", "speech", "effects"], p=[0.54, 0.225, 0.135, 0.1])
        music = kind in ("play", "unknown")
        fade = float(rng.uniform(0, 3)) if music and previous_music else 0.0
        if kind == "play":
            path = catalogue[int(rng.integers(len(catalogue)))]
            track = load_audio(path, RATE)
            speed = float(speed_rng.uniform(*speed_range)) if speed_range else 1.0
            seconds = float(min(rng.uniform(20, 90), len(track) / RATE / speed - 1))  # broadcast seconds
            offset = float(rng.uniform(0, len(track) / RATE - seconds * speed))
            audio = track[int(offset * RATE) : int(offset * RATE) + int(np.ceil(seconds * speed * RATE)) + 1].copy()
            if speed != 1.0:
                audio = np.asarray(resample(audio, RATE, RATE / speed), np.float32)
            audio = audio[: int(seconds * RATE)]
            if rng.random() < 0.3:  # talk-over
                talk = float(rng.uniform(3, 8))
                at = int(rng.uniform(0, max(seconds - talk, 0.1)) * RATE)
                voice = speech.excerpt(rng, talk)[: len(audio) - at]
                gain = _rms(audio) / _rms(voice) * 10 ** (rng.uniform(-3, 3) / 20)
                audio[at : at + len(voice)] += gain * voice
            info = {"track": Path(path).relative_to(catalogue_root).as_posix(), "offset_s": offset, "speed": speed}
        elif kind == "unknown":
            audio, info = unknown.excerpt(rng, float(rng.uniform(20, 60))), {}
            if speed_range:
                audio = np.asarray(resample(audio, RATE, RATE / float(speed_rng.uniform(*speed_range))), np.float32)
        elif kind == "effects":
            audio, info = _effects_stretch(rng, effects, float(rng.uniform(30, 180))), {}
        else:
            audio, info = speech.excerpt(rng, float(rng.uniform(5, 20))), {}
            audio = audio / _rms(audio) * 0.1
        start = max(t - fade, 0.0)
        items.append((kind, audio.astype(np.float32), start, fade, info))
        t = start + len(audio) / RATE
        previous_music = music
    out = np.zeros(int(t * RATE) + 1, np.float32)
    plays, unknown_spans, speech_spans, effects_spans = [], [], [], []
    for i, (kind, audio, start, fade_in, info) in enumerate(items):
        fade_out = items[i + 1][3] if i + 1 < len(items) else 0.0
        envelope = np.ones(len(audio), np.float32)
        n_in, n_out = int(fade_in * RATE), int(fade_out * RATE)
        if n_in:
            envelope[:n_in] = np.linspace(0, 1, n_in)
        if n_out:
            envelope[-n_out:] = np.minimum(envelope[-n_out:], np.linspace(1, 0, n_out))
        first = int(round(start * RATE))
        out[first : first + len(audio)] += envelope * audio
        # The middles of the crossfades are where one item gives way to the next.
        begin, end = start + fade_in / 2, start + len(audio) / RATE - fade_out / 2
        if kind == "play":
            plays.append({"track": info["track"], "start_s": round(begin, 3), "end_s": round(end, 3),
                          "track_start_s": round(info["offset_s"] + info["speed"] * fade_in / 2, 3),
                          "speed": round(info["speed"], 5)})
        elif kind == "unknown":
            unknown_spans.append([round(begin, 3), round(end, 3)])
        elif kind == "effects":
            effects_spans.append([round(begin, 3), round(end, 3)])
        else:
            speech_spans.append([round(begin, 3), round(end, 3)])
    level = _rms(out)
    for first in range(0, len(out), 30 * RATE):
        piece = out[first : first + 30 * RATE]
        background = noise.excerpt(rng, len(piece) / RATE + 0.01)[: len(piece)]
        snr_db = rng.uniform(5, 20)
        piece += background / _rms(background) * level * 10 ** (-snr_db / 20)
    if room:
        from scipy.signal import fftconvolve

        from nnfp.corpus.rooms import make_impulse_response

        out = fftconvolve(out, make_impulse_response(int(rng.integers(1 << 30)), RATE))[: len(out)]
    out = (0.9 * out / max(np.abs(out).max(), 1e-9)).astype(np.float32)
    truth = {"seconds": len(out) / RATE, "plays": plays, "unknown": unknown_spans, "speech": speech_spans}
    if effects is not None:
        truth["effects"] = effects_spans
    return out, truth


def _overlap(a0, a1, b0, b1):
    return max(0.0, min(a1, b1) - max(a0, b0))


def _envelope(path):
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    hop = max(rate // 100, 1)
    n = len(audio) // hop
    return np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)


def catalogue_duplicates(paths, root, min_r=0.9, min_seconds=30.0):
    """Pairs of catalogue files holding the same recording, from their audio envelopes.

    Returns:
        {relative path: canonical relative path} for every file of a duplicate group, and
        a list of (a, b, r, lag seconds) for the pairs found.
    """
    from scipy.signal import fftconvolve

    names = [str(Path(p).relative_to(root)) for p in paths]
    envs = [_envelope(p) for p in paths]
    envs = [(e - e.mean()) / (e.std() + 1e-9) for e in envs]
    parent = list(range(len(paths)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    pairs = []
    min_n = int(min_seconds * 100)
    for i in range(len(envs)):
        for j in range(i + 1, len(envs)):
            a, b = envs[i], envs[j]
            if min(len(a), len(b)) < min_n:
                continue
            corr = fftconvolve(a, b[::-1])  # lag = index - (len(b) - 1): a[t] ~ b[t - lag]
            lag = int(np.argmax(corr)) - (len(b) - 1)
            lo, hi = max(0, lag), min(len(a), len(b) + lag)
            if hi - lo < min_n:
                continue
            r = float(np.corrcoef(a[lo:hi], b[lo - lag : hi - lag])[0, 1])
            if r >= min_r:
                pairs.append((names[i], names[j], r, lag / 100))
                parent[find(j)] = find(i)
    roots = [find(i) for i in range(len(names))]
    grouped = {r for i, r in enumerate(roots) if r != i}
    canonical = {names[i]: names[r] for i, r in enumerate(roots) if r in grouped}
    return canonical, pairs


def score(truth, detections, min_play_s=10.0, same=None):
    """Recall, precision, false detections per hour, boundary errors; `same` maps duplicate
    catalogue tracks to one name (None: strict)."""
    if same:
        def canon(item):
            return {**item, "track": same.get(item["track"], item["track"])}

        truth = {**truth, "plays": [canon(p) for p in truth["plays"]]}
        detections = [canon(d) for d in detections]
    plays = [p for p in truth["plays"] if p["end_s"] - p["start_s"] >= min_play_s]
    found, start_err, end_err, speed_ok = 0, [], [], []
    for play in plays:
        length = play["end_s"] - play["start_s"]
        best = max(
            (d for d in detections if d["track"] == play["track"]),
            key=lambda d: _overlap(play["start_s"], play["end_s"], d["start_s"], d["end_s"]),
            default=None,
        )
        if best is not None and _overlap(play["start_s"], play["end_s"], best["start_s"], best["end_s"]) >= 0.5 * length:
            found += 1
            start_err.append(abs(best["start_s"] - play["start_s"]))
            end_err.append(abs(best["end_s"] - play["end_s"]))
            if "speed" in play and "speed" in best:
                speed_ok.append(abs(best["speed"] / play["speed"] - 1) <= 0.005)
    correct, false_unknown, false_speech, false_effects = 0, 0, 0, 0
    for d in detections:
        length = max(d["end_s"] - d["start_s"], 1e-9)
        inside = sum(
            _overlap(p["start_s"], p["end_s"], d["start_s"], d["end_s"])
            for p in truth["plays"] if p["track"] == d["track"]
        )
        if inside >= 0.5 * length:
            correct += 1
        elif sum(_overlap(a, b, d["start_s"], d["end_s"]) for a, b in truth["unknown"]) >= 0.5 * length:
            false_unknown += 1
        elif sum(_overlap(a, b, d["start_s"], d["end_s"]) for a, b in truth.get("speech", [])) >= 0.5 * length:
            false_speech += 1
        elif sum(_overlap(a, b, d["start_s"], d["end_s"]) for a, b in truth.get("effects", [])) >= 0.5 * length:
            false_effects += 1
    effects_hours = sum(b - a for a, b in truth.get("effects", [])) / 3600
    unknown_hours = sum(b - a for a, b in truth["unknown"]) / 3600
    speech_hours = sum(b - a for a, b in truth.get("speech", [])) / 3600
    return {
        "plays": len(plays),
        "recall": found / max(len(plays), 1),
        "detections": len(detections),
        "precision": correct / max(len(detections), 1),
        "false_per_hour_unknown": false_unknown / max(unknown_hours, 1e-9),
        "unknown_hours": unknown_hours,
        "false_per_hour_speech": false_speech / max(speech_hours, 1e-9),
        "speech_hours": speech_hours,
        "false_per_hour_effects": false_effects / max(effects_hours, 1e-9),
        "effects_hours": effects_hours,
        "median_start_error_s": float(np.median(start_err)) if start_err else float("nan"),
        "median_end_error_s": float(np.median(end_err)) if end_err else float("nan"),
        "speed_within_half_percent": float(np.mean(speed_ok)) if speed_ok else float("nan"),
    }


def run_monitor(index_dir, recording, extra=()):
    """`nnfp monitor --json` in a child process: (detections, wall seconds, peak RSS bytes)."""
    from _child import run_child

    command = [sys.executable, "-m", "nnfp.cli", "monitor", str(index_dir), str(recording), "--json", *extra]
    returncode, stdout, stderr, wall, rss = run_child(command, text=True)
    if returncode != 0:
        raise SystemExit(f"nnfp monitor failed ({returncode}): {stderr.strip()[-2000:]}")
    return [json.loads(line) for line in stdout.splitlines() if line.strip()], wall, rss


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="broadcast length (default 30)")
    parser.add_argument("--catalogue", default=None, help="indexed music (default: 24 generated 2-min tracks)")
    parser.add_argument("--unknown", default=None, help="music not in the index (default: 8 generated tracks)")
    parser.add_argument("--speech", default=None, help="speech recordings (default: generated babble)")
    parser.add_argument("--noise", default=None, help="background noise recordings (default: generated noise)")
    parser.add_argument("--room", action="store_true", help="convolve the broadcast with a room")
    parser.add_argument("--model", default=None, help="model for the index (default: the packaged model)")
    parser.add_argument("--workdir", default="/tmp/nnfp-monitor")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--monitor-args", default="", help="extra `nnfp monitor` options, e.g. '--window 6'")
    parser.add_argument("--speed", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="play every music item at a speed drawn in [LO, HI] (e.g. 0.96 1.04)")
    parser.add_argument("--effects", nargs="?", const="generated", default=None, metavar="DIR",
                        help="also 30-180 s stretches of sound effects without music (DIR's files; "
                             "without DIR: generated ones)")
    args = parser.parse_args(argv)

    from nnfp.catalogue.build import build_index
    from nnfp.corpus.noise import make_noise
    from nnfp.corpus.signals import make_signal

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    catalogue_root = Path(args.catalogue) if args.catalogue else work / "catalogue"
    catalogue = _audio_files(args.catalogue) if args.catalogue else _generated_tracks(catalogue_root, 24, 120.0, 1000)
    unknown = _audio_files(args.unknown) if args.unknown else _generated_tracks(work / "unknown", 8, 120.0, 9000)
    speech = _Bank(_audio_files(args.speech), make=lambda s, sec: make_noise(s, sec, RATE, kind="babble"))
    kinds = ("pink", "brown", "wind", "traffic", "rain", "hum", "mixture")
    noise = _Bank(_audio_files(args.noise), make=lambda s, sec: make_noise(s, sec, RATE, kind=kinds[s % len(kinds)]))

    effect_kinds = ("applause", "rain", "traffic", "wind", "clicks", "babble", "hum")
    effects = None
    if args.effects == "generated":
        effects = _Bank([], make=lambda s, sec: make_signal(effect_kinds[s % len(effect_kinds)], s, sec, RATE))
    elif args.effects:
        effects = _Bank(_audio_files(args.effects))

    index_dir = work / "index"
    if not index_dir.exists():
        report = build_index(catalogue_root, index_dir, model=args.model, progress=False)
        print(f"index: {report.n_tracks} tracks, {report.audio_seconds / 3600:.2f} h, "
              f"built at {report.realtime_factor:.0f}x real time")
    rng = np.random.default_rng(args.seed)
    audio, truth = make_broadcast(
        rng, args.minutes, catalogue, catalogue_root, _Bank(unknown), speech, noise, args.room, speed_range=args.speed,
        effects=effects,
    )
    recording = work / "broadcast.wav"
    sf.write(recording, audio, RATE, subtype="PCM_16")
    (work / "truth.json").write_text(json.dumps(truth, indent=1))
    del audio

    detections, wall, rss = run_monitor(index_dir, recording, args.monitor_args.split())
    (work / "detections.jsonl").write_text("".join(json.dumps(d) + "\n" for d in detections))
    same, pairs = catalogue_duplicates(catalogue, catalogue_root)
    for a, b, r, lag in pairs:
        print(f"catalogue duplicate: {a} = {b} (envelope r = {r:.3f}, lag {lag:+.2f} s)")
    rows = [("strict", score(truth, detections))]
    if same:
        rows.append(("duplicates as one", score(truth, detections, same=same)))
    result = rows[0][1]
    effects_text = f", {result['effects_hours'] * 60:.1f} min of sound effects" if effects is not None else ""
    print(f"broadcast: {truth['seconds'] / 60:.1f} min, {result['plays']} plays >= 10 s, "
          f"{result['unknown_hours'] * 60:.1f} min of unknown music, {result['speech_hours'] * 60:.1f} min of speech"
          f"{effects_text}{', room' if args.room else ''}"
          f"{f', every music item at {args.speed[0]:g}-{args.speed[1]:g}x' if args.speed else ''}")
    print(f"{'scoring':>17} | {'recall':>8} | {'precision':>9} | {'false/h unknown':>15} | {'false/h speech':>14} | "
          f"{'false/h effects':>15} | {'start err':>9} | {'end err':>7} | {'speed':>7} | {'peak RSS':>8}")
    for name, result in rows:
        per_hour_effects = f"{result['false_per_hour_effects']:.2f}" if effects is not None else "-"
        print(f"{name:>17} | {100 * result['recall']:>7.1f}% | {100 * result['precision']:>8.1f}% | "
              f"{result['false_per_hour_unknown']:>15.2f} | {result['false_per_hour_speech']:>14.2f} | "
              f"{per_hour_effects:>15} | {result['median_start_error_s']:>7.2f} s | "
              f"{result['median_end_error_s']:>5.2f} s | {truth['seconds'] / wall:>6.0f}x | {rss / 2**20:>5.0f} MB")
    if not np.isnan(result["speed_within_half_percent"]):
        print(f"speed reported within 0.5 % for {100 * result['speed_within_half_percent']:.1f} % of the plays found")
    print(f"({result['detections']} detections; end to end incl. model load: {wall:.1f} s; "
          f"truth and detections in {work})")


if __name__ == "__main__":
    main()
