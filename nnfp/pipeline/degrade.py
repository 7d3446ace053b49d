"""The degradation maths of the training and validation pairs (evaluation queries: `nnfp.catalogue.queries`).

Background noise mixed at an SNR (an energy ratio over the excerpt) and a room/microphone
impulse response applied by FFT convolution, energy re-normalised so loudness does not drift.
Speed, tempo and pitch changes: band-limited resampling at arbitrary positions (`resample_at`)
and an STFT phase vocoder (`phase_vocoder`), batched TensorFlow maths for the training layers,
and their whole-file NumPy forms for evaluation queries (`change_speed`, soxr resampling, as
`load_audio`; `stretch_tempo`; `shift_pitch`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = [
    "change_speed", "fft_convolve", "mix_at_snr",
    "next_pow2", "phase_vocoder", "resample_at", "shift_pitch", "stretch_tempo",
]  # fmt: skip

# Half the taps of the interpolation kernel of `resample_at`, which reads a 2x-oversampled
# signal: a Hann-windowed sinc of 2 * 6 taps is flat over its band and stops its images.
_KERNEL_HALF_WIDTH = 6


def mix_at_snr(signals, noise, snr_db):
    """Adds `noise` scaled so that 10*log10(P_signal / P_noise) == snr_db, row by row.

    signals, noise: (batch, samples); snr_db: (batch,). Silent rows give no NaN: the
    noise scale is then 0 and the signal passes unchanged.
    """
    signal_power = tf.reduce_mean(tf.square(signals), axis=-1, keepdims=True)  # (batch, 1)
    noise_power = tf.reduce_mean(tf.square(noise), axis=-1, keepdims=True)  # (batch, 1)
    target_noise_power = signal_power * tf.pow(10.0, -snr_db[:, None] / 10.0)
    scale = tf.sqrt(tf.math.divide_no_nan(target_noise_power, noise_power))  # (batch, 1)
    return signals + scale * noise


def next_pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def fft_convolve(signals, impulse_responses=None, ir_spectra=None, n_fft=None):
    """Linear convolution truncated to the signal length: `np.convolve(x, h)[:len(x)]`.

    signals: (batch, samples); impulse_responses: (batch, ir_samples), static last dims.
    Or `ir_spectra`: (batch, n_fft // 2 + 1) precomputed `rfft(h, [n_fft])` with
    `n_fft >= samples + ir_samples - 1`, which saves a third of the FFT work.
    """
    length = int(signals.shape[-1])
    if ir_spectra is None:
        n_fft = next_pow2(length + int(impulse_responses.shape[-1]) - 1)
        ir_spectra = tf.signal.rfft(impulse_responses, [n_fft])
    spectrum = tf.signal.rfft(signals, [n_fft]) * ir_spectra
    return tf.signal.irfft(spectrum, [n_fft])[..., :length]  # (batch, samples)


# -- speed, tempo and pitch


def _sinc(x):
    """Normalised sinc, sin(pi x) / (pi x), 1 at 0."""
    near_zero = tf.abs(x) < 1e-4
    safe = tf.where(near_zero, tf.ones_like(x), x)
    return tf.where(near_zero, tf.ones_like(x), tf.sin(np.pi * safe) / (np.pi * safe))


def resample_at(signals, positions, step):
    """`signals` read at fractional sample `positions`, band-limited; silence outside the signal.

    The signal is oversampled 2x in the frequency domain (zero-padded first, so nothing wraps
    around), then read with a 12-tap Hann-windowed sinc, which is flat over the oversampled
    band and stops its images. Where `step` (input samples per output sample) exceeds 1, the
    content above the output's Nyquist frequency is removed first, so nothing aliases.

    signals: (batch, samples), a static length; positions: (batch, n) in input samples;
    step: (batch,). Returns (batch, n) float32.
    """
    signals = tf.convert_to_tensor(signals, tf.float32)
    positions = tf.convert_to_tensor(positions, tf.float32)
    step = tf.convert_to_tensor(step, tf.float32)
    length = int(signals.shape[-1])
    n_fft = next_pow2(length + 2 * _KERNEL_HALF_WIDTH)
    nyquist_fraction = tf.range(n_fft // 2 + 1, dtype=tf.float32) / (n_fft / 2)
    keep = nyquist_fraction[None, :] < 1.0 / tf.maximum(step, 1.0)[:, None]  # (batch, bins)
    spectrum = tf.signal.rfft(signals, [n_fft]) * tf.cast(keep, tf.complex64)
    spectrum = tf.pad(spectrum, [[0, 0], [0, n_fft // 2]])  # twice the bins, the upper half empty
    dense = 2.0 * tf.signal.irfft(spectrum, [2 * n_fft])  # (batch, 2 n_fft): dense[2i] ~ x[i]
    flat = tf.reshape(dense, [-1])  # one flat gather per tap is faster than a batched one
    row_start = (tf.range(tf.shape(dense)[0]) * (2 * n_fft))[:, None]
    dense_positions = 2.0 * positions
    base = tf.floor(dense_positions)
    fraction = dense_positions - base  # (batch, n)
    base = tf.cast(base, tf.int32)
    # The kernel at distance `fraction - tap` from each tap, from one sine and cosine per
    # position: sin(pi (f - k)) = (-1)^k sin(pi f), and the Hann window by angle addition.
    sin_pi = tf.sin(np.pi * fraction)
    angle = np.pi * fraction / _KERNEL_HALF_WIDTH
    cos_window, sin_window = tf.cos(angle), tf.sin(angle)
    out = tf.zeros_like(positions)
    for tap in range(1 - _KERNEL_HALF_WIDTH, _KERNEL_HALF_WIDTH + 1):
        distance = fraction - tap
        tap_angle = np.pi * tap / _KERNEL_HALF_WIDTH
        window = 0.5 + 0.5 * (cos_window * np.cos(tap_angle) + sin_window * np.sin(tap_angle))
        if tap == 0:  # the only tap at distance 0 (fraction 0)
            sinc = _sinc(distance)
        else:
            sinc = (-1.0) ** tap * sin_pi / (np.pi * distance)
        index = tf.math.floormod(base + tap, 2 * n_fft)  # the zero padding is periodic
        out += sinc * window * tf.gather(flat, row_start + index)
    inside = tf.logical_and(positions > -0.5, positions < length - 0.5)
    return out * tf.cast(inside, tf.float32)


def phase_vocoder(signals, rate, out_length, n_fft, hop_length):
    """A tempo change that keeps the pitch: an STFT phase vocoder (Flanagan and Golden 1966)
    with identity phase locking (Laroche and Dolson 1999).

    Output time t (in samples) plays input time `c_in + rate * (t - c_out)`, the centres of the
    input and of the output (`(samples - 1) / 2`, `(out_length - 1) / 2`): `rate` 1.05 is 5 %
    faster, events move towards the centre. Magnitudes are interpolated between the two
    nearest input frames; spectral peaks advance their phases by the frequency the two frames
    measure, and the bins around a peak keep their measured phase offsets from it. Input
    beyond its ends is silence.

    signals: (batch, samples), a static length; rate: (batch,) positive. Returns
    (batch, out_length) float32.
    """
    signals = tf.convert_to_tensor(signals, tf.float32)
    rate = tf.convert_to_tensor(rate, tf.float32)
    length = int(signals.shape[-1])
    # n_fft of silence on each side: the first and last samples lie under full frame overlap.
    padded = tf.pad(signals, [[0, 0], [n_fft, n_fft]])
    stft = tf.signal.stft(padded, n_fft, hop_length, n_fft)  # (batch, in_frames, bins), Hann
    n_in = int(stft.shape[1])
    n_out = -(-(out_length + n_fft) // hop_length) + 1
    # Frame j is centred on sample j * hop - n_fft / 2, in input and output alike.
    out_time = tf.range(n_out, dtype=tf.float32) * hop_length - n_fft / 2  # (out_frames,)
    in_time = (length - 1) / 2 + rate[:, None] * (out_time[None, :] - (out_length - 1) / 2)
    frame = (in_time + n_fft / 2) / hop_length  # (batch, out_frames) fractional input frame
    inside = tf.logical_and(frame >= 0, frame <= n_in - 1)
    base = tf.clip_by_value(tf.floor(frame), 0, n_in - 2)
    alpha = (frame - base)[..., None]
    base = tf.cast(base, tf.int32)
    magnitude, phase = tf.abs(stft), tf.math.angle(stft)
    m0 = tf.gather(magnitude, base, batch_dims=1)  # (batch, out_frames, bins)
    m1 = tf.gather(magnitude, base + 1, batch_dims=1)
    p0 = tf.gather(phase, base, batch_dims=1)
    p1 = tf.gather(phase, base + 1, batch_dims=1)
    magnitude = ((1.0 - alpha) * m0 + alpha * m1) * tf.cast(inside, tf.float32)[..., None]
    # Each frame advances every bin's phase by its frequency over one hop: the bin's centre
    # plus the deviation the two input frames measure, wrapped to (-pi, pi].
    advance = 2.0 * np.pi * hop_length * tf.range(n_fft // 2 + 1, dtype=tf.float32) / n_fft
    increment = p1 - p0
    increment -= 2.0 * np.pi * tf.round((increment - advance) / (2.0 * np.pi))
    increment -= 2.0 * np.pi * tf.round(increment / (2.0 * np.pi))  # the sum stays small
    accumulated = p0[:, :1] + tf.cumsum(increment, axis=1, exclusive=True)
    # Identity phase locking (Laroche and Dolson 1999): a bin keeps the phase offset from its
    # nearest peak that the nearer input frame measures, and only peaks run on accumulated
    # phases. Errors carried over from onsets and silence then move a partial as a whole
    # instead of setting its bins against each other (a quieter, "phasey" output).
    peak = _nearest_peak(magnitude)  # (batch, out_frames, bins)
    measured = tf.where(alpha < 0.5, p0, p1)
    take_along_bins = tf.experimental.numpy.take_along_axis
    peak_phase = take_along_bins(accumulated, peak, axis=2)
    phase = peak_phase + measured - take_along_bins(measured, peak, axis=2)
    frames = tf.complex(magnitude * tf.cos(phase), magnitude * tf.sin(phase))
    window = tf.signal.inverse_stft_window_fn(hop_length)
    out = tf.signal.inverse_stft(frames, n_fft, hop_length, n_fft, window_fn=window)
    return out[:, n_fft : n_fft + out_length]


def _nearest_peak(magnitude):
    """For (batch, frames, bins) magnitudes: each bin's nearest spectral peak (a bin above its
    lower neighbour and not below its upper one), by running extremes in log2(bins) doubling
    steps; the bin itself in a frame without peaks."""
    n_bins = int(magnitude.shape[-1])
    lower = tf.pad(magnitude[..., :-1], [[0, 0], [0, 0], [1, 0]])
    upper = tf.pad(magnitude[..., 1:], [[0, 0], [0, 0], [0, 1]])
    is_peak = tf.logical_and(magnitude > lower, magnitude >= upper)
    bins = tf.range(n_bins)
    none_below, none_above = -2 * n_bins, 3 * n_bins
    below = tf.where(is_peak, bins, none_below)  # -> the last peak at or below each bin
    above = tf.where(is_peak, bins, none_above)  # -> the first peak at or above each bin
    shift = 1
    while shift < n_bins:
        up = tf.pad(below[..., :-shift], [[0, 0], [0, 0], [shift, 0]], constant_values=none_below)
        down = tf.pad(above[..., shift:], [[0, 0], [0, 0], [0, shift]], constant_values=none_above)
        below, above = tf.maximum(below, up), tf.minimum(above, down)
        shift *= 2
    nearest = tf.where(bins - below <= above - bins, below, above)
    return tf.where(tf.logical_and(nearest >= 0, nearest < n_bins), nearest, bins)


def _vocoder_frame(sample_rate):
    """STFT size (about 64 ms, a power of two) and hop (a quarter) of the phase vocoder."""
    n_fft = next_pow2(round(0.064 * sample_rate))
    return n_fft, n_fft // 4


def _check_audio(audio):
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(
            f"audio must be a non-empty 1-D array. Received: audio.shape={audio.shape}"
        )
    return audio


def _check_positive(name, value):
    if isinstance(value, bool) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0. Received: {name}={value}")
    return float(value)


def change_speed(audio, factor):
    """`audio` played `factor` times as fast, pitch and tempo together (a turntable, a tape).

    1.03 plays 3 % fast: every frequency 3 % higher, `len(audio) / 1.03` samples (rounded).
    Resampled by soxr, the resampler of `load_audio`. Returns float32.
    """
    from nnfp.audio.io import resample

    audio = _check_audio(audio)
    factor = _check_positive("factor", factor)
    return np.ascontiguousarray(resample(audio, factor, 1.0), np.float32)


def stretch_tempo(audio, factor, sample_rate):
    """`audio` at `factor` times the tempo, pitch kept: 1.05 is 5 % faster, `len(audio) / 1.05`
    samples (rounded). `phase_vocoder` with a ~64 ms STFT at `sample_rate`. Returns float32.
    """
    audio = _check_audio(audio)
    factor = _check_positive("factor", factor)
    sample_rate = _check_positive("sample_rate", sample_rate)
    out_length = max(1, round(len(audio) / factor))
    n_fft, hop_length = _vocoder_frame(sample_rate)
    out = phase_vocoder(audio[None], [factor], out_length, n_fft, hop_length)
    return np.ascontiguousarray(out.numpy()[0], np.float32)


def shift_pitch(audio, semitones, sample_rate):
    """`audio` `semitones` higher (negative: lower), duration and timing kept: stretched to
    `2 ** (semitones / 12)` times its length (`stretch_tempo`), then played that much faster
    (`change_speed`). Returns float32 of `len(audio)` samples.
    """
    audio = _check_audio(audio)
    if isinstance(semitones, bool) or not np.isfinite(semitones):
        raise ValueError(f"semitones must be a finite number. Received: semitones={semitones}")
    ratio = 2.0 ** (float(semitones) / 12.0)
    shifted = change_speed(stretch_tempo(audio, 1.0 / ratio, sample_rate), ratio)
    out = np.zeros(len(audio), np.float32)  # soxr's length may differ by a sample
    out[: min(len(out), len(shifted))] = shifted[: len(out)]
    return out
