"""Training callbacks: mini-search validation, the compact epoch line, similarity images."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnfp.callbacks import EpochProgress, MiniSearchValidation, mini_search_line, similarity_image
from nnfp.encoder import DivideAndEncode, Encoder
from nnfp.frontend import LogMelSpectrogram
from nnfp.losses import NTXent
from nnfp.model import FingerPrinter
from nnfp.training import checkpoint_mode


@pytest.fixture(scope="module")
def tiny():
    model = FingerPrinter(LogMelSpectrogram(), Encoder(width=0.03125), DivideAndEncode(16))
    model.build((None, 8000))
    model.compile(optimizer="adam", loss=NTXent(0.1))
    rng = np.random.default_rng(0)
    originals = rng.standard_normal((6, 8000)).astype("float32")
    replicas = originals + 0.1 * rng.standard_normal((6, 8000)).astype("float32")
    return model, originals, replicas


def test_mini_search_traces_once_across_epochs(tiny):
    model, originals, replicas = tiny
    callback = MiniSearchValidation(originals, replicas, scopes=(1, 3), batch_size=4, verbose=0)
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    embed, traces = callback._embed, callback._embed.experimental_get_tracing_count()
    for epoch in (1, 2):
        callback.on_epoch_end(epoch, logs)
    # later epochs reuse the first epoch's function and traces
    assert callback._embed is embed and embed.experimental_get_tracing_count() == traces <= 2
    assert len([k for k in logs if k.startswith("ms_")]) == 3 * 4 * 2
    assert logs["ms_gf_top1_s1"] == callback.last_results["g(f)"]["top1"][0]


def test_epoch_line_leaves_out_mini_search_scalars(tiny, capsys):
    model, originals, replicas = tiny
    data = tf.data.Dataset.from_tensors((originals, replicas)).repeat()
    search = MiniSearchValidation(originals, replicas, scopes=(1, 3), verbose=0)
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=2, shuffle=False, callbacks=[search, EpochProgress()])
    out = capsys.readouterr().out
    assert "loss:" in out and "ms_" not in out
    top1 = search.last_results["g(f)"]["top1"]
    assert f"mini-search g(f) top-1 %: 1 seg {top1[0]:.1f} | 3 seg {top1[1]:.1f}" in out
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False, callbacks=[search, EpochProgress()])
    assert capsys.readouterr().out == ""


def test_mini_search_line():
    assert mini_search_line({"scopes": [1, 3], "top1": [41.25, 70.0]}) == "mini-search g(f) top-1 %: 1 seg 41.2 | 3 seg 70.0"


@pytest.mark.parametrize(
    "monitor, mode",
    [
        ("loss", "min"), ("val_loss", "min"), ("val_pos_sim", "max"), ("pos_sim", "max"),
        ("val_neg_sim", "min"), ("val_batch_top1", "max"), ("ms_gf_top1_s1", "max"),
        ("ms_l2f_top10_s19", "max"), ("ms_f_mean_rank_s3", "min"),
    ],
)
def test_checkpoint_mode_table(monitor, mode):
    assert checkpoint_mode(monitor) == mode


def test_checkpoint_mode_refuses_unknown_monitor():
    from nnfp.config import ConfigError

    with pytest.raises(ConfigError, match="'train.checkpoint_monitor'.*received 'val_acc'"):
        checkpoint_mode("val_acc")


def test_similarity_image_colours():
    image = similarity_image(np.array([[1.0, -1.0], [0.0, 2.0]]))
    assert image.shape == (2, 2, 3) and image.dtype == np.uint8
    from matplotlib import colormaps

    viridis = (colormaps["viridis"]([1.0, 0.0, 0.5])[:, :3] * 255).astype("uint8")
    np.testing.assert_array_equal(image[0, 0], viridis[0])  # +1: yellow
    np.testing.assert_array_equal(image[0, 1], viridis[1])  # -1: dark blue
    np.testing.assert_array_equal(image[1, 0], viridis[2])
    np.testing.assert_array_equal(image[1, 1], viridis[0])  # clipped to 1


class _MiniSearchScalars(keras.callbacks.Callback):
    """Writes what `MiniSearchValidation` writes into the epoch's logs, without the search."""

    def on_epoch_end(self, epoch, logs=None):
        logs.update(ms_gf_top1_s1=41.25, ms_gf_top1_s3=70.3, ms_f_mean_rank_s1=2.5)


def test_epoch_line_leaves_out_the_mini_search_scalars_and_adds_one_line(tiny, capsys):
    model, originals, replicas = tiny
    data = tf.data.Dataset.from_tensors((originals, replicas)).repeat()
    history = model.fit(data, epochs=1, steps_per_epoch=1, verbose=2, shuffle=False,
                        callbacks=[_MiniSearchScalars(), EpochProgress()])
    lines = capsys.readouterr().out.strip().splitlines()
    # Keras' own progress bar replaced: one epoch line (verbose=2), then the mini-search line
    assert len(lines) == 2 and "ms_" not in lines[0], lines
    assert f"loss: {history.history['loss'][0]:.4f}" in lines[0]
    assert lines[1] == "mini-search g(f) top-1 %: 1 seg 41.2 | 3 seg 70.3"
    assert history.history["ms_gf_top1_s1"] == [41.25]  # the scalars stay in the logs
    model.fit(data, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False,
              callbacks=[_MiniSearchScalars(), EpochProgress()])
    assert capsys.readouterr().out == ""  # fit(verbose=0) silences both
