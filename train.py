#!/usr/bin/env python
"""Train a fingerprinter: `python train.py --config configs/X.yaml --run-dir DIR [--set k=v ...]`.

Same as `nnfp train`.
"""

import sys

from nnfp.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
