#!/usr/bin/env bash
# The CUDA benchmark set, as run for the README: SAM 2.1 Hiera-L layout (random weights),
# 1024-px scenes, 32x32 points; default preset, the same without score thresholds, SA-1B preset.
# Usage: benchmarks/gpu.sh OUT_DIR [compile]   (python3 must have torch with CUDA and the deps)
set -euo pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
bench() { python3 -u benchmarks/generator_bench.py generator --device cuda \
    --arch configs/sam2.1/sam2.1_hiera_l.yaml --size 1024 "$@"; }
if [[ "${2:-}" == "compile" ]]; then
    bench --images 16 --variants fast,fast-compile,fast-bf16-compile \
        --name "Hiera-L default, compiled" --out "$out/cuda_hiera_l_compile"
    exit
fi
bench --images 16 --variants fast,fast-bf16 \
    --name "Hiera-L default" --out "$out/cuda_hiera_l_default"
bench --images 8 --variants fast,fast-bf16 \
    --set amg.pred_iou_thresh=0 amg.stability_score_thresh=0 \
    --name "Hiera-L default, no score thresholds" --out "$out/cuda_hiera_l_nothresh"
bench --images 4 --rounds 1 --preset sa1b --variants fast,fast-bf16 \
    --name "Hiera-L SA-1B preset" --out "$out/cuda_hiera_l_sa1b"
