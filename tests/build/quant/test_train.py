"""edgekit.build.quant.train: short runs on the tiny checkpoints: loss goes down, resume, NaN, errors, DDP."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from edgekit.build.quant import distill
from edgekit.build.quant.report import QuantReport
from edgekit.build.quant.train import STATE_DIR, TrainOptions, run
from edgekit.deploy import data
from edgekit.errors import ConfigError, DataError, TrainingError


@pytest.fixture(scope="module")
def train_txt(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "train.txt"
    p.write_text("\n".join(data.sample_texts()[:64]))
    return p


def _opts(model, train_txt, out, **kw) -> TrainOptions:
    base = dict(model=str(model), data=str(train_txt), out=str(out), batch_size=16, max_length=32, progress=False, calib_batches=1)
    return TrainOptions(**{**base, **kw})


def test_loss_decreases(checkpoints, train_txt, tmp_path):
    # one fixed batch, many steps: the distillation loss must go down
    one = tmp_path / "one.txt"
    one.write_text("\n".join(data.sample_texts()[:16]))
    report = run(_opts(checkpoints["bert-classifier"], one, tmp_path / "out", scheme="ternary-w2a8", steps=25, lr=3e-3, warmup=0.01))
    stage = report.stages[0]
    assert stage.loss_last < stage.loss_first
    assert (tmp_path / "out" / "edgekit_quant.json").exists()
    saved = json.loads((tmp_path / "out" / "quant_report.json").read_text())
    assert saved["stages"][0]["model"]["savings"]["flops_saving"] > 1
    assert "eval" not in saved["stages"][0] and "teacher_eval" not in saved  # not measured: left out, not null
    w = saved["stages"][0]["model"]["weights"][0]
    assert abs(w["frac_neg"] + w["frac_zero"] + w["frac_pos"] - 1) < 1e-6 and w["frac_zero"] > 0
    assert QuantReport.read(tmp_path / "out" / "quant_report.json") == report


def test_resume_continues_from_saved_step(checkpoints, train_txt, tmp_path):
    out = tmp_path / "out"
    run(_opts(checkpoints["bert-classifier"], train_txt, out, scheme="bit-w1a1", steps=4, save_every=2))
    state = torch.load(out / STATE_DIR / "state.pt", weights_only=True)
    assert state["step"] == 4
    report = run(_opts(checkpoints["bert-classifier"], train_txt, out, scheme="bit-w1a1", steps=6, resume=True))
    assert report.stages[0].start_step == 4
    assert torch.load(out / STATE_DIR / "state.pt", weights_only=True)["step"] == 6
    with pytest.raises(ConfigError, match="scheme"):
        run(_opts(checkpoints["bert-classifier"], train_txt, out, scheme="ternary-w2a8", steps=8, resume=True))


def test_nan_stops_and_keeps_last_checkpoint(checkpoints, train_txt, tmp_path, monkeypatch):
    real = distill.distill_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), parts) if calls["n"] > 3 else (loss, parts)

    monkeypatch.setattr(distill, "distill_loss", flaky)
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match=r"loss is nan at step 4.*step 2"):
        run(_opts(checkpoints["bert-classifier"], train_txt, out, scheme="bit-w1a1", steps=10, save_every=2))
    state = torch.load(out / STATE_DIR / "state.pt", weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert json.loads((out / "edgekit_quant.json").read_text())["step"] == 2


def test_multi_step_embedding_model(checkpoints, train_txt, tmp_path):
    report = run(
        _opts(
            checkpoints["bert-embedding"],
            train_txt,
            tmp_path / "out",
            scheme="bit-w1a1",
            steps=2,
            multi_step=True,
            intermediate="bit-w1a8",
            eval_data=str(train_txt),
        )
    )
    assert [s.scheme for s in report.stages] == ["bit-w1a8", "bit-w1a1"]
    assert report.stages[1].teacher == "bit-w1a8"
    assert report.stages[1].eval.cosine_to_teacher is not None and report.stages[1].eval.accuracy is None
    assert report.teacher_eval.texts == 64 and report.teacher_eval.accuracy is None  # unlabeled: no accuracy
    assert (tmp_path / "out" / "step1-bit-w1a8" / "edgekit_quant.json").exists()


def test_bad_inputs(checkpoints, train_txt, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no records"):
        run(_opts(checkpoints["bert-classifier"], empty, tmp_path / "o1", steps=1))
    binary = tmp_path / "bad.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="UTF-8"):
        run(_opts(checkpoints["bert-classifier"], binary, tmp_path / "o2", steps=1))
    with pytest.raises(ConfigError, match="tokenize differently"):
        run(_opts(checkpoints["bert-classifier"], train_txt, tmp_path / "o3", steps=1, teacher=str(checkpoints["roberta-classifier"])))
    with pytest.raises(ConfigError, match="unknown quantization scheme"):
        run(_opts(checkpoints["bert-classifier"], train_txt, tmp_path / "o4", steps=1, scheme="nope"))


def test_missing_data_is_one_line_error(checkpoints, tmp_path):
    with pytest.raises(DataError, match="no such data file") as err:
        run(_opts(checkpoints["bert-classifier"], tmp_path / "missing.txt", tmp_path / "o", steps=1))
    assert "\n" not in str(err.value)


def test_ce_needs_labels(checkpoints, train_txt, tmp_path):
    with pytest.raises(DataError, match="needs labeled records"):
        run(_opts(checkpoints["bert-classifier"], train_txt, tmp_path / "o", steps=1, ce=0.5))


def test_options_errors_are_one_line():
    base = dict(model="m", data="d", out="o")
    with pytest.raises(ConfigError, match=r"train\.steps: must be a positive integer \(got 0\)"):
        TrainOptions(**base, steps=0)
    with pytest.raises(ConfigError, match="unknown quantization scheme 'w3a3'"):
        TrainOptions(**base, scheme="w3a3")
    with pytest.raises(ConfigError, match=r"train\.batch_size: .*integer"):
        TrainOptions.build(**base, batch_size="many")
    assert TrainOptions(**base, scheme="W2A8").scheme == "ternary-w2a8"  # aliases resolve to the scheme's full name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_world_size_one_gloo(checkpoints, train_txt, tmp_path, monkeypatch):
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)
    report = run(_opts(checkpoints["distilbert-classifier"], train_txt, tmp_path / "out", scheme="bibert-w1a1", steps=3, device="cpu"))
    assert report.world_size == 1 and report.stages[0].steps == 3
    assert not torch.distributed.is_initialized()


def test_deterministic_runs_of_one_seed_give_the_same_weights(checkpoints, train_txt, tmp_path):
    from safetensors.torch import load_file

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    weights = []
    for n in (1, 2):
        out = tmp_path / f"run{n}"
        report = run(_opts(checkpoints["bert-classifier"], train_txt, out, scheme="ternary-w2a8", steps=6, deterministic=True))
        assert report.deterministic and report.seed == 0
        weights.append(load_file(next(out.glob("*.safetensors"))))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # a different seed trains other weights (the comparison above can fail)
    other = tmp_path / "seed1"
    run(_opts(checkpoints["bert-classifier"], train_txt, other, scheme="ternary-w2a8", steps=6, deterministic=True, seed=1))
    third = load_file(next(other.glob("*.safetensors")))
    assert any(not torch.equal(weights[0][k], third[k]) for k in third)
    # the process's settings come back after the run
    assert (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()) == before
