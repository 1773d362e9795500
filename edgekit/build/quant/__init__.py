"""Step ``quant``: binary and ternary encoders (BiBERT, BiT, TernaryBERT, BitNet b1.58),
trained with distillation from the full-precision model.

    from edgekit.build.quant import quantize_, make_config
    quantize_(encoder.module, make_config("bit-w1a1"))

See :mod:`edgekit.build.quant.api` (module swaps), :mod:`~edgekit.build.quant.quantizers`,
:mod:`~edgekit.build.quant.distill`, :mod:`~edgekit.build.quant.train` and :mod:`~edgekit.build.quant.saving`.

Importing this package, :mod:`~edgekit.build.quant.config`, :mod:`~edgekit.build.quant.options`
or :mod:`~edgekit.build.quant.report` does not import torch: the torch-side names below are
resolved on first use (PEP 562).
"""

from __future__ import annotations

import importlib

from edgekit.build.quant.config import ALIASES, DISTILL_DEFAULTS, SCHEMES, DistillConfig, QuantConfig, make_config

# name -> module holding it, imported on first access (these modules import torch)
_LAZY = {
    "calibrate": "api",
    "float_state": "api",
    "quant_config_of": "api",
    "quant_state": "api",
    "quantize_": "api",
    "QuantEmbedding": "modules",
    "QuantLinear": "modules",
    "QuantSelfAttention": "modules",
}

__all__ = ["ALIASES", "DISTILL_DEFAULTS", "SCHEMES", "DistillConfig", "QuantConfig", "make_config", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
