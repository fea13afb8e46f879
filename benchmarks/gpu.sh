#!/usr/bin/env bash
# The CUDA benchmark set, as run for the README: SAM 2.1 Hiera-L layout (random weights),
# 1024-px scenes, 32x32 points.
# Usage: benchmarks/gpu.sh OUT_DIR [STEP ...]; steps: stages default nothresh sa1b compile
# (all but compile when none is named). python3 must have torch with CUDA and the deps.
set -uo pipefail
out=${1:-benchmarks/results}
shift || true
steps=${*:-stages default nothresh sa1b}
mkdir -p "$out"
bench() { timeout "${LIMIT:-300}" python3 -u benchmarks/generator_bench.py "$1" --device cuda \
    --arch configs/sam2.1/sam2.1_hiera_l.yaml --size 1024 "${@:2}" 2>&1 \
    | grep --line-buffered -v -i warn; }
for step in $steps; do
    case $step in
    stages) bench stages --images 8 --variants fast-shared,fast,fast-bf16 --out "$out/cuda_hiera_l_stages" ;;
    default) bench generator --images 12 --variants fast-shared,fast,fast-tf32,fast-bf16 \
        --name "Hiera-L default" --out "$out/cuda_hiera_l_default" ;;
    nothresh) bench generator --images 4 --rounds 1 --variants fast,fast-bf16 \
        --set amg.pred_iou_thresh=0 amg.stability_score_thresh=0 \
        --name "Hiera-L default, no score thresholds" --out "$out/cuda_hiera_l_nothresh" ;;
    sa1b) bench generator --images 3 --rounds 1 --preset sa1b --variants fast,fast-bf16 \
        --name "Hiera-L SA-1B preset" --out "$out/cuda_hiera_l_sa1b" ;;
    compile) bench generator --images 8 --variants fast-bf16,fast-bf16-compile \
        --name "Hiera-L default, compiled" --out "$out/cuda_hiera_l_compile" ;;
    esac
done
