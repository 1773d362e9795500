"""Device profiles: YAML files describing a target device, validated by one schema.

Shipped profiles live in the repository's ``devices/`` folder (packaged as
``edgekit/_devices``); ``edgekit devices`` lists them and says whether each is usable here.
This module knows nothing of the targets: that a profile's targets exist, what options a
profile sets for each and whether one runs here are the registry's business
(:mod:`edgekit.deploy.targets`: ``check_profile``, ``resolve_options``, ``usable_here``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import ConfigError

SCHEMA_VERSION = 1


class RuntimeSpec(BaseModel):
    """One runtime a device runs, with the versions edgekit supports there."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: Literal["onnxruntime", "openvino", "tensorrt"]
    versions: str = Field(description="PEP 440 range, e.g. '>=10.3,<11'")
    platform: str | None = Field(None, description="e.g. 'JetPack 6.2 (L4T r36.4)'")
    execution_providers: list[str] = Field(default_factory=list, description="ONNX Runtime EPs to use on the device, in order")


class DeviceProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str
    arch: Literal["x86_64", "aarch64"]
    cpu_flags: list[str] = []
    targets: list[str] = Field(min_length=1)
    runtimes: list[RuntimeSpec] = []
    precisions: list[Literal["fp32", "fp16", "bf16", "int8"]] = ["fp32"]
    static_shapes: bool = Field(False, description="the device compiles only static shapes (NPU)")
    dla_cores: int = Field(0, ge=0, description="NVIDIA Deep Learning Accelerator cores (Jetson AGX/NX)")
    dla_precisions: list[Literal["fp16", "int8"]] = []
    compute_capability: str | None = Field(None, description="GPU SM version, e.g. '8.7' for Orin")
    threads: int | None = Field(None, ge=1)
    memory_gb: float | None = Field(None, gt=0)
    accelerator: str | None = Field(None, description="e.g. 'NVIDIA Ampere GPU, 1024 CUDA cores' or 'Intel NPU 4'")
    profile: str = "run 'edgekit profile' on the device itself"


def devices_dir() -> Path:
    package = Path(__file__).resolve().parents[1]  # edgekit/
    for candidate in (package / "_devices", package.parent / "devices"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("no devices/ folder found next to edgekit", hint="reinstall edgekit")


def load_profile(path: str | Path) -> DeviceProfile:
    """Read one device profile; a bad field is one line naming the file and field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read YAML ({str(err).splitlines()[0]})", hint="fix the file's syntax") from err
    try:
        return DeviceProfile.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(x) for x in e["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {field}: {e['msg']}", hint=f"fields: {', '.join(DeviceProfile.model_fields)}") from err


def all_profiles() -> dict[str, DeviceProfile]:
    profiles = {}
    for f in sorted(devices_dir().glob("*.yaml")):
        p = load_profile(f)
        if p.name != f.stem:
            raise ConfigError(f"{f}: name {p.name!r} differs from the file name", hint=f"name it {f.stem!r}")
        profiles[p.name] = p
    return profiles


def get(name: str) -> DeviceProfile:
    profiles = all_profiles()
    if name not in profiles:
        raise ConfigError(f"unknown device {name!r}", hint=f"known devices: {', '.join(profiles)}")
    return profiles[name]


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_matches(profile: DeviceProfile) -> tuple[bool, str]:
    """(matches, reason): this machine has the device's architecture and CPU flags."""
    machine = platform.machine().lower().replace("arm64", "aarch64").replace("amd64", "x86_64")
    if machine != profile.arch:
        return False, f"this machine is {machine}, the device is {profile.arch}"
    missing = [f for f in profile.cpu_flags if f not in cpu_flags()]
    if missing:
        return False, f"CPU lacks {', '.join(missing)}"
    return True, f"{profile.arch}{' with ' + ', '.join(profile.cpu_flags) if profile.cpu_flags else ''}"


def usable_here(profile: DeviceProfile, check_target: Callable[[str], None] | None = None) -> tuple[bool, str]:
    """(usable, reason): right architecture, CPU flags present, and (given ``check_target``, which
    raises for a target that cannot run here) one of the profile's targets available.

    ``edgekit.deploy.targets.usable_here(profile)`` passes the registry's check."""
    ok, why = machine_matches(profile)
    if not ok or check_target is None:
        return ok, why
    reasons = []
    for name in profile.targets:
        try:
            check_target(name)
            return True, f"runs here with {name}"
        except Exception as err:  # noqa: BLE001 - any failure just means "not usable"
            reasons.append(f"{name}: {err}")
    return False, "; ".join(reasons)
