"""Compilation targets: one file per target, one dict naming them."""

from __future__ import annotations

from edgekit.deploy.targets.base import Session, Target, TargetOptions
from edgekit.deploy.targets.openvino import OpenVinoCpuTarget
from edgekit.deploy.targets.openvino_npu import OpenVinoNpuTarget
from edgekit.deploy.targets.ort import OrtCpuTarget
from edgekit.deploy.targets.ort_mobile import OrtMobileTarget
from edgekit.deploy.targets.tensorrt import JetsonTarget
from edgekit.errors import TargetError

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
