#!/usr/bin/env bash
# A fingerprinter on 3 held-out folds of real music (MODEL_CARD.md, "Held-out folds"), end to end:
#   scripts/evaluate_folds.sh MODEL.keras OUT_DIR [N_QUERIES]
# data/folds/fold-K: the music of packages never trained on, in 3 folds of different genres
# (scripts/make_eval_folders.py); each fold is the catalogue's queried part, the other two folds
# are indexed beside it (--dummy-dir data/folds/not-K), so every fold is searched against the same
# 96 tracks. Queries cut at random times, through unseen rooms (irs-test) and noise (noise-test)
# at 0-10 dB, ranked with no threshold (--min-score 0: the model, not the decision). The table:
# scripts/fold_table.py OUT_DIR.
set -euo pipefail
model=$1; out=$2; n=${3:-300}
for k in 1 2 3; do
  nnfp evaluate --db "data/folds/fold-$k" --dummy-dir "data/folds/not-$k" --model "$model" --index-type flat \
    --n-queries "$n" --noise-dir data/eval/noise-test --ir-dir data/irs-test --min-score 0 --seed "$k" \
    --quiet --out "$out/fold-$k"
done
python scripts/fold_table.py "$out"
