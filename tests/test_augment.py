import numpy as np
import pytest

from nnfp.augment import SpecAugment


def _mel(batch=4, seed=0):
    return np.random.default_rng(seed).uniform(-80, 0, (batch, 64, 32, 1)).astype("float32")


def test_identity_when_not_training():
    x = _mel()
    np.testing.assert_array_equal(np.asarray(SpecAugment(seed=1)(x)), x)
    np.testing.assert_array_equal(np.asarray(SpecAugment(seed=1)(x, training=False)), x)


@pytest.mark.parametrize("chain", [("cutout",), ("horizontal",), ("vertical",)])
def test_one_mask_shared_by_batch_and_size_in_range(chain):
    x = _mel()
    layer = SpecAugment(chain=chain, fill="zeros", size_range=(0.1, 0.5), seed=3)
    for _ in range(5):
        out = np.asarray(layer(x, training=True))
        masked = out != x  # zeros fill; x is never exactly 0 here
        np.testing.assert_array_equal(masked[0], masked[1])  # shared across the batch
        rows = masked[0, :, :, 0].any(axis=1)
        cols = masked[0, :, :, 0].any(axis=0)
        if chain[0] in ("cutout", "horizontal"):
            assert round(0.1 * 64) <= rows.sum() <= round(0.5 * 64)
        else:
            assert rows.all()
        if chain[0] in ("cutout", "vertical"):
            assert round(0.1 * 32) <= cols.sum() <= round(0.5 * 32)
        else:
            assert cols.all()
        # bands are contiguous, in frequency and in time
        for band in (rows, cols):
            idx = np.flatnonzero(band)
            assert idx.max() - idx.min() + 1 == len(idx)
        # a cutout is exactly the rectangle of its two bands
        np.testing.assert_array_equal(masked[0, :, :, 0], rows[:, None] & cols[None, :])


def test_fill_values():
    x = _mel(2)
    out = np.asarray(SpecAugment(chain=("cutout",), fill="min", seed=5)(x, training=True))
    for i in range(2):
        changed = out[i] != x[i]
        assert changed.any()
        np.testing.assert_allclose(out[i][changed], x[i].min())
    out = np.asarray(SpecAugment(chain=("cutout",), fill="random", seed=5)(x, training=True))
    changed = out[0] != x[0]
    assert out[0][changed].std() > 1.0
    assert out[0][changed].min() >= x[0].min() and out[0][changed].max() <= x[0].max()


def test_probability_zero_never_masks():
    x = _mel()
    np.testing.assert_array_equal(np.asarray(SpecAugment(probability=0.0, seed=1)(x, training=True)), x)


def test_chain_applies_its_masks_in_order():
    x = _mel()
    chained = np.asarray(SpecAugment(chain=("vertical", "cutout"), fill="zeros", seed=2)(x, training=True))
    first = SpecAugment(chain=("vertical",), fill="zeros", seed=2)
    second = SpecAugment(chain=("cutout",), fill="zeros", seed=2)
    second.seed_generator = first.seed_generator  # one stream of draws, as inside the chain
    np.testing.assert_array_equal(chained, np.asarray(second(first(x, training=True), training=True)))
    swapped = np.asarray(SpecAugment(chain=("cutout", "vertical"), fill="zeros", seed=2)(x, training=True))
    assert not np.array_equal(chained, swapped)
    layer = SpecAugment.from_config(SpecAugment(chain=("vertical", "cutout"), seed=2).get_config())
    assert layer.chain == ("vertical", "cutout")


def test_bad_arguments():
    with pytest.raises(ValueError, match="chain"):
        SpecAugment(chain=("diagonal",))
    with pytest.raises(ValueError, match="fill"):
        SpecAugment(fill="mean")
    with pytest.raises(ValueError, match="size_range"):
        SpecAugment(size_range=(0.6, 0.5))
