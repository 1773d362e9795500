#!/usr/bin/env bash
# Mixed precision by sensitivity vs the uniform scheme at the same size, on the lent H200 (one call, < 8 min):
#
#   bash bench/device_mixed.sh
#
# 1. fine-tune the teacher: MiniLM-L6 (.ckpt/minilm-fp16) + a head on bench/data/debian-sections (bench/finetune.py);
# 2. QAT ternary-w2e2a8, uniform (edgekit quantize, 3 epochs, dev selection on dev.jsonl), lowered (edgekit lower);
# 3. the same with --budget-mb = the uniform artifact's size: sensitivity of every matmul and of the word
#    embeddings on dev, a 1/2/8-bit plan that fits, the same QAT, lowered;
# 4. test accuracy of both lowered INT8 artifacts (ONNX Runtime CPU, edgekit eval) on test.jsonl, never seen
#    by any choice; sizes from the lowering manifests.
# Back in $OUT: summary.json (also printed), both quant_report.json (the mixed one holds the sensitivity
# table and the plan), both lowering manifests, both eval reports. Here: copy them to bench/results/quant-mixed/.
#
# Smoke test on a CPU: LIMIT=24 STEPS=2 bash bench/device_mixed.sh  (first LIMIT rows of each split, STEPS QAT steps;
# KEEP=1 keeps $WORK and skips the steps a previous call finished there)
set -euo pipefail
OUT=${OUT:-/tmp/device_mixed}; mkdir -p "$OUT"
PY=${PY:-python3}
SCHEME=${SCHEME:-ternary-w2e2a8}
if ! $PY -c "import pydantic" 2>/dev/null; then  # the lent machine has no pydantic: the carried wheels
  $PY -m pip install -q --no-index --find-links .whl --target /tmp/pylib pydantic 2>&1 | tail -2
  export PYTHONPATH=/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # edgekit from this tree
D=${WORK:-.ckpt/device-mixed}
[ -z "${KEEP:-}" ] && rm -rf "$D"  # KEEP=1: reuse the steps a previous call finished in $D
mkdir -p "$D"
DATA=bench/data/debian-sections
LIMIT=${LIMIT:-}
if [ -n "$LIMIT" ]; then
  mkdir -p "$D/data"
  for s in train dev test; do head -n "$LIMIT" "$DATA/$s.jsonl" > "$D/data/$s.jsonl"; done
  DATA=$D/data
fi
BUDGET_ARGS=(--epochs 3)
[ -n "${STEPS:-}" ] && BUDGET_ARGS=(--steps "$STEPS")
t0=$(date +%s)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader || true

[ -f "$D/teacher/config.json" ] || $PY bench/finetune.py --model .ckpt/minilm-fp16 --out "$D/teacher" ${LIMIT:+--limit "$LIMIT"} ${LIMIT:+--epochs 1}
echo "teacher done at $(( $(date +%s) - t0 ))s"

quantize() {  # NAME EXTRA...: QAT into $D/NAME, lowered into $D/NAME-low
  local name=$1; shift
  [ -f "$D/eval-$name.json" ] && return 0
  $PY -m edgekit.cli quantize "$D/teacher" --data "$DATA/train.jsonl" --eval "$DATA/dev.jsonl" --scheme "$SCHEME" \
    "${BUDGET_ARGS[@]}" --no-progress --out "$D/$name" --cache "$D/cache-$name" "$@"
  $PY -m edgekit.cli lower "$D/$name" --out "$D/$name-low"
  $PY -m edgekit.cli eval "$D/$name-low" --data "$DATA/test.jsonl" --no-fidelity --json "$D/eval-$name.json" | tail -3
  echo "$name done at $(( $(date +%s) - t0 ))s"
}

quantize uniform
BUDGET=$($PY -c "import json; print(json.load(open('$D/uniform-low/manifest.json'))['settings']['size']['model_bytes'] / 1e6)")
echo "budget: the uniform $SCHEME artifact, $BUDGET MB"
quantize mixed --budget-mb "$BUDGET"

$PY - "$D" "$OUT" "$BUDGET" <<'EOF'
import json, shutil, sys
from pathlib import Path

d, out, budget = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
summary = {"budget_mb": budget, "runs": {}}
for name in ("uniform", "mixed"):
    report = json.loads((d / name / "quant_report.json").read_text())
    if name == "mixed" and not report.get("mixed"):
        sys.exit("the mixed run has no plan in its quant_report.json: edgekit.build.quant.train.run does not call sensitivity.plan_mixed")
    manifest = json.loads((d / f"{name}-low" / "manifest.json").read_text())
    ev = json.loads((d / f"eval-{name}.json").read_text())
    stage = report["stages"][-1]
    summary["runs"][name] = {
        "test_accuracy_lowered": ev.get("accuracy", ev.get("metrics", {}).get("accuracy")),
        "dev_accuracy": (stage.get("eval") or {}).get("accuracy"),
        "teacher_dev_accuracy": (report.get("teacher_eval") or {}).get("accuracy"),
        "lowered_mb": manifest["settings"]["size"]["model_bytes"] / 1e6,
        "weight_bits": manifest["settings"]["lowered"]["modules"]["weight_bits"],
        "parity_max_abs_diff": manifest["parity"]["max_abs_diff"],
        "int8": manifest["settings"]["lowered"]["onnxruntime_int8"]["all_int8"],
        "train_seconds": stage["seconds"],
    }
    if report.get("mixed"):
        m = report["mixed"]
        summary["runs"][name]["plan"] = {k: m[k] for k in ("part_bits", "bits_count", "size_mb", "uniform_mb", "start", "predicted_loss", "uniform_loss")}
        summary["sensitivity_top"] = [
            {"part": r["label"], **{f"w{s['bits']}": round(s["loss"], 6) for s in r["scores"]}} for r in m["sensitivity"]["rows"][:8]
        ]
    shutil.copy(d / name / "quant_report.json", out / f"quant_report-{name}.json")
    shutil.copy(d / f"{name}-low" / "manifest.json", out / f"manifest-{name}.json")
    shutil.copy(d / f"eval-{name}.json", out / f"eval-{name}.json")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
EOF
echo "total $(( $(date +%s) - t0 ))s"; ls -la "$OUT"
