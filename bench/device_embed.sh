#!/usr/bin/env bash
# The embedding-model study of bench/quant_embed.py in one call on the lent H200 (about 5-6 minutes):
# FP32 export and ORT INT8 PTQ (CPU, while the GPU trains), QAT ternary-w2a8, ternary-w2e2a8 and BiT
# multi-step bit-w1a1 (whose intermediate stage is the bit-w1a8 row) side by side on the GPU, each
# lowered to INT8 ONNX and scored on debian-synopsis with ONNX Runtime. No openvino there: the NNCF
# baseline prints that it is skipped.
#
#   run(command="bash bench/device_embed.sh", carry=[".ckpt/minilm-fp16", ".whl"], timeout_s=600)
#
# Back: $OUT/quant-embed/{summary.json,summary.md,reports.json,log.txt} -> bench/results/quant-embed/.
# Knobs (environment): EPOCHS (per stage, 6), BATCH (128), JOBS (QAT runs at a time, 3),
# LIMIT + STEPS (a check of the script: LIMIT=32 STEPS=2 bash bench/device_embed.sh, a few minutes on CPU).
set -euo pipefail
OUT=${OUT:-/tmp/device_out}
PY=${PY:-python3}
mkdir -p "$OUT/quant-embed"
if ! $PY -c "import pydantic" 2>/dev/null; then  # the GPU machine has no pydantic: install the carried wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1  # edgekit from this tree
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU: running on CPU"
ARGS=(--model "${MODEL:-.ckpt/minilm-fp16}" --work "${WORK:-/tmp/quant-embed}" --out "$OUT/quant-embed"
  --epochs "${EPOCHS:-6}" --batch "${BATCH:-128}" --jobs "${JOBS:-3}" --timeout "${TIMEOUT:-420}")
if [ -n "${LIMIT:-}" ]; then ARGS+=(--limit "$LIMIT" --steps "${STEPS:-2}"); fi
$PY bench/quant_embed.py "${ARGS[@]}" 2>&1 | tee "$OUT/quant-embed/log.txt"
