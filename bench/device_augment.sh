#!/usr/bin/env bash
# What more teacher signal adds to QAT (edgekit quantize --augment / --unlabeled), on one H200, in one call:
#
#   1. fine-tune the float teacher on bench/data/debian-sections (bench/finetune.py, from .ckpt/minilm-fp16);
#   2. ternary-w2a8 and bit-w1a1 (BiT multi-step, bit-w1a8 first) each on three kinds of data:
#        base  the labelled training texts only (5,584)
#        aug4  + 4 augmented copies of each (word replacement by embedding neighbours, span masking)
#        unl   + the debian-works-with training texts as unlabeled text (texts also in any
#              debian-sections split removed first: no test text is ever distilled on)
#      at the same step budget per scheme (same compute: the extra rows replace repeats of the
#      labelled ones), batch 64, bf16 autocast, length buckets, sqrt lr scaling, dev selection on
#      (bench/data/debian-sections/dev.jsonl), then test accuracy of the kept checkpoint;
#   3. a summary table: scheme x data, dev, test, samples/s, wall s.
# The three data kinds run as three processes side by side (each: ternary, then BiT), so samples/s
# are those of a shared GPU: compare them with each other, not with a GPU to itself.
#
#   run on the device (carry .ckpt/minilm-fp16 and .whl):  bash bench/device_augment.sh
#   results: $OUT/{summary.md,summary.json,reports.json,finetune.json,augment-sample.jsonl,log.txt}
#            -> bench/results/quant-augment/
#   here, a check of the script on CPU:  SMOKE=1 OUT=/tmp/aug_out bash bench/device_augment.sh
#
# Budgets (env): STEPS_T ternary steps (600), STEPS_B BiT steps per stage (500), BATCH (64), AUG copies (4),
# LANE_TIMEOUT seconds per data kind (380).
set -euo pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
PY=${PY:-python3}
W=${WORK:-/tmp/aug_work}; rm -rf "$W"; mkdir -p "$W"
SRC=bench/data/debian-sections
MODEL=${MODEL:-.ckpt/minilm-fp16}
if ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links .whl --target /tmp/pylib pydantic pydantic-core annotated-types typing-inspection typing-extensions 2>&1 | tail -2
fi
export PYTHONPATH=$PWD:/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
SMOKE=${SMOKE:-}
if [ -n "$SMOKE" ]; then  # a check of the script: a handful of texts and steps
  STEPS_T=${STEPS_T:-2}; STEPS_B=${STEPS_B:-2}; BATCH=${BATCH:-8}; FT=(--limit 48 --epochs 1); LIMIT=24
  # the tiny random-weight BERT of the tests (MiniLM on a busy 2-core CPU takes minutes a step)
  $PY -c "import sys; from pathlib import Path; sys.path.insert(0, 'tests'); from conftest import build_checkpoint; build_checkpoint('bert-embedding', Path('$W/tiny'))"
  MODEL=$W/tiny
  for s in dev test; do head -n 24 $SRC/$s.jsonl > "$W/$s.jsonl"; done
else
  STEPS_T=${STEPS_T:-600}; STEPS_B=${STEPS_B:-500}; BATCH=${BATCH:-64}; FT=(--epochs 4); LIMIT=
  cp $SRC/dev.jsonl $SRC/test.jsonl "$W/"
fi
AUG=${AUG:-4}; LANE_TIMEOUT=${LANE_TIMEOUT:-380}
T0=$(date +%s)
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "no GPU"

# 1. the teacher
$PY bench/finetune.py --model "$MODEL" --out "$W/teacher" "${FT[@]}" 2>&1 | { grep -v Warning || true; } | tail -n 3
cp "$W/teacher/finetune.json" "$OUT/finetune.json"

# the unlabeled corpus: debian-works-with train texts not in any debian-sections split
$PY - "$W" <<'PY'
import json, sys
from pathlib import Path
w = Path(sys.argv[1])
sections = {json.loads(l)["text"] for s in ("train", "dev", "test") for l in open(f"bench/data/debian-sections/{s}.jsonl") if l.strip()}
src = Path("bench/data/debian-works-with/train.jsonl")
texts = [json.loads(l)["text"] for l in src.open() if l.strip()] if src.exists() else []
kept = [t for t in texts if t not in sections]
(w / "unlabeled.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in kept))
(w / "unlabeled.json").write_text(json.dumps({"source": str(src), "texts": len(texts), "kept": len(kept), "dropped_in_sections": len(texts) - len(kept)}))
print(f"unlabeled: {len(kept)} of {len(texts)} debian-works-with train texts ({len(texts) - len(kept)} also in debian-sections, dropped)")
PY

# 2. one data kind per process: ternary, then BiT multi-step
cat > "$W/run.py" <<'PY'
import json, os, sys, time
from pathlib import Path
import torch
from edgekit.build.load import load
from edgekit.build.quant.textdata import evaluate
from edgekit.build.quant.train import TrainOptions, run
from edgekit.deploy import data as datafiles

kind, w = sys.argv[1], Path(sys.argv[2])
env = os.environ
limit = int(env["LIMIT"]) if env.get("LIMIT") else None
extra = {"base": {}, "aug4": {"augment": int(env["AUG"])}, "unl": {"unlabeled": str(w / "unlabeled.jsonl")}}[kind]
schemes = {"ternary-w2a8": {"scheme": "ternary-w2a8", "steps": int(env["STEPS_T"])},
           "bit-w1a1": {"scheme": "bit-w1a1", "multi_step": True, "steps": int(env["STEPS_B"])}}
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
for name, spec in schemes.items():
    t0 = time.time()
    out = w / f"{name}-{kind}"
    opts = TrainOptions(model=str(w / "teacher"), data="bench/data/debian-sections/train.jsonl", out=str(out),
                        eval_data=str(w / "dev.jsonl"), seed=0, progress=False, log_every=100, save_every=100000,
                        batch_size=int(env["BATCH"]), precision="auto", padding="longest", length_buckets=64, lr_scaling="sqrt",
                        limit=limit, augment_cache=str(w / "augment-cache"), keep_state=False, **spec, **extra)
    report = run(opts)
    enc = load(out)
    test = datafiles.read_labeled(w / "test.jsonl", list(enc.info.labels))
    acc = evaluate(enc, enc.module.to(device), test.texts, test.labels, device).accuracy
    res = {"scheme": name, "data": kind, "test_accuracy": acc, "wall_seconds": round(time.time() - t0, 1), "report": report.model_dump(mode="json")}
    (w / f"{name}-{kind}.result.json").write_text(json.dumps(res))
    print(f"{name} {kind}: test {acc:.4f}, {res['wall_seconds']}s", flush=True)
PY
export STEPS_T STEPS_B BATCH AUG LIMIT
pids=()
for kind in base aug4 unl; do
  timeout "$LANE_TIMEOUT" $PY "$W/run.py" $kind "$W" > "$W/$kind.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
for kind in base aug4 unl; do echo "== $kind"; { grep -v Warning "$W/$kind.log" || true; } | tail -n 8; done | tee "$OUT/log.txt"
[ $rc -eq 0 ] || echo "a lane failed or timed out (exit $rc): see log.txt"

# 3. the summary
$PY - "$W" "$OUT" "$(( $(date +%s) - T0 ))" <<'PY'
import glob, json, sys
from pathlib import Path
w, out, total = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ft = json.loads((out / "finetune.json").read_text())
unl = json.loads((w / "unlabeled.json").read_text())
rows, reports = [], {}
for f in sorted(glob.glob(str(w / "*.result.json"))):
    r = json.loads(Path(f).read_text())
    rep = r["report"]; stages = rep["stages"]; last = stages[-1]
    secs = sum(s["speed"]["train_seconds"] for s in stages)
    samples = sum(s["speed"]["samples_per_s"] * s["speed"]["train_seconds"] for s in stages)
    c = last.get("corpus") or {}
    aug = c.get("augmentation") or {}
    rows.append({
        "scheme": r["scheme"], "data": r["data"], "steps": [s["steps"] for s in stages],
        "texts": c.get("total", rep["texts"]), "unlabeled": c.get("unlabeled", 0), "augmented": c.get("augmented", 0),
        "dev": (last.get("eval") or {}).get("accuracy"), "best_dev_step": [(s.get("dev_curve") or {}).get("best_step") for s in stages],
        "test": r["test_accuracy"], "samples_per_s": round(samples / secs, 1) if secs else None, "train_s": round(secs, 1),
        "wall_s": r["wall_seconds"], "augment_s": aug.get("seconds"), "augment_cached": aug.get("cached"),
    })
    reports[f"{r['scheme']}-{r['data']}"] = rep
order = {"base": 0, "aug4": 1, "unl": 2}
rows.sort(key=lambda r: (r["scheme"], order[r["data"]]))
base = {r["scheme"]: r for r in rows if r["data"] == "base"}
lines = [
    "# More teacher signal: augmented and unlabeled text for QAT (MiniLM-L6, debian-sections, one H200)", "",
    f"Teacher (fine-tuned FP32): dev {ft['dev_accuracy']:.4f}, test {ft['test_accuracy']:.4f}. "
    f"Unlabeled: {unl['kept']} debian-works-with train texts ({unl['dropped_in_sections']} also in debian-sections dropped). "
    f"Same steps per scheme for every data kind; the three data kinds ran side by side on one GPU (samples/s of a shared GPU). "
    f"Whole call: {total} s.", "",
    "| scheme | data | texts (unl / aug) | steps | dev | test | test vs base (pt) | test drop vs FP32 (pt) | samples/s | train s | wall s |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]
for r in rows:
    b = base.get(r["scheme"])
    d = f"{100 * (r['test'] - b['test']):+.2f}" if b else "-"
    dev = "-" if r["dev"] is None else f"{r['dev']:.4f}"
    steps = "+".join(map(str, r["steps"]))
    lines.append(
        f"| {r['scheme']} | {r['data']} | {r['texts']} ({r['unlabeled']} / {r['augmented']}) | {steps} | "
        f"{dev} | {r['test']:.4f} | {d} | {100 * (ft['test_accuracy'] - r['test']):.2f} | "
        f"{r['samples_per_s']} | {r['train_s']} | {r['wall_s']} |"
    )
md = "\n".join(lines) + "\n"
(out / "summary.md").write_text(md)
(out / "summary.json").write_text(json.dumps({"teacher": ft, "unlabeled": unl, "rows": rows, "total_seconds": int(total)}, indent=1))
(out / "reports.json").write_text(json.dumps(reports))
print(md)
PY
f=$(ls "$W"/augment-cache/augmented-*.jsonl 2>/dev/null | head -1 || true)
[ -n "$f" ] && head -n 201 "$f" > "$OUT/augment-sample.jsonl"
ls -la "$OUT"
