"""edgekit.build.quant.sensitivity (+ the mixed-precision plan in config/modules/saving, lowered by
edgekit.build.lower): per-part sensitivity, the greedy plan under a budget, and a mixed checkpoint
saved, reloaded and lowered to INT8 with parity."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from edgekit.build.load import load
from edgekit.build.lower import lower
from edgekit.build.quant import calibrate, make_config, quant_config_of, quantize_
from edgekit.build.quant import sensitivity as sens
from edgekit.build.quant.layout import get, layout_of, parts
from edgekit.build.quant.modules import apply_parts
from edgekit.build.quant.quantizers import BinaryWeight, Int8Weight, TernaryWeight
from edgekit.build.quant.saving import QUANT_FILE, save_quantized
from edgekit.deploy import artifact, int8check, packing
from edgekit.deploy import data as datafiles
from edgekit.errors import CheckpointError, ConfigError

DESTROYED = "encoder.layer.1.output.dense"  # layer 1 ffn-out of the tiny BERT


def dev_texts() -> list[str]:
    return datafiles.sample_texts()[:24]


@pytest.fixture(scope="module")
def fragile(checkpoints, tmp_path_factory):
    """The tiny BERT classifier with one part whose low-bit quantization destroys it: large weights with
    one outlier per row (a mean-based scale then zeroes, or flattens, everything else), and a louder head."""
    enc = load(checkpoints["bert-classifier"])
    base, _ = layout_of(enc.module)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = get(base, DESTROYED).weight
        w.copy_(torch.randn(w.shape, generator=gen))
        w[:, 0] = 400.0
        enc.module.model.classifier.weight.mul_(50.0)
    return enc


@pytest.fixture(scope="module")
def table(fragile):
    return sens.measure(fragile, make_config("ternary-w2e2a8"), dev_texts(), progress=False)


def test_destroyed_part_ranks_first_and_weights_are_restored(fragile, table):
    before = {k: v.clone() for k, v in fragile.module.state_dict().items()}
    assert [r.part for r in table.rows][0] == DESTROYED
    top, second = table.rows[0], table.rows[1]
    assert top.loss(2) > 3 * second.loss(2) and top.loss(1) > 3 * second.loss(1)
    assert top.loss(8) < top.loss(2) / 10  # 8 bits keep the outliers and the rest
    scores = {s.bits: s for s in top.scores}
    assert table.metric == "kl" and scores[8].agreement == 1.0 and all(0 <= s.agreement <= 1 and s.kl == s.loss for s in top.scores)
    expected = {p.name for p in parts(fragile.module)}  # 12 linears + the word embeddings (E2 scheme)
    assert {r.part for r in table.rows} == expected and len(expected) == 13
    sens.measure(fragile, make_config("ternary-w2e2a8"), dev_texts()[:4], progress=False, bits=(1,))
    after = fragile.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # measuring puts every weight back exactly


def test_greedy_plan_fits_budget_and_promotes_the_sensitive_part(fragile, table):
    cfg = make_config("ternary-w2e2a8")
    uniform = sens.model_bytes(fragile.module, cfg, {})
    plan = sens.choose(fragile.module, cfg, table, budget_mb=uniform / sens.MB)
    assert plan.size_mb * sens.MB <= uniform and plan.part_bits[DESTROYED] == 8  # paid for by 1-bit parts
    assert plan.predicted_loss < plan.uniform_loss and plan.bits_count.get("1", 0) > 0
    assert abs(sens.model_bytes(fragile.module, cfg, plan.part_bits) - plan.size_mb * sens.MB) <= 50  # size_mb: 4 decimals
    roomy = sens.choose(fragile.module, cfg, table, budget_mb=2 * uniform / sens.MB)
    assert roomy.size_mb <= 2 * uniform / sens.MB and roomy.part_bits[DESTROYED] == 8
    by_mean = sens.choose(fragile.module, cfg, table, mean_bits=2.0)
    assert by_mean.planned_mean_bits <= 2.0 and by_mean.part_bits[DESTROYED] == 8
    assert "layer 1 ffn-out" in sens.format_table(table, plan).splitlines()[2]


def test_budget_errors(fragile, table):
    cfg = make_config("ternary-w2e2a8")
    smallest = sens.model_bytes(fragile.module, cfg, {p.name: 1 for p in parts(fragile.module)})
    with pytest.raises(ConfigError, match=rf"below the smallest size ternary-w2e2a8 can reach: {smallest / 1e6:.2f} MB"):
        sens.choose(fragile.module, cfg, table, budget_mb=smallest / sens.MB * 0.9)
    with pytest.raises(ConfigError, match="at or above the FP32 size.*no quantization budget is needed"):
        sens.choose(fragile.module, cfg, table, budget_mb=sens.fp32_bytes(fragile.module) / sens.MB)
    with pytest.raises(ConfigError, match="between 1"):
        sens.choose(fragile.module, cfg, table, mean_bits=0.5)
    with pytest.raises(ConfigError, match="not both"):
        sens.check_budget(fragile.module, cfg, budget_mb=1.0, mean_bits=2.0)
    with pytest.raises(ConfigError, match="part_bits.*must be 1, 2 or 8"):
        cfg.with_parts({DESTROYED: 4})


def _mixed_module(enc, cfg):
    module = copy.deepcopy(enc.module)
    quantize_(module, cfg)
    apply_parts(module, cfg)
    feed = enc.tokenize(dev_texts()[:16])
    calibrate(module, [tuple(torch.from_numpy(feed[n]) for n in enc.spec.input_names)])
    return module.eval(), feed


PLAN = {
    "embeddings.word_embeddings": 8,
    "encoder.layer.0.attention.self.query": 8,
    "encoder.layer.0.intermediate.dense": 1,
    "encoder.layer.1.output.dense": 8,
}


@pytest.fixture(scope="module")
def mixed_checkpoint(checkpoints, encoders, tmp_path_factory):
    enc = encoders("bert-classifier")
    cfg = make_config("ternary-w2e2a8").with_parts(PLAN)
    module, feed = _mixed_module(enc, cfg)
    with torch.no_grad():
        ref = module(*(torch.from_numpy(feed[n]) for n in enc.spec.input_names)).numpy()
    out = save_quantized(module, enc.tokenizer, tmp_path_factory.mktemp("mixed") / "q", source=checkpoints["bert-classifier"])
    return out, cfg, ref, feed


def test_saved_plan_reloads_identically(encoders, mixed_checkpoint):
    out, cfg, ref, feed = mixed_checkpoint
    doc = json.loads((out / QUANT_FILE).read_text())
    assert doc["config"]["part_bits"] == PLAN
    enc = load(out)
    assert quant_config_of(enc.module.model) == cfg and quant_config_of(enc.module.model).name == "w2e2a8-mixed"
    base, _ = layout_of(enc.module)
    kinds = {name: type(get(base, name).weight_quant) for name in (*PLAN, "encoder.layer.1.attention.self.key")}
    assert kinds == {
        "embeddings.word_embeddings": Int8Weight,
        "encoder.layer.0.attention.self.query": Int8Weight,
        "encoder.layer.0.intermediate.dense": BinaryWeight,
        "encoder.layer.1.output.dense": Int8Weight,
        "encoder.layer.1.attention.self.key": TernaryWeight,
    }
    with torch.no_grad():
        again = enc.module.eval()(*(torch.from_numpy(feed[n]) for n in enc.spec.input_names)).numpy()
    np.testing.assert_array_equal(again, ref)


def test_mixed_checkpoint_lowers_with_int8_parts_and_parity(mixed_checkpoint, tmp_path):
    out, cfg, _, _ = mixed_checkpoint
    manifest = lower(out, tmp_path / "low")
    low = manifest.settings["lowered"]
    assert manifest.parity.passed and manifest.parity.max_abs_diff < 1e-4
    assert low["mixed"] and low["modules"]["weight_bits"] == {"1": 1, "2": 11, "8": 3}  # 12 linears + 3 tables
    assert low["onnxruntime_int8"]["all_int8"] and low["onnxruntime_int8"]["integer_total"] == low["quantized_matmuls"]
    packed = manifest.settings["packed"]
    # the 8-bit linears (32x32, 32x64) and the 8-bit word table stay int8 in the .onnx; the rest is packed
    assert packed["kept_int8"]["tensors"] == 3 and {t["bits"] for t in packed["tensors"].values()} <= {1, 2}
    m = artifact.read_manifest(tmp_path / "low")
    full = packing.model_bytes(tmp_path / "low", m.model_file, m.settings["packed"])
    assert int8check.ort_report(full)["all_int8"]
    estimate = sens.model_bytes(load(out).module, cfg)
    assert abs(estimate - manifest.settings["size"]["model_bytes"]) < 0.05 * manifest.settings["size"]["model_bytes"]


def test_plan_must_be_applied_before_saving(encoders, tmp_path):
    enc = encoders("bert-classifier")
    cfg = make_config("ternary-w2e2a8").with_parts({"encoder.layer.0.attention.self.query": 8})
    module = copy.deepcopy(enc.module)
    quantize_(module, cfg)
    if not any(isinstance(get(layout_of(module)[0], n).weight_quant, Int8Weight) for n in cfg.part_bits):
        with pytest.raises(CheckpointError, match="do not follow its mixed-precision plan"):
            save_quantized(module, enc.tokenizer, tmp_path / "q")
    with pytest.raises(ConfigError, match="is not a quantized linear"):
        apply_parts(module, make_config("ternary-w2e2a8").with_parts({"encoder.layer.0.nope": 8}))
