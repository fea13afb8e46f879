#!/usr/bin/env bash
# The exact commands that made the first sam2-tiny-synthetic, the click-only model that the box runs
# of training/README.md start from (on one NVIDIA H100; about 12 minutes of training in all; at
# 256-px input, which the model config no longer has by default). Phase 1 ran with `--minutes 8`,
# which chose the schedule written here as --steps/--decay-from; phases 2 and 3 resume from phase
# 1's state.pt with a fresh cosine decay each. Batches depend only on (seed, step), so the data is
# the same whatever --workers is. DEVICE=cpu works too, but slowly: 2 CPU cores took about 1.9 s per
# step of 64 prompts in the earlier trials, so these 512-prompt steps would take about a day.
# Usage: training/reproduce.sh [RUN_FOLDER]
set -euo pipefail
run=${1:-runs/sam2_tiny_synthetic}
py=${PYTHON:-python3}
recipe=(--scenes-per-step 16 --prompts-per-scene 32 --loss-size 256 --curriculum-steps 1000
    --input-size 256
    --peak-lr 3e-4 --eval-every 250 --device "${DEVICE:-cuda}" --workers "${WORKERS:-14}")
"$py" -m training.train --out "$run" "${recipe[@]}" --steps 2336 --decay-from 1636
"$py" -m training.train --out "$run" "${recipe[@]}" --steps 3900 --decay-from 2336
"$py" -m training.train --out "$run" "${recipe[@]}" --steps 5400 --decay-from 3900 \
    --export "$run/sam2_tiny_synthetic.pt"  # float16 copy: the shipped file
