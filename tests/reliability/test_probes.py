"""Bad inputs and faults, one test each: every user error is one line (an EdgekitError with a
hint), nothing is left half-written, nothing runs that the input smuggled in."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from edgekit.deploy import artifact, parity
from edgekit.deploy.artifact import MANIFEST, MANIFEST_SHA256
from edgekit.deploy.profile import ProfileOptions, profile, write_reports
from edgekit.deploy.remote import Remote, remote_profile
from edgekit.deploy.runtime import Predictor
from edgekit.errors import ArtifactError, CheckpointError, ConfigError, ParityError, TargetError

OPTS = ProfileOptions(warmup=0, min_runs=3, max_runs=3, seconds_per_point=0.01, seq_len=8, batches=[1], cold_runs=0)


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text.strip(), text
    return text


def _reseal(art: Path) -> None:
    """A manifest.sha256 matching the edited manifest: what the checks behind the hash must catch."""
    digest = hashlib.sha256((art / MANIFEST).read_bytes()).hexdigest()
    (art / MANIFEST_SHA256).write_text(f"{digest}  {MANIFEST}\n")


def _edit_manifest(art: Path, change) -> None:
    raw = json.loads((art / MANIFEST).read_text())
    change(raw)
    (art / MANIFEST).write_text(json.dumps(raw, indent=2))


@pytest.fixture
def onnx_copy(bert_onnx, tmp_path) -> Path:
    return Path(shutil.copytree(bert_onnx, tmp_path / "art"))


# ---- 2: ssh host read as an option -----------------------------------------------------------


def test_probe_ssh_host_that_is_an_option_runs_nothing(bert_onnx, tmp_path):
    marker = tmp_path / "proxycommand-ran"
    host = f"-oProxyCommand=touch${{IFS}}{marker}"  # no whitespace: the shell of ProxyCommand splits it
    with pytest.raises(ConfigError, match="starts with '-'") as err:
        remote_profile(bert_onnx, host, OPTS)
    one_line(err.value)
    for bad in ("jetson; rm -rf ~", "jet\nson", "jet\x00son", ""):
        with pytest.raises(ConfigError):
            Remote(bad)
    if shutil.which("ssh") is None:
        pytest.skip("no ssh client: the command-line half is not checked here")
    # Past the check too: "--" ends ssh's options, so the host cannot become one.
    remote = Remote("localhost", connect_timeout=2)
    remote.host = host
    with pytest.raises(TargetError):
        remote.run("true", "connecting")
    assert not marker.exists()
    # Control: the same string before any "--" is an option ssh obeys (what the old command line did).
    subprocess.run(["ssh", "-o", "BatchMode=yes", host, "true"], capture_output=True, timeout=30)
    assert marker.exists(), "control failed: ssh did not run the ProxyCommand, so this test proves nothing here"


# ---- 3, 4, 5, 6, 11: bad checkpoints ------------------------------------------------------------


def test_probe_safetensors_with_an_unknown_dtype(copy_checkpoint):
    from edgekit.build.load import load

    path = copy_checkpoint("bert-classifier")
    f = path / "model.safetensors"
    blob = f.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = blob[8 : 8 + n].replace(b'"F32"', b'"F99"', 1)
    assert len(header) == n
    f.write_bytes(blob[:8] + header + blob[8 + n :])
    with pytest.raises(CheckpointError, match="dtype 'F99'") as err:
        load(path)
    one_line(err.value)


def test_probe_malicious_pytorch_bin_is_refused_without_running(copy_checkpoint, tmp_path):
    import torch

    from edgekit.build.load import load

    marker = tmp_path / "pickle-ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = copy_checkpoint("bert-classifier")
    (path / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": Evil()}, path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused to load pytorch_model.bin") as err:
        load(path)
    one_line(err.value)
    assert "trusted source" in err.value.hint
    assert not marker.exists()


def _wordpiece(path: Path, words: list[str]) -> None:
    import transformers

    vocab = path.parent / f"vocab-{len(words)}.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    transformers.BertTokenizerFast(vocab=str(vocab)).save_pretrained(str(path))


def test_probe_tokenizer_larger_than_the_model(copy_checkpoint):
    from edgekit.build.load import load

    path = copy_checkpoint("bert-classifier")
    rows = json.loads((path / "config.json").read_text())["vocab_size"]
    _wordpiece(path, [f"word{i}" for i in range(rows)])  # rows + 5 tokens: the last ids have no embedding
    with pytest.raises(CheckpointError, match=f"the model embeds only {rows}") as err:
        load(path)
    one_line(err.value)


def test_probe_another_models_tokenizer(copy_checkpoint, checkpoints):
    from edgekit.build.load import load

    path = copy_checkpoint("bert-classifier")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (path / name).unlink(missing_ok=True)
    for f in checkpoints["roberta-embedding"].iterdir():  # the 1,000-token byte-level BPE of another model
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy2(f, path / f.name)
    with pytest.raises(CheckpointError, match="another model's tokenizer") as err:
        load(path)
    one_line(err.value)
    # a tokenizer of the right padding but far fewer tokens is refused too
    path2 = copy_checkpoint("bert-embedding")
    _wordpiece(path2, ["a", "b", "c"])
    with pytest.raises(CheckpointError, match="probably another model's tokenizer"):
        load(path2)


def test_probe_nan_weights(copy_checkpoint):
    from safetensors.numpy import load_file, save_file

    from edgekit.build.load import load

    path = copy_checkpoint("bert-classifier")
    tensors = load_file(path / "model.safetensors")
    name = next(k for k in tensors if k.endswith("attention.self.query.weight"))
    tensors[name][0, 0] = np.nan
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"weight {re.escape(name)} holds NaN") as err:
        load(path)
    one_line(err.value)
    # and a reference that is NaN is blamed on the model, not on the runtime
    ref = np.full((2, 3), np.nan, np.float32)
    with pytest.raises(ParityError, match="the PyTorch model itself gives NaN") as err:
        parity.compare(ref, ref, task="classifier", output="logits", runtime="onnxruntime", tolerance=parity.Tolerance())
    assert "atol" not in err.value.hint


# ---- 7: reports into an unwritable place or onto a full disk ----------------------------------


def _data(tmp_path: Path, texts: list[str]) -> Path:
    f = tmp_path / "texts.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return f


def test_probe_eval_json_unwritable_or_disk_full(bert_onnx, tmp_path, monkeypatch, capsys, texts):
    data = _data(tmp_path, texts)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli(
        ["eval", str(bert_onnx), "--data", str(data), "--no-fidelity", "--json", str(blocker / "r.json")], monkeypatch, capsys
    )
    assert code == 2 and err.strip().startswith("error:") and err.strip().count("\n") == 0, err
    assert "cannot write" in err

    out = tmp_path / "reports" / "eval.json"
    out.parent.mkdir()
    out.write_text('{"previous": true}\n')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifact.os, "fsync", full)
    code, _, err = run_cli(["eval", str(bert_onnx), "--data", str(data), "--no-fidelity", "--json", str(out)], monkeypatch, capsys)
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "no space left on" in err and "needs ~1 MB" in err
    assert json.loads(out.read_text()) == {"previous": True}  # the old report stays whole
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]  # no temp file left


def test_probe_profile_out_unwritable_keeps_the_measurements(bert_onnx, tmp_path):
    report = profile(bert_onnx, OPTS)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="measurements were saved in") as err:
        write_reports([report], None, blocker / "reports", "p", plots=False)
    one_line(err.value)
    saved = Path(err.value.message.rsplit("saved in ", 1)[1])
    try:
        assert json.loads((saved / "onnx.profile.json").read_text())["artifact"]["target"] == "onnx"
    finally:
        shutil.rmtree(saved)


# ---- 8: edited manifests -----------------------------------------------------------------------


def test_probe_edited_manifest(onnx_copy):
    _edit_manifest(onnx_copy, lambda m: m.update(target="openvino-cpu"))
    with pytest.raises(ArtifactError, match="does not match manifest.sha256") as err:
        Predictor(onnx_copy)
    one_line(err.value)
    assert "recompile" in err.value.hint
    # behind the hash (a resealed manifest), what the manifest says must still hold together
    _reseal(onnx_copy)
    with pytest.raises(ArtifactError, match="cannot have the target"):
        Predictor(onnx_copy)
    _edit_manifest(onnx_copy, lambda m: m.update(target="onnx", model_file="tokenizer.json"))
    _reseal(onnx_copy)
    with pytest.raises(ArtifactError, match="tokenizer.json is not what target onnx runs"):
        Predictor(onnx_copy)
    _edit_manifest(onnx_copy, lambda m: m.update(model_file="other.onnx"))
    _reseal(onnx_copy)
    with pytest.raises(ArtifactError, match="other.onnx is named by the manifest but is not among its hashed files"):
        Predictor(onnx_copy)
    _edit_manifest(onnx_copy, lambda m: (m.update(model_file="model.onnx"), m["outputs"][0].update(name="logits")))
    _reseal(onnx_copy)
    with pytest.raises(ArtifactError, match="the manifest names output 'logits'; the loaded model takes .* and gives 'embeddings'") as err:
        with Predictor(onnx_copy):
            pass
    one_line(err.value)


# ---- 10: kill -9 while an artifact is staged -----------------------------------------------------

_KILLED = """
import os, signal, sys
from pathlib import Path
from edgekit.deploy import artifact
with artifact.staging(Path(sys.argv[1])) as tmp:
    (tmp / "model.onnx").write_bytes(b"x" * 1_000_000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_probe_kill_9_during_staging_leaves_nothing_for_long(onnx_copy, tmp_path):
    out = tmp_path / "dist" / "art"
    shutil.copytree(onnx_copy, out)
    proc = subprocess.run([sys.executable, "-c", _KILLED, str(out)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = [p for p in out.parent.iterdir() if p.name.startswith(".partial-")]
    assert len(left) == 1 and left[0].name.startswith(".partial-art-")
    artifact.read_manifest(out)  # the previous artifact is intact
    assert artifact.clean(tmp_path) == left
    assert sorted(p.name for p in out.parent.iterdir()) == ["art"]
    # and the next staging into the same folder removes them by itself
    subprocess.run([sys.executable, "-c", _KILLED, str(out)], capture_output=True)
    assert len([p for p in out.parent.iterdir() if p.name.startswith(".partial-")]) == 1
    with artifact.staging(tmp_path / "dist" / "other") as tmp:
        (tmp / MANIFEST).write_text("{}")
    assert sorted(p.name for p in out.parent.iterdir()) == ["art", "other"]


# ---- texts longer than the model's limit ---------------------------------------------------------


def test_probe_truncation_is_reported_by_eval_and_profile(bert_onnx, tmp_path, texts):
    from edgekit.deploy.eval import evaluate

    data = _data(tmp_path, texts)  # the last one is longer than every max_length
    report = evaluate(bert_onnx, data, fidelity=False)
    assert f"1 of {len(texts)} texts are longer than the artifact's limit of 64 tokens and were cut to it" in report.notes
    prof = profile(bert_onnx, OPTS.model_copy(update={"text_file": data}))
    assert any("1 of 5 texts are longer" in w for w in prof.warnings)
    short = _data(tmp_path, texts[:-1])
    assert not any("longer than" in n for n in evaluate(bert_onnx, short, fidelity=False).notes)


def test_every_target_says_which_model_files_it_runs():
    from edgekit.deploy.targets import TARGETS

    for name, cls in TARGETS.items():
        assert cls.model_suffixes and all(s.startswith(".") for s in cls.model_suffixes), name
