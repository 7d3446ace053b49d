"""LiteRT export: fingerprints of the Keras model without TensorFlow, parity-gated, in nnfp output folders."""

import json

import numpy as np
import pytest

from nnfp.cli import main
from nnfp.lite import LiteFingerprinter, read_spec

RATE = 8000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model):
    """An untrained tiny model with a calibration beside it, and its fingerprints of generated music."""
    from nnfp.corpus.synth import compose_track

    root = tmp_path_factory.mktemp("litert")
    model = tiny_model(root / "tiny.keras", seed=1)
    (root / "tiny.calibration.json").write_text(json.dumps({"lengths_s": [1.0], "min_score": [0.8]}))
    segments = np.stack([compose_track(seed, 3.0, RATE)[: model.segment_samples] for seed in range(500, 517)])
    segments += 0.01 * np.random.default_rng(0).standard_normal(segments.shape).astype("float32")
    return root, segments, model.predict(segments, verbose=0)


def _cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_litert_export_gives_the_keras_fingerprints(tiny):
    from nnfp.catalogue.fingerprint import model_digest
    from nnfp.export import export_litert
    from nnfp.outputs import output_kind

    root, segments, expected = tiny
    # Over an earlier SavedModel export: its files go, a file the user put there stays.
    assert main(["export", str(root / "tiny.keras"), str(root / "lite")]) == 0
    (root / "lite" / "notes.txt").write_text("mine")
    out = export_litert(root / "tiny.keras", root / "lite", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        ".nnfp-output.json", "calibration.json", "model.tflite", "notes.txt", "spec.json", "spectrum.tflite",
    ]
    spec = read_spec(out)
    assert {key: spec[key] for key in ("format", "version", "sample_rate", "segment_samples", "hop_samples")} == {
        "format": "nnfp-litert", "version": 2, "sample_rate": RATE, "segment_samples": 8000, "hop_samples": 4000,
    }
    stft = {key: spec["spectrum"][key] for key in ("n_fft", "hop_length", "pad", "n_frames", "window")}
    assert stft == {"n_fft": 1024, "hop_length": 256, "pad": 512, "n_frames": 32, "window": "hann"}
    assert spec["spectrum"]["parity"]["segments"] == 63 and spec["spectrum"]["parity"]["cosine_min"] >= 0.9999
    assert (spec["embedding_dim"], spec["quantize"]) == (16, "none")
    assert spec["keras_digest"] == model_digest(root / "tiny.keras")
    assert spec["parity"]["segments"] == 63 and spec["parity"]["cosine_min"] >= 0.9999
    assert (out / "calibration.json").read_bytes() == (root / "tiny.calibration.json").read_bytes()
    assert output_kind(out) == "export"
    lite = LiteFingerprinter(out)
    assert lite.front_end == "numpy"  # the STFT in NumPy, then spectrum.tflite
    got = lite.fingerprint(segments)  # 17 rows: a full call of 16 and a padded one
    assert got.shape == (17, 16)
    assert _cosines(got, expected).min() >= 0.9999
    np.testing.assert_allclose(lite.fingerprint(segments[:1]), got[:1], atol=1e-6)
    whole = LiteFingerprinter(out, spectrum=False)  # model.tflite on the waveforms, as a phone runs it
    assert whole.front_end == "litert"
    assert _cosines(whole.fingerprint(segments), expected).min() >= 0.9999
    assert _cosines(whole.fingerprint(segments), got).min() >= 0.99999


def test_power_spectrum_against_a_direct_dft():
    """`power_spectrum` (the STFT the spectrum path computes outside the model) against a
    float64 DFT written out from its definition, frame by frame."""
    from nnfp.lite import power_spectrum

    rng = np.random.default_rng(3)
    waveforms = rng.standard_normal((3, 200)).astype(np.float32)
    n_fft, hop, pad = 64, 24, 32
    n_frames = 1 + (200 + 2 * pad - n_fft) // hop
    got = power_spectrum(waveforms, n_fft, hop, pad, n_frames)
    assert got.shape == (3, n_frames, n_fft // 2 + 1) and got.dtype == np.float32
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
    basis = np.exp(-2j * np.pi * np.outer(n, np.arange(n_fft // 2 + 1)) / n_fft)
    padded = np.pad(waveforms.astype(np.float64), ((0, 0), (pad, pad)))
    for frame in range(n_frames):
        segment = padded[:, frame * hop : frame * hop + n_fft] * window
        np.testing.assert_allclose(got[:, frame], np.abs(segment @ basis) ** 2, rtol=1e-4, atol=1e-4)


def test_the_front_end_from_the_numpy_power_spectrum_is_the_models():
    """`LogMelSpectrogram.from_power` of `power_spectrum` equals the layer on the waveforms
    (the split the spectrum path makes), to float rounding, in dB."""
    from nnfp.frontend import LogMelSpectrogram
    from nnfp.lite import power_spectrum

    layer = LogMelSpectrogram()
    waveforms = (0.1 * np.random.default_rng(4).standard_normal((5, 8000))).astype(np.float32)
    waveforms[1] *= 1e-3  # a quiet row: the floor of top_db and amin
    power = power_spectrum(waveforms, layer.n_fft, layer.hop_length, layer.n_fft // 2, layer.n_frames)
    np.testing.assert_allclose(np.asarray(layer.from_power(power)), np.asarray(layer(waveforms)), atol=2e-3)


def test_an_export_without_spectrum_tflite_still_runs_and_damaged_specs_are_named(tiny, tmp_path):
    """A folder of spec version 1 (model.tflite alone) runs as before; a spec whose
    `spectrum` is missing its file or is malformed is refused, naming what is wrong."""
    import shutil

    root, segments, expected = tiny
    source = root / "lite"
    if not (source / "spectrum.tflite").exists():
        from nnfp.export import export_litert

        export_litert(root / "tiny.keras", source, overwrite=True)
    old = tmp_path / "old"
    shutil.copytree(source, old)
    (old / "spectrum.tflite").unlink()
    spec = json.loads((old / "spec.json").read_text())
    settings = spec.pop("spectrum")
    spec["version"] = 1
    (old / "spec.json").write_text(json.dumps(spec))
    lite = LiteFingerprinter(old)
    assert lite.front_end == "litert"
    assert _cosines(lite.fingerprint(segments), expected).min() >= 0.9999

    (old / "spec.json").write_text(json.dumps({**spec, "spectrum": settings}))
    with pytest.raises(ValueError, match=r"old: spec.json names spectrum.tflite, which is missing"):
        LiteFingerprinter(old)
    shutil.copyfile(source / "spectrum.tflite", old / "spectrum.tflite")
    assert LiteFingerprinter(old).front_end == "numpy"
    for bad in ({**settings, "hop_length": 250}, {**settings, "n_fft": "1024"}, {**settings, "window": "hamming"}):
        (old / "spec.json").write_text(json.dumps({**spec, "spectrum": bad}))
        with pytest.raises(ValueError, match=r"old/spec.json: not an nnfp LiteRT model spec \(`spectrum`"):
            LiteFingerprinter(old)


def test_float16_export_from_the_cli(tiny, capsys):
    root, segments, expected = tiny
    out = root / "lite16"
    assert main(["export", str(root / "tiny.keras"), str(out), "--format", "litert", "--quantize", "float16"]) == 0
    assert "LiteRT, float16" in capsys.readouterr().out
    assert read_spec(out)["quantize"] == "float16"
    # Weights in half the bytes (the graph itself is most of a tiny model's file).
    assert (out / "model.tflite").stat().st_size < 0.7 * (root / "lite" / "model.tflite").stat().st_size
    assert _cosines(LiteFingerprinter(out).fingerprint(segments), expected).min() >= 0.9999


def test_int8_is_refused_without_parity(tiny, capsys, monkeypatch):
    import nnfp.export as export

    root, segments, expected = tiny
    out = root / "lite8"
    # The tiny model keeps int8 parity (least cosine ~0.9997, 100 % own-nearest-neighbour)...
    assert main(["export", str(root / "tiny.keras"), str(out), "--format", "litert", "--quantize", "int8"]) == 0
    capsys.readouterr()
    spec = read_spec(out)
    assert spec["quantize"] == "int8" and spec["parity"]["own_neighbour"] == 1.0
    assert _cosines(LiteFingerprinter(out).fingerprint(segments), expected).min() >= 0.999
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # ...so the refusal is shown with a gate it misses: the measured numbers, and nothing written.
    monkeypatch.setitem(export.PARITY_GATES, "int8", {"min_cosine": 0.99999, "own_neighbour": 1.0})
    args = ["export", str(root / "tiny.keras"), str(out), "--format", "litert", "--quantize", "int8"]
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "int8 quantisation loses parity with the Keras model on 63 segments: cosine mean 0.99" in err
    assert "100.0 % own-nearest-neighbour (needs cosine min >= 0.99999 and 100 % own-nearest-neighbour); " in err
    assert "use --quantize float16 (nothing was written)" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier export, as it was
    with pytest.raises(export.ParityError) as caught:
        export.convert_to_litert(root / "tiny.keras", root, "int8")
    assert caught.value.parity["cosine_min"] < 0.99999
    assert not (root / "model.tflite").exists() and not (root / "spec.json").exists()


def test_quantize_is_refused_for_a_saved_model(tiny, capsys):
    root, _, _ = tiny
    assert main(["export", str(root / "tiny.keras"), str(root / "sm"), "--quantize", "float16"]) == 2
    assert "--quantize applies to --format litert only" in capsys.readouterr().err
    assert not (root / "sm").exists()


def test_litert_export_refuses_a_folder_of_user_files(tiny, capsys):
    root, _, _ = tiny
    notes = root / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("keep")
    assert main(["export", str(root / "tiny.keras"), str(notes), "--format", "litert"]) == 2
    assert "is not an nnfp exported model" in capsys.readouterr().err
    assert [p.name for p in notes.iterdir()] == ["keep.txt"] and (notes / "keep.txt").read_text() == "keep"


def test_packaged_litert_model_is_the_default_keras_model():
    import keras

    import nnfp.model  # noqa: F401  (registers the classes)
    from nnfp.catalogue.fingerprint import DEFAULT_MODEL_PATH, model_digest
    from nnfp.corpus.synth import compose_track
    from nnfp.outputs import MARKER_FILE

    folder = DEFAULT_MODEL_PATH.with_name("default.litert")
    spec = read_spec(folder)
    assert spec["keras_digest"] == model_digest(DEFAULT_MODEL_PATH)
    assert spec["quantize"] == "none" and spec["parity"]["cosine_min"] >= 0.9999
    assert (folder / "calibration.json").read_bytes() == DEFAULT_MODEL_PATH.with_name("default.calibration.json").read_bytes()
    assert not (folder / MARKER_FILE).exists()  # package data, not an export folder
    model = keras.saving.load_model(DEFAULT_MODEL_PATH)
    segments = compose_track(7, 4.0, RATE).reshape(4, model.segment_samples)
    lite = LiteFingerprinter(folder)
    assert spec["version"] == 2 and lite.front_end == "numpy" and spec["spectrum"]["parity"]["cosine_min"] >= 0.9999
    assert (lite.sample_rate, lite.segment_samples, lite.embedding_dim) == (RATE, model.segment_samples, 128)
    assert _cosines(lite.fingerprint(segments), np.asarray(model(segments, training=False))).min() >= 0.9999
