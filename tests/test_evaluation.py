"""Evaluation protocol: random positions, native-rate degradation, full room tails, determinism by seed."""

import json

import numpy as np
import pytest

from nnfp.catalogue.metrics import hit_rates, same_audio_as_truth
from nnfp.catalogue.queries import degrade, synthesize_queries


def _tracks(rate):
    rng = np.random.default_rng(5)
    return {i: (rng.standard_normal(int(12 * rate)).astype(np.float32) * 0.1, rate) for i in range(3)}


def _synth(seed, aligned=False, rate=16000):
    tracks = _tracks(rate)
    return synthesize_queries(
        {i: 12.0 for i in tracks}, tracks.__getitem__, {0: 0, 1: 23, 2: 46}, 8, seconds=3.0,
        sample_rate=8000, aligned=aligned, seed=seed,
    )


def test_queries_are_deterministic_by_seed_and_resampled_to_the_index_rate():
    waves, info = _synth(seed=1)
    again, info_again = _synth(seed=1)
    other, info_other = _synth(seed=2)
    assert all(len(w) == 24000 for w in waves)  # 3 s at 8 kHz, cut from 16 kHz audio
    for a, b in zip(waves, again, strict=True):
        np.testing.assert_array_equal(a, b)
    for key in info:
        np.testing.assert_array_equal(info[key], info_again[key])
    assert not np.array_equal(info["offset_s"], info_other["offset_s"])


def test_random_positions_by_default_grid_positions_when_aligned():
    _, info = _synth(seed=0)
    off_grid = np.abs(info["offset_s"] / 0.5 - np.round(info["offset_s"] / 0.5)) > 1e-6
    assert off_grid.sum() >= 6  # of 8: random sample positions
    np.testing.assert_array_equal(info["true_row"], [{0: 0, 1: 23, 2: 46}[t] for t in info["track"]]
                                  + np.round(info["offset_s"] / 0.5).astype(int))
    _, aligned = _synth(seed=0, aligned=True)
    np.testing.assert_allclose(aligned["offset_s"] % 0.5, 0.0)


def test_room_keeps_the_tail_of_audio_before_the_cut():
    rate = 8000
    track = np.full(4 * rate, 0.01, np.float32) * np.sin(np.arange(4 * rate)).astype(np.float32)
    track[rate - 400 : rate] = 1.0  # a loud burst that ends just before the cut at 1 s
    ir = np.exp(-np.arange(rate) / 2000.0).astype(np.float32)  # 1 s tail
    query = degrade(track, rate, rate, rate, rate, impulse_response=ir)
    no_context = degrade(track[rate:], 0, rate, rate, rate, impulse_response=ir)

    def head_share(x):  # energy of the first 0.1 s over the whole window
        return np.sum(x[:800] ** 2) / np.sum(x**2)

    assert head_share(query) > 0.5 > head_share(no_context)  # the burst's reverberation is inside the window


def test_hit_rates_offset_and_decision_columns():
    rows = np.array([[[5, -1]], [[9, -1]], [[7, -1]]])
    tracks = np.array([[[0, -1]], [[0, -1]], [[1, -1]]])
    offsets = np.array([[[2.6, np.nan]], [[4.4, np.nan]], [[1.0, np.nan]]])
    rates = hit_rates(
        rows, np.array([5, 5, 7]), tracks, np.array([0, 0, 0]), predicted_offsets=offsets,
        true_offsets=np.array([2.3, 2.3, 1.0]), decided=np.array([[True], [True], [True]]),
    )
    assert rates["track_top1"][0] == pytest.approx(200 / 3)
    assert rates["offset_top1"][0] == pytest.approx(100 / 3)  # |2.6 - 2.3| <= 0.5; 4.4 is 2.1 s out
    assert rates["answered_right"][0] == pytest.approx(100 / 3)


class _Rows:
    """The two things `same_audio` reads of a DB: its fingerprints and their count."""

    def __init__(self, embeddings):
        self.embeddings = embeddings
        self.n_segments = len(embeddings)


def test_a_repeat_of_the_same_bars_counts_as_right_or_same_audio():
    rng = np.random.default_rng(0)
    bars = rng.normal(size=(5, 16))
    # rows 0-4 a phrase, 5-9 other audio, 10-14 the phrase again (a loop), 15-19 other audio
    rows = np.concatenate([bars, rng.normal(size=(5, 16)), bars + 0.05 * rng.normal(size=(5, 16)),
                           rng.normal(size=(5, 16))])
    db = _Rows((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    # query truth: row 0, 5 rows long; answers: the repeat (10), other audio (15), the truth (0), nothing
    predicted = np.array([10, 15, 0, -1])[:, None, None]
    truth = np.zeros(4, int)
    same = same_audio_as_truth(db, predicted, truth, [5])
    np.testing.assert_array_equal(same[:, 0], [True, False, True, False])
    # the reference: the mean cosine of the two 5-row windows against 0.9
    cosine = np.mean(np.sum(db.embeddings[10:15] * db.embeddings[0:5], axis=1))
    assert cosine > 0.9 and np.mean(np.sum(db.embeddings[15:20] * db.embeddings[0:5], axis=1)) < 0.5
    rates = hit_rates(predicted, truth, np.array([0, 0, 0, -1])[:, None, None], truth,
                      predicted_offsets=np.array([5.0, 7.5, 0.0, np.nan])[:, None, None],
                      true_offsets=np.zeros(4), same_audio=same)
    assert rates["offset_top1"][0] == 25.0 and rates["offset_or_same"][0] == 50.0


def test_top1_near_needs_the_right_track():
    # Query 0 is predicted one row after its truth, in its own track: near. Query 1's truth is
    # the last row of track 0 and the prediction the first row of track 1: not near.
    rows = np.array([[[11]], [[20]]])
    tracks = np.array([[[0]], [[1]]])
    rates = hit_rates(rows, np.array([10, 19]), tracks, np.array([0, 0]))
    assert rates["top1_near"].tolist() == [50.0] and rates["top1_exact"].tolist() == [0.0]


def test_evaluate_is_deterministic_by_seed_with_unknown_tracks(tmp_path):
    import shutil

    from nnfp.catalogue.evaluation import evaluate
    from nnfp.corpus.generate import generate_corpus

    corpus = generate_corpus(tmp_path / "corpus", n_tracks=3, track_seconds=12, n_noise=1, n_irs=1, seed=4)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    shutil.move(corpus.music_dir / "track_0002.wav", unknown / "track_0002.wav")
    runs = []
    for name in ("a", "b"):
        evaluate(
            tmp_path / name, db_dir=corpus.music_dir if name == "a" else None,
            index_dir=None if name == "a" else tmp_path / "a" / "index", unknown_dir=unknown, n_queries=4,
            lengths_seconds=(1, 3), seed=3, index_type="flat", progress=False, log=lambda *_: None,
        )
        runs.append(json.loads((tmp_path / name / "results.json").read_text()))
    assert runs[0]["hit_rates"] == runs[1]["hit_rates"]
    assert set(runs[0]["hit_rates"]) >= {"track_top1", "offset_top1", "answered_right", "false_match", "top1_exact"}
    assert runs[0]["settings"]["protocol"] == "random sample positions"
    assert runs[0]["settings"]["phases"] == 4
    assert runs[0]["settings"]["query_phone"] == "none"
    evaluate(
        tmp_path / "phone", index_dir=tmp_path / "a" / "index", unknown_dir=unknown, n_queries=4,
        lengths_seconds=(1, 3), seed=3, index_type="flat", phone=True, progress=False, log=lambda *_: None,
    )
    phoned = json.loads((tmp_path / "phone" / "results.json").read_text())
    assert phoned["settings"]["query_phone"].startswith("a phone's microphone band")
    assert phoned["hit_rates"]["n"] == runs[0]["hit_rates"]["n"]
    with pytest.raises(ValueError, match="--phone alters synthesised queries"):
        evaluate(tmp_path / "rec", index_dir=tmp_path / "a" / "index", query_dir=tmp_path, phone=True, log=lambda *_: None)


def test_phone_call_is_a_phone_band_and_codec_by_seed():
    from nnfp.catalogue.queries import phone_call

    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(3)]
    out, again, other = phone_call(waves, 8000, 1), phone_call(waves, 8000, 1), phone_call(waves, 8000, 2)
    assert [w.shape for w in out] == [(16000,)] * 3 and out[0].dtype == np.float32
    for a, b in zip(out, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(out[0], other[0])
    from scipy.signal import welch

    lows, highs = [], []
    for wave in phone_call([rng.standard_normal(16000).astype(np.float32) * 0.1 for _ in range(6)], 8000, 3):
        freqs, power = welch(wave, 8000, nperseg=1024)  # the input is white: flat
        voice = np.median(power[(freqs > 500) & (freqs < 2500)])
        lows.append(10 * np.log10(voice / np.median(power[(freqs > 5) & (freqs < 50)])))
        highs.append(10 * np.log10(voice / np.median(power[freqs > 3950])))
    # A 4th-order Butterworth high-pass at >= 100 Hz is >= 24 dB down below 50 Hz; the low-pass
    # at <= 3.8 kHz and the codecs' band end below 4 kHz (the codec's own noise fills some).
    assert np.median(lows) > 15 and np.median(highs) > 10
    assert phone_call([], 8000, 0) == []
    with pytest.raises(ValueError, match="one length"):
        phone_call([waves[0], waves[0][:8000]], 8000, 0)
