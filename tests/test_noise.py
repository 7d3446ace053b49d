"""`nnfp.corpus.noise`: every noise kind, deterministic and distinct."""

import numpy as np
import pytest

from nnfp.corpus.noise import NOISE_KINDS, make_noise


def _rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def _spectral_flatness(x, n_fft=512):
    frames = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), n_fft)[:: n_fft // 2]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2 + 1e-12
    return float(np.mean(np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)))


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
