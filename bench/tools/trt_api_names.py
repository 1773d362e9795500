"""List the names a TensorRT Python bindings wheel exports, without importing it.

TensorRT cannot be installed on the machines edgekit is developed on (it needs NVIDIA's
native libraries and a GPU), but its Python bindings wheels are on PyPI and hold the
compiled module ``tensorrt_bindings/tensorrt.so``. pybind11 registers every class,
method, property and enum value by name, so those names are NUL-terminated strings in
the binary. This script reads them (and the top-level names of the package's
``__init__.py``, e.g. ``nptype``) and writes one sorted list per wheel:

    pip download --no-deps -d /tmp/trtw tensorrt-cu12-bindings==10.16.1.11
    pip download --no-deps -d /tmp/trtw tensorrt-cu13-bindings==11.4.0.106
    python bench/tools/trt_api_names.py /tmp/trtw/tensorrt_cu12_bindings-10.16.1.11-*.whl \
        --out edgekit/data/tensorrt_api/10.x.txt
    python bench/tools/trt_api_names.py /tmp/trtw/tensorrt_cu13_bindings-11.4.0.106-*.whl \
        --out edgekit/data/tensorrt_api/11.x.txt

tests/targets/test_tensorrt.py checks that every name in ``edgekit.deploy.targets.tensorrt``'s
``TRT_API`` is in the list of each TensorRT major it is meant for.

Limits, stated in the list's header too: a string table says which names exist, not
which class holds them (``DataType.INT8`` and ``BuilderFlag.INT8`` are one string), and
the linker stores a name that ends another one only once (``Builder`` lives inside
``IBuilder``), so a name may be present only as the tail of a longer one.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import re
import sys
import zipfile
from pathlib import Path

# An identifier stored as a whole NUL-terminated string (3 to 64 characters).
IDENT = re.compile(rb"(?<=\x00)([A-Za-z_][A-Za-z0-9_]{2,63})(?=\x00)")
WHEEL = re.compile(r"^(?P<dist>[A-Za-z0-9_]+)-(?P<version>[^-]+)-")


def binary_names(blob: bytes) -> set[str]:
    """Identifier strings of a compiled module, less C++ mangled symbols."""
    return {m.decode() for m in IDENT.findall(blob) if not m.startswith(b"_Z")}


def python_names(source: str) -> set[str]:
    """Top-level functions, classes and assignments of a Python module."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def wheel_names(wheel: Path) -> tuple[set[str], list[str]]:
    """(names, the wheel members they were read from)."""
    names: set[str] = set()
    members = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            path = info.filename
            package = path.split("/", 1)[0]
            if not package.startswith("tensorrt"):
                continue
            if re.fullmatch(r"tensorrt[a-z_]*/tensorrt[^/]*\.(so|pyd)", path):
                names |= binary_names(zf.read(info))
                members.append(path)
            elif re.fullmatch(r"tensorrt[a-z_]*/__init__\.py", path):
                names |= python_names(zf.read(info).decode())
                members.append(path)
    if not any(m.endswith((".so", ".pyd")) for m in members):
        raise SystemExit(f"{wheel}: no compiled tensorrt module inside; is this a tensorrt-*-bindings wheel?")
    return names, members


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path, help="a tensorrt-cuXX-bindings wheel")
    ap.add_argument("--out", type=Path, required=True, help="the list to write")
    args = ap.parse_args(argv)
    m = WHEEL.match(args.wheel.name)
    if not m:
        raise SystemExit(f"{args.wheel}: not a wheel file name")
    names, members = wheel_names(args.wheel)
    digest = hashlib.sha256(args.wheel.read_bytes()).hexdigest()
    header = [
        f"# TensorRT {m['version']} Python API names, read by bench/tools/trt_api_names.py from",
        f"# {args.wheel.name} (PyPI {m['dist'].replace('_', '-')}=={m['version']}, sha256 {digest})",
        f"# members: {', '.join(members)}",
        "# Identifier strings of the compiled module and top-level names of __init__.py, sorted.",
        "# A string table gives names, not which class holds them; a name that ends a longer",
        "# one may be stored only inside it (linker tail merging: 'Builder' inside 'IBuilder').",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + sorted(names)) + "\n")
    print(f"{args.out}: {len(names)} names from {args.wheel.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
