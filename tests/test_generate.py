"""`nnfp.corpus.generate`: the corpus folder, its manifest, cache, repair and atomic appearance."""

import json
import pathlib

import numpy as np
import pytest
import soundfile as sf

from nnfp.corpus.generate import CorpusPaths, generate_corpus
from nnfp.corpus.noise import make_noise
from nnfp.corpus.rooms import make_impulse_response
from nnfp.corpus.synth import compose_track

SR = 8000


def _corpus_kwargs(**overrides):
    kwargs = dict(n_tracks=2, track_seconds=2.0, n_noise=2, noise_seconds=1.0, n_irs=2, seed=7)
    kwargs.update(overrides)
    return kwargs


def _mtimes(root):
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in sorted(root.rglob("*.wav"))
    }


def test_generate_corpus_writes_files_and_manifest(tmp_path):
    paths = generate_corpus(tmp_path, **_corpus_kwargs())
    assert paths == CorpusPaths(tmp_path, tmp_path / "music", tmp_path / "noise", tmp_path / "ir")
    assert sorted(_mtimes(tmp_path)) == [
        "ir/ir_000.wav",
        "ir/ir_001.wav",
        "music/track_0000.wav",
        "music/track_0001.wav",
        "noise/noise_000.wav",
        "noise/noise_001.wav",
    ]
    assert not list(tmp_path.rglob("*.tmp"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["params"]["seed"] == 7
    assert manifest["params"]["sample_rate"] == SR
    assert manifest["params"]["n_tracks"] == 2
    assert manifest["files"]["music"] == ["music/track_0000.wav", "music/track_0001.wav"]

    entries = manifest["entries"]
    seeds = [e["seed"] for group in entries.values() for e in group]
    assert len(set(seeds)) == len(seeds)
    expected = {
        "music": [compose_track(e["seed"], 2.0) for e in entries["music"]],
        "noise": [make_noise(e["seed"], 1.0, kind=e["kind"]) for e in entries["noise"]],
        "ir": [make_impulse_response(e["seed"]) for e in entries["ir"]],
    }
    for group, arrays in expected.items():
        for entry, array in zip(entries[group], arrays, strict=True):
            pcm, sample_rate = sf.read(tmp_path / entry["file"], dtype="int16")
            assert sample_rate == SR
            assert pcm.shape == array.shape
            assert np.max(np.abs(pcm / 32767.0 - array)) <= 1.0 / 32767.0
            assert sf.info(tmp_path / entry["file"]).subtype == "PCM_16"


def test_generate_corpus_cache_and_repair(tmp_path, monkeypatch):
    generate_corpus(tmp_path, **_corpus_kwargs())
    before = _mtimes(tmp_path)
    from nnfp.corpus import generate as corpus

    def fail(*args, **kwargs):
        raise AssertionError("a cached corpus is not composed again")

    with monkeypatch.context() as patch:
        patch.setattr(corpus, "compose_track", fail)
        generate_corpus(tmp_path, **_corpus_kwargs())
    assert _mtimes(tmp_path) == before

    old = sf.read(tmp_path / "ir" / "ir_001.wav", dtype="int16")[0]
    (tmp_path / "ir" / "ir_001.wav").unlink()  # a missing file is written again, same bytes
    generate_corpus(tmp_path, **_corpus_kwargs())
    np.testing.assert_array_equal(sf.read(tmp_path / "ir" / "ir_001.wav", dtype="int16")[0], old)
    assert {k: v for k, v in _mtimes(tmp_path).items() if k != "ir/ir_001.wav"} == {
        k: v for k, v in before.items() if k != "ir/ir_001.wav"
    }


def test_generate_corpus_never_rewrites_a_folder_another_run_may_read(tmp_path):
    root = tmp_path / "corpus"
    generate_corpus(root, **_corpus_kwargs())
    before = _mtimes(root)
    with pytest.raises(ValueError, match=r"holds a different corpus \(seed: 7 -> 8, n_tracks: 2 -> 1\)"):
        generate_corpus(root, **_corpus_kwargs(seed=8, n_tracks=1))
    assert _mtimes(root) == before and json.loads((root / "manifest.json").read_text())["params"]["seed"] == 7

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a generated corpus"):
        generate_corpus(other, **_corpus_kwargs())
    assert [p.name for p in other.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "mine"]  # no staging folder left


def test_generate_corpus_is_renamed_into_place_whole(tmp_path, monkeypatch):
    """The corpus appears at out_dir only once complete; a run that loses the race uses the winner's."""
    import os

    from nnfp.corpus import generate as corpus

    root = tmp_path / "corpus"
    renamed = []

    def rename(src, dst):
        assert (pathlib.Path(src) / "manifest.json").exists() and not root.exists()
        renamed.append(dst)
        if len(renamed) == 1:  # first call: another run wins the race while we were writing
            generate_corpus_without_patch(root)
        return real_rename(src, dst)

    real_rename = os.rename

    def generate_corpus_without_patch(path):
        with monkeypatch.context() as inner:
            inner.setattr(corpus.os, "rename", real_rename)
            generate_corpus(path, **_corpus_kwargs())

    monkeypatch.setattr(corpus.os, "rename", rename)
    paths = generate_corpus(root, **_corpus_kwargs())
    assert renamed == [root] and paths.root == root
    assert json.loads((root / "manifest.json").read_text())["params"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # the loser's staging folder is gone


def test_track_seed_does_not_depend_on_n_tracks(tmp_path):
    small = generate_corpus(tmp_path / "small", **_corpus_kwargs(n_tracks=2, n_noise=0, n_irs=0))
    large = generate_corpus(tmp_path / "large", **_corpus_kwargs(n_tracks=3, n_noise=0, n_irs=0))
    for name in ("track_0000.wav", "track_0001.wav"):
        np.testing.assert_array_equal(
            sf.read(small.music_dir / name, dtype="int16")[0],
            sf.read(large.music_dir / name, dtype="int16")[0],
        )
