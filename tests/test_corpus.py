import json
import pathlib

import numpy as np
import pytest
import soundfile as sf

from nnfp.corpus import (
    NOISE_KINDS,
    CorpusPaths,
    compose_track,
    generate_corpus,
    make_impulse_response,
    make_noise,
)

SR = 8000


def _rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def _spectral_flatness(x, n_fft=512):
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n_fft)[:: n_fft // 2]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2 + 1e-12
    return float(np.mean(np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)))


def _envelope_cv(x, frame=80):
    frames = x[: len(x) // frame * frame].astype(np.float64).reshape(-1, frame)
    envelope = np.sqrt(np.mean(frames**2, axis=1))
    return float(envelope.std() / envelope.mean())


def _max_xcorr(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    n = len(a) + len(b)
    xcorr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)
    return float(np.max(np.abs(xcorr)) / np.sqrt(np.sum(a**2) * np.sum(b**2)))


def _schroeder_rt60(h, sample_rate=SR):
    energy = np.cumsum((h.astype(np.float64) ** 2)[::-1])[::-1]
    decay_db = 10.0 * np.log10(energy / energy[0] + 1e-30)
    start, stop = np.argmax(decay_db <= -5.0), np.argmax(decay_db <= -25.0)
    slope = np.polyfit(np.arange(start, stop) / sample_rate, decay_db[start:stop], 1)[0]
    return -60.0 / slope


@pytest.fixture(scope="module")
def tracks():
    return [compose_track(seed, 6.0) for seed in range(6)]


def test_compose_track_shape_dtype_range():
    x = compose_track(3, 2.5)
    assert x.shape == (20000,)
    assert x.dtype == np.float32
    assert np.all(np.isfinite(x))
    assert np.max(np.abs(x)) == pytest.approx(0.9, abs=1e-3)
    assert _rms(x) > 0.05
    assert compose_track(3, 1.0, sample_rate=16000).shape == (16000,)


def test_compose_track_is_deterministic():
    np.testing.assert_array_equal(compose_track(11, 3.0), compose_track(11, 3.0))
    assert abs(np.corrcoef(compose_track(11, 3.0), compose_track(12, 3.0))[0, 1]) < 0.2


def test_compose_track_rejects_bad_duration():
    with pytest.raises(ValueError, match="seconds"):
        compose_track(0, 0.0)


def test_music_is_tonal_and_rhythmic(tracks):
    white = np.random.default_rng(0).standard_normal(6 * SR)
    white_flatness = _spectral_flatness(white)
    assert white_flatness > 0.5
    for x in tracks:
        # Harmonic peaks make the spectrum far from flat; note and drum onsets make the
        # 10 ms envelope fluctuate far more than stationary noise (cv ~ 0.08).
        assert _spectral_flatness(x) < 0.25 * white_flatness
        assert _envelope_cv(x) > 0.3
    assert _envelope_cv(white) < 0.15


def test_different_tracks_are_dissimilar(tracks):
    excerpts = [x[2 * SR : 4 * SR] for x in tracks]
    assert _max_xcorr(excerpts[0], excerpts[0]) == pytest.approx(1.0, abs=1e-6)
    worst = max(
        _max_xcorr(excerpts[i], excerpts[j])
        for i in range(len(excerpts))
        for j in range(i + 1, len(excerpts))
    )
    assert worst < 0.45


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_make_noise_kinds(kind):
    x = make_noise(5, 1.5, kind=kind)
    assert x.shape == (12000,)
    assert x.dtype == np.float32
    assert np.all(np.isfinite(x))
    assert np.max(np.abs(x)) == pytest.approx(0.9, abs=1e-3)
    assert _rms(x) > 0.01
    np.testing.assert_array_equal(x, make_noise(5, 1.5, kind=kind))


def test_make_noise_kinds_sound_different():
    white = _spectral_flatness(make_noise(1, 2.0, kind="white"))
    hum = _spectral_flatness(make_noise(1, 2.0, kind="hum"))
    brown = _spectral_flatness(make_noise(1, 2.0, kind="brown"))
    assert white > 0.5
    assert hum < 0.05
    assert brown < 0.05
    assert abs(np.corrcoef(make_noise(1, 2.0), make_noise(2, 2.0))[0, 1]) < 0.2


def test_make_noise_rejects_unknown_kind():
    with pytest.raises(ValueError, match="kind"):
        make_noise(0, 1.0, kind="thunder")


@pytest.mark.parametrize("seed", range(8))
def test_impulse_response(seed):
    h = make_impulse_response(seed)
    assert h.dtype == np.float32
    assert 0.1 * SR < len(h) <= SR
    assert np.all(np.isfinite(h))
    assert np.max(np.abs(h)) == pytest.approx(1.0, abs=1e-6)
    assert np.max(h) == pytest.approx(1.0, abs=1e-6)
    energy = h.astype(np.float64) ** 2
    quarter = len(h) // 4
    assert energy[-quarter:].sum() < 1e-3 * energy[:quarter].sum()
    assert 0.05 <= _schroeder_rt60(h) <= 1.2
    np.testing.assert_array_equal(h, make_impulse_response(seed))


def test_impulse_responses_cover_the_rt60_range():
    rt60s = [_schroeder_rt60(make_impulse_response(seed)) for seed in range(24)]
    assert min(rt60s) < 0.3
    assert max(rt60s) > 0.55


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
    from nnfp import corpus

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

    from nnfp import corpus

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
