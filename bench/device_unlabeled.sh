#!/usr/bin/env bash
# What an in-domain unlabelled corpus (bench/data/debian-unlabeled, 12,776 Debian descriptions from the training
# side of every task) adds, on one H200 in one call (< 9 min):
#
#   1. fine-tune both teachers from the fp16 MiniLM (.ckpt/minilm-fp16[.tar.xz]): debian-sections (4 epochs) and
#      debian-works-with (8 epochs);
#   2. QAT lanes side by side (bench/device_qat_more.sh's lanes and summary), every run --deterministic, seed 0,
#      batch 64, dev selection: ternary-w2a8 on each task without the corpus (600 steps), with it (600 steps, the
#      same compute), and with it at 1,200 steps; ternary-w2e2a8 on debian-sections with it at 1,200 steps;
#   3. beside them, joint exit heads on debian-works-with (exits train --no-freeze-backbone --anchor-weight 10
#      --unlabeled, mean heads, 4 epochs, the epoch chosen on dev), their test accuracy and agreement with the final
#      exit per layer, packed with their fp16 backbone and the teacher's test accuracy.
#
#   PHASE=long (the second call, < 8 min): debian-sections only, batch 256 with sqrt lr scaling (steps/s do not
#      fall with the batch on an H200, bench/results/quant-speed), EPOCHS (20) of the union of the labelled texts and
#      the corpus: ternary-w2a8 without and with it (seeds 0 and 1), with it plus --augment 2, ternary-w2e2a8 and
#      bit-w1a1 BiT multi-step (a third of the epochs per stage) with it; six lanes.
#
#   PHASE=steps (the third call, < 9 min): debian-sections only, batch 64 as in the first call, twice its longest
#      budget (STEPS, 2,400 steps: its 1,200-step run was still improving on dev at its last step): ternary-w2a8
#      with the corpus (seeds 0 and 1), with it plus --augment 2, and ternary-w2e2a8 with it (with and without
#      --augment 2); five lanes.
#
#   PHASE=knobs (the fourth call, < 8 min): debian-sections, ternary-w2a8 with the corpus at the first call's best
#      budget (1,200 steps of batch 64; 2,400 gave no more), one knob changed per lane: learning rate 5e-5 and 2e-4
#      (default 1e-4), logits-only distillation, logits + hidden states (no attention), cross entropy with the labels
#      on top (weight 1), temperature 2, the attention core in float (--attention-bits 32, also for ternary-w2e2a8: what
#      ort-cpu's fusion=qattention needs); beside them the mixed plan at the uniform W2E2A8 lowered size with the corpus.
#
#   PHASE=ce SEEDS=1 (the seventh call, < 9 min): ternary-w2a8 seeds 2 and 3 with and without --ce 1, debian-sections
#      with the corpus and debian-works-with without it, 1,200 steps of batch 64; eight lanes.
#
#   lent GPU (carry .ckpt/minilm-fp16.tar.xz and .whl):  OUT=$OUT [PHASE=long|steps|knobs|ce] bash bench/device_unlabeled.sh
#   back: $OUT/results.tar (QAT summary.md/.json, reports.json, log.txt, joint-exits.json, logs), $OUT/pack-joint_a?;
#         PHASE=long: $OUT/summary.md, summary.json, reports.json, log.txt, finetune.json
#   here, a check of the script:  SMOKE=1 OUT=/tmp/unl_out [PHASE=long] bash bench/device_unlabeled.sh
set -uo pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
W=${WORK:-/tmp/unl_work}; rm -rf "$W"; mkdir -p "$W/res"
. bench/tools/device_env.sh  # MODEL unpacked, pydantic, PYTHONPATH
T0=$(date +%s)
CORPUS=$W/corpus.txt
xz -dkc bench/data/debian-unlabeled/train.txt.xz > "$CORPUS"
if [ -n "${SMOKE:-}" ]; then
  FT=(--limit 64 --epochs 1); E_JOINT=1; head -n 40 "$CORPUS" > "$CORPUS.s" && mv "$CORPUS.s" "$CORPUS"; LONG=2
else
  FT=(); E_JOINT=4; LONG=1200
fi
$PY bench/finetune.py --model "$MODEL" --data bench/data/debian-sections --out "$W/ts" --epochs 4 "${FT[@]}" 2>&1 | grep -E "dev|test" | tail -n 2
if [ "${PHASE:-}" = long ]; then
  U=$CORPUS; E=${EPOCHS:-20}; [ -n "${SMOKE:-}" ] && E=0.01
  cp "$W/ts/finetune.json" "$OUT/finetune.json"
  JOBS=$(cat <<JSON
{"base": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": null, "epochs": $E}],
 "unl": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": null, "epochs": $E, "unlabeled": "$U"}],
 "unl-seed1": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": null, "epochs": $E, "unlabeled": "$U", "seed": 1}],
 "unl-aug2": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": null, "epochs": $($PY -c "print($E * 0.6)"), "unlabeled": "$U", "augment": 2}],
 "e2-unl": ["S", {"scheme": "ternary-w2e2a8", "deterministic": true, "steps": null, "epochs": $E, "unlabeled": "$U"}],
 "w1a1-unl": ["S", {"scheme": "bit-w1a1", "multi_step": true, "deterministic": true, "steps": null, "epochs": $($PY -c "print(round($E / 3, 2))"), "unlabeled": "$U"}]}
JSON
  )
  SMOKE=${SMOKE:-} BATCH=${BATCH:-256} TEACHER_S=$W/ts TEACHER_W=$W/ts OUT=$OUT WORK=$W/qat JOBS="$JOBS" LANES="base;unl;unl-seed1;unl-aug2;e2-unl;w1a1-unl" \
    LANE_TIMEOUT=${LANE_TIMEOUT:-430} TITLE="QAT with the unlabelled corpus at batch 256 (MiniLM-L6 on debian-sections, one H200, six lanes side by side)" \
    bash bench/device_qat_more.sh
  exit
fi
if [ "${PHASE:-}" = ce ]; then
  # PHASE=ce (the fifth call): the knob that paid in the fourth (label cross entropy, weight 1, on top of distillation)
  # again with seed 1, a second run of seed 0, on ternary-w2e2a8 and the mixed plan, and on debian-works-with.
  $PY bench/finetune.py --model "$MODEL" --data bench/data/debian-works-with --out "$W/tw" --epochs 8 "${FT[@]}" 2>&1 | grep -E "dev|test" | tail -n 2
  U=$CORPUS; N=${STEPS:-1200}; [ -n "${SMOKE:-}" ] && N=2
  cp "$W/ts/finetune.json" "$OUT/finetune.json"; cp "$W/tw/finetune.json" "$OUT/finetune-works-with.json"
  B='"deterministic": true, "steps": '$N', "ce": 1.0'
  if [ "${SEED1:-}" ]; then  # (the sixth call, < 5 min) works-with, seed 1, no corpus: with and without the label loss
    JOBS='{"w-ce1-seed1": ["W", {"scheme": "ternary-w2a8", '$B', "seed": 1}], "w-base-seed1": ["W", {"scheme": "ternary-w2a8", "deterministic": true, "steps": '$N', "seed": 1}]}'
    SMOKE=${SMOKE:-} BATCH=64 TEACHER_S=$W/ts TEACHER_W=$W/tw OUT=$OUT WORK=$W/qat JOBS="$JOBS" LANES="w-ce1-seed1;w-base-seed1" \
      LANE_TIMEOUT=${LANE_TIMEOUT:-230} TITLE="debian-works-with, seed 1: label cross entropy on top of distillation or not (one H200, two lanes)" \
      bash bench/device_qat_more.sh
    exit
  fi
  if [ "${SEEDS:-}" ]; then  # (the seventh call, < 9 min) seeds 2 and 3 of the ternary-w2a8 recipes with and without the
    # label loss: sections with the corpus, works-with without it (calls 4-6 ran seeds 0 and 1)
    C='"deterministic": true, "steps": '$N
    JOBS=$(cat <<JSON
{"s-base-seed2": ["S", {"scheme": "ternary-w2a8", $C, "unlabeled": "$U", "seed": 2}],
 "s-base-seed3": ["S", {"scheme": "ternary-w2a8", $C, "unlabeled": "$U", "seed": 3}],
 "s-ce1-seed2": ["S", {"scheme": "ternary-w2a8", $B, "unlabeled": "$U", "seed": 2}],
 "s-ce1-seed3": ["S", {"scheme": "ternary-w2a8", $B, "unlabeled": "$U", "seed": 3}],
 "w-base-seed2": ["W", {"scheme": "ternary-w2a8", $C, "seed": 2}],
 "w-base-seed3": ["W", {"scheme": "ternary-w2a8", $C, "seed": 3}],
 "w-ce1-seed2": ["W", {"scheme": "ternary-w2a8", $B, "seed": 2}],
 "w-ce1-seed3": ["W", {"scheme": "ternary-w2a8", $B, "seed": 3}]}
JSON
    )
    SMOKE=${SMOKE:-} BATCH=64 TEACHER_S=$W/ts TEACHER_W=$W/tw OUT=$OUT WORK=$W/qat JOBS="$JOBS" \
      LANES="s-base-seed2;s-base-seed3;s-ce1-seed2;s-ce1-seed3;w-base-seed2;w-base-seed3;w-ce1-seed2;w-ce1-seed3" \
      LANE_TIMEOUT=${LANE_TIMEOUT:-400} TITLE="ternary-w2a8, seeds 2 and 3, with and without label cross entropy (one H200, eight lanes)" \
      bash bench/device_qat_more.sh
    exit
  fi
  JOBS=$(cat <<JSON
{"ce1": ["S", {"scheme": "ternary-w2a8", $B, "unlabeled": "$U"}],
 "ce1-run2": ["S", {"scheme": "ternary-w2a8", $B, "unlabeled": "$U"}],
 "ce1-seed1": ["S", {"scheme": "ternary-w2a8", $B, "unlabeled": "$U", "seed": 1}],
 "e2-ce1": ["S", {"scheme": "ternary-w2e2a8", $B, "unlabeled": "$U"}],
 "mixed-ce1": ["S", {"scheme": "ternary-w2e2a8", $B, "unlabeled": "$U", "budget_mb": 6.814197}],
 "w-ce1": ["W", {"scheme": "ternary-w2a8", $B, "unlabeled": "$U"}],
 "w-ce1-nocorpus": ["W", {"scheme": "ternary-w2a8", $B}],
 "w-e2-ce1": ["W", {"scheme": "ternary-w2e2a8", $B, "unlabeled": "$U"}]}
JSON
  )
  SMOKE=${SMOKE:-} BATCH=64 TEACHER_S=$W/ts TEACHER_W=$W/tw OUT=$OUT WORK=$W/qat JOBS="$JOBS" LANES="${LANES:-ce1;ce1-run2;ce1-seed1;e2-ce1;mixed-ce1;w-ce1;w-ce1-nocorpus;w-e2-ce1}" \
    LANE_TIMEOUT=${LANE_TIMEOUT:-400} TITLE="QAT with label cross entropy on top of distillation, 1,200 steps of batch 64 (MiniLM-L6, one H200, eight lanes side by side)" \
    bash bench/device_qat_more.sh
  exit
fi
if [ "${PHASE:-}" = knobs ]; then
  U=$CORPUS; N=${STEPS:-1200}; [ -n "${SMOKE:-}" ] && N=2
  cp "$W/ts/finetune.json" "$OUT/finetune.json"
  B='"scheme": "ternary-w2a8", "deterministic": true, "steps": '$N', "unlabeled": "'$U'"'
  JOBS=$(cat <<JSON
{"lr5e-5": ["S", {$B, "lr": 5e-5}],
 "lr2e-4": ["S", {$B, "lr": 2e-4}],
 "logits": ["S", {$B, "distill": {"logits": 1.0, "hidden": 0.0, "attention": 0.0}}],
 "logits-hidden": ["S", {$B, "distill": {"logits": 1.0, "hidden": 1.0, "attention": 0.0}}],
 "ce1": ["S", {$B, "ce": 1.0}],
 "t2": ["S", {$B, "distill": {"logits": 1.0, "hidden": 1.0, "attention": 1.0, "temperature": 2.0}}],
 "mixed-e2size": ["S", {"scheme": "ternary-w2e2a8", "deterministic": true, "steps": $N, "unlabeled": "$U", "budget_mb": 6.814197}],
 "attn32": ["S", {$B, "attention_bits": 32}],
 "e2-attn32": ["S", {"scheme": "ternary-w2e2a8", "deterministic": true, "steps": $N, "unlabeled": "$U", "attention_bits": 32}]}
JSON
  )
  SMOKE=${SMOKE:-} BATCH=64 TEACHER_S=$W/ts TEACHER_W=$W/ts OUT=$OUT WORK=$W/qat JOBS="$JOBS" LANES="${LANES:-lr5e-5;lr2e-4;logits;logits-hidden;ce1;t2;mixed-e2size;attn32;e2-attn32}" \
    LANE_TIMEOUT=${LANE_TIMEOUT:-420} TITLE="QAT knobs with the unlabelled corpus, 1,200 steps of batch 64 (MiniLM-L6 on debian-sections, one H200, nine lanes side by side)" \
    bash bench/device_qat_more.sh
  exit
fi
if [ "${PHASE:-}" = steps ]; then
  U=$CORPUS; N=${STEPS:-2400}; [ -n "${SMOKE:-}" ] && N=2
  cp "$W/ts/finetune.json" "$OUT/finetune.json"
  JOBS=$(cat <<JSON
{"unl": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": $N, "unlabeled": "$U"}],
 "unl-seed1": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": $N, "unlabeled": "$U", "seed": 1}],
 "unl-aug2": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": $N, "unlabeled": "$U", "augment": 2}],
 "e2-unl": ["S", {"scheme": "ternary-w2e2a8", "deterministic": true, "steps": $N, "unlabeled": "$U"}],
 "e2-unl-aug2": ["S", {"scheme": "ternary-w2e2a8", "deterministic": true, "steps": $N, "unlabeled": "$U", "augment": 2}]}
JSON
  )
  SMOKE=${SMOKE:-} BATCH=64 TEACHER_S=$W/ts TEACHER_W=$W/ts OUT=$OUT WORK=$W/qat JOBS="$JOBS" LANES="${LANES:-unl;unl-seed1;unl-aug2;e2-unl;e2-unl-aug2}" \
    LANE_TIMEOUT=${LANE_TIMEOUT:-450} TITLE="QAT with the unlabelled corpus, 2,400 steps of batch 64 (MiniLM-L6 on debian-sections, one H200, five lanes side by side)" \
    bash bench/device_qat_more.sh
  exit
fi
$PY bench/finetune.py --model "$MODEL" --data bench/data/debian-works-with --out "$W/tw" --epochs 8 "${FT[@]}" 2>&1 | grep -E "dev|test" | tail -n 2
echo "teachers: $(( $(date +%s) - T0 )) s"

# 3. joint exit heads on debian-works-with, in the background beside the QAT lanes
(
  $PY -m edgekit.cli exits train "$W/tw" --data bench/data/debian-works-with/train.jsonl --unlabeled "$CORPUS" \
    --eval bench/data/debian-works-with/dev.jsonl --out "$W/joint" --epochs $E_JOINT --no-freeze-backbone --anchor-weight 10 \
    --no-resume > "$W/res/joint-train.log" 2>&1
  $PY bench/tools/exits_fp16.py "$W/joint" >> "$W/res/joint-train.log" 2>&1
  $PY - "$W" <<'PY' > "$W/res/joint-exits.log" 2>&1
"""Test (and dev) accuracy per exit, agreement with the final exit, and the original model's accuracy."""
import json, sys
from pathlib import Path

import numpy as np
import torch

from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.segments import torch_exits
from edgekit.build.load import load
from edgekit.build.quant.textdata import evaluate

w = Path(sys.argv[1])
m = load_exits(w / "joint")
teacher = load(w / "tw")
doc = {"training": json.loads((w / "joint" / "exits.json").read_text()).get("training", {}).get("dev")}
for split in ("dev", "test"):
    texts, labels = texts_and_labels(f"bench/data/debian-works-with/{split}.jsonl", list(m.encoder.info.labels))
    outs = torch_exits(m, m.encoder.tokenize(texts, max_length=128))
    pred = [o["output"].argmax(-1) for o in outs]
    y = np.asarray(labels)
    orig = evaluate(teacher, teacher.module, texts, labels, torch.device("cpu")).accuracy
    doc[split] = {"accuracy_per_exit": [float((p == y).mean()) for p in pred], "agreement_with_final": [float((p == pred[-1]).mean()) for p in pred],
                  "original_accuracy": orig}
(w / "res" / "joint-exits.json").write_text(json.dumps(doc, indent=1))
print(json.dumps({k: v for k, v in doc.items() if k != "training"}))
PY
  tar cf - -C "$W/joint" --exclude train_state.pt . | split -b "${PACK_PART:-16700000}" - "$OUT/pack-joint_"
  echo "joint heads done: $(( $(date +%s) - T0 )) s" >> "$W/res/joint-train.log"
) &
JOINT=$!

# 2. the QAT lanes
U=$CORPUS
JOBS=$(cat <<EOF
{"s-base": ["S", {"scheme": "ternary-w2a8", "deterministic": true}],
 "s-unl": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "unlabeled": "$U"}],
 "s-unl-long": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "unlabeled": "$U", "steps": $LONG}],
 "s-e2-unl-long": ["S", {"scheme": "ternary-w2e2a8", "deterministic": true, "unlabeled": "$U", "steps": $LONG}],
 "w-base": ["W", {"scheme": "ternary-w2a8", "deterministic": true}],
 "w-unl": ["W", {"scheme": "ternary-w2a8", "deterministic": true, "unlabeled": "$U"}],
 "w-unl-long": ["W", {"scheme": "ternary-w2a8", "deterministic": true, "unlabeled": "$U", "steps": $LONG}]}
EOF
)
SMOKE=${SMOKE:-} TEACHER_S=$W/ts TEACHER_W=$W/tw OUT=$W/res WORK=$W/qat JOBS="$JOBS" LANES="s-base;s-unl;s-unl-long;s-e2-unl-long;w-base;w-unl;w-unl-long" \
  LANE_TIMEOUT=${LANE_TIMEOUT:-400} TITLE="QAT with an in-domain unlabelled corpus (12,776 Debian descriptions; MiniLM-L6, one H200, seven lanes side by side)" \
  bash bench/device_qat_more.sh > "$W/res/qat.log" 2>&1
wait $JOINT
cp "$W/ts/finetune.json" "$W/res/finetune-sections.json" 2>/dev/null; cp "$W/tw/finetune.json" "$W/res/finetune-works-with.json" 2>/dev/null
tar cf "$OUT/results.tar" -C "$W/res" .
cat "$W/res/summary.md" "$W/res/joint-exits.log" 2>/dev/null; tail -n 3 "$W/res/joint-train.log"
echo "whole call: $(( $(date +%s) - T0 )) s"
