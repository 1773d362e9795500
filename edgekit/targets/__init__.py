"""Compilation targets: one file per target, one dict naming them."""

from __future__ import annotations

from edgekit.errors import TargetError
from edgekit.targets.base import Session, Target, TargetOptions
from edgekit.targets.openvino import OpenVinoCpuTarget
from edgekit.targets.openvino_npu import OpenVinoNpuTarget
from edgekit.targets.ort import OrtCpuTarget
from edgekit.targets.ort_mobile import OrtMobileTarget
from edgekit.targets.tensorrt import JetsonTarget

TARGETS: dict[str, type[Target]] = {
    OrtCpuTarget.name: OrtCpuTarget,
    OpenVinoCpuTarget.name: OpenVinoCpuTarget,
    OpenVinoNpuTarget.name: OpenVinoNpuTarget,
    OrtMobileTarget.name: OrtMobileTarget,
    JetsonTarget.name: JetsonTarget,
}


def get(name: str) -> Target:
    """The target called ``name``; an unknown name is an error listing the known ones."""
    try:
        return TARGETS[name]()
    except KeyError:
        raise TargetError(f"unknown target {name!r}", hint=f"known targets: {', '.join(TARGETS)}") from None


__all__ = ["TARGETS", "Session", "Target", "TargetOptions", "get"]
