"""`nnfp.pipeline.degrade`: SNR mixing and FFT convolution against NumPy twins."""

import numpy as np
import pytest

from nnfp.pipeline.degrade import fft_convolve, mix_at_snr

SR = 8000
SEG = 8000


def sine(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mix_handles_silence_without_nan():
    x = np.stack([np.zeros(SEG), sine(300, 1.0, SR)]).astype(np.float32)
    n = np.stack([sine(50, 1.0, SR), np.zeros(SEG)]).astype(np.float32)
    y = mix_at_snr(x, n, np.array([0.0, 0.0], np.float32)).numpy()
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("ir_len", [1, 37, 600, 9000])
def test_fft_convolution_matches_numpy(ir_len):
    rng = np.random.default_rng(ir_len)
    x = rng.standard_normal((3, SEG)).astype(np.float32) * 0.3
    irs = (rng.standard_normal((3, ir_len)) * np.exp(-np.arange(ir_len) / 200)).astype(np.float32)
    y = fft_convolve(x, irs).numpy()
    expected = np.stack([np.convolve(a, h)[:SEG] for a, h in zip(x, irs, strict=True)])
    np.testing.assert_allclose(y, expected, atol=1e-4)
