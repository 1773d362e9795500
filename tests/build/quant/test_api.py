"""edgekit.build.quant.api: quantize_ swaps the right modules and leaves the head in float."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgekit.build.quant import QuantEmbedding, QuantLinear, QuantSelfAttention, calibrate, make_config, quant_state, quantize_
from edgekit.errors import ConfigError


def _count(module, cls):
    return sum(isinstance(m, cls) for m in module.modules())


@pytest.mark.parametrize("name", ["bert-classifier", "roberta-classifier", "distilbert-classifier", "bert-embedding"])
def test_swaps_encoder_linears_attention_embeddings(encoders, name):
    enc = encoders(name)
    module = copy.deepcopy(enc.module)
    quantize_(module, "bit-w1e1a1")
    layers = 2
    assert _count(module, QuantLinear) == 6 * layers  # q, k, v, attention out, FFN in, FFN out
    assert _count(module, QuantSelfAttention) == layers
    assert _count(module, QuantEmbedding) >= 2
    for fqn, mod in module.named_modules():
        if isinstance(mod, nn.LayerNorm):
            assert type(mod) is nn.LayerNorm
        if any(h in fqn for h in ("classifier", "pooler", "pre_classifier")):
            assert not isinstance(mod, (QuantLinear, QuantEmbedding)), fqn
    # the float linears left are the head's only
    left = [fqn for fqn, m in module.named_modules() if type(m) is nn.Linear]
    assert all(any(h in fqn for h in ("classifier", "pooler")) for fqn in left), left


def test_ternary_keeps_float_attention_and_embeddings(encoders):
    module = copy.deepcopy(encoders("bert-classifier").module)
    quantize_(module, make_config("ternary-w2a8", attention_bits=32))
    assert _count(module, QuantLinear) == 12 and _count(module, QuantSelfAttention) == 0 and _count(module, QuantEmbedding) == 0


def test_filter_fn_narrows(encoders):
    module = copy.deepcopy(encoders("bert-classifier").module)
    quantize_(module, make_config("ternary-w2a8", attention_bits=32), filter_fn=lambda m, fqn: "intermediate" in fqn)
    assert _count(module, QuantLinear) == 2


def test_twice_is_an_error(encoders):
    module = copy.deepcopy(encoders("bert-classifier").module)
    quantize_(module, "bit-w1a1")
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_(module, "bit-w1a1")


def test_forward_values_and_gradients(encoders, texts):
    enc = encoders("bert-classifier")
    module = copy.deepcopy(enc.module)
    quantize_(module, "bit-w1a1")
    feed = enc.tokenize(texts[:3])
    inputs = tuple(torch.from_numpy(feed[n]) for n in enc.spec.input_names)
    calibrate(module, [inputs])
    assert all(float(v.flatten()[0]) == 1 for k, v in quant_state(module).items() if k.endswith("initialized"))
    module.train()
    out = module(*inputs)
    out.sum().backward()
    q = module.model.bert.encoder.layer[0].attention.self.query
    assert q.weight.grad is not None and q.weight.grad.abs().sum() > 0
    assert q.input_quant.alpha.grad is not None
    # the weight the layer uses is {-a,+a} per row
    w = q.quantized_weight().detach()
    for row in w:
        assert len(row.abs().unique()) == 1
