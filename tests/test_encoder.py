import numpy as np
import pytest

from nnfp.encoder import (
    PAPER_CHANNELS,
    PAPER_STRIDES,
    ConvBlock,
    DivideAndEncode,
    Encoder,
    encoder_output_shape,
    scaled_channels,
)
from nnfp.model import FingerPrinter


def _fingerprinter_params(channels, strides, n_mels=256, frames=32, embedding_dim=128, hidden_units=32):
    """Parameters of FingerPrinter with layer_norm2d, counted by hand (the paper's model: 16,939,008)."""
    total, freq, time, previous = 0, n_mels, frames, 1
    for filters, (first, second) in zip(channels, strides, strict=True):
        freq, time = -(-freq // first[0]), -(-time // first[1])
        total += 3 * previous * filters + filters + 2 * freq * time * filters  # conv 1x3, its norm
        freq, time = -(-freq // second[0]), -(-time // second[1])
        total += 3 * filters * filters + filters + 2 * freq * time * filters  # conv 3x1, its norm
        previous = filters
    slice_length = freq * time * previous // embedding_dim
    return total + embedding_dim * (slice_length * hidden_units + 2 * hidden_units + 1)


def test_paper_parameter_count():
    assert _fingerprinter_params(PAPER_CHANNELS, PAPER_STRIDES) == 16_939_008  # the paper's model, not built
    model = FingerPrinter(encoder={"width": 1 / 32}, projection={"embedding_dim": 16})  # the same count, small
    assert model.count_params() == _fingerprinter_params(scaled_channels(1 / 32), PAPER_STRIDES, embedding_dim=16)


def test_paper_shapes():
    assert encoder_output_shape((256, 32)) == (1, 1, 1024)
    f = Encoder(width=1 / 16)
    assert f.channels == PAPER_CHANNELS and f.filters == (8, 8, 16, 16, 32, 32, 64, 64)
    out = f(np.zeros((2, 256, 32, 1), "float32"))
    assert tuple(out.shape) == (2, 64)
    assert scaled_channels(0.01) == (4, 4, 4, 4, 5, 5, 10, 10)  # rounded, at least 4 filters a block


def test_conv_block_strides_and_norms():
    x = np.random.default_rng(0).standard_normal((2, 16, 8, 3)).astype("float32")
    for norm in ("layer_norm2d", "layer_norm1d", "batch_norm"):
        block = ConvBlock(4, strides=((1, 2), (2, 1)), norm=norm)
        assert tuple(block(x).shape) == (2, 8, 4, 4)
    with pytest.raises(ValueError, match="norm"):
        ConvBlock(4, norm="group_norm")


def test_divide_and_encode_equals_per_slice_dense():
    rng = np.random.default_rng(0)
    layer = DivideAndEncode(embedding_dim=8, hidden_units=5)
    x = rng.standard_normal((3, 32)).astype("float32")
    out = np.asarray(layer(x))
    k1, b1, k2, b2 = (np.asarray(w) for w in (layer.kernel_1, layer.bias_1, layer.kernel_2, layer.bias_2))
    expected = np.zeros((3, 8))
    for q in range(8):  # the original's loop of q separate Dense(32, elu) -> Dense(1)
        h = x[:, q * 4 : (q + 1) * 4] @ k1[q] + b1[q]
        h = np.where(h > 0, h, np.expm1(h))
        expected[:, q] = h @ k2[q] + b2[q]
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert layer.count_params() == 8 * (4 * 5 + 5 + 5 + 1)
    with pytest.raises(ValueError, match="divisible by embedding_dim.*Received: embedding_dim=7"):
        DivideAndEncode(embedding_dim=7).build((None, 32))
    assert DivideAndEncode.from_config({"n_slices": 8, "hidden_units": 5}).embedding_dim == 8  # old saved name
