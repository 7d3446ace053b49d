"""The audio a config's `data` section names, as the training pipeline and validation pairs.

Each of `data.train`, `data.val`, `data.noise`, `data.impulse_responses` and `data.speech`
is `embedded` (the generated corpus), a folder, a CSV/JSON manifest, a prepared cache
(`nnfp data prepare`) or null; relative paths are looked up under `data.root`.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TrainingData", "corpus_directory", "embedded_corpus", "prepare_data", "resolve_data_path"]


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


# `data` keys handed to `make_pair_dataset` under their own names (lists as tuples): how the
# training replicas are made. Validation pairs (`make_validation_pairs`) take none of them.
_PAIR_OPTIONS = (
    "noise_prob",
    "ir_prob",
    "gain_db_range",
    "random_anchors",
    "speed_range",
    "speed_prob",
    "tempo_range",
    "tempo_prob",
    "pitch_semitones_range",
    "pitch_prob",
    "band_limit_prob",
    "highpass_hz_range",
    "lowpass_hz_range",
    "shelf_db_range",
    "peak_db_range",
    "clipping_prob",
    "clip_db_range",
    "agc_prob",
    "agc_target_dbfs_range",
    "codec_prob",
    "codecs",
    "amr_nb_kbps_range",
    "opus_kbps_range",
)


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
        # Training replicas only: validation pairs stay comparable between runs with and without them.
        **{key: tuple(data[key]) if isinstance(data[key], list) else data[key] for key in _PAIR_OPTIONS},
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
