"""Wire a validated config into data, model, loss, optimizer and callbacks, and train."""

import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from nnfp.config import ConfigError, load_config, save_config

__all__ = [
    "TrainingData",
    "build_model",
    "build_loss",
    "build_optimizer",
    "build_callbacks",
    "checkpoint_mode",
    "prepare_data",
    "corpus_directory",
    "resolve_data_path",
    "train",
]


@dataclass
class TrainingData:
    """Everything `train` feeds to `model.fit`, plus what was skipped."""

    train_dataset: object
    steps_per_epoch: int
    val_originals: np.ndarray | None
    val_replicas: np.ndarray | None
    n_train_tracks: int
    n_train_segments: int
    skipped: list


def build_model(config):
    """Built FingerPrinter; each part is its class called with its config section as arguments.

    `train.precision: mixed_bfloat16` builds the encoder and the projection (and their
    layers) under Keras' `mixed_bfloat16` policy: bfloat16 computation, float32 weights.
    The waveforms, the mel front end, SpecAugment, the L2 normalisation and the loss stay
    float32, and a saved model computes in float32 (`FingerPrinter.get_config`).
    """
    from nnfp.augment import SpecAugment
    from nnfp.encoder import DivideAndEncode, Encoder
    from nnfp.frontend import LogMelSpectrogram
    from nnfp.model import FingerPrinter

    spec_augment = config["spec_augment"]
    float32 = {"dtype": "float32"}  # the audio path, whatever the policy
    # The policy is read when a layer is made, and the encoder makes its sublayers itself.
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(config["train"]["precision"])
    try:
        model = FingerPrinter(
            frontend=LogMelSpectrogram(**config["frontend"], name="frontend", **float32),
            encoder=Encoder(**config["encoder"], name="encoder"),
            projection=DivideAndEncode(**config["projection"], name="projection"),
            spec_augment=SpecAugment(**spec_augment, name="spec_augment", **float32) if spec_augment["chain"] else None,
            name="fingerprinter",
            **float32,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.build((None, model.segment_samples))
    return model


def load_initial_weights(model, source):
    """Copy the weights of `source` (a `.keras` file, a run directory or "default") into `model`.

    The architectures must match (same frontend, encoder and projection settings); the
    optimizer state is not copied, so the run starts its own schedule. BackupAndRestore
    still wins on resume: it restores the run's own backup after this.

    Raises:
        ConfigError: `source` is missing, not a `.keras` model, or has other weight shapes.
    """
    from nnfp.catalogue.fingerprint import resolve_model

    key = "config key 'train.initial_weights'"
    try:
        path = resolve_model(None if source == "default" else source)
    except FileNotFoundError as error:  # NoDefaultModelError included
        raise ConfigError(f"{key}: {error}") from None
    if Path(path).suffix != ".keras":
        raise ConfigError(f"{key}: expected a .keras file or a run directory, received {str(path)!r}")
    try:
        donor = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - any load failure is reported with the path
        raise ConfigError(f"{key}: {path}: not a loadable nnfp model ({type(error).__name__}: {error})") from None
    # Variable paths carry generated layer names (conv2d_16, ...), so weights pair up by order.
    mine, theirs = model.weights, donor.weights
    shapes = [tuple(v.shape) for v in mine], [tuple(v.shape) for v in theirs]
    if shapes[0] != shapes[1]:
        first = next((i for i, (a, b) in enumerate(zip(*shapes, strict=False)) if a != b), min(map(len, shapes)))
        where = mine[first].path if first < len(mine) else theirs[first].path
        raise ConfigError(
            f"{key}: {path} has another architecture than this config builds ({len(theirs)} weights vs "
            f"{len(mine)}; first difference at {where}); set encoder, projection and frontend to the "
            "model's own settings"
        )
    for variable, value in zip(mine, theirs, strict=True):
        variable.assign(value)


def build_loss(config):
    from nnfp.losses import NTXent, OnlineTripletLoss

    loss = config["loss"]
    if loss["type"] == "ntxent":
        return NTXent(temperature=loss["temperature"])
    return OnlineTripletLoss(margin=loss["margin"], mode=loss["mode"])


def learning_rate(config):
    """Initial learning rate, scaled by batch size / 640 when `optimizer.scale_by_batch`."""
    lr = config["optimizer"]["learning_rate"]
    if config["optimizer"]["scale_by_batch"]:
        lr = lr * config["train"]["batch_size"] / 640
    return lr


def build_optimizer(config, total_steps):
    """Adam or LAMB with a cosine, cosine-restart or constant schedule over `total_steps`."""
    settings = config["optimizer"]
    lr = learning_rate(config)
    if settings["schedule"] == "cos":
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(total_steps, 1), alpha=settings["alpha"])
    elif settings["schedule"] == "cos-restart":
        schedule = keras.optimizers.schedules.CosineDecayRestarts(
            lr, first_decay_steps=max(total_steps // 10, 1), alpha=settings["alpha"]
        )
    else:
        schedule = lr
    kwargs = {"learning_rate": schedule}
    if settings["weight_decay"] is not None:
        kwargs["weight_decay"] = settings["weight_decay"]
    if settings["name"] == "lamb":
        return keras.optimizers.Lamb(**kwargs)
    return keras.optimizers.Adam(**kwargs)


def _resolve(config, key):
    """Folder for data.<key>: an embedded corpus part, a path under data.root, or None."""
    value = config["data"][key]
    if value is None or value == "embedded":
        return value
    path = Path(value)
    if config["data"]["root"] and not path.is_absolute():
        path = Path(config["data"]["root"]) / path
    return path


def resolve_data_path(config, key):
    """`data.<key>` as an existing path (folder, manifest or prepared cache), `embedded` or None.

    Raises:
        FileNotFoundError: the path does not exist; the message names the expected folder
            and, for the official layout, how to point `data.root` at it.
    """
    where = _resolve(config, key)
    if where is None or where == "embedded" or where.exists():
        return where
    value, root = config["data"][key], config["data"]["root"]
    if root is None and not Path(value).is_absolute():
        hint = (
            f"data.root is not set, so '{value}' was looked up in the current folder. Point data.root "
            "at the official neural-audio-fp-dataset folder (--set data.root=/path/to/neural-audio-fp-dataset) "
            f"or set data.{key} to your own audio folder, .csv/.json manifest or `nnfp data prepare` cache "
            "(configs/demo.yaml uses the generated corpus: data.*=embedded)"
        )
    elif root is not None and not Path(root).is_dir():
        hint = f"data.root={root} does not exist"
    else:
        hint = f"expected '{value}' under data.root={root} (the official neural-audio-fp-dataset layout)"
    raise FileNotFoundError(f"data.{key}: {where} not found; {hint}")


def corpus_directory(config):
    """Folder of the embedded corpus: `embedded.directory`, or by default
    `<nnfp.defaults.cache_home()>/corpus-<params>` (`$NNFP_CACHE`, else `~/.cache/nnfp`).

    The default folder name holds every parameter of the corpus (and its version), so
    two configs never share a folder unless they share the corpus.
    """
    from nnfp.corpus.generate import CORPUS_VERSION
    from nnfp.defaults import cache_home

    emb = config["embedded"]
    if emb["directory"] is not None:
        return Path(emb["directory"]).expanduser()
    tag = (
        f"v{CORPUS_VERSION}_n{emb['n_tracks'] + emb['n_val_tracks']}_s{emb['track_seconds']:g}"
        f"_noise{emb['n_noise']}_ir{emb['n_irs']}_sr{config['frontend']['sample_rate']}_seed{emb['seed']}"
    )
    return cache_home() / f"corpus-{tag}"


def embedded_corpus(config):
    """Generate (or reuse) the embedded corpus in `corpus_directory(config)`; returns its `CorpusPaths`."""
    from nnfp.corpus.generate import generate_corpus

    emb = config["embedded"]
    return generate_corpus(
        corpus_directory(config),
        n_tracks=emb["n_tracks"] + emb["n_val_tracks"],
        track_seconds=emb["track_seconds"],
        n_noise=emb["n_noise"],
        n_irs=emb["n_irs"],
        seed=emb["seed"],
        sample_rate=config["frontend"]["sample_rate"],
    )


def _audio_files(config, key, corpus):
    from nnfp.audio.sources import list_audio_files

    where = resolve_data_path(config, key)
    if where is None:
        return []
    if where != "embedded":
        return list_audio_files(where)
    n_train = config["embedded"]["n_tracks"]
    if key == "train":
        return list_audio_files(corpus.music_dir)[:n_train]
    if key == "val":
        return list_audio_files(corpus.music_dir)[n_train:]
    folders = {"noise": corpus.noise_dir, "impulse_responses": corpus.ir_dir}
    if key not in folders:  # config validation refuses data.speech=embedded first
        raise ValueError(f"the embedded corpus has no data for data.{key}. Received: data.{key}=embedded")
    return list_audio_files(folders[key])


def prepare_data(config, log=print):
    """Load audio named by the `data` section and build the training pipeline and validation pairs.

    Each source is the embedded corpus, a folder, a CSV/JSON manifest or a prepared cache
    (`nnfp data prepare`); unusable files are skipped and reported, never fatal mid-run.
    """
    from nnfp.audio.segments import segment_starts
    from nnfp.audio.sources import load_source, load_tracks
    from nnfp.pipeline.pairs import make_pair_dataset, make_validation_pairs

    data, train, rate = config["data"], config["train"], config["frontend"]["sample_rate"]
    keys = ["train", "val", "noise", "impulse_responses"] + (["speech"] if data["speech_prob"] > 0 else [])
    uses_corpus = "embedded" in [data[key] for key in keys]
    corpus = embedded_corpus(config) if uses_corpus else None
    skipped = []

    def load(key, min_seconds):
        where = resolve_data_path(config, key)
        if where is None:
            return []
        if where == "embedded":
            arrays, _, bad = load_tracks(_audio_files(config, key, corpus), sample_rate=rate, min_seconds=min_seconds)
        else:
            arrays, _, bad = load_source(where, sample_rate=rate, min_seconds=min_seconds)
        skipped.extend(bad)
        if not arrays:
            raise FileNotFoundError(f"data.{key}: none of the {len(bad)} audio files in {where} could be used")
        return arrays

    tracks = load("train", data["min_seconds"])
    noise = load("noise", 0.1) or None
    irs = load("impulse_responses", 0.0) or None
    speech = load("speech", 0.1) or None if "speech" in keys else None
    if data["speech_prob"] > 0 and speech is None:
        raise FileNotFoundError(f"data.speech_prob={data['speech_prob']} needs a speech folder in data.speech")
    augment = dict(
        sample_rate=rate,
        segment_seconds=config["frontend"]["segment_seconds"],
        hop_seconds=data["hop_seconds"],
        offset_margin=data["offset_margin"],
        snr_db_range=tuple(data["snr_db_range"]),
        speech=speech,
        speech_prob=data["speech_prob"],
        speech_snr_db_range=tuple(data["speech_snr_db_range"]),
        reverb_context_seconds=data["reverb_context_seconds"],
    )
    dataset = make_pair_dataset(
        tracks,
        batch_size=train["batch_size"],
        n_anchors=train["n_anchors"],
        noise=noise,
        impulse_responses=irs,
        noise_prob=data["noise_prob"],
        ir_prob=data["ir_prob"],
        gain_db_range=tuple(data["gain_db_range"]),
        random_anchors=data["random_anchors"],
        # Training replicas only: validation pairs stay comparable between runs with and without.
        speed_range=tuple(data["speed_range"]),
        speed_prob=data["speed_prob"],
        tempo_range=tuple(data["tempo_range"]),
        tempo_prob=data["tempo_prob"],
        pitch_semitones_range=tuple(data["pitch_semitones_range"]),
        pitch_prob=data["pitch_prob"],
        band_limit_prob=data["band_limit_prob"],
        highpass_hz_range=tuple(data["highpass_hz_range"]),
        lowpass_hz_range=tuple(data["lowpass_hz_range"]),
        shelf_db_range=tuple(data["shelf_db_range"]),
        peak_db_range=tuple(data["peak_db_range"]),
        clipping_prob=data["clipping_prob"],
        clip_db_range=tuple(data["clip_db_range"]),
        agc_prob=data["agc_prob"],
        agc_target_dbfs_range=tuple(data["agc_target_dbfs_range"]),
        codec_prob=data["codec_prob"],
        codecs=tuple(data["codecs"]),
        amr_nb_kbps_range=tuple(data["amr_nb_kbps_range"]),
        opus_kbps_range=tuple(data["opus_kbps_range"]),
        shuffle=True,
        seed=train["seed"],
        **augment,
    )
    segment = int(round(config["frontend"]["segment_seconds"] * rate))
    hop = int(round(data["hop_seconds"] * rate))
    n_segments = sum(len(segment_starts(len(t), segment, hop)) for t in tracks)
    steps = train["steps_per_epoch"] or max(1, n_segments // train["n_anchors"])

    originals = replicas = None
    val_tracks = load("val", data["min_seconds"])
    if val_tracks:
        originals, replicas = make_validation_pairs(
            val_tracks, n_segments_max=data["val_max_segments"], noise=noise, impulse_responses=irs,
            seed=data["val_seed"], **augment,
        )
    for path, reason in skipped:
        log(f"skipped {path}: {reason}")
    log(
        f"data: {len(tracks)} training tracks ({n_segments} segments), "
        f"{len(val_tracks)} validation tracks ({0 if originals is None else len(originals)} segments), "
        f"{len(noise or [])} noise files, {len(irs or [])} impulse responses, "
        f"{len(speech or [])} speech files, {len(skipped)} skipped"
    )
    return TrainingData(dataset, steps, originals, replicas, len(tracks), n_segments, skipped)


def distribution_strategy(config):
    """The `tf.distribute` strategy named by `train.distribute`.

    `none` is the default strategy (one device). `mirrored` uses every local GPU
    (or the devices in `train.devices`); `multi_worker` reads the cluster from
    `TF_CONFIG` (one process per host). The contrastive loss always sees the global
    batch: `FingerPrinter` all-gathers embeddings across replicas.
    """
    import tensorflow as tf

    kind = config["train"]["distribute"]
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy(devices=config["train"]["devices"] or None)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


class _Timer(keras.callbacks.Callback):
    """Records per-step wall times (for the median step time in the run summary)."""

    def __init__(self):
        super().__init__()
        self.step_seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step_seconds.append(time.perf_counter() - self._start)


# Logged scalar -> whether a larger value is better. Mini-search keys are
# `ms_<embedding>_<metric>_s<scope>`; `val_` prefixes the validation copy of a metric.
_HIGHER_IS_BETTER = {
    "loss": False, "neg_sim": False, "pos_sim": True, "batch_top1": True,
    "top1": True, "top3": True, "top10": True, "mean_rank": False,
}


def checkpoint_mode(monitor):
    """`"min"` or `"max"`: the ModelCheckpoint mode for a logged scalar.

    Raises:
        ConfigError: `monitor` is not a scalar that training logs.
    """
    name = monitor.removeprefix("val_")
    if name.startswith("ms_"):
        parts = name.split("_")  # ms, embedding, metric..., s<scope>
        name = "_".join(parts[2:-1]) if len(parts) >= 4 and parts[-1][1:].isdigit() else name
    if name not in _HIGHER_IS_BETTER:
        raise ConfigError(
            f"config key 'train.checkpoint_monitor': expected loss, pos_sim, neg_sim, batch_top1 (optionally "
            f"val_...) or a mini-search key such as ms_gf_top1_s1, received {monitor!r}"
        )
    return "max" if _HIGHER_IS_BETTER[name] else "min"


def build_callbacks(config, run_dir, data):
    """Mini-search first (so later callbacks see its logs), then checkpoints, backup, logging."""
    from nnfp.callbacks import EpochProgress, MiniSearchValidation, SimilarityMatrixImages

    run_dir = Path(run_dir)
    train = config["train"]
    callbacks = []
    if data.val_originals is not None:
        callbacks.append(
            MiniSearchValidation(
                data.val_originals,
                data.val_replicas,
                scopes=train["mini_search_scopes"],
                verbose=0,  # EpochProgress prints its one-line summary
            )
        )
    monitor = train["checkpoint_monitor"] if data.val_originals is not None else "loss"
    mode = checkpoint_mode(monitor)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    callbacks += [
        keras.callbacks.ModelCheckpoint(run_dir / "checkpoints" / "last.keras"),
        keras.callbacks.ModelCheckpoint(
            run_dir / "checkpoints" / "best.keras", monitor=monitor, mode=mode, save_best_only=True
        ),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), save_freq="epoch", delete_checkpoint=False),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if train["tensorboard"]:
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "logs"), write_graph=False))
        if train["similarity_images"] and data.val_originals is not None:
            n = min(64, len(data.val_originals))
            callbacks.append(
                SimilarityMatrixImages(data.val_originals[:n], data.val_replicas[:n], run_dir / "logs")
            )
    wandb_logger = _wandb_callback(config, run_dir)
    if wandb_logger is not None:
        callbacks.append(wandb_logger)
    callbacks.append(EpochProgress())  # the epoch line without the ms_* scalars (fit's verbose sets it)
    return callbacks


def _wandb_callback(config, run_dir):
    # `wandb.enabled` is the only switch: the WANDB_MODE environment variable never turns
    # logging on (wandb.init gets the configured mode explicitly).
    settings = config["wandb"]
    mode = settings["mode"] if settings["enabled"] else None
    if mode in (None, "disabled"):
        return None
    wandb = require_training_extras(config)["wandb"]
    from wandb.integration.keras import WandbMetricsLogger

    wandb.init(
        project=settings["project"],
        entity=settings["entity"],
        name=settings["name"] or Path(run_dir).name,
        mode=mode,
        dir=str(run_dir),
        config=config,
        resume="allow",
    )
    return WandbMetricsLogger(log_freq="epoch")


def _flatten(tree, prefix=""):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def require_training_extras(config):
    """Imports the optional packages the config's logs need, by name, or raises
    `nnfp.extras.MissingExtraError` naming the extra: TensorBoard logs (`train.tensorboard`,
    their similarity images drawn by matplotlib) and W&B (`wandb.enabled`)."""
    from nnfp.extras import require

    modules = {}
    if config["train"]["tensorboard"]:
        modules["tensorboard"] = require("tensorboard", "tensorboard", "train.tensorboard: true (TensorBoard logs)",
                                         instead="--set train.tensorboard=false")
        if config["train"]["similarity_images"]:
            modules["matplotlib"] = require(
                "matplotlib", "tensorboard", "train.similarity_images: true (TensorBoard images)",
                instead="--set train.similarity_images=false",
            )
    if config["wandb"]["enabled"] and config["wandb"]["mode"] != "disabled":
        modules["wandb"] = require("wandb", "wandb", "wandb.enabled: true (W&B logging)",
                                   instead="--set wandb.enabled=false")
    return modules


def _check_precision(config):
    """`train.precision: mixed_bfloat16` is for GPUs: refused where TensorFlow sees none.

    On CPU it measured no faster than float32 with XLA (docs/training-speed.md), and
    TensorFlow 2.21's oneDNN bfloat16 convolution returns wrong values (NaN) for the
    encoder's stride-2 convolution of a 2-frame-wide input outside XLA, which the
    train step without `train.jit_compile` and the mini-search callback run.
    """
    import tensorflow as tf

    if config["train"]["precision"] != "float32" and not tf.config.list_physical_devices("GPU"):
        raise ConfigError(
            f"config key 'train.precision': {config['train']['precision']} is for GPUs and TensorFlow sees "
            "none; on CPU it is no faster than float32 and TensorFlow's oneDNN bfloat16 convolution gives "
            "wrong values outside XLA (docs/training-speed.md); use float32"
        )


def _check_resumed_config(config, saved_path):
    """A run directory resumes only the run it holds: a changed config is refused, not saved over it."""
    import yaml

    if not saved_path.is_file():
        return
    saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    new = _flatten(config)
    # A key that nnfp gained after the run began is not in its config.yaml: the run used its default.
    saved = {**{k: v for k, v in _flatten(load_config()).items() if k in new}, **saved}
    changed = sorted(k for k in set(saved) | set(new) if saved.get(k, "<unset>") != new.get(k, "<unset>"))
    if changed:
        listing = "; ".join(f"{k}: {saved.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in changed[:6])
        raise ConfigError(
            f"{saved_path.parent}: this run directory holds a run with a different config ({listing}"
            f"{'; ...' if len(changed) > 6 else ''}); resuming would mix two runs. Use a new --run-dir, "
            "or the run's own config.yaml to resume it"
        )


def train(config, run_dir, log=print, extra_callbacks=()):
    """Train from a validated config; writes config, checkpoints, logs and `model.keras` to `run_dir`."""
    from nnfp.outputs import atomic_write_json, claim_output_dir, write_marker

    require_training_extras(config)  # a missing optional package fails before the run folder is made
    _check_precision(config)
    claim_output_dir(run_dir, "run", reuse=True)  # a run resumes; anything else is refused
    run_dir = Path(run_dir)
    _check_resumed_config(config, run_dir / "config.yaml")
    checkpoint_mode(config["train"]["checkpoint_monitor"])  # a misspelt monitor fails before data loads
    write_marker(run_dir, "run")
    save_config(config, run_dir / "config.yaml")
    keras.utils.set_random_seed(config["train"]["seed"])
    data = prepare_data(config, log=log)
    total_steps = config["train"]["epochs"] * data.steps_per_epoch
    with distribution_strategy(config).scope():
        model = build_model(config)
        if config["train"]["initial_weights"] is not None:
            load_initial_weights(model, config["train"]["initial_weights"])
            log(f"initial weights: {config['train']['initial_weights']}")
        model.compile(
            optimizer=build_optimizer(config, total_steps), loss=build_loss(config),
            jit_compile=config["train"]["jit_compile"],
        )
    validation = None
    if data.val_originals is not None:
        import tensorflow as tf

        half = config["train"]["val_batch_size"] // 2
        validation = tf.data.Dataset.from_tensor_slices((data.val_originals, data.val_replicas)).batch(
            half, drop_remainder=True
        )
    timer = _Timer()
    callbacks = build_callbacks(config, run_dir, data) + [timer, *extra_callbacks]
    started = time.perf_counter()
    history = model.fit(
        data.train_dataset,
        epochs=config["train"]["epochs"],
        steps_per_epoch=data.steps_per_epoch,
        validation_data=validation,
        callbacks=callbacks,
        verbose=config["train"]["verbose"],
        shuffle=False,
    )
    seconds = time.perf_counter() - started
    if any(type(c).__name__ == "WandbMetricsLogger" for c in callbacks):
        import wandb

        wandb.finish()
    model.save(run_dir / "model.keras")
    summary = {
        "epochs": config["train"]["epochs"],
        "steps_per_epoch": data.steps_per_epoch,
        "train_seconds": round(seconds, 1),
        "median_step_seconds": float(np.median(timer.step_seconds)) if timer.step_seconds else None,
        "params": model.count_params(),
        "final": {k: float(v[-1]) for k, v in history.history.items()},
        "skipped": [[str(p), r] for p, r in data.skipped],
    }
    atomic_write_json(run_dir / "summary.json", summary, indent=1)
    return model, history, summary
