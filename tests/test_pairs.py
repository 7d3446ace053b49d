"""`nnfp.pipeline.pairs`: (anchor, replica) batches, their random draws, validation pairs."""

import numpy as np
import pytest

from nnfp.audio.segments import segment_starts
from nnfp.pipeline import pairs
from nnfp.pipeline.pairs import PairPipeline, make_pair_dataset, make_validation_pairs

SR = 8000
SEG = 8000


def quantised_noise(rng, seconds, amplitude=8000):
    """White noise on the int16 grid, so the pipeline's int16 bank stores it exactly."""
    k = rng.integers(-amplitude, amplitude, int(seconds * SR)).astype(np.int16)
    return k.astype(np.float32) / np.float32(32768.0)


@pytest.fixture(scope="module")
def tracks():
    rng = np.random.default_rng(0)
    return [quantised_noise(rng, s) for s in (3.0, 2.3, 0.5, 4.0)]  # third is too short


@pytest.fixture(scope="module")
def source(tracks):
    """Concatenated usable tracks and the absolute start of every segment, in order."""
    usable = [t for t in tracks if len(t) >= SEG]
    concat = np.concatenate(usable)
    starts, bounds, offset = [], [], 0
    for t in usable:
        s = segment_starts(len(t), SEG, SEG // 2)
        starts.append(offset + s)
        bounds += [(offset, offset + len(t) - SEG)] * len(s)
        offset += len(t)
    return concat, np.concatenate(starts), np.array(bounds)


def sine(freq, seconds, rate, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, rate):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


# ----------------------------------------------------------------------------- pairs


def test_dataset_shapes_and_exact_anchors(tracks, source):
    concat, starts, _ = source
    ds = make_pair_dataset(
        tracks, batch_size=8, n_anchors=4, shuffle=False, repeat=False, offset_margin=0.0
    )
    batches = list(ds)
    assert len(batches) == len(starts) // 4  # drop_remainder
    anchors, replicas = batches[0]
    assert anchors.shape == (4, SEG) and replicas.shape == (4, SEG)
    assert anchors.dtype.name == "float32" and replicas.dtype.name == "float32"
    for i, (a, _) in enumerate(batches):
        for j in range(4):
            s = starts[4 * i + j]
            np.testing.assert_array_equal(a[j].numpy(), concat[s : s + SEG])
    # No noise/IR and no offset: replicas are the anchors, bit for bit.
    np.testing.assert_array_equal(replicas.numpy(), anchors.numpy())

    # Shuffled: every anchor is still an exact source window, each at most once per batch.
    windows = {concat[s : s + SEG].tobytes(): k for k, s in enumerate(starts)}
    anchors, _ = next(iter(make_pair_dataset(tracks, 8, 4, seed=3)))
    ids = [windows[a.tobytes()] for a in anchors.numpy()]
    assert len(set(ids)) == 4


def test_replica_offsets_within_margin_and_track(tracks, source):
    concat, starts, bounds = source
    margin = int(0.2 * SR)
    pipeline = PairPipeline(tracks, offset_margin=0.2)
    ids = np.arange(len(starts))
    out = pipeline.sample(ids, seed=(5, 0))
    lo, hi = bounds[:, 0], bounds[:, 1]
    assert np.all(out["replica_start"] >= lo) and np.all(out["replica_start"] <= hi)
    assert np.all(np.abs(out["offset"]) <= margin)
    assert np.count_nonzero(out["offset"]) >= len(ids) - 2
    for j in ids:
        s = starts[j]
        replica = out["replicas"][j]
        region_lo = max(s - margin, lo[j])
        region = concat[region_lo : min(s + margin, hi[j]) + SEG]
        lag = np.argmax(np.correlate(region, replica, mode="valid")) + region_lo - s
        assert lag == out["offset"][j] and abs(lag) <= margin
        np.testing.assert_array_equal(replica, concat[s + lag : s + lag + SEG])


def test_noise_mix_hits_drawn_snr():
    rng = np.random.default_rng(1)
    tracks = [quantised_noise(rng, 3.0, 3000), sine(220, 2.0, SR, 0.3)]
    noise = [quantised_noise(rng, 0.4, 5000), quantised_noise(rng, 3.0, 9000)]  # one tiled
    pipeline = PairPipeline(tracks, noise=noise, snr_db_range=(-5.0, 15.0))
    out = pipeline.sample(np.arange(pipeline.n_segments), seed=(0, 7))
    clean, residual = out["clean_replicas"], out["replicas"] - out["clean_replicas"]
    measured = 10 * np.log10(np.mean(clean**2, axis=1) / np.mean(residual**2, axis=1))
    np.testing.assert_allclose(measured, out["snr_db"], atol=0.5)
    assert np.abs(measured - out["snr_db"]).max() < 0.01
    assert out["snr_db"].min() >= -5 and out["snr_db"].max() <= 15
    assert out["snr_db"].std() > 2  # really drawn per replica
    # The residual is a scaled excerpt of the noise bank at the drawn start.
    bank = np.concatenate([np.resize(n, SEG) if len(n) < SEG else n for n in noise])
    for r, start in zip(residual, out["noise_start"], strict=True):
        excerpt = bank[start : start + SEG]
        assert np.corrcoef(r, excerpt)[0, 1] > 0.9999


def test_pipeline_ir_and_gain(tracks):
    rng = np.random.default_rng(2)
    irs = [
        rng.standard_normal(n).astype(np.float32) * np.exp(-np.arange(n) / 100)
        for n in (50, 300, 700)
    ]
    pipeline = PairPipeline(tracks, impulse_responses=irs, gain_db_range=(-6.0, 6.0))
    out = pipeline.sample(np.arange(10), seed=(1, 1))
    assert len(set(out["ir_index"])) > 1
    for clean, replica, k, gain in zip(
        out["clean_replicas"], out["replicas"], out["ir_index"], out["gain_db"], strict=True
    ):
        wet = np.convolve(clean, irs[k])[:SEG]
        wet *= np.sqrt(np.mean(clean**2) / np.mean(wet**2))  # energy re-normalised
        np.testing.assert_allclose(replica, wet * 10 ** (gain / 20), atol=1e-4)


def test_probabilities_zero_leave_replicas_clean(tracks):
    rng = np.random.default_rng(3)
    pipeline = PairPipeline(
        tracks,
        noise=[quantised_noise(rng, 2.0)],
        impulse_responses=[np.ones(9)],
        noise_prob=0.0,
        ir_prob=0.0,
    )
    out = pipeline.sample(np.arange(6), seed=(0, 0))
    np.testing.assert_array_equal(out["replicas"], out["clean_replicas"])


def test_dataset_reproducible_for_seed(tracks):
    rng = np.random.default_rng(4)
    kwargs = dict(noise=[quantised_noise(rng, 2.0)], impulse_responses=[rng.standard_normal(64)])

    def first_batches(seed):
        it = iter(make_pair_dataset(tracks, 6, 3, seed=seed, **kwargs))
        return [np.concatenate([a.numpy(), r.numpy()]) for a, r in (next(it), next(it))]

    a, b, c = first_batches(11), first_batches(11), first_batches(12)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])


def test_multi_replica_tiled_layout(tracks):
    anchors, replicas = next(
        iter(make_pair_dataset(tracks, batch_size=12, n_anchors=3, offset_margin=0.0))
    )
    anchors, replicas = anchors.numpy(), replicas.numpy()
    assert replicas.shape == (9, SEG)
    np.testing.assert_array_equal(replicas, np.tile(anchors, (3, 1)))
    # Uneven split: replica j belongs to anchor j % n_anchors.
    anchors, replicas = next(
        iter(make_pair_dataset(tracks, batch_size=7, n_anchors=3, offset_margin=0.0))
    )
    np.testing.assert_array_equal(replicas.numpy(), anchors.numpy()[[0, 1, 2, 0]])


def test_argument_errors(tracks):
    with pytest.raises(ValueError, match=r"batch_size.*Received: batch_size=7, n_anchors=4"):
        make_pair_dataset(tracks, batch_size=7, n_anchors=4)
    with pytest.raises(ValueError, match="n_anchors=0"):
        make_pair_dataset(tracks, batch_size=8, n_anchors=0)
    with pytest.raises(ValueError, match="No segment"):
        make_pair_dataset([np.zeros(100, np.float32)], batch_size=2, n_anchors=1)
    with pytest.raises(ValueError, match=r"snr_db_range=\(10, 0\)"):
        make_pair_dataset(tracks, 2, 1, snr_db_range=(10, 0))
    with pytest.raises(ValueError, match="noise_prob=1.5"):
        make_pair_dataset(tracks, 2, 1, noise_prob=1.5)
    with pytest.raises(ValueError, match="exceeds the"):
        make_pair_dataset(tracks, 400, 200)


# ----------------------------------------------------------------------------- validation


def test_validation_pairs_deterministic_and_ordered():
    rng = np.random.default_rng(5)
    tracks = [quantised_noise(rng, s) for s in (40.0, 30.5, 1.2, 60.0)]
    noise = [quantised_noise(rng, 5.0)]
    irs = [rng.standard_normal(200).astype(np.float32)]
    originals, replicas = make_validation_pairs(tracks, noise=noise, impulse_responses=irs)
    starts = [segment_starts(len(t), SEG, SEG // 2) for t in tracks]
    expected = np.stack([t[s : s + SEG] for t, ss in zip(tracks, starts, strict=True) for s in ss])
    assert len(expected) > pairs._VALIDATION_CHUNK  # crosses a chunk boundary
    assert originals.shape == replicas.shape == expected.shape
    np.testing.assert_array_equal(originals, expected)
    again = make_validation_pairs(tracks, noise=noise, impulse_responses=irs)
    np.testing.assert_array_equal(again[1], replicas)
    other = make_validation_pairs(tracks, noise=noise, impulse_responses=irs, seed=99)
    np.testing.assert_array_equal(other[0], originals)
    assert not np.array_equal(other[1], replicas)
    first, _ = make_validation_pairs(tracks, n_segments_max=10)
    np.testing.assert_array_equal(first, expected[:10])


# ----------------------------------------------------------------------------- int16 tracks, speech


def test_int16_tracks_equal_float_tracks(tracks):
    pcm = [np.round(t * 32768).astype(np.int16) for t in tracks]
    a = PairPipeline(tracks, offset_margin=0.1).sample(np.arange(6), seed=(3, 3))
    b = PairPipeline(pcm, offset_margin=0.1).sample(np.arange(6), seed=(3, 3))
    for key in ("anchors", "replicas", "replica_start"):
        np.testing.assert_array_equal(a[key], b[key])


def test_speech_mix_own_bank_snr_and_probability(tracks):
    rng = np.random.default_rng(5)
    noise = [quantised_noise(rng, 2.0, 2000)]
    speech = [sine(700, 1.5, SR, 0.25), sine(900, 3.0, SR, 0.1)]
    pipeline = PairPipeline(
        tracks, noise=noise, speech=speech, speech_prob=1.0, speech_snr_db_range=(3.0, 6.0), noise_prob=0.0
    )
    out = pipeline.sample(np.arange(8), seed=(0, 1))
    clean, residual = out["clean_replicas"], out["replicas"] - out["clean_replicas"]
    measured = 10 * np.log10(np.mean(clean**2, axis=1) / np.mean(residual**2, axis=1))
    np.testing.assert_allclose(measured, out["speech_snr_db"], atol=0.01)
    assert out["speech_snr_db"].min() >= 3 and out["speech_snr_db"].max() <= 6
    # the residual is speech (a 700 or 900 Hz tone here), not the noise bank
    assert all(abs(peak_hz(r, SR) - f) < 3 for r, f in zip(residual, np.where(out["speech_start"] < 12000, 700, 900), strict=True))
    off = PairPipeline(tracks, speech=speech, speech_prob=0.0).sample(np.arange(4), seed=(0, 1))
    np.testing.assert_array_equal(off["replicas"], off["clean_replicas"])
    half = PairPipeline(tracks, speech=speech, speech_prob=0.5).sample(np.arange(200) % 12, seed=(0, 2))
    assert 0.35 < half["speech_on"].mean() < 0.65
    with pytest.raises(ValueError, match="speech_prob must be in"):
        PairPipeline(tracks, speech=speech, speech_prob=1.5)




def test_random_anchors_start_anywhere_in_the_hop(tracks, source):
    concat, starts, bounds = source
    hop = SEG // 2
    ds = make_pair_dataset(tracks, batch_size=8, n_anchors=4, seed=5, offset_margin=0.0, random_anchors=True)
    # White noise: the first 64 samples of an anchor find its start in the concatenation.
    index = {concat[i : i + 64].tobytes(): i for i in range(len(concat) - 64)}
    jitters = []
    for anchors, _ in ds.take(40):
        for anchor in anchors.numpy():
            start = index[anchor[:64].tobytes()]
            np.testing.assert_array_equal(anchor, concat[start : start + SEG])  # an exact source window
            grid = starts[np.searchsorted(starts, start, side="right") - 1]
            assert 0 <= start - grid < hop  # within the hop after its grid start ...
            low, high = bounds[np.searchsorted(starts, start, side="right") - 1]
            assert low <= start <= high  # ... and inside its track
            jitters.append(start - grid)
    jitters = np.array(jitters)
    # Off the grid, and spread over the whole hop (8 bins of 500 samples all used), not
    # the grid windows again; segments clipped at a track's end may sit on their grid.
    assert np.mean(jitters > 0) > 0.8
    assert len(np.unique(jitters // (hop // 8))) == 8
