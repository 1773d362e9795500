#!/usr/bin/env bash
# Exit heads for the embedding model, trained on the lent GPU for retrieval (one call, < 6 minutes):
#   the fp16 all-MiniLM-L6-v2 carried in .ckpt/minilm-fp16; unlabelled text: debian-synopsis's training pairs
#   (queries and docs; bench/data/make_debian_works_with.py --synopsis-train, xz-compressed into TRAIN_XZ because the
#   tree travels in 64 MiB); the epoch kept by recall@1 on debian-synopsis's dev pairs (test is not carried into any choice).
#   1. frozen heads (projection after every layer, backbone untouched);
#   2. joint heads, one lane per JOINT setting (default "a:--anchor-weight 10 --backbone-lr 2e-5 b:--anchor-weight 4 --backbone-lr 5e-5"),
#      in parallel on the one GPU: every exit distils the final layer, the final exit anchored to the original embeddings;
#      the lane whose kept epoch has the best early exits on dev (final within 0.2 points of the original) is packed:
#      its backbone stored in fp16 (bench/tools/exits_fp16.py), split into PACK_PART-byte parts $OUT/pack-joint_a?.
#   Back: $OUT/frozen.tar (heads only: their source is .ckpt/minilm-fp16 here too), $OUT/summary.json, the parts.
#   Here: cat pack-joint_* | tar xf - -C HEADS; then bench/exit_retrieval.py --heads HEADS (calibration, deployment, test).
#
#   lent GPU:  OUT=$OUT bash bench/device_embed_exits.sh   (carry .ckpt/minilm-fp16.tar.xz, .whl, .ckpt/synopsis-train.jsonl.xz)
#   here:      SMOKE=1 OUT=/tmp/embed_exits bash bench/device_embed_exits.sh
set -euo pipefail
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
W=${WORK:-/tmp/embed_exits_work}; rm -rf "$W"; mkdir -p "$W"
. bench/tools/device_env.sh  # MODEL unpacked, pydantic, PYTHONPATH
PAIRS=${PAIRS:-bench/data/debian-synopsis}
EK=($PY -m edgekit.cli)
$PY -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "${TRAIN_XZ:-.ckpt/synopsis-train.jsonl.xz}" "$W/train.jsonl"
cp "$PAIRS/dev.jsonl" "$W/dev.jsonl"
E_FROZEN=20; E_JOINT=${E_JOINT:-6}
if [ -n "${SMOKE:-}" ]; then
  head -n 64 "$W/train.jsonl" > "$W/t" && mv "$W/t" "$W/train.jsonl"; head -n 40 "$PAIRS/dev.jsonl" > "$W/dev.jsonl"; E_FROZEN=1; E_JOINT=1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader || true
t0=$(date +%s)
JOINT=${JOINT:-"a:--anchor-weight 10 --backbone-lr 2e-5 b:--anchor-weight 4 --backbone-lr 5e-5"}
pids=()
while read -r lane; do
  [ -z "$lane" ] && continue
  name=${lane%%:*}; read -ra args <<< "${lane#*:}"
  ( "${EK[@]}" exits train "$MODEL" --data "$W/train.jsonl" --eval "$W/dev.jsonl" --out "$W/joint-$name" --epochs $E_JOINT \
      --no-freeze-backbone --no-resume "${args[@]}" > "$W/joint-$name.log" 2>&1; echo "joint $name: $(( $(date +%s) - t0 )) s" ) &
  pids+=($!)
done < <(echo "$JOINT" | sed 's/ \([a-z0-9]*\):/\n\1:/g')
"${EK[@]}" exits train "$MODEL" --data "$W/train.jsonl" --eval "$W/dev.jsonl" --out "$W/frozen" --epochs $E_FROZEN --no-resume > "$W/frozen.log" 2>&1
echo "frozen: $(( $(date +%s) - t0 )) s"
tar cf "$OUT/frozen.tar" -C "$W/frozen" exits.json exits.pt
for p in "${pids[@]}"; do wait "$p" || true; done
$PY - "$W" "$OUT" <<'PY'
"""Each heads' dev curve (recall@1 per exit, in points) and the joint lane to pack: the best early exits among
lanes whose kept epoch keeps the final exit within tolerance of the original model on dev."""
import json, sys
from pathlib import Path

W, OUT = Path(sys.argv[1]), Path(sys.argv[2])
doc = {}
for d in sorted(W.iterdir()):
    if (d / "exits.json").exists():
        t = json.loads((d / "exits.json").read_text()).get("training", {})
        doc[d.name] = {k: t.get(k) for k in ("epochs", "texts", "device", "frozen_backbone", "seconds", "dev")}
    elif d.suffix == ".log" and d.stem.startswith("joint-") and not (W / d.stem / "exits.json").exists():
        doc[d.stem] = {"error": d.read_text().strip().splitlines()[-3:]}
def key(name):
    dev = doc[name]["dev"]
    kept = dev["curve"][dev["chosen_epoch"] - dev["curve"][0]["epoch"]]["per_exit"]
    return (dev["chosen_final_within"], sum(kept[:-1]) / len(kept[:-1]))
lanes = [n for n in doc if n.startswith("joint-") and "dev" in doc[n]]
doc["packed"] = max(lanes, key=key) if lanes else None
(OUT / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
print(json.dumps({n: (v["dev"]["curve"][v["dev"]["chosen_epoch"] - 1]["per_exit"] if isinstance(v, dict) and v.get("dev") else v) for n, v in doc.items()}, indent=1))
PY
best=$($PY -c "import json,sys; print(json.load(open('$OUT/summary.json'))['packed'] or '')")
if [ -n "$best" ]; then
  $PY bench/tools/exits_fp16.py "$W/$best"
  tar cf - -C "$W/$best" --exclude train_state.pt . | split -b "${PACK_PART:-16700000}" - "$OUT/pack-joint_"
fi
echo "total: $(( $(date +%s) - t0 )) s"
ls -la "$OUT"
