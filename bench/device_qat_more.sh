#!/usr/bin/env bash
# Two questions about QAT, on one H200 in one call (six lanes side by side, < 7 min after the teachers):
#
#   spread   four runs of one recipe on debian-sections (ternary-w2a8, 600 steps, seed 0): two with
#            --deterministic, two without; dev and test accuracy of each kept checkpoint;
#   signal   on the small second task (debian-works-with, 1,463 training texts) what eight augmented copies of
#            each text add: ternary-w2a8 600 steps with and without --augment 8; bit-w1a1 BiT multi-step
#            500+500 steps with --augment 8 (device_second_task.sh has it without, at 230+230 steps).
#   every run: batch 64, bf16 autocast, length buckets, sqrt lr scaling, dev selection on dev.jsonl; test accuracy
#   of the fake-quant PyTorch model on the GPU (the lowered INT8 artifact agrees with it: lowering's parity check).
#
#   env: TEACHER_S, TEACHER_W classifiers fine-tuned on debian-sections / debian-works-with (bench/finetune.py)
#   lent GPU (carry .whl):  TEACHER_S=... TEACHER_W=... OUT=$OUT/qat bash bench/device_qat_more.sh
#   back: $OUT/summary.md, summary.json, reports.json -> bench/results/quant-second-task/
#   here, a check of the script:  SMOKE=1 TEACHER_S=... TEACHER_W=... OUT=/tmp/qm bash bench/device_qat_more.sh
#
#   other studies with the same lanes and summary: JOBS='{"NAME": ["S" or "W", {TrainOptions fields}], ...}' replaces the
#   job table (S: debian-sections with TEACHER_S, W: debian-works-with with TEACHER_W; "steps" defaults to ST), and
#   LANES='a b;c;d' says which jobs run one after another in each lane (lanes are split by ';'); TITLE heads the summary.
set -uo pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
PY=${PY:-python3}
W=${WORK:-/tmp/qm_work}; rm -rf "$W"; mkdir -p "$W"
: "${TEACHER_S:?a classifier fine-tuned on debian-sections}" "${TEACHER_W:?a classifier fine-tuned on debian-works-with}"
if ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links .whl --target /tmp/pylib pydantic pydantic-core annotated-types typing-inspection typing-extensions 2>&1 | tail -2
fi
export PYTHONPATH=$PWD:/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
T0=$(date +%s)
if [ -n "${SMOKE:-}" ]; then ST=2; SB=2; AUG=1; BATCH=8; LIMIT=24; else ST=600; SB=500; AUG=${AUG:-8}; BATCH=${BATCH:-64}; LIMIT=; fi
export ST SB AUG BATCH LIMIT TEACHER_S TEACHER_W
cat > "$W/lane.py" <<'PY'
"""One lane: the jobs named in argv, one after another; each writes NAME.result.json."""
import json, os, sys, time
from pathlib import Path

import torch

from edgekit.build.load import load
from edgekit.build.quant.textdata import evaluate
from edgekit.build.quant.train import TrainOptions, run
from edgekit.deploy import data as datafiles

w = Path(sys.argv[1])
env = os.environ
st, sb, aug = int(env["ST"]), int(env["SB"]), int(env["AUG"])
S, WW = Path("bench/data/debian-sections"), Path("bench/data/debian-works-with")
JOBS = {
    "s-det1": (S, env["TEACHER_S"], {"scheme": "ternary-w2a8", "steps": st, "deterministic": True}),
    "s-det2": (S, env["TEACHER_S"], {"scheme": "ternary-w2a8", "steps": st, "deterministic": True}),
    "s-nd1": (S, env["TEACHER_S"], {"scheme": "ternary-w2a8", "steps": st}),
    "s-nd2": (S, env["TEACHER_S"], {"scheme": "ternary-w2a8", "steps": st}),
    "w-w2a8-aug": (WW, env["TEACHER_W"], {"scheme": "ternary-w2a8", "steps": st, "augment": aug}),
    "w-w2a8-base": (WW, env["TEACHER_W"], {"scheme": "ternary-w2a8", "steps": st}),
    "w-w1a1-aug": (WW, env["TEACHER_W"], {"scheme": "bit-w1a1", "multi_step": True, "steps": sb, "augment": aug}),
}
if env.get("JOBS"):  # another study: {name: [task, spec]}
    TASKS = {"S": (S, env["TEACHER_S"]), "W": (WW, env["TEACHER_W"])}
    JOBS = {n: (*TASKS[t], {"steps": st, **spec}) for n, (t, spec) in json.loads(env["JOBS"]).items()}
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
for name in sys.argv[2:]:
    src, teacher, spec = JOBS[name]
    t0 = time.time()
    out = w / name
    try:
        opts = TrainOptions(model=teacher, data=str(src / "train.jsonl"), out=str(out), eval_data=str(src / "dev.jsonl"),
                            progress=False, log_every=100, save_every=100000, batch_size=int(env["BATCH"]), lr_scaling="sqrt",
                            limit=int(env["LIMIT"]) if env.get("LIMIT") else None, augment_cache=str(w / "augment-cache"),
                            keep_state=False, **{"seed": 0, **spec})
        report = run(opts)
        enc = load(out)
        test = datafiles.read_labeled(src / "test.jsonl", list(enc.info.labels))
        acc = evaluate(enc, enc.module.to(device), test.texts, test.labels, device).accuracy
    except Exception as err:  # one failing job does not stop its lane
        print(f"{name}: FAILED {type(err).__name__}: {err}", flush=True)
        continue
    res = {"name": name, "task": src.name, "spec": spec, "test_accuracy": acc, "wall_seconds": round(time.time() - t0, 1),
           "report": report.model_dump(mode="json")}
    (w / f"{name}.result.json").write_text(json.dumps(res))
    print(f"{name}: test {acc:.4f}, {res['wall_seconds']} s", flush=True)
PY
IFS=';' read -ra LANE_LIST <<< "${LANES:-s-det1;s-det2;s-nd1;s-nd2;w-w2a8-aug w-w2a8-base;w-w1a1-aug}"
export JOBS="${JOBS:-}"
pids=()
for lane in "${LANE_LIST[@]}"; do
  timeout "${LANE_TIMEOUT:-420}" $PY "$W/lane.py" "$W" $lane > "$W/lane-${lane%% *}.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for f in "$W"/lane-*.log; do echo "== $f"; grep -v Warning "$f" | grep -E "^\[|: test|FAILED|Error" | tail -n 6; done | tee "$OUT/log.txt"

$PY - "$W" "$OUT" "$(( $(date +%s) - T0 ))" <<'PY'
import json, os, sys
from pathlib import Path

w, out, total = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
res = {p.name.removesuffix(".result.json"): json.loads(p.read_text()) for p in sorted(w.glob("*.result.json"))}
rows = []
for name, r in res.items():
    stages = r["report"]["stages"]
    last = stages[-1]
    rows.append({
        "run": name, "task": r["task"], "scheme": r["report"]["scheme"], "deterministic": r["report"].get("deterministic", False),
        "augment": r["spec"].get("augment", 0), "seed": r["report"].get("seed"), "texts": (last.get("corpus") or {}).get("total", r["report"]["texts"]),
        "steps": [s["steps"] for s in stages], "best_dev_step": [(s.get("dev_curve") or {}).get("best_step") for s in stages],
        "dev": (last.get("eval") or {}).get("accuracy"), "test": r["test_accuracy"],
        "teacher_dev": (r["report"].get("teacher_eval") or {}).get("accuracy"),
        "loss_last": last.get("loss_last"), "train_s": round(sum(s["seconds"] for s in stages), 1), "wall_s": r["wall_seconds"],
    })
spread = {}
for kind in ("det", "nd"):
    pair = [r for r in rows if r["run"].startswith(f"s-{kind}")]
    if len(pair) == 2:
        spread[kind] = {
            "test": [p["test"] for p in pair], "test_spread_pt": round(100 * abs(pair[0]["test"] - pair[1]["test"]), 2),
            "dev": [p["dev"] for p in pair], "dev_spread_pt": round(100 * abs(pair[0]["dev"] - pair[1]["dev"]), 2),
            "loss_last": [p["loss_last"] for p in pair], "best_dev_step": [p["best_dev_step"] for p in pair],
        }
lines = [
    "# " + (os.environ.get("TITLE") or "QAT: two-run spread, and augmentation on a small task (MiniLM-L6, one H200; six lanes side by side)"), "",
    f"Whole call: {total} s. Test accuracy of the fake-quant PyTorch model of each kept checkpoint.", "",
    "| run | task | scheme | seed | deterministic | augment | texts distilled | steps | best dev step | dev | test | train s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    dev = "-" if r["dev"] is None else f"{r['dev']:.4f}"
    lines.append(f"| {r['run']} | {r['task']} | {r['scheme']} | {r['seed']} | {r['deterministic']} | {r['augment']} | {r['texts']} | "
                 f"{'+'.join(map(str, r['steps']))} | {r['best_dev_step']} | {dev} | {r['test']:.4f} | {r['train_s']} |")
lines += ["", "Two runs of one recipe (debian-sections, ternary-w2a8, seed 0):", ""]
for kind, s in spread.items():
    label = "--deterministic" if kind == "det" else "default kernels"
    lines.append(f"- {label}: test {s['test']} (spread {s['test_spread_pt']} pt), dev {s['dev']} (spread {s['dev_spread_pt']} pt), "
                 f"final loss {s['loss_last']}")
md = "\n".join(lines) + "\n"
(out / "summary.md").write_text(md)
(out / "summary.json").write_text(json.dumps({"rows": rows, "spread": spread, "total_seconds": total}, indent=1))
(out / "reports.json").write_text(json.dumps({k: v["report"] for k, v in res.items()}))
print(md)
PY
