"""Step ``quant``: binary and ternary encoders (BiBERT, BiT, TernaryBERT, BitNet b1.58),
trained with distillation from the full-precision model.

    from edgekit.build.quant import quantize_, make_config
    quantize_(encoder.module, make_config("bit-w1a1"))

See :mod:`edgekit.build.quant.api` (module swaps), :mod:`~edgekit.build.quant.quantizers`,
:mod:`~edgekit.build.quant.distill`, :mod:`~edgekit.build.quant.train` and :mod:`~edgekit.build.quant.saving`.
"""

from edgekit.build.quant.api import calibrate, float_state, quant_config_of, quant_state, quantize_
from edgekit.build.quant.config import ALIASES, SCHEMES, QuantConfig, make_config
from edgekit.build.quant.modules import QuantEmbedding, QuantLinear, QuantSelfAttention

__all__ = [
    "ALIASES",
    "SCHEMES",
    "QuantConfig",
    "QuantEmbedding",
    "QuantLinear",
    "QuantSelfAttention",
    "calibrate",
    "float_state",
    "make_config",
    "quant_config_of",
    "quant_state",
    "quantize_",
]
