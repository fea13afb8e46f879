#!/usr/bin/env bash
# A real two-node Ray cluster on this machine (a head and one worker node, on loopback, with
# token authentication), the demo run submitted to it with `ray job submit`, and the cluster
# stopped again. Usage: jobs/cluster_demo.sh OUTPUT_DIR CHECKPOINT
set -euo pipefail
cd "$(dirname "$0")/.."
OUTPUT=$(realpath -m "${1:-cluster-demo-output}")
CHECKPOINT=$(realpath "${2:-.cache/sam2.1_hiera_micro_random.pt}")
BIN=$(realpath .venv/bin)
PY="$BIN/python"

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WORK=$(mktemp -d /tmp/autolabel-cluster.XXXXXX)
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="$WORK/auth_token"
"$PY" -c 'import secrets, sys; open(sys.argv[1], "w").write(secrets.token_hex(32))' "$RAY_AUTH_TOKEN_PATH"
chmod 600 "$RAY_AUTH_TOKEN_PATH"

GCS_PORT=$(free_port); DASHBOARD_PORT=$(free_port)
common=(--node-ip-address=127.0.0.1 --num-cpus=1 --num-gpus=0 --disable-usage-stats)

stop_cluster() {
  # Stop only this cluster (`ray stop` would stop every Ray on the machine): the processes
  # that name its temp dir or GCS port, and all their children.
  "$PY" - "$WORK" "$GCS_PORT" <<'PYEOF' || true
import os, sys, time, psutil
work, port = sys.argv[1], f":{sys.argv[2]}"
me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
def ours():
    roots = [p for p in psutil.process_iter(["cmdline"]) if p.pid not in me
             and any(work in a or a.endswith(port) for a in (p.info["cmdline"] or []))]
    found = {c.pid: c for p in roots for c in [p, *p.children(recursive=True)]}
    return [p for p in found.values() if p.pid not in me and p.is_running()
            and p.status() != psutil.STATUS_ZOMBIE]
for signal_them in (psutil.Process.terminate, psutil.Process.kill):
    for proc in ours():
        try:
            signal_them(proc)
        except psutil.Error:
            pass
    time.sleep(3)
PYEOF
  rm -rf "$WORK"
}
trap stop_cluster EXIT

echo "== starting the head node (GCS 127.0.0.1:$GCS_PORT, jobs API :$DASHBOARD_PORT)"
"$BIN/ray" start --head "${common[@]}" --port="$GCS_PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
  --ray-client-server-port="$(free_port)" --dashboard-agent-listen-port="$(free_port)" \
  --temp-dir="$WORK/ray" >"$WORK/head.log" 2>&1 || { cat "$WORK/head.log"; exit 1; }

echo "== starting a worker node"
"$BIN/ray" start --address="127.0.0.1:$GCS_PORT" "${common[@]}" \
  --dashboard-agent-listen-port="$(free_port)" --temp-dir="$WORK/ray" >"$WORK/worker.log" 2>&1 \
  || { cat "$WORK/worker.log"; exit 1; }

RAY_ADDRESS="127.0.0.1:$GCS_PORT" "$PY" - <<'PYEOF'
import ray
ray.init(logging_level="ERROR")
alive = [n for n in ray.nodes() if n["Alive"]]
print(f"== cluster up: {len(alive)} nodes, {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
assert len(alive) == 2, alive
PYEOF

echo "== submitting the demo run"
"$BIN/ray" job submit --address "http://127.0.0.1:$DASHBOARD_PORT" -- \
  "$BIN/autolabel" run --input "$PWD/samples/scenes/images" --output "$OUTPUT" --overwrite --no-progress \
  model.config="$PWD/configs/models/sam2.1_hiera_micro.yaml" model.checkpoint="$CHECKPOINT" \
  amg.points_per_side=8 amg.pred_iou_thresh=0 amg.stability_score_thresh=0 \
  runtime.shard_size=3 runtime.cpus_per_actor=1

echo "== output in $OUTPUT:"
ls -R "$OUTPUT" | head -20
