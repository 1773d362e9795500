#!/usr/bin/env bash
# The checkpoints bench/compare.py needs, trained on the lent GPU in three calls (a call may run
# 10 minutes and bring back 64 MiB, and one fp16 checkpoint is 45 MB):
#
#   bash bench/device_lowbit.sh 1   # fine-tune the fp32 classifier (bench/finetune.py) from the fp16 base
#                                   # model carried in .ckpt/base-fp16; QAT ternary W2A8 and W2E2A8 (2-bit
#                                   # embeddings too); lower W2E2A8; back: the fp32 classifier (fp16 parts)
#   bash bench/device_lowbit.sh 2   # BiT multi-step W1A1 and W1E1A1; lower W1E1A1; back: the W2A8 checkpoint
#   bash bench/device_lowbit.sh 3   # back: the W1A1 checkpoint
#   SCALE_T=4 SCALE_B=2 bash bench/device_lowbit.sh 4
#                                   # does a longer QAT budget close the accuracy gap? W2E2A8 (SCALE_T x 3
#                                   # epochs) and W1E1A1 (SCALE_B x the BiT budget) from the fp32 classifier
#                                   # carried in .ckpt/minilm-debian; back: the reports and both lowered artifacts
#   SCALE_B=2 bash bench/device_lowbit.sh 5
#                                   # W1E1A1 at the budget phase 4 chose on dev (x2), from .ckpt/minilm-debian;
#                                   # back: its report and checkpoint (fp16 parts; bench/compare.py lowers it and
#                                   # trains exit heads on it). Here: cat OUT/w1e1a1_part_* | tar xf - -C .ckpt/minilm-w1e1a1
#
# Everything stays in .ckpt/device between calls (ignored; kept while the machine is warm).
# Here: for p in fp32 w2a8 w1a1; do mkdir -p .ckpt/minilm-$p && cat OUT/${p}_part_* | tar xf - -C .ckpt/minilm-$p; done
# (the fp32 classifier goes to .ckpt/minilm-debian). The lowered E-scheme artifacts come back whole
# (a few MB: packed 1/2-bit weights and embeddings) as tar files.
# carry: .ckpt/base-fp16 and .wheels (pydantic and rich wheels for Python 3.12, for edgekit.build.lower there).
set -euo pipefail
PHASE=${1:?phase 1, 2 or 3}
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # edgekit from this tree, not installed there
D=.ckpt/device
mkdir -p "$D"
if ! $PY -c "import pydantic, rich" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links .wheels pydantic rich 2>&1 | tail -2
fi

lower() {  # lower a quantized checkpoint and pack the artifact into OUT
  $PY -c "from edgekit.build.lower import lower; m = lower('$1', '$D/$2'); print('$2', m.settings['size'])"
  tar cf "$OUT/$2.tar" -C "$D" "$2"
}

case $PHASE in
1)
  nvidia-smi --query-gpu=name --format=csv,noheader
  $PY bench/finetune.py --model .ckpt/base-fp16 --out "$D/minilm-debian" --fp16-copy "$D/minilm-debian-fp16"
  $PY bench/quant_bench.py --model "$D/minilm-debian" --stages ternary-w2a8,ternary-w2e2a8 --out "$D/quant-ternary" --ckpt-dir "$D/q" --keep none
  tar cf "$OUT/quant-ternary.tar" -C "$D" quant-ternary
  lower "$D/q/ternary-w2e2a8" lowered-w2e2a8
  tar cf - -C "$D/minilm-debian-fp16" . | split -b 15M - "$OUT/fp32_part_"
  ;;
2)
  $PY bench/quant_bench.py --model "$D/minilm-debian" --stages bit-w1a1,bit-w1e1a1 --out "$D/quant-binary" --ckpt-dir "$D/q" --keep none
  tar cf "$OUT/quant-binary.tar" -C "$D" quant-binary
  lower "$D/q/bit-w1e1a1" lowered-w1e1a1
  tar cf - -C "$D/q/ternary-w2a8" --exclude=train_state . | split -b 15M - "$OUT/w2a8_part_"
  ;;
4)
  ST=${SCALE_T:-4}; SB=${SCALE_B:-2}
  nvidia-smi --query-gpu=name --format=csv,noheader
  $PY bench/quant_bench.py --model .ckpt/minilm-debian --stages ternary-w2e2a8 --scale "$ST" --out "$D/quant-w2e2a8-x$ST" --ckpt-dir "$D/q4" --keep none
  $PY bench/quant_bench.py --model .ckpt/minilm-debian --stages bit-w1e1a1 --scale "$SB" --out "$D/quant-w1e1a1-x$SB" --ckpt-dir "$D/q4" --keep none
  tar cf "$OUT/quant-longer.tar" -C "$D" "quant-w2e2a8-x$ST" "quant-w1e1a1-x$SB"
  lower "$D/q4/ternary-w2e2a8" "lowered-w2e2a8-x$ST"
  lower "$D/q4/bit-w1e1a1" "lowered-w1e1a1-x$SB"
  ;;
5)
  SB=${SCALE_B:-2}
  nvidia-smi --query-gpu=name --format=csv,noheader
  $PY bench/quant_bench.py --model .ckpt/minilm-debian --stages bit-w1e1a1 --scale "$SB" --out "$D/quant-w1e1a1-ckpt" --ckpt-dir "$D/q5" --keep none
  tar cf "$OUT/quant-w1e1a1-ckpt.tar" -C "$D" quant-w1e1a1-ckpt
  tar cf - -C "$D/q5/bit-w1e1a1" --exclude=train_state --exclude='step1-*' . | split -b 15M - "$OUT/w1e1a1_part_"
  ;;
3)
  tar cf - -C "$D/q/bit-w1a1" --exclude=train_state --exclude='step1-*' . | split -b 15M - "$OUT/w1a1_part_"
  ;;
esac
ls -la "$OUT" "$OUT"/* | head -40
