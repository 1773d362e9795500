"""Store a jointly trained exit model's backbone in fp16, so it fits the lent GPU machine's return limits.

The lent machine returns at most 64 MiB; MiniLM-L6's fp32 backbone is 90 MB. This rewrites
``HEADS/backbone/model.safetensors`` in fp16 (45 MB; edgekit loads any checkpoint in fp32) and updates
``exits.json``'s checkpoint hash. Run it right after ``exits train``, before calibrating, so every figure
on either machine is of the same weights. Float backbones only: a QAT backbone's latent weights decide
its codes, so they are left as they are (refused).

    python bench/tools/exits_fp16.py HEADS
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from edgekit.build.checkpoint import inspect
from edgekit.build.quant.saving import QUANT_FILE


def main(heads: Path) -> None:
    meta_path, st = heads / "exits.json", heads / "backbone" / "model.safetensors"
    if not st.exists():
        sys.exit(f"{heads}: no backbone/model.safetensors (frozen heads need no conversion)")
    if (heads / "backbone" / QUANT_FILE).exists():
        sys.exit(f"{heads}: a quantized backbone; its latent weights decide its codes, so it stays fp32")
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(st).items()}
    save_file(tensors, st, metadata={"format": "pt"})
    meta = json.loads(meta_path.read_text())
    meta["source_sha256"] = inspect(st.parent, task=meta["task"]).sha256()
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{st}: fp16, {st.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
