#!/usr/bin/env bash
# Low-bit QAT on the second real task, and how far two runs of one recipe drift, on one H200 in one call (< 9 min):
#
#   1. fine-tune two float teachers (bench/finetune.py, from .ckpt/minilm-fp16): bench/data/debian-works-with
#      (11 labels, 1,463 train texts; EPOCHS_W=8) and bench/data/debian-sections (6 labels, 5,584 texts; 4 epochs);
#   2. six lanes side by side, each a chain of `edgekit quantize` (dev selection on dev.jsonl) -> `edgekit lower`
#      -> `edgekit eval` of the lowered INT8 artifact on test.jsonl (ONNX Runtime CPU), what a user ships:
#        works-with  ternary-w2a8; ternary-w2e2a8; a mixed plan at the uniform W2E2A8 lowered size (--budget-mb)
#        works-with  bit-w1a1 and bit-w1e1a1, BiT multi-step (bit-w1a8 first)
#        sections    ternary-w2a8 600 steps, twice with --deterministic and twice without (the two-run spread)
#      every run: seed 0, batch 64, bf16 autocast, length buckets, sqrt lr scaling;
#   3. the QAT step speed of this tree against the previous commit's code (.base/edgekit, if carried), alone on
#      the GPU after the lanes: ternary-w2a8, batch 128, 150 steps (bench/quant_speed.py).
#
#   env: LANES (default "wt wb s"; also "w2a8", "w2e2a8", "w1a1", "w1e1a1": one works-with run in its own lane),
#        W_EXTRA (flags added to every works-with quantize, e.g. "--augment 8"), T_W_ARGS / B_W_ARGS (the
#        ternary / BiT budget on works-with, default "--epochs 8" / "--epochs 10"), SPEED=0 skips step 3.
#   lent GPU (carry .ckpt/minilm-fp16, .whl and optionally .base):  bash bench/device_second_task.sh
#   back: $OUT/summary.md, summary.json, reports.json, speed/ -> bench/results/quant-second-task/
#   here, a check of the script on CPU:  SMOKE=1 OUT=/tmp/st_out bash bench/device_second_task.sh
set -uo pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
PY=${PY:-python3}
W=${WORK:-/tmp/st_work}; rm -rf "$W"; mkdir -p "$W"
MODEL=${MODEL:-.ckpt/minilm-fp16}
if ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links .whl --target /tmp/pylib pydantic pydantic-core annotated-types typing-inspection typing-extensions 2>&1 | tail -2
fi
export PYTHONPATH=$PWD:/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
EK=($PY -m edgekit.cli)
T0=$(date +%s)
LANE_TIMEOUT=${LANE_TIMEOUT:-400}
if [ -n "${SMOKE:-}" ]; then  # a check of the script: the tiny random BERT of the tests, a handful of texts and steps
  $PY -c "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from conftest import build_checkpoint; build_checkpoint('bert-embedding', Path('$W/tiny'))"
  MODEL=$W/tiny; FT=(--limit 48 --epochs 1); FTW=(--limit 48 --epochs 1)
  T_W=(--steps 2); B_W=(--steps 2); T_S=(--steps 2); BATCH=8
  for task in debian-works-with debian-sections; do  # 40 texts a split, dev/test only with labels the train rows have
    $PY - "$task" "$W/data/$task" <<'SPLIT'
import json, sys
from pathlib import Path
src, dst = Path("bench/data") / sys.argv[1], Path(sys.argv[2])
dst.mkdir(parents=True)
rows = {s: [json.loads(l) for l in (src / f"{s}.jsonl").open() if l.strip()] for s in ("train", "dev", "test")}
train = rows["train"][:40]
seen = {r["label"] for r in train}
for s, kept in (("train", train), ("dev", [r for r in rows["dev"] if r["label"] in seen][:40]), ("test", [r for r in rows["test"] if r["label"] in seen][:40])):
    (dst / f"{s}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
SPLIT
  done
  DW=$W/data/debian-works-with; DS=$W/data/debian-sections
else
  FT=(--epochs 4); FTW=(--epochs "${EPOCHS_W:-8}")
  read -ra T_W <<< "${T_W_ARGS:---epochs ${TERNARY_EPOCHS_W:-8}}"; read -ra B_W <<< "${B_W_ARGS:---epochs ${BIT_EPOCHS_W:-10}}"
  T_S=(--steps 600); BATCH=64
  DW=bench/data/debian-works-with; DS=bench/data/debian-sections
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"

LANES=${LANES:-wt wb s}
read -ra W_X <<< "${W_EXTRA:-}"
TEACHERS=w; [[ " $LANES " == *" s "* ]] && TEACHERS="w s"

# 1. the teachers, side by side
$PY bench/finetune.py --model "$MODEL" --data "$DW" --out "$W/teacher-w" "${FTW[@]}" > "$W/ft-w.log" 2>&1 &
[[ $TEACHERS == *s* ]] && $PY bench/finetune.py --model "$MODEL" --data "$DS" --out "$W/teacher-s" "${FT[@]}" > "$W/ft-s.log" 2>&1 &
wait
for t in $TEACHERS; do grep "^{" "$W/ft-$t.log" | tail -n 1 > "$W/finetune-$t.json" && [ -s "$W/finetune-$t.json" ] || { echo "teacher $t failed:"; tail -n 20 "$W/ft-$t.log"; exit 1; }; done
echo "teachers: $(( $(date +%s) - T0 )) s"

COMMON=(--batch-size "$BATCH" --lr-scaling sqrt --no-progress --seed 0)
DEADLINE=$(( $(date +%s) + LANE_TIMEOUT ))
run() {  # NAME TEACHER DATA EXTRA...: QAT, lower, eval on test; a failure is logged, the lane goes on
  local name=$1 teacher=$2 data=$3; shift 3
  local s=$(date +%s) left=$(( DEADLINE - $(date +%s) ))
  [ "$left" -gt 20 ] || { echo "$name: skipped, the lanes' time is up"; return 0; }
  { timeout "$left" "${EK[@]}" quantize "$teacher" --data "$data/train.jsonl" --eval "$data/dev.jsonl" "${COMMON[@]}" --out "$W/$name" \
      --cache "$W/cache-$name" "$@" \
    && timeout 120 "${EK[@]}" lower "$W/$name" --out "$W/$name-low" \
    && timeout 120 "${EK[@]}" eval "$W/$name-low" --data "$data/test.jsonl" --no-fidelity --json "$W/eval-$name.json"; } > "$W/$name.log" 2>&1 \
    || { echo "$name FAILED (its log's end below)"; tail -n 15 "$W/$name.log"; }
  echo "$name: $(( $(date +%s) - s )) s"
}
budget_of() { $PY -c "import json; print(json.load(open('$W/$1-low/manifest.json'))['settings']['size']['model_bytes'] / 1e6)"; }
lane_w_ternary() {
  run w-w2a8 "$W/teacher-w" "$DW" --scheme ternary-w2a8 "${T_W[@]}" "${W_X[@]}"
  run w-w2e2a8 "$W/teacher-w" "$DW" --scheme ternary-w2e2a8 "${T_W[@]}" "${W_X[@]}"
  [ -f "$W/w-w2e2a8-low/manifest.json" ] && run w-mixed "$W/teacher-w" "$DW" --scheme ternary-w2e2a8 "${T_W[@]}" "${W_X[@]}" --budget-mb "$(budget_of w-w2e2a8)"
}
lane_w_bit() {
  run w-w1a1 "$W/teacher-w" "$DW" --scheme bit-w1a1 --multi-step "${B_W[@]}" "${W_X[@]}"
  run w-w1e1a1 "$W/teacher-w" "$DW" --scheme bit-w1e1a1 --multi-step "${B_W[@]}" "${W_X[@]}"
}
for lane in $LANES; do
  case $lane in
    wt) lane_w_ternary > "$W/lane-wt.log" 2>&1 & ;;
    wb) lane_w_bit > "$W/lane-wb.log" 2>&1 & ;;
    w2a8|w2e2a8) run "w-$lane" "$W/teacher-w" "$DW" --scheme "ternary-$lane" "${T_W[@]}" "${W_X[@]}" > "$W/lane-$lane.log" 2>&1 & ;;
    w1a1|w1e1a1) run "w-$lane" "$W/teacher-w" "$DW" --scheme "bit-$lane" --multi-step "${B_W[@]}" "${W_X[@]}" > "$W/lane-$lane.log" 2>&1 & ;;
    s)
      for r in det1 det2; do run s-$r "$W/teacher-s" "$DS" --scheme ternary-w2a8 "${T_S[@]}" --deterministic > "$W/lane-$r.log" 2>&1 & done
      for r in nd1 nd2; do run s-$r "$W/teacher-s" "$DS" --scheme ternary-w2a8 "${T_S[@]}" > "$W/lane-$r.log" 2>&1 & done ;;
    *) echo "unknown lane $lane (wt wb w2a8 w2e2a8 w1a1 w1e1a1 s)"; exit 2 ;;
  esac
done
wait
cat "$W"/lane-*.log | tee "$OUT/log.txt"
echo "lanes: $(( $(date +%s) - T0 )) s" | tee -a "$OUT/log.txt"

# 3. step speed, alone on the GPU, if the call has time left
if [ -z "${SMOKE:-}" ] && [ "${SPEED:-1}" != 0 ] && [ $(( $(date +%s) - T0 )) -lt "${SPEED_BEFORE:-430}" ]; then
  RUNS=ternary-new128-steps
  [ -d .base/edgekit ] && RUNS=ternary-new128-steps,ternary-new128-prev
  timeout 120 $PY bench/quant_speed.py --teacher "$W/teacher-s" --work "$W/qs" --out "$OUT/speed" --runs "$RUNS" --baseline-code .base --timeout 55 \
    2>&1 | tail -n 8 | tee -a "$OUT/log.txt"
fi

# the summary
$PY - "$W" "$OUT" "$(( $(date +%s) - T0 ))" <<'PY'
import json, statistics, sys
from pathlib import Path

w, out, total = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
teachers = {t: json.loads((w / f"finetune-{t}.json").read_text()) for t in ("w", "s") if (w / f"finetune-{t}.json").exists()}
rows, reports = [], {}
for ev in sorted(w.glob("eval-*.json")):
    name = ev.stem.removeprefix("eval-")
    e = json.loads(ev.read_text())
    rep = json.loads((w / name / "quant_report.json").read_text())
    man = json.loads((w / f"{name}-low" / "manifest.json").read_text())
    reports[name] = rep
    last = rep["stages"][-1]
    teacher = teachers[name[0]]
    acc = e.get("accuracy", (e.get("metrics") or {}).get("accuracy"))
    rows.append({
        "run": name, "task": "debian-works-with" if name[0] == "w" else "debian-sections", "scheme": rep["scheme"],
        "deterministic": rep.get("deterministic", False), "steps": [s["steps"] for s in rep["stages"]],
        "dev": (last.get("eval") or {}).get("accuracy"), "test_lowered": acc,
        "teacher_test": teacher["test_accuracy"], "drop_pt": None if acc is None else round(100 * (teacher["test_accuracy"] - acc), 2),
        "retention": None if acc is None else round(acc / teacher["test_accuracy"], 4),
        "lowered_mb": round(man["settings"]["size"]["model_bytes"] / 1e6, 2),
        "int8": man["settings"]["lowered"]["onnxruntime_int8"]["all_int8"],
        "samples_per_s": round(sum(s["speed"]["samples_per_s"] * s["speed"]["train_seconds"] for s in rep["stages"])
                               / max(1e-9, sum(s["speed"]["train_seconds"] for s in rep["stages"])), 1),
        "plan": (rep.get("mixed") or {}).get("bits_count"),
    })
spread = {}
for kind in ("det", "nd"):
    accs = [r["test_lowered"] for r in rows if r["run"].startswith(f"s-{kind}") and r["test_lowered"] is not None]
    devs = [r["dev"] for r in rows if r["run"].startswith(f"s-{kind}") and r["dev"] is not None]
    if len(accs) == 2:
        spread[kind] = {"test": accs, "test_spread_pt": round(100 * abs(accs[0] - accs[1]), 2), "dev": devs,
                        "dev_spread_pt": round(100 * abs(devs[0] - devs[1]), 2) if len(devs) == 2 else None}
lines = [
    "# Low-bit QAT on a second real task, and the two-run spread (MiniLM-L6, one H200, lowered INT8 artifacts on ORT CPU)", "",
    "Teachers (FP32, bench/finetune.py): " + "; ".join(
        f"{'debian-works-with' if t == 'w' else 'debian-sections'} dev {v['dev_accuracy']:.4f} test {v['test_accuracy']:.4f}" for t, v in teachers.items()
    ) + f". Lanes ran side by side on one GPU (samples/s of a shared GPU). Whole call: {total} s.", "",
    "| run | task | scheme | deterministic | steps | dev | test (lowered) | drop vs FP32 (pt) | retention | lowered MB | all INT8 | plan (bits: parts) | samples/s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    dev = "-" if r["dev"] is None else f"{r['dev']:.4f}"
    test = "-" if r["test_lowered"] is None else f"{r['test_lowered']:.4f}"
    lines.append(f"| {r['run']} | {r['task']} | {r['scheme']} | {r['deterministic']} | {'+'.join(map(str, r['steps']))} | {dev} | {test} | "
                 f"{r['drop_pt']} | {r['retention']} | {r['lowered_mb']} | {r['int8']} | {r['plan'] or '-'} | {r['samples_per_s']} |")
lines += ["", "Two runs of one recipe (debian-sections, ternary-w2a8, 600 steps, seed 0):", ""]
for kind, s in spread.items():
    lines.append(f"- {'--deterministic' if kind == 'det' else 'default kernels'}: test {s['test']} (spread {s['test_spread_pt']} pt), dev {s['dev']} (spread {s['dev_spread_pt']} pt)")
speed = out / "speed" / "summary.md"
if speed.exists():
    lines += ["", "Step speed, alone on the GPU (bench/quant_speed.py):", "", speed.read_text()]
md = "\n".join(lines) + "\n"
(out / "summary.md").write_text(md)
(out / "summary.json").write_text(json.dumps({"teachers": teachers, "rows": rows, "spread": spread, "total_seconds": total}, indent=1))
(out / "reports.json").write_text(json.dumps(reports))
print(md)
PY
ls -la "$OUT"
