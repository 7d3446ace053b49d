#!/usr/bin/env bash
# Ablation of the default recipe (MODEL_CARD.md, "Ablation"): every row trains configs/debian.yaml
# for the same step budget with one change, then is scored on the held-out catalogue with the
# protocol of scripts/evaluate_model.sh (random cuts, unseen rooms with full tails, unseen noise).
#   scripts/ablation.sh OUT_DIR [STEPS] [N_QUERIES] [ROW ...]
# Rows run in order and are skipped when OUT_DIR/ROW/eval/results.json exists, so a stopped run
# resumes where it was: a finished training (ROW/run/model.keras) is not repeated, a stopped one
# resumes from its BackupAndRestore backup at the last finished epoch.
# Needs data/splits/music-train-half.json (half the training hours, whole packages) and
# data/irs-train-1s (`nnfp data make-irs data/irs-train-1s 200 --seed 0 --max-seconds 1.0`).
set -euo pipefail
out=$1; steps=${2:-600}; n=${3:-200}; shift $(( $# < 3 ? $# : 3 ))
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(base grid-anchors speech ir-1s gain lr-1e-4 half-data full-data)
nnfp=${NNFP:-nnfp}
for row in "${rows[@]}"; do
  case $row in
    base) change=();;
    half-data) change=(--set data.train=splits/music-train-half.json);;
    full-data) change=(--set data.train=splits/music-train-full.json);;  # 20.37 h (debian_splits.py --music)
    speech) change=(--set data.speech=splits/speech-train.json --set data.speech_prob=0.3);;
    gain) change=(--set "data.gain_db_range=[-6,6]");;
    grid-anchors) change=(--set data.random_anchors=false);;
    ir-1s) change=(--set data.impulse_responses=irs-train-1s);;
    lr-1e-4) change=(--set optimizer.learning_rate=1e-4);;
    *) echo "unknown row: $row" >&2; exit 2;;
  esac
  dir=$out/$row
  if [ -f "$dir/eval/results.json" ]; then echo "$row: done"; continue; fi
  if [ ! -f "$dir/run/model.keras" ]; then
  echo "$row: training $steps steps ($(date +%T))"
  $nnfp train --config configs/debian.yaml --run-dir "$dir/run" \
    --set train.epochs=1 --set train.steps_per_epoch="$steps" --set train.tensorboard=false \
    --set train.similarity_images=false "${change[@]}"
  fi
  echo "$row: evaluating ($(date +%T))"
  $nnfp index build data/eval/heldout "$dir/index" --model "$dir/run/model.keras" --index-type flat --quiet --overwrite
  $nnfp evaluate "$dir/index" --n-queries "$n" --lengths 1 3 10 --noise-dir data/eval/noise-test \
    --ir-dir data/irs-test --seed 0 --quiet --out "$dir/eval"
done
