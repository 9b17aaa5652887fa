#!/usr/bin/env bash
# One short benchmark run on a CUDA GPU: the per-row transformers pipeline vs the batched core in fp32, bf16,
# fp16 and fast (fp16/bf16 autocast), distilbert-base-sized model, short SQuAD-like contexts. Put its last lines
# in docs/answering-core.md. Needs a venv whose torch is a CUDA build (the dev venv's CPU wheel is refused below).
#   scripts/device_check.sh [PYTHON]          # default .venv/bin/python; about 3-5 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}

"$python" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"device_check: torch {torch.__version__} sees no CUDA device; run it where one is, with a CUDA torch")
props = torch.cuda.get_device_properties(0)
print(
    f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
    f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}"
)
EOF
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv || true
nproc

# 4,096 short rows per round, 2,048 rows per answer() call (the GPU spec's QA_CHUNK_ROWS), two rounds.
"$python" scripts/benchmark_qa.py --device cuda --rows 4096 --rounds 2 --chunk-rows 2048 \
  --warmup-rows 256 --long-share 0
