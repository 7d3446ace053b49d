"""`nnfp.corpus.rooms`: the NumPy room + microphone model of the corpus, and `nnfp data make-irs`
(simulated rooms, pyroomacoustics optional extra)."""

import sys

import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main
from nnfp.corpus.rooms import make_impulse_response, make_room_impulse_responses

SR = 8000


def test_make_irs_writes_deterministic_room_responses(tmp_path, capsys):
    assert main(["data", "make-irs", str(tmp_path / "a"), "3", "--seed", "7"]) == 0
    assert "wrote 3 impulse responses" in capsys.readouterr().out
    again = make_room_impulse_responses(tmp_path / "b", 3, seed=7)
    for path in again:
        h, rate = sf.read(path)
        g, _ = sf.read(tmp_path / "a" / path.name)
        assert rate == 8000 and 0 < len(h) <= 8000
        assert np.abs(h).max() == pytest.approx(1.0)
        np.testing.assert_array_equal(h, g)  # same seed, same rooms
        # energy decays: the last quarter holds far less than the first
        quarter = len(h) // 4
        assert np.sum(h[-quarter:] ** 2) < 0.1 * np.sum(h[:quarter] ** 2)


def test_make_irs_without_pyroomacoustics_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyroomacoustics", None)  # import now fails
    assert main(["data", "make-irs", str(tmp_path), "2"]) == 2
    assert 'pip install "nnfp[rooms]"' in capsys.readouterr().err


def test_make_irs_gives_up_after_a_bounded_number_of_failed_rooms(tmp_path, monkeypatch):
    pytest.importorskip("pyroomacoustics")
    from nnfp.corpus import rooms

    calls = []
    monkeypatch.setattr(rooms, "simulate_room", lambda *a, **k: calls.append(1))  # every room infeasible
    with pytest.raises(RuntimeError, match="only 0 of 2 rooms could be simulated in 140 attempts"):
        rooms.make_room_impulse_responses(tmp_path, 2)
    assert len(calls) == 140


# ----------------------------------------------------------------------------- NumPy model


def _schroeder_rt60(h, sample_rate=SR):
    energy = np.cumsum((h.astype(np.float64) ** 2)[::-1])[::-1]
    decay_db = 10.0 * np.log10(energy / energy[0] + 1e-30)
    start, stop = np.argmax(decay_db <= -5.0), np.argmax(decay_db <= -25.0)
    slope = np.polyfit(np.arange(start, stop) / sample_rate, decay_db[start:stop], 1)[0]
    return -60.0 / slope


@pytest.mark.parametrize("seed", range(8))
def test_impulse_response(seed):
    h = make_impulse_response(seed)
    assert h.dtype == np.float32
    assert 0.1 * SR < len(h) <= SR
    assert np.all(np.isfinite(h))
    assert np.max(np.abs(h)) == pytest.approx(1.0, abs=1e-6)
    assert np.max(h) == pytest.approx(1.0, abs=1e-6)
    energy = h.astype(np.float64) ** 2
    quarter = len(h) // 4
    assert energy[-quarter:].sum() < 1e-3 * energy[:quarter].sum()
    assert 0.05 <= _schroeder_rt60(h) <= 1.2
    np.testing.assert_array_equal(h, make_impulse_response(seed))


def test_impulse_responses_cover_the_rt60_range():
    rt60s = [_schroeder_rt60(make_impulse_response(seed)) for seed in range(24)]
    assert min(rt60s) < 0.3
    assert max(rt60s) > 0.55
