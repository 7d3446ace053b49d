#!/usr/bin/env bash
# Held-out evaluation of a fingerprinter on real music (MODEL_CARD.md), end to end through the CLI:
#   scripts/evaluate_model.sh MODEL.keras OUT_DIR [N_QUERIES] [CALIBRATION_OUT]
# Needs the Debian data of configs/debian.yaml; data/eval/* are folders of links made from
# data/splits/*.json (scripts/debian_splits.py):
#   heldout       - the indexed catalogue, never trained on (warzone2100, drascula, pushover: 5.34 h)
#   unknown-train - the training music (8.52 h, 11 packages), NOT indexed: out-of-catalogue queries
#                   for the threshold calibration (many packages: a stable 1 % tail)
#   unknown-eval  - music never trained on and NOT indexed (lordsawar-data, extremetuxracer-data):
#                   the false-match rate reported
#   noise-test, irs-test - noise packages and simulated rooms (3 s tails) never used in training
#   data/generated/KIND - generated signals (nnfp.corpus.signals, 20 x 30 s of each kind)
# CALIBRATION_OUT (e.g. nnfp/weights/default.calibration.json) also ships the thresholds with the model.
set -euo pipefail
model=$1; out=$2; n=${3:-300}; calibration=${4:-}
noise=(--noise-dir data/eval/noise-test --ir-dir data/irs-test)
nnfp index build data/eval/heldout "$out/index" --model "$model" --index-type flat --quiet --overwrite
# The thresholds are fitted on training audio only (music, noise and speech of the training
# packages, six generated kinds), degraded with the training noise and rooms: nothing of what the
# evaluation below reports on (unknown-eval, noise-test, speech-test, irs-test, the other generated
# kinds). The shipped calibration's recipe: 1,000 queries of each of the first seven kinds, 300 of
# DTMF and clicks (resumable from $out/calibration-work).
nnfp index calibrate "$out/index" --unknown data/eval/unknown-train data/eval/noise-train data/eval/speech-train \
  data/generated/tones data/generated/ringback data/generated/applause data/generated/busy data/generated/dtmf \
  data/generated/clicks --n-queries 150 --n-unknown 1000 1000 1000 1000 1000 1000 1000 300 300 \
  --lengths 1 3 5 10 --speeds 0.92:1.08 --noise-dir data/eval/noise-train --ir-dir data/irs-train --seed 1 \
  --work-dir "$out/calibration-work" --quiet
if [ -n "$calibration" ]; then cp "$out/index/calibration.json" "$calibration"; fi
for protocol in noisy noisy-aligned clean; do
  case $protocol in
    noisy) extra=("${noise[@]}");;
    noisy-aligned) extra=("${noise[@]}" --aligned);;
    clean) extra=(--clean);;
  esac
  nnfp evaluate "$out/index" --n-queries "$n" --unknown-dir data/eval/unknown-eval "${extra[@]}" --seed 0 --quiet --out "$out/$protocol"
done
