"""The 1-bit kernel's matmul work alone, this tree's kernel source against another revision's, paired.

    python bench/xnor_tiles.py --base 56db0a5 [--threads 1] [--pairs 3] [--out bench/results/xnor/tiles.json]

bench/tools/xnor_tiles.cpp calls the kernel's ``run()`` (the code inside ``BinaryMatMul``) on MiniLM's
matmul shapes at b1 s128 (Q/K/V as one three-section call, O reading packed bits, FFN1 writing them,
FFN2 reading them) and at 16 and 4096 rows, random bits and inputs, and prints the median and 10th
percentile of 200 calls per shape. It is compiled twice with the flags of
:mod:`edgekit.deploy.kernels.xnor` (the headers and libraries of the installed ``openvino`` wheel),
once with this tree's ``xnor_matmul.cpp`` and once with ``git show BASE:...``'s, and the two binaries
run in turns (``--pairs`` times each), so both see the same machine state. Speed only: the kernel's
exactness is tested in tests/deploy/kernels.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
from pathlib import Path

from edgekit.deploy.kernels import xnor

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "bench" / "tools" / "xnor_tiles.cpp"
SOURCE = "edgekit/deploy/kernels/xnor_matmul.cpp"


def build(source: Path, out: Path) -> Path:
    _, include, libs = xnor.openvino_layout()
    flags = [f for f in xnor.FLAGS if f not in ("-shared", "-fvisibility=hidden")]  # an executable, not the library
    cmd = [xnor.compiler(), *flags, f'-DKERNEL_SOURCE="{source}"', *xnor.openvino_args(include, libs, HARNESS, out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def run(binary: Path, threads: int) -> dict[str, tuple[float, float]]:
    out = subprocess.run([str(binary), str(threads)], check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        name, m, n, k, p50, p10 = line.split()
        rows[f"{name} [{m},{k}]x[{k},{n}]"] = (float(p50), float(p10))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="git revision whose kernel source is the baseline")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        base_src = t / "base.cpp"
        base_src.write_text(
            subprocess.run(["git", "show", f"{args.base}:{SOURCE}"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
        )
        bins = {"base": build(base_src, t / "base"), "this": build(ROOT / SOURCE, t / "this")}
        got: dict[str, dict[str, list[float]]] = {k: {} for k in bins}
        for _ in range(args.pairs):
            for k, b in bins.items():
                for shape, (p50, _p10) in run(b, args.threads).items():
                    got[k].setdefault(shape, []).append(p50)
    result = {"base": args.base, "threads": args.threads, "pairs": args.pairs, "shapes": {}}
    print(f"median over {args.pairs} paired runs of each binary's p50 (us), {args.threads} thread(s); ratio < 1: this tree is faster")
    for shape in got["base"]:
        b, n = statistics.median(got["base"][shape]), statistics.median(got["this"][shape])
        result["shapes"][shape] = {"base_us": b, "this_us": n, "ratio": n / b}
        print(f"  {shape:34s} base {b:9.1f}  this {n:9.1f}  {n / b:.2f}x")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
