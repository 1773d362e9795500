"""Step ``profile``: latency, throughput, cold start and memory of an artifact on this machine.

Measured the same way for every runtime, through a :class:`~edgekit.runtime.Predictor`
(no torch imported). What each figure includes is written into the report itself.

- first-token latency: batch 1, one forward pass, warm; *model_only* (tokenized input
  already in memory) and *end_to_end* (tokenization included); p50/p90/p95/p99.
- cold first result: a fresh subprocess measures process start -> artifact loaded ->
  first output (interpreter start and imports included).
- throughput: sequences/s and tokens/s per batch size at one sequence length; best marked.
- memory: peak RSS of the cold-start subprocess (one artifact alone in a process).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from edgekit import __version__, artifact, data
from edgekit.deps import version_of
from edgekit.errors import ConfigError, TargetError
from edgekit.runtime import Predictor

SCHEMA_VERSION = 1
DEFAULT_BATCHES = [1, 4, 16, 32]
INCLUDES = {
    "model_only": "one synchronous inference call on an already-tokenized batch-1 input held in host memory; output copied to a numpy array",
    "end_to_end": "tokenization of the raw text (tokenizers library) + the model-only call",
    "cold_first_result": "fresh Python process: interpreter start, imports, artifact load (graph compile / session creation), first inference",
    "throughput": "model-only calls at batch B on sequences of exactly seq_len real tokens; tokens/s counts non-padding tokens",
    "memory": "peak resident set size (RSS) of the cold-start process: runtime + one loaded artifact + one inference",
}


class _M(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LatencyStats(_M):
    unit: str = "ms"
    n: int
    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float
    std: float


class FirstToken(_M):
    lengths: str  # "fixed" or "text:<file>"
    seq_len: int | None
    mean_tokens: float
    model_only: LatencyStats
    end_to_end: LatencyStats


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
    process_start_to_loaded_ms: float
    loaded_to_first_output_ms: float
    total_ms: float
    samples_total_ms: list[float]


class Memory(_M):
    peak_rss_mb: float | None
    source: str


class Host(_M):
    cpu: str
    logical_cores: int
    physical_cores: int | None
    os: str
    python: str
    edgekit: str
    runtimes: dict[str, str]


class Settings(_M):
    warmup: int
    min_runs: int
    seconds_per_point: float
    seq_len: int
    text_file: str | None
    batches: list[int]
    cold_runs: int
    threads: int | None


class ArtifactRef(_M):
    path: str
    name: str
    target: str
    precision: str
    task: str
    manifest_sha256: str
    model_bytes: int


class ProfileReport(_M):
    schema_version: int = SCHEMA_VERSION
    created: str
    artifact: ArtifactRef
    host: Host
    settings: Settings
    includes: dict[str, str] = Field(default_factory=lambda: dict(INCLUDES))
    first_token: FirstToken
    cold_first_result: ColdStart | None
    throughput: list[ThroughputPoint]
    memory: Memory
    warnings: list[str] = []


class ProfileOptions(_M):
    warmup: int = Field(5, ge=0, description="untimed runs before each point (more if timings have not settled)")
    min_runs: int = Field(20, ge=3, description="timed runs per point, at least")
    seconds_per_point: float = Field(2.0, gt=0, description="keep timing a point until this budget is spent")
    max_runs: int = Field(2000, ge=3)
    seq_len: int = Field(128, ge=4, description="sequence length for fixed-length points and the throughput sweep")
    text_file: Path | None = Field(None, description="draw first-token inputs from this real text file")
    batches: list[int] | None = Field(None, description="throughput sweep (default: 1, 4, 16, 32; a static artifact: its batch)")
    cold_runs: int = Field(3, ge=0, description="fresh-process cold starts (0 skips)")
    threads: int | None = None


# ---- arithmetic (tested on controlled inputs) ------------------------------------------

def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of sorted values."""
    if not sorted_values:
        raise ValueError("no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(seconds: list[float]) -> LatencyStats:
    ms = sorted(s * 1000.0 for s in seconds)
    mean = sum(ms) / len(ms)
    std = math.sqrt(sum((x - mean) ** 2 for x in ms) / len(ms))
    return LatencyStats(
        n=len(ms), p50=percentile(ms, 50), p90=percentile(ms, 90), p95=percentile(ms, 95), p99=percentile(ms, 99),
        mean=mean, min=ms[0], max=ms[-1], std=std,
    )


def throughput_point(batch: int, tokens_per_batch: int, seconds: list[float]) -> ThroughputPoint:
    total = sum(seconds)
    return ThroughputPoint(
        batch=batch, seq_len=tokens_per_batch // batch, runs=len(seconds),
        seq_per_s=batch * len(seconds) / total, tokens_per_s=tokens_per_batch * len(seconds) / total,
        latency_ms_p50=latency_stats(seconds).p50,
    )


def mark_best(points: list[ThroughputPoint]) -> list[ThroughputPoint]:
    if not points:
        return points
    best = max(range(len(points)), key=lambda i: points[i].seq_per_s)
    return [p.model_copy(update={"best": i == best}) for i, p in enumerate(points)]


def noise_warning(name: str, stats: LatencyStats) -> str | None:
    """A warning when the spread says the machine was noisy (p90 more than 1.5x p50)."""
    if stats.p50 > 0 and stats.p90 / stats.p50 > 1.5:
        return f"{name}: p90 is {stats.p90 / stats.p50:.1f}x p50; the machine was noisy, rerun with fewer background jobs"
    return None


# ---- measurement -------------------------------------------------------------------------

def time_calls(fn: Callable[[int], object], opts: ProfileOptions) -> list[float]:
    """Warm up, then time ``fn(i)`` until min_runs and the time budget are both met."""
    for i in range(opts.warmup):
        fn(i)
    # Settle: keep warming while the last run is far slower than the one before.
    prev = None
    for i in range(opts.warmup, opts.warmup + 20):
        t = time.perf_counter()
        fn(i)
        dt = time.perf_counter() - t
        if prev is not None and dt < 1.2 * prev:
            break
        prev = dt
    samples: list[float] = []
    start = time.perf_counter()
    i = 0
    while len(samples) < opts.max_runs and (len(samples) < opts.min_runs or time.perf_counter() - start < opts.seconds_per_point):
        t = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - t)
        i += 1
    return samples


def fixed_length_text(predictor: Predictor, seq_len: int) -> str:
    """Real text with at least ``seq_len`` tokens (joined sample sentences)."""
    texts = data.sample_texts()
    joined = ""
    for sentence in texts:
        joined = f"{joined} {sentence}".strip()
        if predictor.tokenizer.lengths([joined])[0] >= seq_len:
            break
    return joined


def host_info() -> Host:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    runtimes = {name: v for name in ("onnxruntime", "openvino", "tokenizers", "numpy") if (v := version_of(name))}
    return Host(
        cpu=cpu, logical_cores=os.cpu_count() or 0, physical_cores=psutil.cpu_count(logical=False),
        os=f"{platform.system()} {platform.release()}", python=platform.python_version(), edgekit=__version__, runtimes=runtimes,
    )


def cold_start(artifact_dir: Path, seq_len: int, runs: int, threads: int | None) -> tuple[ColdStart, Memory]:
    """Measure process start -> loaded -> first output in fresh subprocesses."""
    totals, loaded, first, rss = [], [], [], []
    cmd = [sys.executable, "-m", "edgekit.coldstart", str(artifact_dir), str(seq_len), str(threads or 0)]
    for _ in range(runs):
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise TargetError(f"{artifact_dir}: cold-start subprocess failed: {tail}", hint="run 'edgekit profile' with --debug")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        loaded.append((r["loaded"] - t0) * 1000)
        first.append((r["first_output"] - r["loaded"]) * 1000)
        totals.append((r["first_output"] - t0) * 1000)
        rss.append(r["peak_rss_mb"])
    med = lambda xs: percentile(sorted(xs), 50)  # noqa: E731
    cold = ColdStart(
        runs=runs, process_start_to_loaded_ms=med(loaded), loaded_to_first_output_ms=med(first), total_ms=med(totals),
        samples_total_ms=[round(x, 2) for x in totals],
    )
    return cold, Memory(peak_rss_mb=max(rss), source="cold-start subprocess, ru_maxrss")


def profile(artifact_dir: str | Path, options: ProfileOptions = ProfileOptions(), *, progress: Callable[[str], None] | None = None) -> ProfileReport:
    """Profile one artifact with its own runtime. Returns the report (see module docs)."""
    artifact_dir = Path(artifact_dir)
    say = progress or (lambda msg: None)
    warnings: list[str] = []
    with Predictor(artifact_dir) as pred:
        static = pred.manifest.static_shape
        seq_len = static[1] if static else options.seq_len
        if seq_len > pred.tokenizer.max_length:
            raise ConfigError(f"seq_len {seq_len} exceeds the artifact's max length {pred.tokenizer.max_length}", hint=f"use --seq-len <= {pred.tokenizer.max_length}")
        batches = options.batches or ([static[0]] if static else DEFAULT_BATCHES)
        for b in batches:
            pred.check_batch(b)
        long_text = fixed_length_text(pred, seq_len)

        say("first-token latency")
        if options.text_file:
            texts = data.read_texts(options.text_file)[:500]
            pad_to = seq_len if static else None
            lengths_label = f"text:{options.text_file}"
        else:
            texts, pad_to, lengths_label = [long_text], seq_len, "fixed"
        feeds = [pred.tokenizer([t], pad_to=pad_to) for t in texts]
        lengths = [int(f["attention_mask"].sum()) for f in feeds]
        model_only = latency_stats(time_calls(lambda i: pred.run(feeds[i % len(feeds)]), options))
        e2e = latency_stats(time_calls(lambda i: pred.run(pred.tokenizer([texts[i % len(texts)]], pad_to=pad_to)), options))
        first_token = FirstToken(
            lengths=lengths_label, seq_len=None if options.text_file else seq_len,
            mean_tokens=sum(lengths) / len(lengths), model_only=model_only, end_to_end=e2e,
        )
        for name, stats in (("model_only", model_only), ("end_to_end", e2e)):
            if (w := noise_warning(name, stats)) is not None:
                warnings.append(w)

        points = []
        for b in batches:
            say(f"throughput batch {b}")
            feed = pred.tokenizer([long_text] * b, pad_to=seq_len)
            tokens = int(feed["attention_mask"].sum())
            points.append(throughput_point(b, tokens, time_calls(lambda i: pred.run(feed), options)))
        points = mark_best(points)

    cold, memory = (None, Memory(peak_rss_mb=None, source="not measured (cold_runs=0)"))
    if options.cold_runs:
        say("cold first result")
        cold, memory = cold_start(artifact_dir, seq_len, options.cold_runs, options.threads)
    manifest = pred.manifest
    ref = ArtifactRef(
        path=str(artifact_dir), name=manifest.name, target=manifest.target, precision=manifest.precision, task=manifest.task,
        manifest_sha256=artifact.manifest_sha256(artifact_dir), model_bytes=sum(f.bytes for f in manifest.files.values()),
    )
    settings = Settings(
        warmup=options.warmup, min_runs=options.min_runs, seconds_per_point=options.seconds_per_point, seq_len=seq_len,
        text_file=str(options.text_file) if options.text_file else None, batches=batches, cold_runs=options.cold_runs, threads=options.threads,
    )
    return ProfileReport(
        created=artifact.now(), artifact=ref, host=host_info(), settings=settings, first_token=first_token,
        cold_first_result=cold, throughput=points, memory=memory, warnings=warnings,
    )
