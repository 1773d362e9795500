"""Cold first result: :func:`measure` starts ``python -m edgekit.deploy.coldstart DIR SEQ THREADS``.

Prints one JSON line with wall-clock timestamps (time.time()) taken after the artifact is
loaded and after the first output, and the process's peak RSS. Imports only the deploy
side, as a device would.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from edgekit.deploy.report import ColdStart, Memory, percentile
from edgekit.errors import TargetError


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec,
    so a child would report its parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(artifact_dir: Path, seq_len: int, threads: int | None) -> dict:
    """One cold start of ``artifact_dir`` in a fresh process (this module's ``main``): times in ms and peak RSS."""
    cmd = [sys.executable, "-m", "edgekit.deploy.coldstart", str(artifact_dir), str(seq_len), str(threads or 0)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TargetError(f"{artifact_dir}: cold-start subprocess failed: {tail}", hint="run 'edgekit --debug profile ...'")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "loaded": (r["loaded"] - t0) * 1000,
        "first": (r["first_output"] - r["loaded"]) * 1000,
        "total": (r["first_output"] - t0) * 1000,
        "rss": r["peak_rss_mb"],
    }


def summary(runs: list[dict]) -> tuple[ColdStart, Memory]:
    """The median cold start of ``runs`` and the peak memory any of them reached."""
    med = lambda key: percentile(sorted(r[key] for r in runs), 50)  # noqa: E731
    cold = ColdStart(
        runs=len(runs),
        process_start_to_loaded_ms=med("loaded"),
        loaded_to_first_output_ms=med("first"),
        total_ms=med("total"),
        samples_total_ms=[round(r["total"], 2) for r in runs],
    )
    return cold, Memory(peak_rss_mb=max(r["rss"] for r in runs), source="cold-start subprocess, VmHWM (peak RSS)")


def main() -> None:
    from edgekit.deploy.runtime import Predictor
    from edgekit.deploy.targets.base import TargetOptions

    path, seq_len, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    pred = Predictor(path, options=TargetOptions(threads=threads or None), verify=False).__enter__()
    loaded = time.time()
    feed = pred.tokenizer([pred.tokenizer.text_of_length(seq_len)], pad_to=seq_len)
    pred.run(feed)
    first = time.time()
    rss_mb = peak_rss_mb()
    print(json.dumps({"loaded": loaded, "first_output": first, "peak_rss_mb": rss_mb, "torch_imported": "torch" in sys.modules}))


if __name__ == "__main__":
    main()
