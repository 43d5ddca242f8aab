#!/usr/bin/env bash
# The gpt baseline for 300 s on a CUDA GPU: val_bpb, MFU, peak memory.
#   bash benchmarks/gpu_baseline.sh [budget_seconds] [data_source]
# climbmix needs the network; stdlib works offline (a smaller, different corpus).
set -euo pipefail
budget="${1:-300}"
source="${2:-climbmix}"
repo="$(mktemp -d)/gpu"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
autoresearch init "$repo" --baseline gpt
cd "$repo"
sed -i "s/^source = .*/source = \"$source\"/" autoresearch.toml
autoresearch prepare
autoresearch run --budget "$budget"
python - <<'PY'
import json
record = json.loads(open(".autoresearch/ledger.jsonl").read().splitlines()[-1])
print(json.dumps({k: record[k] for k in ("val_bpb", "mfu_percent", "memory_gb", "tokens", "num_steps", "timings")}, indent=1))
PY
