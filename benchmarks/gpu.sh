#!/usr/bin/env bash
# The benchmark comparison on CUDA, as one prepared script for a lent GPU machine (H100/H200, Python 3.12 at python3
# with torch 2.11+cu130 and transformers 5.17; no network). About 5 minutes on an H200, set-up included.
#
# Here, first:   bash benchmarks/gpu_wheels.sh      (fills .whl/: 12 wheels + SmolLM2's tokenizer, about 15 MiB)
# There:         bash benchmarks/gpu.sh             (the device tool: command "bash benchmarks/gpu.sh",
#                                                    carry [".whl"], timeout_s 480 for "parity parts compare")
# Writes $OUT/results-gpu.md (the tables; copy it to benchmarks/results-gpu.md here, then
# `.venv-bench/bin/python benchmarks/run_all.py --only none` puts it into RESULTS.md) and $OUT/gpu.log.
#
# Steps (each under its own `timeout`, so one hung step cannot eat the budget; a failed step is reported and the
# next one runs; each step's output is tee'd into gpu.log as it comes, so a run cut short keeps what it printed).
# GPU_STEPS picks some of them, e.g. GPU_STEPS="parity compare parts" (PARITY_TOKENS, PARITY_LIMIT, PARTS_LIMIT
# shorten those):
#   parity   gpu_parity.py: CUDA against CPU (captures, profiles, the sync-free statistics against the CPU algorithm
#            with ties, NaN and +-inf planted, no host sync inside SiteStats.add nor from neuron_core's lines in a
#            whole profile, bfloat16), run first: the core's correctness on the device matters most
#   compare  compare_libraries.py --device cuda: ours vs TransformerLens vs nnsight, GPT-2-small-sized random model
#            (SmolLM2's weights are too big to travel), 6 batches of 32 x 256 tokens
#   parts    gpu_stats_parts.py: SiteStats.add for one site (compiled and eager batch pass), the host's enqueue time,
#            and torch.profiler's costliest kernels of 12 adds
#   capture  capture_overhead.py --device cuda, same sizes (through _tokenizer_shim.py: it loads SmolLM2 only for
#            its tokenizer; the built-in corpus is too short for 8 x 32 x 512 tokens)
#   memory   memory_scaling.py --device cuda: layer 1 of the random GPT-2 (early stop), 10k / 100k / 1M tokens
# Measured on an H200 (2026-11-27): all steps about 240 s plus about 50 s of set-up (wheels, imports) and the
# machine's start; "parity compare parts" 190 s (at 70efda7). Each Python process compiles the statistics' five
# functions once (neuron_core/stats_device.py; 17 s cold on this project's 2-core CPU, the batch pass alone took
# about 10 s on the H200; the parts step compiles the one-stage variant too): since 9c2e347 expect about 30 s more
# a step, "parity compare parts" about 300 s; the step limits allow for it.
# Dry run of the script's plumbing on a machine without a GPU (tiny sizes, CPU; wheels built for that Python):
#   DRY_RUN=1 WHEEL_DIR=/path/to/cp311-wheels PY=/path/to/python bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NW_BENCH_TOKENIZER=$ROOT/.whl/smollm2-tokenizer
PY=${PY:-python3}
WHEEL_DIR=${WHEEL_DIR:-.whl}
DEV=cuda
CMP_SIZES="--batch-size 32 --seq 256 --batches 6 --rounds 3"
MEM_SIZES="--batch-size 128 --tokens 10000,100000,1000000 --timeout 80"
LIMITS=(170 90 130)  # compare, capture, memory; each includes about 30 s of compiling (see above)
if [ "${DRY_RUN:-0}" = 1 ]; then
  DEV=cpu; CMP_SIZES="--batch-size 2 --seq 32 --batches 1 --rounds 1"; MEM_SIZES="--batch-size 16 --tokens 500,1000"
  LIMITS=(600 300 300)
fi
LOG=$OUT/gpu.log
RES=$OUT/results-gpu.md
STEPS=$(mktemp -d)
exec > >(tee -a "$LOG") 2>&1
T0=$(date +%s)

echo "== gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi || echo "nvidia-smi failed"
$PY --version
$PY -m pip list 2>/dev/null | grep -iE '^(torch|transformers|huggingface[-_]hub|accelerate|numpy|pyarrow|fsspec|typing[-_]extensions|psutil|safetensors|tokenizers) ' || true

# --- wheels: only what the image lacks (benchmarks/gpu_wheels.sh); torch/transformers/numpy stay the image's ---
if ! ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
  echo "no wheels in $WHEEL_DIR/: run benchmarks/gpu_wheels.sh here and carry .whl"; exit 2
fi
SITE=$(mktemp -d /tmp/site.XXXX)
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEEL_DIR"/*.whl \
  || exit 3
export PYTHONPATH=$SITE:$ROOT   # neuron_core from the working tree, not installed
SKIP=""
GPU_STEPS=" ${GPU_STEPS:-parity parts compare capture memory} "  # the steps to run, e.g. GPU_STEPS="parity parts"
want() { [[ "$GPU_STEPS" == *" $1 "* ]]; }
$PY -c "import neuron_core, torch; assert '$DEV' == 'cpu' or torch.cuda.is_available(), 'no CUDA'" || exit 4
if want compare; then
  $PY -c "from transformer_lens.model_bridge import TransformerBridge" || { echo "TransformerLens does not import: skipped"; SKIP="tl"; }
  $PY -c "import nnsight" || { echo "nnsight does not import: skipped"; SKIP="${SKIP:+$SKIP,}nnsight"; }
  $PY -c "import transformers, torch, transformer_lens.model_bridge, nnsight, importlib.metadata as m; print('versions:', {d: m.version(d) for d in ('torch', 'transformers', 'transformer-lens', 'nnsight', 'datasets', 'pydantic')})" 2>/dev/null || true
fi

step() {  # step NAME TIMEOUT_S COMMAND... : runs, keeps its stdout for the results, reports failure
  local name=$1 limit=$2; shift 2
  local start; start=$(date +%s)
  echo; echo "== step $name (limit ${limit}s): $*"
  echo "$*" > "$STEPS/$name.cmd"  # the results quote the command as it ran
  timeout --kill-after=10 "$limit" "$@" | tee "$STEPS/$name.out"  # tee: gpu.log keeps it even if all is cut
  local rc=${PIPESTATUS[0]}
  echo "$(( $(date +%s) - start ))" > "$STEPS/$name.secs"
  if [ $rc -ne 0 ]; then
    local why="exit code $rc"; [ $rc -eq 124 ] && why="timed out after ${limit}s"
    echo "**This step failed** ($why); see gpu.log." >> "$STEPS/$name.out"
  fi
  echo "   step $name: rc=$rc, $(cat "$STEPS/$name.secs") s, $(( $(date +%s) - T0 )) s since start"
}

# CUDA-vs-CPU parity first: the core's correctness on the device matters most (benchmarks/gpu_parity.py)
if [ "${DRY_RUN:-0}" = 1 ]; then PARITY_ARGS="--dry-run --tokens 1500"; else PARITY_ARGS="--tokens ${PARITY_TOKENS:-6000}"; fi
# shellcheck disable=SC2086
want parity && step parity "${PARITY_LIMIT:-150}" $PY benchmarks/gpu_parity.py $PARITY_ARGS

# shellcheck disable=SC2086  # the size strings are meant to split
want compare && step compare "${LIMITS[0]}" $PY benchmarks/compare_libraries.py --device $DEV $CMP_SIZES ${SKIP:+--skip $SKIP} \
  --json "$OUT/compare-gpu.json"
if [ "${DRY_RUN:-0}" = 1 ]; then PARTS_ARGS="--device cpu --tokens 512 --neurons 256"; else PARTS_ARGS=""; fi
# shellcheck disable=SC2086
want parts && step parts "${PARTS_LIMIT:-200}" $PY benchmarks/gpu_stats_parts.py $PARTS_ARGS
# shellcheck disable=SC2086
want capture && step capture "${LIMITS[1]}" $PY benchmarks/_tokenizer_shim.py benchmarks/capture_overhead.py --device $DEV $CMP_SIZES
# shellcheck disable=SC2086
want memory && step memory "${LIMITS[2]}" $PY benchmarks/memory_scaling.py --device $DEV --model gpt2-random --layer 1 $MEM_SIZES

SECTIONS=(parity compare parts capture memory)  # the order they run in
declare -A TITLES=(
  [compare]="Same statistics, three libraries, on CUDA (GPT-2-small-sized model, random weights)"
  [capture]="Capture overhead on CUDA"
  [memory]="Memory scaling on CUDA (layer 1 of the random GPT-2 (early stop))"
  [parity]="CUDA vs CPU parity"
  [parts]="Where SiteStats.add spends its time on CUDA (one site, 8,192 tokens x 3,072 neurons)"
)
GPU_NAME=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)
{
  echo "# GPU benchmark results"
  [ "${DRY_RUN:-0}" = 1 ] && echo && echo "**DRY RUN on CPU with tiny sizes: the plumbing only, not results.**"
  echo
  echo "Written by \`benchmarks/gpu.sh\` on $(date -u +%Y-%m-%d) in $(( $(date +%s) - T0 )) s: ${GPU_NAME:-unknown GPU};"
  echo "$($PY -c "import platform, torch, transformers; print(f'Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}')" 2>/dev/null)."
  echo "TransformerLens, nnsight and their missing needs came as wheels (\`benchmarks/gpu_wheels.sh\`); torch and transformers are the machine's own."
  for s in "${SECTIONS[@]}"; do
    [ -f "$STEPS/$s.out" ] || continue
    echo
    echo "### ${TITLES[$s]:-$s}"
    echo
    echo "Command: \`$(cat "$STEPS/$s.cmd" 2>/dev/null || echo "$s")\` ($(cat "$STEPS/$s.secs" 2>/dev/null || echo '?') s)"
    echo
    cat "$STEPS/$s.out"
  done
} > "$RES"
echo
echo "== wrote $RES; total $(( $(date +%s) - T0 )) s"
