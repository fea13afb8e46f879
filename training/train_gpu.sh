#!/usr/bin/env bash
# Train sam2-tiny-synthetic on one GPU: three recipes side by side (the model is small, so one
# H100 runs all three at once), each for MINUTES of training. Writes OUT/{a,b,c}.pt (float16
# copies of the models, official layout) and OUT/logs.tar.gz (each run's metrics.jsonl,
# run.json and output), refreshed while training, so a run cut short still leaves its latest.
# Usage: training/train_gpu.sh OUT [MINUTES]; python3 needs torch and the package's deps
# (on the lent GPU machine, PYTHONPATH points at a folder holding sam2, hydra, pycocotools).
set -uo pipefail
out=${1:?OUT folder}
minutes=${2:-7.5}
runs=${RUNS:-/tmp/autolabel-train}
device=${DEVICE:-cuda}
workers=${WORKERS:-4}
scenes=${SCENES:-16}
prompts=${PROMPTS:-32}
mkdir -p "$out" "$runs"
common=(--device "$device" --workers "$workers" --minutes "$minutes" --eval-every "${EVAL_EVERY:-250}"
    --save-every 45 --scenes-per-step "$scenes" --prompts-per-scene "$prompts"
    --loss-size "${LOSS_SIZE:-256}" --curriculum-steps "${CURRICULUM:-1000}"
    --input-size "${INPUT_SIZE:-256}")
declare -A recipe=(
    [a]="--peak-lr 3e-4"
    [b]="--peak-lr 3e-4 --pixels-per-scene 32 --boxes-per-scene 8 --instance-weight 0.5"
    [c]="--peak-lr 6e-4 --warmup 100 --pixels-per-scene 32 --boxes-per-scene 8 --instance-weight 0.5"
)
pids=()
for name in a b c; do
    # shellcheck disable=SC2086
    python3 -u -m training.train --out "$runs/$name" --export "$out/$name.pt" \
        "${common[@]}" ${recipe[$name]} >"$runs/$name.log" 2>&1 &
    pids+=($!)
done
pack() {  # tar exits 1 when a log grew while it read: still a usable archive
    tar -czf "$out/logs.tar.gz.tmp" --exclude='*.pt' --exclude='*.tmp' -C "$runs" .
    [ $? -le 1 ] && mv "$out/logs.tar.gz.tmp" "$out/logs.tar.gz"
}
while kill -0 "${pids[@]}" 2>/dev/null; do
    sleep 20
    pack
    for name in a b c; do tail -n 1 "$runs/$name.log" | cut -c1-220; done
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
pack
for name in a b c; do echo "== $name"; tail -n 3 "$runs/$name.log"; done
exit $status
