import numpy as np
import pytest

from nnfp.encoder import ConvBlock, DivideAndEncode, Encoder, encoder_output_shape
from nnfp.frontend import LogMelSpectrogram
from nnfp.model import FingerPrinter


def test_paper_parameter_count():
    model = FingerPrinter(LogMelSpectrogram(), Encoder(), DivideAndEncode(128))  # the paper's 1 s model
    model.build((None, 8000))
    assert model.count_params() == 16_939_008


def test_paper_shapes():
    assert encoder_output_shape((256, 32)) == (1, 1, 1024)
    f = Encoder(width=1 / 16)
    out = f(np.zeros((2, 256, 32, 1), "float32"))
    assert tuple(out.shape) == (2, 64)


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
    with pytest.raises(ValueError, match="divisible"):
        DivideAndEncode(embedding_dim=7).build((None, 32))
