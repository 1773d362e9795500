"""Step ``quant``: binary and ternary encoders (BiBERT, BiT, TernaryBERT, BitNet b1.58),
trained with distillation from the full-precision model.

    from edgekit.quant import quantize_, make_config
    quantize_(encoder.module, make_config("bit-w1a1"))

See :mod:`edgekit.quant.api` (module swaps), :mod:`~edgekit.quant.quantizers`,
:mod:`~edgekit.quant.distill`, :mod:`~edgekit.quant.train` and :mod:`~edgekit.quant.saving`.
"""

from edgekit.quant.api import calibrate, float_state, quant_config_of, quant_state, quantize_
from edgekit.quant.config import ALIASES, SCHEMES, QuantConfig, make_config
from edgekit.quant.modules import QuantEmbedding, QuantLinear, QuantSelfAttention

__all__ = [
    "ALIASES", "SCHEMES", "QuantConfig", "QuantEmbedding", "QuantLinear", "QuantSelfAttention",
    "calibrate", "float_state", "make_config", "quant_config_of", "quant_state", "quantize_",
]
