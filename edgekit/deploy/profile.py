"""Step ``profile``: latency, throughput, cold start and memory of artifacts on this machine.

Every runtime is measured by this one code path, through a :class:`~edgekit.deploy.runtime.Predictor`
(torch is never imported). Several artifacts are measured in one *interleaved* run: each
measurement point takes turns between the artifacts in small blocks, alternating the order,
so drift of the machine (thermal, background load) hits all of them alike. What each
figure includes is written into the report (``report.INCLUDES``); the schema is in
:mod:`edgekit.deploy.report`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from edgekit import __version__
from edgekit.deploy import artifact, coldstart, data
from edgekit.deploy.report import (
    ArtifactRef,
    Comparison,
    ExitStats,
    FirstToken,
    Host,
    Memory,
    ProfileReport,
    SeqPoint,
    Settings,
    latency_stats,
    mark_best,
    noise_warning,
    ratios,
    throughput_point,
)
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets.base import TargetOptions
from edgekit.deps import version_of
from edgekit.errors import ConfigError

DEFAULT_BATCHES = [1, 4, 16, 32]


class ProfileOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    warmup: int = Field(5, ge=0, description="untimed runs before each point (more if timings have not settled)")
    min_runs: int = Field(20, ge=3, description="timed runs per point, at least")
    seconds_per_point: float = Field(2.0, gt=0, description="keep timing a point until this budget is spent")
    max_runs: int = Field(2000, ge=3)
    seq_len: int = Field(128, ge=4, description="sequence length for fixed-length first-token and the throughput sweep")
    seq_lens: list[Annotated[int, Field(ge=4)]] = Field(
        default_factory=list, description="also sweep batch-1 latency over these sequence lengths"
    )
    text_file: Path | None = Field(None, description="draw first-token inputs from this real text file")
    batches: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="throughput sweep (default: 1, 4, 16, 32; a static artifact: its batch)"
    )
    cold_runs: int = Field(3, ge=0, description="fresh-process cold starts (0 skips)")
    threads: int | None = None


# ---- measurement -------------------------------------------------------------------------


def _warm(fn: Callable[[int], object], opts: ProfileOptions) -> None:
    """Fixed warm-up, then keep warming while a run is clearly slower than the one before."""
    for i in range(opts.warmup):
        fn(i)
    prev = None
    for i in range(opts.warmup, opts.warmup + 20):
        t = time.perf_counter()
        fn(i)
        dt = time.perf_counter() - t
        if prev is not None and dt < 1.2 * prev:
            break
        prev = dt


def time_interleaved(fns: list[Callable[[int], object]], opts: ProfileOptions) -> list[list[float]]:
    """Time each ``fn(i)`` until it has min_runs and has spent its budget, taking turns.

    Blocks of a few runs alternate between the functions (forward, then reversed order);
    with one function this is plain repeated timing.
    """
    for fn in fns:
        _warm(fn, opts)
    samples: list[list[float]] = [[] for _ in fns]
    spent = [0.0] * len(fns)
    block = max(1, opts.min_runs // 4)

    def done(k: int) -> bool:
        n = len(samples[k])
        return n >= opts.max_runs or (n >= opts.min_runs and spent[k] >= opts.seconds_per_point)

    order = list(range(len(fns)))
    while not all(done(k) for k in order):
        for k in order:
            for _ in range(block):
                if done(k):
                    break
                t = time.perf_counter()
                fns[k](len(samples[k]))
                dt = time.perf_counter() - t
                samples[k].append(dt)
                spent[k] += dt
        order.reverse()
    return samples


def time_calls(fn: Callable[[int], object], opts: ProfileOptions) -> list[float]:
    return time_interleaved([fn], opts)[0]


def fixed_length_text(predictor: Predictor, seq_len: int) -> str:
    """Real text with at least ``seq_len`` tokens (see :meth:`Tokenizer.text_of_length`)."""
    return predictor.tokenizer.text_of_length(seq_len)


def _read(path: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path(path).read_text().strip()
    return None


def power_facts() -> dict[str, str]:
    """Power mode and clocks where this machine exposes them (Linux cpufreq, Jetson tools)."""
    facts: dict[str, str] = {}
    for key, path in (
        ("cpufreq_governor", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        ("cpu0_cur_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq"),
        ("cpu0_max_khz", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq"),
        ("jetson_model", "/proc/device-tree/model"),
    ):
        if (value := _read(path)) is not None:
            facts[key] = value.replace("\x00", "")
    for key, cmd in (("nvpmodel", ["nvpmodel", "-q"]), ("tegrastats", ["tegrastats", "--interval", "200"])):
        if shutil.which(cmd[0]):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=1)
                facts[key] = " | ".join(out.stdout.strip().splitlines()[:2])
            if key == "tegrastats" and key not in facts:
                # tegrastats streams until killed; the timeout above ends it.
                facts[key] = "present (stream not captured)"
    return facts


def host_info() -> Host:
    import psutil

    cpu = platform.processor() or platform.machine()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    runtimes = {name: v for name in ("onnxruntime", "openvino", "tensorrt", "tokenizers", "numpy") if (v := version_of(name))}
    return Host(
        cpu=cpu,
        logical_cores=os.cpu_count() or 0,
        physical_cores=psutil.cpu_count(logical=False),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        edgekit=__version__,
        runtimes=runtimes,
        power=power_facts(),
    )


# ---- the step ----------------------------------------------------------------------------


def profile_many(
    artifact_dirs: list[str | Path], options: ProfileOptions = ProfileOptions(), *, progress: Callable[[str], None] | None = None
) -> list[ProfileReport]:
    """Profile several artifacts in one interleaved run (one artifact: a plain profile)."""
    dirs = [Path(d) for d in artifact_dirs]
    if not dirs:
        raise ConfigError("no artifact to profile", hint="pass at least one artifact directory")
    say = progress or (lambda msg: None)
    with contextlib.ExitStack() as stack:
        target_options = TargetOptions(threads=options.threads) if options.threads else None
        preds = [stack.enter_context(Predictor(d, options=target_options)) for d in dirs]
        plans = [_plan(p, options) for p in preds]
        first_token, sweeps, throughput, warnings, exit_stats = _measure(preds, plans, options, say)
    colds: list[list[dict]] = [[] for _ in dirs]
    for r in range(options.cold_runs):
        say(f"cold first result {r + 1}/{options.cold_runs}")
        for k, d in enumerate(dirs):
            colds[k].append(coldstart.measure(d, plans[k]["seq_len"], options.threads))
    host = host_info()
    reports = []
    for k, (d, pred, plan) in enumerate(zip(dirs, preds, plans)):
        m = pred.manifest
        cold, memory = coldstart.summary(colds[k]) if colds[k] else (None, Memory(peak_rss_mb=None, source="not measured (cold_runs=0)"))
        ref = ArtifactRef(
            path=str(d),
            name=m.name,
            target=m.target,
            precision=m.precision,
            task=m.task,
            manifest_sha256=artifact.manifest_sha256(d),
            model_bytes=sum(f.bytes for f in m.files.values()),
        )
        settings = Settings(
            warmup=options.warmup,
            min_runs=options.min_runs,
            seconds_per_point=options.seconds_per_point,
            seq_len=plan["seq_len"],
            seq_lens=plan["seq_lens"],
            text_file=str(options.text_file) if options.text_file else None,
            batches=plan["batches"],
            cold_runs=options.cold_runs,
            threads=options.threads,
            interleaved_with=[str(o) for o in dirs if o != d],
        )
        reports.append(
            ProfileReport(
                created=artifact.now(),
                artifact=ref,
                host=host,
                settings=settings,
                first_token=first_token[k],
                latency_vs_seq=sweeps[k],
                throughput=mark_best(throughput[k]),
                cold_first_result=cold,
                memory=memory,
                warnings=warnings[k],
                exits=exit_stats[k],
            )
        )
    return reports


def profile(
    artifact_dir: str | Path, options: ProfileOptions = ProfileOptions(), *, progress: Callable[[str], None] | None = None
) -> ProfileReport:
    """Profile one artifact with its own runtime."""
    return profile_many([artifact_dir], options, progress=progress)[0]


def compare(
    artifact_dirs: list[str | Path], options: ProfileOptions = ProfileOptions(), *, progress: Callable[[str], None] | None = None
) -> Comparison:
    """Profile several artifacts interleaved; ratios are each one's figures over the first's."""
    reports = profile_many(artifact_dirs, options, progress=progress)
    return Comparison(created=artifact.now(), reports=reports, ratios=ratios(reports))


def _plan(pred: Predictor, options: ProfileOptions) -> dict:
    """Shapes this artifact can take: static artifacts fix batch and sequence length."""
    static = pred.manifest.static_shape
    seq_len = static[1] if static else options.seq_len
    limit = pred.tokenizer.max_length
    for s in [seq_len, *options.seq_lens]:
        if s > limit:
            raise ConfigError(f"{pred.dir}: sequence length {s} exceeds the artifact's max length {limit}", hint=f"use lengths <= {limit}")
    if static and any(s != static[1] for s in options.seq_lens):
        raise ConfigError(
            f"{pred.dir}: built for the static shape {static}, cannot sweep sequence lengths",
            hint="drop --seq-lens, or export with dynamic shapes",
        )
    batches = options.batches or ([static[0]] if static else DEFAULT_BATCHES)
    for b in batches:
        pred.check_batch(b)
    return {
        "seq_len": seq_len,
        "seq_lens": sorted(set(options.seq_lens)),
        "batches": batches,
        "text": fixed_length_text(pred, max([seq_len, *options.seq_lens])),
    }


def _measure(preds: list[Predictor], plans: list[dict], options: ProfileOptions, say: Callable[[str], None]):
    n = len(preds)
    static = [p.manifest.static_shape is not None for p in preds]
    texts: list[list[str]] = []
    pads: list[int | None] = []
    for plan, st in zip(plans, static):
        if options.text_file:
            texts.append(data.read_texts(options.text_file)[:500])
            pads.append(plan["seq_len"] if st else None)
        else:
            texts.append([plan["text"]])
            pads.append(plan["seq_len"])
    feeds = [[p.tokenizer([t], pad_to=pad) for t in ts] for p, ts, pad in zip(preds, texts, pads)]

    say("first-token latency, model only")
    before = [p.exits.histogram.copy() if p.exits is not None else None for p in preds]
    model_only = time_interleaved([lambda i, p=p, f=f: p.run(f[i % len(f)]) for p, f in zip(preds, feeds)], options)
    exit_stats = []
    for p, b in zip(preds, before):
        if b is None:
            exit_stats.append(None)
            continue
        hist = p.exits.histogram - b
        exit_stats.append(
            ExitStats(
                histogram={int(layer): int(c) for layer, c in zip(p.exits.layers, hist)},
                mean_depth=float((hist * p.exits.layers).sum() / max(hist.sum(), 1)),
            )
        )
    say("first-token latency, end to end")
    e2e = time_interleaved(
        [lambda i, p=p, ts=ts, pad=pad: p.run(p.tokenizer([ts[i % len(ts)]], pad_to=pad)) for p, ts, pad in zip(preds, texts, pads)],
        options,
    )
    first_token, warnings = [], []
    for k in range(n):
        lengths = [int(f["attention_mask"].sum()) for f in feeds[k]]
        mo, ee = latency_stats(model_only[k]), latency_stats(e2e[k])
        first_token.append(
            FirstToken(
                lengths=f"text:{options.text_file}" if options.text_file else "fixed",
                seq_len=None if options.text_file else plans[k]["seq_len"],
                mean_tokens=sum(lengths) / len(lengths),
                model_only=mo,
                end_to_end=ee,
            )
        )
        warnings.append([w for name, s in (("model_only", mo), ("end_to_end", ee)) if (w := noise_warning(name, s))])
        if options.text_file and (note := preds[k].tokenizer.truncation_note(texts[k])) is not None:
            warnings[-1].append(f"{options.text_file}: {note}")

    sweeps: list[list[SeqPoint]] = [[] for _ in range(n)]
    for s in sorted(set(options.seq_lens)):
        say(f"latency at sequence length {s}")
        fs = [p.tokenizer([plan["text"]], pad_to=s) for p, plan in zip(preds, plans)]
        for k, samples in enumerate(time_interleaved([lambda i, p=p, f=f: p.run(f) for p, f in zip(preds, fs)], options)):
            sweeps[k].append(SeqPoint(seq_len=s, model_only=latency_stats(samples)))

    throughput: list[list] = [[] for _ in range(n)]
    for b in sorted({b for plan in plans for b in plan["batches"]}):
        ks = [k for k in range(n) if b in plans[k]["batches"]]
        say(f"throughput at batch {b}")
        fs = {k: preds[k].tokenizer([plans[k]["text"]] * b, pad_to=plans[k]["seq_len"]) for k in ks}
        runs = time_interleaved([lambda i, k=k, fs=fs: preds[k].run(fs[k]) for k in ks], options)
        for k, samples in zip(ks, runs):
            throughput[k].append(throughput_point(b, int(fs[k]["attention_mask"].sum()), samples))
    return first_token, sweeps, throughput, warnings, exit_stats


def accuracy_of(reports: list[ProfileReport]) -> dict[str, dict[str, float]]:
    """Eval results of these artifacts (``reports/<target>.eval.json`` beside them), by artifact path.

    Only results whose manifest sha256 matches the profiled artifact count; the metric is
    the first of accuracy / recall@10 / recall@1 / fidelity that every such result has.
    """
    found: dict[str, dict[str, float]] = {}
    for r in reports:
        f = Path(r.artifact.path).resolve().parent / "reports" / f"{r.artifact.target}.eval.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            ev = json.loads(f.read_text())
            if ev.get("manifest_sha256") == r.artifact.manifest_sha256:
                found[r.artifact.path] = ev["metrics"]
    for metric in ("accuracy", "recall@10", "recall@1", "fidelity_cosine_mean"):
        if found and all(metric in m for m in found.values()):
            return {path: {metric: m[metric]} for path, m in found.items()}
    return {}


def report_names(reports: list[ProfileReport]) -> list[str]:
    """File stems, one per report: the target, or (where several artifacts share a target)
    the artifact's directory name too, numbered if that still collides."""
    import re

    targets = [r.artifact.target for r in reports]
    names = []
    for r in reports:
        name = r.artifact.target
        if targets.count(name) > 1:
            parent = Path(r.artifact.path).parent.name or "artifact"
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{parent}-{name}")
        base, n = name, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def write_reports(
    reports: list[ProfileReport], comparison: Comparison | None, folder: Path, stem: str, *, plots: bool = True
) -> list[Path]:
    """JSON (one per artifact, plus the comparison), a Markdown summary and PNG plots."""
    from edgekit.deploy.render import markdown
    from edgekit.deploy.render import plots as draw

    docs = {folder / f"{name}.profile.json": r.model_dump() for r, name in zip(reports, report_names(reports))}
    if comparison:
        docs[folder / f"{stem}.json"] = comparison.model_dump()
    try:
        written = [artifact.write_json(path, doc) for path, doc in docs.items()]
    except ConfigError as err:
        raise _rescued(err, docs) from err.__cause__
    accuracy = accuracy_of(reports)
    pngs = draw(reports, folder, stem, accuracy) if plots else []
    md = artifact.write_text(folder / f"{stem}.md", markdown(reports, comparison, pngs, accuracy))
    return [*written, md, *pngs]


def _rescued(err: ConfigError, docs: dict[Path, dict]) -> ConfigError:
    """``err``, saying where the measurements went instead (the system's temp folder), if they could be saved there."""
    import tempfile

    try:
        rescue = Path(tempfile.mkdtemp(prefix="edgekit-reports-"))
        for path, doc in docs.items():
            artifact.write_json(rescue / path.name, doc)
    except (OSError, ConfigError):
        return err
    return ConfigError(f"{err.message}; the measurements were saved in {rescue}", hint=err.hint)
