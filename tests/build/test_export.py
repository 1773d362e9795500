"""edgekit.build.export: checkpoint -> ONNX artifact, checked against PyTorch, written atomically."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import HIDDEN, LABELS, MAX_LENGTH

from edgekit.build import checkpoint
from edgekit.build.export import MODEL_FILE, ExportOptions, export, parse_shape
from edgekit.deploy import artifact, parity
from edgekit.errors import CheckpointError, ConfigError, ParityError


def _session(path):
    return ort.InferenceSession(str(path / MODEL_FILE), providers=["CPUExecutionProvider"])


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]


def test_graph_has_the_spec_inputs_outputs_and_opset(exported, encoders, checkpoint_name):
    encoder = encoders(checkpoint_name)
    model = onnx.load(str(exported(checkpoint_name) / MODEL_FILE))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset >= 17
    assert tuple(i.name for i in model.graph.input) == encoder.spec.input_names
    assert ("token_type_ids" in encoder.spec.input_names) == checkpoint_name.startswith("bert")
    assert [o.name for o in model.graph.output] == [encoder.output_name]
    assert [o.name for o in model.graph.output] == ["logits" if checkpoint_name.endswith("classifier") else "embeddings"]
    for i in model.graph.input:
        assert _dims(i) == ["batch", "sequence"]
        assert i.type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_dynamic_batch_and_sequence_match_torch(exported, encoders, checkpoint_name, texts):
    encoder = encoders(checkpoint_name)
    sess = _session(exported(checkpoint_name))
    feeds = [
        encoder.tokenize(texts[2:3]),  # batch 1, a few tokens
        encoder.tokenize(texts[:3], pad_to=40),  # batch 3, padded
        encoder.tokenize(texts),  # batch 5, one row at max length
    ]
    shapes = {f["input_ids"].shape for f in feeds}
    assert len(shapes) == 3 and len({s[0] for s in shapes}) == 3 and len({s[1] for s in shapes}) == 3
    for feed in feeds:
        (got,) = sess.run([encoder.output_name], feed)
        expected = encoder.run(feed)
        assert (
            got.shape == expected.shape == (feed["input_ids"].shape[0], len(LABELS) if checkpoint_name.endswith("classifier") else HIDDEN)
        )
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_manifest_records_parity_source_and_file_hashes(exported, checkpoints, checkpoint_name):
    out = exported(checkpoint_name)
    manifest = artifact.read_manifest(out)
    info = checkpoint.inspect(checkpoints[checkpoint_name])
    assert (manifest.kind, manifest.target, manifest.name, manifest.model_file) == ("onnx", "onnx", checkpoint_name, MODEL_FILE)
    assert manifest.opset >= 17
    assert manifest.static_shape is None
    assert manifest.parity.passed is True
    assert manifest.parity.max_abs_diff < 1e-4
    assert manifest.parity.texts == 32
    assert manifest.parity.runtime == f"onnxruntime {ort.__version__}"
    assert manifest.source.sha256 == info.sha256()
    assert manifest.source.task == info.task
    assert manifest.source.labels == (list(LABELS) if info.task == "classifier" else None)
    assert manifest.tokenizer.max_length == MAX_LENGTH[checkpoint_name]
    assert manifest.tokenizer.pad_id == (1 if checkpoint_name.startswith("roberta") else 0)
    assert manifest.runtime["onnxruntime"] == ort.__version__
    assert {MODEL_FILE, "tokenizer.json", parity.REFERENCE} <= set(manifest.files)
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(manifest.files) | {artifact.MANIFEST, artifact.MANIFEST_SHA256}
    for name, entry in manifest.files.items():
        assert entry.sha256 == artifact.sha256_file(out / name)
        assert entry.bytes == (out / name).stat().st_size


def test_parity_reference_holds_torch_outputs(exported, encoders):
    out = exported("roberta-classifier")
    feed, reference = parity.load_reference(out / parity.REFERENCE)
    encoder = encoders("roberta-classifier")
    assert set(feed) == set(encoder.spec.input_names)
    assert reference.shape == (32, len(LABELS))
    np.testing.assert_allclose(encoder.run(feed), reference, atol=1e-6)


def test_static_shape_export_has_fixed_dims(encoders, static_bert_onnx):
    encoder = encoders("bert-embedding")
    manifest = artifact.read_manifest(static_bert_onnx)
    model = onnx.load(str(static_bert_onnx / MODEL_FILE))
    for i in model.graph.input:
        assert _dims(i) == [2, 16]
    assert _dims(model.graph.output[0]) == [2, HIDDEN]
    assert manifest.static_shape == [2, 16]
    assert [i.shape for i in manifest.inputs] == [[2, 16]] * 3
    assert manifest.parity.passed

    sess = _session(static_bert_onnx)
    feed = encoder.tokenize(["Yes.", "The simple form"], pad_to=16)
    np.testing.assert_allclose(sess.run(None, feed)[0], encoder.run(feed), atol=1e-4)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        sess.run(None, encoder.tokenize(["Yes.", "The simple form", "Third"], pad_to=16))


@pytest.mark.parametrize("batch", [1, 3, 5, 32])
def test_staticparity_feed_fills_whole_batches(encoders, batch):
    from edgekit.build.export import parity_feed

    feed = parity_feed(encoders("bert-embedding"), ExportOptions(static_shape=(batch, 16)), 64)
    rows, seq = feed["input_ids"].shape
    assert seq == 16 and rows >= batch and rows % batch == 0


def test_static_batch_larger_than_the_parity_texts(encoders, tmp_path):
    manifest = export(encoders("distilbert-classifier"), tmp_path / "b40", ExportOptions(static_shape=(40, 16)))
    assert manifest.static_shape == [40, 16] and manifest.parity.passed


def test_static_sequence_longer_than_the_model_is_refused(encoders, tmp_path):
    with pytest.raises(ConfigError, match="static sequence 65 exceeds the model's max length 64"):
        export(encoders("bert-embedding"), tmp_path / "out", ExportOptions(static_shape=(1, 65)))
    assert list(tmp_path.iterdir()) == []


def test_max_length_option_caps_the_tokenizer(encoders, tmp_path):
    manifest = export(encoders("distilbert-classifier"), tmp_path / "capped", ExportOptions(max_length=24))
    assert manifest.tokenizer.max_length == manifest.source.max_length == 24
    feed, _ = parity.load_reference(tmp_path / "capped" / parity.REFERENCE)
    assert feed["input_ids"].shape[1] == 24


def test_export_from_a_checkpoint_path_with_task(checkpoints, tmp_path):
    manifest = export(checkpoints["bert-classifier"], tmp_path / "as-embedding", task="embedding")
    assert (manifest.source.task, manifest.outputs[0].name, manifest.outputs[0].shape) == ("embedding", "embeddings", ["batch", HIDDEN])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"opset": 16}, "opset"), ({"static_shape": (0, 16)}, "static_shape"), ({"max_length": 4}, "max_length"), ({"batch": 2}, "batch")],
)
def test_export_options_are_validated(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ExportOptions(**kwargs)


@pytest.mark.parametrize(("text", "shape"), [("1x128", (1, 128)), ("8X16", (8, 16)), (None, None), ("", None)])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("128", "BATCHxSEQUENCE"),
        ("1x", "BATCHxSEQUENCE"),
        ("axb", "BATCHxSEQUENCE"),
        ("1x2x3", "BATCHxSEQUENCE"),
        ("0x16", "batch >= 1"),
        ("1x3", "sequence >= 4"),
    ],
)
def test_parse_shape_rejects(text, hint):
    with pytest.raises(ConfigError, match=f"invalid shape '{text}'") as err:
        parse_shape(text)
    assert hint in err.value.hint


# --- parity failures ----------------------------------------------------------------------


def _reference(task: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 3 if task == "classifier" else HIDDEN)).astype(np.float32)


def test_compare_passes_identical_outputs():
    ref = _reference("embedding")
    report = parity.compare(ref, ref.copy(), task="embedding", output="embeddings", runtime="rt", tolerance=parity.Tolerance())
    assert report.passed and report.max_abs_diff == 0.0 and report.min_cosine == pytest.approx(1.0)
    assert parity.enforce(report) is report


def test_enforce_names_the_output_and_the_largest_difference():
    ref = _reference("embedding")
    act = ref.copy()
    act[4, 7] += 0.125
    report = parity.compare(ref, act, task="embedding", output="embeddings", runtime="myruntime 1.0", tolerance=parity.Tolerance())
    assert not report.passed
    assert report.max_abs_diff == pytest.approx(0.125)
    with pytest.raises(ParityError, match=r"myruntime 1\.0 output 'embeddings' differs from PyTorch: max abs diff 0\.125 \(atol 0\.001\)"):
        parity.enforce(report)


def test_classifier_parity_fails_on_argmax_disagreement_even_within_atol():
    ref = np.array([[0.0, 0.0001, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    act = np.array([[0.0001, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    report = parity.compare(ref, act, task="classifier", output="logits", runtime="rt", tolerance=parity.Tolerance())
    assert report.max_abs_diff <= report.atol
    assert report.argmax_agreement == 0.5 and not report.passed
    with pytest.raises(ParityError, match=r"output 'logits'.*argmax agreement 0\.5000"):
        parity.enforce(report)


def test_non_finite_outputs_fail_parity():
    ref = _reference("classifier")
    act = ref.copy()
    act[0, 0] = np.nan
    assert not parity.compare(ref, act, task="classifier", output="logits", runtime="rt", tolerance=parity.Tolerance()).passed


def test_shape_mismatch_is_a_parity_error():
    ref = _reference("embedding")
    with pytest.raises(ParityError, match=r"output 'embeddings' has shape \(5, 32\), PyTorch gave \(6, 32\)"):
        parity.compare(ref, ref[:5], task="embedding", output="embeddings", runtime="rt", tolerance=parity.Tolerance())


def test_run_chunked_concatenates_in_order():
    feed = {"input_ids": np.arange(10).reshape(10, 1)}
    seen = []

    def infer(f):
        seen.append(len(f["input_ids"]))
        return f["input_ids"] * 2

    np.testing.assert_array_equal(parity.run_chunked(infer, feed, 4), np.arange(10).reshape(10, 1) * 2)
    assert seen == [4, 4, 2]


# --- failures leave nothing behind --------------------------------------------------------


def _leftovers(parent, name):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def test_failed_onnx_export_leaves_no_partial_artifact(encoders, tmp_path, monkeypatch):
    import torch

    def boom(*args, **kwargs):
        raise RuntimeError("exporter exploded\nsecond line of detail")

    monkeypatch.setattr(torch.onnx, "export", boom)
    out = tmp_path / "art"
    with pytest.raises(CheckpointError, match="ONNX export of .* failed: exporter exploded") as err:
        export(encoders("bert-embedding"), out)
    assert err.value.message.endswith("failed: exporter exploded")  # first line only
    assert isinstance(err.value.__cause__, RuntimeError)
    assert not out.exists()
    assert _leftovers(tmp_path, "art") == []


def test_parity_failure_during_export_keeps_the_previous_artifact(encoders, exported, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "art"
    shutil.copytree(exported("distilbert-embedding"), out)
    before = artifact.read_manifest(out)

    real = parity.run_chunked
    monkeypatch.setattr(parity, "run_chunked", lambda infer, feed, batch: real(infer, feed, batch) + 0.5)
    with pytest.raises(ParityError, match=r"output 'embeddings' differs from PyTorch: max abs diff 0\.5"):
        export(encoders("distilbert-embedding"), out)
    assert artifact.read_manifest(out) == before
    assert _leftovers(tmp_path, "art") == []


def test_re_export_replaces_the_artifact_atomically(encoders, tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    manifest = export(encoders("distilbert-classifier"), out)
    assert not (out / "stale.txt").exists()
    assert artifact.read_manifest(out) == manifest
    assert _leftovers(tmp_path, "art") == []


def test_torchscript_is_the_default_exporter_and_is_recorded(exported):
    manifest = artifact.read_manifest(exported("bert-embedding"))
    assert ExportOptions().exporter == "torchscript"
    assert manifest.settings["exporter"] == "torchscript" and manifest.opset == 17


def test_dynamo_exporter_keeps_names_dynamic_axes_and_parity(encoders, texts, tmp_path):
    """The torch.export-based exporter, kept as an option (slower graphs on ORT: docs/agreement.md)."""
    encoder = encoders("distilbert-embedding")
    manifest = export(encoder, tmp_path / "dyn", ExportOptions(exporter="dynamo"))
    assert manifest.settings["exporter"] == "dynamo" and manifest.opset >= 18 and manifest.parity.passed
    model = onnx.load(str(tmp_path / "dyn" / MODEL_FILE))
    assert [i.name for i in model.graph.input] == list(encoder.spec.input_names)
    assert [_dims(i) for i in model.graph.input] == [["batch", "sequence"]] * len(encoder.spec.input_names)
    assert _dims(model.graph.output[0]) == ["batch", HIDDEN]
    sess = _session(tmp_path / "dyn")
    for feed in (encoder.tokenize(texts[2:3]), encoder.tokenize(texts, pad_to=40)):
        np.testing.assert_allclose(sess.run(None, feed)[0], encoder.run(feed), atol=1e-4)
