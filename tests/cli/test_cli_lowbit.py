"""CLI commands of edgekit/cli_lowbit.py: lower and ptq, successes and one-line user errors."""

from __future__ import annotations

import json

from conftest import quantized_checkpoint
from test_cli import assert_user_error, no_partials, run_cli

from edgekit.deploy import data


def test_lower_cli(checkpoints, encoders, tmp_path, monkeypatch, capsys):
    ckpt = quantized_checkpoint(checkpoints, encoders, tmp_path / "q", "distilbert-classifier", "bit-w1a1")
    code, out, err = run_cli(["lower", str(ckpt), "--out", str(tmp_path / "low")], monkeypatch, capsys)
    assert code == 0, err
    assert "lowered bit-w1a1" in out and "16 of 16 quantized matmuls" in " ".join(out.split())
    manifest = json.loads((tmp_path / "low" / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and "packed" in manifest["settings"]
    code, out, err = run_cli(["lower", str(tmp_path / "q"), "--out", str(tmp_path / "plain"), "--no-pack"], monkeypatch, capsys)
    assert code == 0 and not (tmp_path / "plain" / "weights.lowbit").exists()


def test_lower_cli_float_checkpoint(checkpoints, tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(["lower", str(checkpoints["bert-classifier"]), "--out", str(tmp_path / "low")], monkeypatch, capsys)
    assert_user_error(code, err, "not a quantized edgekit checkpoint", "edgekit ptq")
    assert no_partials(tmp_path)


def test_ptq_cli(exported, tmp_path, monkeypatch, capsys):
    texts = tmp_path / "calib.txt"
    texts.write_text("\n".join(data.sample_texts()[:40]) + "\n")
    src = str(exported("distilbert-classifier"))
    code, out, err = run_cli(["ptq", src, "--data", str(texts), "--out", str(tmp_path / "ptq"), "--samples", "24"], monkeypatch, capsys)
    assert code == 0, err
    assert "quantized (onnxruntime.quantization.quantize_static, 24 texts)" in " ".join(out.split())
    code, out, err = run_cli(["ptq", src, "--data", str(texts), "--method", "bogus"], monkeypatch, capsys)
    assert_user_error(code, err, "unknown PTQ method")
    code, out, err = run_cli(["ptq", src, "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "x")], monkeypatch, capsys)
    assert_user_error(code, err, "no such data file")
    assert no_partials(tmp_path)


def _quantize_attention_bits(checkpoints, tmp_path, bits: str) -> tuple[list[str], object]:
    from conftest import quantize_args

    train = tmp_path / "train.txt"
    train.write_text("\n".join(data.sample_texts()[:16]) + "\n")
    out = tmp_path / "q"
    return quantize_args(checkpoints["bert-embedding"], train, out, tmp_path / "cache", "ternary-w2a8", "--attention-bits", bits), out


def test_quantize_attention_bits_set_the_attention_core_of_the_saved_scheme(checkpoints, tmp_path, monkeypatch, capsys):
    args, out = _quantize_attention_bits(checkpoints, tmp_path, "32")
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    config = json.loads((out / "edgekit_quant.json").read_text())["config"]
    assert config["attention_bits"] == 32 and config["activation_bits"] == 8 and config["weight_bits"] == 2


def test_quantize_attention_bits_not_offered_is_one_line(checkpoints, tmp_path, monkeypatch, capsys):
    args, out = _quantize_attention_bits(checkpoints, tmp_path, "3")
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_user_error(code, err, "attention_bits", "1, 4, 8 or 32")
    assert no_partials(tmp_path) and not out.exists()
