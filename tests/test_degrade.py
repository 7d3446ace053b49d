"""`nnfp.pipeline.degrade`: SNR mixing and FFT convolution against NumPy twins."""

import numpy as np
import pytest

from nnfp.pipeline.degrade import fft_convolve, make_query, mix_at_snr

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


def test_make_query_matches_numpy_twin():
    rng = np.random.default_rng(6)
    track = rng.standard_normal(5 * SR).astype(np.float32) * 0.2
    noise = rng.standard_normal(SR).astype(np.float32)  # shorter than the query: tiled
    ir = (rng.standard_normal(400) * np.exp(-np.arange(400) / 80)).astype(np.float32)
    query = make_query(track, 1.0, 3.0, noise=noise, impulse_response=ir, snr_db=5.0)
    x = track[SR : 4 * SR].astype(np.float64)
    n = np.resize(noise, len(x)).astype(np.float64)
    mixed = x + n * np.sqrt(np.mean(x**2) / (np.mean(n**2) * 10**0.5))
    assert 10 * np.log10(np.mean(x**2) / np.mean((mixed - x) ** 2)) == pytest.approx(5.0)
    wet = np.convolve(mixed, ir)[: len(x)]
    wet *= np.sqrt(np.mean(mixed**2) / np.mean(wet**2))
    assert query.shape == (3 * SR,) and query.dtype == np.float32
    np.testing.assert_allclose(query, wet, atol=1e-4)
    np.testing.assert_array_equal(make_query(track, 0.5, 1.0), track[SR // 2 : SR // 2 + SR])
    with pytest.raises(ValueError, match="outside the track"):
        make_query(track, 4.5, 1.0)
    with pytest.raises(ValueError, match="snr_db"):
        make_query(track, 0.0, 1.0, noise=noise)
