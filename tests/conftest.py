"""Shared fixtures: tiny random-weight checkpoints built offline, and their exports.

Every checkpoint is a real Hugging Face directory (``save_pretrained``: config.json,
model.safetensors, tokenizer.json) with hidden size 32, 2 layers and 2 heads, so loading
and exporting one takes about a second. Tokenizers are real fast tokenizers built from
the sentences shipped in ``edgekit/data``: a WordPiece vocabulary for BERT and
DistilBERT, a byte-level BPE trained on the spot for RoBERTa. Nothing is downloaded.

What each checkpoint holds (tests rely on these facts):

- ``bert-embedding``: mean pooling, normalized (sentence-transformers modules.json with
  Pooling + Normalize); max_length 64 (sentence_bert_config.json).
- ``roberta-embedding``: cls pooling, not normalized (sentence-transformers Pooling);
  max_length 126 (128 positions minus RoBERTa's offset of 2).
- ``distilbert-embedding``: mean pooling by default, no sentence-transformers files;
  max_length 96 (tokenizer model_max_length).
- ``*-classifier``: 3 labels negative/neutral/positive from id2label; max_length 128,
  126 for RoBERTa.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edgekit.deploy import data

ARCHS = ("bert", "roberta", "distilbert")
TASKS = ("embedding", "classifier")
NAMES = tuple(f"{arch}-{task}" for arch in ARCHS for task in TASKS)

HIDDEN = 32
MAX_POSITIONS = 128
LABELS = ("negative", "neutral", "positive")
# max_length that checkpoint.inspect must find for each checkpoint (see the table above).
MAX_LENGTH = {
    "bert-embedding": 64,
    "bert-classifier": 128,
    "roberta-embedding": 126,
    "roberta-classifier": 126,
    "distilbert-embedding": 96,
    "distilbert-classifier": 128,
}
WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BPE_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4; RoBERTa pads with 1


def _sentences() -> list[str]:
    return data.sample_texts()


def _wordpiece_vocab(path: Path) -> Path:
    words = sorted({w for s in _sentences() for w in re.findall(r"\w+|[^\w\s]", s.lower())})
    path.write_text("\n".join([*WORDPIECE_SPECIALS, *words]) + "\n")
    return path


def _bpe_tokenizer():
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_sentences(), vocab_size=1000, min_frequency=2, special_tokens=list(BPE_SPECIALS), show_progress=False)
    return bpe._tokenizer


def _tokenizer(arch: str, workdir: Path):
    import transformers

    if arch == "roberta":
        return transformers.RobertaTokenizerFast(tokenizer_object=_bpe_tokenizer())
    vocab = workdir / "vocab.txt"
    if not vocab.exists():
        _wordpiece_vocab(vocab)
    cls = transformers.BertTokenizerFast if arch == "bert" else transformers.DistilBertTokenizerFast
    # transformers 5 takes the vocabulary as ``vocab`` (a path or a dict); ``vocab_file``
    # is silently ignored there and gives a tokenizer of 5 special tokens.
    return cls(vocab=str(vocab))


def _config(arch: str, vocab_size: int, task: str):
    import transformers

    head = {}
    if task == "classifier":
        head = {"num_labels": len(LABELS), "id2label": dict(enumerate(LABELS)), "label2id": {n: i for i, n in enumerate(LABELS)}}
    if arch == "distilbert":
        return transformers.DistilBertConfig(
            vocab_size=vocab_size, dim=HIDDEN, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=MAX_POSITIONS, **head
        )
    common = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        **head,
    )
    if arch == "roberta":
        return transformers.RobertaConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    return transformers.BertConfig(**common)


_MODEL_CLASSES = {
    ("bert", "embedding"): "BertModel",
    ("bert", "classifier"): "BertForSequenceClassification",
    ("roberta", "embedding"): "RobertaModel",
    ("roberta", "classifier"): "RobertaForSequenceClassification",
    ("distilbert", "embedding"): "DistilBertModel",
    ("distilbert", "classifier"): "DistilBertForSequenceClassification",
}


def _sentence_transformers_files(out: Path, *, pooling: str, normalize: bool, max_seq_length: int | None) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir()
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": HIDDEN,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
                "pooling_mode_max_tokens": False,
                "pooling_mode_mean_sqrt_len_tokens": False,
            }
        )
    )
    if max_seq_length is not None:
        (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}))


def build_checkpoint(name: str, out: Path, *, seed: int = 0) -> Path:
    """Write the tiny random-weight checkpoint ``name`` (e.g. ``roberta-classifier``) to ``out``."""
    import torch
    import transformers

    arch, task = name.split("-")
    transformers.utils.logging.disable_progress_bar()
    out.mkdir(parents=True)
    tokenizer = _tokenizer(arch, out.parent)
    if arch == "distilbert" and task == "embedding":
        tokenizer.model_max_length = 96
    torch.manual_seed(seed)
    model = getattr(transformers, _MODEL_CLASSES[arch, task])(_config(arch, len(tokenizer), task)).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if name == "bert-embedding":
        _sentence_transformers_files(out, pooling="mean", normalize=True, max_seq_length=64)
    elif name == "roberta-embedding":
        _sentence_transformers_files(out, pooling="cls", normalize=False, max_seq_length=None)
    return out


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """All six tiny checkpoints, by name (``bert-embedding``, ..., ``distilbert-classifier``)."""
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: build_checkpoint(name, root / name, seed=i) for i, name in enumerate(NAMES)}


@pytest.fixture(params=NAMES)
def checkpoint_name(request) -> str:
    return request.param


@pytest.fixture
def copy_checkpoint(checkpoints, tmp_path) -> Callable[[str], Path]:
    """A fresh copy of a tiny checkpoint under tmp_path, safe to damage."""

    def copy(name: str = "bert-embedding") -> Path:
        return Path(shutil.copytree(checkpoints[name], tmp_path / f"copy-{name}"))

    return copy


@pytest.fixture(scope="session")
def encoders(checkpoints) -> Callable[[str], object]:
    """Loaded :class:`edgekit.build.load.Encoder` per checkpoint name, each loaded once."""
    from edgekit.build.load import load

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load(checkpoints[name])
        return cache[name]

    return get


@pytest.fixture(scope="session")
def exported(checkpoints, encoders, tmp_path_factory) -> Callable[[str], Path]:
    """ONNX artifact dir (``edgekit.build.export.export``) per checkpoint name, each exported once."""
    from edgekit.build.export import export

    root = tmp_path_factory.mktemp("exported")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            export(encoders(name), root / name)
            cache[name] = root / name
        return cache[name]

    return get


@pytest.fixture(scope="session")
def bert_onnx(exported) -> Path:
    """The exported ONNX artifact of the tiny BERT embedding model."""
    return exported("bert-embedding")


@pytest.fixture(scope="session")
def static_bert_onnx(encoders, tmp_path_factory) -> Path:
    """The tiny BERT embedding model exported with the static shape (2, 16)."""
    from edgekit.build.export import ExportOptions, export

    out = tmp_path_factory.mktemp("static") / "bert-embedding-2x16"
    export(encoders("bert-embedding"), out, ExportOptions(static_shape=(2, 16)))
    return out


@pytest.fixture(scope="session")
def texts() -> list[str]:
    """A few real sentences of varied length, plus one longer than every max_length."""
    sents = _sentences()
    return [sents[0], sents[7], "Yes.", sents[100], " ".join(sents[200:215])]


def quantize_args(model, data, out, cache, scheme: str, *extra: str) -> list[str]:
    """A two-step ``edgekit quantize`` command line on tiny settings (batch 8, 32 tokens), plus ``extra``."""
    base = ["quantize", str(model), "--data", str(data), "--scheme", scheme, "--steps", "2", "--batch-size", "8", "--max-length", "32"]
    return [*base, "--no-progress", "--out", str(out), "--cache", str(cache), *extra]


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """Run the ``edgekit`` console entry point in-process: (exit code, stdout, stderr)."""
    import sys

    from edgekit.cli import app as cli

    monkeypatch.setattr(sys, "argv", ["edgekit", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


# --- the 1-bit kernel (tests/deploy/kernels): the library built once per session, and single-op graphs


@pytest.fixture(scope="session")
def xnor_lib(tmp_path_factory) -> Iterator[Path]:
    """The kernel library, built into a fresh cache that is the session's default kernel cache
    (``XDG_CACHE_HOME`` points into the test's temp folder, so compiles with ``xnor`` reuse it and
    nothing is written under the home folder). Skipped only where no compiler or headers exist."""
    from edgekit import env
    from edgekit.deploy.kernels import xnor

    ov = pytest.importorskip("openvino")
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        pytest.skip("no C++ compiler (g++, c++, clang++) on PATH: the 1-bit kernel cannot be built here")
    if not (Path(ov.__file__).parent / "include" / "openvino" / "op" / "op.hpp").exists():
        pytest.skip("the openvino package ships no C++ headers: the 1-bit kernel cannot be built here")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield xnor.build(env.kernel_cache_dir())  # a failed build here is a failure, not a skip


def quantized_checkpoint(checkpoints, encoders, out: Path, name: str, scheme) -> Path:
    """A calibrated (untrained) quantized checkpoint of the tiny model ``name`` (``scheme``: a name or a QuantConfig)."""
    import copy

    import torch

    from edgekit.build.quant import calibrate, quantize_
    from edgekit.build.quant.saving import save_quantized

    enc = encoders(name)
    module = copy.deepcopy(enc.module)
    quantize_(module, scheme)
    feed = enc.tokenize(data.sample_texts()[:16])
    calibrate(module, [tuple(torch.from_numpy(feed[n]) for n in enc.spec.input_names)])
    return save_quantized(module, enc.tokenizer, out, source=checkpoints[name])


@pytest.fixture(scope="session")
def lowered_model(checkpoints, encoders, tmp_path_factory) -> Callable[[str], tuple[Path, object]]:
    """``scheme -> (lowered ONNX artifact dir, manifest)`` of the tiny BERT classifier (``edgekit lower``), each built once."""
    root = tmp_path_factory.mktemp("lowered-xnor")
    cache: dict[str, tuple[Path, object]] = {}

    def get(scheme: str) -> tuple[Path, object]:
        if scheme not in cache:
            from edgekit.build.lower import lower

            ckpt = quantized_checkpoint(checkpoints, encoders, root / f"{scheme}-ckpt", "bert-classifier", scheme)
            cache[scheme] = (root / scheme, lower(ckpt, root / scheme))
        return cache[scheme]

    return get


@pytest.fixture(scope="session")
def ov_core(xnor_lib):
    import openvino as ov

    from edgekit.deploy.kernels import xnor

    core = ov.Core()
    xnor.load(core, xnor_lib)
    return core


def binary_matmul_graph(packed: np.ndarray, scale, bias, params, mode: str, n: int, k: int):
    """ONNX model: Y = BinaryMatMul(X [M, K]) over 1-bit packed weights ``packed`` (``xnor.pack_weights``)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.deploy.kernels import xnor

    inits = [
        numpy_helper.from_array(np.asarray(packed), "W"),
        numpy_helper.from_array(np.asarray(scale, np.float32).reshape(n), "S"),
        numpy_helper.from_array(np.asarray(bias, np.float32).reshape(n), "B"),
        numpy_helper.from_array(np.asarray(params, np.float32), "P"),
    ]
    node = xnor.make_node(["X", "W", "S", "B", "P"], "Y", n=n, k=k, mode=mode)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(xnor.DOMAIN, 1)])


def _binary_matmul_model(w_codes: np.ndarray, scale, bias, params, mode: str):
    """ONNX model: Y = BinaryMatMul(X [M, K]) with weight codes ``w_codes`` [N, K] in {-1, +1}."""
    from edgekit.deploy.kernels import xnor

    n, k = w_codes.shape
    return binary_matmul_graph(xnor.pack_weights(w_codes), scale, bias, params, mode, n, k)


@pytest.fixture
def binary_matmul_model():
    """``(w_codes [N, K], scale, bias, params, mode) -> onnx model`` of one BinaryMatMul."""
    return _binary_matmul_model


@pytest.fixture
def ov_compile(ov_core, tmp_path):
    """``(onnx model) -> compiled OpenVINO model`` (CPU, 2 threads), the kernel loaded."""
    import onnx

    def compile_(model, name: str = "model.onnx"):
        path = tmp_path / name
        onnx.save(model, str(path))
        return ov_core.compile_model(
            ov_core.read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": "2", "INFERENCE_PRECISION_HINT": "f32"}
        )

    return compile_


@pytest.fixture(scope="session")
def trained(checkpoints, texts, tmp_path_factory):
    """Exit heads on the tiny 2-layer BERT classifier (exits at layers 1 and 2), 3 epochs of self-distillation
    (shared by the early-exit tests; a conftest of their own would shadow this module for ``from conftest import``)."""
    from edgekit.build.exits.model import MultiExitModel
    from edgekit.build.exits.train import TrainConfig, train_heads
    from edgekit.build.load import load

    out = tmp_path_factory.mktemp("heads")
    model = MultiExitModel(load(checkpoints["bert-classifier"]))
    train_heads(model, texts * 4, None, out, TrainConfig(epochs=3, batch=4), resume=False)
    model.save(out)
    return out
