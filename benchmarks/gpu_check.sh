#!/usr/bin/env bash
# The gpt baseline on one CUDA GPU, offline, in two stages that each fit a short call.
#
#   bash benchmarks/gpu_check.sh bundle [PYVER]  # here, with PyPI: the wheels the GPU lacks
#   bash benchmarks/gpu_check.sh stage1          # GPU: 60 s with SSSL, then 60 s with L
#   bash benchmarks/gpu_check.sh stage2          # GPU: the 300 s run users compare against
#   bash benchmarks/gpu_check.sh dry-run         # CPU: stage1's steps at the shrunk CPU size
#
# The GPU machine has torch (CUDA), numpy, pyarrow, tiktoken, safetensors, pluggy, click,
# tabulate and matplotlib, and no network: `bundle` downloads the rest of what `autoresearch
# run` imports (BUNDLED) as wheels for its Python (PYVER, default 3.12) and builds this
# project's wheel, all into $WHEELS (git-ignored; carry it to the GPU machine). Each stage
# installs them with --no-deps into a fresh venv that sees the machine's packages, runs on
# the offline stdlib corpus with an 8192-token BPE, and prints tokens/s, MFU, memory,
# compile, export and evaluation seconds. `dry-run` also checks that nothing outside the
# machine's packages and the bundle was imported.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
WHEELS="${GPU_CHECK_WHEELS:-$ROOT/.gpu-wheels}"
WORK="${GPU_CHECK_WORK:-$(mktemp -d)}"
BUNDLED="gitpython gitdb smmap rustbpe"  # what `autoresearch run` imports beyond the machine's
ON_MACHINE="torch numpy pyarrow tiktoken safetensors pluggy click tabulate matplotlib"
# the gpt baseline at the CPU size of tests/test_baselines_train.py, and a CPU-sized run
CPU_CONSTANTS='{"DEPTH": 2, "ASPECT_RATIO": 32, "HEAD_DIM": 32, "DEVICE_BATCH_SIZE": 4, "TOTAL_BATCH_SIZE": 1024, "VE_GATE_CHANNELS": 8}'
export GIT_AUTHOR_NAME=gpu-check GIT_AUTHOR_EMAIL=gpu-check@localhost
export GIT_COMMITTER_NAME=gpu-check GIT_COMMITTER_EMAIL=gpu-check@localhost
export AUTORESEARCH_CACHE="${AUTORESEARCH_CACHE:-$WORK/cache}"

bundle() {
    local pyver="${1:-3.12}"
    local abi="cp${pyver//./}"
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    local pins=()
    for dist in $BUNDLED; do  # the versions this checkout is tested with
        pins+=("$dist==$(python -c "import importlib.metadata as m; print(m.version('$dist'))")")
    done
    python -m pip download --quiet --no-deps --only-binary=:all: --dest "$WHEELS" \
        --python-version "$pyver" --implementation cp --abi "$abi" --abi abi3 --abi none \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any "${pins[@]}"
    local src="$WORK/src"  # a clean copy: the build leaves build/ and egg-info behind
    git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 cp --parents -t "$(mkdir -p "$src" && echo "$src")")
    python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$WHEELS" "$src"
    ls -l "$WHEELS"
}

install() {  # a fresh venv over $1's site-packages (or the system's), the bundle with --no-deps
    local base_site="${1:-}"
    if [[ -n "$base_site" ]]; then
        python -m venv "$WORK/venv"
        local site
        site="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
        echo "$base_site" > "$site/zz-machine.pth"  # after the venv's own: the bundle wins
    else
        python -m venv --system-site-packages "$WORK/venv"
    fi
    "$WORK/venv/bin/python" -m pip install --quiet --no-index --no-deps "$WHEELS"/*.whl
    PY="$WORK/venv/bin/python"
}

gpt_repo() {  # a research repo of the gpt baseline on the stdlib corpus, prepared
    local repo="$WORK/gpt" cpu="${1:-}"
    (cd "$WORK" && "$PY" -m autoresearch init "$repo" --baseline gpt)
    sed -i 's/^source = .*/source = "stdlib"/' "$repo/autoresearch.toml"
    if [[ -n "$cpu" ]]; then  # CPU: short rows, a few evaluation tokens, the shrunk model
        sed -i -e 's/^sequence_len = .*/sequence_len = 256/' -e 's/^tokens = .*/tokens = 32768/' \
            -e 's/^batch_size = .*/batch_size = 16/' -e 's/^device = .*/device = "cpu"/' \
            "$repo/autoresearch.toml"
        "$PY" - "$repo/train.py" "$CPU_CONSTANTS" <<'PY'
import json, sys
from pathlib import Path
from autoresearch.constants import rewrite_constants
path = Path(sys.argv[1])
path.write_text(rewrite_constants(path.read_text(), json.loads(sys.argv[2])))
PY
        git -C "$repo" commit --quiet -am "the gpt baseline at its CPU size"
    fi
    local t0=$SECONDS
    (cd "$repo" && "$PY" -m autoresearch prepare)
    echo "prepare: $((SECONDS - t0)) s"
    REPO="$repo"
}

run_and_report() {  # one `autoresearch run` and its figures: $1 budget, $2 label, $3... more
    local t0=$SECONDS budget="$1" label="$2"
    shift 2
    # a failed run is reported too, and the next one still runs
    (cd "$REPO" && "$PY" -m autoresearch run --budget "$budget" -m "$label" "$@") || true
    echo "wall: $((SECONDS - t0)) s"
    "$PY" - "$REPO" "$budget" "$label" <<'PY'
import json, re, sys
from pathlib import Path
repo, budget, label = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
r = json.loads((repo / ".autoresearch/ledger.jsonl").read_text().splitlines()[-1])
t = r.get("timings", {})
run = repo / ".autoresearch/runs" / r["id"]
sandbox = json.loads((run / "sandbox.json").read_text())
compiled = re.findall(r"compiled in ([\d.]+) s", (run / "run.log").read_text())
overhead = r["total_seconds"] - t.get("training", 0.0)
print(json.dumps({
    "label": label, "status": r["status"], "device": r.get("device"),
    "isolated": sandbox["isolate"], "val_bpb": r["val_bpb"],
    "tokens_per_s": round(r["tokens"] / max(t.get("training", 1e-9), 1e-9)),
    "mfu_percent": r.get("mfu_percent"), "memory_gb": r.get("memory_gb"),
    "compile_s": float(compiled[-1]) if compiled else None, "timings": t,
    "overhead_percent_of_budget": round(100 * overhead / budget, 2),
}, indent=1))
PY
}

check_imports() {  # every distribution the run imported: on the machine, or bundled
    "$PY" - "$WORK/imports.txt" "$ON_MACHINE" "$BUNDLED autoresearch" <<'PY'
import sys
from importlib import metadata
from packaging.requirements import Requirement
imported = set(open(sys.argv[1]).read().split()) - set(sys.stdlib_module_names)
owners = metadata.packages_distributions()
dists = {d.lower() for m in imported for d in owners.get(m, [])}
def closure(names):
    seen, todo = set(), [n.lower() for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name.lower())
    return seen
machine = closure(sys.argv[2].split())
missing = sorted(d for d in dists - machine if d.replace("-", "_") not in
                 {b.replace("-", "_") for b in sys.argv[3].split()})
print("imported beyond the stdlib:", ", ".join(sorted(dists)))
if missing:
    sys.exit(f"error: imported but neither on the GPU machine nor bundled: {', '.join(missing)}")
print("import check: everything imported is on the GPU machine or in the bundle")
PY
}

record_imports() {  # a sitecustomize that appends each process's top-level modules at exit
    mkdir -p "$WORK/record"
    cat > "$WORK/record/sitecustomize.py" <<PY
import atexit, sys
def _record():
    with open("$WORK/imports.txt", "a") as f:
        f.write(" ".join({m.split(".")[0] for m in sys.modules}) + "\n")
atexit.register(_record)
PY
    export PYTHONPATH="$WORK/record"
}

window_l() {  # the same run with full attention on every layer
    sed -i 's/^WINDOW_PATTERN = .*/WINDOW_PATTERN = "L"/' "$REPO/train.py"
    git -C "$REPO" commit --quiet -am 'WINDOW_PATTERN = "L"'
}

gpu_ready() {
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
}

case "${1:-}" in
    bundle) bundle "${2:-3.12}" ;;
    stage1)
        install && gpu_ready && gpt_repo
        run_and_report 60 "gpt SSSL 60 s"
        window_l && run_and_report 60 "gpt L 60 s"
        ;;
    stage2)
        install && gpu_ready && gpt_repo
        run_and_report 300 "gpt SSSL 300 s"
        ;;
    dry-run)  # this machine's packages stand in for the GPU machine's
        bundle "$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        install "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
        record_imports
        gpt_repo cpu
        # a token budget: a few steps however loaded the machine (60 s is only a cap)
        run_and_report 60 "gpt SSSL, 2 steps, CPU size" --budget-tokens 2048
        window_l && run_and_report 60 "gpt L, 2 steps, CPU size" --budget-tokens 2048
        check_imports
        ;;
    *) sed -n 2,16p "$0"; exit 2 ;;
esac
