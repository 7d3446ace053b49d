"""`nnfp data prepare`: bad files reported and skipped, checksums, resume after a crash."""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from nnfp.audio.io import load_audio
from nnfp.audio.prepare import prepare_audio
from nnfp.audio.sources import is_prepared_cache, load_prepared, load_source
from nnfp.cli import main
from nnfp.corpus.synth import compose_track

SR = 8000


def _good_files(root, n=3, seconds=2.0):
    """Music in several formats, rates and channel counts."""
    root.mkdir(parents=True, exist_ok=True)
    formats = [("wav", 16000, 2, "PCM_16"), ("flac", 44100, 1, "PCM_24"), ("ogg", 22050, 2, "VORBIS")]
    paths = []
    for i in range(n):
        suffix, rate, channels, subtype = formats[i % len(formats)]
        x = compose_track(700 + i, seconds, rate)
        x = np.stack([x, 0.5 * x], axis=1) if channels == 2 else x
        path = root / f"song{i}.{suffix}"
        sf.write(path, x, rate, subtype=subtype)
        paths.append(path)
    return paths


def _bad_files(root):
    """One file per way of being unusable, and the reason `prepare` must give."""
    (root / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "empty.flac").write_bytes(b"")
    sf.write(root / "zero.wav", np.zeros(0, np.float32), SR)
    sf.write(root / "short.wav", compose_track(1, 0.5, SR), SR)
    sf.write(root / "silent.wav", np.zeros(2 * SR, np.float32), SR)
    nan = compose_track(2, 2.0, SR)
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    (root / "fake.mp3").write_bytes(b"this is not an mp3 at all " * 50)
    (root / "notes.txt").write_text("liner notes")
    return {
        "corrupt.wav": "cannot decode",
        "empty.flac": "empty file",
        "zero.wav": "no samples",
        "short.wav": "too short",
        "silent.wav": "silent",
        "nan.wav": "NaN",
        "fake.mp3": "cannot decode",
        "notes.txt": "unsupported format",
    }


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_skips_bad_files_with_reasons_and_matches_load_audio(tmp_path, capsys):
    src = tmp_path / "src"
    good = _good_files(src / "albums")
    expected = _bad_files(src)
    out = tmp_path / "cache"
    assert main(["data", "prepare", str(src), str(out), "--quiet", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "prepared 3 tracks" in printed and "8 skipped" in printed
    for name, reason in expected.items():  # every bad file in the summary, with its reason
        line = next(line for line in printed.splitlines() if line.strip().startswith(str(src / name)))
        assert reason in line, line

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"] == {"files": 11, "tracks": 3, "skipped": 8, "hours": pytest.approx(6 / 3600, abs=1e-3), "shards": 1}
    assert {s["path"].split("/")[-1]: s["reason"] for s in manifest["skipped"]}.keys() == expected.keys()
    assert is_prepared_cache(out)

    tracks, paths, skipped = load_prepared(out, sample_rate=SR)
    assert [p.name for p in paths] == [p.name for p in good] and not skipped
    for record, path, track in zip(manifest["tracks"], good, tracks, strict=True):
        info = sf.info(str(path))
        assert record["source_rate"] == info.samplerate and record["channels"] == info.channels
        assert record["sha256"] == _sha256(path)  # verifiable checksum of the source
        assert record["pcm_sha256"] == hashlib.sha256(np.asarray(track).tobytes()).hexdigest()
        assert record["duration_s"] == pytest.approx(2.0, abs=1e-3)
        assert record["track_id"] == f"albums/{path.name}"
        # mono mix + soxr resampling identical to load_audio, up to int16 rounding
        reference = load_audio(path, SR)
        assert track.dtype == np.int16 and len(track) == len(reference)
        np.testing.assert_allclose(track / 32768.0, reference, atol=0.5 / 32768 + 1e-7)

    # a prepared cache is a training source like a folder
    floats, _, _ = load_source(out, sample_rate=SR, as_float=True)
    np.testing.assert_allclose(floats[0], load_audio(good[0], SR), atol=1e-4)
    with pytest.raises(ValueError, match="prepared at 8000 Hz but 16000 Hz"):
        load_prepared(out, sample_rate=16000)


def test_prepare_resumes_after_crash_without_redoing_files(tmp_path):
    src = tmp_path / "src"
    _good_files(src, n=6, seconds=1.5)
    sf.write(src / "silent.wav", np.zeros(2 * SR, np.float32), SR)
    out = tmp_path / "cache"
    tiny_shards = dict(shard_megabytes=0.02, progress=False, workers=2)  # ~ one file per shard

    seen = []

    def crash_after_four(record):
        seen.append(record["source"])
        if len(seen) == 4:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        prepare_audio(src, out, on_result=crash_after_four, **tiny_shards)
    assert not (out / "manifest.json").exists()
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert shards and all(p.endswith(".npy") for p in shards)  # no temp file left
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert {r["shard"] for r in journal if r["status"] == "ok"} == set(shards)
    done = {r["source"] for r in journal}
    assert 3 <= len(done) <= 4

    # debris of a harder kill: a half-written shard, an unjournaled shard, a torn journal line
    (out / "shards" / "shard-00090.npy.tmp").write_bytes(b"\x93NUMPY half")
    np.save(out / "shards" / "shard-00091.npy", np.zeros(10, np.int16))
    with open(out / "journal.jsonl", "a") as handle:
        handle.write('{"source": "/somewhere/else.wav", "sta')

    decoded = []
    summary = prepare_audio(src, out, on_result=lambda r: decoded.append(r["source"]), **tiny_shards)
    assert not set(decoded) & done  # finished files were not decoded again
    assert summary["done_before"] == len(done) and summary["files"] == 7
    assert summary["tracks"] == 6 and [s["path"] for s in summary["skipped"]] == [str(src / "silent.wav")]
    assert not list((out / "shards").glob("*.tmp")) and not (out / "shards" / "shard-00091.npy").exists()

    fresh = prepare_audio(src, tmp_path / "fresh", **tiny_shards)
    resumed_tracks = load_prepared(out)[0]
    fresh_tracks = load_prepared(tmp_path / "fresh")[0]
    assert fresh["tracks"] == 6
    for a, b in zip(resumed_tracks, fresh_tracks, strict=True):
        np.testing.assert_array_equal(a, b)

    again = prepare_audio(src, out, **tiny_shards)  # nothing left to do
    assert again["done_before"] == 7 and again["prepared"] == 0


def test_two_runs_into_one_cache_take_turns(tmp_path):
    import threading

    from nnfp.outputs import lock_path

    src = tmp_path / "src"
    _good_files(src, n=4, seconds=1.5)
    out = tmp_path / "cache"
    tiny_shards = dict(shard_megabytes=0.02, progress=False, workers=1)  # ~ one file per shard
    started, results = threading.Event(), {}

    def slow(record):  # the first run is still writing shards when the second one starts
        started.set()
        threading.Event().wait(0.2)

    first = threading.Thread(target=lambda: results.update(first=prepare_audio(src, out, on_result=slow, **tiny_shards)))
    first.start()
    assert started.wait(60)
    results["second"] = prepare_audio(src, out, **tiny_shards)  # waits for the first, then resumes it
    first.join(60)
    assert results["first"]["prepared"] == 4 and results["second"]["done_before"] == 4
    assert results["second"]["prepared"] == 0 and results["second"]["tracks"] == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted({t["shard"] for t in manifest["tracks"]})
    tracks, paths, _ = load_prepared(out, sample_rate=SR)
    assert sorted(paths) == sorted(src.iterdir())
    for track, path in zip(tracks, paths, strict=True):  # every track's own audio, whole
        np.testing.assert_allclose(track / 32768.0, load_audio(path, SR), atol=0.5 / 32768 + 1e-7)
    assert not lock_path(out).exists()


def test_prepare_from_manifest_keeps_track_ids(tmp_path):
    paths = _good_files(tmp_path / "audio", n=2)
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,track_id\naudio/song0.wav,A-0\naudio/song1.flac,B-1\nmissing.wav,C\n")
    summary = prepare_audio(manifest, tmp_path / "cache", progress=False)
    assert summary["tracks"] == 2
    assert summary["skipped"] == [{"path": str(tmp_path / "missing.wav"), "reason": "file not found"}]
    records = json.loads((tmp_path / "cache" / "manifest.json").read_text())["tracks"]
    assert [r["track_id"] for r in records] == ["A-0", "B-1"]
    assert records[0]["sha256"] == _sha256(paths[0])


def test_prepare_errors_name_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="Source not found: .*nowhere"):
        prepare_audio(tmp_path / "nowhere", tmp_path / "out", progress=False)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"No audio files in .*docs"):
        prepare_audio(tmp_path / "docs", tmp_path / "out", progress=False)
    _good_files(tmp_path / "music", n=1)
    prepare_audio(tmp_path / "music", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="prepared at 8000 Hz"):
        prepare_audio(tmp_path / "music", tmp_path / "out", sample_rate=16000, progress=False)
    assert main(["data", "prepare", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
