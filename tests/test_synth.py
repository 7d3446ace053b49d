"""`nnfp.corpus.synth`: composed music is deterministic, tonal, rhythmic and distinct per seed."""

import numpy as np
import pytest

from nnfp.corpus.synth import compose_track

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
