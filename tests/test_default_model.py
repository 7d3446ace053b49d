"""The model shipped in the package (MODEL_CARD.md): loads offline and separates audio."""

import numpy as np

from nnfp.catalogue.fingerprint import DEFAULT_MODEL_PATH, resolve_model
from nnfp.corpus.noise import make_noise
from nnfp.corpus.synth import compose_track
from nnfp.export import load_fingerprinter


def test_default_model_ships_and_is_the_default():
    assert DEFAULT_MODEL_PATH.exists() and DEFAULT_MODEL_PATH.stat().st_size < 50e6
    assert resolve_model(None) == DEFAULT_MODEL_PATH


def test_default_model_matches_noisy_replicas_to_their_originals():
    embedder = load_fingerprinter(DEFAULT_MODEL_PATH)
    assert embedder.segment_samples == 8000
    music = compose_track(4321, 12.0)
    originals = np.stack([music[i * 8000 : (i + 1) * 8000] for i in range(12)])
    noise = make_noise(5, 12.0)
    noise *= np.sqrt(np.mean(music**2) / np.mean(noise**2)) / np.sqrt(10 ** (10 / 10))  # 10 dB SNR
    replicas = originals + noise.reshape(12, 8000)
    a, b = embedder.fingerprint(originals), embedder.fingerprint(replicas)
    assert a.shape == (12, 128)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    similarity = b @ a.T  # (replica, original)
    assert (similarity.argmax(axis=1) == np.arange(12)).mean() >= 0.75
