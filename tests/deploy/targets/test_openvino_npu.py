"""Target openvino-npu (edgekit/targets/openvino_npu.py): static-shape IR per bucket for the Intel NPU.

No NPU exists here, so the artifact is the IR alone (manifest ``pending``). The IR is
proven right on OpenVINO's CPU plugin against PyTorch's parity reference padded to each
bucket; the NPU code path (query_model, compile, blob export and import) is run by
pretending the CPU is the NPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact, parity
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets import Session, openvino_npu, shapes
from edgekit.deploy.targets.openvino_npu import PENDING, NpuOptions, NpuSession, OpenVinoNpuTarget
from edgekit.errors import ConfigError, EdgekitError, TargetError

ov = pytest.importorskip("openvino")
pytestmark = pytest.mark.openvino

TARGET = "openvino-npu"
# name -> options: bert-embedding's max length is 64, distilbert-classifier's 128.
BUILDS = {
    "bert-embedding": {"seq_lens": "16,64"},
    "distilbert-classifier": {"seq_lens": [32, 128], "batch": 2},
}
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


@pytest.fixture(scope="module")
def compiled(exported, tmp_path_factory) -> dict[str, tuple]:
    """name -> (artifact dir, manifest), compiled here (no NPU)."""
    root = tmp_path_factory.mktemp("npu")
    result = {}
    for name, options in BUILDS.items():
        src = exported(name)
        out = root / name / TARGET
        result[name] = (out, compile_artifact(src, artifact.read_manifest(src), TARGET, out, options=options))
    return result


def _compile(onnx_dir, out, **options):
    """target.compile itself, so a ConfigError arrives as raised (compile_artifact wraps it)."""
    out.mkdir(parents=True, exist_ok=True)
    return OpenVinoNpuTarget().compile(onnx_dir, artifact.read_manifest(onnx_dir), NpuOptions(**options), out)


def test_without_an_npu_the_ir_ships_and_says_what_is_pending(compiled):
    out, manifest = compiled["bert-embedding"]
    assert (manifest.kind, manifest.target, manifest.precision) == ("compiled", TARGET, "fp16")
    assert manifest.pending == PENDING
    assert manifest.parity is None
    assert "no Intel NPU here" in manifest.settings["parity_not_run"]
    assert manifest.static_shape == [1, 64]
    assert manifest.model_file == "model_s64.xml"
    assert all(t.shape == [1, 64] for t in manifest.inputs) and manifest.outputs[0].shape == [1, 32]
    assert manifest.settings["buckets"] == [[1, 16], [1, 64]]
    # the buckets differ in shapes only: one weights file serves both
    assert manifest.settings["models"] == {
        "16": {"xml": "model_s16.xml", "bin": "model_s16.bin", "blob": None},
        "64": {"xml": "model_s64.xml", "bin": "model_s16.bin", "blob": None},
    }
    assert {"model_s16.xml", "model_s16.bin", "model_s64.xml"} <= set(manifest.files) and "model_s64.bin" not in manifest.files
    assert not [f for f in manifest.files if f.endswith(".blob")]
    assert artifact.read_manifest(out) == manifest


@pytest.mark.parametrize("name", list(BUILDS))
def test_every_bucket_ir_is_static_and_fp16(compiled, name):
    out, manifest = compiled[name]
    core = ov.Core()
    for batch, seq in manifest.settings["buckets"]:
        model = core.read_model(str(out / f"model_s{seq}.xml"), str(out / manifest.settings["models"][str(seq)]["bin"]))
        assert not model.is_dynamic()
        assert [list(p.get_shape()) for p in model.inputs] == [[batch, seq]] * len(manifest.inputs)
        assert list(model.outputs[0].get_shape()) == [batch, manifest.outputs[0].shape[1]]
        weights = [op for op in model.get_ops() if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.f16]
        assert weights, "compress_to_fp16 should leave fp16 weights in the IR"


@pytest.mark.parametrize("name", list(BUILDS))
def test_ir_on_the_cpu_plugin_matches_torch_padded_to_each_bucket(compiled, exported, name):
    out, manifest = compiled[name]
    feed, reference = parity.load_reference(exported(name) / parity.REFERENCE)
    with NpuSession(out, manifest, device="CPU", config=F32) as session:
        assert isinstance(session, Session)
        assert session.used == dict.fromkeys(session.buckets, "ir")
        actual = parity.run_chunked(lambda f: session.infer(f)[manifest.outputs[0].name], feed, manifest.static_shape[0])
    # The fp16 tolerance is what the NPU gets; fp16 weights computed in fp32 stay far within it.
    report = parity.compare(
        reference, actual, task=manifest.task, output=manifest.outputs[0].name, runtime="IR on CPU", tolerance=parity.TOLERANCES["fp16"]
    )
    assert report.passed and report.max_abs_diff < 1e-3
    # The same check ran at compile time and is in the manifest.
    check = manifest.settings["ir_check"]
    assert check["passed"] and check["device"] == "CPU" and check["max_abs_diff"] < 1e-3


def test_each_batch_runs_on_the_smallest_bucket_that_fits(compiled, exported):
    out, manifest = compiled["bert-embedding"]
    feed, reference = parity.load_reference(exported("bert-embedding") / parity.REFERENCE)
    lengths = shapes.row_lengths(feed, manifest.tokenizer.pad_id)
    short, long = int(np.argmin(lengths)), int(np.argmax(lengths))
    assert lengths[short] <= 16 < lengths[long]
    with NpuSession(out, manifest, device="CPU", config=F32) as session:
        small = session.infer({k: v[short : short + 1] for k, v in feed.items()})["embeddings"]
        assert session.last_bucket == 16
        # The short text padded by hand to the big bucket gives the same output.
        padded = shapes.fit_feed({k: v[short : short + 1, : lengths[short]] for k, v in feed.items()}, 1, 64, manifest.tokenizer.pad_id)
        big = session._run(64, padded)["embeddings"]
        session.infer({k: v[long : long + 1] for k, v in feed.items()})
        assert session.last_bucket == 64
    np.testing.assert_allclose(small, big, atol=1e-5)
    np.testing.assert_allclose(small, reference[short : short + 1], atol=1e-3)


def test_predictor_refuses_the_pending_artifact(compiled):
    out, manifest = compiled["bert-embedding"]
    assert "no Intel NPU here" in OpenVinoNpuTarget().executable_here(manifest)
    with pytest.raises(TargetError, match="not runnable yet: NPU compilation needs the Intel NPU driver"):
        Predictor(out)


def test_dynamic_model_without_buckets_is_refused(exported, tmp_path):
    src = exported("bert-embedding")
    with pytest.raises(ConfigError, match="a dynamic model sent to the NPU") as err:
        _compile(src, tmp_path / "direct")
    assert "seq_lens" in err.value.hint
    with pytest.raises(EdgekitError, match="a dynamic model sent to the NPU"):
        compile_artifact(src, artifact.read_manifest(src), TARGET, tmp_path / "out" / TARGET)
    assert not (tmp_path / "out" / TARGET).exists()


def test_int8_of_a_float_model_is_refused(exported, tmp_path):
    src = exported("bert-embedding")
    with pytest.raises(ConfigError, match="precision int8 needs an INT8 \\(QDQ\\) model, and this ONNX model is float") as err:
        _compile(src, tmp_path, seq_lens=[64], precision="int8")
    assert "PTQ" in err.value.hint


def test_int8_takes_a_qdq_model(exported, tmp_path):
    import shutil

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    src = shutil.copytree(exported("bert-embedding"), tmp_path / "qdq")
    feed, _ = parity.load_reference(src / parity.REFERENCE)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{k: v[i : i + 1] for k, v in feed.items()} for i in range(8)])

        def get_next(self):
            return next(self.rows, None)

    quantize_static(
        str(src / "model.onnx"), str(src / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"]
    )
    artifact.write_manifest(src, artifact.read_manifest(src, verify=False).model_copy(update={"precision": "int8"}))
    fields = _compile(src, tmp_path / "out", seq_lens=[64], precision="int8")
    assert fields["precision"] == "int8"
    model = ov.Core().read_model(str(tmp_path / "out" / "model_s64.xml"))
    assert openvino_npu.is_quantized(model, ov)
    assert fields["settings"]["ir_check"]["passed"]


def test_data_file_picks_the_buckets(exported, tmp_path, texts):
    src = exported("distilbert-classifier")
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(texts * 4) + "\n")
    fields = _compile(src, tmp_path / "out", data=str(path))
    buckets = [s for _, s in fields["settings"]["buckets"]]
    assert buckets == sorted(buckets) and all(s % 16 == 0 or s == 128 for s in buckets) and max(buckets) <= 128
    assert "texts.txt" in fields["settings"]["bucket_source"]
    assert sorted(f.name for f in (tmp_path / "out").glob("*.xml")) == sorted(f"model_s{s}.xml" for s in buckets)


def test_bucket_longer_than_the_model_is_refused(exported, tmp_path):
    with pytest.raises(ConfigError, match="sequence length 128 exceeds the model's max length 64"):
        _compile(exported("bert-embedding"), tmp_path, seq_lens=[32, 128])


def test_static_export_is_its_own_bucket(static_bert_onnx, tmp_path):
    fields = _compile(static_bert_onnx, tmp_path / "a")
    assert fields["settings"]["buckets"] == [[2, 16]] and fields["static_shape"] == [2, 16]
    assert fields["settings"]["bucket_source"] == "the model's static shape"
    with pytest.raises(ConfigError, match="static shape \\[2, 16\\]; it cannot take other sequence lengths"):
        _compile(static_bert_onnx, tmp_path / "b", seq_lens=[32])


def test_ops_the_npu_cannot_run_are_named():
    import openvino.opset13 as ops

    x = ops.parameter([4], ov.Type.f32, name="x")
    model = ov.Model([ops.non_zero(x)], [x], "nonzero")
    assert openvino_npu.unsupported_ops(model) == ["NonZero"]


@pytest.mark.parametrize(
    ("options", "field"),
    [({"precision": "fp32"}, "precision"), ({"seq_lens": "a,b"}, "seq_lens"), ({"batch": 0}, "batch"), ({"device": "NPU"}, "device")],
)
def test_invalid_option_names_the_field(bert_onnx, tmp_path, options, field):
    with pytest.raises(ConfigError, match=f"target openvino-npu: option {field}"):
        compile_artifact(bert_onnx, artifact.read_manifest(bert_onnx), TARGET, tmp_path / TARGET, options=options)
    assert list(tmp_path.iterdir()) == []


def test_with_an_npu_blobs_are_exported_and_parity_runs(exported, encoders, texts, tmp_path, monkeypatch):
    """The NPU path end to end, with OpenVINO's CPU plugin standing in for the NPU."""
    monkeypatch.setattr(openvino_npu, "DEVICE", "CPU")
    src = exported("bert-embedding")
    out = tmp_path / TARGET
    manifest = compile_artifact(src, artifact.read_manifest(src), TARGET, out, options={"seq_lens": [16, 64]})
    assert manifest.pending is None and "parity_not_run" not in manifest.settings
    assert manifest.parity.passed and manifest.parity.runtime.startswith("openvino-npu (openvino ")
    assert manifest.settings["models"]["16"]["blob"] == "model_s16.blob"
    assert {"model_s16.blob", "model_s64.blob"} <= set(manifest.files)
    assert manifest.settings["op_check"] == "known list + query_model(NPU)"
    encoder = encoders("bert-embedding")
    with Predictor(out) as predictor:
        assert predictor.session.used == {16: "blob", 64: "blob"}
        got = predictor.predict(texts)
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts, max_length=64)), atol=parity.TOLERANCES["fp16"].atol)


def test_reference_longer_than_the_buckets_is_refused_where_parity_would_run(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_npu, "DEVICE", "CPU")
    with pytest.raises(ConfigError, match="the parity texts reach 64 tokens but the longest static sequence bucket is 32"):
        _compile(exported("bert-embedding"), tmp_path, seq_lens=[16, 32])
