"""YAML configuration: load, merge, override and validate before anything is built."""

import copy
import importlib.util
import re
from pathlib import Path

import yaml

__all__ = ["ConfigError", "CONFIG_DIR", "load_config", "parse_overrides", "save_config", "validate"]



def _config_dir():
    """The YAML configs: the package `nnfp.configs` (the repository's `configs/` folder, mapped
    by pyproject.toml in normal and editable installs), or `configs/` beside a source checkout."""
    spec = importlib.util.find_spec("nnfp.configs")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(__file__).resolve().parent.parent / "configs"


CONFIG_DIR = _config_dir()

# Keys whose default is null, with the types they accept.
_NULLABLE = {
    "spec_augment.seed": (int,),
    "optimizer.weight_decay": (float,),
    "data.root": (str,),
    "data.val": (str,),
    "data.noise": (str,),
    "data.impulse_responses": (str,),
    "data.speech": (str,),
    "data.test_db": (str,),
    "data.test_query_db": (str,),
    "data.test_queries": (str,),
    "data.test_noise": (str,),
    "data.test_impulse_responses": (str,),
    "embedded.directory": (str,),
    "train.steps_per_epoch": (int,),
    "train.devices": (list,),
    "train.initial_weights": (str,),
    "wandb.entity": (str,),
    "wandb.name": (str,),
}
# Selectors read by nnfp.training and nnfp.losses.build_loss (no constructor sees them). The model,
# SpecAugment and loss arguments are checked by their own constructors (`_check_parts`).
_CHOICES = {
    "loss.type": ("ntxent", "triplet"),
    "optimizer.name": ("adam", "lamb"),
    "optimizer.schedule": ("cos", "cos-restart", "constant"),
    "wandb.mode": ("offline", "online", "disabled"),
    "train.verbose": (0, 1, 2),
    "train.distribute": ("none", "mirrored", "multi_worker"),
    "train.precision": ("float32", "mixed_bfloat16"),
}
_POSITIVE = (
    "optimizer.learning_rate", "data.hop_seconds",
    "train.epochs", "train.batch_size", "train.n_anchors", "train.val_batch_size",
    "train.steps_per_epoch", "embedded.n_tracks", "embedded.n_val_tracks", "embedded.track_seconds",
)
_RECEIVED = re.compile(r"Received: (\w+)=")


class ConfigError(ValueError):
    """A configuration value is missing, misspelt, of the wrong type or out of range."""


def _type_name(types):
    return " or ".join("number" if t is float else t.__name__ for t in types)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _as_float(value):
    """YAML 1.1 reads `1e-4` (no dot) as text: such text is a number where one is expected."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _check_type(key, value, default):
    """Raises ConfigError unless `value` suits `key`; returns it (number text made a float)."""
    if key in _NULLABLE:
        if value is None:
            return value
        types = _NULLABLE[key]
    elif default is None:
        return value
    else:
        types = (type(default),)
    if float in types:
        value = _as_float(value)
    if isinstance(value, list) and isinstance(default, list) and default and isinstance(default[0], float):
        value = [_as_float(item) for item in value]
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return value
    if bool not in types and isinstance(value, bool):
        raise ConfigError(f"config key '{key}': expected {_type_name(types)}, received {value!r} (bool)")
    if not isinstance(value, types):
        raise ConfigError(
            f"config key '{key}': expected {_type_name(types)}, received {value!r} "
            f"({type(value).__name__})"
        )
    if isinstance(value, list) and isinstance(default, list) and default:
        element = type(default[0])
        for item in value:
            if not (isinstance(item, element) or (element is float and isinstance(item, int))):
                raise ConfigError(
                    f"config key '{key}': expected a list of {_type_name((element,))}, received {value!r}"
                )
    return value


def _merge(base, update, prefix, defaults):
    for key, value in update.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            allowed = ", ".join(sorted(defaults))
            raise ConfigError(f"unknown config key '{path}' (allowed here: {allowed})")
        if isinstance(defaults[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}': expected a section (mapping), received {value!r}")
            _merge(base[key], value, f"{path}.", defaults[key])
        else:
            base[key] = _check_type(path, value, defaults[key])


def _read_yaml(path):
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def parse_overrides(items):
    """`["train.epochs=3", ...]` -> nested dict, values parsed as YAML scalars/lists."""
    nested = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects section.key=value, received {item!r}")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is set to a value and used as a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as error:  # unbalanced brackets, tags such as !!python/object...
            problem = " ".join(str(getattr(error, "problem", None) or error).split())
            raise ConfigError(
                f"--set {item!r}: not a valid YAML value ({problem}); quote text values, "
                "e.g. --set 'section.key=\"text\"'"
            ) from None
    return nested


def load_config(path=None, overrides=None):
    """Default config <- YAML file at `path` <- `--set` overrides; validated."""
    defaults = _read_yaml(CONFIG_DIR / "default.yaml")
    config = copy.deepcopy(defaults)
    if path is not None:
        _merge(config, _read_yaml(path), "", defaults)
    if overrides:
        _merge(config, parse_overrides(overrides) if isinstance(overrides, list | tuple) else overrides, "", defaults)
    validate(config)
    return config


def _get(config, key):
    section, name = key.split(".")
    return config[section][name]


def _constructed(config, section, build, key=None):
    """`build()`, with a constructor's ValueError re-raised as a ConfigError naming the key."""
    try:
        return build()
    except ValueError as error:
        if key is None:
            match = _RECEIVED.search(str(error))
            name = match.group(1) if match else None
            key = f"{section}.{name}" if name in config[section] else section
        raise ConfigError(f"config key '{key}': {error}") from None


def _check_parts(config):
    """Construct the model parts and the loss from their sections: their constructors check the values."""
    from nnfp.augment import SpecAugment
    from nnfp.encoder import DivideAndEncode, Encoder
    from nnfp.frontend import LogMelSpectrogram
    from nnfp.losses import build_loss

    frontend = _constructed(config, "frontend", lambda: LogMelSpectrogram(**config["frontend"]))
    encoder = _constructed(config, "encoder", lambda: Encoder(**config["encoder"]))
    projection = _constructed(config, "projection", lambda: DivideAndEncode(**config["projection"]))
    _constructed(config, "spec_augment", lambda: SpecAugment(**config["spec_augment"]))
    features = encoder.compute_output_shape(frontend.compute_output_shape((None, frontend.segment_samples)))[-1]
    _constructed(config, "projection", lambda: projection.slice_length_for(features), key="projection.embedding_dim")
    _constructed(config, "loss", lambda: build_loss(config))


def _check_phone(config):
    """Construct the phone's degradations from their `data.` keys: their constructors check the values."""
    from nnfp.pipeline.field import RandomBandLimit, RandomClipping, RandomCodec, RandomGainControl

    data, rate = config["data"], config["frontend"]["sample_rate"]
    _constructed(config, "data", lambda: RandomBandLimit(
        rate, data["highpass_hz_range"], data["lowpass_hz_range"], shelf_db_range=data["shelf_db_range"],
        peak_db_range=data["peak_db_range"], probability=data["band_limit_prob"],
    ))  # fmt: skip
    _constructed(config, "data", lambda: RandomClipping(data["clip_db_range"], probability=data["clipping_prob"]))
    _constructed(
        config, "data", lambda: RandomGainControl(rate, data["agc_target_dbfs_range"], probability=data["agc_prob"]),
        key="data.agc_target_dbfs_range",
    )
    _constructed(config, "data", lambda: RandomCodec(
        rate, data["codecs"], data["amr_nb_kbps_range"], data["opus_kbps_range"], probability=data["codec_prob"],
    ))  # fmt: skip


def validate(config):
    """Check ranges and cross-key constraints; raise ConfigError naming the key."""
    for key, allowed in _CHOICES.items():
        if _get(config, key) not in allowed:
            raise ConfigError(f"config key '{key}': expected one of {list(allowed)}, received {_get(config, key)!r}")
    for key in _POSITIVE:
        value = _get(config, key)
        if value is not None and value <= 0:
            raise ConfigError(f"config key '{key}': expected a positive value, received {value!r}")
    ranges = ("data.snr_db_range", "data.speech_snr_db_range", "data.gain_db_range", "data.speed_range",
              "data.tempo_range", "data.pitch_semitones_range", "data.highpass_hz_range", "data.lowpass_hz_range",
              "data.shelf_db_range", "data.peak_db_range", "data.clip_db_range", "data.agc_target_dbfs_range",
              "data.amr_nb_kbps_range", "data.opus_kbps_range")
    for key in ranges:
        value = _get(config, key)
        if len(value) != 2 or value[0] > value[1]:
            raise ConfigError(f"config key '{key}': expected [low, high] with low <= high, received {value!r}")
    for key in ("data.speed_range", "data.tempo_range"):
        if _get(config, key)[0] <= 0:
            raise ConfigError(f"config key '{key}': expected factors > 0, received {_get(config, key)!r}")
    for key in ("data.noise_prob", "data.ir_prob", "data.speech_prob", "data.speed_prob", "data.tempo_prob",
                "data.pitch_prob", "data.band_limit_prob", "data.clipping_prob", "data.agc_prob", "data.codec_prob"):
        if not 0 <= _get(config, key) <= 1:
            raise ConfigError(f"config key '{key}': expected a probability in [0, 1], received {_get(config, key)!r}")
    _check_parts(config)
    _check_phone(config)

    train = config["train"]
    for key in ("batch_size", "val_batch_size"):
        if train[key] % 2:
            raise ConfigError(f"config key 'train.{key}': expected an even number (anchors + replicas), received {train[key]}")
    if train["n_anchors"] > train["batch_size"] // 2:
        raise ConfigError(
            f"config key 'train.n_anchors': expected at most train.batch_size / 2 = {train['batch_size'] // 2} "
            f"(each anchor needs a replica), received {train['n_anchors']}"
        )
    data = config["data"]
    if data["speech"] == "embedded":
        raise ConfigError(
            "config key 'data.speech': the embedded corpus has no speech; expected a folder, manifest or "
            "prepared cache of speech recordings (or null), received 'embedded'"
        )
    if data["offset_margin"] < 0 or data["offset_margin"] > data["hop_seconds"]:
        raise ConfigError(
            f"config key 'data.offset_margin': expected 0 <= offset_margin <= data.hop_seconds = "
            f"{data['hop_seconds']}, received {data['offset_margin']}"
        )
    return config


def save_config(config, path):
    """Write the resolved config as YAML, atomically."""
    from nnfp.outputs import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
