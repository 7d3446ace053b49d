"""Waveform augmentation layers: the degradations that turn a clean segment into a replica.

`RandomTimeShift`, `RoomImpulseResponse`, `BackgroundMix` (noise or speech at an SNR) and
`RandomGain` are Keras preprocessing layers, used in a `tf.data` map or in a model, and
composed by `PairPipeline` into the training replicas of Chang et al. 2021. `RandomSpeed`,
`RandomTimeStretch` and `RandomPitchShift` play a replica faster or slower, in another tempo
or in another key, as radio stations, DJs and re-uploads do.

As Keras' `RandomFlip`, they augment unless called with `training=False` (which `predict`,
`evaluate` and export pass), so `dataset.map(layer)` augments. Keras' image layers switch
their backend to TensorFlow inside `tf.data` (`keras.src...DataLayer`, not public API);
nnfp runs Keras on TensorFlow, so these layers are TensorFlow graphs in both places. In a
`tf.data` map each call advances the layer's `SeedGenerator` (fresh draws every batch, in
no reproducible order under parallel calls); for a reproducible stream pass stateless seeds
to `get_random_transformation`, as `PairPipeline` does.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from nnfp.pipeline.bank import check_clips, cpu_variable, gather_windows, to_int16
from nnfp.pipeline.degrade import fft_convolve, mix_at_snr, next_pow2, phase_vocoder, resample_at

__all__ = [
    "BackgroundMix", "RandomGain", "RandomPitchShift", "RandomSpeed", "RandomTimeShift",
    "RandomTimeStretch", "RoomImpulseResponse",
]  # fmt: skip


def check_range(name, value, low_bound=-math.inf, high_bound=math.inf, open_bounds=False):
    """`value` as a finite `(low, high)` pair with low <= high, inside [low_bound, high_bound]
    (open bounds: strictly inside), or a `ValueError` naming `name`."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair. Received: {name}={value}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name} must be finite with low <= high. Received: {name}={value}")
    outside = (
        (low <= low_bound or high >= high_bound)
        if open_bounds
        else (low < low_bound or high > high_bound)
    )
    if outside:
        below, above = ("<", ">") if open_bounds else ("<=", ">=")
        if low_bound == -math.inf:
            where = f"be {below} {high_bound:g}"
        elif high_bound == math.inf:
            where = f"be {above} {low_bound:g}"
        else:
            left, right = "()" if open_bounds else "[]"
            where = f"lie in {left}{low_bound:g}, {high_bound:g}{right}"
        raise ValueError(f"{name} must {where}. Received: {name}={value}")
    return low, high


def _check_count(name, value, minimum):
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received: {name}={value}")
    return int(value)


def _check_factor_range(name, value):
    low, high = check_range(name, value)
    if low <= 0:
        raise ValueError(f"{name} must hold factors > 0. Received: {name}={value}")
    return low, high


def _check_stft(n_fft, hop_length):
    n_fft = _check_count("n_fft", n_fft, minimum=4)
    hop_length = _check_count("hop_length", hop_length, minimum=1)
    if hop_length > n_fft // 2:
        raise ValueError(
            f"hop_length must be at most n_fft / 2 = {n_fft // 2} (frames must overlap). "
            f"Received: hop_length={hop_length}"
        )
    return n_fft, hop_length


def _static_length(layer, inputs):
    if inputs.shape[-1] is None:
        raise ValueError(f"{type(layer).__name__} needs inputs of a static length. Received: None")
    return int(inputs.shape[-1])


def _check_probability(probability):
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1]. Received: probability={probability}")
    return float(probability)


def uniform_draw(shape, seed, minval=0.0, maxval=1.0, dtype="float32"):
    """A `keras.random` draw from a `SeedGenerator`, or the same draw, stateless, from a
    `(2,)` seed tensor (Keras' TensorFlow backend draws with `tf.random.stateless_uniform`)."""
    if isinstance(seed, keras.random.SeedGenerator):
        if "int" in dtype:
            return keras.random.randint(shape, minval, maxval, dtype=dtype, seed=seed)
        return keras.random.uniform(shape, minval, maxval, dtype=dtype, seed=seed)
    return tf.random.stateless_uniform(shape, seed, minval, maxval, dtype)


class WaveformAugmentation(keras.layers.Layer):
    """Draws (`get_random_transformation`) kept apart from their use (`transform`), as in
    Keras' image preprocessing layers, so a pipeline can seed every batch statelessly and
    log what it drew. Subclasses name their draws in `draw_names` and define `_draw`
    (the base of these layers and of `nnfp.pipeline.field`'s)."""

    draw_names = ()

    def __init__(self, seed=None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def get_random_transformation(self, inputs, training=True, seed=None):
        """The random draws for a batch of `inputs` (only its size is read), keyed by `draw_names`.

        `seed=None` draws from the layer's `SeedGenerator`. A `(len(draw_names), 2)` integer
        tensor of stateless seeds (one row per draw, in `draw_names` order) makes the draws a
        pure function of it. Returns None when `training` is False.
        """
        if not training:
            return None
        n_draws = len(self.draw_names)
        if seed is None:
            seeds = [self.seed_generator] * n_draws
        else:
            seed = tf.convert_to_tensor(seed)
            if seed.shape.rank != 2 or seed.shape[0] != n_draws or seed.shape[1] != 2:
                raise ValueError(
                    f"seed must be a ({n_draws}, 2) integer tensor, one stateless seed per draw "
                    f"{self.draw_names}. Received: seed.shape={tuple(seed.shape)}"
                )
            seeds = [seed[i] for i in range(n_draws)]
        draws = self._draw(ops.shape(inputs)[0], *seeds)
        return dict(zip(self.draw_names, draws, strict=True))

    def call(self, inputs, training=True):
        return self.transform(inputs, self.get_random_transformation(inputs, training=training))

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class RandomTimeShift(WaveformAugmentation):
    """Crops a window at a random time offset: the replica's misalignment with its anchor.

    The input window holds `max_shift` extra samples on each side of the segment; each
    example is cropped at its own offset, uniform in `[-max_shift, max_shift]` samples
    around the centre. With `training=False` the centre is kept (no shift), as Keras'
    `RandomCrop` does. Chang et al. 2021 shift replicas by up to 0.2 s of the 0.5 s hop.

    Args:
        max_shift: largest shift in samples, either way (an integer >= 0).
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input: `(batch, samples + 2 * max_shift)`. Output: `(batch, samples)`.

    Example:
    >>> shift = RandomTimeShift(max_shift=1600, seed=0)
    >>> shift(np.zeros((4, 11200), "float32")).shape  # 0.2 s either way at 8 kHz
    TensorShape([4, 8000])
    """

    draw_names = ("shift",)

    def __init__(self, max_shift=1600, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not isinstance(max_shift, int | np.integer) or max_shift < 0:
            raise ValueError(f"max_shift must be an integer >= 0. Received: max_shift={max_shift}")
        self.max_shift = int(max_shift)

    def _draw(self, batch, seed):
        return (uniform_draw((batch,), seed, -self.max_shift, self.max_shift + 1, "int64"),)

    def _output_length(self, input_length):
        if input_length is None:
            raise ValueError("RandomTimeShift needs inputs of a static length. Received: None")
        length = input_length - 2 * self.max_shift
        if length < 1:
            raise ValueError(
                f"Inputs must be longer than 2 * max_shift = {2 * self.max_shift} samples. "
                f"Received: input length {input_length}"
            )
        return length

    def transform(self, inputs, transformation):
        """`inputs` cropped at `transformation["shift"]` (the centre when it is None)."""
        inputs = ops.convert_to_tensor(inputs, "float32")
        width = inputs.shape[-1]
        length = self._output_length(width)
        if transformation is None or self.max_shift == 0:
            return inputs[:, self.max_shift : self.max_shift + length]
        start = self.max_shift + ops.cast(transformation["shift"], "int32")  # (batch,)
        rows = ops.arange(ops.shape(inputs)[0], dtype="int32") * width
        grid = (rows + start)[:, None] + ops.arange(length, dtype="int32")[None, :]
        return ops.take(ops.reshape(inputs, (-1,)), grid)  # (batch, length)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self._output_length(input_shape[-1]))

    def get_config(self):
        config = super().get_config()
        config.update(max_shift=self.max_shift)
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class BackgroundMix(WaveformAugmentation):
    """Adds an excerpt of a bank of recordings (noise, babble, speech) at a random SNR.

    Each example gets, with probability `probability`, a `segment_samples` excerpt drawn
    uniformly over every position of every clip (clips shorter than a segment are tiled),
    scaled so that `10 log10(P_signal / P_excerpt)` is uniform in `snr_db_range`, powers
    being means over the segment, as the original `background_mix` (Chang et al. 2021). A
    silent example passes unchanged. Identity when `training=False`.

    The bank is not part of `get_config` (it can hold hours of audio): a layer restored by
    `from_config` or `keras.saving.load_model` has none until `set_clips(clips)` is called.

    Args:
        clips: list of 1-D float (or int16 PCM) arrays at the input's sample rate, or None
            to set them later with `set_clips`.
        segment_samples: length of the input examples.
        snr_db_range: (low, high) signal-to-excerpt ratio in dB.
        probability: chance that an example gets an excerpt.
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, segment_samples)` float32.

    Example:
    >>> noise = BackgroundMix(noise_clips, segment_samples=8000, snr_db_range=(0, 10))
    >>> noisy = noise(clean)  # (batch, 8000), each at 0-10 dB SNR
    >>> speech = BackgroundMix(speech_clips, 8000, (5, 15), probability=0.5, name="speech")
    """

    draw_names = ("snr_db", "start", "on")

    def __init__(
        self,
        clips=None,
        segment_samples=8000,
        snr_db_range=(0.0, 10.0),
        probability=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.segment_samples = _check_count("segment_samples", segment_samples, minimum=1)
        self.snr_db_range = check_range("snr_db_range", snr_db_range)
        self.probability = _check_probability(probability)
        self.n_clips = 0
        if clips is not None:
            self.set_clips(clips)

    def set_clips(self, clips):
        """Replaces the bank with `clips` (a list of 1-D arrays)."""
        seg = self.segment_samples
        clips = check_clips("clips", clips)
        clips = [np.resize(x, seg) if len(x) < seg else x for x in clips]  # tile short clips
        lengths = np.array([len(x) for x in clips], np.int64)
        n_starts = lengths - seg + 1  # valid excerpt starts per clip
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        cumulative = np.cumsum(n_starts)
        # A uniform draw u in [0, total starts) maps to clip i = searchsorted(cumulative, u)
        # and absolute start u + (offsets[i] - (cumulative[i] - n_starts[i])).
        self._audio = cpu_variable(np.concatenate([to_int16(x) for x in clips]))
        self._cumulative = tf.constant(cumulative)
        self._shift = tf.constant(offsets - (cumulative - n_starts))
        self._total_starts = int(cumulative[-1])
        self.n_clips = len(clips)

    def _draw(self, batch, snr_seed, start_seed, on_seed):
        if not self.n_clips:
            raise ValueError(
                f"{self.name} has no clips: pass clips=[...] to the constructor or call "
                "set_clips(clips) (the bank is not saved with the layer's config)"
            )
        snr_db = uniform_draw((batch,), snr_seed, *self.snr_db_range)
        draw = uniform_draw((batch,), start_seed, 0, self._total_starts, "int64")
        clip = tf.searchsorted(self._cumulative, draw, side="right")
        start = draw + tf.gather(self._shift, clip)  # absolute start in the bank
        on = uniform_draw((batch,), on_seed) < self.probability
        return snr_db, start, on

    def transform(self, inputs, transformation):
        """`inputs` plus the excerpts at `transformation["start"]` mixed at its `snr_db`,
        where its `on` is True (unchanged inputs when it is None)."""
        inputs = ops.convert_to_tensor(inputs, "float32")
        if transformation is None:
            return inputs
        if inputs.shape[-1] not in (None, self.segment_samples):
            raise ValueError(
                f"Inputs must hold segment_samples={self.segment_samples} samples. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        excerpts = gather_windows(self._audio, transformation["start"], self.segment_samples)
        mixed = mix_at_snr(inputs, excerpts, transformation["snr_db"])
        return ops.where(transformation["on"][:, None], mixed, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            segment_samples=self.segment_samples,
            snr_db_range=list(self.snr_db_range),
            probability=self.probability,
        )
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class RoomImpulseResponse(WaveformAugmentation):
    """Convolves each example with a random impulse response of a bank (a room, a microphone).

    Each example is, with probability `probability`, convolved with one impulse response
    drawn uniformly from the bank (FFT convolution with spectra computed once), over the
    segment and the `context_samples` of audio before it, so reverberation tails of earlier
    notes reach the segment as they do in a room. The result is the last `segment_samples`
    samples, rescaled to the segment's energy so loudness does not drift. With
    `training=False` (and for examples left dry) the output is the segment without its
    context. Follows the impulse-response augmentation of Chang et al. 2021.

    The bank is not part of `get_config`: a layer restored by `from_config` or
    `keras.saving.load_model` has none until `set_impulse_responses(impulse_responses)`.

    Args:
        impulse_responses: list of 1-D impulse responses (zero-padded to the longest), or
            None to set them later with `set_impulse_responses`.
        segment_samples: length of the output segment.
        context_samples: samples of audio before the segment that pass through the room.
        probability: chance that an example is convolved.
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input: `(batch, context_samples + segment_samples)`. Output: `(batch, segment_samples)`.

    Example:
    >>> room = RoomImpulseResponse(irs, segment_samples=8000, context_samples=8000)
    >>> wet = room(two_seconds)  # (batch, 16000) -> (batch, 8000), the last second
    >>> dry = room(two_seconds, training=False)  # the last second, unchanged
    """

    draw_names = ("index", "on")

    def __init__(
        self,
        impulse_responses=None,
        segment_samples=8000,
        context_samples=0,
        probability=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.segment_samples = _check_count("segment_samples", segment_samples, minimum=1)
        self.context_samples = _check_count("context_samples", context_samples, minimum=0)
        self.probability = _check_probability(probability)
        self.n_impulse_responses = 0
        if impulse_responses is not None:
            self.set_impulse_responses(impulse_responses)

    def set_impulse_responses(self, impulse_responses):
        """Replaces the bank with `impulse_responses` (a list of 1-D arrays)."""
        irs = check_clips("impulse_responses", impulse_responses)
        ir_length = max(len(ir) for ir in irs)
        padded = np.zeros((len(irs), ir_length), np.float32)
        for i, ir in enumerate(irs):
            padded[i, : len(ir)] = ir
        # Spectra computed once: a batch then needs 2 FFTs per example instead of 3.
        self._n_fft = next_pow2(self.segment_samples + self.context_samples + ir_length - 1)
        spectra = tf.signal.rfft(tf.constant(padded), [self._n_fft]).numpy()
        self._spectra = cpu_variable(spectra)  # (n_ir, n_fft // 2 + 1) complex64
        self.n_impulse_responses = len(irs)

    def _draw(self, batch, index_seed, on_seed):
        if not self.n_impulse_responses:
            raise ValueError(
                f"{self.name} has no impulse responses: pass impulse_responses=[...] to the "
                "constructor or call set_impulse_responses(...) (the bank is not saved with "
                "the layer's config)"
            )
        index = uniform_draw((batch,), index_seed, 0, self.n_impulse_responses, "int32")
        on = uniform_draw((batch,), on_seed) < self.probability
        return index, on

    def transform(self, inputs, transformation):
        """The segments convolved with the responses at `transformation["index"]` where its
        `on` is True; the dry segments elsewhere (everywhere when it is None)."""
        inputs = ops.convert_to_tensor(inputs, "float32")
        if inputs.shape[-1] != self.context_samples + self.segment_samples:
            raise ValueError(
                f"Inputs must hold context_samples + segment_samples = "
                f"{self.context_samples + self.segment_samples} samples. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        dry = inputs[:, self.context_samples :]  # (batch, segment_samples)
        if transformation is None:
            return dry
        spectra = tf.gather(self._spectra, transformation["index"])
        wet = fft_convolve(inputs, ir_spectra=spectra, n_fft=self._n_fft)[:, self.context_samples :]
        dry_power = ops.mean(ops.square(dry), axis=-1, keepdims=True)
        wet_power = ops.mean(ops.square(wet), axis=-1, keepdims=True)
        wet = wet * ops.sqrt(ops.divide_no_nan(dry_power, wet_power))
        return ops.where(transformation["on"][:, None], wet, dry)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.segment_samples)

    def get_config(self):
        config = super().get_config()
        config.update(
            segment_samples=self.segment_samples,
            context_samples=self.context_samples,
            probability=self.probability,
        )
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class RandomGain(WaveformAugmentation):
    """Scales each example by a random gain, uniform in decibels over `gain_db_range`.

    Identity when `training=False`. The last degradation of a replica: a phone's level is
    unknown, and the energy-normalised mixes above do not move it.

    Args:
        gain_db_range: (low, high) gain in dB.
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, samples)` float32.

    Example:
    >>> gain = RandomGain(gain_db_range=(-6.0, 0.0), seed=0)
    >>> quieter = gain(waveforms)  # each example scaled by 0.5-1.0
    >>> same = gain(waveforms, training=False)
    """

    draw_names = ("gain_db",)

    def __init__(self, gain_db_range=(-6.0, 0.0), seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.gain_db_range = check_range("gain_db_range", gain_db_range)

    def _draw(self, batch, seed):
        return (uniform_draw((batch,), seed, *self.gain_db_range),)

    def transform(self, inputs, transformation):
        """`inputs` scaled by `10 ** (transformation["gain_db"] / 20)` (unchanged when None)."""
        inputs = ops.convert_to_tensor(inputs, "float32")
        if transformation is None:
            return inputs
        return inputs * ops.power(10.0, transformation["gain_db"] / 20.0)[:, None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(gain_db_range=list(self.gain_db_range))
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class RandomSpeed(WaveformAugmentation):
    """Plays each example faster or slower, pitch and tempo together (a turntable, a tape).

    Each example is, with probability `probability`, resampled about its centre by a factor
    uniform in `speed_range`: 1.05 plays 5 % fast, every frequency 5 % higher and every event
    5 % closer to the centre. The output keeps the input's length (a segment stays a
    segment): a faster example reads past the input's ends, which are silence, so give the
    layer `ceil((high - 1) * samples / 2)` extra samples on each side and crop the centre
    afterwards, as `PairPipeline` does. Band-limited resampling (`resample_at` of
    `nnfp.pipeline.degrade`): nothing aliases. Identity when `training=False`.

    Args:
        speed_range: (low, high) playback-speed factor, low > 0.
        probability: chance that an example is resampled.
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, samples)` float32, a static length.

    Example:
    >>> speed = RandomSpeed(speed_range=(0.92, 1.08), seed=0)
    >>> played = speed(waveforms)  # each example 8 % slower to 8 % faster
    >>> same = speed(waveforms, training=False)
    """

    draw_names = ("factor", "on")

    def __init__(self, speed_range=(0.92, 1.08), probability=1.0, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.speed_range = _check_factor_range("speed_range", speed_range)
        self.probability = _check_probability(probability)

    def _draw(self, batch, factor_seed, on_seed):
        factor = uniform_draw((batch,), factor_seed, *self.speed_range)
        on = uniform_draw((batch,), on_seed) < self.probability
        return factor, on

    def transform(self, inputs, transformation):
        """`inputs` played at `transformation["factor"]` times their speed where its `on` is
        True (unchanged inputs when it is None)."""
        inputs = ops.convert_to_tensor(inputs, "float32")
        if transformation is None:
            return inputs
        length = _static_length(self, inputs)
        factor = ops.cast(transformation["factor"], "float32")
        centre = (length - 1) / 2
        time = ops.arange(length, dtype="float32")[None, :] - centre
        played = resample_at(inputs, centre + factor[:, None] * time, step=factor)
        return ops.where(transformation["on"][:, None], played, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(speed_range=list(self.speed_range), probability=self.probability)
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class RandomTimeStretch(WaveformAugmentation):
    """Changes each example's tempo and keeps its pitch (a DJ's key lock, a re-timed upload).

    Each example is, with probability `probability`, time-stretched about its centre by a
    factor uniform in `tempo_range` (1.05 is 5 % faster: events 5 % closer to the centre,
    every frequency where it was) with an STFT phase vocoder (`phase_vocoder` of
    `nnfp.pipeline.degrade`, identity phase locking). The output keeps the input's length; a
    faster example reads past the input's ends, which are silence (see `RandomSpeed`).
    Identity when `training=False`.

    Args:
        tempo_range: (low, high) tempo factor, low > 0.
        probability: chance that an example is stretched.
        n_fft: STFT window and FFT length in samples (512: 64 ms at 8 kHz).
        hop_length: STFT hop in samples, at most `n_fft / 2` (a quarter is best).
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, samples)` float32, a static length.

    Example:
    >>> stretch = RandomTimeStretch(tempo_range=(0.95, 1.05), seed=0)
    >>> retimed = stretch(waveforms)  # 5 % slower to 5 % faster, same key
    >>> same = stretch(waveforms, training=False)

    Follows Flanagan and Golden 1966 (phase vocoder), Laroche and Dolson 1999 (phase locking).
    """

    draw_names = ("factor", "on")

    def __init__(
        self,
        tempo_range=(0.95, 1.05),
        probability=1.0,
        n_fft=512,
        hop_length=128,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.tempo_range = _check_factor_range("tempo_range", tempo_range)
        self.probability = _check_probability(probability)
        self.n_fft, self.hop_length = _check_stft(n_fft, hop_length)

    def _draw(self, batch, factor_seed, on_seed):
        factor = uniform_draw((batch,), factor_seed, *self.tempo_range)
        on = uniform_draw((batch,), on_seed) < self.probability
        return factor, on

    def transform(self, inputs, transformation):
        """`inputs` at `transformation["factor"]` times their tempo where its `on` is True
        (unchanged inputs when it is None)."""
        inputs = ops.convert_to_tensor(inputs, "float32")
        if transformation is None:
            return inputs
        length = _static_length(self, inputs)
        factor = ops.cast(transformation["factor"], "float32")
        stretched = phase_vocoder(inputs, factor, length, self.n_fft, self.hop_length)
        return ops.where(transformation["on"][:, None], stretched, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            tempo_range=list(self.tempo_range),
            probability=self.probability,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
        )
        return config


@keras.saving.register_keras_serializable(package="nnfp")
class RandomPitchShift(WaveformAugmentation):
    """Moves each example into another key and keeps its timing (a pitched re-upload).

    Each example is, with probability `probability`, shifted by a number of semitones
    uniform in `semitones_range` (positive: higher): stretched to `2 ** (semitones / 12)`
    times its length (`phase_vocoder`), then resampled back to its length (`resample_at`),
    so every frequency is multiplied by that ratio and every event stays where it was.
    Identity when `training=False`.

    Args:
        semitones_range: (low, high) shift in semitones.
        probability: chance that an example is shifted.
        n_fft: STFT window and FFT length in samples (512: 64 ms at 8 kHz).
        hop_length: STFT hop in samples, at most `n_fft / 2` (a quarter is best).
        seed: integer seed of the layer's `keras.random.SeedGenerator`.

    Input/output: `(batch, samples)` float32, a static length.

    Example:
    >>> pitch = RandomPitchShift(semitones_range=(-1.0, 1.0), seed=0)
    >>> rekeyed = pitch(waveforms)  # up to a semitone lower or higher, same timing
    >>> same = pitch(waveforms, training=False)
    """

    draw_names = ("semitones", "on")

    def __init__(
        self,
        semitones_range=(-1.0, 1.0),
        probability=1.0,
        n_fft=512,
        hop_length=128,
        seed=None,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        self.semitones_range = check_range("semitones_range", semitones_range)
        self.probability = _check_probability(probability)
        self.n_fft, self.hop_length = _check_stft(n_fft, hop_length)

    def _draw(self, batch, semitones_seed, on_seed):
        semitones = uniform_draw((batch,), semitones_seed, *self.semitones_range)
        on = uniform_draw((batch,), on_seed) < self.probability
        return semitones, on

    def transform(self, inputs, transformation):
        """`inputs` `transformation["semitones"]` higher where its `on` is True (unchanged
        inputs when it is None)."""
        inputs = ops.convert_to_tensor(inputs, "float32")
        if transformation is None:
            return inputs
        length = _static_length(self, inputs)
        ratio = ops.power(2.0, ops.cast(transformation["semitones"], "float32") / 12.0)
        # Long enough for the largest ratio of the range: the stretch loses no input.
        longest = max(1.0, 2.0 ** (self.semitones_range[1] / 12.0))
        stretched_length = math.ceil(length * longest) + 1
        stretched = phase_vocoder(
            inputs, 1.0 / ratio, stretched_length, self.n_fft, self.hop_length
        )  # (batch, stretched_length)
        centre, stretched_centre = (length - 1) / 2, (stretched_length - 1) / 2
        time = ops.arange(length, dtype="float32")[None, :] - centre
        shifted = resample_at(stretched, stretched_centre + ratio[:, None] * time, step=ratio)
        return ops.where(transformation["on"][:, None], shifted, inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            semitones_range=list(self.semitones_range),
            probability=self.probability,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
        )
        return config
