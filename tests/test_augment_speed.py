"""Speed, tempo and key changes: the `RandomSpeed`, `RandomTimeStretch` and `RandomPitchShift`
layers of `nnfp.pipeline.augment`, the maths of `nnfp.pipeline.degrade` behind them, and the
whole-file NumPy forms that degrade evaluation queries; against sines measured by FFT,
scipy's polyphase resampler and analytic envelopes."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.signal import resample_poly

from nnfp.pipeline.augment import RandomPitchShift, RandomSpeed, RandomTimeStretch
from nnfp.pipeline.degrade import (
    change_speed,
    phase_vocoder,
    resample_at,
    shift_pitch,
    stretch_tempo,
)

SR = 8000
N = 8000  # 1 s examples: FFT peaks to a fraction of a hertz
CENTRE = (N - 1) / 2
MIDDLE = slice(1200, N - 1200)  # away from the ends, where a faster example reads silence


def sine(freq, n=N, phase=0.0):
    return np.sin(2 * np.pi * freq * np.arange(n) / SR + phase).astype(np.float32)


def burst(at_seconds, n=N, freq=440.0, width_seconds=0.03):
    """A 440 Hz tone under a Gaussian envelope centred at `at_seconds`."""
    t = np.arange(n) / SR
    return (np.exp(-0.5 * ((t - at_seconds) / width_seconds) ** 2) * sine(freq, n)).astype(
        np.float32
    )


def peak_hz(x):
    """Frequency of the largest FFT peak (Hann window, 16x zero padding: 1/16 Hz bins per s)."""
    x = np.asarray(x, np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 16 * len(x)))
    return np.argmax(spectrum) * SR / (16 * len(x))


def centroid_seconds(x):
    """Energy-weighted mean time of `x`: where its burst is."""
    energy = np.asarray(x, np.float64) ** 2
    return np.sum(np.arange(len(x)) / SR * energy) / np.sum(energy)


def rms(x):
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


def _fixed(layer, x, values):
    """`layer` applied with its draw set to `values` (one per example), always on."""
    name = layer.draw_names[0]
    drawn = {name: tf.constant(values, tf.float32), "on": tf.ones(len(values), tf.bool)}
    return np.asarray(layer.transform(x, drawn))


# ----------------------------------------------------------------------------- the maths


def test_resample_at_matches_scipy_polyphase_resampling():
    rng = np.random.default_rng(0)
    x = np.convolve(rng.normal(size=3 * N), np.hanning(9), "same").astype(np.float32)  # < 3 kHz
    for up, down in ((20, 21), (21, 20), (25, 27)):  # 5 % fast, 5 % slow, 8 % fast
        step = down / up
        reference = resample_poly(x.astype(np.float64), up, down)
        positions = (np.arange(len(reference)) * step)[None].astype(np.float32)
        out = resample_at(x[None], positions, [step]).numpy()[0]
        inner = slice(200, len(reference) - 200)
        err = np.abs(out[inner] - reference[inner]).max()
        assert err < 2e-3 * np.abs(x).max(), (up, down, err)
    # integer positions give the samples back; outside the signal is silence
    same = resample_at(x[None], np.arange(len(x), dtype=np.float32)[None], [1.0]).numpy()[0]
    np.testing.assert_allclose(same[100:-100], x[100:-100], atol=1e-3 * np.abs(x).max())
    outside = resample_at(x[None], np.array([[-5.0, len(x) + 4.0]], np.float32), [1.0]).numpy()
    np.testing.assert_array_equal(outside, 0.0)


def test_resample_at_removes_what_would_alias():
    # 3.9 kHz played 8 % fast would be 4.2 kHz, above Nyquist: removed, not folded to 3.8 kHz
    x = sine(3900.0)[None]
    positions = (CENTRE + 1.08 * (np.arange(N) - CENTRE))[None].astype(np.float32)
    out = resample_at(x, positions, [1.08]).numpy()[0]
    assert rms(out[MIDDLE]) < 1e-3
    # 3.6 kHz played 8 % slow (3.3 kHz) passes at full level
    x = sine(3600.0)[None]
    positions = (CENTRE + 0.92 * (np.arange(N) - CENTRE))[None].astype(np.float32)
    out = resample_at(x, positions, [0.92]).numpy()[0]
    assert abs(rms(out[MIDDLE]) / np.sqrt(0.5) - 1.0) < 5e-3
    assert abs(peak_hz(out[MIDDLE]) - 3600.0 * 0.92) < 1.0


def test_phase_vocoder_at_rate_one_gives_the_signal_back():
    rng = np.random.default_rng(1)
    x = np.convolve(rng.normal(size=(N,)), np.hanning(7), "same").astype(np.float32)
    out = phase_vocoder(x[None], [1.0], N, 512, 128).numpy()[0]
    np.testing.assert_allclose(out, x, atol=1e-3 * np.abs(x).max())


# ----------------------------------------------------------------------------- the layers


@pytest.mark.parametrize("factor", [0.92, 0.97, 1.05, 1.08])
def test_random_speed_equals_the_sine_played_at_its_factor(factor):
    x = np.stack([sine(440.0), sine(1234.5, phase=0.3)])
    out = _fixed(RandomSpeed(seed=0), x, [factor, factor])
    assert out.shape == x.shape  # a segment stays a segment
    # analytic reference: output sample n is the input at time centre + factor * (n - centre)
    time = (CENTRE + factor * (np.arange(N) - CENTRE)) / SR
    for row, (freq, phase) in enumerate(((440.0, 0.0), (1234.5, 0.3))):
        expected = np.sin(2 * np.pi * freq * time + phase)
        np.testing.assert_allclose(out[row, MIDDLE], expected[MIDDLE], atol=2e-3)
        assert abs(peak_hz(out[row, MIDDLE]) - freq * factor) < 0.5
    if factor > 1:  # the ends read past the input: silence, not wrapped-around audio
        reach = int(np.ceil((N - 1) / 2 * (1 - 1 / factor)))
        assert rms(out[:, : reach - 20]) < 1e-3 and rms(out[:, -(reach - 20) :]) < 1e-3


@pytest.mark.parametrize("factor", [0.95, 1.05])
def test_random_time_stretch_keeps_the_pitch_and_moves_events(factor):
    layer = RandomTimeStretch(seed=0)
    tone = _fixed(layer, sine(440.0)[None], [factor])[0]
    assert tone.shape == (N,)
    assert abs(peak_hz(tone[MIDDLE]) - 440.0) < 0.5
    assert abs(rms(tone[MIDDLE]) / np.sqrt(0.5) - 1.0) < 0.01  # phase locking: no level loss
    # a burst 0.3 s after the centre comes 0.3 / factor s after it
    at = CENTRE / SR + 0.3
    moved = _fixed(layer, burst(at)[None], [factor])[0]
    assert abs(centroid_seconds(moved) - (CENTRE / SR + 0.3 / factor)) < 0.002
    assert abs(peak_hz(moved) - 440.0) < 2.0


@pytest.mark.parametrize("semitones", [-1.0, 0.5, 2.0])
def test_random_pitch_shift_moves_the_pitch_and_keeps_the_timing(semitones):
    layer = RandomPitchShift(semitones_range=(-2.0, 2.0), seed=0)
    ratio = 2 ** (semitones / 12)
    tone = _fixed(layer, sine(440.0)[None], [semitones])[0]
    assert tone.shape == (N,)
    assert abs(peak_hz(tone[MIDDLE]) - 440.0 * ratio) < 0.5
    assert abs(rms(tone[MIDDLE]) / np.sqrt(0.5) - 1.0) < 0.01
    at = CENTRE / SR + 0.3
    kept = _fixed(layer, burst(at)[None], [semitones])[0]
    assert abs(centroid_seconds(kept) - at) < 0.002
    assert abs(peak_hz(kept) - 440.0 * ratio) < 2.0


def _layers():
    return [
        RandomSpeed(speed_range=(0.9, 1.1), seed=1),
        RandomTimeStretch(tempo_range=(0.9, 1.1), seed=2),
        RandomPitchShift(semitones_range=(-1.0, 1.0), seed=3),
    ]


def _waves(batch=4, n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack(
        [np.convolve(rng.normal(size=n), np.hanning(5), "same") for _ in range(batch)]
    ).astype(np.float32)


def _names():
    return [type(layer).__name__ for layer in _layers()]


@pytest.mark.parametrize("index", range(3), ids=_names())
def test_identity_at_inference_and_inside_a_model(index):
    layer, x = _layers()[index], _waves()
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    out = np.asarray(layer(x, training=True))
    assert out.shape == x.shape == layer.compute_output_shape(x.shape)
    assert not np.allclose(out, x, atol=1e-3)
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)  # predict never augments
    trained = np.asarray(model(x, training=True))
    assert trained.shape == x.shape and not np.allclose(trained, x, atol=1e-3)


@pytest.mark.parametrize("index", range(3), ids=_names())
def test_draws_in_range_and_probability(index):
    layer, x = _layers()[index], _waves(batch=200, n=600)
    drawn = layer.get_random_transformation(x)
    values = np.asarray(drawn[layer.draw_names[0]])
    low, high = {0: (0.9, 1.1), 1: (0.9, 1.1), 2: (-1.0, 1.0)}[index]
    assert values.min() >= low and values.max() <= high and np.ptp(values) > 0.5 * (high - low)
    assert np.asarray(drawn["on"]).all()  # probability 1
    half = type(layer).from_config({**layer.get_config(), "probability": 0.5})
    drawn = half.get_random_transformation(x)
    out = np.asarray(half.transform(x, drawn))
    on = np.asarray(drawn["on"])
    assert 0.3 < on.mean() < 0.7
    np.testing.assert_array_equal(out[~on], x[~on])  # rows left alone are untouched
    assert not np.allclose(out[on], x[on], atol=1e-3)


@pytest.mark.parametrize("index", range(3), ids=_names())
def test_config_round_trip_and_seeded_determinism(index):
    layer, x = _layers()[index], _waves()
    restored = type(layer).from_config(layer.get_config())
    other = type(layer).from_config({**layer.get_config(), "seed": layer.seed + 100})
    assert restored.get_config() == layer.get_config()
    first = np.asarray(layer(x))
    np.testing.assert_array_equal(np.asarray(restored(x)), first)  # same seed, same draws
    assert not np.array_equal(np.asarray(other(x)), first)  # another seed, other draws
    assert not np.array_equal(np.asarray(layer(x)), first)  # the generator moved on
    seed = tf.random.experimental.stateless_split(tf.constant([3, 4], tf.int64), 2)
    a, b = (
        layer.get_random_transformation(x, seed=seed),
        other.get_random_transformation(x, seed=seed),
    )
    for name in layer.draw_names:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
    # a saved chain loads without custom_objects and draws the same
    chain = keras.Sequential(
        [keras.Input(x.shape[1:]), type(layer).from_config(layer.get_config())]
    )
    loaded = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(chain))
    np.testing.assert_array_equal(
        np.asarray(loaded(x, training=True)), np.asarray(chain(x, training=True))
    )


def test_layers_in_a_tf_data_map():
    chain = keras.Sequential(_layers())
    x = _waves(batch=8, n=1000)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4).map(lambda w: chain(w, training=True))
    batches = [np.asarray(b) for b in ds]
    assert [b.shape for b in batches] == [(4, 1000), (4, 1000)]
    assert not np.allclose(batches[0], x[:4], atol=1e-3)
    again = [np.asarray(b) for b in ds]  # the generators moved on: fresh draws
    assert not np.allclose(batches[0], again[0])
    plain = tf.data.Dataset.from_tensor_slices(x).batch(4).map(RandomSpeed(seed=5))  # training
    assert not np.allclose(next(iter(plain)).numpy(), x[:4], atol=1e-3)


def test_bad_arguments():
    with pytest.raises(
        ValueError, match=r"speed_range must hold factors > 0. Received: speed_range=\(0, 1.1\)"
    ):
        RandomSpeed(speed_range=(0, 1.1))
    with pytest.raises(ValueError, match=r"Received: tempo_range=\(1.1, 0.9\)"):
        RandomTimeStretch(tempo_range=(1.1, 0.9))
    with pytest.raises(ValueError, match=r"Received: semitones_range=\(-1, nan\)"):
        RandomPitchShift(semitones_range=(-1, float("nan")))
    with pytest.raises(ValueError, match=r"Received: speed_range=1.05"):
        RandomSpeed(speed_range=1.05)
    with pytest.raises(ValueError, match="Received: probability=1.5"):
        RandomPitchShift(probability=1.5)
    with pytest.raises(ValueError, match="Received: hop_length=300"):
        RandomTimeStretch(n_fft=512, hop_length=300)
    with pytest.raises(ValueError, match="Received: n_fft=2"):
        RandomPitchShift(n_fft=2)
    unknown_length = tf.TensorSpec([None, None], tf.float32)
    for layer in _layers():
        traced = tf.function(lambda w, layer=layer: layer(w), input_signature=[unknown_length])
        with pytest.raises(ValueError, match="needs inputs of a static length"):
            traced.get_concrete_function()


# ----------------------------------------------------------------------------- whole files


def test_change_speed_is_soxr_resampling():
    x = burst(1.0, n=2 * SR) + 0.3 * sine(700.0, 2 * SR)
    for factor in (0.96, 1.03, 1.08):
        out = change_speed(x, factor)
        assert out.dtype == np.float32 and len(out) == round(len(x) / factor)
        assert abs(peak_hz(change_speed(sine(440.0, 2 * SR), factor)) - 440.0 * factor) < 0.3
        assert abs(centroid_seconds(out) - centroid_seconds(x) / factor) < 0.002
    reference = resample_poly(x.astype(np.float64), 20, 21)  # 5 % fast
    out = change_speed(x, 1.05)
    np.testing.assert_allclose(out[100:-100], reference[100 : len(out) - 100], atol=2e-3)


def test_stretch_tempo_and_shift_pitch_whole_files():
    x = burst(0.5, n=2 * SR)
    for factor in (0.95, 1.05):
        out = stretch_tempo(x, factor, SR)
        assert out.dtype == np.float32 and len(out) == round(len(x) / factor)
        assert abs(centroid_seconds(out) - 0.5 / factor) < 0.003  # as if starting at 0
        assert abs(peak_hz(stretch_tempo(sine(440.0, 2 * SR), factor, SR)) - 440.0) < 0.3
    for semitones in (-1.0, 1.0):
        out = shift_pitch(x, semitones, SR)
        assert out.dtype == np.float32 and len(out) == len(x)
        assert abs(centroid_seconds(out) - 0.5) < 0.003
        tone = shift_pitch(sine(440.0, 2 * SR), semitones, SR)
        assert abs(peak_hz(tone[800:-800]) - 440.0 * 2 ** (semitones / 12)) < 0.3
        assert abs(rms(tone[800:-800]) / np.sqrt(0.5) - 1.0) < 0.01
    np.testing.assert_allclose(shift_pitch(x, 0.0, SR), x, atol=2e-3)


def test_whole_file_bad_arguments():
    with pytest.raises(ValueError, match="Received: factor=0"):
        change_speed(np.zeros(100), 0)
    with pytest.raises(ValueError, match="Received: factor=nan"):
        stretch_tempo(np.zeros(100), float("nan"), SR)
    with pytest.raises(ValueError, match="Received: sample_rate=-8000"):
        stretch_tempo(np.zeros(100), 1.0, -8000)
    with pytest.raises(ValueError, match="Received: semitones=inf"):
        shift_pitch(np.zeros(100), float("inf"), SR)
    with pytest.raises(ValueError, match=r"Received: audio.shape=\(2, 50\)"):
        change_speed(np.zeros((2, 50)), 1.02)


# ----------------------------------------------------------------------------- training pairs


def test_pair_pipeline_plays_replicas_at_other_speeds():
    from nnfp.pipeline.pairs import PairPipeline

    seg, context = 400, 100
    rng = np.random.default_rng(3)
    tracks = [(0.2 * rng.normal(size=n)).astype("float32") for n in (1500, 2000)]
    irs = [np.r_[1.0, np.zeros(20), 0.5].astype("float32")]
    settings = dict(
        sample_rate=SR, segment_seconds=seg / SR, hop_seconds=seg / SR / 2, offset_margin=30 / SR,
        impulse_responses=irs, reverb_context_seconds=context / SR,
    )  # fmt: skip
    plain = PairPipeline(tracks, **settings)
    pipeline = PairPipeline(tracks, speed_range=(0.9, 1.1), speed_prob=0.5, **settings)
    ids = np.arange(pipeline.n_segments)
    before, out = plain.sample(ids, seed=(5, 6)), pipeline.sample(ids, seed=(5, 6))
    assert "speed" not in before
    # the other draws do not move: only the replicas played at another speed change
    np.testing.assert_array_equal(out["replica_start"], before["replica_start"])
    np.testing.assert_array_equal(out["clean_replicas"], before["clean_replicas"])
    on = out["speed_on"]
    assert 0 < on.mean() < 1 and out["speed"].min() >= 0.9 and out["speed"].max() <= 1.1
    np.testing.assert_allclose(out["replicas"][~on], before["replicas"][~on], atol=1e-6)
    assert not np.allclose(out["replicas"][on], before["replicas"][on], atol=1e-3)
    # a replica is RandomSpeed of the window around it, read with a margin (silent past its
    # track), then the room
    margin = pipeline._timescale_margin(context + seg)
    bank = np.round(np.concatenate(tracks) * 32768) / 32768
    ends = np.cumsum([len(t) for t in tracks])
    windows = np.zeros((len(ids), 2 * margin + context + seg), np.float32)
    for row, start in enumerate(out["replica_start"]):
        track = np.searchsorted(ends, start, side="right")
        first, end = ends[track] - len(tracks[track]), ends[track]
        lo, hi = start - context - margin, start + seg + margin
        windows[row, max(lo, first) - lo : min(hi, end) - lo] = bank[max(lo, first) : min(hi, end)]
    played = pipeline.speed.transform(windows, {"factor": out["speed"], "on": on})
    played = np.asarray(played)[:, margin : margin + context + seg]
    room = pipeline.room.transform(played, {"index": out["ir_index"], "on": out["ir_on"]})
    np.testing.assert_allclose(np.asarray(room), out["replicas"], atol=1e-5)


def test_config_keys_are_off_by_default():
    from nnfp.config import ConfigError, load_config

    data = load_config()["data"]
    assert data["speed_range"] == [1.0, 1.0] and data["tempo_range"] == [1.0, 1.0]
    assert data["pitch_semitones_range"] == [0.0, 0.0]
    on = load_config(None, ["data.speed_range=[0.92, 1.08]", "data.pitch_semitones_range=[-1, 1]"])
    assert on["data"]["speed_range"] == [0.92, 1.08]
    with pytest.raises(ConfigError, match="'data.speed_range': expected factors > 0"):
        load_config(None, ["data.speed_range=[0, 1.08]"])
    with pytest.raises(ConfigError, match="'data.tempo_prob': expected a probability"):
        load_config(None, ["data.tempo_prob=1.5"])
