#!/usr/bin/env bash
# The GPU check, as one script for a lent CUDA machine with no network (benchmarks/README.md, "GPU
# benchmark"): the GPU benchmark, then the orchestrator end to end on the GPU (default packing,
# bf16 + channels_last) for a Lab 1 and a Lab 4 quick study. Everything lands in $OUT (or $1).
# Needs ray/optuna/mlflow/datasets installed first (../shared/gpu/README.md, steps 1-3) for the
# end-to-end part; gpu.py alone needs only torch, torchvision, transformers and peft.
set -uo pipefail
out=${1:-${OUT:?give a results folder}}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; python3 -c \
  "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } \
  > "$out/machine.txt" 2>&1

timeout 260 python3 benchmarks/gpu.py --out "$out" --budget-s ${GPU_BUDGET_S:-200} ${GPU_ARGS:-} 2>&1 | tee "$out/gpu.log"

work=$(mktemp -d)
study() {  # lab, study, seconds, extra args...
  local lab=$1 name=$2 limit=$3; shift 3
  local start=$SECONDS
  timeout "$limit" python3 orchestrator/run.py "$lab" --study "$name" --profile quick --quiet \
    --mlflow-uri "sqlite:///$out/mlflow.db" --storage "$work/ray_results" --report-dir "$out/report-$lab" "$@" \
    > "$out/e2e-$lab-$name.log" 2>&1
  local rc=$?
  echo "e2e $lab/$name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/e2e.txt"
  tail -5 "$out/e2e-$lab-$name.log"
}
study lab1 residual-cnn 120
study lab4 adv-train 100 --num-samples 2
python3 - "$out" <<'PY' 2>&1 | tee -a "$out/e2e.txt"
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
for exp in client.search_experiments():
    for run in client.search_runs([exp.experiment_id], max_results=200):
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        if "mlflow.parentRunId" in tags:
            continue
        best = {k: round(v, 4) for k, v in metrics.items() if k.startswith("best_")}
        print(exp.name, tags.get("study"), run.info.status, "gpus_per_trial", params.get("gpus_per_trial"),
              "trials", metrics.get("trials_reported"), best)
PY
