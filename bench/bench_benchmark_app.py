"""bench/bench_benchmark_app: edgekit's profile beside OpenVINO's own ``benchmark_app``, same artifact.

The artifact is an ``openvino-cpu`` compile of the default model (all-MiniLM-L6-v2, FP32), or
the one given with ``--artifact``. Both tools run its IR with the same settings:

- shape [1, SEQ] (``-shape``), and the very token ids edgekit times (``-i`` with .npy files of
  edgekit's own feed, so neither tool sees random inputs);
- PERFORMANCE_HINT LATENCY, INFERENCE_PRECISION_HINT f32 (``-hint latency -infer_precision f32``,
  the config in the artifact's manifest), ``-api sync`` (one request at a time, like edgekit);
- the artifact's compile config itself (``-load_config``); the compiled model's streams, threads
  and hint are read back from benchmark_app's log and the run fails if they differ from edgekit's.

Rounds alternate the order (benchmark_app then edgekit, then the reverse) so drift hits both.
A third, in-process measurement splits the gap: the same compiled IR timed three ways
(``request.latency``, the figure benchmark_app reports; ``perf_counter`` around ``request.infer()``
with inputs set once; and edgekit's session call, which passes numpy inputs and copies the output).

    python bench/bench_benchmark_app.py                      # compiles the default model first
    python bench/bench_benchmark_app.py --artifact dist/model/openvino-cpu --seconds 10 --rounds 3

Writes OUT/: edgekit.json, benchmark_app.edgekit.json (imported), benchmark_app/ (the tool's own
report folder), compare.md, summary.json (every round, the split, the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.deploy import artifact, foreign, render
from edgekit.deploy import profile as prof
from edgekit.deploy.report import Comparison, latency_stats, ratios
from edgekit.deploy.runtime import Predictor

ROOT = Path(__file__).resolve().parent


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def compiled_facts(compiled) -> dict[str, str]:
    keys = ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT")
    return {k: str(compiled.get_property(k)) for k in keys}


def logged_facts(log: str) -> dict[str, str]:
    """The compiled model's properties as benchmark_app prints them in step 8."""
    facts = {}
    for k in ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT"):
        if m := re.search(rf"\[ INFO \]\s+{k}: (.+)", log):
            facts[k] = m[1].strip()
    return facts


def benchmark_app(xml: Path, inputs: dict[str, Path], seq: int, seconds: float, config: dict, folder: Path) -> tuple[list[str], str]:
    """Run benchmark_app on the IR; ``config`` is the compile config from the artifact's manifest."""
    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder.parent / "config.json").write_text(json.dumps({"CPU": config}))
    cmd = [
        tool,
        "-m",
        str(xml),
        "-d",
        "CPU",
        "-hint",
        "latency",
        "-api",
        "sync",
        "-shape",
        f"[1,{seq}]",
        "-i",
        ",".join(f"{k}:{v}" for k, v in inputs.items()),
        "-infer_precision",
        "f32",
        "-load_config",
        str(folder.parent / "config.json"),
        "-t",
        str(int(seconds)),
        "-report_type",
        "detailed_counters",
        "-report_folder",
        str(folder),
        "-json_stats",
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False)
    (folder / "benchmark_app.log").write_text(run.stdout + run.stderr)
    if run.returncode != 0 or not (folder / "benchmark_report.json").is_file():
        raise SystemExit(f"benchmark_app failed ({run.returncode}):\n{(run.stdout + run.stderr)[-3000:]}")
    return cmd, run.stdout


def split(xml: Path, config: dict[str, str], feed: dict[str, np.ndarray], pred: Predictor, opts: prof.ProfileOptions) -> dict:
    """One process, one IR, three timings interleaved: where the two tools' figures part."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    req = compiled.create_infer_request()
    for name, value in feed.items():
        req.set_tensor(name, ov.Tensor(value))
    cxx: list[float] = []

    def bare(_: int) -> None:
        req.infer()
        cxx.append(req.latency)

    py_bare, session = prof.time_interleaved([bare, lambda _: pred.run(feed)], opts)
    warm = len(cxx) - len(py_bare)
    return {
        "request.latency (C++ around infer, inputs set once; benchmark_app's figure)": latency_stats([x / 1000 for x in cxx[warm:]]),
        "perf_counter around request.infer() (adds the Python call)": latency_stats(py_bare),
        "perf_counter around edgekit's session.infer(feed) (adds numpy inputs and output copy: model_only)": latency_stats(session),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", type=Path, help="an openvino-cpu artifact (default: compile the default model)")
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "benchmark_app")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "benchmark_app")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--seconds", type=float, default=3.0, help="per tool and round (short rounds, many: drift cancels in each pair)")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()

    art = args.artifact
    if art is None:
        art = args.work / "minilm" / "openvino-cpu"
        if not (art / artifact.MANIFEST).is_file():
            subprocess.run(["edgekit", "compile", "default", "-t", "openvino-cpu", "--out", str(art.parent)], check=True)
    manifest = artifact.read_manifest(art)
    xml = art / manifest.model_file
    opts = prof.ProfileOptions(
        seq_len=args.seq_len, batches=[1], cold_runs=0, seconds_per_point=args.seconds, min_runs=20, max_runs=100_000
    )
    with Predictor(art) as pred:
        feed = pred.tokenizer([prof.fixed_length_text(pred, args.seq_len)], pad_to=args.seq_len)
        edge_facts = compiled_facts(pred.session.compiled)
        (args.work / "inputs").mkdir(parents=True, exist_ok=True)
        inputs = {k: args.work / "inputs" / f"{k}.npy" for k in feed}
        for k, path in inputs.items():
            np.save(path, feed[k])
        the_split = split(xml, manifest.settings["config"], feed, pred, opts)

    rounds = []
    for r in range(args.rounds):
        order = ["benchmark_app", "edgekit"] if r % 2 == 0 else ["edgekit", "benchmark_app"]
        got: dict = {"load": os.getloadavg()[0]}
        for tool in order:
            t0 = time.time()
            if tool == "edgekit":
                got[tool] = prof.profile(art, opts)
            else:
                folder = args.work / f"round{r}"
                cmd, log = benchmark_app(xml, inputs, args.seq_len, args.seconds, manifest.settings["config"], folder)
                logged = logged_facts(log)
                if any(logged.get(k) != edge_facts[k] for k in ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT")):
                    raise SystemExit(f"benchmark_app ran {logged} but edgekit {edge_facts}: not the same settings")
                got[tool] = foreign.import_report(folder, seq_len=args.seq_len, name="benchmark_app", target=manifest.target)
                got["cmd"], got["folder"], got["ba_facts"] = cmd, folder, logged
            print(f"round {r + 1} {tool}: p50 {got[tool].first_token.model_only.p50:.2f} ms ({time.time() - t0:.0f} s)", flush=True)
        rounds.append(got)

    # The round whose p50 ratio is the median of the rounds stands for the run.
    ratio = [g["benchmark_app"].first_token.model_only.p50 / g["edgekit"].first_token.model_only.p50 for g in rounds]
    pick = rounds[sorted(range(len(rounds)), key=ratio.__getitem__)[len(rounds) // 2]]
    reports = [pick["edgekit"], pick["benchmark_app"]]
    comparison = Comparison(created=artifact.now(), reports=reports, ratios=ratios(reports))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "benchmark_app", ignore_errors=True)
    shutil.copytree(pick["folder"], out / "benchmark_app")
    artifact.write_json(out / "edgekit.json", reports[0].model_dump())
    artifact.write_json(out / "benchmark_app.edgekit.json", reports[1].model_dump())
    (out / "compare.md").write_text(render.markdown(reports, comparison))
    summary = {
        "cpu": cpu_model(),
        "logical_cores": reports[0].host.logical_cores if reports[0].host else None,
        "openvino": manifest.runtime.get("openvino"),
        "artifact": str(art),
        "seq_len": args.seq_len,
        "seconds_per_tool_and_round": args.seconds,
        "compiled_edgekit": edge_facts,
        "compiled_benchmark_app": pick["ba_facts"],
        "benchmark_app_command": " ".join(pick["cmd"]),
        "median_of_rounds": {
            "edgekit_p50_ms": statistics.median(g["edgekit"].first_token.model_only.p50 for g in rounds),
            "benchmark_app_p50_ms": statistics.median(g["benchmark_app"].first_token.model_only.p50 for g in rounds),
            "p50_ratio_benchmark_app_over_edgekit": statistics.median(ratio),
        },
        "rounds": [
            {k: g[k].first_token.model_only.model_dump(exclude={"unit"}) for k in ("edgekit", "benchmark_app")}
            | {"p50_ratio": q, "load_average_1min": g["load"]}
            for g, q in zip(rounds, ratio)
        ],
        "split_in_one_process": {k: v.model_dump(exclude={"unit"}) for k, v in the_split.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    from rich.console import Console

    console = Console(width=100)
    console.print(render.latency_table(reports))
    console.print(render.comparison_table(comparison))
    for k, v in the_split.items():
        console.print(f"{k}: p50 {v.p50:.3f} ms, mean {v.mean:.3f} ms (n {v.n})")
    print(f"median of {len(rounds)} rounds: {summary['median_of_rounds']}")
    print(f"results -> {out}")


if __name__ == "__main__":
    main()
