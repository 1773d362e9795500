#!/usr/bin/env bash
# Early-exit heads that hold their budget on unseen data, on debian-sections (one call on the lent GPU, < 8 minutes):
#   1. fine-tune the teacher classifier (bench/finetune.py) from the fp16 MiniLM carried in .ckpt/minilm-fp16;
#   2. train exit heads after every layer twice: frozen backbone, and jointly (--no-freeze-backbone:
#      multi-exit self-distillation, the final exit anchored to the teacher);
#   3. calibrate each on dev (--max-drop $MAX_DROP, default 1) with the 90 % bootstrap bound and with the point estimate;
#      latency measured on ort-cpu (TIMING=none: no target, expected layers only; the GPU machine has no openvino);
#   4. on test: accuracy per exit, and each chosen point's test drop against its dev drop and bound.
#
#   lent GPU:  OUT=$OUT bash bench/device_exits.sh        (tree carries .ckpt/minilm-fp16 and .whl)
#   env: SRC data folder (bench/data/debian-sections), FT_EPOCHS the teacher's epochs (4), TEACHER a classifier already fine-tuned on it (skips step 1),
#        JOINT_ARGS more `exits train` flags for the joint heads, E_JOINT their epochs (4), TIMING ort-cpu | none,
#        UNLABELED=1: every head also distils on bench/data/debian-unlabeled (exits train --unlabeled),
#        UNLABELED_HOLDOUT=N: except N of its texts (seeded shuffle, bench/tools/split_corpus.py --seed 0), kept for calibration,
#        HEADS which heads ("frozen joint"; also "frozen-mean": frozen heads reading the mean of the tokens), CONFS the bound levels to calibrate with ("0.9 0"; "0.9g": over the
#        rows' source packages, --groups source), QUANT a scheme (e.g. ternary-w2a8): the heads go on a QAT student
#        of the teacher (edgekit quantize, QUANT_ARGS; default batch 256, sqrt lr, 6 epochs), which is then "the
#        original model" the drops are counted against, and the segments are lowered to INT8,
#        DEPLOY=target|none: after each head's summary, bench/exit_deploy_sample.py (5 splits of test into an unlabelled
#        deployment half and a report half; timed on that target unless none) -> $OUT/deploy-<head>.json,
#        PACK=1 (or PACK="frozen-mean ..." for some heads only): each heads folder comes back as $OUT/pack-<head>_a? (PACK_PART bytes, 15M by default; here: cat pack-joint_* | tar xf - -C HEADS,
#        then bench/exit_deploy_run.py HEADS). Joint heads: the float backbone is stored in fp16 right after training
#        (bench/tools/exits_fp16.py, so every figure is of the weights that come back). Frozen heads: the checkpoint they
#        sit on goes along as backbone/, in fp16 when it is a float one; a QAT student fits only when saved in fp16
#        (QUANT_ARGS with --save-dtype float16)
#   here (CPU check of the script):  SMOKE=1 TIMING=none OUT=/tmp/exits_out bash bench/device_exits.sh
# Back: $OUT/exits-quality.json and .md, the four calibration.json/.png -> bench/results/exits-quality/.
set -euo pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
W=${WORK:-/tmp/exits_work}; rm -rf "$W"; mkdir -p "$W"
SRC=${SRC:-bench/data/debian-sections}
. bench/tools/device_env.sh  # MODEL unpacked, pydantic, PYTHONPATH
TIMING=${TIMING:-ort-cpu}
EK=($PY -m edgekit.cli)
if [ -n "${SMOKE:-}" ]; then  # a check of the script: a handful of texts and steps
  FT=(--limit 64 --epochs 1); E_FROZEN=1; E_JOINT=1; N=${N:-64}
else
  FT=(--epochs ${FT_EPOCHS:-4}); E_FROZEN=20; E_JOINT=${E_JOINT:-4}; N=
fi
for s in train dev test; do
  if [ -n "$N" ]; then head -n "$N" $SRC/$s.jsonl > "$W/$s.jsonl"; else cp $SRC/$s.jsonl "$W/"; fi
done
UNL=()
if [ -n "${UNLABELED:-}" ]; then
  xz -dkc bench/data/debian-unlabeled/train.txt.xz > "$W/unlabeled.txt"
  [ -n "$N" ] && { head -n "$N" "$W/unlabeled.txt" > "$W/u.txt"; mv "$W/u.txt" "$W/unlabeled.txt"; }
  if [ -n "${UNLABELED_HOLDOUT:-}" ]; then  # texts the heads never see, for calibrating on unlabelled text afterwards
    $PY bench/tools/split_corpus.py "$W/unlabeled.txt" "$W/u.txt" "$W/unlabeled-holdout.txt" --holdout "$UNLABELED_HOLDOUT" --seed 0
    mv "$W/u.txt" "$W/unlabeled.txt"
  fi
  UNL=(--unlabeled "$W/unlabeled.txt")
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader || true
t0=$(date +%s)
if [ -n "${TEACHER:-}" ]; then  # a teacher fine-tuned before (bench/finetune.py on the same SRC)
  ln -s "$(cd "$TEACHER" && pwd)" "$W/teacher"
else
  $PY bench/finetune.py --model "$MODEL" --data "$SRC" --out "$W/teacher" "${FT[@]}" 2>&1 | tail -3
fi
echo "teacher: $(( $(date +%s) - t0 )) s"
BASE=$W/teacher
if [ -n "${QUANT:-}" ]; then
  QA=(--batch-size 256 --lr-scaling sqrt --epochs 6); [ -n "${SMOKE:-}" ] && QA=(--steps 2 --batch-size 8)
  [ -n "${QUANT_ARGS:-}" ] && read -ra QA <<< "$QUANT_ARGS"
  "${EK[@]}" quantize "$W/teacher" --data "$W/train.jsonl" --eval "$W/dev.jsonl" --scheme "$QUANT" "${QA[@]}" --seed 0 --no-progress \
    --out "$W/quantized" --cache "$W/qcache" 2>&1 | tail -2
  BASE=$W/quantized
  echo "quantized ($QUANT): $(( $(date +%s) - t0 )) s"
fi
# both keep the epoch chosen on dev (--eval): the best early exits whose final exit stays within 0.2 points of the original
HEADS=${HEADS:-frozen joint}; CONFS=${CONFS:-0.9 0}
export HEADS CONFS
for h in frozen frozen-mean; do  # frozen-mean: the heads read the mean of the tokens (--head-pooling mean)
  [[ " $HEADS " == *" $h "* ]] || continue
  HP=(); [ "$h" = frozen-mean ] && HP=(--head-pooling mean)
  "${EK[@]}" exits train "$BASE" --data "$W/train.jsonl" --eval "$W/dev.jsonl" --out "$W/$h" --epochs $E_FROZEN --no-resume "${HP[@]}" "${UNL[@]}"
  echo "$h heads: $(( $(date +%s) - t0 )) s"
  if [[ " ${PACK:-} " == *" $h "* || "${PACK:-}" == 1 ]]; then  # the checkpoint under the heads travels with them (load_exits reads backbone/ first)
    cp -rL "$BASE" "$W/$h/backbone"  # -L: a TEACHER given is a symlink; its files must travel, not the link
    # a float checkpoint travels in fp16 (90 MB in fp32 is past the return limits); calibrated below on the same weights.
    # A QAT student stays as it is (its latent weights decide its codes; the tool refuses it)
    $PY bench/tools/exits_fp16.py "$W/$h" || true
    tar cf - -C "$W/$h" --exclude train_state.pt . | split -b "${PACK_PART:-15M}" - "$OUT/pack-${h}_"
  fi
done
# JOINT_ARGS: e.g. "--anchor-weight 4 --backbone-lr 1e-5"
if [[ " $HEADS " == *" joint "* ]]; then
  "${EK[@]}" exits train "$BASE" --data "$W/train.jsonl" --eval "$W/dev.jsonl" --out "$W/joint" --epochs $E_JOINT --no-freeze-backbone "${UNL[@]}" \
    --no-resume ${JOINT_ARGS:-}
  echo "joint: $(( $(date +%s) - t0 )) s"
  if [[ " ${PACK:-} " == *" joint "* || "${PACK:-}" == 1 ]]; then
    $PY bench/tools/exits_fp16.py "$W/joint"
    tar cf - -C "$W/joint" --exclude train_state.pt . | split -b "${PACK_PART:-15M}" - "$OUT/pack-joint_"
  fi
fi
TGT=(); [ "$TIMING" != none ] && TGT=(--target "$TIMING")
# the test-side summary, rewritten after each head's calibration (a call cut short keeps what it finished)
cat > "$W/summary.py" <<'PY'
"""Test accuracy per exit, and each calibrated point on test (dev drop, its bound, test drop)."""
import json, sys
from pathlib import Path

import numpy as np

from edgekit.build.exits.dev import texts_and_labels
from edgekit.build.exits.calibrate import Scorer
from edgekit.build.exits.model import load_exits
from edgekit.build.exits.segments import torch_exits

W, OUT = Path(sys.argv[1]), Path(sys.argv[2])
doc, lines = {}, ["| heads | bound | test acc per exit (layers 1..6) | chosen | exits kept | dev drop | dev bound | test drop | test drop vs original | mean layers (test) | expected latency vs single graph (dev) |", "|" + "---|" * 11]
import os

from edgekit.build.load import load
import torch
from edgekit.build.quant.textdata import evaluate

t_enc = load(sys.argv[3])  # the teacher, or its QAT student (QUANT)
t_texts, t_labels = texts_and_labels(W / "test.jsonl", list(t_enc.info.labels or []))
teacher = evaluate(t_enc, t_enc.module, t_texts, t_labels, torch.device("cpu")).accuracy  # the original model, without exits
doc["original_test_accuracy"] = teacher
doc["original"] = os.environ.get("QUANT") or "fp32"
for h in os.environ["HEADS_DONE"].split():  # the heads calibrated so far
    m = load_exits(W / h)
    texts, labels = texts_and_labels(W / "test.jsonl", list(m.encoder.info.labels or []))
    exits = torch_exits(m, m.encoder.tokenize(texts, max_length=m.encoder.info.max_length))
    y = np.asarray(labels)
    per_exit = [float((e["output"].argmax(-1) == y).mean()) for e in exits]
    doc[h] = {"test_per_exit": per_exit, "test_final_vs_teacher_points": 100 * (per_exit[-1] - teacher), "points": {},
              "dev_choice": json.loads((W / h / "exits.json").read_text()).get("training", {}).get("dev")}
    for c in os.environ["CONFS"].split():
        f = W / f"cal-{h}-c{c}" / "calibration.json"
        if not f.exists():
            msg = (W / f"cal-{h}-c{c}.log").read_text().strip().splitlines()[-1:]
            doc[h]["points"][c] = {"error": msg}
            lines.append(f"| {h} | {c} | {' '.join(f'{100 * q:.1f}' for q in per_exit)} | {' '.join(msg)} | | | | | | | |")
            continue
        cal = json.loads(f.read_text())
        ch = cal["chosen"]
        if ch is None:
            doc[h]["points"][c] = {"recommendation": cal["recommendation"], "message": cal["message"]}
            lines.append(f"| {h} | {c} | {' '.join(f'{100 * q:.1f}' for q in per_exit)} | {cal['recommendation']} | | | | | | | |")
            continue
        layers = list(m.config.layers)
        keep = None if ch["exits"] is None else [layers.index(k) for k in ch["exits"][:-1]]
        s = Scorer(exits, layers, m.task, y)
        p = s.point(ch["policy"], ch["param"], keep)  # no length plan on test: every row checks exits
        iv = cal.get("interval") or {}
        row = {
            "spec": f"{ch['policy']}={ch['param']}", "exits": ch["exits"], "dev_drop": 100 * (cal["base_quality"] - ch["quality"]),
            "dev_bound": iv.get("drop_high"), "dev_texts_needed": iv.get("dev_texts_needed"), "dev_groups": iv.get("dev_groups"),
            "test_drop": 100 * (s.base - p.quality), "test_drop_vs_original": 100 * (teacher - p.quality), "test_mean_layers": p.mean_layers,
            "expected_latency_ms": ch["expected_latency_ms"], "latency_ratio": ch["latency_ratio"],
        }
        doc[h]["points"][c] = row
        b = f"{row['dev_bound']:.2f}" if row["dev_bound"] is not None else "-"
        lines.append(
            f"| {h} | {c} | {' '.join(f'{100 * q:.1f}' for q in per_exit)} | {row['spec']} | {ch['exits'] or 'all'} | "
            f"{row['dev_drop']:.2f} | {b} | {row['test_drop']:.2f} | {row['test_drop_vs_original']:.2f} | {p.mean_layers:.2f} | "
            f"{'-' if row['latency_ratio'] is None else format(row['latency_ratio'], '.2f') + 'x'} |"
        )
(OUT / "exits-quality.json").write_text(json.dumps(doc, indent=1) + "\n")
(OUT / "exits-quality.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
DONE=
for h in $HEADS; do
  for c in $CONFS; do
    name=$h-c$c
    GRP=(); [[ $c == *g ]] && GRP=(--groups source)  # "0.9g": the bound resamples source packages, not rows
    # a dev set too small for the bound, or a budget nothing meets, is reported as such (exit 2), not fatal here
    "${EK[@]}" exits calibrate "$W/$h" --data "$W/dev.jsonl" --out "$W/cal-$name" --max-drop "${MAX_DROP:-1}" --confidence "${c%g}" "${TGT[@]}" "${GRP[@]}" \
      2>&1 | tee "$W/cal-$name.log" | tail -6 || true
    [ -f "$W/cal-$name/calibration.json" ] && cp "$W/cal-$name/calibration.json" "$OUT/calibration-$name.json"
    [ -f "$W/cal-$name/calibration.png" ] && cp "$W/cal-$name/calibration.png" "$OUT/calibration-$name.png"
  done
  echo "calibrated $h: $(( $(date +%s) - t0 )) s"
  DONE="$DONE $h"
  HEADS_DONE=$DONE $PY "$W/summary.py" "$W" "$OUT" "$BASE"
  if [ -n "${DEPLOY:-}" ]; then
    DT=(); [ "$DEPLOY" != none ] && DT=(--target "$DEPLOY")
    $PY bench/exit_deploy_sample.py "$W/$h" --data "$W" --seeds "${SEEDS:-5}" --max-drop "${MAX_DROP:-1}" "${DT[@]}" \
      --json "$OUT/deploy-$h.json" 2>&1 | tail -4
    echo "deployment sample $h: $(( $(date +%s) - t0 )) s"
  fi
done
echo "total: $(( $(date +%s) - t0 )) s"
ls -la "$OUT"
