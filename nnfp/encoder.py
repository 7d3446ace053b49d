"""Convolutional encoder f(.) and divide-and-encode projection g(.)."""

import math

import keras
import numpy as np
from keras import ops

__all__ = [
    "PAPER_CHANNELS",
    "PAPER_STRIDES",
    "ConvBlock",
    "Encoder",
    "DivideAndEncode",
    "scaled_channels",
    "encoder_output_shape",
]

PAPER_CHANNELS = (128, 128, 256, 256, 512, 512, 1024, 1024)
# (stride of the 1x3 conv, stride of the 3x1 conv) per block, as (freq, time).
PAPER_STRIDES = (
    ((1, 2), (2, 1)),
    ((1, 2), (2, 1)),
    ((1, 2), (2, 1)),
    ((1, 2), (2, 1)),
    ((1, 1), (2, 1)),
    ((1, 2), (2, 1)),
    ((1, 1), (2, 1)),
    ((1, 2), (2, 1)),
)
_NORMS = ("layer_norm2d", "layer_norm1d", "batch_norm")


def scaled_channels(width=1.0, channels=PAPER_CHANNELS):
    """Channels of the paper encoder times `width` (at least 4 per block)."""
    if width <= 0:
        raise ValueError(f"width must be positive. Received: width={width}")
    return tuple(max(4, int(round(c * width))) for c in channels)


def encoder_output_shape(input_shape, channels=PAPER_CHANNELS, strides=PAPER_STRIDES):
    """(freq, time, channels) after the encoder's convolutions, for a (freq, time) input."""
    freq, time = input_shape[:2]
    for (first, second) in strides:
        for stride in (first, second):
            freq, time = math.ceil(freq / stride[0]), math.ceil(time / stride[1])
    return freq, time, channels[-1]


def _normalization(norm):
    if norm == "layer_norm2d":
        return keras.layers.LayerNormalization(axis=(1, 2, 3))
    if norm == "layer_norm1d":
        return keras.layers.LayerNormalization(axis=-1)
    return keras.layers.BatchNormalization(axis=-1)


@keras.saving.register_keras_serializable(package="nnfp")
class ConvBlock(keras.layers.Layer):
    """Separable convolution block: Conv 1x3 -> ELU -> norm -> Conv 3x1 -> ELU -> norm.

    Args:
        filters: output channels of both convolutions.
        strides: ((freq, time) stride of the 1x3 conv, (freq, time) stride of the 3x1 conv).
        norm: `"layer_norm2d"` (over freq, time and channels, as the paper),
            `"layer_norm1d"` (over channels) or `"batch_norm"`.

    Input `(batch, freq, time, in_channels)`, output `(batch, freq', time', filters)`
    with 'same' padding, so freq' = ceil(freq / stride) and likewise for time.

    Example:
    >>> block = ConvBlock(16, strides=((1, 2), (2, 1)))
    >>> block(np.zeros((2, 256, 32, 1), "float32")).shape
    TensorShape([2, 128, 16, 16])
    """

    def __init__(self, filters, strides=((1, 1), (1, 1)), norm="layer_norm2d", **kwargs):
        super().__init__(**kwargs)
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}. Received: norm={norm!r}")
        self.filters = int(filters)
        self.strides = tuple(tuple(int(v) for v in s) for s in strides)
        self.norm = norm
        self.conv_1x3 = keras.layers.Conv2D(filters, (1, 3), strides=self.strides[0], padding="same")
        self.norm_1x3 = _normalization(norm)
        self.conv_3x1 = keras.layers.Conv2D(filters, (3, 1), strides=self.strides[1], padding="same")
        self.norm_3x1 = _normalization(norm)

    def build(self, input_shape):
        self.conv_1x3.build(input_shape)
        shape = self.conv_1x3.compute_output_shape(input_shape)
        self.norm_1x3.build(shape)
        self.conv_3x1.build(shape)
        self.norm_3x1.build(self.conv_3x1.compute_output_shape(shape))

    def call(self, x, training=False):
        x = self.norm_1x3(ops.elu(self.conv_1x3(x)), training=training)
        return self.norm_3x1(ops.elu(self.conv_3x1(x)), training=training)

    def compute_output_shape(self, input_shape):
        return self.conv_3x1.compute_output_shape(self.conv_1x3.compute_output_shape(input_shape))

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, strides=[list(s) for s in self.strides], norm=self.norm)
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class Encoder(keras.layers.Layer):
    """The convolutional encoder f(.): a stack of `ConvBlock`s, then flatten.

    Args:
        width: channel multiplier; block i has `max(4, round(width * channels[i]))`
            filters (`filters` attribute). 0.25 gives 32 ... 256.
        norm: normalisation of every block, see `ConvBlock`.
        channels: channels of each block at width 1 (paper: 128, 128, 256, 256,
            512, 512, 1024, 1024).
        strides: per-block pair of (freq, time) strides (paper: `PAPER_STRIDES`).

    Input `(batch, n_mels, frames, 1)`; output `(batch, D)`, D = freq' * time' * filters[-1]
    (1024 for the paper's 1 s input at width 1).

    Example:
    >>> f = Encoder(width=0.25)
    >>> f(np.zeros((2, 256, 32, 1), "float32")).shape
    TensorShape([2, 256])

    Follows Chang et al. 2021, section 3.2 and the official neural-audio-fp model.
    """

    def __init__(self, width=1.0, norm="layer_norm2d", channels=PAPER_CHANNELS, strides=PAPER_STRIDES, **kwargs):
        super().__init__(**kwargs)
        if norm not in _NORMS:
            raise ValueError(f"norm must be one of {_NORMS}. Received: norm={norm!r}")
        if len(channels) != len(strides):
            raise ValueError(
                "channels and strides must have one entry per block. Received: "
                f"channels={list(channels)} ({len(channels)} blocks), strides with {len(strides)} blocks"
            )
        self.width = float(width)
        self.channels = tuple(int(c) for c in channels)
        self.filters = scaled_channels(self.width, self.channels)
        self.strides = tuple(tuple(tuple(int(v) for v in s) for s in pair) for pair in strides)
        self.norm = norm
        self.blocks = [
            ConvBlock(c, s, norm=norm, name=f"block_{i}")
            for i, (c, s) in enumerate(zip(self.filters, self.strides, strict=True))
        ]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for block in self.blocks:
            block.build(shape)
            shape = block.compute_output_shape(shape)

    def call(self, x, training=False):
        for block in self.blocks:
            x = block(x, training=training)
        return ops.reshape(x, (ops.shape(x)[0], -1))  # (batch, D)

    def compute_output_shape(self, input_shape):
        freq, time, channels = encoder_output_shape(input_shape[1:3], self.filters, self.strides)
        return (input_shape[0], freq * time * channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            width=self.width,
            norm=self.norm,
            channels=list(self.channels),
            strides=[[list(s) for s in pair] for pair in self.strides],
        )
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class DivideAndEncode(keras.layers.Layer):
    """Divide-and-encode projection g(.): d slices, each Dense(hidden, ELU) -> Dense(1).

    The input is cut into d = `embedding_dim` equal slices; slice q goes through
    its own two-layer MLP. All slices run as one grouped op (an einsum over a
    `(d, slice, hidden)` kernel) rather than d separate layers.

    Args:
        embedding_dim: output dimension d (one output per slice).
        hidden_units: width of each slice's hidden layer (paper: 32).

    Input `(batch, D)` with D divisible by `embedding_dim`; output `(batch, embedding_dim)`.

    Example:
    >>> g = DivideAndEncode(embedding_dim=128)
    >>> g(np.zeros((2, 1024), "float32")).shape
    TensorShape([2, 128])

    Follows Lai et al. 2015 and Gfeller et al. 2017 as used by Chang et al. 2021.
    """

    def __init__(self, embedding_dim=128, hidden_units=32, **kwargs):
        super().__init__(**kwargs)
        if embedding_dim <= 0 or hidden_units <= 0:
            raise ValueError(
                "embedding_dim and hidden_units must be positive. "
                f"Received: embedding_dim={embedding_dim}, hidden_units={hidden_units}"
            )
        self.embedding_dim = int(embedding_dim)
        self.hidden_units = int(hidden_units)

    def slice_length_for(self, input_size):
        """Length of each slice for an input of `input_size` features; raises unless it divides."""
        if input_size % self.embedding_dim:
            raise ValueError(
                f"DivideAndEncode needs an input size divisible by embedding_dim={self.embedding_dim}. "
                f"Received: input size {input_size}"
            )
        return input_size // self.embedding_dim

    def build(self, input_shape):
        self.slice_length = self.slice_length_for(input_shape[-1])
        q, s, h = self.embedding_dim, self.slice_length, self.hidden_units
        # Glorot-uniform per slice, with each slice's own fan-in and fan-out.
        limit_1, limit_2 = np.sqrt(6.0 / (s + h)), np.sqrt(6.0 / (h + 1))
        self.kernel_1 = self.add_weight(
            name="kernel_1", shape=(q, s, h), initializer=keras.initializers.RandomUniform(-limit_1, limit_1)
        )
        self.bias_1 = self.add_weight(name="bias_1", shape=(q, h), initializer="zeros")
        self.kernel_2 = self.add_weight(
            name="kernel_2", shape=(q, h), initializer=keras.initializers.RandomUniform(-limit_2, limit_2)
        )
        self.bias_2 = self.add_weight(name="bias_2", shape=(q,), initializer="zeros")

    def call(self, x):
        x = ops.reshape(x, (-1, self.embedding_dim, self.slice_length))  # (batch, d, slice)
        hidden = ops.elu(ops.einsum("bqs,qsh->bqh", x, self.kernel_1) + self.bias_1)  # (batch, d, hidden)
        return ops.einsum("bqh,qh->bq", hidden, self.kernel_2) + self.bias_2  # (batch, d)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.embedding_dim)

    def get_config(self):
        config = super().get_config()
        config.update(embedding_dim=self.embedding_dim, hidden_units=self.hidden_units)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "n_slices" in config:  # models saved before embedding_dim was the argument
            config["embedding_dim"] = config.pop("n_slices")
        return cls(**config)
