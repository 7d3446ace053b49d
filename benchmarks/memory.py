"""Peak memory (RSS) of long audio: identifying a 1 h query, and indexing a 2 h file.

    python benchmarks/memory.py [--model nnfp/weights/default.keras] [--query-hours 1]
                                [--build-hours 2] [--workdir /tmp/nnfp-memory]

Each measured command is a fresh `nnfp` process; its own peak RSS is read from the kernel
(`VmHWM`, `_child.run_child`), so imports, the model and faiss count too. A baseline
row (a 10 s query) shows what every process pays before any audio. Audio is generated
with NumPy (music-like composed tracks, noise) and written as WAV with soundfile:

- index: 4 composed tracks of 60 s (8 kHz);
- query: `--query-hours` of the catalogue tracks end to end plus noise, 16 kHz mono
  (resampled on load), identified with `nnfp identify`;
- build: one `--build-hours` file (8 kHz mono, 16-bit) indexed with `nnfp index build`:
  it is decoded and fingerprinted block by block (files longer than
  `nnfp.catalogue.fingerprint.STREAM_SECONDS`), so memory does not grow with its length.

Targets (issue 10): the 1 h query under 2 GB; the 2 h file far below the 4.6 GB it took
when decoded whole.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def measure(args, label):
    """Runs `nnfp ARGS` in a fresh process -> (peak RSS in MB, wall seconds)."""
    from _child import run_child

    command = [sys.executable, "-c", "import sys; from nnfp.cli import main; sys.exit(main(sys.argv[1:]))", *args]
    returncode, _, stderr, wall, rss = run_child(command, cwd=ROOT)
    if returncode != 0:
        sys.exit(f"{label}: nnfp {' '.join(args)} failed ({returncode}):\n{stderr.decode()[-3000:]}")
    return rss / 2**20, wall


def write_long(path, seconds, rate, tracks, seed):
    """`seconds` of the catalogue `tracks` played end to end (looped) plus noise, written in blocks."""
    rng = np.random.default_rng(seed)
    loop = np.concatenate(tracks)
    if rate != 8000:
        import soxr

        loop = soxr.resample(loop, 8000, rate)
    total = int(seconds * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as out:
        for first in range(0, total, len(loop)):
            block = loop[: min(len(loop), total - first)]
            out.write(0.8 * block + 0.05 * rng.standard_normal(len(block)).astype(np.float32))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the packaged model")
    parser.add_argument("--query-hours", type=float, default=1.0)
    parser.add_argument("--build-hours", type=float, default=2.0)
    parser.add_argument("--workdir", default="/tmp/nnfp-memory")
    args = parser.parse_args()

    from nnfp.corpus.synth import compose_track

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "catalogue").mkdir(parents=True)
    (work / "long").mkdir()
    model = ["--model", args.model] if args.model else []
    tracks = [compose_track(500 + i, 60.0) for i in range(4)]
    for i, track in enumerate(tracks):
        sf.write(work / "catalogue" / f"track_{i}.wav", track, 8000)
    write_long(work / "query_10s.wav", 10.0, 16000, tracks, seed=1)
    write_long(work / "query_long.wav", args.query_hours * 3600, 16000, tracks, seed=2)
    write_long(work / "long" / "long.wav", args.build_hours * 3600, 8000, tracks, seed=3)

    subprocess.run(
        [sys.executable, "-c", "import sys; from nnfp.cli import main; sys.exit(main(sys.argv[1:]))",
         "index", "build", str(work / "catalogue"), str(work / "index"), *model, "--quiet"],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    rows = [
        ("identify, 10 s query (baseline)", ["identify", str(work / "index"), str(work / "query_10s.wav")]),
        (f"identify, {args.query_hours:g} h query", ["identify", str(work / "index"), str(work / "query_long.wav")]),
        (
            f"index build, one {args.build_hours:g} h file",
            ["index", "build", str(work / "long"), str(work / "long_index"), *model, "--quiet"],
        ),
    ]
    print(f"model: {args.model or 'packaged default (nnfp/weights/default.keras)'}")
    print(f"{'command':<36} {'peak RSS':>10} {'wall':>9}")
    for label, command in rows:
        rss, seconds = measure(command, label)
        print(f"{label:<36} {rss:>7.0f} MB {seconds:>7.0f} s", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
