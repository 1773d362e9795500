"""The profile report schema, shared by every runtime and by imported foreign reports.

One versioned schema (``SCHEMA_VERSION``) for what ``edgekit profile`` measures, what
``edgekit profile --compare`` compares, and what ``edgekit report import`` converts from
trtexec and benchmark_app. ``docs/profile.schema.json`` is generated from these models
(``edgekit report schema``) and a test keeps it in sync. All latencies are milliseconds.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

# What every edgekit-measured figure includes, written into each report.
INCLUDES = {
    "model_only": "one synchronous inference call on an already-tokenized input held in host memory; output copied to a numpy array",
    "end_to_end": "tokenization of the raw text (tokenizers library) + the model-only call",
    "cold_first_result": "fresh Python process: interpreter start, imports, artifact load (graph compile / session creation), first inference",
    "throughput": "model-only calls at batch B on sequences of exactly seq_len real tokens; tokens/s counts non-padding tokens",
    "memory": "peak resident set size (RSS) of the cold-start process: runtime + one loaded artifact + one inference",
}


class _M(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LatencyStats(_M):
    """Percentiles of one set of timed runs (linear interpolation, numpy's default).

    edgekit always fills every figure; p90/p95/p99/std are None only in an imported report
    whose tool did not give them (benchmark_app reports median, mean, min and max).
    """

    unit: Literal["ms"] = "ms"
    n: int = Field(description="number of timed runs")
    p50: float
    p90: float | None = Field(None, description="None where an imported report did not give it")
    p95: float | None = Field(None, description="None where an imported report did not give it")
    p99: float | None = Field(None, description="None where an imported report did not give it")
    mean: float
    min: float
    max: float
    std: float | None = Field(None, description="None where an imported report did not give it")


class FirstToken(_M):
    """Batch-1 latency: one forward pass, warm."""

    lengths: str = Field(description="'fixed' (exactly seq_len real tokens) or 'text:<file>' (real texts at natural length)")
    seq_len: int | None
    mean_tokens: float
    model_only: LatencyStats
    end_to_end: LatencyStats | None = Field(None, description="tokenization included; None when the source could not measure it")


class SeqPoint(_M):
    """Batch-1 model-only latency at one sequence length (the sequence-length sweep)."""

    seq_len: int
    model_only: LatencyStats


class ThroughputPoint(_M):
    batch: int
    seq_len: int
    runs: int
    seq_per_s: float
    tokens_per_s: float
    latency_ms_p50: float
    best: bool = False


class ColdStart(_M):
    runs: int
    process_start_to_loaded_ms: float | None
    loaded_to_first_output_ms: float | None
    total_ms: float
    samples_total_ms: list[float]


class Memory(_M):
    peak_rss_mb: float | None
    device_mb: float | None = Field(None, description="accelerator memory, where the runtime reports it")
    source: str


class ExitStats(_M):
    """Early-exit artifacts: where samples left the network."""

    histogram: dict[int, int] = Field(description="exit layer -> samples")
    mean_depth: float


class Host(_M):
    cpu: str
    logical_cores: int
    physical_cores: int | None
    os: str
    python: str
    edgekit: str
    runtimes: dict[str, str]
    power: dict[str, str] = Field(
        default_factory=dict, description="power mode / clocks where readable (cpufreq governor, nvpmodel, tegrastats)"
    )


class Settings(_M):
    warmup: int | None
    min_runs: int | None
    seconds_per_point: float | None
    seq_len: int | None
    seq_lens: list[int] = []
    text_file: str | None
    batches: list[int]
    cold_runs: int
    threads: int | None
    interleaved_with: list[str] = Field(default_factory=list, description="other artifacts measured in the same interleaved run")


class ArtifactRef(_M):
    path: str
    name: str
    target: str
    precision: str
    task: str | None
    manifest_sha256: str | None
    model_bytes: int | None


class Source(_M):
    """Who measured: edgekit itself, or an imported foreign report (and what it did not include)."""

    tool: Literal["edgekit", "trtexec", "benchmark_app"] = "edgekit"
    version: str | None = None
    file: str | None = None
    notes: list[str] = []


class ProfileReport(_M):
    schema_version: int = SCHEMA_VERSION
    created: str
    source: Source = Source()
    artifact: ArtifactRef
    host: Host | None
    settings: Settings
    includes: dict[str, str] = Field(default_factory=lambda: dict(INCLUDES))
    first_token: FirstToken
    latency_vs_seq: list[SeqPoint] = []
    throughput: list[ThroughputPoint]
    cold_first_result: ColdStart | None
    memory: Memory
    exits: ExitStats | None = None
    warnings: list[str] = []

    @property
    def best(self) -> ThroughputPoint | None:
        return next((p for p in self.throughput if p.best), None)


class Comparison(_M):
    """Several artifacts measured in one interleaved run; ratios are to the first."""

    schema_version: int = SCHEMA_VERSION
    created: str
    reports: list[ProfileReport]
    ratios: list[dict[str, float | None]]


# ---- arithmetic (tested on controlled inputs) ------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(seconds: list[float]) -> LatencyStats:
    """Stats in ms from samples in seconds."""
    return latency_stats_ms([s * 1000.0 for s in seconds])


def latency_stats_ms(ms: list[float]) -> LatencyStats:
    ms = sorted(ms)
    mean = sum(ms) / len(ms)
    std = math.sqrt(sum((x - mean) ** 2 for x in ms) / len(ms))
    return LatencyStats(
        n=len(ms),
        p50=percentile(ms, 50),
        p90=percentile(ms, 90),
        p95=percentile(ms, 95),
        p99=percentile(ms, 99),
        mean=mean,
        min=ms[0],
        max=ms[-1],
        std=std,
    )


def throughput_point(batch: int, tokens_per_batch: int, seconds: list[float]) -> ThroughputPoint:
    total = sum(seconds)
    return ThroughputPoint(
        batch=batch,
        seq_len=tokens_per_batch // batch,
        runs=len(seconds),
        seq_per_s=batch * len(seconds) / total,
        tokens_per_s=tokens_per_batch * len(seconds) / total,
        latency_ms_p50=latency_stats(seconds).p50,
    )


def mark_best(points: list[ThroughputPoint]) -> list[ThroughputPoint]:
    if not points:
        return points
    best = max(range(len(points)), key=lambda i: points[i].seq_per_s)
    return [p.model_copy(update={"best": i == best}) for i, p in enumerate(points)]


def noise_warning(name: str, stats: LatencyStats) -> str | None:
    """A warning when the spread says the machine was noisy (p90 more than 1.5x p50)."""
    if stats.p90 is not None and stats.p50 > 0 and stats.p90 / stats.p50 > 1.5:
        return f"{name}: p90 is {stats.p90 / stats.p50:.1f}x p50; the machine was noisy, rerun with fewer background jobs"
    return None


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or base in (None, 0) else value / base


def headline(r: ProfileReport) -> dict[str, float | None]:
    """The figures a comparison puts side by side."""
    best = r.best
    return {
        "first_token_p50_ms": r.first_token.model_only.p50,
        "first_token_p90_ms": r.first_token.model_only.p90,
        "end_to_end_p50_ms": r.first_token.end_to_end.p50 if r.first_token.end_to_end else None,
        "best_seq_per_s": best.seq_per_s if best else None,
        "cold_first_result_ms": r.cold_first_result.total_ms if r.cold_first_result else None,
        "peak_rss_mb": r.memory.peak_rss_mb,
        "model_mb": r.artifact.model_bytes / 1e6 if r.artifact.model_bytes else None,
    }


def ratios(reports: list[ProfileReport]) -> list[dict[str, float | None]]:
    """Each report's headline figures divided by the first report's."""
    base = headline(reports[0])
    return [{k: _ratio(v, base[k]) for k, v in headline(r).items()} for r in reports]


def json_schema() -> dict:
    """The JSON Schema of a profile report (``docs/profile.schema.json``)."""
    return ProfileReport.model_json_schema()


def load(path) -> ProfileReport:
    """A profile report from JSON (measured by edgekit or imported); a clear error otherwise."""
    import json
    from pathlib import Path

    from pydantic import ValidationError

    from edgekit.errors import DataError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file", hint="pass a *.profile.json written by 'edgekit profile' or 'edgekit report import'"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(
            f"{path}: not a JSON file ({err})", hint="pass a *.profile.json written by 'edgekit profile' or 'edgekit report import'"
        ) from None
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise DataError(
            f"{path}: profile schema version {data.get('schema_version')}, this edgekit reads {SCHEMA_VERSION}",
            hint="upgrade edgekit or re-run the profile",
        )
    try:
        return ProfileReport.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(x) for x in e["loc"]) or "top level"
        raise DataError(
            f"{path}: not an edgekit profile report ({where}: {e['msg']})", hint="import foreign reports with 'edgekit report import' first"
        ) from None
