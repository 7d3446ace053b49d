"""XLA-compiled fingerprinters give the fingerprints of the plain forward pass."""

import numpy as np
import pytest

from nnfp.config import CONFIG_DIR, load_config
from nnfp.export import export_saved_model
from nnfp.runtime import CALL_ROWS, load_fingerprinter
from nnfp.training import build_model

TINY = ["encoder.width=0.0625", "projection.embedding_dim=16"]


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(0)
    return build_model(load_config(CONFIG_DIR / "demo.yaml", TINY))


def test_every_model_call_has_one_shape(model, tmp_path):
    # One compiled XLA program per process, whatever the sizes fingerprinted (seconds per shape).
    model.save(tmp_path / "m.keras")
    embedder = load_fingerprinter(tmp_path / "m.keras")
    shapes = []
    embed = embedder._embed
    embedder._embed = lambda x: (shapes.append(tuple(x.shape)), embed(x))[1]
    x = np.random.default_rng(3).standard_normal((40, model.segment_samples)).astype("float32") * 0.1
    parts = [embedder.fingerprint(x[:n]) for n in (1, 3, 16, 17, 40)]
    assert set(shapes) == {(CALL_ROWS, model.segment_samples)}
    assert [len(part) for part in parts] == [1, 3, 16, 17, 40]
    np.testing.assert_allclose(parts[0], parts[-1][:1], atol=1e-6)  # padding changes no row
    assert embed.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("n", [1, 13, 40])  # one short batch, a padded one, several batches
def test_xla_fingerprints_match_plain_forward_pass(model, tmp_path, n):
    x = np.random.default_rng(n).standard_normal((n, model.segment_samples)).astype("float32") * 0.1
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    xla = load_fingerprinter(tmp_path / "m.keras")
    plain = load_fingerprinter(tmp_path / "m.keras", jit_compile=False)
    got = xla.fingerprint(x, batch_size=16)
    assert got.shape == (n, 16)
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(plain.fingerprint(x, batch_size=16) - expected).max() <= 1e-5


def test_concurrent_model_calls_give_the_fingerprints_of_one_at_a_time(model, tmp_path, monkeypatch):
    import nnfp.runtime as runtime

    x = np.random.default_rng(7).standard_normal((50, model.segment_samples)).astype("float32") * 0.1
    model.save(tmp_path / "m.keras")
    embedder = load_fingerprinter(tmp_path / "m.keras")
    monkeypatch.setattr(runtime, "inference_workers", lambda: 1)
    one_at_a_time = embedder.fingerprint(x, batch_size=256)  # calls of CALL_ROWS rows, in turn
    monkeypatch.setattr(runtime, "inference_workers", lambda: 4)
    monkeypatch.setattr(runtime, "_POOL", None)  # a pool of 4 threads for this test
    at_once = embedder.fingerprint(x, batch_size=256)
    runtime._POOL.shutdown()
    np.testing.assert_array_equal(at_once, one_at_a_time)  # same calls, same order
    assert np.abs(at_once - model.predict(x, verbose=0)).max() <= 1e-5


def test_xla_saved_model_matches(model, tmp_path):
    x = np.random.default_rng(1).standard_normal((5, model.segment_samples)).astype("float32") * 0.1
    out = export_saved_model(model, tmp_path / "export")
    served = load_fingerprinter(out, trust_model=True)
    got = served.fingerprint(x, batch_size=4)
    assert got.shape == (5, 16)
    assert np.abs(got - model.predict(x, verbose=0)).max() <= 1e-5
    # The exported signature takes any batch size: served again at 8 rows, same fingerprints.
    assert np.abs(served.fingerprint(x, batch_size=8) - got).max() <= 1e-5


def test_loaded_models_are_reused_until_the_file_changes(model, tmp_path):
    import shutil

    import keras

    path = tmp_path / "model.keras"
    model.save(path)
    first = load_fingerprinter(path, jit_compile=False)
    assert load_fingerprinter(path, jit_compile=False) is first  # no second load and compile
    shutil.copy(path, tmp_path / "copy.keras")  # an index's copy of the same model
    assert load_fingerprinter(tmp_path / "copy.keras", jit_compile=False) is first
    assert load_fingerprinter(path) is not first  # XLA on: another forward pass
    x = np.random.default_rng(2).standard_normal((3, model.segment_samples)).astype("float32")
    keras.utils.set_random_seed(1)
    build_model(load_config(CONFIG_DIR / "demo.yaml", TINY)).save(path)  # other weights, same path
    changed = load_fingerprinter(path, jit_compile=False)
    assert changed is not first
    assert np.abs(changed.fingerprint(x) - first.fingerprint(x)).max() > 1e-3
    # A SavedModel is never handed out again without trust_model.
    saved = export_saved_model(model, tmp_path / "export")
    load_fingerprinter(saved, trust_model=True, jit_compile=False)
    with pytest.raises(ValueError, match="--trust-model"):
        load_fingerprinter(saved, jit_compile=False)
