"""Compilation targets: one file per target, one dict naming them.

Adding a target is one class implementing :class:`Target` plus one entry in :data:`TARGETS`.
:func:`resolve_options` is the one place where a target's options meet a device profile.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from edgekit.deploy import devices
from edgekit.deploy.devices import DeviceProfile
from edgekit.deploy.targets.base import Session, Target, TargetOptions, tune_candidates
from edgekit.deploy.targets.openvino import OpenVinoCpuTarget
from edgekit.deploy.targets.openvino_npu import OpenVinoNpuTarget
from edgekit.deploy.targets.ort import OrtCpuTarget
from edgekit.deploy.targets.ort_mobile import OrtMobileTarget
from edgekit.deploy.targets.tensorrt import JetsonTarget
from edgekit.errors import ConfigError, TargetError

TARGETS: dict[str, type[Target]] = {
    OrtCpuTarget.name: OrtCpuTarget,
    OpenVinoCpuTarget.name: OpenVinoCpuTarget,
    OpenVinoNpuTarget.name: OpenVinoNpuTarget,
    OrtMobileTarget.name: OrtMobileTarget,
    JetsonTarget.name: JetsonTarget,
}


def target_class(name: str) -> type[Target]:
    """The class of target ``name``; an unknown name is an error listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise TargetError(f"unknown target {name!r}", hint=f"known targets: {', '.join(TARGETS)}") from None


def get(name: str) -> Target:
    """The target called ``name``; an unknown name is an error listing the known ones."""
    return target_class(name)()


def check_profile(profile: DeviceProfile) -> DeviceProfile:
    """``profile``, if every target it lists is registered; else a one-line ConfigError."""
    unknown = [t for t in profile.targets if t not in TARGETS]
    if unknown:
        raise ConfigError(f"device {profile.name}: unknown target {unknown[0]!r}", hint=f"known targets: {', '.join(TARGETS)}")
    return profile


def static_targets() -> list[str]:
    """Targets whose compiled models have fixed shapes (a dynamic export needs seq_lens for them)."""
    return [name for name, cls in TARGETS.items() if cls.static_shapes]


def resolve_options(name: str, options: dict[str, Any] | None = None, device: DeviceProfile | str | None = None) -> TargetOptions:
    """Target ``name``'s options, validated once by its own options model, with ``device``'s filled in.

    ``device`` (a profile, or its name; else the ``device`` option of targets that take one)
    must list the target; the profile's settings (``Target.device_options``) apply where the
    options do not set them; a precision asked for must be one the device runs.
    Every mistake is one ConfigError naming the target and the field, with the valid choices.
    """
    cls = target_class(name)
    model = cls.options_model
    opts = dict(options or {})
    if device is None and "device" in model.model_fields and isinstance(opts.get("device"), str):
        device = opts["device"]
    profile = devices.get(device) if isinstance(device, str) else device
    if profile is not None:
        check_profile(profile)
        if name not in profile.targets:
            raise ConfigError(f"device {profile.name} does not run target {name!r}", hint=f"its targets: {', '.join(profile.targets)}")
        for key, value in cls.device_options(profile).items():
            opts.setdefault(key, value)
    try:
        resolved = model.model_validate(opts)
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(x) for x in e["loc"])
        where = f"option {field}" if field else "options"
        # the message names a field's valid values ("Input should be 'a' or 'b'"); the hint, the valid options
        raise ConfigError(
            f"target {name}: {where}: {e['msg'].removeprefix('Value error, ')}", hint=f"valid options: {', '.join(model.model_fields)}"
        ) from err
    if profile is not None:
        precision = resolved.build_precision
        if "precision" in resolved.model_fields_set and precision not in profile.precisions:
            raise ConfigError(
                f"target {name}: option precision: device {profile.name} does not run {precision!r}",
                hint=f"its precisions: {', '.join(profile.precisions)}",
            )
    return resolved


def compile_plan(profile: DeviceProfile, targets: list[str] | None, options: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """What ``edgekit compile --device NAME`` builds: the targets (the profile's first one when
    none is named) and each one's options with the profile's filled in, every one resolved by
    :func:`resolve_options` (so every mistake is raised here, before anything is exported)."""
    chosen = list(targets) if targets else [check_profile(profile).targets[0]]
    plans = {}
    for name in chosen:
        resolved = resolve_options(name, options, profile)
        plans[name] = resolved.model_dump(include=resolved.model_fields_set | set(options))
    return chosen, plans


def usable_here(profile: DeviceProfile) -> tuple[bool, str]:
    """(usable, reason): right architecture and CPU flags, and one of the profile's targets available here."""
    return devices.usable_here(profile, lambda name: get(name).check_available())


__all__ = [
    "TARGETS",
    "Session",
    "Target",
    "TargetOptions",
    "check_profile",
    "compile_plan",
    "get",
    "resolve_options",
    "static_targets",
    "target_class",
    "tune_candidates",
    "usable_here",
]
