"""`nnfp.audio.segments`: the hop grid every module counts segments on."""

import numpy as np
import pytest

from nnfp.audio.segments import n_segments, segment_starts, segment_waveform


def test_segment_starts():
    np.testing.assert_array_equal(segment_starts(20000, 8000, 4000), [0, 4000, 8000, 12000])
    np.testing.assert_array_equal(segment_starts(8000, 8000, 4000), [0])
    assert segment_starts(7999, 8000, 4000).shape == (0,)


@pytest.mark.parametrize("n_samples", [0, 49, 50, 51, 69, 70, 119, 120, 1003])
@pytest.mark.parametrize("hop", [1, 20, 50, 70])
def test_count_starts_and_windows_agree(n_samples, hop):
    audio = np.arange(n_samples, dtype=np.float32)
    starts = segment_starts(n_samples, 50, hop)
    windows = segment_waveform(audio, 50, hop)
    assert len(starts) == len(windows) == n_segments(n_samples, 50, hop)
    for start, window in zip(starts, windows, strict=True):
        np.testing.assert_array_equal(window, audio[start : start + 50])
    assert n_samples < 50 or starts[-1] + 50 <= n_samples < starts[-1] + 50 + hop


def test_bad_sizes_name_the_argument():
    with pytest.raises(ValueError, match="Received: segment_samples=0"):
        n_segments(100, 0, 10)
    with pytest.raises(ValueError, match="Received: hop_samples=-1"):
        segment_starts(100, 10, -1)
