#!/usr/bin/env bash
# Held-out evaluation of a fingerprinter on real music (MODEL_CARD.md), end to end through the CLI:
#   scripts/evaluate_model.sh MODEL.keras OUT_DIR [N_QUERIES]
# Needs the Debian data of configs/debian.yaml (data/eval/* is made from data/splits/*.json):
#   heldout      - the indexed catalogue, never trained on (warzone2100, drascula, pushover: 5.34 h)
#   unknown-cal  - music NOT indexed, for the threshold calibration (hyperrogue-music)
#   unknown-eval - music NOT indexed, for the false-match rate (lordsawar-data, extremetuxracer-data)
#   noise-test, irs-test - noise packages and simulated rooms (3 s tails) never used in training
set -euo pipefail
model=$1; out=$2; n=${3:-300}
noise=(--noise-dir data/eval/noise-test --ir-dir data/irs-test)
nnfp index build data/eval/heldout "$out/index" --model "$model" --index-type flat --quiet --overwrite
nnfp index calibrate "$out/index" --unknown data/eval/unknown-cal --n-queries "$n" "${noise[@]}" --seed 1 --quiet
nnfp evaluate "$out/index" --n-queries "$n" --unknown-dir data/eval/unknown-eval "${noise[@]}" --seed 0 --quiet --out "$out/noisy"
nnfp evaluate "$out/index" --n-queries "$n" --unknown-dir data/eval/unknown-eval "${noise[@]}" --seed 0 --quiet --aligned --out "$out/noisy-aligned"
nnfp evaluate "$out/index" --n-queries "$n" --unknown-dir data/eval/unknown-eval --clean --seed 0 --quiet --out "$out/clean"
