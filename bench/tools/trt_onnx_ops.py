"""Turn onnx-tensorrt's ``docs/operators.md`` into ``edgekit/data/tensorrt_onnx_ops.json``.

The ONNX parser of TensorRT documents which ONNX operators it imports, with which tensor
types and restrictions, in one Markdown table (repository onnx/onnx-tensorrt, file
docs/operators.md, one revision per TensorRT release). edgekit's jetson target checks an
exported graph against that table before it writes a build plan. To update the table:

    python bench/tools/trt_onnx_ops.py operators.md --revision "<commit or tag>" \
        --out edgekit/data/tensorrt_onnx_ops.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HEADER = re.compile(r"TensorRT\s+([0-9.]+)\s+supports operators in the inclusive range of opset\s+(\d+)\s+to opset\s+(\d+)", re.I)
TYPES_LINE = re.compile(r"TensorRT supports the following ONNX data types:\s*(.+)")
QUANTIZED = re.compile(r"Note:\s*(.+?)\s+are treated as `Quantized Types`")
# ONNX data type names the doc uses -> the names the table rows use.
DOC_TYPES = {"DOUBLE": "DOUBLE", "FLOAT32": "FP32", "FLOAT16": "FP16", "BFLOAT16": "BF16"}


def parse(text: str) -> dict:
    head = HEADER.search(text)
    if not head:
        raise SystemExit("no 'TensorRT X supports operators in the inclusive range of opset A to opset B' line found")
    types_line = TYPES_LINE.search(text)
    data_types = (
        [DOC_TYPES.get(t, t) for t in re.split(r",\s*(?:and\s+)?|\s+and\s+", types_line.group(1).strip()) if t] if types_line else []
    )
    quantized = QUANTIZED.search(text)
    operators: dict[str, dict] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 2 or cells[1] not in ("Y", "N") or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", cells[0]):
            continue
        name, supported = cells[0], cells[1] == "Y"
        types = [t.strip() for t in cells[2].split(",") if t.strip()] if supported and len(cells) > 2 else []
        note = " ".join(cells[3:] if supported else cells[2:]).replace("<br />", " ").strip()
        operators[name] = {"supported": supported, "types": types, "restrictions": note}
    if not operators:
        raise SystemExit("no operator rows found")
    return {
        "tensorrt": head.group(1),
        "opset": [int(head.group(2)), int(head.group(3))],
        "data_types": data_types,
        "quantized_types": [t.strip() for t in re.split(r",\s*|\s+and\s+", quantized.group(1)) if t.strip()] if quantized else [],
        "operators": dict(sorted(operators.items())),
    }


def dump(data: dict) -> str:
    """JSON with one operator a line, so a diff between two revisions reads per operator."""
    ops = data["operators"]
    head = json.dumps({k: v for k, v in data.items() if k != "operators"}, indent=1)[:-2]
    rows = ",\n".join(f"  {json.dumps(name)}: {json.dumps(row)}" for name, row in ops.items())
    return f'{head},\n "operators": {{\n{rows}\n }}\n}}\n'


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("markdown", type=Path, help="onnx-tensorrt docs/operators.md")
    ap.add_argument("--revision", required=True, help="the onnx-tensorrt commit or tag the file was read at")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    table = parse(args.markdown.read_text())
    data = {
        "source": {
            "repository": "onnx/onnx-tensorrt",
            "path": "docs/operators.md",
            "revision": args.revision,
            "made_by": "bench/tools/trt_onnx_ops.py",
        },
        **table,
    }
    args.out.write_text(dump(data))
    print(f"{args.out}: TensorRT {table['tensorrt']}, opset {table['opset']}, {len(table['operators'])} operators", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
