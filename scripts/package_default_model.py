#!/usr/bin/env python
"""Copy a trained run's model into the package as the default model, without optimizer state.

    python scripts/package_default_model.py runs/debian [--checkpoint best] [--out DIR]
    python scripts/package_default_model.py --litert-only   # after `default.calibration.json` changes

Writes nnfp/weights/default.keras (weights + architecture, ~4 bytes per parameter)
and nnfp/weights/default.yaml (the run's resolved config), each atomically (`--out DIR`: in DIR
instead, a candidate to index, calibrate and evaluate before its very bytes are copied into the
package; a model's digest is that of its file), then
nnfp/weights/default.litert/ (the LiteRT copy: model.tflite, spectrum.tflite + spec.json, float32, checked
against default.keras by `nnfp.export.convert_to_litert`, plus default.calibration.json as
calibration.json when there is one).
"""

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

WEIGHTS = Path(__file__).resolve().parent.parent / "nnfp" / "weights"


def write_litert_copy(keras_path):
    """Writes `x.litert/` beside `x.keras`: package data, so without an output marker."""
    from nnfp.catalogue.calibration import INDEX_CALIBRATION_FILE, model_calibration_path
    from nnfp.export import convert_to_litert
    from nnfp.model_files import litert_copy_path

    target = litert_copy_path(keras_path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        spec = convert_to_litert(keras_path, tmp)  # raises (writes nothing) without parity
        calibration = model_calibration_path(keras_path)
        if calibration.is_file():
            shutil.copyfile(calibration, tmp / INDEX_CALIBRATION_FILE)
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = (target / "model.tflite").stat().st_size
    parity = spec["parity"]
    print(
        f"{keras_path} -> {target} ({size / 1e6:.1f} MB; cosine min {parity['cosine_min']:.7f} against "
        f"the Keras model on {parity['segments']} segments)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?")
    parser.add_argument("--checkpoint", choices=("best", "last", "final"), default="best")
    parser.add_argument("--litert-only", action="store_true", help="only convert the packaged default.keras again")
    parser.add_argument("--out", type=Path, default=WEIGHTS, help="folder of default.keras (default: the package's)")
    args = parser.parse_args()
    import nnfp.model  # noqa: F401  (registers the classes)

    if args.litert_only:
        write_litert_copy(args.out / "default.keras")
        return
    if args.run_dir is None:
        parser.error("RUN_DIR is required (or --litert-only)")
    run = Path(args.run_dir)
    source = run / "model.keras" if args.checkpoint == "final" else run / "checkpoints" / f"{args.checkpoint}.keras"
    trained = keras.saving.load_model(source)
    bare = type(trained).from_config(trained.get_config())
    bare.build((None, trained.segment_samples))
    bare.set_weights(trained.get_weights())
    x = np.random.default_rng(0).standard_normal((4, trained.segment_samples)).astype("float32")
    np.testing.assert_allclose(bare.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-6)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "default.tmp.keras"
    bare.save(tmp)
    os.replace(tmp, out / "default.keras")
    shutil.copyfile(run / "config.yaml", out / "default.yaml.tmp")
    os.replace(out / "default.yaml.tmp", out / "default.yaml")
    size = (out / "default.keras").stat().st_size
    print(f"{source} -> {out / 'default.keras'} ({size / 1e6:.1f} MB, {bare.count_params():,} parameters)")
    write_litert_copy(out / "default.keras")


if __name__ == "__main__":
    main()
