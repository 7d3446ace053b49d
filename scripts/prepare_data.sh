#!/usr/bin/env bash
# Every data folder that MODEL_CARD.md's recipes, evaluations and benchmarks read, made on a
# fresh machine in one command (the audio stays out of git):
#   scripts/prepare_data.sh [DATA_DIR]        # default: data
# - data/debian-{noise,speech,music-full,music}: real audio of Debian packages, 8 kHz WAV with a
#   manifest (../shared/data/fetch_debian_audio.py; sets noise-train, speech-train, train,
#   train-lean; set NNFP_FETCH to use another copy of that script);
# - data/splits/*.json: split by package (scripts/debian_splits.py);
# - data/irs-train (200 rooms, seed 0, 2.5 s) and data/irs-test (100 rooms, seed 1, 3 s);
# - data/eval/*, data/folds/*, data/generated/*: the evaluation folders (scripts/make_eval_folders.py).
# Needs pyroomacoustics (pip install -e '.[rooms]'), sox (with libsox-fmt-all) and ffmpeg; the
# last two are installed with apt-get when missing and run as root, otherwise it stops and names
# them. Resumable: a fetched set (its manifest.json written) and a
# complete room folder are kept; an interrupted step starts again. Measured 2026-12-08 on a fresh
# 2-core machine: see MODEL_CARD.md ("Data").
set -euo pipefail
root=${1:-data}
repo=$(cd "$(dirname "$0")/.." && pwd)
fetch=${NNFP_FETCH:-$repo/../shared/data/fetch_debian_audio.py}
if [ ! -f "$fetch" ]; then
  echo "prepare_data.sh: $fetch not found (the fetch script of shared/data; set NNFP_FETCH)" >&2
  exit 2
fi

missing=()
command -v sox > /dev/null || missing+=(sox libsox-fmt-all)
command -v ffmpeg > /dev/null || missing+=(ffmpeg)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "prepare_data.sh: needs the Debian packages ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! python -c "import pyroomacoustics" 2> /dev/null; then
  echo "prepare_data.sh: the rooms need pyroomacoustics: pip install -e '.[rooms]'" >&2
  exit 2
fi

mkdir -p "$root"
for pair in noise-train:debian-noise speech-train:debian-speech train:debian-music-full train-lean:debian-music; do
  set_name=${pair%%:*}; folder=$root/${pair#*:}
  if [ -f "$folder/manifest.json" ]; then
    echo "kept $folder (its manifest.json is written)"
  else
    python "$fetch" "$set_name" "$folder"
  fi
done

python "$repo/scripts/debian_splits.py" "$root"
python "$repo/scripts/debian_splits.py" "$root" --music debian-music-full

rooms() {  # FOLDER N SEED MAX_SECONDS
  local count
  count=$(find "$1" -maxdepth 1 -name '*.wav' 2> /dev/null | wc -l)
  if [ "$count" -eq "$2" ]; then
    echo "kept $1 ($2 rooms)"
  else
    nnfp data make-irs "$1" "$2" --seed "$3" --max-seconds "$4"
  fi
}
rooms "$root/irs-train" 200 0 2.5
rooms "$root/irs-test" 100 1 3

python "$repo/scripts/make_eval_folders.py" "$root"
echo "prepare_data.sh: $root is ready"
