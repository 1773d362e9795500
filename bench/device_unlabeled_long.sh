#!/usr/bin/env bash
# QAT on debian-sections with the unlabelled corpus at a larger budget (the second call after device_unlabeled.sh, < 8 min):
# batch 256 with sqrt lr scaling (steps/s do not fall with the batch on an H200, bench/results/quant-speed), epochs of
# the union of the labelled texts and bench/data/debian-unlabeled; every run --deterministic, dev selection, six lanes.
#
#   lent GPU (carry .ckpt/minilm-fp16.tar.xz and .whl):  OUT=$OUT bash bench/device_unlabeled_long.sh
#   back: $OUT/summary.md, summary.json, reports.json, log.txt, finetune.json
#   here, a check of the script:  SMOKE=1 OUT=/tmp/unl_long bash bench/device_unlabeled_long.sh
set -uo pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
PY=${PY:-python3}
W=${WORK:-/tmp/unl_long_work}; rm -rf "$W"; mkdir -p "$W"
MODEL=${MODEL:-.ckpt/minilm-fp16}
[ -d "$MODEL" ] || [ ! -f "$MODEL.tar.xz" ] || $PY -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" "$MODEL.tar.xz" "$(dirname "$MODEL")"
if ! $PY -c "import pydantic" 2>/dev/null; then
  $PY -m pip install -q --no-index --find-links .whl --target /tmp/pylib pydantic pydantic-core annotated-types typing-inspection typing-extensions 2>&1 | tail -2
fi
export PYTHONPATH=$PWD:/tmp/pylib${PYTHONPATH:+:$PYTHONPATH}
U=$W/corpus.txt
xz -dkc bench/data/debian-unlabeled/train.txt.xz > "$U"
FT=(); E=${EPOCHS:-20}; [ -n "${SMOKE:-}" ] && { FT=(--limit 64 --epochs 1); E=0.01; }
$PY bench/finetune.py --model "$MODEL" --data bench/data/debian-sections --out "$W/ts" --epochs 4 "${FT[@]}" 2>&1 | grep -E "test" | tail -n 1
cp "$W/ts/finetune.json" "$OUT/finetune.json"
JOBS=$(cat <<JSON
{"base": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": null, "epochs": $E}],
 "unl": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": null, "epochs": $E, "unlabeled": "$U"}],
 "unl-seed1": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": null, "epochs": $E, "unlabeled": "$U", "seed": 1}],
 "unl-aug2": ["S", {"scheme": "ternary-w2a8", "deterministic": true, "steps": null, "epochs": $(python3 -c "print($E * 0.6)"), "unlabeled": "$U", "augment": 2}],
 "e2-unl": ["S", {"scheme": "ternary-w2e2a8", "deterministic": true, "steps": null, "epochs": $E, "unlabeled": "$U"}],
 "w1a1-unl": ["S", {"scheme": "bit-w1a1", "multi_step": true, "deterministic": true, "steps": null, "epochs": $(python3 -c "print(round($E / 3, 2))"), "unlabeled": "$U"}]}
JSON
)
SMOKE=${SMOKE:-} BATCH=${BATCH:-256} TEACHER_S=$W/ts TEACHER_W=$W/ts OUT=$OUT WORK=$W/qat JOBS="$JOBS" LANES="base;unl;unl-seed1;unl-aug2;e2-unl;w1a1-unl" \
  LANE_TIMEOUT=${LANE_TIMEOUT:-430} TITLE="QAT with the unlabelled corpus at batch 256 (MiniLM-L6 on debian-sections, one H200, six lanes side by side)" \
  bash bench/device_qat_more.sh
