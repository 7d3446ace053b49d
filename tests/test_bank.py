import numpy as np
import pytest
import tensorflow as tf

from nnfp.pipeline.bank import check_clips, cpu_variable, gather_windows, to_int16


def test_to_int16_rounds_clips_and_keeps_pcm():
    audio = np.array([0.0, 0.5, -1.0, 1.5, -2.0, 1 / 65536 + 1e-9], np.float32)
    np.testing.assert_array_equal(to_int16(audio), [0, 16384, -32768, 32767, -32768, 1])
    pcm = np.array([1, -2, 3], np.int16)
    assert to_int16(pcm) is pcm


def test_gather_windows_with_and_without_floor():
    bank = cpu_variable(np.arange(20, dtype=np.int16) * 100)
    assert bank.device.endswith("CPU:0")
    starts = tf.constant([0, 7], tf.int64)
    out = gather_windows(bank, starts, 4).numpy()
    np.testing.assert_array_equal(out * 32768, [[0, 100, 200, 300], [700, 800, 900, 1000]])
    # a window reaching back before its track (floor) reads silence there, even before the bank
    out = gather_windows(
        bank, tf.constant([-2, 8], tf.int64), 4, floor=tf.constant([0, 10], tf.int64)
    )
    np.testing.assert_array_equal(out.numpy() * 32768, [[0, 0, 0, 100], [0, 0, 1000, 1100]])


def test_check_clips():
    clips = check_clips("noise", [np.ones(3, np.float64), np.array([16384], np.int16)])
    assert [c.dtype for c in clips] == [np.float32, np.float32]
    np.testing.assert_array_equal(clips[1], [0.5])
    with pytest.raises(ValueError, match=r"noise must be a non-empty list .* Received: noise=\[\]"):
        check_clips("noise", [])
    with pytest.raises(ValueError, match=r"noise\[1\] must be a non-empty 1-D array"):
        check_clips("noise", [np.ones(2), np.ones((2, 2))])
    with pytest.raises(ValueError, match=r"noise\[0\] contains NaN or Inf"):
        check_clips("noise", [np.array([np.nan])])
