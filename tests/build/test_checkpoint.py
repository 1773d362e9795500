"""edgekit.build.checkpoint: what a checkpoint directory holds, and every way it can be bad."""

from __future__ import annotations

import json
import struct

import pytest
from conftest import LABELS, MAX_LENGTH

from edgekit.build import checkpoint
from edgekit.build.specs import SPECS
from edgekit.errors import CheckpointError


def _expected(name: str) -> dict:
    arch, task = name.split("-")
    if task == "classifier":
        return dict(model_type=arch, task="classifier", pooling=None, normalize=False, labels=LABELS)
    pooling, normalize = {"bert": ("mean", True), "roberta": ("cls", False), "distilbert": ("mean", False)}[arch]
    return dict(model_type=arch, task="embedding", pooling=pooling, normalize=normalize, labels=None)


def test_inspect_reads_task_pooling_labels_and_max_length(checkpoints, checkpoint_name):
    info = checkpoint.inspect(checkpoints[checkpoint_name])
    expected = _expected(checkpoint_name)
    assert info.model_type == expected["model_type"]
    assert info.task == expected["task"]
    assert info.pooling == expected["pooling"]
    assert info.normalize is expected["normalize"]
    assert info.labels == expected["labels"]
    assert info.max_length == MAX_LENGTH[checkpoint_name]
    assert info.path == checkpoints[checkpoint_name].resolve()
    assert [f.name for f in info.weight_files] == ["model.safetensors"]


def test_inspect_accepts_a_str_path(checkpoints):
    assert checkpoint.inspect(str(checkpoints["bert-classifier"])).task == "classifier"


def test_classifier_checkpoint_can_be_inspected_as_embedding(checkpoints):
    info = checkpoint.inspect(checkpoints["bert-classifier"], task="embedding")
    assert (info.task, info.pooling, info.labels) == ("embedding", "mean", None)


def test_pooling_argument_overrides_sentence_transformers_config(checkpoints):
    assert checkpoint.inspect(checkpoints["bert-embedding"], pooling="cls").pooling == "cls"


def test_labels_default_to_label_i_without_id2label(copy_checkpoint):
    path = copy_checkpoint("roberta-classifier")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["id2label"], cfg["label2id"]
    cfg["num_labels"] = 3
    (path / "config.json").write_text(json.dumps(cfg))
    assert checkpoint.inspect(path).labels == ("LABEL_0", "LABEL_1", "LABEL_2")


def test_sha256_changes_with_the_weights(copy_checkpoint):
    path = copy_checkpoint("distilbert-classifier")
    before = checkpoint.inspect(path).sha256()
    assert before == checkpoint.inspect(path).sha256()
    weights = path / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert checkpoint.inspect(path).sha256() != before


# --- bad inputs -------------------------------------------------------------------------


def _raises(path, match: str, **kwargs) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoint.inspect(path, **kwargs)
    return info.value


def test_missing_path(tmp_path):
    err = _raises(tmp_path / "nope", "no such directory")
    assert str(tmp_path / "nope") in err.message
    assert err.hint


def test_file_instead_of_directory(checkpoints):
    err = _raises(checkpoints["bert-embedding"] / "config.json", "not a directory")
    assert "checkpoint directory" in err.hint


def test_directory_without_config(tmp_path):
    _raises(tmp_path, "no config.json")


def test_config_with_invalid_json(copy_checkpoint):
    path = copy_checkpoint()
    (path / "config.json").write_text('{"model_type": "bert",')
    err = _raises(path, "config.json: not valid JSON")
    assert isinstance(err.__cause__, json.JSONDecodeError)


def test_config_that_is_not_an_object(copy_checkpoint):
    path = copy_checkpoint()
    (path / "config.json").write_text("[]")
    _raises(path, "config.json")


def test_unsupported_model_type_lists_supported_ones(copy_checkpoint):
    path = copy_checkpoint()
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (path / "config.json").write_text(json.dumps(cfg))
    err = _raises(path, "'gpt2' is not supported")
    for supported in SPECS:
        assert supported in err.hint


def test_config_without_model_type(copy_checkpoint):
    path = copy_checkpoint()
    cfg = json.loads((path / "config.json").read_text())
    del cfg["model_type"]
    (path / "config.json").write_text(json.dumps(cfg))
    _raises(path, "None is not supported")


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_safetensors(copy_checkpoint, keep):
    path = copy_checkpoint()
    weights = path / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[: int(len(raw) * keep)])
    err = _raises(path, "model.safetensors: truncated")
    assert "truncated" in err.hint


@pytest.mark.parametrize("size", [0, 5])
def test_safetensors_shorter_than_its_header_length(copy_checkpoint, size):
    path = copy_checkpoint()
    (path / "model.safetensors").write_bytes(b"\x01" * size)
    _raises(path, "unreadable safetensors header")


def test_garbage_bytes_in_safetensors_header(copy_checkpoint):
    path = copy_checkpoint()
    weights = path / "model.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    garbage = bytes((i * 37 + 11) % 256 for i in range(n))
    weights.write_bytes(raw[:8] + garbage + raw[8 + n :])
    _raises(path, "model.safetensors: unreadable safetensors header")


def test_header_length_larger_than_file(copy_checkpoint):
    path = copy_checkpoint()
    weights = path / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    _raises(path, "exceeds file size")


def test_safetensors_header_that_describes_no_tensors(copy_checkpoint):
    path = copy_checkpoint()
    weights = path / "model.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    weights.write_bytes(raw[:8] + b"[]".ljust(n) + raw[8 + n :])
    _raises(path, "model.safetensors")


def _edit_header(path, old: bytes, new: bytes) -> None:
    weights = path / "model.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + n].replace(old, new, 1)
    assert len(header) == n and header != raw[8 : 8 + n]
    weights.write_bytes(raw[:8] + header + raw[8 + n :])


def test_safetensors_dtype_it_does_not_define(copy_checkpoint):
    path = copy_checkpoint()
    _edit_header(path, b'"F32"', b'"F99"')
    _raises(path, "dtype 'F99', which safetensors does not define")


def test_safetensors_tensor_whose_shape_does_not_fit_its_bytes(copy_checkpoint):
    path = copy_checkpoint()
    _edit_header(path, b'"F32"', b'"F16"')  # half the bytes the shape needs
    _raises(path, "does not fit its byte range")


def test_no_weights(copy_checkpoint):
    path = copy_checkpoint()
    (path / "model.safetensors").unlink()
    err = _raises(path, "no weights found")
    assert "model.safetensors" in err.message and "pytorch_model.bin" in err.message


def test_sharded_index_with_missing_shard(copy_checkpoint):
    path = copy_checkpoint()
    (path / "model.safetensors").rename(path / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    _raises(path, "shard model-00002-of-00002.safetensors listed in model.safetensors.index.json is missing")


def test_no_tokenizer_files(copy_checkpoint):
    path = copy_checkpoint()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    err = _raises(path, "no tokenizer files")
    assert "save_pretrained" in err.hint


@pytest.mark.parametrize("name", ["bert-embedding", "roberta-embedding", "distilbert-embedding"])
def test_task_classifier_on_a_model_without_head(checkpoints, name):
    err = _raises(checkpoints[name], "no classification head", task="classifier")
    assert "--task embedding" in err.hint


def test_unknown_task_name(checkpoints):
    err = _raises(checkpoints["bert-embedding"], "unknown task 'regression'", task="regression")
    assert "classifier" in err.hint and "embedding" in err.hint


def test_unknown_pooling_name(checkpoints):
    err = _raises(checkpoints["bert-embedding"], "unknown pooling 'max'", pooling="max")
    assert "mean" in err.hint and "cls" in err.hint


def test_unsupported_sentence_transformers_pooling(copy_checkpoint):
    path = copy_checkpoint()
    cfg_path = path / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(pooling_mode_mean_tokens=False, pooling_mode_max_tokens=True)
    cfg_path.write_text(json.dumps(cfg))
    err = _raises(path, "pooling_mode_max_tokens")
    assert "mean" in err.hint


def test_default_model_override_from_environment(checkpoints, monkeypatch):
    monkeypatch.setenv("EDGEKIT_DEFAULT_MODEL", str(checkpoints["roberta-classifier"]))
    assert checkpoint.inspect("default").model_type == "roberta"
    assert checkpoint.inspect(None).task == "classifier"
