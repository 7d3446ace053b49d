"""Training end to end on a tiny generated corpus: fit, resume, export, search."""

import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from nnfp.config import CONFIG_DIR, load_config
from nnfp.training import train

TINY = [
    "train.jit_compile=false",  # XLA compiles in ~10 s: worth it for long runs, not for 2-step tests
    "encoder.width=0.03125",
    "projection.embedding_dim=16",
    "embedded.n_tracks=4",
    "embedded.n_val_tracks=2",
    "embedded.track_seconds=8",
    "embedded.n_noise=2",
    "embedded.n_irs=2",
    "train.batch_size=8",
    "train.n_anchors=4",
    "train.val_batch_size=8",
    "train.steps_per_epoch=3",
    "train.mini_search_scopes=[1,3]",
    "train.verbose=0",
    "data.val_max_segments=16",
    "data.train=embedded",
    "data.val=embedded",
    "data.noise=embedded",
    "data.impulse_responses=embedded",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """NNFP_CACHE for this module's tests only (undone afterwards, never leaking into later modules)."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NNFP_CACHE", str(path))
        yield path


class _Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt("simulated kill")


class _Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.begins = []

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        self.begins.append((epoch, int(opt.iterations.numpy()), float(opt.learning_rate.numpy())))


def test_fit_logs_mini_search_and_resumes_after_kill(cache, tmp_path):
    config = load_config(None, [*TINY, "train.epochs=3"])
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(config, run, log=lambda *_: None, extra_callbacks=[_Crash(at_epoch=1)])
    assert (run / "backup").exists()

    record = _Record()
    model, history, summary = train(config, run, log=lambda *_: None, extra_callbacks=[record])
    steps = 3
    # resumed at epoch index 2 with the optimizer (and so the schedule) at step 2 * steps
    assert record.begins[0][:2] == (2, 2 * steps)
    schedule = keras.optimizers.schedules.CosineDecay(1e-4, decay_steps=3 * steps, alpha=1e-6)
    assert record.begins[0][2] == pytest.approx(float(schedule(2 * steps)), rel=1e-5)
    assert int(model.optimizer.iterations.numpy()) == 3 * steps
    assert history.epoch == [2]

    logs = history.history
    for key in ("loss", "val_loss", "pos_sim", "batch_top1", "ms_gf_top1_s1", "ms_f_mean_rank_s3", "ms_l2f_top10_s1"):
        assert key in logs, key
    # the logged mini-search is a search of the validation pairs with the final weights
    from nnfp.minisearch import sequence_hit_rates
    from nnfp.training import prepare_data

    data = prepare_data(config, log=lambda *_: None)
    db, queries = model.predict(data.val_originals, verbose=0), model.predict(data.val_replicas, verbose=0)
    expected = sequence_hit_rates(db, queries, scopes=(1, 3), metric="ip")
    assert logs["ms_gf_top1_s1"][-1] == pytest.approx(expected["top1"][0], abs=1e-6)
    assert logs["ms_gf_top1_s3"][-1] == pytest.approx(expected["top1"][1], abs=1e-6)
    assert logs["ms_gf_mean_rank_s1"][-1] == pytest.approx(expected["mean_rank"][0], abs=1e-6)
    assert (run / "checkpoints" / "best.keras").exists() and (run / "model.keras").exists()
    with open(run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"] and "ms_gf_top1_s1" in rows[0]
    assert summary["params"] == model.count_params()
    assert list((run / "logs").rglob("events.out.tfevents*"))  # TensorBoard scalars and images
    # the last similarity image is the final model's anchor x replica matrix of the first 16 pairs
    from nnfp.callbacks import similarity_image

    images = []
    for event_file in sorted((run / "logs" / "similarity").glob("events.out.tfevents*")):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                if value.tag == "batch_similarity":
                    images.append((event.step, tf.make_ndarray(value.tensor)[-1]))
    assert [step for step, _ in images] == [0, 1, 2]
    png = tf.io.decode_png(images[-1][1]).numpy()
    n = min(64, len(data.val_originals))
    expected_image = similarity_image(model.batch_similarity(data.val_originals[:n], data.val_replicas[:n]))
    assert png.shape == (n, n, 3)
    assert np.abs(png.astype(int) - expected_image.astype(int)).max() <= 1


def test_keras_round_trip_and_export_match_predict(cache, tmp_path):
    from nnfp.export import export_saved_model, load_fingerprinter

    config = load_config(None, [*TINY, "train.epochs=1", "train.tensorboard=false"])
    model, _, _ = train(config, tmp_path / "run", log=lambda *_: None)
    x = np.random.default_rng(0).standard_normal((5, 8000)).astype("float32")
    expected = model.predict(x, verbose=0)

    reloaded = keras.saving.load_model(tmp_path / "run" / "model.keras")
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)

    out = export_saved_model(model, tmp_path / "export", config)
    assert (out / "config.yaml").exists()
    served = tf.saved_model.load(str(out)).signatures["serving_default"]
    fingerprints = served(waveforms=tf.constant(x))["fingerprint"].numpy()
    assert fingerprints.shape == (5, 16)
    np.testing.assert_allclose(fingerprints, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(fingerprints, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(load_fingerprinter(out, trust_model=True).fingerprint(x), expected, atol=1e-5)
    assert not list(tmp_path.glob(".export*"))  # no temp folder left


def test_training_reduces_loss(cache, tmp_path):
    """A few dozen steps on a fixed batch must lower NT-Xent well below its start."""
    from nnfp.encoder import DivideAndEncode, Encoder
    from nnfp.frontend import LogMelSpectrogram
    from nnfp.losses import NTXent
    from nnfp.model import FingerPrinter

    rng = np.random.default_rng(0)
    anchors = rng.standard_normal((8, 8000)).astype("float32")
    replicas = anchors + 0.3 * rng.standard_normal((8, 8000)).astype("float32")
    model = FingerPrinter(LogMelSpectrogram(), Encoder(width=0.03125), DivideAndEncode(16))
    model.build((None, 8000))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=NTXent(0.1))
    dataset = tf.data.Dataset.from_tensors((anchors, replicas)).repeat()
    history = model.fit(dataset, epochs=2, steps_per_epoch=15, verbose=0, shuffle=False)
    first, last = history.history["loss"][0], history.history["loss"][-1]
    assert last < 0.5 * first
    assert model.evaluate(dataset, steps=1, verbose=0, return_dict=True)["batch_top1"] == 1.0


# ----------------------------------------------------------------------------- official layout

OFFICIAL_FOLDERS = {
    "music/train-10k-30s": "music",
    "music/val-query-db-500-30s/db": "music",
    "music/val-query-db-500-30s/query": "music",
    "music/test-dummy-db-100k-full": "music",
    "music/test-query-db-500-30s/db": "music",
    "music/test-query-db-500-30s/query": "music",
    "aug/bg/tr": "noise",
    "aug/bg/ts": "noise",
    "aug/ir/tr": "ir",
    "aug/ir/ts": "ir",
    "aug/speech/common_voice_8k/en/train": "speech",
}


@pytest.fixture(scope="module")
def official_root(tmp_path_factory):
    """A small mock of the neural-audio-fp-dataset layout: a few short wav files per folder."""
    import soundfile as sf

    from nnfp.corpus.noise import make_noise
    from nnfp.corpus.rooms import make_impulse_response
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("neural-audio-fp-dataset")
    for i, (folder, kind) in enumerate(OFFICIAL_FOLDERS.items()):
        (root / folder).mkdir(parents=True)
        for j in range(3 if kind == "music" else 2):
            seed = 100 * i + j
            x = {
                "music": lambda s: compose_track(s, 6.0, 8000),
                "noise": lambda s: make_noise(s, 3.0, 8000),
                "ir": lambda s: make_impulse_response(s, 8000),
                "speech": lambda s: make_noise(s, 3.0, 8000, kind="babble"),
            }[kind](seed)
            sf.write(root / folder / f"{j:04d}.wav", x, 8000, subtype="PCM_16")
    return root


def test_paper_config_without_data_root_names_the_expected_folder(tmp_path, monkeypatch):
    from nnfp.training import prepare_data

    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data\.train: music/train-10k-30s not found; data\.root is not set.*neural-audio-fp-dataset"):
        prepare_data(load_config(None))
    config = load_config(None, [f"data.root={tmp_path / 'elsewhere'}"])
    with pytest.raises(FileNotFoundError, match=r"data\.root=.*elsewhere does not exist"):
        prepare_data(config)


def test_default_config_trains_on_the_official_layout(official_root, tmp_path):
    """configs/default.yaml + data.root, only the model and batch shrunk: the paper's data setup."""
    from nnfp.training import resolve_data_path

    overrides = [o for o in TINY if not o.startswith(("data.train", "data.val=", "data.noise", "data.impulse"))]
    config = load_config(
        CONFIG_DIR / "default.yaml",
        [*overrides, f"data.root={official_root}", "train.epochs=1", "train.steps_per_epoch=2",
         "train.tensorboard=false", "data.speech_prob=0.5", "data.speech=aug/speech/common_voice_8k/en/train"],
    )
    for key in ("test_db", "test_query_db", "test_queries", "test_noise", "test_impulse_responses"):
        assert resolve_data_path(config, key).is_dir()
    lines = []
    _, history, summary = train(config, tmp_path / "run", log=lines.append)
    assert "data: 3 training tracks (33 segments), 3 validation tracks (16 segments), 2 noise files, " \
        "2 impulse responses, 2 speech files, 0 skipped" in lines
    assert summary["steps_per_epoch"] == 2 and np.isfinite(history.history["loss"][-1])
    assert "val_loss" in history.history


def test_prepared_cache_trains_like_its_folder(official_root, tmp_path):
    from nnfp.audio.prepare import prepare_audio
    from nnfp.training import prepare_data

    prepare_audio(official_root / "music" / "train-10k-30s", tmp_path / "cache", progress=False)
    base = [f"data.root={official_root}", "train.batch_size=8", "train.n_anchors=4", "data.val=null"]
    from_folder = prepare_data(load_config(None, base), log=lambda *_: None)
    from_cache = prepare_data(load_config(None, [*base, f"data.train={tmp_path / 'cache'}"]), log=lambda *_: None)
    assert from_cache.n_train_segments == from_folder.n_train_segments == 33
    a = next(iter(from_folder.train_dataset))
    b = next(iter(from_cache.train_dataset))
    np.testing.assert_allclose(a[0].numpy(), b[0].numpy(), atol=1 / 32768)
    np.testing.assert_allclose(a[1].numpy(), b[1].numpy(), atol=1e-3)


def test_xla_train_step_and_offline_wandb_run(cache, tmp_path, monkeypatch):
    """One run with the two options TINY leaves off: train.jit_compile=true (the default)
    compiles the step with XLA, and wandb.enabled with the default offline mode writes a
    local W&B run without any network."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = load_config(None, [*TINY, "train.jit_compile=true", "train.epochs=1", "train.steps_per_epoch=2",
                                "train.tensorboard=false", "wandb.enabled=true"])
    assert config["wandb"]["mode"] == "offline"
    model, history, summary = train(config, tmp_path / "run", log=lambda *_: None)
    assert model.jit_compile is True
    assert summary["steps_per_epoch"] == 2 and int(model.optimizer.iterations.numpy()) == 2
    assert np.isfinite(history.history["loss"][-1]) and history.history["loss"][-1] > 0
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logs = list(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1 and logs[0].stat().st_size > 1000  # the epoch's metrics were written


def test_wandb_enabled_is_the_only_switch(tmp_path, monkeypatch):
    from nnfp.training import _wandb_callback

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert _wandb_callback(load_config(None), tmp_path) is None  # wandb.enabled: false wins


@pytest.mark.parametrize(
    "overrides, optimizer, schedule",
    [
        ([], keras.optimizers.Adam, keras.optimizers.schedules.CosineDecay),
        (["optimizer.name=lamb"], keras.optimizers.Lamb, keras.optimizers.schedules.CosineDecay),
        (["optimizer.schedule=cos-restart"], keras.optimizers.Adam, keras.optimizers.schedules.CosineDecayRestarts),
        (["optimizer.schedule=constant"], keras.optimizers.Adam, None),
    ],
)
def test_optimizer_branches(overrides, optimizer, schedule):
    from nnfp.training import build_optimizer

    built = build_optimizer(load_config(None, overrides), total_steps=200)
    assert type(built) is optimizer
    if schedule is None:  # a constant rate is a variable, not a schedule
        assert not isinstance(built._learning_rate, keras.optimizers.schedules.LearningRateSchedule)
    else:
        assert isinstance(built._learning_rate, schedule)
    if schedule is keras.optimizers.schedules.CosineDecayRestarts:
        assert built._learning_rate.first_decay_steps == 20  # a tenth of the run
    if schedule is keras.optimizers.schedules.CosineDecay:
        assert built._learning_rate.decay_steps == 200 and built._learning_rate.alpha == 1e-6
    assert float(built.learning_rate) == pytest.approx(1e-4)
    assert built.weight_decay is None


def test_optimizer_weight_decay_and_batch_scaling():
    from nnfp.training import build_optimizer, learning_rate

    config = load_config(None, ["optimizer.name=lamb", "optimizer.scale_by_batch=true", "optimizer.weight_decay=0.01",
                                "optimizer.schedule=constant", "train.batch_size=1280", "train.n_anchors=640"])
    assert learning_rate(config) == pytest.approx(2e-4)  # 1e-4 * 1280 / 640
    built = build_optimizer(config, total_steps=10)
    assert type(built) is keras.optimizers.Lamb and built.weight_decay == pytest.approx(0.01)
    assert float(built.learning_rate) == pytest.approx(2e-4)


def test_corpus_folder_name_holds_every_corpus_parameter(monkeypatch, tmp_path):
    from nnfp.training import corpus_directory

    monkeypatch.setenv("NNFP_CACHE", str(tmp_path))
    base = corpus_directory(load_config(None))
    assert base.parent == tmp_path
    for override in ("frontend.sample_rate=16000", "embedded.n_noise=3", "embedded.n_irs=5", "embedded.n_tracks=7",
                     "embedded.n_val_tracks=3", "embedded.track_seconds=12", "embedded.seed=1"):
        assert corpus_directory(load_config(None, [override])) != base, override
    assert corpus_directory(load_config(None, [f"embedded.directory={tmp_path / 'mine'}"])) == tmp_path / "mine"
    monkeypatch.delenv("NNFP_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert corpus_directory(load_config(None)).parent == __import__("pathlib").Path.home() / ".cache" / "nnfp"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert corpus_directory(load_config(None)).parent == tmp_path / "xdg" / "nnfp"


def test_initial_weights_start_a_run_from_another_model(tmp_path):
    from nnfp.config import ConfigError
    from nnfp.training import build_model, load_initial_weights

    config = load_config(CONFIG_DIR / "demo.yaml")
    keras.utils.set_random_seed(1)
    donor = build_model(config)
    donor.save(tmp_path / "donor.keras")
    keras.utils.set_random_seed(2)
    model = build_model(config)
    waves = np.random.default_rng(0).standard_normal((3, model.segment_samples)).astype("float32")
    assert np.abs(model.predict(waves, verbose=0) - donor.predict(waves, verbose=0)).max() > 1e-3
    load_initial_weights(model, str(tmp_path / "donor.keras"))
    np.testing.assert_array_equal(model.predict(waves, verbose=0), donor.predict(waves, verbose=0))

    wider = build_model(load_config(CONFIG_DIR / "demo.yaml", ["encoder.width=0.5"]))
    with pytest.raises(ConfigError, match="train.initial_weights.*another architecture"):
        load_initial_weights(wider, str(tmp_path / "donor.keras"))
    with pytest.raises(ConfigError, match="train.initial_weights.*not found"):
        load_initial_weights(model, str(tmp_path / "missing.keras"))
