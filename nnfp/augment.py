"""SpecAugment-style masking of spectrograms, applied inside the model in training."""

import keras
from keras import ops

__all__ = ["SpecAugment"]

_MASKS = ("cutout", "horizontal", "vertical")
_FILLS = ("zeros", "min", "random")


@keras.saving.register_keras_serializable(package="nnfp")
class SpecAugment(keras.layers.Layer):
    """An ordered chain of batch-wise spectrogram masks (cutout and SpecAugment).

    Each mask in `chain` is drawn once per call and shared by the whole batch, as
    in the paper: `"cutout"` blanks a rectangle, `"horizontal"` a band of frequency
    bins across all frames, `"vertical"` a band of frames across all bins. Band
    sizes are uniform in `size_range` (fractions of the axis), positions uniform,
    and each mask is applied with probability `probability`. The layer is the
    identity when `training=False`, so inference and export never mask.

    Args:
        chain: names of the masks, applied in this order.
        probability: chance that each mask of the chain is applied to a batch.
        size_range: (low, high) band size as a fraction of the masked axis.
        fill: `"zeros"`, `"min"` (each example's minimum) or `"random"` (uniform
            between each example's minimum and maximum).
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, freq, time, channels)`, same shape.

    Example:
    >>> aug = SpecAugment(chain=("cutout", "vertical"), fill="min", seed=1)
    >>> masked = aug(mel, training=True)
    >>> unchanged = aug(mel)  # training=False: identity

    Follows Chang et al. 2021 (section 3.3) and Park et al. 2019 (SpecAugment).
    """

    def __init__(
        self,
        chain=("cutout", "horizontal"),
        probability=1.0,
        size_range=(0.1, 0.5),
        fill="min",
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        chain = tuple(chain)
        unknown = [name for name in chain if name not in _MASKS]
        if unknown:
            raise ValueError(f"chain entries must be in {_MASKS}. Received: chain={list(chain)}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1]. Received: probability={probability}")
        low, high = size_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"size_range must satisfy 0 < low <= high <= 1. Received: size_range={list(size_range)}"
            )
        if fill not in _FILLS:
            raise ValueError(f"fill must be one of {_FILLS}. Received: fill={fill!r}")
        self.chain = chain
        self.probability = float(probability)
        self.size_range = (float(low), float(high))
        self.fill = fill
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _band(self, length):
        """Boolean (length,) mask of one random band on an axis of `length` bins."""
        low, high = self.size_range
        fraction = keras.random.uniform((), low, high, seed=self.seed_generator)
        size = ops.maximum(ops.cast(ops.round(fraction * length), "int32"), 1)
        start_fraction = keras.random.uniform((), 0.0, 1.0, seed=self.seed_generator)
        start = ops.cast(start_fraction * ops.cast(length - size + 1, "float32"), "int32")
        positions = ops.arange(length, dtype="int32")
        return ops.logical_and(positions >= start, positions < start + size)

    def _fill_values(self, x):
        minimum = ops.min(x, axis=(1, 2, 3), keepdims=True)
        if self.fill == "zeros":
            return ops.zeros_like(x)
        if self.fill == "min":
            return ops.broadcast_to(minimum, ops.shape(x))
        maximum = ops.max(x, axis=(1, 2, 3), keepdims=True)
        noise = keras.random.uniform(ops.shape(x), seed=self.seed_generator)
        return minimum + noise * (maximum - minimum)

    def call(self, inputs, training=False):
        if not training or not self.chain:
            return inputs
        x = inputs
        n_freq, n_time = x.shape[1], x.shape[2]
        for name in self.chain:
            freq_band = self._band(n_freq) if name in ("cutout", "horizontal") else None
            time_band = self._band(n_time) if name in ("cutout", "vertical") else None
            if freq_band is None:
                mask = ops.broadcast_to(time_band[None, :], (n_freq, n_time))
            elif time_band is None:
                mask = ops.broadcast_to(freq_band[:, None], (n_freq, n_time))
            else:
                mask = ops.logical_and(freq_band[:, None], time_band[None, :])
            apply = keras.random.uniform((), seed=self.seed_generator) < self.probability
            mask = ops.logical_and(mask, apply)[None, :, :, None]  # (1, freq, time, 1)
            x = ops.where(mask, self._fill_values(x), x)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            chain=list(self.chain),
            probability=self.probability,
            size_range=list(self.size_range),
            fill=self.fill,
            seed=self.seed,
        )
        return config
