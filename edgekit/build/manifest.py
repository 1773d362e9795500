"""The build manifest (``OUTPUT/NAME/manifest.json`` of ``edgekit build`` and ``edgekit quickstart``), typed.

Written once by the runner; read back with :func:`load`. Fields keep the JSON keys that
earlier builds wrote, so CI jobs that read them keep working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.errors import ArtifactError

BUILD_KIND = "edgekit-build"
MANIFEST_SCHEMA = 1


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_M):
    target: str
    budget: str
    limit: float
    value: float | None
    unit: str
    status: Literal["passed", "failed", "unchecked"]
    reason: str | None = None
    detail: str | None = None


class Accuracy(_M):
    metric: str
    value: float
    baseline: float
    drop_points: float
    data: str
    n: int
    report: str


class Latency(_M):
    p50_ms: float
    p90_ms: float
    seq_len: int | None = None
    e2e_p50_ms: float | None = None
    batch: int = 1
    host: str
    report: str


class ArtifactEntry(_M):
    path: str
    target: str
    device: str | None
    kind: str
    precision: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    static_shape: list[int] | None
    exits: dict[str, Any] | None
    runtime: dict[str, Any]
    parity: dict[str, Any] | None
    parity_not_run: str | None
    pending: str | None
    runs_here: bool
    not_here: str | None
    files: dict[str, Any]
    size_bytes: int
    model_bytes: int
    manifest_sha256: str
    step_key: str
    accuracy: Accuracy | None = None
    latency: Latency | None = None
    budgets: list[Budget] = []


class StepEntry(_M):
    step: str
    key: str
    cached: bool
    seconds: float
    summary: dict[str, Any]


class Baseline(_M):
    metric: str
    value: float | None
    artifact: str
    data: str


class Budgets(_M):
    status: Literal["passed", "failed", "partly-checked"]
    passed: list[Budget]
    failed: list[Budget]
    unchecked: list[Budget]


class BuildManifest(_M):
    schema_version: Literal[1] = MANIFEST_SCHEMA
    kind: Literal["edgekit-build"] = BUILD_KIND
    created: str
    recipe: dict[str, Any]
    checkpoint: dict[str, Any]
    data: dict[str, dict[str, str]]
    tools: dict[str, str]
    host: dict[str, Any]
    steps: list[StepEntry]
    targets_in_recipe: list[str]
    targets_built: list[str]
    skipped: dict[str, str] = {}
    baseline: Baseline | None
    artifacts: dict[str, ArtifactEntry]
    budgets: Budgets
    reproducibility: dict[str, Any]
    seconds: float
    cached_steps: int
    total_steps: int


def summarize(results: list[Budget]) -> Budgets:
    """passed: every budget checked and met; partly-checked: none failed, some could not be checked here."""
    by = {s: [r for r in results if r.status == s] for s in ("passed", "failed", "unchecked")}
    status = "failed" if by["failed"] else "partly-checked" if by["unchecked"] else "passed"
    return Budgets(status=status, **by)


def load(path: str | Path) -> BuildManifest:
    """Read a build manifest; anything else is a one-line ArtifactError."""
    path = Path(path)
    try:
        return BuildManifest.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError, ValidationError) as err:
        raise ArtifactError(f"{path}: not an edgekit build manifest ({str(err).splitlines()[0]})", hint="rebuild it") from err
