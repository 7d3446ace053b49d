"""Export a trained fingerprinter as a TF SavedModel or a LiteRT model (with its measured parity);
`nnfp.runtime` loads any saved form for inference."""

import json
from pathlib import Path

import keras
import numpy as np

from nnfp.model_files import resolve_model_path
from nnfp.runtime import (
    CALL_ROWS,
    SAVED_MODEL_SPEC_FILE,
    SAVED_MODEL_SPEC_FORMAT,
    ModelLoadError,
    UntrustedModelError,
    load_fingerprinter,
)

__all__ = [
    "ModelLoadError",
    "ParityError",
    "QUANTIZE_MODES",
    "UntrustedModelError",
    "convert_to_litert",
    "export_litert",
    "export_saved_model",
    "load_fingerprinter",
    "resolve_model_path",
]


def export_saved_model(model, out_dir, config=None, overwrite=False, inputs=()):
    """Write `model` as a SavedModel taking (batch, segment_samples) float32 waveforms.

    The `serving_default` signature maps `waveforms` to `fingerprint`
    (batch, d) L2-normalised, with no augmentation. The resolved config, when
    given, is saved beside it as `config.yaml`. Written to a temporary folder and
    renamed, so `out_dir` is never left half-written. `out_dir` must be new, empty, or
    (with `overwrite=True`) an earlier nnfp export; it may not lie inside `inputs`
    (see `nnfp.outputs.claim_output_dir`).
    """
    import tensorflow as tf

    from nnfp.config import save_config
    from nnfp.outputs import atomic_directory, claim_output_dir

    claim_output_dir(out_dir, "export", overwrite=overwrite, inputs=inputs)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec((None, model.segment_samples), tf.float32, name="waveforms")

    def serve(waveforms):
        return {"fingerprint": model(waveforms, training=False)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[spec])
    with atomic_directory(out_dir, kind="export", own_names=EXPORT_FILES) as tmp:  # checked above
        archive.write_out(str(tmp), verbose=False)
        # The model's contract beside the graph: a SavedModel's signature tells the segment's
        # samples, not the rate of the audio they are (`ModelSpec`, read back on load).
        (tmp / SAVED_MODEL_SPEC_FILE).write_text(json.dumps({
            "format": SAVED_MODEL_SPEC_FORMAT,
            "sample_rate": int(model.frontend.sample_rate),
            "segment_samples": int(model.segment_samples),
            "hop_samples": int(model.segment_samples) // 2,
            "embedding_dim": int(model.embedding_dim),
        }))
        if config is not None:
            save_config(config, tmp / "config.yaml")
    return out_dir


# ----------------------------------------------------------------------------- LiteRT


QUANTIZE_MODES = ("none", "float16", "int8")
# What a LiteRT model must reproduce of its Keras model on `parity_waveforms`: the least cosine
# of a LiteRT fingerprint with the Keras one, and the share of LiteRT fingerprints whose nearest
# Keras fingerprint is their own (None: not gated). The shipped model's parity at each setting,
# and why int8 is refused for it: docs/defaults.md.
PARITY_GATES = {
    "none": {"min_cosine": 0.9999, "own_neighbour": None},
    "float16": {"min_cosine": 0.9999, "own_neighbour": None},
    "int8": {"min_cosine": 0.999, "own_neighbour": 1.0},
}
PARITY_SEED = 20_240_523
PARITY_TRACKS = 6
PARITY_SEGMENTS_PER_TRACK = 10
PARITY_SNR_DB = (10.0, 30.0)
# What an export writes, in either format: an overwritten export drops these, rather than
# carrying them into the new folder as it carries a user's own files (`atomic_directory`).
EXPORT_FILES = (
    "saved_model.pb", "fingerprint.pb", "variables", "assets", "config.yaml",
    "model.tflite", "spectrum.tflite", "spec.json", "calibration.json",
)


class ParityError(ValueError):
    """A LiteRT conversion whose fingerprints are not those of the Keras model (`PARITY_GATES`).

    `parity` holds the measured numbers (`measure_parity`) and the gate.
    """

    def __init__(self, message, parity):
        super().__init__(message)
        self.parity = parity


def parity_waveforms(segment_samples, sample_rate):
    """The waveforms a LiteRT conversion is checked on: the `N_PROBES` probe waveforms plus
    `PARITY_TRACKS * PARITY_SEGMENTS_PER_TRACK` consecutive segments of generated music, each
    with white noise at a random SNR in `PARITY_SNR_DB`. Float32, (n, segment_samples); fixed."""
    from nnfp.catalogue.fingerprint import probe_waveforms
    from nnfp.corpus.synth import compose_track

    rng = np.random.default_rng(PARITY_SEED)
    n = PARITY_SEGMENTS_PER_TRACK
    music = np.concatenate([
        compose_track(PARITY_SEED + track, n * segment_samples / sample_rate, sample_rate)[: n * segment_samples]
        .reshape(n, segment_samples)
        for track in range(PARITY_TRACKS)
    ])  # (tracks * n, segment_samples)
    rms = np.maximum(np.sqrt(np.mean(np.square(music), axis=1, keepdims=True)), 1e-3)  # no two silent rows alike
    snr_db = rng.uniform(*PARITY_SNR_DB, size=(len(music), 1))
    music = music + rng.standard_normal(music.shape) * rms * 10.0 ** (-snr_db / 20.0)
    return np.concatenate([probe_waveforms(segment_samples, sample_rate), music.astype(np.float32)])


def measure_parity(reference, candidate):
    """How close `candidate` fingerprints (n, d) are to `reference` ones of the same waveforms.

    Returns a dict: `segments`, `cosine_min` and `cosine_mean` (row by row), and
    `own_neighbour`, the share of candidate rows whose nearest reference row is their own.
    """
    reference = np.asarray(reference, np.float64)
    candidate = np.asarray(candidate, np.float64)
    reference = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    candidate = candidate / np.maximum(np.linalg.norm(candidate, axis=1, keepdims=True), 1e-12)
    cosine = np.sum(reference * candidate, axis=1)
    nearest = np.argmax(candidate @ reference.T, axis=1)
    return {
        "segments": len(reference),
        "cosine_min": round(float(np.min(cosine)), 8),
        "cosine_mean": round(float(np.mean(cosine)), 8),
        "own_neighbour": round(float(np.mean(nearest == np.arange(len(reference)))), 6),
    }


def _check_parity(parity, quantize, what=None):
    """Raises `ParityError` when `parity` misses `PARITY_GATES[quantize]`; `what`: the path
    measured, when it is not `model.tflite` on the waveforms."""
    gate = PARITY_GATES[quantize]
    own = gate["own_neighbour"]
    if parity["cosine_min"] >= gate["min_cosine"] and (own is None or parity["own_neighbour"] >= own):
        return
    what = {"none": "float32 conversion", "float16": "float16 quantisation", "int8": "int8 quantisation"}[quantize] + (
        f" ({what})" if what else "")
    advice = {
        "none": "the converter changed the model; export a SavedModel instead (--format savedmodel)",
        "float16": "use --quantize none",
        "int8": "use --quantize float16",
    }[quantize]
    needs = f"cosine min >= {gate['min_cosine']:g}" + (f" and {100 * own:g} % own-nearest-neighbour" if own is not None else "")
    raise ParityError(
        f"{what} loses parity with the Keras model on {parity['segments']} segments: cosine mean "
        f"{parity['cosine_mean']:.6f}, min {parity['cosine_min']:.6f}, {100 * parity['own_neighbour']:.1f} % "
        f"own-nearest-neighbour (needs {needs}); {advice} (nothing was written)",
        parity,
    )


def _litert_serve(model, quantize, spectrum=False):
    """The `serve` function converted: waveforms -> {"fingerprint": ...}; with `spectrum`, the
    `spectrum` function: the waveforms' STFT power -> {"fingerprint": ...} (`FingerPrinter.from_power`).

    For int8 the mel filterbank stays float. Dynamic-range quantisation would quantise every
    matmul with a constant weight, the filterbank's included, and feed it the power spectrum
    (~1e-10 to 1e3, its quiet bins then lost to int8 rows; on the shipped model the least cosine
    fell to 0.70). Scaling the filterbank by a 1.0 that the converter cannot fold (from the
    batch size, unknown until run) leaves it an ordinary float matmul.
    """
    import tensorflow as tf

    def forward(inputs):
        return model.from_power(inputs) if spectrum else model(inputs, training=False)

    if quantize != "int8":
        return lambda inputs: {"fingerprint": forward(inputs)}
    frontend = model.frontend

    def serve(inputs):
        one = tf.cast(tf.minimum(tf.shape(inputs)[0], 1), tf.float32)  # 1.0 (0 for an empty batch)
        weights = frontend.mel_weights
        frontend.mel_weights = tf.constant(weights) * one
        try:
            return {"fingerprint": forward(inputs)}
        finally:
            frontend.mel_weights = weights

    return serve


def _convert_litert(model, quantize, spectrum=False):
    """The `.tflite` bytes of `model` (see `convert_to_litert`): its `serve` signature on the
    waveforms, or with `spectrum` its `spectrum` signature on their STFT power (a file of its
    own: the converter keeps one signature of several)."""
    import tempfile

    import tensorflow as tf

    from nnfp.lite import SIGNATURE, SPECTRUM_SIGNATURE

    if spectrum:
        frontend = model.frontend
        shape = (None, frontend.n_frames, frontend.n_fft // 2 + 1)
        spec, name = tf.TensorSpec(shape, tf.float32, name="power"), SPECTRUM_SIGNATURE
    else:
        spec, name = tf.TensorSpec((None, model.segment_samples), tf.float32, name="waveforms"), SIGNATURE
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=name, fn=_litert_serve(model, quantize, spectrum), input_signature=[spec])
    with tempfile.TemporaryDirectory(prefix="nnfp-litert-") as work:
        archive.write_out(work, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(work, signature_keys=[name])
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8: dynamic-range weights
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def convert_to_litert(model_path, folder, quantize="none", hop_samples=None):
    """Converts a Keras fingerprinter to LiteRT: writes `model.tflite` and `spec.json` into the
    existing `folder` (see `nnfp.lite`), once the conversion has passed its parity gate.

    The converted model and the Keras one fingerprint `parity_waveforms`; the numbers go into
    `spec["parity"]`. A conversion that misses `PARITY_GATES[quantize]` raises `ParityError`
    and writes nothing.

    Args:
        model_path: a run directory or `.keras` file.
        folder: an existing folder (an export's or index's temporary folder).
        quantize: "none" (float32), "float16" (float16 weights) or "int8" (int8 weights of the
            encoder and projection, dynamic-range; the mel front end stays float).
        hop_samples: the spec's default hop; default `segment_samples // 2`.

    Returns:
        The spec written.

    >>> spec = convert_to_litert("runs/demo", "exported/lite")
    >>> spec["parity"]["cosine_min"] >= 0.9999
    True
    """
    import tempfile

    import tensorflow as tf

    from nnfp.catalogue.fingerprint import model_digest
    from nnfp.lite import (
        LITERT_MODEL_FILE,
        LITERT_SPEC_FILE,
        LITERT_SPEC_VERSION,
        LITERT_SPECTRUM_FILE,
        SPEC_FORMAT,
        LiteFingerprinter,
    )
    from nnfp.outputs import atomic_write_bytes, atomic_write_json

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"`quantize` must be one of {QUANTIZE_MODES}. Received: quantize={quantize!r}")
    model_path = resolve_model_path(model_path)
    if not model_path.is_file():
        raise ValueError(
            f"{model_path}: LiteRT conversion needs a Keras model (a run directory or .keras file), "
            "not an exported folder"
        )
    embedder = load_fingerprinter(model_path)
    model = embedder.model
    segment_samples = int(model.segment_samples)
    sample_rate = int(model.frontend.sample_rate)
    spec = {
        "format": SPEC_FORMAT,
        "version": LITERT_SPEC_VERSION,
        "sample_rate": sample_rate,
        "segment_samples": segment_samples,
        "hop_samples": int(hop_samples or segment_samples // 2),
        "embedding_dim": int(model.embedding_dim),
        "keras_digest": model_digest(model_path),
        "quantize": quantize,
    }
    frontend = model.frontend
    spec["spectrum"] = {
        "n_fft": int(frontend.n_fft), "hop_length": int(frontend.hop_length), "pad": int(frontend.n_fft // 2),
        "n_frames": int(frontend.n_frames), "window": "hann",
    }
    data = _convert_litert(model, quantize)
    spectrum_data = _convert_litert(model, quantize, spectrum=True)
    waveforms = parity_waveforms(segment_samples, sample_rate)
    expected = np.concatenate([
        np.asarray(model(tf.constant(waveforms[first : first + CALL_ROWS]), training=False))
        for first in range(0, len(waveforms), CALL_ROWS)
    ])  # the plain Keras forward pass
    with tempfile.TemporaryDirectory(prefix="nnfp-litert-") as staged:
        (Path(staged) / LITERT_MODEL_FILE).write_bytes(data)
        (Path(staged) / LITERT_SPECTRUM_FILE).write_bytes(spectrum_data)
        (Path(staged) / LITERT_SPEC_FILE).write_text(json.dumps(spec))
        got = LiteFingerprinter(staged, spectrum=False).fingerprint(waveforms)
        got_spectrum = LiteFingerprinter(staged).fingerprint(waveforms)
    # both paths pass the gate: `model.tflite` (what other runtimes run) and the STFT in
    # NumPy with `spectrum.tflite` (what `LiteFingerprinter` runs)
    parity = measure_parity(expected, got)
    parity.update(seed=PARITY_SEED, gate=PARITY_GATES[quantize])
    _check_parity(parity, quantize)
    spectrum_parity = measure_parity(expected, got_spectrum)
    spectrum_parity.update(seed=PARITY_SEED, gate=PARITY_GATES[quantize])
    _check_parity(spectrum_parity, quantize, what=f"{LITERT_SPECTRUM_FILE} with the STFT in NumPy")
    spec["parity"] = parity
    spec["spectrum"]["parity"] = spectrum_parity
    folder = Path(folder)
    atomic_write_bytes(folder / LITERT_MODEL_FILE, data)
    atomic_write_bytes(folder / LITERT_SPECTRUM_FILE, spectrum_data)
    atomic_write_json(folder / LITERT_SPEC_FILE, spec)
    return spec


def export_litert(model_path, out_dir, quantize="none", overwrite=False, inputs=(), config=None):
    """Export a Keras fingerprinter as a LiteRT model folder, run without TensorFlow by
    `nnfp.lite.LiteFingerprinter`.

    Writes `model.tflite` and `spec.json` (`convert_to_litert`, parity-gated), the model's
    calibration as `calibration.json` when it has one (`x.keras` -> `x.calibration.json`) and
    the resolved config, when given, as `config.yaml`. `out_dir` follows the rules of
    `export_saved_model`: new, empty, or (with `overwrite=True`) an earlier nnfp export, not
    inside `inputs` or the model's folder; written whole or not at all.

    Raises:
        ParityError: the conversion misses its parity gate (nothing is written).

    >>> export_litert("runs/demo", "exported/lite", quantize="float16")
    PosixPath('exported/lite')
    """
    import shutil

    from nnfp.catalogue.calibration import INDEX_CALIBRATION_FILE, model_calibration_path
    from nnfp.config import save_config
    from nnfp.outputs import atomic_directory, claim_output_dir

    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"`quantize` must be one of {QUANTIZE_MODES}. Received: quantize={quantize!r}")
    claim_output_dir(out_dir, "export", overwrite=overwrite, inputs=(*inputs, model_path))
    resolved = resolve_model_path(model_path)
    calibration = model_calibration_path(resolved)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir, kind="export", own_names=EXPORT_FILES) as tmp:  # checked above
        convert_to_litert(resolved, tmp, quantize)
        if resolved.is_file() and calibration.is_file():
            shutil.copyfile(calibration, tmp / INDEX_CALIBRATION_FILE)
        if config is not None:
            save_config(config, tmp / "config.yaml")
    return out_dir
