"""``edgekit quantize --budget-mb / --mean-bits``: mixed precision by sensitivity on the dev set;
every bad budget as one line, exit code 2, nothing written at OUT or in the step cache."""

from __future__ import annotations

import inspect
import json

import pytest
from conftest import quantize_args
from test_cli import assert_user_error, no_partials, run_cli

from edgekit.deploy import data

LABELS = ("negative", "neutral", "positive")


@pytest.fixture
def files(tmp_path):
    texts = data.sample_texts()
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": LABELS[i % 3]}) + "\n" for i, t in enumerate(texts[:16])))
    dev.write_text("".join(json.dumps({"text": t, "label": LABELS[i % 3]}) + "\n" for i, t in enumerate(texts[16:40])))
    return train, dev


def _args(model, data, out, cache, *extra):
    return quantize_args(model, data, out, cache, "ternary-w2e2a8", *extra)


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (("--budget-mb", "0.12"), ("--budget-mb needs a dev set", "--eval")),
        (("--mean-bits", "3", "--budget-mb", "0.2", "--eval", "DEV"), ("give one bit budget", "not both")),
        (("--budget-mb", "0.01", "--eval", "DEV"), ("--budget-mb 0.01 is below the smallest size ternary-w2e2a8 can reach", " MB")),
        (("--budget-mb", "5", "--eval", "DEV"), ("at or above the FP32 size", "no quantization budget is needed")),
        (("--mean-bits", "9", "--eval", "DEV"), ("mean_bits",)),
    ],
)
def test_bad_budgets_are_one_line_errors(checkpoints, files, tmp_path, monkeypatch, capsys, extra, fragments):
    train, dev = files
    extra = tuple(str(dev) if e == "DEV" else e for e in extra)
    out, cache = tmp_path / "q", tmp_path / "cache"
    code, _, err = run_cli(_args(checkpoints["bert-classifier"], train, out, cache, *extra), monkeypatch, capsys)
    assert_user_error(code, err, *fragments)
    assert not out.exists() and not cache.exists() and no_partials(tmp_path)


def _wired() -> bool:
    from edgekit.build.quant import train

    return "plan_mixed" in inspect.getsource(train)


@pytest.mark.skipif(not _wired(), reason="edgekit.build.quant.train.run does not call sensitivity.plan_mixed yet")
def test_quantize_with_a_budget_writes_the_plan_and_lowers(checkpoints, files, tmp_path, monkeypatch, capsys):
    from edgekit.build.load import load
    from edgekit.build.quant import make_config
    from edgekit.build.quant.sensitivity import MB, model_bytes

    train, dev = files
    uniform = model_bytes(load(checkpoints["bert-classifier"]).module, make_config("ternary-w2e2a8"), {}) / MB
    out = tmp_path / "q"
    args = _args(checkpoints["bert-classifier"], train, out, tmp_path / "cache", "--eval", str(dev), "--budget-mb", f"{uniform:.6f}")
    code, stdout, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "mixed plan for ternary-w2e2a8" in stdout
    mixed = json.loads((out / "quant_report.json").read_text())["mixed"]
    saved = json.loads((out / "edgekit_quant.json").read_text())["config"]["part_bits"]
    assert saved == mixed["part_bits"] and mixed["size_mb"] <= uniform + 1e-6 and len(mixed["sensitivity"]["rows"]) == 13
    code, stdout, err = run_cli(["lower", str(out), "--out", str(tmp_path / "low")], monkeypatch, capsys)
    assert code == 0, err
    assert "mixed precision:" in stdout or not mixed["part_bits"]
    lowered = json.loads((tmp_path / "low" / "manifest.json").read_text())["settings"]["lowered"]
    assert lowered["config"]["part_bits"] == saved and lowered["onnxruntime_int8"]["all_int8"]
