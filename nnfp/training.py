"""Wire a validated config into data, model, loss, optimizer and callbacks, and train."""

import time
from pathlib import Path

import keras
import numpy as np

from nnfp.config import ConfigError, load_config, save_config
from nnfp.losses import build_loss
from nnfp.training_data import (  # noqa: F401 - embedded_corpus too stays importable from here
    TrainingData,
    corpus_directory,
    embedded_corpus,
    prepare_data,
    resolve_data_path,
)

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
