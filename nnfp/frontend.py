"""Log-power mel spectrogram front end, computed inside the model."""

import keras
from keras import ops

from nnfp.lite import hann_window

__all__ = ["LogMelSpectrogram"]


def _mel_weight_matrix(sample_rate, n_fft, n_mels, f_min, f_max):
    import tensorflow as tf

    return tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=n_mels,
        num_spectrogram_bins=n_fft // 2 + 1,
        sample_rate=sample_rate,
        lower_edge_hertz=f_min,
        upper_edge_hertz=f_max,
    ).numpy()


@keras.saving.register_keras_serializable(package="nnfp")
class LogMelSpectrogram(keras.layers.Layer):
    """Waveform to per-example normalised log-power mel spectrogram.

    The STFT uses a periodic Hann window with `n_fft // 2` zeros padded on both
    sides (so 1 s at 8 kHz with hop 256 gives 32 frames, as the original). The
    power spectrum goes through an HTK mel filterbank, to decibels, and each
    example is shifted so its own maximum is 0 dB and floored at `-top_db`.
    Normalising per example (not against the batch maximum, as Keras'
    `MelSpectrogram(top_db=...)` does) keeps an example's features independent of
    what else is in its batch.

    Args:
        sample_rate: input sampling rate in Hz.
        segment_seconds: length of an input example in seconds (a whole number
            of samples, at least `n_fft`); `segment_samples` is derived from it.
        n_fft: FFT and window length.
        hop_length: STFT hop in samples.
        n_mels: number of mel bands.
        f_min, f_max: mel filterbank range in Hz.
        top_db: dynamic range kept below each example's maximum, in dB.
        amin: power floor before the logarithm.

    Input: `(batch, segment_samples)` float waveforms.
    Output: `(batch, n_mels, n_frames, 1)` in dB, within `[-top_db, 0]`.

    Example:
    >>> mel = LogMelSpectrogram()
    >>> mel(np.zeros((2, 8000), "float32")).shape
    TensorShape([2, 256, 32, 1])

    Follows Chang et al. 2021, section 3.1 (256 mels, 300-4000 Hz, 8 kHz).
    """

    def __init__(
        self,
        sample_rate=8000,
        segment_seconds=1.0,
        n_fft=1024,
        hop_length=256,
        n_mels=256,
        f_min=300.0,
        f_max=4000.0,
        top_db=80.0,
        amin=1e-10,
        **kwargs,
    ):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if not 0 < f_max <= sample_rate / 2:
            raise ValueError(
                f"f_max must be in (0, sample_rate / 2]. Received: f_max={f_max}, sample_rate={sample_rate}"
            )
        if not 0 <= f_min < f_max:
            raise ValueError(f"f_min must be in [0, f_max). Received: f_min={f_min}, f_max={f_max}")
        if hop_length <= 0 or n_fft <= 0 or n_mels <= 0:
            raise ValueError(
                "n_fft, hop_length and n_mels must be positive. Received: "
                f"n_fft={n_fft}, hop_length={hop_length}, n_mels={n_mels}"
            )
        samples = segment_seconds * sample_rate
        if abs(samples - round(samples)) > 1e-6 or round(samples) < n_fft:
            raise ValueError(
                f"segment_seconds must be a whole number of samples, at least n_fft={n_fft} "
                f"({n_fft / sample_rate:.3f} s). Received: segment_seconds={segment_seconds} "
                f"({samples:g} samples at sample_rate={sample_rate})"
            )
        if top_db <= 0:
            raise ValueError(f"top_db must be positive. Received: top_db={top_db}")
        self.sample_rate = sample_rate
        self.segment_seconds = segment_seconds
        self.segment_samples = int(round(samples))
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.f_min = f_min
        self.f_max = f_max
        self.top_db = top_db
        self.amin = amin
        self.mel_weights = _mel_weight_matrix(sample_rate, n_fft, n_mels, f_min, f_max)
        self.window = hann_window(n_fft)  # periodic; the LiteRT path's NumPy STFT uses the same

    @property
    def n_frames(self):
        return 1 + self.segment_samples // self.hop_length

    def call(self, waveforms):
        x = ops.convert_to_tensor(waveforms, dtype="float32")
        pad = self.n_fft // 2
        x = ops.pad(x, [[0, 0], [pad, pad]])  # zero 'same' padding, as the original
        real, imag = ops.stft(
            x, self.n_fft, self.hop_length, self.n_fft, window=self.window, center=False
        )  # (batch, frames, n_fft // 2 + 1) each
        return self.from_power(ops.square(real) + ops.square(imag))

    def from_power(self, power):
        """The output of `call` from the STFT power spectrum `(batch, n_frames, n_fft // 2 + 1)`
        of the waveforms (`nnfp.lite.power_spectrum` computes it outside the model)."""
        mel = ops.matmul(power, self.mel_weights)  # (batch, frames, n_mels)
        db = 10.0 * ops.log10(ops.maximum(mel, self.amin))
        db = db - ops.max(db, axis=(1, 2), keepdims=True)
        db = ops.maximum(db, -self.top_db)
        return ops.expand_dims(ops.transpose(db, (0, 2, 1)), -1)  # (batch, n_mels, frames, 1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n_mels, self.n_frames, 1)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            segment_seconds=self.segment_seconds,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            f_min=self.f_min,
            f_max=self.f_max,
            top_db=self.top_db,
            amin=self.amin,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "segment_samples" in config:  # models saved before segment_seconds was the argument
            config["segment_seconds"] = config.pop("segment_samples") / config.get("sample_rate", 8000)
        return cls(**config)
