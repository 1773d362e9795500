"""edgekit.build.quant.state: the resume state is read with weights_only and checked against its sha256."""

from __future__ import annotations

import hashlib
import random

import pytest
import torch

from edgekit.build.quant import make_config
from edgekit.build.quant.state import HASH_FILE, STATE_FILE, load_state, read_state, save_state
from edgekit.build.quant.train import STATE_DIR, TrainOptions, run
from edgekit.deploy import data
from edgekit.errors import ArtifactError

QCFG = make_config("bit-w1a1")


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


class _Payload:
    """Unpickling it calls ``open(marker, "w")``: code run by loading the file."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _record_hash(state_dir) -> None:
    digest = hashlib.sha256((state_dir / STATE_FILE).read_bytes()).hexdigest()
    (state_dir / HASH_FILE).write_text(f"{digest}  {STATE_FILE}\n")


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model, opt, sched = _parts()
    save_state(tmp_path, 7, model, opt, sched, QCFG, 10)
    line = (tmp_path / HASH_FILE).read_text()
    assert line == f"{hashlib.sha256((tmp_path / STATE_FILE).read_bytes()).hexdigest()}  {STATE_FILE}\n"
    other, opt2, sched2 = _parts(seed=1)
    assert load_state(tmp_path, other, opt2, sched2, QCFG) == 7
    assert torch.equal(other.weight, model.weight)
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert sched2.last_epoch == sched.last_epoch
    assert not list(tmp_path.glob("*.tmp"))


def test_rng_state_is_restored(tmp_path):
    model, opt, sched = _parts()
    save_state(tmp_path, 1, model, opt, sched, QCFG, 2)
    after = (torch.rand(3), random.random())
    torch.manual_seed(123)
    random.seed(123)
    load_state(tmp_path, *_parts(seed=2), QCFG)
    assert torch.equal(torch.rand(3), after[0]) and random.random() == after[1]


def test_code_in_a_crafted_state_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "scheme": {}, "model": {}, "optimizer": _Payload(marker), "scheduler": {}, "rng": {}}, tmp_path / STATE_FILE)
    # no sha256 recorded: refused before unpickling
    with pytest.raises(ArtifactError, match="no sha256 recorded") as err:
        read_state(tmp_path)
    assert f"delete {tmp_path} to start over" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # a matching sha256 (whoever wrote the file wrote the sidecar too): weights_only refuses the object
    _record_hash(tmp_path)
    with pytest.raises(ArtifactError, match="objects other than tensors"):
        read_state(tmp_path)
    assert not marker.exists()
    # the payload is live: an unrestricted unpickler runs it
    torch.load(tmp_path / STATE_FILE, weights_only=False)
    assert marker.exists()


def test_state_with_another_hash_is_refused(tmp_path):
    model, opt, sched = _parts()
    save_state(tmp_path, 3, model, opt, sched, QCFG, 5)
    with (tmp_path / STATE_FILE).open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="sha256 differs") as err:
        load_state(tmp_path, *_parts(), QCFG)
    assert "start over" in str(err.value)


def test_training_refuses_a_tampered_state(checkpoints, tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(data.sample_texts()[:32]))
    out = tmp_path / "out"
    opts = dict(model=str(checkpoints["bert-classifier"]), data=str(train), out=str(out), scheme="bit-w1a1", batch_size=16)
    opts.update(max_length=32, progress=False, calib_batches=1)
    run(TrainOptions(**opts, steps=2))
    state_dir = out / STATE_DIR
    state = torch.load(state_dir / STATE_FILE, weights_only=True)
    state["step"] = 1
    torch.save(state, state_dir / STATE_FILE)  # rewritten without its sha256
    with pytest.raises(ArtifactError, match="sha256 differs"):
        run(TrainOptions(**opts, steps=3, resume=True))
    (state_dir / HASH_FILE).unlink()
    with pytest.raises(ArtifactError, match="no sha256 recorded"):
        run(TrainOptions(**opts, steps=3, resume=True))
