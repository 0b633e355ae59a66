#!/usr/bin/env bash
# Prepare what benchmarks/gpu.sh needs on a lent GPU machine, which has no network: run HERE, in the repo root.
#
#   bash benchmarks/gpu_wheels.sh          # fills .whl/ (ignored by git): wheels + SmolLM2's tokenizer
#
# The GPU machine (Python 3.12, torch 2.11+cu130, transformers 5.17, huggingface-hub 1.33, accelerate, einops,
# jaxtyping, pandas, pyarrow, safetensors, rich, tqdm, psutil, xxhash, fsspec, ...: /work/.library/device/KINDS.md)
# lacks exactly these, for `import neuron_core` + profile (nothing: torch, numpy, tqdm, transformers, safetensors are
# there), `from transformer_lens.model_bridge import TransformerBridge` and `import nnsight`:
#   transformer-lens, nnsight, datasets (+ dill, multiprocess; TransformerLens imports it at import time),
#   pydantic (+ pydantic-core, annotated-types, typing-inspection, typing-extensions; for nnsight), greenlet and
#   zstandard (nnsight).
# Not carried, though TransformerLens lists them: wandb, typeguard, beartype, fancy-einsum,
# transformers-stream-generator (not imported by `import transformer_lens` nor by the bridge: checked with
# `python -X importtime`). Never torch, transformers or numpy: --no-deps, and the machine's own stay.
# Versions: datasets 4.8.5 accepts huggingface-hub < 2 (the machine has 1.33; datasets 5 wants newer).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv-bench/bin/python}
test -x "$PY" || PY=python3
DEST=.whl
mkdir -p "$DEST"
rm -f "$DEST"/*.whl

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64)
WHEELS=(
  transformer-lens==4.3.0
  nnsight==0.8.1
  datasets==4.8.5
  dill==0.4.1
  multiprocess==0.70.19
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  greenlet==3.5.6
  zstandard==0.25.0
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST" "${WHEELS[@]}"

# The benchmarks tokenise the built-in corpus with SmolLM2's tokenizer (GPT-2's is not available offline); the
# bundled SmolLM2 weights are too big to travel, so only the tokenizer goes (benchmarks/_common.py reads
# $NW_BENCH_TOKENIZER).
rm -rf "$DEST/smollm2-tokenizer"
HF_HUB_OFFLINE=1 "$PY" - <<'EOF'
from neuron_core import load_model

load_model("smollm2-135m", device="cpu").tokenizer.save_pretrained(".whl/smollm2-tokenizer")
EOF

echo "wheels in $DEST:"
ls -1 "$DEST"/*.whl
du -sh "$DEST" | sed 's/^/total (wheels + tokenizer): /'
