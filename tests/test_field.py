"""What a phone does to a replica: the `RandomBandLimit`, `RandomClipping`, `RandomGainControl`
and `RandomCodec` layers of `nnfp.pipeline.field`, against scipy's filters, NumPy references
and PyAV's own containers; and their place in `PairPipeline` and the config."""

import io

import av
import keras
import numpy as np
import pytest
import soxr
import tensorflow as tf
from scipy.signal import butter, lfilter, sosfilt, sosfreqz

from nnfp.pipeline.field import (
    CODECS,
    RandomBandLimit,
    RandomClipping,
    RandomCodec,
    RandomGainControl,
    codec_round_trip,
)

SR = 8000
N = 8000  # 1 s examples: 1 Hz FFT bins


def white(n=N, rows=2, seed=0, scale=0.1):
    return (scale * np.random.default_rng(seed).normal(size=(rows, n))).astype(np.float32)


def db(x):
    return 20 * np.log10(np.maximum(np.abs(x), 1e-30))


def rms_db(x):
    return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2))


def snr_db(reference, degraded):
    reference, degraded = np.asarray(reference, np.float64), np.asarray(degraded, np.float64)
    return 10 * np.log10(np.sum(reference**2) / np.sum((reference - degraded) ** 2))


def on(n):
    return tf.ones(n, tf.bool)


def stateless(layer, row=0):
    """A `(len(draw_names), 2)` stateless seed for `layer`."""
    return tf.constant([[row, i] for i in range(len(layer.draw_names))], tf.int64)


# ----------------------------------------------------------------------------- band limit


def rbj_peaking(centre_hz, gain_db, q, rate=SR):
    """The cookbook's peaking biquad, written out in NumPy: one `sos` row."""
    amplitude, w0 = 10 ** (gain_db / 40), 2 * np.pi * centre_hz / rate
    alpha = np.sin(w0) / (2 * q)
    b = [1 + alpha * amplitude, -2 * np.cos(w0), 1 - alpha * amplitude]
    a = [1 + alpha / amplitude, -2 * np.cos(w0), 1 - alpha / amplitude]
    return np.r_[b, a] / a[0]


def rbj_high_shelf(corner_hz, gain_db, rate=SR):
    """The cookbook's high shelf of slope 1, written out in NumPy: one `sos` row."""
    amplitude, w0 = 10 ** (gain_db / 40), 2 * np.pi * corner_hz / rate
    cos, root = np.cos(w0), 2 * np.sqrt(amplitude) * np.sin(w0) / np.sqrt(2)
    b = [
        amplitude * ((amplitude + 1) + (amplitude - 1) * cos + root),
        -2 * amplitude * ((amplitude - 1) + (amplitude + 1) * cos),
        amplitude * ((amplitude + 1) + (amplitude - 1) * cos - root),
    ]
    a = [
        (amplitude + 1) - (amplitude - 1) * cos + root,
        2 * ((amplitude - 1) - (amplitude + 1) * cos),
        (amplitude + 1) - (amplitude - 1) * cos - root,
    ]
    return np.r_[b, a] / a[0]


def band_sos(order, highpass_hz, lowpass_hz, shelf_db, peak_hz, peak_db, peak_q, shelf_hz=1000.0):
    """scipy's Butterworth filters and the cookbook's shelf and peak, as one `sos` array."""
    return np.vstack(
        [
            butter(order, highpass_hz, "highpass", fs=SR, output="sos"),
            butter(order, lowpass_hz, "lowpass", fs=SR, output="sos"),
            rbj_high_shelf(shelf_hz, shelf_db)[None],
            rbj_peaking(peak_hz, peak_db, peak_q)[None],
        ]
    )


SETTINGS = [  # order, high-pass, low-pass, shelf dB, peak Hz, peak dB, peak Q
    (4, 100.0, 3800.0, 0.0, 1000.0, 6.0, 1.0),
    (2, 250.0, 3000.0, 3.0, 700.0, -6.0, 0.7),
    (4, 400.0, 2800.0, -3.0, 2500.0, 4.0, 2.0),
    (6, 150.0, 3400.0, 2.0, 500.0, -3.0, 1.4),
]


def band_draws(settings):
    keys = ("highpass_hz", "lowpass_hz", "shelf_db", "peak_hz", "peak_db", "peak_q")
    columns = list(zip(*settings, strict=True))[1:]
    drawn = {k: tf.constant(v, tf.float32) for k, v in zip(keys, columns, strict=True)}
    return {**drawn, "on": on(len(settings))}


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"order{s[0]}-hp{s[1]:g}-lp{s[2]:g}")
def test_band_limit_is_scipys_filter(settings):
    order = settings[0]
    layer = RandomBandLimit(order=order, peak_q_range=(0.5, 2.0))
    sos = band_sos(*settings)
    drawn = band_draws([settings])
    # magnitude response: the layer's impulse response against sosfreqz, to 0.005 dB wherever
    # the response is above -60 dB
    impulse = np.zeros((1, N), np.float32)
    impulse[0, 0] = 1.0
    response = np.fft.rfft(np.asarray(layer.transform(impulse, drawn))[0].astype(np.float64))
    _, reference = sosfreqz(sos, worN=np.fft.rfftfreq(N, 1 / SR), fs=SR)
    audible = db(reference) > -60
    assert np.abs(db(response) - db(reference))[audible].max() < 0.005
    # the waveform: white noise through sosfilt (an IIR from rest), to 1e-5 of its RMS
    noise = white(rows=1)
    filtered = np.asarray(layer.transform(noise, drawn))[0]
    expected = sosfilt(sos, noise[0].astype(np.float64))
    assert np.abs(filtered - expected).max() < 1e-5 * np.sqrt(np.mean(expected**2))


def rbj_peaking_at(freq, centre_hz, gain_db, q):
    _, h = sosfreqz(rbj_peaking(centre_hz, gain_db, q)[None], worN=[freq], fs=SR)
    return h[0]


def shelf_at(freq, gain_db):
    _, h = sosfreqz(rbj_high_shelf(1000.0, gain_db)[None], worN=[freq], fs=SR)
    return h[0]


def test_band_limit_gains_at_named_frequencies():
    impulse = np.zeros((2, N), np.float32)
    impulse[:, 0] = 1.0
    # a +6 dB resonance at 1 kHz far from both cutoffs; Butterworth cutoffs at -3.01 dB;
    # a +3 dB shelf gives half its gain in dB at its 1 kHz corner
    settings = [
        (4, 100.0, 3800.0, 0.0, 1000.0, 6.0, 1.0),
        (4, 250.0, 3000.0, 3.0, 2000.0, 0.0, 1.0),
    ]
    layer = RandomBandLimit(order=4)
    gains = db(np.fft.rfft(np.asarray(layer.transform(impulse, band_draws(settings))), axis=-1))
    assert gains[0, 1000] == pytest.approx(6.0, abs=0.01)
    assert gains[0, 2000] == pytest.approx(db(rbj_peaking_at(2000.0, 1000.0, 6.0, 1.0)), abs=0.01)
    assert gains[1, 250] == pytest.approx(-3.01, abs=0.01)  # the low-pass is flat at 250 Hz
    assert gains[1, 1000] == pytest.approx(1.5, abs=0.01)  # and both are flat at 1 kHz
    assert gains[1, 3000] == pytest.approx(-3.01 + db(shelf_at(3000.0, 3.0)), abs=0.01)
    assert gains[1, 60] < -48  # 2 octaves below a 4th-order high-pass: -48 dB
    assert gains[1, 3900] < -30


def test_band_limit_short_inputs_and_the_slowest_filter():
    # The lowest high-pass and the sharpest resonance ring longest: the spectra's padding
    # (tail_samples) keeps a 100-sample input's output the IIR's to 1e-6.
    layer = RandomBandLimit(order=8, highpass_hz_range=(50.0, 400.0), peak_q_range=(0.7, 8.0))
    assert layer.tail_samples > 1000
    settings = [(8, 50.0, 3800.0, 3.0, 500.0, 6.0, 8.0)]
    x = white(n=100, rows=1)
    out = np.asarray(layer.transform(x, band_draws(settings)))[0]
    expected = sosfilt(band_sos(*settings[0]), x[0].astype(np.float64))
    assert np.abs(out - expected).max() < 1e-6


def test_band_limit_draws_and_probability():
    layer = RandomBandLimit(probability=0.5, seed=3)
    x = white(rows=256, n=64)
    drawn = {k: np.asarray(v) for k, v in layer.get_random_transformation(x).items()}
    assert 100 <= drawn["highpass_hz"].min() and drawn["highpass_hz"].max() <= 400
    assert 2800 <= drawn["lowpass_hz"].min() and drawn["lowpass_hz"].max() <= 3800
    assert -3 <= drawn["shelf_db"].min() and drawn["shelf_db"].max() <= 3
    assert -6 <= drawn["peak_db"].min() and drawn["peak_db"].max() <= 6
    assert 0.7 <= drawn["peak_q"].min() and drawn["peak_q"].max() <= 2.0
    # log-uniform centre: as many resonances below the geometric mean as above it
    below = np.mean(drawn["peak_hz"] < np.sqrt(500 * 3000))
    assert 500 <= drawn["peak_hz"].min() and drawn["peak_hz"].max() <= 3000 and 0.4 < below < 0.6
    assert 0.4 < drawn["on"].mean() < 0.6
    out = np.asarray(layer.transform(x, {k: tf.constant(v) for k, v in drawn.items()}))
    np.testing.assert_array_equal(out[~drawn["on"]], x[~drawn["on"]])
    twins = [RandomBandLimit.from_config(layer.get_config()) for _ in range(2)]
    np.testing.assert_array_equal(np.asarray(twins[0](x)), np.asarray(twins[1](x)))  # seeded
    np.testing.assert_array_equal(np.asarray(twins[0](x, training=False)), x)
    assert np.all(np.abs(out[drawn["on"]] - x[drawn["on"]]).max(axis=-1) > 1e-3)


def test_band_limit_errors():
    with pytest.raises(
        ValueError,
        match=r"lowpass_hz_range must lie in \(0, 4000\). Received: lowpass_hz_range=\(3000, 4000\)",
    ):
        RandomBandLimit(lowpass_hz_range=(3000, 4000))
    with pytest.raises(ValueError, match="highpass_hz_range must lie below lowpass_hz_range"):
        RandomBandLimit(highpass_hz_range=(100, 3000))
    with pytest.raises(ValueError, match="order must be an even integer >= 2. Received: order=3"):
        RandomBandLimit(order=3)
    with pytest.raises(
        ValueError, match=r"probability must be in \[0, 1\]. Received: probability=1.5"
    ):
        RandomBandLimit(probability=1.5)
    with pytest.raises(
        ValueError,
        match="sample_rate must be a whole number of hertz > 0. Received: sample_rate=-8000",
    ):
        RandomBandLimit(sample_rate=-8000)
    with pytest.raises(
        ValueError, match="peak_q_range must be > 0. Received: peak_q_range=\\(0, 2\\)"
    ):
        RandomBandLimit(peak_q_range=(0, 2))
    with pytest.raises(ValueError, match="shelf_hz must be below sample_rate / 2 = 4000"):
        RandomBandLimit(shelf_hz=4000.0)
    with pytest.raises(ValueError, match=r"needs \(batch, samples\) inputs"):
        RandomBandLimit()(np.zeros(100, np.float32))


# ----------------------------------------------------------------------------- clipping


def clip_reference(x, clip_db, soft):
    threshold = np.abs(x).max() * 10 ** (clip_db / 20)
    if threshold == 0:
        return x
    return threshold * np.tanh(x / threshold) if soft else np.clip(x, -threshold, threshold)


def test_clipping_is_the_numpy_reference():
    x = white(rows=4, scale=0.3)
    x[3] = 0.0  # silence stays silence, without NaN
    clip_db = np.array([-6.0206, -1.0, -12.0, -6.0], np.float32)  # -6.0206 dB: half the peak
    soft = np.array([False, True, True, False])
    layer = RandomClipping()
    drawn = {"clip_db": tf.constant(clip_db), "soft": tf.constant(soft), "on": on(4)}
    out = np.asarray(layer.transform(x, drawn))
    for row in range(4):
        expected = clip_reference(x[row].astype(np.float64), clip_db[row], soft[row])
        np.testing.assert_allclose(out[row], expected, atol=1e-6)
    assert np.abs(out[0]).max() == pytest.approx(0.5 * np.abs(x[0]).max(), rel=1e-5)
    clipped = np.mean(np.abs(x[0]) >= 0.5 * np.abs(x[0]).max())  # Gaussian: P(|z| > 1.9 sigma)
    assert 0.03 < clipped < 0.09 and np.mean(out[0] == out[0].max()) == pytest.approx(
        clipped / 2, abs=0.02
    )
    assert np.all(out[3] == 0) and np.isfinite(out).all()
    # soft clipping never exceeds its threshold, and is nearly linear far below it
    threshold = np.abs(x[2]).max() * 10 ** (-12 / 20)
    assert np.abs(out[2]).max() < threshold
    small = np.abs(x[2]) < 0.05 * threshold
    np.testing.assert_allclose(out[2][small], x[2][small], rtol=1e-3)


def test_clipping_draws_seed_and_errors():
    layer = RandomClipping(clip_db_range=(-9.0, -3.0), soft_prob=0.25, probability=0.5, seed=4)
    x = white(rows=400, n=32)
    drawn = {k: np.asarray(v) for k, v in layer.get_random_transformation(x).items()}
    assert -9 <= drawn["clip_db"].min() and drawn["clip_db"].max() <= -3
    assert 0.18 < drawn["soft"].mean() < 0.32 and 0.43 < drawn["on"].mean() < 0.57
    twin = RandomClipping(clip_db_range=(-9.0, -3.0), soft_prob=0.25, probability=0.5, seed=4)
    restored = RandomClipping.from_config(layer.get_config())
    np.testing.assert_array_equal(np.asarray(restored(x, training=False)), x)
    np.testing.assert_array_equal(
        np.asarray(restored(x)), np.asarray(twin(x))
    )  # same seed, same stream
    with pytest.raises(
        ValueError, match=r"clip_db_range must be <= 0. Received: clip_db_range=\(-3, 2\)"
    ):
        RandomClipping(clip_db_range=(-3, 2))
    with pytest.raises(ValueError, match="soft_prob must be in"):
        RandomClipping(soft_prob=-0.1)


# ----------------------------------------------------------------------------- gain control


def agc_reference(x, target_dbfs, attack, release, max_gain_db=30.0, frame_seconds=0.01, rate=SR):
    """The documented automatic gain control, one sample row, in float64 loops."""
    frame = round(frame_seconds * rate)
    n_frames = -(-len(x) // frame)
    padded = np.pad(np.asarray(x, np.float64), (0, n_frames * frame - len(x)))
    powers = np.mean(padded.reshape(n_frames, frame) ** 2, axis=1)
    envelope, gains = powers[0], []
    for power in powers:
        tau = attack if power > envelope else release
        envelope += (1 - np.exp(-frame_seconds / tau)) * (power - envelope)
        ceiling = 10 ** (max_gain_db / 20)
        gains.append(
            min(10 ** (target_dbfs / 20) / np.sqrt(envelope), ceiling) if envelope > 0 else ceiling
        )
    out = np.empty(n_frames * frame)
    previous = gains[0]
    for k, gain in enumerate(gains):
        ramp = previous + (gain - previous) * np.arange(1, frame + 1) / frame
        out[k * frame : (k + 1) * frame] = padded[k * frame : (k + 1) * frame] * ramp
        previous = gain
    return out[: len(x)]


def step(quiet_dbfs=-40.0, loud_dbfs=-6.0, n=N):
    """A 440 Hz sine, at `quiet_dbfs` RMS for half a second, then at `loud_dbfs`."""
    t = np.arange(n) / SR
    level = np.where(t < n / SR / 2, quiet_dbfs, loud_dbfs)
    return (np.sqrt(2) * 10 ** (level / 20) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def agc_draws(target, attack, release):
    return {
        "target_dbfs": tf.constant(target, tf.float32),
        "attack_seconds": tf.constant(attack, tf.float32),
        "release_seconds": tf.constant(release, tf.float32),
        "on": on(len(target)),
    }


def test_gain_control_is_the_numpy_reference():
    x = np.stack(
        [step(), step(-10.0, -35.0), white(rows=1, scale=0.05)[0], np.zeros(N, np.float32)]
    )
    x[2, 3000:5000] *= 8.0  # noise that jumps 18 dB and falls back
    target, attack, release = (
        [-20.0, -26.0, -16.0, -20.0],
        [0.01, 0.005, 0.05, 0.01],
        [0.2, 1.0, 0.1, 0.2],
    )
    out = np.asarray(RandomGainControl().transform(x, agc_draws(target, attack, release)))
    for row in range(4):
        expected = agc_reference(x[row], target[row], attack[row], release[row])
        np.testing.assert_allclose(out[row], expected, rtol=2e-5, atol=1e-7)
    assert np.all(out[3] == 0) and np.isfinite(out).all()
    # a length that is not a multiple of the frame: the last frame's power over its padding
    odd = RandomGainControl().transform(
        x[:2, :7975], agc_draws(target[:2], attack[:2], release[:2])
    )
    np.testing.assert_allclose(
        np.asarray(odd)[0], agc_reference(x[0, :7975], -20.0, 0.01, 0.2), rtol=2e-5
    )


def test_gain_control_levels_the_rms_at_its_target():
    x = np.stack([step(), step()])  # -40 dBFS then -6 dBFS
    layer = RandomGainControl(max_gain_db=30.0)
    out = np.asarray(layer.transform(x, agc_draws([-20.0, -26.0], [0.01, 0.01], [0.2, 0.2])))
    settled_quiet, settled_loud = (
        slice(2400, 4000),
        slice(6400, 8000),
    )  # the last 0.2 s of each half
    assert rms_db(out[0, settled_quiet]) == pytest.approx(-20.0, abs=0.2)
    assert rms_db(out[0, settled_loud]) == pytest.approx(-20.0, abs=0.2)
    assert rms_db(out[1, settled_loud]) == pytest.approx(-26.0, abs=0.2)
    # the control needs its attack to catch the step: the 20 dB of gain of the quiet half
    # push the first 10 ms after it over full scale (+9 dBFS)
    assert rms_db(out[0, 4000:4080]) > 0.0
    # with at most 10 dB of gain the quiet half only rises from -40 to -30 dBFS
    capped = RandomGainControl(max_gain_db=10.0).transform(x[:1], agc_draws([-20.0], [0.01], [0.2]))
    assert rms_db(np.asarray(capped)[0, settled_quiet]) == pytest.approx(-30.0, abs=0.05)


def test_gain_control_draws_config_and_errors():
    layer = RandomGainControl(target_dbfs_range=(-30.0, -20.0), probability=0.5, seed=7)
    drawn = {
        k: np.asarray(v) for k, v in layer.get_random_transformation(white(rows=300, n=80)).items()
    }
    assert -30 <= drawn["target_dbfs"].min() and drawn["target_dbfs"].max() <= -20
    assert 0.005 <= drawn["attack_seconds"].min() and drawn["attack_seconds"].max() <= 0.05
    assert 0.1 <= drawn["release_seconds"].min() and drawn["release_seconds"].max() <= 1.0
    assert 0.42 < drawn["on"].mean() < 0.58
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, RandomGainControl) and restored.get_config() == layer.get_config()
    x = np.stack([step(), step(-10.0, -30.0)])
    seeds = stateless(layer)
    np.testing.assert_array_equal(
        np.asarray(layer.transform(x, layer.get_random_transformation(x, seed=seeds))),
        np.asarray(restored.transform(x, restored.get_random_transformation(x, seed=seeds))),
    )
    with pytest.raises(
        ValueError,
        match=r"attack_seconds_range must be > 0. Received: attack_seconds_range=\(0, 0.05\)",
    ):
        RandomGainControl(attack_seconds_range=(0, 0.05))
    with pytest.raises(
        ValueError, match="max_gain_db must be a number >= 0. Received: max_gain_db=-1"
    ):
        RandomGainControl(max_gain_db=-1)
    with pytest.raises(ValueError, match="frame_seconds must span at least one sample"):
        RandomGainControl(frame_seconds=1e-5)


# ----------------------------------------------------------------------------- codecs


def container_round_trip(audio, codec, kbps, rate=SR):
    """A direct PyAV encode/decode through a container (amr, ogg): PyAV's own framing, the
    muxer, the demuxer and the stream's default decoder; Opus trimmed by the Ogg pre-skip
    and end granule, then resampled from 48 kHz with soxr."""
    container, encoder = {"amr_nb": ("amr", "libopencore_amrnb"), "opus": ("ogg", "libopus")}[codec]
    pcm = np.round(np.clip(audio, -1, 32767 / 32768) * 32768).astype(np.int16)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=rate, layout="mono")
        stream.bit_rate = int(round(kbps * 1000))
        frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as source:
        decoded_rate = source.streams.audio[0].codec_context.sample_rate
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in source.decode(audio=0)])
    decoded = decoded.astype(np.float32) / (32768 if decoded.dtype == np.int16 else 1)
    return soxr.resample(decoded, decoded_rate, rate) if decoded_rate != rate else decoded


def vowel(n=N, rate=SR, pitch_hz=120.0):
    """A speech-like vowel: a glottal pulse train through three formant resonators."""
    pulses = np.zeros(n)
    pulses[:: round(rate / pitch_hz)] = 1.0
    for formant, bandwidth in ((700, 80), (1200, 90), (2600, 120)):
        radius = np.exp(-np.pi * bandwidth / rate)
        a = [1, -2 * radius * np.cos(2 * np.pi * formant / rate), radius**2]
        pulses = lfilter([1 - radius], a, pulses)
    return (0.3 * pulses / np.abs(pulses).max()).astype(np.float32)


def chord(n=N, rate=SR):
    """A music-like chord: three harmonic notes with a little noise."""
    t = np.arange(n) / rate
    notes = sum(
        amplitude * np.sin(2 * np.pi * harmonic * f0 * t + harmonic)
        for f0 in (220.0, 277.2, 329.6)
        for harmonic, amplitude in ((1, 0.1), (2, 0.05), (3, 0.03), (5, 0.01))
    )
    return (notes + 0.005 * np.random.default_rng(1).normal(size=n)).astype(np.float32)


def test_the_wheel_has_both_speech_codecs():
    for spec in CODECS.values():
        av.Codec(spec["encoder"], "w")
        av.Codec(spec["decoder"], "r")


@pytest.mark.parametrize(
    "codec, kbps", [("amr_nb", 4.75), ("amr_nb", 12.2), ("opus", 8.0), ("opus", 16.0)]
)
def test_codec_equals_a_direct_pyav_round_trip(codec, kbps):
    x = chord()
    layer = RandomCodec(codecs=[codec])
    drawn = {"codec": tf.zeros(1, tf.int32), "kbps": tf.constant([kbps]), "on": on(1)}
    out = np.asarray(layer.transform(x[None], drawn))[0]
    np.testing.assert_array_equal(out, codec_round_trip(x, SR, codec, kbps))
    direct = container_round_trip(x, codec, kbps)
    # AMR-NB's 5 ms look-ahead is not in its stream: the layer removes it
    direct = direct[CODECS[codec]["delay_8k"] :][:N]
    # the last 10 ms differ where soxr's filter meets the end the Ogg stream cut at
    inner = slice(0, N - 80)
    np.testing.assert_allclose(out[inner], direct[inner], atol=1e-5)


def test_codec_snr_is_that_of_a_speech_codec():
    """Waveform SNRs (dB) of the round trips, in ranges around the measured values: AMR-NB
    (CELP, made for speech) keeps a vowel's waveform at 7.6 dB (4.75 kbit/s) to 10.1 dB
    (12.2 kbit/s); Opus (SILK at these rates) keeps a chord at 6.1 dB (8 kbit/s) to 9.1 dB
    (16 kbit/s); at 16 kHz, 9.7 dB (AMR-NB 12.2) and 12.4 dB (Opus 16)."""
    speech, music = vowel(), chord()
    amr_low, amr_high = (
        snr_db(speech, codec_round_trip(speech, SR, "amr_nb", k)) for k in (4.75, 12.2)
    )
    opus_low, opus_high = (
        snr_db(music, codec_round_trip(music, SR, "opus", k)) for k in (8.0, 16.0)
    )
    assert 5.0 < amr_low < 11.0 and 7.0 < amr_high < 14.0 and amr_high > amr_low + 1.0
    assert 3.0 < opus_low < 10.0 and 6.0 < opus_high < 14.0 and opus_high > opus_low + 1.0
    # 16 kHz input: AMR-NB resampled to 8 kHz and back keeps the input's length, and the
    # vowel's waveform below 4 kHz; Opus codes at 16 kHz itself
    speech16 = vowel(n=2 * N, rate=16000)
    amr16 = codec_round_trip(speech16, 16000, "amr_nb", 12.2)
    opus16 = codec_round_trip(speech16, 16000, "opus", 16.0)
    assert amr16.shape == opus16.shape == (2 * N,)
    assert 6.0 < snr_db(speech16, amr16) < 14.0 and 8.0 < snr_db(speech16, opus16) < 18.0


def test_codec_draws_probability_determinism_and_tf_data():
    layer = RandomCodec(
        amr_nb_kbps_range=(5.0, 8.0), opus_kbps_range=(10.0, 12.0), probability=0.5, seed=2
    )
    x = np.stack([chord(n=1600), vowel(n=1600), chord(n=1600) * 0.5, vowel(n=1600) * 2])
    drawn = {
        k: np.asarray(v) for k, v in layer.get_random_transformation(np.zeros((400, 8))).items()
    }
    amr = drawn["codec"] == 0
    np.testing.assert_allclose(
        np.unique(drawn["kbps"][amr]), [5.15, 5.9, 6.7, 7.4, 7.95], rtol=1e-6
    )
    assert 10 <= drawn["kbps"][~amr].min() and drawn["kbps"][~amr].max() <= 12
    assert 0.4 < amr.mean() < 0.6 and 0.42 < drawn["on"].mean() < 0.58
    # a seed gives the same coded stream, in a tf.data map too
    seeded = [RandomCodec(probability=0.5, seed=9) for _ in range(2)]
    first, second = (
        np.concatenate(
            list(tf.data.Dataset.from_tensor_slices(x).batch(2).map(lambda b, c=c: c(b)))
        )
        for c in seeded
    )
    np.testing.assert_array_equal(first, second)
    assert first.shape == x.shape and first.dtype == np.float32
    # stateless seeds: coded rows are those drawn on, each the round trip of its draws
    drawn = seeded[0].get_random_transformation(x, seed=stateless(seeded[0], row=5))
    drawn = {k: np.asarray(v) for k, v in drawn.items()}
    out = np.asarray(seeded[0].transform(x, drawn))
    assert 0 < drawn["on"].sum() < len(x)
    for row, (codec, kbps, coded) in enumerate(
        zip(drawn["codec"], drawn["kbps"], drawn["on"], strict=True)
    ):
        name = seeded[0].codecs[codec]
        expected = codec_round_trip(x[row], SR, name, float(kbps)) if coded else x[row]
        np.testing.assert_array_equal(out[row], expected)
    np.testing.assert_array_equal(np.asarray(seeded[0](x, training=False)), x)


def test_codec_errors():
    with pytest.raises(
        ValueError,
        match=r"codecs must be a non-empty list of names in \['amr_nb', 'opus'\]. Received: codecs=\['gsm'\]",
    ):
        RandomCodec(codecs=["gsm"])
    with pytest.raises(ValueError, match="codecs must be a non-empty list"):
        RandomCodec(codecs="opus")
    with pytest.raises(ValueError, match="amr_nb_kbps_range must hold one of AMR-NB's modes"):
        RandomCodec(amr_nb_kbps_range=(5.0, 5.1))
    with pytest.raises(
        ValueError,
        match=r"opus_kbps_range must lie in \[6, 510\]. Received: opus_kbps_range=\(2, 8\)",
    ):
        RandomCodec(opus_kbps_range=(2, 8))
    with pytest.MonkeyPatch.context() as patch:  # a PyAV built without libopus
        patch.setitem(CODECS, "opus", {**CODECS["opus"], "encoder": "libnothing"})
        with pytest.raises(
            ValueError, match=r"PyAV's FFmpeg has no encoder for opus \(libnothing\)"
        ):
            RandomCodec(codecs=["amr_nb", "opus"])
        RandomCodec(codecs=["amr_nb", "opus"], probability=0.0)  # checked only when used
    config = RandomCodec(codecs=["opus"], probability=0.25).get_config()
    assert config["codecs"] == ["opus"] and config["probability"] == 0.25


# ----------------------------------------------------------------------------- the pipeline


def test_pair_pipeline_sends_replicas_through_a_phone():
    from nnfp.pipeline.pairs import PairPipeline

    rng = np.random.default_rng(3)
    tracks = [(0.2 * rng.normal(size=n)).astype("float32") for n in (6000, 8000)]
    settings = dict(sample_rate=SR, segment_seconds=0.25, hop_seconds=0.125, offset_margin=0.01)
    plain = PairPipeline(tracks, **settings)
    phone = PairPipeline(
        tracks,
        band_limit_prob=0.5,
        clipping_prob=0.5,
        agc_prob=0.5,
        codec_prob=0.5,
        codecs=["amr_nb", "opus"],
        **settings,
    )
    ids = np.arange(phone.n_segments)
    before, out = plain.sample(ids, seed=(5, 6)), phone.sample(ids, seed=(5, 6))
    assert not any(
        key.startswith(("band_limit", "clipping", "gain_control", "codec")) for key in before
    )
    # the other draws do not move
    np.testing.assert_array_equal(out["replica_start"], before["replica_start"])
    np.testing.assert_array_equal(out["anchors"], before["anchors"])
    # the replicas are the plain ones through the four layers, in order, with the drawn values
    replicas = before["replicas"]
    for layer in (phone.band_limit, phone.clipping, phone.gain_control, phone.codec):
        drawn = {name: out[f"{layer.name}_{name}"] for name in layer.draw_names}
        assert 0 < drawn["on"].mean() < 1, layer.name
        replicas = np.asarray(layer.transform(replicas, drawn))
    np.testing.assert_allclose(out["replicas"], replicas, atol=1e-5)
    untouched = ~np.any(
        [out[f"{n}_on"] for n in ("band_limit", "clipping", "gain_control", "codec")], axis=0
    )
    np.testing.assert_array_equal(out["replicas"][untouched], before["replicas"][untouched])
    # reproducible, and in the dataset
    np.testing.assert_array_equal(phone.sample(ids, seed=(5, 6))["replicas"], out["replicas"])
    anchors, batch = next(iter(phone.dataset(batch_size=8, n_anchors=4, seed=1)))
    assert anchors.shape == batch.shape == (4, 2000)


def test_pair_pipeline_phone_errors_name_the_pipeline():
    from nnfp.pipeline.pairs import PairPipeline

    with pytest.raises(ValueError, match="clip_db_range must be <= 0") as error:
        PairPipeline([np.zeros(SR, np.float32)], clipping_prob=0.5, clip_db_range=(-6.0, 3.0))
    assert "PairPipeline's phone" in "".join(error.value.__notes__)


def test_config_keys_are_off_by_default():
    from nnfp.config import ConfigError, load_config

    data = load_config()["data"]
    assert [data[k] for k in ("band_limit_prob", "clipping_prob", "agc_prob", "codec_prob")] == [
        0.0
    ] * 4
    assert data["codecs"] == ["amr_nb", "opus"] and data["lowpass_hz_range"] == [2800.0, 3800.0]
    config = load_config(
        None, ["data.codec_prob=0.3", "data.codecs=[opus]", "data.clip_db_range=[-6, -2]"]
    )
    assert config["data"]["codecs"] == ["opus"] and config["data"]["clip_db_range"] == [-6, -2]
    bad = {
        "data.lowpass_hz_range=[3000, 4100]": "'data.lowpass_hz_range': lowpass_hz_range must lie in (0, 4000)",
        "data.codecs=[gsm]": "'data.codecs': codecs must be a non-empty list of names",
        "data.agc_prob=1.5": "'data.agc_prob': expected a probability in [0, 1]",
        "data.agc_target_dbfs_range=[-10, 3]": "'data.agc_target_dbfs_range': target_dbfs_range must be <= 0",
        "data.amr_nb_kbps_range=[13, 14]": "'data.amr_nb_kbps_range': amr_nb_kbps_range must hold one",
        "data.peak_db_range=[6, -6]": "'data.peak_db_range': expected [low, high] with low <= high",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError) as error:
            load_config(None, [override])
        assert message in str(error.value), override
