"""`nnfp data make-irs`: simulated room impulse responses (pyroomacoustics, optional extra)."""

import sys

import numpy as np
import pytest
import soundfile as sf

from nnfp.cli import main


def test_make_irs_writes_deterministic_room_responses(tmp_path, capsys):
    assert main(["data", "make-irs", str(tmp_path / "a"), "3", "--seed", "7"]) == 0
    assert "wrote 3 impulse responses" in capsys.readouterr().out
    from nnfp.rooms import make_room_impulse_responses

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
    from nnfp import rooms

    calls = []
    monkeypatch.setattr(rooms, "simulate_room", lambda *a, **k: calls.append(1))  # every room infeasible
    with pytest.raises(RuntimeError, match="only 0 of 2 rooms could be simulated in 140 attempts"):
        rooms.make_room_impulse_responses(tmp_path, 2)
    assert len(calls) == 140
