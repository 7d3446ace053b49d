"""Generated out-of-catalogue kinds (`nnfp.corpus.signals`) against what each kind is, and the
leave-one-kind-out check of a calibration (`nnfp.catalogue.calibration.leave_one_kind_out`) and
the off-speed margin of a calibration with a speed search (`off_speed_margins`)."""

import numpy as np
import pytest

from nnfp.catalogue.calibration import calibrate, leave_one_kind_out, off_speed_margins
from nnfp.corpus.signals import GENERATED_KINDS, make_signal

RATE = 8000


def spectrum_peaks(x, n=2):
    magnitude = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / RATE)
    peaks = []
    for index in np.argsort(-magnitude):
        if all(abs(freqs[index] - p) > 20 for p in peaks):
            peaks.append(freqs[index])
        if len(peaks) == n:
            break
    return sorted(peaks)


def test_every_kind_is_seeded_finite_and_normalised():
    for kind in GENERATED_KINDS:
        a, b = make_signal(kind, 5, 3.0), make_signal(kind, 5, 3.0)
        assert a.dtype == np.float32 and a.shape == (3 * RATE,) and np.isfinite(a).all()
        assert np.array_equal(a, b) and np.max(np.abs(a)) == pytest.approx(0.9, abs=1e-3)
        assert not np.array_equal(a, make_signal(kind, 6, 3.0))
    with pytest.raises(ValueError, match="kind"):
        make_signal("jazz", 0, 1.0)
    with pytest.raises(ValueError, match="seconds"):
        make_signal("dtmf", 0, 0.0)


def test_telephone_tones_have_their_frequencies_and_cadence():
    # DTMF: every tone burst is one row and one column frequency of the keypad
    x = make_signal("dtmf", 3, 4.0)
    loud = np.abs(x) > 0.05
    edges = np.flatnonzero(np.diff(loud.astype(int)) == 1)
    first = edges[0] + 1
    burst = x[first : first + int(0.05 * RATE)]
    low, high = spectrum_peaks(np.pad(burst, (0, 4096 - len(burst))), 2)
    assert min(abs(low - f) for f in (697, 770, 852, 941)) < 25
    assert min(abs(high - f) for f in (1209, 1336, 1477, 1633)) < 25
    # busy: on half a second, off half a second
    busy = make_signal("busy", 4, 4.0)
    frames = np.abs(busy).reshape(-1, RATE // 20).max(axis=1) > 0.01  # 50 ms frames
    assert 0.4 < frames.mean() < 0.6
    changes = np.flatnonzero(np.diff(frames.astype(int)))
    assert np.allclose(np.diff(changes), 10, atol=1)  # every 0.5 s
    # ringback: 440 + 480 Hz (North America) or 425 Hz (Europe) while on
    for seed in range(4):
        ring = make_signal("ringback", seed, 12.0)
        frames = np.abs(ring).reshape(-1, RATE // 20).max(axis=1) > 0.01
        first = int(np.flatnonzero(frames[1:] & ~frames[:-1])[0] + 1) * (RATE // 20)  # a tone starts
        peaks = spectrum_peaks(ring[first : first + int(0.9 * RATE)], 2)
        assert peaks[-1] == pytest.approx(480, abs=6) or min(abs(p - 425) for p in peaks) < 6


def test_hum_and_sweep():
    hum = make_signal("hum", 1, 4.0)
    fundamental = spectrum_peaks(hum, 8)
    assert any(abs(f - 50) < 2 for f in fundamental) or any(abs(f - 60) < 2 for f in fundamental)
    sweep = make_signal("sweep", 2, 8.0)
    # a logarithmic sweep crosses the band: its zero-crossing rate spans 50 Hz ... 3.8 kHz
    rates = [np.count_nonzero(np.diff(np.signbit(c))) * RATE / len(c) / 2 for c in sweep.reshape(-1, RATE // 10)]
    assert min(rates) < 200 and max(rates) > 2000


def test_leave_one_kind_out_against_a_direct_count():
    rng = np.random.default_rng(0)
    # three kinds of out-of-catalogue scores; "tones" reach higher than the others
    kinds = {
        "music": rng.normal(0.4, 0.05, (400, 2)),
        "noise": rng.normal(0.35, 0.05, (400, 2)),
        "tones": rng.normal(0.5, 0.05, (400, 2)),
    }
    result = leave_one_kind_out(kinds, target_false_match=0.01, confidence=0.95)
    for held in kinds:
        others = [k for k in kinds if k != held]
        # the independent reference: calibrate() on the other kinds, then count the held kind
        fitted = calibrate([1, 3], np.zeros((1, 2)), np.zeros((1, 2), bool), {k: kinds[k] for k in others}, 0.01, 0.95)
        expected = [float(np.mean(kinds[held][:, j] >= fitted.min_score[j] - 5e-5)) for j in range(2)]
        np.testing.assert_allclose(result[held]["false_match"], expected, atol=1 / 400)
    assert min(result["tones"]["false_match"]) > 0.05  # fitted without tones, tones pass often
    assert max(result["noise"]["false_match"]) == 0.0
    assert all(b >= r for k in result for r, b in zip(result[k]["false_match"], result[k]["bound"], strict=True))
    with pytest.raises(ValueError, match="two kinds"):
        leave_one_kind_out({"music": kinds["music"]})
    cal = calibrate([1, 3], np.zeros((1, 2)), np.zeros((1, 2), bool), kinds, 0.01, 0.95)
    assert set(cal.info["leave_one_kind_out"]) == set(kinds)


def test_off_speed_margin_against_a_direct_maximum():
    rng = np.random.default_rng(1)
    n = 300  # 1 % at 95 % with 300 queries of a kind: none may match, the thresholds are maxima
    # out-of-catalogue confidences at 3 lengths; answers found at another speed reach higher
    off = {k: rng.random((n, 3)) < 0.8 for k in ("music", "noise")}
    conf = {k: rng.normal(0.1, 0.03, (n, 3)) + 0.05 * off[k] for k in off}
    off["noise"][:, 1] = False  # length 2: every answer at the catalogue's speed but 20 of music's
    off["music"][:, 1] = np.arange(n) < 20
    conf["music"][:20, 1] += 0.2
    for k in conf:  # length 3: the other speeds reach lower
        conf[k][:, 2] -= 0.2 * off[k][:, 2]
    margins = off_speed_margins(conf, off, 0.01, 0.95)
    top_off = max(conf[k][off[k][:, 0], 0].max() for k in off)
    top_at = max(conf[k][~off[k][:, 0], 0].max() for k in off)
    assert margins[0] == pytest.approx(top_off - top_at, abs=1e-4) and margins[0] > 0.02
    assert margins[0] >= top_off - top_at  # rounded up
    assert margins[1] == 0.0  # 20 answers at other speeds: too few to measure their level (30)
    assert off_speed_margins(conf, off, 0.01, 0.95, min_answers=20)[1] > 0
    assert margins[2] == 0.0  # never a bonus for another speed
    # the margin lowers the thresholds of answers at the catalogue's speed and keeps every kind at the target
    lowered = {k: conf[k] - np.asarray(margins) * off[k] for k in conf}
    known = rng.normal(0.2, 0.05, (200, 3))
    right = np.ones((200, 3), bool)
    one = calibrate([1, 3, 10], known, right, conf, 0.01, 0.95)
    two = calibrate([1, 3, 10], known, right, lowered, 0.01, 0.95)
    assert two.min_score[0] == pytest.approx(top_at, abs=2e-4)
    assert two.min_score[0] < one.min_score[0] - 0.02
    assert two.info["right_kept"][0] > one.info["right_kept"][0]
    assert all(rate == 0.0 for rates in two.info["false_match_by_kind"].values() for rate in rates)
    # calibrate fits and applies the margin itself when told which answers were found elsewhere
    fitted = calibrate([1, 3, 10], known, right, conf, 0.01, 0.95, np.zeros((200, 3), bool), off)
    assert fitted.info["off_speed_margin"] == margins and fitted.min_score == two.min_score
    assert fitted.info["right_kept"] == two.info["right_kept"]
    with pytest.raises(ValueError, match="kinds"):
        off_speed_margins(conf, {"music": off["music"]})


def test_leave_one_kind_out_refits_the_off_speed_margin_without_the_kind():
    rng = np.random.default_rng(2)
    n = 300
    off = {k: rng.random((n, 2)) < 0.7 for k in ("music", "noise", "ring")}
    conf = {k: rng.normal(0.1, 0.03, (n, 2)) + 0.05 * off[k] for k in off}
    conf["ring"] += 0.08 * off["ring"]  # ring-back reaches higher at other speeds than the others do
    result = {k: r["false_match"] for k, r in leave_one_kind_out(conf, 0.01, 0.95, off_speed=off).items()}
    for held in conf:
        others = [k for k in conf if k != held]
        # the reference by maxima (300 queries of a kind: none may match)
        at = np.array([max(conf[k][~off[k][:, j], j].max() for k in others) for j in range(2)])
        away = np.array([max(conf[k][off[k][:, j], j].max() for k in others) for j in range(2)])
        margin = np.maximum(away - at, 0)
        threshold = np.max([np.max(conf[k] - margin * off[k], axis=0) for k in others], axis=0)
        expected = np.mean(conf[held] - margin * off[held] >= threshold + 1e-4, axis=0)
        np.testing.assert_allclose(result[held], expected, atol=2 / n)
    assert min(result["ring"]) > 0.005 and max(result["noise"]) == 0.0


def test_leave_one_package_out_against_a_direct_count(tmp_path):
    from nnfp.catalogue.calibration import leave_one_group_out, source_group

    rng = np.random.default_rng(4)
    # music from three packages, one of which ("loud") reaches higher; noise without packages
    music = np.concatenate([rng.normal(0.4, 0.05, (300, 2)), rng.normal(0.4, 0.05, (300, 2)),
                            rng.normal(0.52, 0.05, (100, 2))])
    groups = {"music": ["calm"] * 300 + ["plain"] * 300 + ["loud"] * 100, "noise": [None] * 400}
    kinds = {"music": music, "noise": rng.normal(0.35, 0.05, (400, 2))}
    result = leave_one_group_out(kinds, groups, 0.01, 0.95)
    assert set(result) == {"music"} and set(result["music"]) == {"calm", "plain", "loud"}
    labels = np.asarray(groups["music"])
    for group, left in result["music"].items():
        held = labels == group
        # the independent reference: calibrate() on every other query, then count the package
        fitted = calibrate([1, 3], np.zeros((1, 2)), np.zeros((1, 2), bool),
                           {"music": music[~held], "noise": kinds["noise"]}, 0.01, 0.95)
        expected = [float(np.mean(music[held, j] >= fitted.min_score[j] - 5e-5)) for j in range(2)]
        np.testing.assert_allclose(left["false_match"], expected, atol=1.01 / held.sum())
        assert left["n"] == held.sum() and all(b >= r for r, b in zip(left["false_match"], left["bound"], strict=True))
    assert min(result["music"]["loud"]["false_match"]) > 0.1  # fitted without it, the loud package passes
    assert max(result["music"]["calm"]["false_match"]) <= 0.01
    cal = calibrate([1, 3], np.zeros((1, 2)), np.zeros((1, 2), bool), kinds, 0.01, 0.95, unknown_groups=groups)
    assert cal.info["leave_one_package_out"] == result
    with pytest.raises(ValueError, match="one entry per query"):
        leave_one_group_out(kinds, {"music": groups["music"][:10]})
    # where a file's package is read from
    assert source_group(tmp_path / "pkg__title__0a1b2c.wav", tmp_path) == "pkg"
    assert source_group(tmp_path / "label" / "song.flac", tmp_path) == "label"
    assert source_group(tmp_path / "song.flac", tmp_path) is None
