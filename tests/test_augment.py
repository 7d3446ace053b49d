import numpy as np
import pytest

from nnfp.augment import SpecAugment


def _mel(batch=4, seed=0):
    return np.random.default_rng(seed).uniform(-80, 0, (batch, 64, 32, 1)).astype("float32")


def test_identity_when_not_training():
    x = _mel()
    np.testing.assert_array_equal(np.asarray(SpecAugment(seed=1)(x)), x)
    np.testing.assert_array_equal(np.asarray(SpecAugment(seed=1)(x, training=False)), x)


@pytest.mark.parametrize("chain", [("cutout",), ("horizontal",), ("vertical",)])
def test_one_mask_shared_by_batch_and_size_in_range(chain):
    x = _mel()
    layer = SpecAugment(chain=chain, fill="zeros", size_range=(0.1, 0.5), seed=3)
    for _ in range(5):
        out = np.asarray(layer(x, training=True))
        masked = out != x  # zeros fill; x is never exactly 0 here
        np.testing.assert_array_equal(masked[0], masked[1])  # shared across the batch
        rows = masked[0, :, :, 0].any(axis=1)
        cols = masked[0, :, :, 0].any(axis=0)
        if chain[0] in ("cutout", "horizontal"):
            assert round(0.1 * 64) <= rows.sum() <= round(0.5 * 64)
        else:
            assert rows.all()
        if chain[0] in ("cutout", "vertical"):
            assert round(0.1 * 32) <= cols.sum() <= round(0.5 * 32)
        else:
            assert cols.all()
        # bands are contiguous, in frequency and in time
        for band in (rows, cols):
            idx = np.flatnonzero(band)
            assert idx.max() - idx.min() + 1 == len(idx)
        # a cutout is exactly the rectangle of its two bands
        np.testing.assert_array_equal(masked[0, :, :, 0], rows[:, None] & cols[None, :])


def test_fill_values():
    x = _mel(2)
    out = np.asarray(SpecAugment(chain=("cutout",), fill="min", seed=5)(x, training=True))
    for i in range(2):
        changed = out[i] != x[i]
        assert changed.any()
        np.testing.assert_allclose(out[i][changed], x[i].min())
    out = np.asarray(SpecAugment(chain=("cutout",), fill="random", seed=5)(x, training=True))
    changed = out[0] != x[0]
    assert out[0][changed].std() > 1.0
    assert out[0][changed].min() >= x[0].min() and out[0][changed].max() <= x[0].max()


def test_probability_zero_never_masks():
    x = _mel()
    np.testing.assert_array_equal(
        np.asarray(SpecAugment(probability=0.0, seed=1)(x, training=True)), x
    )


def test_chain_applies_its_masks_in_order():
    x = _mel()
    chained = np.asarray(
        SpecAugment(chain=("vertical", "cutout"), fill="zeros", seed=2)(x, training=True)
    )
    first = SpecAugment(chain=("vertical",), fill="zeros", seed=2)
    second = SpecAugment(chain=("cutout",), fill="zeros", seed=2)
    second.seed_generator = first.seed_generator  # one stream of draws, as inside the chain
    np.testing.assert_array_equal(
        chained, np.asarray(second(first(x, training=True), training=True))
    )
    swapped = np.asarray(
        SpecAugment(chain=("cutout", "vertical"), fill="zeros", seed=2)(x, training=True)
    )
    assert not np.array_equal(chained, swapped)
    layer = SpecAugment.from_config(SpecAugment(chain=("vertical", "cutout"), seed=2).get_config())
    assert layer.chain == ("vertical", "cutout")


def test_bad_arguments():
    with pytest.raises(ValueError, match="chain"):
        SpecAugment(chain=("diagonal",))
    with pytest.raises(ValueError, match="fill"):
        SpecAugment(fill="mean")
    with pytest.raises(ValueError, match="size_range"):
        SpecAugment(size_range=(0.6, 0.5))


# ----------------------------------------------------------------------------- waveform layers

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from nnfp.pipeline.augment import (  # noqa: E402
    BackgroundMix,
    RandomGain,
    RandomTimeShift,
    RoomImpulseResponse,
)

SEG = 400  # samples per example: tiny, the maths do not care
CONTEXT = 100
SHIFT = 30


def _waves(batch=6, length=SEG, seed=0):
    return (0.1 * np.random.default_rng(seed).normal(size=(batch, length))).astype("float32")


def _clips(seed=1):
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.normal(size=n)).astype("float32") for n in (900, 250, 600)]  # 250: tiled


def _irs(seed=2):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=n) * np.exp(-np.arange(n) / 15)).astype("float32") for n in (60, 35, 80)
    ]


def _layers():
    """Each layer with the input it takes: (layer, inputs)."""
    return [
        (RandomTimeShift(max_shift=SHIFT, seed=1), _waves(length=SEG + 2 * SHIFT)),
        (
            RoomImpulseResponse(_irs(), SEG, context_samples=CONTEXT, seed=2),
            _waves(length=SEG + CONTEXT),
        ),
        (BackgroundMix(_clips(), SEG, snr_db_range=(0.0, 10.0), seed=3), _waves()),
        (RandomGain((-6.0, 0.0), seed=4), _waves()),
    ]


def _names(cases):
    return [type(layer).__name__ for layer, _ in cases]


@pytest.mark.parametrize("index", range(4), ids=_names(_layers()))
def test_waveform_layers_shapes_and_identity_at_inference(index):
    layer, x = _layers()[index]
    out = np.asarray(layer(x, training=True))
    assert out.shape == (6, SEG) == layer.compute_output_shape(x.shape)
    # inference: nothing random, only the crop of the extra samples a layer reads
    crop = {"RandomTimeShift": x[:, SHIFT : SHIFT + SEG], "RoomImpulseResponse": x[:, CONTEXT:]}
    expected = crop.get(type(layer).__name__, x)
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), expected)
    assert not np.allclose(out, expected)  # training changed something
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    np.testing.assert_array_equal(model.predict(x, verbose=0), expected)  # predict never augments


def test_time_shift_crops_at_the_drawn_offset():
    layer = RandomTimeShift(max_shift=SHIFT, seed=5)
    x = _waves(batch=64, length=SEG + 2 * SHIFT)
    drawn = layer.get_random_transformation(x)
    shift = np.asarray(drawn["shift"])
    assert shift.min() >= -SHIFT and shift.max() <= SHIFT and len(np.unique(shift)) > 10
    out = np.asarray(layer.transform(x, drawn))
    for row, s in enumerate(shift):
        np.testing.assert_array_equal(out[row], x[row, SHIFT + s : SHIFT + s + SEG])


def test_background_mix_hits_drawn_snr_with_a_bank_excerpt():
    clips = _clips()
    layer = BackgroundMix(clips, SEG, snr_db_range=(-5.0, 15.0), seed=6)
    x = _waves(batch=32)
    drawn = layer.get_random_transformation(x)
    added = np.asarray(layer.transform(x, drawn), np.float64) - x
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2, axis=1) / np.mean(added**2, axis=1))
    np.testing.assert_allclose(snr, np.asarray(drawn["snr_db"]), atol=0.01)
    assert snr.min() >= -5.01 and snr.max() <= 15.01 and snr.std() > 2.0
    # the added signal is the bank (short clips tiled, in 16-bit) at the drawn start
    bank = np.concatenate([np.resize(c, SEG) if len(c) < SEG else c for c in clips])
    bank = np.clip(np.round(bank * 32768), -32768, 32767) / 32768
    for row, start in enumerate(np.asarray(drawn["start"])):
        excerpt = bank[start : start + SEG]
        scale = np.dot(added[row], excerpt) / np.dot(excerpt, excerpt)
        np.testing.assert_allclose(added[row], scale * excerpt, atol=1e-6)
    # an excerpt never straddles two clips
    ends = np.cumsum([max(len(c), SEG) for c in clips])
    first = np.searchsorted(ends, np.asarray(drawn["start"]), side="right")
    assert np.all(np.asarray(drawn["start"]) + SEG <= ends[first])


def test_background_mix_probability_and_silence():
    x = _waves(batch=200)
    out = np.asarray(BackgroundMix(_clips(), SEG, probability=0.3, seed=7)(x))
    mixed = np.any(out != x, axis=1).mean()
    assert 0.15 < mixed < 0.45
    silent = np.zeros((2, SEG), "float32")
    np.testing.assert_array_equal(np.asarray(BackgroundMix(_clips(), SEG, seed=7)(silent)), silent)


def test_room_impulse_response_equals_numpy_convolution():
    irs = _irs()
    layer = RoomImpulseResponse(irs, SEG, context_samples=CONTEXT, seed=8)
    x = _waves(length=CONTEXT + SEG)
    drawn = layer.get_random_transformation(x)
    out = np.asarray(layer.transform(x, drawn))
    assert len(np.unique(np.asarray(drawn["index"]))) > 1
    for row, index in enumerate(np.asarray(drawn["index"])):
        wet = np.convolve(x[row].astype(np.float64), irs[index])[CONTEXT : CONTEXT + SEG]
        dry = x[row, CONTEXT:].astype(np.float64)
        wet *= np.sqrt(np.mean(dry**2) / np.mean(wet**2))  # the segment's energy
        np.testing.assert_allclose(out[row], wet, atol=2e-6)
    # the context matters: the same segment after silence is not the same replica
    silent_context = x.copy()
    silent_context[:, :CONTEXT] = 0
    assert not np.allclose(np.asarray(layer.transform(silent_context, drawn)), out, atol=1e-3)


def test_random_gain_in_db_range():
    x = _waves(batch=64)
    layer = RandomGain((-6.0, 3.0), seed=9)
    drawn = layer.get_random_transformation(x)
    gain_db = 20 * np.log10(np.asarray(layer.transform(x, drawn))[:, 0] / x[:, 0])
    np.testing.assert_allclose(gain_db, np.asarray(drawn["gain_db"]), atol=1e-4)
    assert gain_db.min() >= -6.0001 and gain_db.max() <= 3.0001 and np.ptp(gain_db) > 4.0


def _restored(layer, **changes):
    """`layer` rebuilt from its config (with `changes`), its bank set again by the user."""
    restored = type(layer).from_config({**layer.get_config(), **changes})
    if isinstance(layer, BackgroundMix):
        restored.set_clips(_clips())
    if isinstance(layer, RoomImpulseResponse):
        restored.set_impulse_responses(_irs())
    return restored


@pytest.mark.parametrize("index", range(4), ids=_names(_layers()))
def test_waveform_layers_config_round_trip_and_seeded_determinism(index):
    layer, x = _layers()[index]
    restored, other = _restored(layer), _restored(layer, seed=layer.seed + 100)
    assert restored.get_config() == layer.get_config()
    first = np.asarray(layer(x))
    np.testing.assert_array_equal(np.asarray(restored(x)), first)  # same seed, same draws
    assert not np.array_equal(np.asarray(other(x)), first)  # another seed, other draws
    assert not np.array_equal(np.asarray(layer(x)), first)  # the generator moved on
    # stateless seeds: the draws are a function of the seed tensor, not of the layer's state
    seed = tf.random.experimental.stateless_split(
        tf.constant([3, 4], tf.int64), len(layer.draw_names)
    )
    a, b = (
        layer.get_random_transformation(x, seed=seed),
        other.get_random_transformation(x, seed=seed),
    )
    for name in layer.draw_names:
        np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))


def test_bank_is_restored_by_the_user():
    config = BackgroundMix(_clips(), SEG, seed=1).get_config()
    assert "clips" not in config
    with pytest.raises(ValueError, match=r"no clips: pass clips=\[\.\.\.\] .* or call set_clips"):
        BackgroundMix.from_config(config)(_waves())
    with pytest.raises(ValueError, match="set_impulse_responses"):
        RoomImpulseResponse(segment_samples=SEG)(_waves())
    # a saved chain loads without custom_objects; the banks are set again
    chain = keras.Sequential(
        [keras.Input((SEG,)), BackgroundMix(_clips(), SEG, seed=1), RandomGain(seed=2)]
    )
    loaded = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(chain))
    loaded.layers[0].set_clips(_clips())
    np.testing.assert_array_equal(np.asarray(loaded(_waves())), np.asarray(chain(_waves())))


def test_waveform_chain_in_tf_data_map():
    chain = keras.Sequential(
        [
            RandomTimeShift(max_shift=SHIFT, seed=0),
            BackgroundMix(_clips(), SEG, snr_db_range=(0.0, 10.0), seed=1),
            RandomGain((-6.0, 0.0), seed=2),
        ]
    )
    x = _waves(batch=8, length=SEG + 2 * SHIFT)
    ds = tf.data.Dataset.from_tensor_slices(x).batch(4).map(chain)
    batches = [np.asarray(b) for b in ds]
    assert [b.shape for b in batches] == [(4, SEG), (4, SEG)]
    assert not np.allclose(batches[0], x[:4, SHIFT : SHIFT + SEG], atol=1e-3)
    again = [np.asarray(b) for b in ds]  # the generators moved on: fresh draws
    assert not np.allclose(batches[0], again[0])


def test_waveform_layer_bad_arguments():
    with pytest.raises(ValueError, match="Received: max_shift=-1"):
        RandomTimeShift(max_shift=-1)
    with pytest.raises(ValueError, match="longer than 2 \\* max_shift"):
        RandomTimeShift(max_shift=10)(np.zeros((1, 20), "float32"))
    with pytest.raises(ValueError, match=r"Received: snr_db_range=\(10, 0\)"):
        BackgroundMix(snr_db_range=(10, 0))
    with pytest.raises(ValueError, match="Received: probability=1.5"):
        RoomImpulseResponse(probability=1.5)
    with pytest.raises(ValueError, match=r"clips\[1\] must be a non-empty 1-D array"):
        BackgroundMix([np.ones(5), np.ones((2, 2))], SEG)
    with pytest.raises(ValueError, match=r"Received: gain_db_range=\(0, nan\)"):
        RandomGain((0, float("nan")))
    with pytest.raises(ValueError, match=r"seed must be a \(1, 2\) integer tensor"):
        RandomGain().get_random_transformation(_waves(), seed=tf.constant([1, 2]))


def test_pair_pipeline_replicas_are_its_layer_chain():
    from nnfp.pipeline.pairs import PairPipeline

    rate, rng = 8000, np.random.default_rng(3)
    tracks = [(0.2 * rng.normal(size=n)).astype("float32") for n in (1500, 2000)]
    pipeline = PairPipeline(
        tracks, noise=_clips(), impulse_responses=_irs(), speech=_clips(4), speech_prob=0.5,
        sample_rate=rate, segment_seconds=SEG / rate, hop_seconds=SEG / rate / 2,
        offset_margin=SHIFT / rate, reverb_context_seconds=CONTEXT / rate, ir_prob=0.5,
        gain_db_range=(-6.0, 0.0),
    )  # fmt: skip
    out = pipeline.sample(np.arange(pipeline.n_segments), seed=(5, 6))
    assert np.abs(out["offset"]).max() <= SHIFT
    # the shift: a crop of the track, with the room's context before it (silent before the track)
    bank = np.round(np.concatenate(tracks) * 32768) / 32768
    track_start = np.where(out["replica_start"] < len(tracks[0]), 0, len(tracks[0]))
    windows = np.zeros((len(track_start), CONTEXT + SEG), np.float32)
    for row, (start, first) in enumerate(zip(out["replica_start"], track_start, strict=True)):
        window = bank[max(start - CONTEXT, first) : start + SEG]
        windows[row, -len(window) :] = window
    np.testing.assert_array_equal(out["clean_replicas"], windows[:, CONTEXT:])
    assert (out["replica_start"] - track_start < CONTEXT).any()  # some contexts reach back
    x = pipeline.room.transform(windows, {"index": out["ir_index"], "on": out["ir_on"]})
    mixes = {
        pipeline.noise: ("snr_db", "noise_start", "noise_on"),
        pipeline.speech: ("speech_snr_db", "speech_start", "speech_on"),
    }
    for layer, keys in mixes.items():
        x = layer.transform(x, dict(zip(layer.draw_names, (out[k] for k in keys), strict=True)))
    x = pipeline.gain.transform(x, {"gain_db": out["gain_db"]})
    np.testing.assert_allclose(np.asarray(x), out["replicas"], atol=1e-6)  # eager vs graph
    assert 0 < out["ir_on"].mean() < 1 and 0 < out["speech_on"].mean() < 1
