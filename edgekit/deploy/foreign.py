"""Import foreign benchmark reports (trtexec, benchmark_app) into the :class:`ProfileReport` schema.

Formats, with the key names their writers use (tests/data/foreign/README.md names the sources):

- ``trtexec-times``: ``trtexec --exportTimes=F``, a JSON array with one object per query
  (``exportJSONTrace`` in TensorRT's samples/common/sampleReporting.cpp). Since TensorRT 8.4:
  startEnqMs endEnqMs startH2dMs endH2dMs startComputeMs endComputeMs startD2hMs endD2hMs h2dMs
  computeMs d2hMs latencyMs, warm-up queries left out. Before 8.4 also endToEndMs, and the warm-up
  queries are in the file. The older names that samples/trtexec/tracer.py reads (startInMs, endOutMs,
  inMs, outMs) are taken for the H2D/D2H ones.
- ``trtexec-profile``: ``trtexec --exportProfile=F``, ``[{"count": N}, {"name", "timeMs", "averageMs",
  ["medianMs",] "percentage"}, ...]``. Per-layer means only, no per-query latency, so it is not a report
  by itself: pass it as ``layers=`` with the times file and it is summarised in ``source.notes``.
- ``benchmark-app``: ``benchmark_app -report_type R -report_folder D -json_stats`` writes
  D/benchmark_report.json with cmd_options, configuration_setup and execution_results. The C++ app
  uses snake_case keys with numbers (latency_median, percentile_boundary, latency_avg, latency_min,
  latency_max, iterations_num, throughput); the Python app uses its CSV labels with string values
  ("latency (ms)", "avg latency", "min latency", "max latency", "total number of iterations").
  Counters (benchmark_{average,detailed}_counters_report.json) beside it are summarised in the notes.

Mapping. edgekit's ``model_only`` is one synchronous call with the input in host memory and the output
copied back, so transfers are in it. trtexec's ``latencyMs`` (H2D + GPU compute + D2H of one query) is
the figure that includes them, so it becomes ``model_only``; ``computeMs`` (GPU kernels only) would
leave them out and goes to the notes, with H2D, D2H and enqueue. Both trtexec figures are sums of
CUDA-event intervals: launch overhead and host synchronisation are not in them. benchmark_app's
latency is one infer request's time (the Python app reads ``request.latency``, a C++ clock around
``infer()`` with the inputs already set, so neither the Python call nor reading the outputs is in it);
it reports median, mean, min and max, so p90/p95/p99/std are None. Its sync throughput is wall clock in
the Python app and batch x 1000 / median latency in the C++ app.
``end_to_end``, ``cold_first_result``, memory and host are not measured by either tool. Throughput is
the tools' own: trtexec's batch x queries / wall span from the first H2D start to the last D2H end,
benchmark_app's "throughput" (frames/s, a frame being one sequence); it needs ``seq_len`` for tokens/s.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from edgekit.deploy.report import (
    ArtifactRef,
    FirstToken,
    LatencyStats,
    Memory,
    ProfileReport,
    Settings,
    Source,
    ThroughputPoint,
    latency_stats_ms,
    mark_best,
    noise_warning,
)
from edgekit.errors import ConfigError, DataError

Format = Literal["trtexec-times", "trtexec-profile", "benchmark-app"]
FORMATS: tuple[str, ...] = ("trtexec-times", "trtexec-profile", "benchmark-app")
HINT = (
    "supported: trtexec-times (trtexec --exportTimes JSON), trtexec-profile (trtexec --exportProfile JSON, "
    "given as layers= with a times file), benchmark-app (benchmark_app -json_stats benchmark_report.json)"
)
COUNTERS = ("benchmark_average_counters_report.json", "benchmark_detailed_counters_report.json")
NOT_MEASURED = "not measured by {tool}"


def import_report(
    path: str | Path,
    fmt: Format | None = None,
    *,
    batch: int = 1,
    seq_len: int | None = None,
    name: str | None = None,
    target: str | None = None,
    layers: str | Path | None = None,
) -> ProfileReport:
    """A ProfileReport from a trtexec or benchmark_app file (``fmt`` None: detected from the content).

    ``batch``/``seq_len``: the shape the tool ran (trtexec files do not record it; benchmark_app's
    batch size wins where its report has one). ``layers``: a per-layer file to summarise in the notes
    (trtexec --exportProfile, or benchmark_app counters, which are also picked up beside the report).
    """
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}", hint=HINT)
    if batch < 1 or (seq_len is not None and seq_len < 1):
        raise ConfigError(
            f"batch and seq_len must be at least 1 (got batch={batch}, seq_len={seq_len})", hint="pass the shape the tool ran"
        )
    path = Path(path)
    if path.is_dir():  # benchmark_app's -report_folder
        path = path / "benchmark_report.json"
    data = _load(path)
    kind = fmt or detect(data, path)
    if kind == "trtexec-profile":
        raise DataError(
            f"{path}: a trtexec per-layer profile (trtexec-profile) holds layer means only, no per-query latencies",
            hint="import the --exportTimes file and pass this one as layers=",
        )
    layer_notes = [_layers(Path(layers), _load(Path(layers)))] if layers else []
    if kind == "trtexec-times":
        return _trtexec(path, data, batch, seq_len, name, target, layer_notes)
    if not layers:
        layer_notes = [_layers(p, _load(p)) for p in (path.parent / c for c in COUNTERS) if p.is_file()]
    return _benchmark_app(path, data, batch, seq_len, name, target, layer_notes)


def detect(data: Any, path: Path) -> str:
    """The format of a loaded JSON document, from its shape; anything else is a DataError."""
    if isinstance(data, list) and data and isinstance(data[0], dict):
        if set(data[0]) == {"count"}:
            return "trtexec-profile"
        if "computeMs" in data[0] or "latencyMs" in data[0]:
            return "trtexec-times"
    if isinstance(data, dict):
        if "execution_results" in data:
            return "benchmark-app"
        if "report_type" in data:
            raise DataError(
                f"{path}: a benchmark_app per-layer counters report, which has no latencies",
                hint="import benchmark_report.json from the same folder; counters beside it are read too",
            )
    shape = (
        f"array of {len(data)}"
        if isinstance(data, list)
        else f"object with {', '.join(list(data)[:5]) or 'no keys'}"
        if isinstance(data, dict)
        else type(data).__name__
    )
    raise DataError(f"{path}: not a report edgekit can import (a JSON {shape})", hint=HINT)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file", hint=HINT) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read ({err})", hint=HINT) from err
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not JSON ({err.msg} at line {err.lineno})", hint=HINT) from err


def _num(value: Any, path: Path, where: str) -> float:
    """A finite number; benchmark_app's Python app writes numbers as strings."""
    if value is None:
        raise DataError(f"{path}: {where} is missing", hint=HINT)
    try:
        x = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x):
        raise DataError(f"{path}: {where} is {value!r}, not a number", hint=HINT)
    return x


def _pick(d: dict, *keys: str) -> Any:
    return next((d[k] for k in keys if k in d), None)


def _report(
    path: Path,
    tool: str,
    stats: LatencyStats,
    *,
    batch: int,
    seq_len: int | None,
    seq_per_s: float,
    runs: int,
    name: str,
    target: str,
    model: str | None,
    precision: str,
    includes: dict[str, str],
    notes: list[str],
    warnings: list[str],
    settings: dict,
) -> ProfileReport:
    if seq_len:
        point = ThroughputPoint(
            batch=batch, seq_len=seq_len, runs=runs, seq_per_s=seq_per_s, tokens_per_s=seq_per_s * seq_len, latency_ms_p50=stats.p50
        )
        throughput = mark_best([point])
    else:
        throughput = []
        notes.append(f"throughput {seq_per_s:.1f} seq/s at batch {batch} not tabled: pass seq_len to get tokens/s")
    if batch != 1:
        warnings.append(f"first-token latency is batch {batch} here ({tool} ran that batch), not batch 1")
    if noise := noise_warning("first-token model-only", stats):
        warnings.append(noise)
    created = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).isoformat(timespec="seconds")
    never = NOT_MEASURED.format(tool=tool)
    return ProfileReport(
        created=created,
        source=Source(tool=tool, version=None, file=str(path), notes=notes),
        artifact=ArtifactRef(
            path=model or str(path), name=name, target=target, precision=precision, task=None, manifest_sha256=None, model_bytes=None
        ),
        host=None,
        settings=Settings(
            **{"warmup": None, "min_runs": None, "seconds_per_point": None, "threads": None, **settings},
            seq_len=seq_len,
            text_file=None,
            batches=[batch],
            cold_runs=0,
        ),
        includes={
            "model_only": includes["model_only"],
            "end_to_end": f"{never} (no tokenizer)",
            "cold_first_result": never,
            "throughput": includes["throughput"],
            "memory": never,
        },
        first_token=FirstToken(
            lengths="fixed" if seq_len else "unknown", seq_len=seq_len, mean_tokens=float(seq_len or 0), model_only=stats, end_to_end=None
        ),
        throughput=throughput,
        cold_first_result=None,
        memory=Memory(peak_rss_mb=None, source=never),
        warnings=warnings,
    )


def _trtexec(path, recs, batch, seq_len, name, target, notes) -> ProfileReport:
    if not (isinstance(recs, list) and recs and all(isinstance(r, dict) for r in recs)):
        raise DataError(f"{path}: expected a non-empty JSON array of per-query objects (trtexec --exportTimes)", hint=HINT)

    def col(*keys: str, required: bool = True) -> list[float] | None:
        key = next((k for k in keys if k in recs[0]), None)
        if key is None and required:
            raise DataError(f"{path}: the records have no {' or '.join(keys)} (has: {', '.join(recs[0]) or 'nothing'})", hint=HINT)
        return None if key is None else [_num(r.get(key), path, f"record {i} {key}") for i, r in enumerate(recs)]

    compute, h2d, d2h = col("computeMs"), col("h2dMs", "inMs"), col("d2hMs", "outMs")
    latency = col("latencyMs", required=False) or [a + b + c for a, b, c in zip(h2d, compute, d2h)]
    start, end = col("startH2dMs", "startInMs"), col("endD2hMs", "endOutMs")
    enq = [e - s for s, e in zip(col("startEnqMs", required=False) or [], col("endEnqMs", required=False) or [])]
    span = max(end) - min(start)
    if span <= 0:
        raise DataError(f"{path}: the records span {span} ms from the first H2D start to the last D2H end", hint=HINT)
    stats, gpu = latency_stats_ms(latency), latency_stats_ms(compute)
    seq_per_s = batch * len(recs) / span * 1000.0
    p50 = lambda xs: latency_stats_ms(xs).p50  # noqa: E731
    notes = [
        "model_only is trtexec's latencyMs: H2D + GPU compute + D2H per query (CUDA-event intervals; launch overhead "
        "and host synchronisation not included); edgekit's model_only also includes the transfers",
        f"GPU compute only (computeMs): p50 {gpu.p50:.3f}, p90 {gpu.p90:.3f}, p99 {gpu.p99:.3f}, mean {gpu.mean:.3f} ms",
        f"H2D p50 {p50(h2d):.3f} ms, D2H p50 {p50(d2h):.3f} ms" + (f", enqueue p50 {p50(enq):.3f} ms" if enq else ""),
        f"throughput: batch {batch} x {len(recs)} queries / {span:.1f} ms wall span (first H2D start to last D2H end), trtexec's formula",
        "the file does not record the TensorRT version, the engine's precision or the input shapes; created is the file's modification time",
        *notes,
    ]
    warnings = []
    if "endToEndMs" in recs[0]:
        warnings.append("written by trtexec before TensorRT 8.4, which also exported its warm-up queries: they are in these figures")
    if not any(h2d) and not any(d2h):
        warnings.append(
            "H2D and D2H are zero in every record (trtexec --noDataTransfers?): model_only is GPU compute only, without transfers"
        )
    return _report(
        path,
        "trtexec",
        stats,
        batch=batch,
        seq_len=seq_len,
        seq_per_s=seq_per_s,
        runs=len(recs),
        name=name or path.stem,
        target=target or "tensorrt",
        model=None,
        precision="unknown",
        includes={
            "model_only": "trtexec latencyMs per query: H2D copy of the inputs + GPU compute + D2H copy of the outputs "
            "(CUDA-event intervals); launch overhead and host synchronisation not included",
            "throughput": "trtexec: batch x queries / host wall span from the first H2D start to the last D2H end; "
            "queries overlap as trtexec enqueues them",
        },
        notes=notes,
        warnings=warnings,
        settings={},
    )


def _benchmark_app(path, data, batch, seq_len, name, target, notes) -> ProfileReport:
    if not (isinstance(data, dict) and isinstance(data.get("execution_results"), dict)):
        raise DataError(f"{path}: expected a JSON object with an execution_results object (benchmark_app -json_stats)", hint=HINT)
    res, cfg = data["execution_results"], data.get("configuration_setup") or {}
    cmd = {str(k).lstrip("-"): v for k, v in (data.get("cmd_options") or {}).items()}
    if "error" in res:
        raise DataError(
            f"{path}: benchmark_app reported a failed run: {str(res['error']).splitlines()[0]}", hint="fix the run, then import its report"
        )
    cpp = "latency_median" in res or "iterations_num" in res
    median_key, pct = next(((k, 50) for k in ("latency_median", "latency (ms)") if k in res), (None, None))
    for key in res:
        if m := re.fullmatch(r"latency \((\d+) percentile\) \(ms\)", key):
            median_key, pct = key, int(m[1])
    if median_key is None:
        raise DataError(f"{path}: execution_results has no latency figures (benchmark_app writes none for MULTI devices)", hint=HINT)
    pct = int(_num(res.get("percentile_boundary", pct), path, "execution_results.percentile_boundary"))
    if pct != 50:
        raise DataError(
            f"{path}: benchmark_app reported its {pct}th latency percentile, not the median edgekit's tables need",
            hint="rerun benchmark_app without -latency_percentile (50 is its default)",
        )
    f = lambda *keys: _num(_pick(res, *keys), path, f"execution_results.{keys[0]}")  # noqa: E731
    runs = int(f("iterations_num", "total number of iterations"))
    stats = LatencyStats(
        n=runs,
        p50=f(median_key),
        mean=f("latency_avg", "avg latency"),
        min=f("latency_min", "min latency"),
        max=f("latency_max", "max latency"),
    )
    fps = f("throughput")
    file_batch = _pick(cfg, "batch_size", "batch size")
    if isinstance(file_batch, (int, str)) and str(file_batch).isdigit() and int(file_batch) > 0:
        if batch not in (1, int(file_batch)):
            notes.append(f"batch {batch} was given, but the report says batch size {file_batch}; the report's is used")
        batch = int(file_batch)
    api = str(_pick(cfg, "api", "API") or cmd.get("api") or "?")
    nireq = _pick(cfg, "nireq", "number of parallel infer requests")
    device = str(_pick(cfg, "target_device", "target device") or cmd.get("d") or "")
    mode = _pick(cfg, "benchmark_mode", "inference_only")
    warnings = []
    if api == "async" and nireq is not None and str(nireq).isdigit() and int(nireq) > 1:
        warnings.append(
            f"latencies were measured with {nireq} async requests in flight, so each includes waiting behind the others; "
            "edgekit's model_only is one call at a time (rerun with -api sync for comparable latency)"
        )
    if "group" in res or "group_latencies" in res:
        warnings.append(
            "the run had several input-shape groups; "
            + (
                "per-group figures are not imported"
                if cpp
                else "the Python app's report keeps the last group's avg/min/max in place of the overall ones"
            )
        )
    notes = [
        f"benchmark_app ({'C++' if cpp else 'Python'} app), device {device or '?'}, api {api}, {nireq or '?'} infer requests"
        + (f", mode {'inference only' if mode in (True, 'inference only') else 'full (input filling timed)'}" if mode is not None else ""),
        "model_only p50 is benchmark_app's own median (its percentile method, not numpy's); not reported by benchmark_app: p90, p95, p99, std",
        *(
            f"{k.removesuffix(' (ms)')}: {res[k]} ms"
            for k in res
            if "time" in k and k not in ("execution_time", "total execution time (ms)")
        ),
        *(
            ["first inference time is in the warm benchmark process, not edgekit's cold first result (a fresh process)"]
            if _pick(res, "first_inference_time", "first inference time (ms)") is not None
            else []
        ),
        "the report does not record the OpenVINO version; created is the file's modification time",
        *(["C++ app, api sync: its throughput is batch x 1000 / median latency, not wall clock"] if api == "sync" and cpp else []),
        f"inputs from {inputs}"
        if (inputs := cmd.get("i") or cmd.get("paths_to_input"))
        else "inputs: random values filled by benchmark_app (no -i), not token ids a tokenizer makes",
        *notes,
    ]
    duration = _pick(cfg, "duration", "duration (ms)")
    settings = {
        "seconds_per_point": _num(duration, path, "configuration_setup.duration") / 1000.0 if duration not in (None, "", 0, "0") else None,
        "threads": int(cmd["nthreads"]) if str(cmd.get("nthreads", "")).isdigit() else None,
    }
    model = str(cmd["m"]) if cmd.get("m") else None
    return _report(
        path,
        "benchmark_app",
        stats,
        batch=batch,
        seq_len=seq_len,
        seq_per_s=fps,
        runs=runs,
        name=name or str(_pick(cfg, "topology") or "") or (Path(model).stem if model else path.parent.name),
        target=target or ("openvino-" + re.split(r"[.:(]", device)[0].lower() if device else "openvino"),
        model=model,
        precision=str(cmd.get("infer_precision") or "unknown"),
        includes={
            "model_only": (
                f"benchmark_app (C++) latency of one infer request on {device or '?'} (api {api}), start to completion; "
                "inputs filled before timing; tensors in host memory unless -use_device_mem"
                if cpp
                else f"benchmark_app (Python) request.latency of one infer request on {device or '?'} (api {api}): "
                "C++ clock around infer(), inputs already set; the Python call and reading the outputs are not in it"
            ),
            "throughput": "benchmark_app's throughput: frames (sequences) per second over the run",
        },
        notes=notes,
        warnings=warnings,
        settings=settings,
    )


def _layers(path: Path, data: Any) -> str:
    """One note summarising a per-layer file: total time per inference and the slowest layers."""
    if isinstance(data, list) and data and isinstance(data[0], dict) and set(data[0]) == {"count"}:
        rows = {str(r.get("name")): _num(r.get("averageMs"), path, f"layer {i} averageMs") for i, r in enumerate(data[1:], 1)}
        what = f"trtexec --exportProfile, {int(_num(data[0]['count'], path, 'count'))} profiled iterations in a separate run"
    elif isinstance(data, dict) and isinstance(perf := data.get("avg_performance") or data.get("detailed_performance"), (dict, list)):
        requests = [perf] if isinstance(perf, dict) else perf  # detailed: one entry per infer request
        if not requests or not all(isinstance(q, dict) and isinstance(q.get("nodes"), list) for q in requests):
            raise DataError(f"{path}: per-layer counters without a list of nodes", hint=HINT)
        rows = {}
        for q in requests:
            for i, n in enumerate(q["nodes"]):
                key = f"{n.get('name')} [{n.get('exec_type')}]" if isinstance(n, dict) else str(n)
                rows[key] = rows.get(key, 0.0) + _num(
                    n.get("real_time") if isinstance(n, dict) else None, path, f"node {i} real_time"
                ) / len(requests)
        what = f"benchmark_app {data.get('report_type')} counters" + (
            f", mean of {len(requests)} requests, each its last inference" if isinstance(perf, list) else ""
        )
        if data.get("report_type") == "average" and len(rows) == 1 and isinstance(requests[0].get("total_real_time"), str):
            return (
                f"per-layer ({path.name}): the Python benchmark_app's average counters hold one node only ({next(iter(rows))}), "
                "as its statistics_report.py keeps the first entry; rerun with -report_type detailed_counters for per-layer times"
            )
    else:
        raise DataError(
            f"{path}: not a per-layer file edgekit can read",
            hint="layers= takes trtexec --exportProfile JSON or benchmark_app counters JSON",
        )
    total = sum(rows.values())
    top = "; ".join(
        f"{n if len(n) <= 70 else n[:67] + '...'} {t:.3f} ms ({t / total * 100 if total else 0:.0f}%)"
        for n, t in sorted(rows.items(), key=lambda r: -r[1])[:5]
    )
    return (
        f"per-layer ({what}; {path.name}): {sum(t > 0 for t in rows.values())} timed layers, {total:.3f} ms per inference; slowest: {top}"
    )
