"""edgekit.build.quant.saving + the load hook: save -> edgekit.build.load.load -> ONNX export, parity with fake-quant torch."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from edgekit.build.export import export
from edgekit.build.load import load
from edgekit.build.quant import QuantLinear, calibrate, quantize_
from edgekit.build.quant.saving import QUANT_FILE, save_quantized
from edgekit.errors import CheckpointError


@pytest.mark.parametrize(
    "name,scheme",
    [
        ("bert-classifier", "bit-w1a1"),
        ("roberta-embedding", "ternary-w2a8"),
        ("distilbert-classifier", "bibert-w1e1a1"),
        ("bert-embedding", "bitnet-median-w2a8"),
    ],
)
def test_save_load_export_parity(checkpoints, encoders, texts, tmp_path, name, scheme):
    enc = encoders(name)
    module = copy.deepcopy(enc.module)
    quantize_(module, scheme)
    feed = enc.tokenize(texts[:4])
    calibrate(module, [tuple(torch.from_numpy(feed[n]) for n in enc.spec.input_names)])
    module.eval()
    with torch.no_grad():
        ref = module(*(torch.from_numpy(feed[n]) for n in enc.spec.input_names)).numpy()
    out = save_quantized(module, enc.tokenizer, tmp_path / "q", source=checkpoints[name])
    doc = json.loads((out / QUANT_FILE).read_text())
    assert doc["scheme"] == scheme and doc["state"]

    loaded = load(out)
    assert any(isinstance(m, QuantLinear) for m in loaded.module.modules())
    np.testing.assert_allclose(loaded.run(feed), ref, atol=1e-6)

    manifest = export(loaded, tmp_path / "onnx")  # raises ParityError if ORT differs from the fake-quant torch model
    assert manifest.parity.passed and manifest.parity.max_abs_diff < 1e-3
    ops = {n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert {"Clip", "Where"} <= ops


def test_fp16_checkpoint_and_bad_state(checkpoints, encoders, tmp_path):
    enc = encoders("bert-classifier")
    module = copy.deepcopy(enc.module)
    quantize_(module, "ternary-w2a8")
    out = save_quantized(module, enc.tokenizer, tmp_path / "q", dtype=torch.float16)
    assert load(out).module(*(torch.ones(1, 4, dtype=torch.long),) * 3).dtype == torch.float32
    doc = json.loads((out / QUANT_FILE).read_text())
    doc["state"].pop(next(iter(doc["state"])))
    (out / QUANT_FILE).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="does not match"):
        load(out)
    (out / QUANT_FILE).write_text("{")
    with pytest.raises(CheckpointError, match="unreadable"):
        load(out)
