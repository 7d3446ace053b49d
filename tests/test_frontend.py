import numpy as np
import pytest

from nnfp.frontend import LogMelSpectrogram


def _numpy_log_mel(x, sr=8000, n_fft=1024, hop=256, n_mels=256, f_min=300.0, f_max=4000.0, top_db=80.0):
    """Independent reference: zero-padded framing, periodic Hann, power, HTK mel triangles."""
    pad = np.pad(x, (n_fft // 2, n_fft // 2))
    n_frames = 1 + len(x) // hop
    frames = np.stack([pad[i * hop : i * hop + n_fft] for i in range(n_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, bins)

    def hz_to_mel(f):
        return 1127.0 * np.log1p(np.asarray(f) / 700.0)

    bins_mel = hz_to_mel(np.linspace(0, sr / 2, n_fft // 2 + 1))[:, None]
    edges = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    weights = np.maximum(0, np.minimum((bins_mel - lower) / (center - lower), (upper - bins_mel) / (upper - center)))
    weights[0] = 0.0  # no DC
    db = 10 * np.log10(np.maximum(power @ weights, 1e-10))
    db = np.maximum(db - db.max(), -top_db)
    return db.T  # (mels, frames)


def test_matches_numpy_reference():
    rng = np.random.default_rng(0)
    t = np.arange(8000) / 8000
    x = np.stack([
        0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(8000),
        0.1 * rng.standard_normal(8000),
    ]).astype("float32")
    out = np.asarray(LogMelSpectrogram()(x))
    assert out.shape == (2, 256, 32, 1)
    for i in range(2):
        ref = _numpy_log_mel(x[i].astype("float64"))
        # dB values: float32 FFT vs float64 reference; compare where above the floor.
        assert np.max(np.abs(out[i, :, :, 0] - ref)) < 0.05


def test_normalised_per_example_not_per_batch():
    rng = np.random.default_rng(1)
    loud = rng.standard_normal(8000).astype("float32")
    quiet = 1e-3 * rng.standard_normal(8000).astype("float32")
    layer = LogMelSpectrogram()
    alone = np.asarray(layer(quiet[None]))
    together = np.asarray(layer(np.stack([loud, quiet])))
    np.testing.assert_allclose(together[1], alone[0], atol=1e-4)
    assert together[0].max() == 0.0 and together[1].max() == 0.0
    assert together.min() >= -80.0


def test_tone_peaks_at_its_mel_band():
    t = np.arange(8000) / 8000
    x = np.sin(2 * np.pi * 1000 * t).astype("float32")[None]
    out = np.asarray(LogMelSpectrogram()(x))[0, :, 16, 0]
    edges = np.linspace(1127 * np.log1p(300 / 700), 1127 * np.log1p(4000 / 700), 258)
    centres_hz = 700 * np.expm1(edges[1:-1] / 1127)
    assert abs(centres_hz[np.argmax(out)] - 1000) < 30


def test_config_round_trip_and_errors():
    layer = LogMelSpectrogram(n_mels=64, f_min=100.0)
    clone = LogMelSpectrogram.from_config(layer.get_config())
    assert clone.n_mels == 64 and clone.f_min == 100.0
    with pytest.raises(ValueError, match="f_max"):
        LogMelSpectrogram(f_max=5000.0)
