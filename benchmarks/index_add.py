"""Adding tracks to a large saved index: time, bytes written and disk held, per step.

    python benchmarks/index_add.py [--rows 2000000] [--add-rows 36000] [--workdir /tmp/nnfp-add]
    python benchmarks/index_add.py --step add --workdir DIR   # one timed step (for farm-bench)

`FingerprintDB.add(work_dir=...)` (what `nnfp index add` does) copies the stored rows and the
new ones into a work file chunk by chunk, never the whole store into RAM; `save` then writes
the new version of the folder. Since 2026-12-07 the work file becomes the new version's
`embeddings.npy` by a hard link instead of being copied again (the same bytes: a test checks
them): the rows are written once, and the disk holds the old version and one copy, not two.

The catalogue is synthetic (random unit vectors, d = 128, 360 rows a track: the store alone,
no model): `--rows` stored (2,000,000 rows are 1 GB, about 11,000 tracks of 3 min at a 0.5 s
hop), `--add-rows` added. `--step prepare` writes the saved index; `--step add` loads it
(memory-mapped), adds, saves to a new folder (work file and new folder in a temporary folder of
its own inside `--workdir`, removed afterwards; nothing else there is touched), and prints one line: seconds of add and of save,
bytes this process wrote (`/proc/self/io`) and the largest extra disk use seen in the work and
output folders during the save. Without `--step`, both run in fresh processes and a table is
printed. The page cache makes the first write cheap: numbers depend on the machine and its
disk; say which.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

D = 128
TRACK_ROWS = 360


def unit_rows(rng, n):
    rows = rng.standard_normal((n, D)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def tracks_of(n_rows, first_id):
    n_tracks = -(-n_rows // TRACK_ROWS)
    segment_track = (np.arange(n_rows) // TRACK_ROWS + first_id).astype(np.int64)
    segment_start = (np.arange(n_rows) % TRACK_ROWS * 0.5).astype(np.float32)
    tracks = [{"track_id": first_id + i, "path": f"t{first_id + i}.wav", "duration_s": TRACK_ROWS * 0.5}
              for i in range(n_tracks)]
    return segment_track, segment_start, tracks


def prepare(workdir, n_rows):
    from nnfp.store.db import FingerprintDB

    rng = np.random.default_rng(0)
    handle, rows = tempfile.mkstemp(prefix="rows-", suffix=".npy", dir=workdir)  # ours: never a user's file
    os.close(handle)
    try:
        store = np.lib.format.open_memmap(rows, mode="w+", dtype=np.float32, shape=(n_rows, D))
        for first in range(0, n_rows, 100_000):
            store[first : first + 100_000] = unit_rows(rng, min(100_000, n_rows - first))
        store.flush()
        segment_track, segment_start, tracks = tracks_of(n_rows, 0)
        db = FingerprintDB.build(np.load(rows, mmap_mode="r"), segment_track, segment_start,
                                 tracks, index_type="flat", threads=1)
        db.save(workdir / "index")  # refuses to replace a folder nnfp did not write
    finally:
        os.unlink(rows)


def written_bytes():
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def disk_use(folder):
    """Bytes on disk of the files under `folder`, each file (inode) once."""
    seen = {}
    for path in folder.rglob("*"):
        try:
            if not path.is_file():
                continue
            info = path.stat()
        except FileNotFoundError:  # renamed or deleted while the save runs
            continue
        seen[info.st_dev, info.st_ino] = info.st_blocks * 512
    return sum(seen.values())


def add_step(workdir, add_rows):
    from nnfp.store.db import FingerprintDB

    run = Path(tempfile.mkdtemp(prefix="add-", dir=workdir))  # made here, removed at the end
    out, work = run / "added", run / "work"
    work.mkdir()
    db = FingerprintDB.load(workdir / "index")
    n_old = len(db)
    segment_track, segment_start, tracks = tracks_of(add_rows, 0)
    new = unit_rows(np.random.default_rng(1), add_rows)
    written = written_bytes()
    started = time.perf_counter()
    db.add(new, segment_track, segment_start, tracks, work_dir=work)
    added = time.perf_counter()
    peak, done = [0], threading.Event()

    def watch():  # extra disk held by the work file and the new version while the save runs
        while not done.is_set():
            peak[0] = max(peak[0], disk_use(run))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    db.save(out)
    saved = time.perf_counter()
    done.set()
    watcher.join()
    assert len(FingerprintDB.load(out)) == n_old + add_rows
    print(json.dumps({
        "rows": n_old, "added": add_rows, "add_s": added - started, "save_s": saved - added,
        "written_gb": (written_bytes() - written) / 1e9, "peak_extra_disk_gb": peak[0] / 1e9,
    }))
    del db
    shutil.rmtree(run)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--add-rows", type=int, default=36_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nnfp-add"))
    parser.add_argument("--step", choices=("prepare", "add"))
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.step == "prepare":
        return prepare(args.workdir, args.rows)
    if args.step == "add":
        return add_step(args.workdir, args.add_rows)
    here = [sys.executable, __file__, "--workdir", str(args.workdir), "--rows", str(args.rows),
            "--add-rows", str(args.add_rows)]
    if not (args.workdir / "index" / "tracks.json").exists():
        subprocess.run([*here, "--step", "prepare"], check=True)
    result = json.loads(subprocess.run([*here, "--step", "add"], check=True, capture_output=True,
                                       text=True).stdout.strip().splitlines()[-1])
    print(f"index of {result['rows']:,} rows (flat, memory-mapped), {result['added']:,} rows added; "
          f"{os.cpu_count()} cores")
    print(f"{'add s':>8} {'save s':>8} {'written GB':>11} {'extra disk GB (peak)':>21}")
    print(f"{result['add_s']:8.2f} {result['save_s']:8.2f} {result['written_gb']:11.2f} "
          f"{result['peak_extra_disk_gb']:21.2f}")


if __name__ == "__main__":
    main()
