"""`nnfp data prepare`: decode and resample a music collection once into an int16 cache.

Training then reads 16-bit PCM shards (memory-mapped `.npy`) instead of decoding compressed
audio at every run. The cache folder holds:

- `shards/shard-00000.npy`, ...: 1-D int16 mono audio at `sample_rate` (float = int16 / 32768),
  tracks back to back;
- `manifest.json`: `format`, `sample_rate`, the `tracks` table (track id, source path, duration,
  source rate and channels, sha256 of the source file, sha256 of the PCM, shard and sample
  offset), the `skipped` files with their reason, and totals;
- `journal.jsonl`: one line per finished file, appended as work completes, so an interrupted
  run started again skips what is done.

A shard is written to a temporary name and renamed into place, and its files are journaled
only after the rename, so a crash never leaves a half-written shard in use. Two runs into one
cache take turns (`nnfp.outputs.output_lock`): the second resumes from the first one's journal.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import pathlib
import sys
import time
from collections import deque

import numpy as np
from tqdm import tqdm

from nnfp.audio.io import AudioError, audio_info, load_audio
from nnfp.audio.sources import (
    AUDIO_EXTENSIONS,
    MANIFEST_EXTENSIONS,
    PREPARED_FORMAT,
    read_manifest,
    usability_problem,
)
from nnfp.outputs import (
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    claim_output_dir,
    output_lock,
    sha256_file,
    write_marker,
)

__all__ = ["PrepareSummary", "prepare_audio", "format_summary"]

_JOURNAL = "journal.jsonl"
_MANIFEST = "manifest.json"
_SHARDS = "shards"


class PrepareSummary(dict):
    """What `prepare_audio` did: counts, hours, and the skipped files (a dict)."""


def _list_sources(source):
    """(path, track_id, reason) for every file of a folder tree or manifest.

    Files in a folder whose extension is not in `AUDIO_EXTENSIONS` come back with a
    reason, so the summary reports them instead of silently ignoring them.
    """
    source = pathlib.Path(source).absolute()
    if source.is_file() and source.suffix.lower() in MANIFEST_EXTENSIONS:
        return [(path, track_id, None) for path, track_id in read_manifest(source)], source.parent
    if source.is_file():
        return [(source, None, None)], source.parent
    if not source.is_dir():
        raise FileNotFoundError(
            f"Source not found: {source} (expected a folder of audio files or a .csv/.json manifest)"
        )
    entries = []
    for path in sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith(".")):
        reason = None
        if path.suffix.lower() not in AUDIO_EXTENSIONS:
            reason = (
                f"unsupported format (extension {path.suffix or 'none'!r}); expected one of "
                f"{', '.join(AUDIO_EXTENSIONS)}"
            )
        entries.append((path, None, reason))
    if not any(reason is None for _, _, reason in entries):
        raise FileNotFoundError(
            f"No audio files in {source} (searched recursively for extensions "
            f"{', '.join(AUDIO_EXTENSIONS)})"
        )
    return entries, source


def _source_key(path):
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _decode(path, sample_rate, min_seconds):
    """Worker: decode one file -> (int16 PCM or None, record)."""
    record = {"source": str(path)}
    try:
        record.update(_source_key(path))
    except OSError:
        pass  # missing: load_audio says so
    try:
        audio = load_audio(path, sample_rate)
        info = audio_info(path)
        problem = usability_problem(audio, sample_rate, min_seconds)
        if problem:
            raise AudioError(path, problem)
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
        record.update(
            status="ok",
            duration_s=round(len(pcm) / sample_rate, 4),
            n_samples=len(pcm),
            source_rate=int(info.sample_rate),
            channels=int(info.channels),
            source_format=info.format,
            sha256=sha256_file(path),
            pcm_sha256=hashlib.sha256(pcm.tobytes()).hexdigest(),
        )
        return pcm, record
    except AudioError as exc:
        record.update(status="skipped", reason=exc.reason)
    except Exception as exc:  # one bad file must never stop a long run
        record.update(status="skipped", reason=f"unexpected error: {type(exc).__name__}: {exc}")
    return None, record


def _read_journal(out_dir):
    """Finished records by source path; the last line may be cut short by a crash."""
    done = {}
    path = out_dir / _JOURNAL
    if not path.exists():
        return done
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # torn final line of a killed run: that file is redone
            done[record["source"]] = record
    return done


def prepare_audio(
    source,
    out_dir,
    sample_rate=8000,
    min_seconds=1.0,
    workers=None,
    shard_megabytes=64.0,
    progress=True,
    on_result=None,
):
    """Decodes, mixes to mono and resamples every file of `source` into an int16 cache.

    Args:
        source: a folder tree of audio files (any format FFmpeg decodes) or a CSV/JSON
            manifest (`path[,track_id]`, see `nnfp.audio.sources.read_manifest`).
        out_dir: the cache folder (created; an existing cache is resumed; any other
            non-empty folder, or one inside `source`, is refused untouched).
        sample_rate: target rate in Hz (soxr resampling).
        min_seconds: shorter files are skipped (and reported).
        workers: decoding threads (default: CPU count).
        shard_megabytes: size at which a shard is closed and written.
        progress: draw a progress bar on stderr.
        on_result: optional callable, called with each file's record once it is decoded
            (or skipped).

    Returns:
        `PrepareSummary` with `files`, `done_before`, `prepared`, `skipped` (list of
        `{path, reason}`), `tracks`, `hours`, `shards`, `seconds`, `out_dir`.

    Raises:
        FileNotFoundError: `source` does not exist or holds no audio file.
        ValueError: `out_dir` was prepared at another sample rate.
    """
    started = time.perf_counter()
    claim_output_dir(out_dir, "prepared", reuse=True, inputs=[source])  # before anything is written
    log = (lambda message: print(message, file=sys.stderr)) if progress else None
    # One writer per cache: a second run into the same folder waits, then resumes from the
    # first one's journal (without the lock it would delete the first one's shards as a
    # killed run's, and both would write the same shard names).
    with output_lock(out_dir, log=log, what="cache"):
        return _prepare(source, out_dir, sample_rate, min_seconds, workers, shard_megabytes, progress, on_result,
                        started)


def _prepare(source, out_dir, sample_rate, min_seconds, workers, shard_megabytes, progress, on_result, started):
    claim_output_dir(out_dir, "prepared", reuse=True, inputs=[source])  # resumes its own cache only
    entries, base = _list_sources(source)
    out_dir = pathlib.Path(out_dir)
    write_marker(out_dir, "prepared")
    shard_dir = out_dir / _SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    settings_path = out_dir / "settings.json"
    settings = {"sample_rate": int(sample_rate), "min_seconds": float(min_seconds)}
    if settings_path.exists():
        previous = json.loads(settings_path.read_text())
        if previous["sample_rate"] != settings["sample_rate"]:
            raise ValueError(
                f"{out_dir} was prepared at {previous['sample_rate']} Hz; resuming at "
                f"{sample_rate} Hz would mix rates. Use a new output folder."
            )
    else:
        atomic_write_bytes(settings_path, json.dumps(settings).encode())

    journal = _read_journal(out_dir)
    # Shards not referenced by the journal were written by a run killed before it could
    # journal them (or are temp files): their files are redone, so drop them.
    used = {r["shard"] for r in journal.values() if r["status"] == "ok"}
    for path in shard_dir.iterdir():
        if path.name not in used:
            path.unlink()
    next_shard = 1 + max((int(name[6:11]) for name in used), default=-1)

    def finished(path):
        record = journal.get(str(path))
        if record is None:
            return False
        try:
            return {k: record.get(k) for k in ("size", "mtime_ns")} == _source_key(path)
        except OSError:
            return record["status"] == "skipped"

    track_ids = {str(path): track_id for path, track_id, _ in entries}
    todo, done_before = [], 0
    journal_handle = open(out_dir / _JOURNAL, "a")
    if journal_handle.tell() > 0:
        with open(out_dir / _JOURNAL, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # a killed run left a torn line: end it
                journal_handle.write("\n")

    def log(records):
        journal_handle.write("".join(json.dumps(r) + "\n" for r in records))
        journal_handle.flush()
        os.fsync(journal_handle.fileno())
        for r in records:
            journal[r["source"]] = r

    bar = tqdm(total=len(entries), desc="prepare", unit="file", disable=not progress, file=sys.stderr)
    hours_done, n_skipped = 0.0, 0

    def advance(record):
        nonlocal hours_done, n_skipped
        if record["status"] == "ok":
            hours_done += record["n_samples"] / sample_rate / 3600
        else:
            n_skipped += 1
        bar.set_postfix_str(f"{hours_done:.2f} h, {n_skipped} skipped", refresh=False)
        bar.update(1)
    for path, _, reason in entries:
        if finished(path):
            done_before += 1
            advance(journal[str(path)])
        elif reason is not None:
            record = {"source": str(path), **_source_key(path), "status": "skipped", "reason": reason}
            log([record])
            advance(record)
            if on_result is not None:
                on_result(record)
        else:
            todo.append(path)

    pending, pending_samples = [], 0  # decoded tracks waiting for the current shard
    limit = max(1, int(shard_megabytes * 1e6 / 2))

    def flush():
        nonlocal next_shard, pending, pending_samples
        if not pending:
            return
        name = f"shard-{next_shard:05d}.npy"
        pcm = np.concatenate([p for p, _ in pending])
        with atomic_file(shard_dir / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, pcm, allow_pickle=False)
        offset, records = 0, []
        for p, record in pending:
            records.append({**record, "shard": name, "offset": offset})
            offset += len(p)
        log(records)  # journaled only once the shard is safely in place
        next_shard += 1
        pending, pending_samples = [], 0

    def consume(future):
        nonlocal pending_samples
        pcm, record = future.result()
        if pcm is None:
            log([record])
        else:
            pending.append((pcm, record))
            pending_samples += len(pcm)
            if pending_samples >= limit:
                flush()
        advance(record)
        if on_result is not None:
            on_result(record)

    workers = workers or os.cpu_count() or 1
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            # A bounded window of files in flight; results are consumed in order.
            window = deque()
            for path in todo:
                window.append(pool.submit(_decode, path, sample_rate, min_seconds))
                if len(window) >= 2 * workers:
                    consume(window.popleft())
            while window:
                consume(window.popleft())
            flush()
    finally:
        journal_handle.close()
        bar.close()

    manifest = _write_manifest(out_dir, journal, entries, base, track_ids, sample_rate, source)
    return PrepareSummary(
        out_dir=str(out_dir),
        files=len(entries),
        done_before=done_before,
        prepared=sum(1 for p in todo if journal[str(p)]["status"] == "ok"),
        tracks=len(manifest["tracks"]),
        hours=manifest["totals"]["hours"],
        shards=manifest["totals"]["shards"],
        skipped=manifest["skipped"],
        seconds=round(time.perf_counter() - started, 1),
    )


def _relative(path, base):
    try:
        return pathlib.Path(path).relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _write_manifest(out_dir, journal, entries, base, track_ids, sample_rate, source):
    tracks, skipped = [], []
    for path, _, _ in entries:
        record = journal.get(str(path))
        if record is None:
            continue
        if record["status"] != "ok":
            skipped.append({"path": str(path), "reason": record["reason"]})
            continue
        relative = _relative(path, base)
        tracks.append(
            {
                "track_id": track_ids.get(str(path)) or relative,
                "path": str(path),
                "relative_path": relative,
                **{
                    k: record[k]
                    for k in (
                        "duration_s", "n_samples", "source_rate", "channels", "source_format",
                        "sha256", "pcm_sha256", "shard", "offset",
                    )
                },
            }
        )
    shards = sorted({t["shard"] for t in tracks})
    manifest = {
        "format": PREPARED_FORMAT,
        "version": 1,
        "sample_rate": int(sample_rate),
        "dtype": "int16",
        "scale": 32768,
        "source": str(source),
        "tracks": tracks,
        "skipped": skipped,
        "totals": {
            "files": len(entries),
            "tracks": len(tracks),
            "skipped": len(skipped),
            "hours": round(sum(t["n_samples"] for t in tracks) / sample_rate / 3600, 4),
            "shards": len(shards),
        },
    }
    atomic_write_json(out_dir / _MANIFEST, manifest)
    return manifest


def format_summary(summary):
    """The summary `nnfp data prepare` prints: totals, then every skipped file and why."""
    lines = [
        f"prepared {summary['tracks']} tracks ({summary['hours']:.2f} h) in {summary['shards']} "
        f"shards -> {summary['out_dir']}",
        f"  files: {summary['files']} found, {summary['done_before']} already done (resumed), "
        f"{summary['prepared']} decoded now, {len(summary['skipped'])} skipped; "
        f"{summary['seconds']:.1f} s",
    ]
    if summary["skipped"]:
        lines.append(f"  skipped ({len(summary['skipped'])}):")
        lines += [f"    {s['path']}: {s['reason']}" for s in summary["skipped"]]
    return "\n".join(lines)
