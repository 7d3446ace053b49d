"""Degradations of the field: what a phone, a loudspeaker and a call do to a replica.

`RandomBandLimit` (a microphone's or loudspeaker's band and colour), `RandomClipping` (an
overdriven input), `RandomGainControl` (a phone's automatic gain control) and `RandomCodec`
(a low-bitrate speech codec, AMR-NB or Opus, through PyAV) are Keras preprocessing layers like
those of `nnfp.pipeline.augment`, and `PairPipeline` composes them the same way: draws
(`get_random_transformation`, seedable statelessly) kept apart from their use (`transform`),
each example degraded with probability `probability`, the identity when `training=False`.

The first three are TensorFlow graphs. `RandomCodec` runs the codec in Python on the CPU
(`tf.numpy_function`): it holds the GIL and cannot be saved in a SavedModel or compiled by
XLA, so it belongs in a `tf.data` map, not in an exported model.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from nnfp.audio.io import encode_decode, has_encoder, resample
from nnfp.pipeline.augment import WaveformAugmentation, check_range, uniform_draw
from nnfp.pipeline.bank import to_int16
from nnfp.pipeline.degrade import next_pow2

__all__ = [
    "CODECS", "RandomBandLimit", "RandomClipping", "RandomCodec", "RandomGainControl",
    "codec_round_trip",
]  # fmt: skip

# The codecs of `RandomCodec`: FFmpeg encoder and decoder, the sample rates they encode at,
# their bit rates in kbit/s (AMR-NB's 8 modes, 3GPP TS 26.071; Opus takes any bit rate) and
# the samples at 8 kHz by which the decoded stream is late. AMR-NB's 5 ms look-ahead (TS
# 26.090) is not signalled in the stream; Opus signals its look-ahead as the stream's
# pre-skip, which the decoder drops (FFmpeg's decoder leaves SILK's modes 6 samples at 48 kHz,
# 1/8 ms, late: left as every player leaves it).
CODECS = {
    "amr_nb": dict(
        encoder="libopencore_amrnb", decoder="amrnb", sample_rates=(8000,),
        kbps=(4.75, 5.15, 5.9, 6.7, 7.4, 7.95, 10.2, 12.2), delay_8k=40,
    ),
    "opus": dict(
        encoder="libopus", decoder="opus", sample_rates=(8000, 12000, 16000, 24000, 48000),
        kbps=None, delay_8k=0,
    ),
}  # fmt: skip
_OPUS_KBPS = (6.0, 510.0)  # libopus' bit rates
_TAIL_DECAY = 1e-9  # an IIR response is cut where its slowest pole has decayed this far


def _check_positive(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.number)
        or not 0 < value < math.inf
    ):
        raise ValueError(f"{name} must be a number > 0. Received: {name}={value}")
    return float(value)


def _check_sample_rate(sample_rate):
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int | float | np.number)
        or not (0 < sample_rate < math.inf and float(sample_rate).is_integer())
    ):
        raise ValueError(
            f"sample_rate must be a whole number of hertz > 0. Received: sample_rate={sample_rate}"
        )
    return int(sample_rate)


def _check_probability(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float | np.number)
        or not 0 <= value <= 1
    ):
        raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value}")
    return float(value)


class _FieldAugmentation(WaveformAugmentation):
    """`nnfp.pipeline.augment`'s draw/transform protocol, each example degraded with probability
    `probability`: subclasses name their draws in `draw_names` (the last one `on`, True where
    an example is degraded, drawn here) and define `_draw_degradation(batch, *seeds)` (the
    other draws) and `_degrade(inputs, transformation)`."""

    def __init__(self, probability=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.probability = _check_probability("probability", probability)

    def _draw(self, batch, *seeds):
        draws = self._draw_degradation(batch, *seeds[:-1])
        return (*draws, uniform_draw((batch,), seeds[-1]) < self.probability)

    def transform(self, inputs, transformation):
        """`inputs` degraded with the draws of `transformation` where its `on` is True
        (unchanged inputs when it is None)."""
        inputs = ops.convert_to_tensor(inputs, "float32")
        if transformation is None:
            return inputs
        if inputs.shape.rank != 2 or inputs.shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} needs (batch, samples) inputs of a static length. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        degraded = self._degrade(inputs, transformation)
        return ops.where(transformation["on"][:, None], degraded, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(probability=self.probability)
        return config


# ----------------------------------------------------------------------------- biquads


def _butterworth(cutoff_hz, sample_rate, order, highpass):
    """The biquads (b, a) of a digital Butterworth filter (`scipy.signal.butter`): each pair
    of poles as the RBJ cookbook's filter at the cutoff with its Q, `1 / (2 cos theta)`."""
    w0 = 2 * math.pi * cutoff_hz / sample_rate
    cos, sin = tf.cos(w0), tf.sin(w0)
    sections = []
    for k in range(order // 2):
        alpha = sin * math.cos(math.pi * (2 * k + 1) / (2 * order))  # sin(w0) / (2 Q)
        edge = (1 + cos) / 2 if highpass else (1 - cos) / 2
        b = (edge, -2 * edge if highpass else 2 * edge, edge)
        sections.append((b, (1 + alpha, -2 * cos, 1 - alpha)))
    return sections


def _peaking(centre_hz, gain_db, q, sample_rate):
    """The RBJ cookbook's peaking equaliser: `gain_db` at `centre_hz`, 0 dB far from it."""
    w0 = 2 * math.pi * centre_hz / sample_rate
    amplitude = tf.pow(tf.constant(10.0, w0.dtype), gain_db / 40)
    alpha = tf.sin(w0) / (2 * q)
    cos = tf.cos(w0)
    b = (1 + alpha * amplitude, -2 * cos, 1 - alpha * amplitude)
    return b, (1 + alpha / amplitude, -2 * cos, 1 - alpha / amplitude)


def _high_shelf(corner_hz, gain_db, sample_rate):
    """The RBJ cookbook's high shelf of slope 1: 0 dB at 0 Hz, `gain_db` at Nyquist."""
    amplitude = tf.pow(tf.constant(10.0, gain_db.dtype), gain_db / 40)
    w0 = 2 * math.pi * corner_hz / sample_rate
    cos, sin = math.cos(w0), math.sin(w0)
    root = 2 * tf.sqrt(amplitude) * sin / math.sqrt(2)  # 2 sqrt(A) alpha, alpha = sin / sqrt(2)
    up, down = amplitude + 1, amplitude - 1
    b = (
        amplitude * (up + down * cos + root),
        -2 * amplitude * (down + up * cos),
        amplitude * (up + down * cos - root),
    )
    return b, (up - down * cos + root, 2 * (down - up * cos), up - down * cos - root)


def _response(sections, n_fft):
    """The product of the biquads' frequency responses at the `n_fft // 2 + 1` rfft bins."""
    omega = tf.linspace(tf.constant(0.0, tf.float64), math.pi, n_fft // 2 + 1)
    z1 = tf.exp(tf.complex(tf.zeros_like(omega), -omega))  # e^{-j omega}
    z2 = z1 * z1
    response = tf.ones_like(z1)[None, :]
    for b, a in sections:
        b = [tf.complex(tf.cast(c, tf.float64), tf.constant(0.0, tf.float64))[..., None] for c in b]
        a = [tf.complex(tf.cast(c, tf.float64), tf.constant(0.0, tf.float64))[..., None] for c in a]
        response = response * (b[0] + b[1] * z1 + b[2] * z2) / (a[0] + a[1] * z1 + a[2] * z2)
    return response  # (batch, n_fft // 2 + 1) complex128


def _pole_radius(b_a):
    """The largest pole radius of a biquad with scalar (NumPy-convertible) coefficients."""
    a = [float(np.asarray(c)) for c in b_a[1]]
    return float(np.abs(np.roots(a)).max())


@keras.saving.register_keras_serializable(package="nnfp")
class RandomBandLimit(_FieldAugmentation):
    """A microphone's or loudspeaker's band and colour: high-pass, low-pass, shelf and peak.

    Each example is, with probability `probability`, filtered by a cascade of biquads with
    random settings: a Butterworth high-pass of `order` at a cutoff uniform in
    `highpass_hz_range` (the small membrane that loses the bass), a Butterworth low-pass of
    `order` at a cutoff uniform in `lowpass_hz_range` (a phone's band), a high shelf above
    `shelf_hz` of a gain uniform in `shelf_db_range` (a brighter or duller device) and a
    peaking resonance of a gain uniform in `peak_db_range` at a frequency log-uniform in
    `peak_hz_range` with a Q uniform in `peak_q_range`. The filters are causal IIR filters
    from rest, as `scipy.signal.sosfilt` (the RBJ cookbook's biquads; the Butterworth
    sections are `scipy.signal.butter`'s), applied by multiplying spectra: the output is the
    IIR output to within `1e-9` of its response. The passband gain is 1 (the bass a phone
    loses is lost, not made up). Identity when `training=False`.

    Args:
        sample_rate: sample rate of the inputs in Hz.
        highpass_hz_range: (low, high) high-pass cutoff in Hz.
        lowpass_hz_range: (low, high) low-pass cutoff in Hz, above the high-pass and below
            `sample_rate / 2`.
        order: order of each Butterworth filter, even (2: 12 dB per octave, 4: 24).
        shelf_db_range: (low, high) gain of the high shelf in dB.
        shelf_hz: corner (half gain in dB) of the high shelf in Hz.
        peak_db_range: (low, high) gain of the resonance in dB.
        peak_hz_range: (low, high) centre frequency of the resonance in Hz.
        peak_q_range: (low, high) Q of the resonance, > 0.
        probability: chance that an example is filtered.
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, samples)` float32, a static length.

    Example:
    >>> phone = RandomBandLimit(highpass_hz_range=(100, 400), lowpass_hz_range=(2800, 3800))
    >>> tinny = phone(waveforms)  # (batch, 8000), each through its own phone
    >>> same = phone(waveforms, training=False)

    Follows Bristow-Johnson's "Cookbook formulae for audio EQ biquad filter coefficients".
    """

    draw_names = ("highpass_hz", "lowpass_hz", "shelf_db", "peak_hz", "peak_db", "peak_q", "on")

    def __init__(
        self,
        sample_rate=8000,
        highpass_hz_range=(100.0, 400.0),
        lowpass_hz_range=(2800.0, 3800.0),
        order=4,
        shelf_db_range=(-3.0, 3.0),
        shelf_hz=1000.0,
        peak_db_range=(-6.0, 6.0),
        peak_hz_range=(500.0, 3000.0),
        peak_q_range=(0.7, 2.0),
        probability=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(probability=probability, seed=seed, **kwargs)
        self.sample_rate = _check_sample_rate(sample_rate)
        nyquist = self.sample_rate / 2
        self.highpass_hz_range = check_range(
            "highpass_hz_range", highpass_hz_range, 0, nyquist, True
        )
        self.lowpass_hz_range = check_range("lowpass_hz_range", lowpass_hz_range, 0, nyquist, True)
        if self.highpass_hz_range[1] >= self.lowpass_hz_range[0]:
            raise ValueError(
                "highpass_hz_range must lie below lowpass_hz_range. Received: "
                f"highpass_hz_range={highpass_hz_range}, lowpass_hz_range={lowpass_hz_range}"
            )
        if (
            isinstance(order, bool)
            or not isinstance(order, int | np.integer)
            or order < 2
            or order % 2
        ):
            raise ValueError(f"order must be an even integer >= 2. Received: order={order}")
        self.order = int(order)
        self.shelf_db_range = check_range("shelf_db_range", shelf_db_range, -40.0, 40.0)
        self.shelf_hz = _check_positive("shelf_hz", shelf_hz)
        if self.shelf_hz >= nyquist:
            raise ValueError(
                f"shelf_hz must be below sample_rate / 2 = {nyquist:g}. "
                f"Received: shelf_hz={shelf_hz}"
            )
        self.peak_db_range = check_range("peak_db_range", peak_db_range, -40.0, 40.0)
        self.peak_hz_range = check_range("peak_hz_range", peak_hz_range, 0, nyquist, True)
        self.peak_q_range = check_range("peak_q_range", peak_q_range, 0, math.inf, True)
        self.tail_samples = self._tail()

    def _tail(self):
        """Samples until the slowest pole of any setting of the ranges decays by `_TAIL_DECAY`:
        pole radii move monotonically with each setting, so the corners of the ranges bound them."""
        rate, radii = self.sample_rate, []
        for cutoffs, highpass in ((self.highpass_hz_range, True), (self.lowpass_hz_range, False)):
            for cutoff in cutoffs:
                radii += [
                    _pole_radius(s)
                    for s in _butterworth(
                        tf.constant(cutoff, tf.float64), rate, self.order, highpass
                    )
                ]
        for centre in self.peak_hz_range:
            for gain in self.peak_db_range:
                for q in self.peak_q_range:
                    radii.append(
                        _pole_radius(_peaking(tf.constant(centre, tf.float64), gain, q, rate))
                    )
        for gain in self.shelf_db_range:
            radii.append(
                _pole_radius(_high_shelf(self.shelf_hz, tf.constant(gain, tf.float64), rate))
            )
        radius = max(radii)
        return math.ceil(math.log(_TAIL_DECAY) / math.log(radius)) if radius > 0 else 1

    def _draw_degradation(
        self, batch, highpass_seed, lowpass_seed, shelf_seed, peak_hz_seed, peak_db_seed, q_seed
    ):
        log_low, log_high = (math.log(f) for f in self.peak_hz_range)
        return (
            uniform_draw((batch,), highpass_seed, *self.highpass_hz_range),
            uniform_draw((batch,), lowpass_seed, *self.lowpass_hz_range),
            uniform_draw((batch,), shelf_seed, *self.shelf_db_range),
            ops.exp(uniform_draw((batch,), peak_hz_seed, log_low, log_high)),
            uniform_draw((batch,), peak_db_seed, *self.peak_db_range),
            uniform_draw((batch,), q_seed, *self.peak_q_range),
        )

    def sections(self, transformation):
        """The biquads `(b, a)` of each example's filter, coefficients of shape (batch,) float64."""
        draw = {k: tf.cast(v, tf.float64) for k, v in transformation.items() if k != "on"}
        rate = self.sample_rate
        return [
            *_butterworth(draw["highpass_hz"], rate, self.order, highpass=True),
            *_butterworth(draw["lowpass_hz"], rate, self.order, highpass=False),
            _high_shelf(self.shelf_hz, draw["shelf_db"], rate),
            _peaking(draw["peak_hz"], draw["peak_db"], draw["peak_q"], rate),
        ]

    def _degrade(self, inputs, transformation):
        length = int(inputs.shape[-1])
        n_fft = next_pow2(length + self.tail_samples)
        response = tf.cast(_response(self.sections(transformation), n_fft), tf.complex64)
        spectrum = tf.signal.rfft(inputs, [n_fft]) * response  # (batch, n_fft // 2 + 1)
        return tf.signal.irfft(spectrum, [n_fft])[:, :length]  # (batch, samples)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            highpass_hz_range=list(self.highpass_hz_range),
            lowpass_hz_range=list(self.lowpass_hz_range),
            order=self.order,
            shelf_db_range=list(self.shelf_db_range),
            shelf_hz=self.shelf_hz,
            peak_db_range=list(self.peak_db_range),
            peak_hz_range=list(self.peak_hz_range),
            peak_q_range=list(self.peak_q_range),
        )
        return config


# ----------------------------------------------------------------------------- clipping


@keras.saving.register_keras_serializable(package="nnfp")
class RandomClipping(_FieldAugmentation):
    """An overdriven input: each example clipped at a random level below its own peak.

    Each example is, with probability `probability`, clipped at `t = peak * 10 **
    (clip_db / 20)`, `peak` its largest absolute sample and `clip_db` uniform in
    `clip_db_range` (-6: clipped at half its peak): hard (`clip(x, -t, t)`, an ADC's rails)
    or, with probability `soft_prob`, soft (`t * tanh(x / t)`, an analogue stage's
    saturation). The level is not restored (a clipped signal is quieter at its peaks). A
    silent example passes unchanged. Identity when `training=False`.

    Args:
        clip_db_range: (low, high) clipping level in dB relative to each example's peak, <= 0.
        soft_prob: chance that the clipping is soft rather than hard.
        probability: chance that an example is clipped.
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, samples)` float32.

    Example:
    >>> clipping = RandomClipping(clip_db_range=(-12.0, -1.0), soft_prob=0.5, seed=0)
    >>> overdriven = clipping(waveforms)
    >>> same = clipping(waveforms, training=False)
    """

    draw_names = ("clip_db", "soft", "on")

    def __init__(
        self, clip_db_range=(-12.0, -1.0), soft_prob=0.5, probability=1.0, seed=None, **kwargs
    ):
        super().__init__(probability=probability, seed=seed, **kwargs)
        self.clip_db_range = check_range("clip_db_range", clip_db_range, high_bound=0.0)
        self.soft_prob = _check_probability("soft_prob", soft_prob)

    def _draw_degradation(self, batch, level_seed, soft_seed):
        clip_db = uniform_draw((batch,), level_seed, *self.clip_db_range)
        return clip_db, uniform_draw((batch,), soft_seed) < self.soft_prob

    def _degrade(self, inputs, transformation):
        peak = ops.max(ops.abs(inputs), axis=-1, keepdims=True)  # (batch, 1)
        threshold = peak * ops.power(10.0, transformation["clip_db"] / 20.0)[:, None]
        hard = ops.clip(inputs, -threshold, threshold)
        # where threshold is 0 the example is silent: soft clipping leaves its zeros
        soft = threshold * ops.tanh(ops.divide_no_nan(inputs, threshold))
        return ops.where(transformation["soft"][:, None], soft, hard)

    def get_config(self):
        config = super().get_config()
        config.update(clip_db_range=list(self.clip_db_range), soft_prob=self.soft_prob)
        return config


# ----------------------------------------------------------------------------- gain control


@keras.saving.register_keras_serializable(package="nnfp")
class RandomGainControl(_FieldAugmentation):
    """A phone's automatic gain control: a slowly varying gain that levels the short-term RMS.

    Each example is, with probability `probability`, cut into frames of `frame_seconds`; an
    envelope follows the frames' mean power, `e_k = e_{k-1} + c (p_k - e_{k-1})` with
    `c = 1 - exp(-frame_seconds / tau)`, `tau` the attack time when the power rises above
    the envelope and the release time otherwise (the control already running at the first
    frame: `e_0 = p_0`). The gain of frame k brings the envelope to the target level,
    `g_k = min(10 ** (target_dbfs / 20) / sqrt(e_k), 10 ** (max_gain_db / 20))` (so silence
    is not raised to speech level), and ramps linearly from `g_{k-1}` to `g_k` over frame k.
    Target uniform in `target_dbfs_range` (dB RMS re a full-scale 1.0), attack and release
    times uniform in theirs. A length not a multiple of the frame is padded with silence
    for the last frame's power. Identity when `training=False`.

    Args:
        sample_rate: sample rate of the inputs in Hz.
        target_dbfs_range: (low, high) RMS level the control aims at, dB re 1.0, <= 0.
        attack_seconds_range: (low, high) time constant when the level rises, > 0.
        release_seconds_range: (low, high) time constant when the level falls, > 0.
        max_gain_db: the most the control amplifies, in dB.
        frame_seconds: frame of the power measurement (WebRTC's AGC: 10 ms).
        probability: chance that an example goes through the control.
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, samples)` float32, a static length.

    Example:
    >>> agc = RandomGainControl(target_dbfs_range=(-26.0, -16.0), seed=0)
    >>> levelled = agc(waveforms)  # quiet passages raised, loud ones lowered
    >>> same = agc(waveforms, training=False)
    """

    draw_names = ("target_dbfs", "attack_seconds", "release_seconds", "on")

    def __init__(
        self,
        sample_rate=8000,
        target_dbfs_range=(-26.0, -16.0),
        attack_seconds_range=(0.005, 0.05),
        release_seconds_range=(0.1, 1.0),
        max_gain_db=30.0,
        frame_seconds=0.01,
        probability=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(probability=probability, seed=seed, **kwargs)
        self.sample_rate = _check_sample_rate(sample_rate)
        self.target_dbfs_range = check_range(
            "target_dbfs_range", target_dbfs_range, high_bound=0.0
        )
        self.attack_seconds_range = check_range(
            "attack_seconds_range", attack_seconds_range, 0, math.inf, True
        )
        self.release_seconds_range = check_range(
            "release_seconds_range", release_seconds_range, 0, math.inf, True
        )
        if (
            isinstance(max_gain_db, bool)
            or not isinstance(max_gain_db, int | float | np.number)
            or not (0 <= max_gain_db < math.inf)
        ):
            raise ValueError(
                f"max_gain_db must be a number >= 0. Received: max_gain_db={max_gain_db}"
            )
        self.max_gain_db = float(max_gain_db)
        self.frame_seconds = _check_positive("frame_seconds", frame_seconds)
        self.frame_samples = int(round(self.frame_seconds * self.sample_rate))
        if self.frame_samples < 1:
            raise ValueError(
                f"frame_seconds must span at least one sample at sample_rate={sample_rate}. "
                f"Received: frame_seconds={frame_seconds}"
            )

    def _draw_degradation(self, batch, target_seed, attack_seed, release_seed):
        return (
            uniform_draw((batch,), target_seed, *self.target_dbfs_range),
            uniform_draw((batch,), attack_seed, *self.attack_seconds_range),
            uniform_draw((batch,), release_seed, *self.release_seconds_range),
        )

    def gains(self, inputs, transformation):
        """Each frame's gain `g_k`: (batch, n_frames) float32."""
        length, frame = int(inputs.shape[-1]), self.frame_samples
        n_frames = -(-length // frame)
        padded = tf.pad(inputs, [[0, 0], [0, n_frames * frame - length]])
        power = tf.reduce_mean(tf.square(tf.reshape(padded, [-1, n_frames, frame])), axis=-1)
        attack = 1 - tf.exp(
            -self.frame_seconds / tf.cast(transformation["attack_seconds"], tf.float32)
        )
        release = 1 - tf.exp(
            -self.frame_seconds / tf.cast(transformation["release_seconds"], tf.float32)
        )

        def follow(envelope, frame_power):
            rate = tf.where(frame_power > envelope, attack, release)
            return envelope + rate * (frame_power - envelope)

        envelope = tf.transpose(tf.scan(follow, tf.transpose(power), initializer=power[:, 0]))
        target = tf.pow(10.0, tf.cast(transformation["target_dbfs"], tf.float32) / 20.0)[:, None]
        ceiling = 10.0 ** (self.max_gain_db / 20.0)
        levelling = tf.minimum(tf.math.divide_no_nan(target, tf.sqrt(envelope)), ceiling)
        return tf.where(envelope > 0, levelling, ceiling)  # (batch, n_frames)

    def _degrade(self, inputs, transformation):
        length, frame = int(inputs.shape[-1]), self.frame_samples
        gains = self.gains(inputs, transformation)  # (batch, n_frames)
        n_frames = -(-length // frame)
        previous = tf.concat([gains[:, :1], gains[:, :-1]], axis=-1)
        ramp = tf.range(1, frame + 1, dtype=tf.float32) / frame  # (frame,)
        gain = (
            previous[:, :, None] + (gains - previous)[:, :, None] * ramp
        )  # (batch, n_frames, frame)
        gain = tf.reshape(gain, [-1, n_frames * frame])[:, :length]
        return inputs * gain

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            target_dbfs_range=list(self.target_dbfs_range),
            attack_seconds_range=list(self.attack_seconds_range),
            release_seconds_range=list(self.release_seconds_range),
            max_gain_db=self.max_gain_db,
            frame_seconds=self.frame_seconds,
        )
        return config


# ----------------------------------------------------------------------------- codecs


def codec_round_trip(audio, sample_rate, codec, kbps):
    """`audio` encoded with `codec` (a key of `CODECS`) at `kbps` kbit/s and decoded back.

    Float mono audio at `sample_rate` is resampled with soxr to the codec's rate (its own rate
    for Opus where libopus takes it), rounded to int16 (clipped at full scale, as a device's
    input), encoded and decoded through PyAV's codec contexts (no container), resampled back
    and aligned with the input (AMR-NB's look-ahead removed, Opus' pre-skip dropped by its
    decoder; see `CODECS`): a float32 array of the input's length.
    """
    spec = CODECS[codec]
    audio = np.asarray(audio, np.float32)
    rate = sample_rate if sample_rate in spec["sample_rates"] else spec["sample_rates"][-1]
    pcm = to_int16(audio if rate == sample_rate else resample(audio, sample_rate, rate))
    # Silence after the input carries its end through the codec's look-ahead.
    silence = np.zeros(spec["delay_8k"] * rate // 8000, np.int16)
    out, out_rate = encode_decode(
        np.concatenate([pcm, silence]), rate, spec["encoder"], spec["decoder"], round(kbps * 1000)
    )
    if out_rate != sample_rate:  # Opus decodes at 48 kHz
        out = resample(out, out_rate, sample_rate)
    delay = round(spec["delay_8k"] * sample_rate / 8000)
    out = out[delay : delay + len(audio)]
    return np.pad(out, (0, len(audio) - len(out)))


@keras.saving.register_keras_serializable(package="nnfp")
class RandomCodec(_FieldAugmentation):
    """A phone call's speech codec: each example encoded at a low bit rate and decoded back.

    Each example is, with probability `probability`, sent through one of `codecs` drawn
    uniformly (`codec`, its index in `codecs`): AMR-NB (the GSM/UMTS narrow-band codec, 8 kHz)
    at one of its modes inside `amr_nb_kbps_range`, drawn uniformly, or Opus (libopus, VoIP
    and WebRTC) at a bit rate uniform in `opus_kbps_range` (`kbps`), by `codec_round_trip`:
    resampled with soxr to the codec's rate where needed and back, aligned with the input.
    Identity when `training=False`. The codec runs in Python on the CPU inside
    `tf.numpy_function`: use the layer in a `tf.data` map (it holds the GIL), not in a model
    to export. The encoders must be in PyAV's FFmpeg (the wheels on PyPI have both); a layer
    with `probability > 0` checks when it is built.

    Args:
        sample_rate: sample rate of the inputs in Hz.
        codecs: names of the codecs to draw from, keys of `CODECS` ("amr_nb", "opus").
        amr_nb_kbps_range: (low, high) AMR-NB bit rate in kbit/s, holding at least one of the
            modes 4.75, 5.15, 5.9, 6.7, 7.4, 7.95, 10.2 and 12.2.
        opus_kbps_range: (low, high) Opus bit rate in kbit/s (6-510).
        probability: chance that an example is coded.
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, samples)` float32, a static length.

    Example:
    >>> call = RandomCodec(codecs=("amr_nb", "opus"), probability=0.5, seed=0)
    >>> dataset = dataset.map(lambda x: call(x))  # half the examples through a phone call
    >>> same = call(waveforms, training=False)
    """

    draw_names = ("codec", "kbps", "on")

    def __init__(
        self,
        sample_rate=8000,
        codecs=("amr_nb", "opus"),
        amr_nb_kbps_range=(4.75, 12.2),
        opus_kbps_range=(8.0, 16.0),
        probability=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(probability=probability, seed=seed, **kwargs)
        self.sample_rate = _check_sample_rate(sample_rate)
        if isinstance(codecs, str) or not codecs or any(name not in CODECS for name in codecs):
            raise ValueError(
                f"codecs must be a non-empty list of names in {sorted(CODECS)}. "
                f"Received: codecs={codecs}"
            )
        self.codecs = tuple(codecs)
        self.amr_nb_kbps_range = check_range("amr_nb_kbps_range", amr_nb_kbps_range)
        low, high = self.amr_nb_kbps_range
        self._amr_modes = [
            kbps for kbps in CODECS["amr_nb"]["kbps"] if low - 1e-6 <= kbps <= high + 1e-6
        ]
        if not self._amr_modes:
            raise ValueError(
                f"amr_nb_kbps_range must hold one of AMR-NB's modes {CODECS['amr_nb']['kbps']}. "
                f"Received: amr_nb_kbps_range={amr_nb_kbps_range}"
            )
        self.opus_kbps_range = check_range("opus_kbps_range", opus_kbps_range, *_OPUS_KBPS)
        if self.probability > 0:
            missing = [
                f"{name} ({CODECS[name]['encoder']})"
                for name in self.codecs
                if not has_encoder(CODECS[name]["encoder"])
            ]
            if missing:
                raise ValueError(
                    f"PyAV's FFmpeg has no encoder for {', '.join(missing)}: install a PyAV wheel "
                    f"built with it or leave it out of codecs. Received: codecs={list(codecs)}"
                )

    def _draw_degradation(self, batch, codec_seed, kbps_seed):
        codec = uniform_draw((batch,), codec_seed, 0, len(self.codecs), "int32")
        unit = uniform_draw((batch,), kbps_seed)
        amr_modes = tf.constant(self._amr_modes, tf.float32)
        amr = tf.gather(
            amr_modes,
            tf.minimum(tf.cast(unit * len(self._amr_modes), tf.int32), len(self._amr_modes) - 1),
        )
        low, high = self.opus_kbps_range
        opus = low + unit * (high - low)
        is_amr = tf.gather(tf.constant([name == "amr_nb" for name in self.codecs]), codec)
        return codec, tf.where(is_amr, amr, opus)

    def _round_trips(self, inputs, codec, kbps, on):
        out = inputs.copy()
        for row in np.flatnonzero(on):
            name = self.codecs[int(codec[row])]
            out[row] = codec_round_trip(inputs[row], self.sample_rate, name, float(kbps[row]))
        return out

    def _degrade(self, inputs, transformation):
        drawn = [transformation[name] for name in self.draw_names]
        coded = tf.numpy_function(self._round_trips, [inputs, *drawn], tf.float32, stateful=False)
        return tf.ensure_shape(coded, inputs.shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            sample_rate=self.sample_rate,
            codecs=list(self.codecs),
            amr_nb_kbps_range=list(self.amr_nb_kbps_range),
            opus_kbps_range=list(self.opus_kbps_range),
        )
        return config
