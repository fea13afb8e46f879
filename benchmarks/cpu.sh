#!/usr/bin/env bash
# The CPU benchmark set, as run for the README: sam2-tiny-synthetic (the model trained here) on
# 256-px synthetic scenes with the default and SA-1B presets (the README's figures were taken when
# the model's input was 256 px too; it is now 512, its config's size); the micro SAM 2 (random
# weights) with the default preset at 256 and 1024 px, without score thresholds, with the SA-1B
# preset; Hiera-T's layout run at 512 px; and the pipeline's overhead.
# Usage: benchmarks/cpu.sh [OUT_DIR] [trained|random|all]
set -euo pipefail
out=${1:-benchmarks/results}
py=${PYTHON:-.venv/bin/python}
which=${2:-all}
bench() { "$py" -u benchmarks/generator_bench.py "$@" --device cpu; }
tiny=(--arch configs/models/sam2_tiny_synthetic.yaml --checkpoint configs/models/sam2_tiny_synthetic.pt)
if [ "$which" != random ]; then
# fast-shared: the decoder before re-association (only the first block's image side shared)
bench generator "${tiny[@]}" --images 16 --size 256 --variants fast,fast-shared,fast-compile \
    --name "sam2-tiny-synthetic default 256px" --out "$out/cpu_tiny_synthetic_256"
bench stages "${tiny[@]}" --images 8 --size 256 --variants fast-shared,fast \
    --name "sam2-tiny-synthetic default 256px stages" --out "$out/cpu_tiny_synthetic_stages_256"
bench generator "${tiny[@]}" --images 4 --size 256 --preset sa1b --rounds 1 \
    --variants fast-shared,fast \
    --name "sam2-tiny-synthetic SA-1B preset 256px" --out "$out/cpu_tiny_synthetic_sa1b_256"
bench generator "${tiny[@]}" --images 4 --size 1024 --rounds 1 --variants fast-shared,fast \
    --name "sam2-tiny-synthetic default, 1024-px scenes" --out "$out/cpu_tiny_synthetic_1024"
# the whole command, as a user times it: autolabel run, default generator against sam2's
"$py" -u benchmarks/cli_bench.py --images 32 --size 256 --out "$out/cpu_cli_256"
fi
[ "$which" = trained ] && exit 0
bench generator --images 16 --size 256 --variants fast,fast-compile \
    --name "micro default 256px" --out "$out/cpu_micro_256"
bench generator --images 4 --size 256 --set amg.pred_iou_thresh=0 amg.stability_score_thresh=0 \
    --name "micro default 256px, no score thresholds" --out "$out/cpu_micro_256_nothresh"
bench generator --images 2 --size 256 \
    --set amg.pred_iou_thresh=0 amg.stability_score_thresh=0 amg.box_nms_thresh=1.0 \
    --name "micro 256px, every mask kept (parity stress)" --out "$out/cpu_micro_256_all"
bench generator --images 8 --size 1024 --name "micro default 1024px" --out "$out/cpu_micro_1024"
bench generator --images 4 --size 512 --preset sa1b --rounds 1 \
    --name "micro SA-1B preset 512px" --out "$out/cpu_micro_sa1b_512"
bench generator --images 2 --size 512 --arch configs/sam2.1/sam2.1_hiera_t.yaml --rounds 1 \
    --image-size 512 --name "Hiera-T at 512 px, default preset" --out "$out/cpu_hiera_t_512"
bench pipeline --images 48 --size 256 --name "micro default 256px" --out "$out/cpu_pipeline_256"
