#!/usr/bin/env bash
# Data-parallel QAT check: the same `edgekit quantize` entry point (python -m edgekit.cli) on 1 GPU
# and under torchrun on 2 GPUs (same data, epochs and per-GPU batch), on the lent nvidia-h200-x2.
# Prints samples/s per run and the speed-up; leaves the 1-GPU ternary checkpoint packed in $OUT.
#   run on the device: bash bench/ddp_check.sh   (needs .ckpt/minilm-debian-fp16 carried)
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # keep NVLink multicast off
OUT=${OUT:-/tmp/ddp_out}; mkdir -p "$OUT"
PY=${PY:-python3}
D=bench/data/debian-sections
ARGS=(quantize .ckpt/minilm-debian-fp16 --scheme "${SCHEME:-ternary-w2a8}" --data $D/train.jsonl --eval $D/dev.jsonl
      --epochs "${EPOCHS:-3}" --batch-size 32 --save-dtype float16)
HELP=$(COLUMNS=200 $PY -m edgekit.cli quantize --help)  # optional flags: no mid-run checkpoints, no progress bar
for flag in "--save-every 100000" "--no-progress"; do
  if grep -q -- "${flag%% *}" <<<"$HELP"; then read -ra f <<<"$flag"; ARGS+=("${f[@]}"); fi
done
nvidia-smi --query-gpu=name --format=csv,noheader
rm -rf /tmp/q1 /tmp/q2 /tmp/q1-cache /tmp/q2-cache  # separate, empty step caches: each run trains
CUDA_VISIBLE_DEVICES=0 $PY -m edgekit.cli "${ARGS[@]}" --out /tmp/q1 --cache /tmp/q1-cache 2>&1 | tail -3
$PY -m torch.distributed.run --standalone --nproc_per_node=2 -m edgekit.cli "${ARGS[@]}" --out /tmp/q2 --cache /tmp/q2-cache 2>&1 | tail -3
cp /tmp/q1/quant_report.json "$OUT/gpu1.quant_report.json"; cp /tmp/q2/quant_report.json "$OUT/gpu2.quant_report.json"
$PY - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
rows = []
for n in (1, 2):
    r = json.load(open(f"{out}/gpu{n}.quant_report.json"))
    s = r["stages"][-1]
    rate = s["steps"] * s["batch_size"] * s["world_size"] / s["seconds"]
    rows.append((n, s["steps"], s["seconds"], rate, s.get("eval", {}).get("accuracy")))
    print(f"{n} GPU(s): {s['steps']} steps x {s['batch_size']}/GPU in {s['seconds']:.1f}s = {rate:.0f} samples/s, dev accuracy {rows[-1][4]}")
print(f"speed-up with 2 GPUs: {rows[1][3] / rows[0][3]:.2f}x samples/s ({rows[1][3] / rows[0][3] / 2:.0%} scaling efficiency)")
json.dump({"runs": [dict(zip(("gpus", "steps", "seconds", "samples_per_s", "dev_accuracy"), r)) for r in rows]}, open(f"{out}/ddp.json", "w"), indent=1)
PY
tar cf - -C /tmp/q1 --exclude=train_state . | split -b 15M - "$OUT/w2a8_part_"
ls -la "$OUT"
