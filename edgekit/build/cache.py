"""The step cache: each step keyed by the sha256 of its inputs, settings and tool versions.

A step is keyed by the sha256 of its inputs (file contents, or the key of the step that made
them), its settings, edgekit's version and the versions of the tools it runs; a step whose key
is in the cache is not run again. A cache entry is ``CACHE/<step>-<key>/``, complete only once
its ``step.json`` is written (last): an interrupted run leaves entries without it, which the
next run redoes (QAT resumes from its last saved training step).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import __version__, env
from edgekit.deploy import artifact
from edgekit.errors import ArtifactError

STEP_RECORD = "step.json"
OWNER = ".owner"
TOOLS = ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "numpy", "tokenizers")
# The tools whose versions a step's output depends on (its cache key holds them, and edgekit's).
_TORCH, _ONNX = ("torch", "transformers", "numpy"), ("torch", "transformers", "onnx", "onnxruntime", "numpy")
STEP_TOOLS = {
    "quantize": _TORCH,
    "exits": _TORCH,
    "export": _ONNX,
    "prune": _ONNX,
    "segments": _ONNX,
    "lower": _ONNX,
    "ptq": ("onnx", "onnxruntime", "numpy", "tokenizers"),
    "compile": ("onnx", "onnxruntime", "openvino", "nncf", "numpy", "tokenizers"),
    "eval": ("onnxruntime", "openvino", "numpy", "tokenizers"),
    "profile": ("onnxruntime", "openvino", "numpy", "tokenizers"),
}
Say = Callable[[str], None]


# ----------------------------------------------------------------------------- hashing


_HASHES: dict[tuple, str] = {}


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names + contents; caches and hidden files skipped)."""
    path = Path(path).resolve()
    st = path.stat()
    memo = (str(path), st.st_mtime_ns, st.st_size)
    if path.is_file():
        if memo not in _HASHES:
            _HASHES[memo] = artifact.sha256_file(path)
        return _HASHES[memo]
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        rel = f.relative_to(path)
        if not f.is_file() or any(p.startswith(".") or p == "__pycache__" for p in rel.parts) or f.suffix == ".pyc":
            continue
        h.update(str(rel).encode() + b"\0" + hash_path(f).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    from edgekit.deps import version_of

    found = {name: version_of(name) for name in TOOLS}
    return {"edgekit": __version__, "python": platform.python_version(), **{k: v for k, v in found.items() if v}}


def host_fingerprint() -> dict[str, Any]:
    """What a latency figure depends on (the profile step's key includes it)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"machine": platform.machine(), "system": platform.system(), "cpu": cpu, "logical_cores": os.cpu_count()}


def step_key(step: str, payload: dict[str, Any]) -> str:
    versions = tool_versions()
    tools = {k: versions.get(k) for k in ("edgekit", "python", *STEP_TOOLS.get(step, TOOLS))}
    doc = {"step": step, "tools": tools, **payload}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- cache


@dataclass
class Step:
    """One finished step: where its output is, and whether it came from the cache."""

    name: str
    key: str
    dir: Path
    record: dict[str, Any]
    cached: bool

    @property
    def out(self) -> Path:
        return self.dir / self.record["output"]

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.get("summary", {})


class Runner:
    """Runs steps through the cache and reports progress."""

    def __init__(self, cache: Path, *, use_cache: bool, say: Say) -> None:
        self.cache = cache
        self.use_cache = use_cache
        self.say = say
        self.steps: list[Step] = []
        self._this_run: dict[str, Step] = {}  # a step asked for twice in one build runs once, even with --no-cache

    def run(self, name: str, label: str, payload: dict[str, Any], fn: Callable[[Path], tuple[str, dict]]) -> Step:
        """``fn(entry_dir) -> (output path relative to the entry, summary)``; skipped on a cache hit."""
        key = step_key(name.split(":")[0], payload)
        if key in self._this_run:
            return self._this_run[key]
        entry = self.cache / f"{name.replace(':', '-')}-{key[:20]}"
        record_file = entry / STEP_RECORD
        if self.use_cache and record_file.exists():
            try:
                record = json.loads(record_file.read_text())
                out = entry / record["output"]
                if not out.exists():
                    raise ArtifactError(f"{out} is missing")
                if (out / artifact.MANIFEST).exists():
                    artifact.read_manifest(out)  # every file (and the manifest) still matches its sha256
                if hash_path(out) != record.get("output_sha256"):
                    raise ArtifactError(f"{out} differs from what the step wrote (sha256 recorded in {STEP_RECORD})")
                step = Step(name, key, entry, record, cached=True)
                self.say(f"{label}: cached ({entry})")
                return self._keep(step)
            except (OSError, ValueError, KeyError, ArtifactError) as err:
                self.say(f"{label}: cache entry unusable ({err}); running it again")
        record_file.unlink(missing_ok=True)
        entry.mkdir(parents=True, exist_ok=True)
        (entry / OWNER).write_text(str(os.getpid()))  # who is filling the entry (edgekit clean leaves live ones alone)
        self.say(f"{label} ...")
        t0 = time.perf_counter()
        output, summary = fn(entry)
        seconds = time.perf_counter() - t0
        if env.rank() != 0:  # under torchrun, rank 0 alone records what the step wrote
            return self._keep(Step(name, key, entry, {"output": output, "summary": summary, "seconds": seconds}, cached=False))
        record = {
            "step": name,
            "key": key,
            "output": output,
            "seconds": round(seconds, 2),
            "created": artifact.now(),
            "inputs": payload,
            "summary": summary,
            "output_sha256": hash_path(entry / output),
        }
        tmp = entry / f".{STEP_RECORD}.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, record_file)  # the entry is complete from here on
        self.say(f"{label}: done in {seconds:.1f}s")
        return self._keep(Step(name, key, entry, record, cached=False))

    def _keep(self, step: Step) -> Step:
        self.steps.append(step)
        self._this_run[step.key] = step
        return step


def clean(cache: Path) -> list[Path]:
    """Remove unfinished entries (no ``step.json``) whose process is gone; returns what was removed.

    An interrupted QAT run resumes from its unfinished entry: after cleaning it starts over."""
    import shutil

    import psutil

    removed = []
    for entry in sorted(Path(cache).glob("*-*")) if Path(cache).is_dir() else []:
        owner = entry / OWNER
        if not entry.is_dir() or (entry / STEP_RECORD).exists() or not owner.exists():
            continue
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            pid = -1
        if pid > 0 and psutil.pid_exists(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
