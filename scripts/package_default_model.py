#!/usr/bin/env python
"""Copy a trained run's model into the package as the default model, without optimizer state.

    python scripts/package_default_model.py runs/debian [--checkpoint best]

Writes nnfp/weights/default.keras (weights + architecture, ~4 bytes per parameter)
and nnfp/weights/default.yaml (the run's resolved config), each atomically.
"""

import argparse
import os
import shutil
from pathlib import Path

import keras
import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--checkpoint", choices=("best", "last", "final"), default="best")
    args = parser.parse_args()
    import nnfp.model  # noqa: F401  (registers the classes)

    run = Path(args.run_dir)
    source = run / "model.keras" if args.checkpoint == "final" else run / "checkpoints" / f"{args.checkpoint}.keras"
    trained = keras.saving.load_model(source)
    bare = type(trained).from_config(trained.get_config())
    bare.build((None, trained.segment_samples))
    bare.set_weights(trained.get_weights())
    x = np.random.default_rng(0).standard_normal((4, trained.segment_samples)).astype("float32")
    np.testing.assert_allclose(bare.predict(x, verbose=0), trained.predict(x, verbose=0), atol=1e-6)

    out = Path(__file__).resolve().parent.parent / "nnfp" / "weights"
    out.mkdir(exist_ok=True)
    tmp = out / "default.tmp.keras"
    bare.save(tmp)
    os.replace(tmp, out / "default.keras")
    shutil.copyfile(run / "config.yaml", out / "default.yaml.tmp")
    os.replace(out / "default.yaml.tmp", out / "default.yaml")
    size = (out / "default.keras").stat().st_size
    print(f"{source} -> {out / 'default.keras'} ({size / 1e6:.1f} MB, {bare.count_params():,} parameters)")


if __name__ == "__main__":
    main()
