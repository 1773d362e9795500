"""Target ort-mobile (edgekit/targets/ort_mobile.py): .ort model + reduced operator config.

The .ort model runs here on ONNX Runtime's CPU provider, so compile checks parity with
PyTorch at the fp32 tolerance (atol 1e-3, every argmax / cosine >= 0.9999).
"""

from __future__ import annotations

import shutil

import numpy as np
import onnxruntime
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact, devices, parity
from edgekit.deploy.devices import DeviceProfile, RuntimeSpec
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets import Session, resolve_options
from edgekit.deploy.targets.ort_mobile import CONFIG_FILE, MODEL_FILE, OrtMobileTarget, required_operators
from edgekit.errors import ArtifactError, ConfigError, EdgekitError

TARGET = "ort-mobile"
MODELS = ("bert-embedding", "distilbert-classifier")
CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def compiled(exported, tmp_path_factory) -> dict[str, tuple]:
    """name -> (artifact dir, manifest) of each model compiled for ort-mobile with default options."""
    root = tmp_path_factory.mktemp("ort-mobile")
    result = {}
    for name in MODELS:
        src = exported(name)
        out = root / name / TARGET
        result[name] = (out, compile_artifact(src, artifact.read_manifest(src), TARGET, out))
    return result


@pytest.fixture
def phones(monkeypatch):
    """Device profiles built here (the shipped YAMLs belong to someone else), served by devices.get."""

    def ort(eps):
        return [RuntimeSpec(name="onnxruntime", versions=">=1.20", execution_providers=eps)]

    profiles = {
        "android-phone": DeviceProfile(
            name="android-phone",
            description="Android phone, NNAPI + XNNPACK",
            arch="aarch64",
            targets=["ort-mobile"],
            runtimes=ort(["NnapiExecutionProvider", "XnnpackExecutionProvider"]),
        ),
        "npu-phone": DeviceProfile(
            name="npu-phone",
            description="phone NPU that takes static shapes",
            arch="aarch64",
            targets=["ort-mobile"],
            runtimes=ort(["QNNExecutionProvider"]),
            static_shapes=True,
        ),
        "bad-ep-phone": DeviceProfile(
            name="bad-ep-phone",
            description="typo in its EP",
            arch="aarch64",
            targets=["ort-mobile"],
            runtimes=ort(["NnapiExecutionProvidr"]),
        ),
        "cpu-box": DeviceProfile(name="cpu-box", description="ORT CPU only", arch="x86_64", targets=["ort-cpu"], runtimes=ort([CPU])),
        "no-ort-board": DeviceProfile(
            name="no-ort-board", description="lists ort-mobile but no onnxruntime", arch="aarch64", targets=["ort-mobile"]
        ),
    }
    monkeypatch.setattr(devices, "all_profiles", lambda: profiles)
    return profiles


def _compile(onnx_dir, out, **options):
    """Options resolved as every caller resolves them (device profile applied), then target.compile
    itself, so a ConfigError arrives as raised (compile_artifact wraps it)."""
    out.mkdir(parents=True, exist_ok=True)
    return OrtMobileTarget().compile(onnx_dir, artifact.read_manifest(onnx_dir), resolve_options(TARGET, options), out)


def _resolved(**options) -> dict:
    """The options compile_artifact gets once a device profile is applied."""
    resolved = resolve_options(TARGET, options)
    return resolved.model_dump(include=resolved.model_fields_set)


@pytest.mark.parametrize("name", MODELS)
def test_ort_model_passes_parity_with_torch_at_the_fp32_tolerance(compiled, exported, name):
    out, manifest = compiled[name]
    assert (manifest.kind, manifest.target, manifest.model_file, manifest.precision) == ("compiled", TARGET, MODEL_FILE, "fp32")
    assert manifest.parity.passed is True
    assert manifest.parity.atol == parity.Tolerance().atol == 1e-3
    assert manifest.parity.max_abs_diff < 1e-4
    assert manifest.parity.runtime == f"ort-mobile (onnxruntime {onnxruntime.__version__})"
    assert manifest.parent == artifact.manifest_sha256(exported(name))
    assert {MODEL_FILE, CONFIG_FILE, "tokenizer.json", parity.REFERENCE} <= set(manifest.files)
    assert (out / MODEL_FILE).read_bytes()[4:8] == b"ORTM"  # the ORT format's flatbuffer identifier
    assert artifact.read_manifest(out) == manifest


def test_required_operators_config_is_kept_for_a_minimal_build(compiled):
    out, manifest = compiled["bert-embedding"]
    text = (out / CONFIG_FILE).read_text()
    assert "/tmp" not in text and f"# - {MODEL_FILE}" in text
    ops = required_operators(out / CONFIG_FILE)
    assert ops == manifest.settings["operators"]
    assert any("MatMul" in names for names in ops.values())
    assert all(";" in key for key in ops)
    assert manifest.settings["required_operators"] == CONFIG_FILE


def test_manifest_records_format_style_platform_and_providers(compiled):
    _, manifest = compiled["bert-embedding"]
    assert manifest.runtime == {"onnxruntime": onnxruntime.__version__}
    s = manifest.settings
    assert (s["format"], s["optimization_style"], s["target_platform"]) == ("ORT", "Fixed", "arm")
    assert s["execution_providers"] == [CPU] and s["device"] is None and s["notes"] == []
    assert manifest.static_shape is None


@pytest.mark.parametrize("name", MODELS)
def test_predictor_runs_the_ort_model_on_this_cpu(compiled, encoders, texts, name):
    out, _ = compiled[name]
    encoder = encoders(name)
    with Predictor(out) as predictor:
        assert isinstance(predictor.session, Session)
        assert isinstance(predictor.target, OrtMobileTarget)
        assert predictor.session.providers == [CPU]
        got = predictor.predict(texts, batch=2)
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts)), atol=1e-4)


def test_seq_lens_and_batch_make_a_static_model(exported, encoders, texts, tmp_path):
    src = exported("bert-embedding")
    out = tmp_path / TARGET
    manifest = compile_artifact(src, artifact.read_manifest(src), TARGET, out, options={"seq_lens": "64", "batch": "2"})
    assert manifest.static_shape == [2, 64]
    assert all(t.shape == [2, 64] for t in manifest.inputs) and manifest.outputs[0].shape == [2, 32]
    assert manifest.parity.passed and manifest.parity.max_abs_diff < 1e-4
    sess = onnxruntime.InferenceSession(str(out / MODEL_FILE), providers=[CPU])
    assert all(i.shape == [2, 64] for i in sess.get_inputs())
    encoder = encoders("bert-embedding")
    with Predictor(out) as predictor:
        got = predictor.predict(texts)  # 5 texts: the last batch is padded to 2 rows
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts, max_length=64)), atol=1e-4)


def test_data_fixes_the_longest_of_its_lengths(exported, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(["a b c d e f g h i j k l m n o p q r s t"] * 3 + ["short"]) + "\n")
    with pytest.raises(ConfigError, match="the parity texts reach 64 tokens but the longest static fixed sequence length is 32"):
        _compile(exported("bert-embedding"), tmp_path / "a", data=str(path))  # 22 tokens: rounded up to 32
    fields = _compile(exported("bert-embedding"), tmp_path / "b", seq_lens=[64], batch=1)
    assert fields["static_shape"] == [1, 64]


def test_seq_lens_shorter_than_the_parity_texts_or_the_model_are_refused(exported, tmp_path):
    with pytest.raises(ConfigError, match="the parity texts reach 64 tokens but the longest static fixed sequence length is 32"):
        _compile(exported("bert-embedding"), tmp_path, seq_lens=32)
    with pytest.raises(ConfigError, match="sequence length 128 exceeds the model's max length 64"):
        _compile(exported("bert-embedding"), tmp_path, seq_lens=128)


def test_seq_lens_of_a_static_export_must_match(static_bert_onnx, tmp_path):
    with pytest.raises(ConfigError, match="cannot fix the input shape to \\[1, 16\\]"):
        _compile(static_bert_onnx, tmp_path, seq_lens=16, batch=1)


def test_device_profile_execution_providers_are_recorded(exported, phones, tmp_path):
    src = exported("distilbert-classifier")
    out = tmp_path / TARGET
    manifest = compile_artifact(src, artifact.read_manifest(src), TARGET, out, options=_resolved(device="android-phone"))
    s = manifest.settings
    assert s["execution_providers"] == ["NnapiExecutionProvider", "XnnpackExecutionProvider", CPU]
    assert s["device"]["device"] == "android-phone" and s["device"]["versions"] == ">=1.20"
    assert s["target_platform"] == "arm"
    assert "seq_lens" in s["notes"][0] and "NnapiExecutionProvider" in s["notes"][0]
    # Neither NNAPI nor XNNPACK is in this onnxruntime: the session falls back to the CPU, and parity ran.
    assert manifest.parity.passed
    with Predictor(out) as predictor:
        assert predictor.session.providers == [CPU]


def test_explicit_providers_override_the_device(exported, phones, tmp_path):
    fields = _compile(
        exported("bert-embedding"),
        tmp_path,
        device="android-phone",
        execution_providers="XnnpackExecutionProvider",
        target_platform="amd64",
    )
    assert fields["settings"]["execution_providers"] == ["XnnpackExecutionProvider", CPU]
    assert fields["settings"]["target_platform"] == "amd64"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"execution_providers": ["FooExecutionProvider"]}, "unknown execution provider 'FooExecutionProvider'"),
        ({"device": "bad-ep-phone"}, "unknown execution provider 'NnapiExecutionProvidr'"),
        ({"device": "no-such-phone"}, "unknown device 'no-such-phone'"),
        ({"device": "cpu-box"}, "device cpu-box does not run target 'ort-mobile'"),
        ({"device": "no-ort-board"}, "device 'no-ort-board' names no onnxruntime runtime"),
        ({"device": "npu-phone"}, "device 'npu-phone' runs only static shapes"),
    ],
)
def test_bad_device_or_provider_is_a_clear_error(exported, phones, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message) as err:
        _compile(exported("bert-embedding"), tmp_path, **options)
    assert err.value.hint
    if "unknown execution provider" in message:
        assert "NnapiExecutionProvider" in err.value.hint and CPU in err.value.hint
    if "unknown device" in message:
        assert "android-phone" in err.value.hint


def test_bad_provider_through_compile_artifact_leaves_nothing(exported, tmp_path):
    src = exported("bert-embedding")
    with pytest.raises(EdgekitError, match="unknown execution provider 'FooExecutionProvider'"):
        compile_artifact(
            src, artifact.read_manifest(src), TARGET, tmp_path / TARGET, options={"execution_providers": "FooExecutionProvider"}
        )
    assert list(tmp_path.iterdir()) == []


def test_static_device_with_a_fixed_shape_compiles(exported, phones, tmp_path):
    fields = _compile(exported("bert-embedding"), tmp_path, device="npu-phone", seq_lens="64")
    assert fields["static_shape"] == [1, 64]
    assert fields["settings"]["execution_providers"] == ["QNNExecutionProvider", CPU]
    assert fields["settings"]["notes"] == []


def test_runtime_optimization_style_loads_with_saved_optimizations(exported, tmp_path):
    src = exported("bert-embedding")
    manifest = compile_artifact(src, artifact.read_manifest(src), TARGET, tmp_path / TARGET, options={"optimization_style": "Runtime"})
    assert manifest.settings["optimization_style"] == "Runtime"
    assert manifest.parity.passed and manifest.parity.max_abs_diff < 1e-4


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"seq_lens": "1xfoo"}, "seq_lens"),
        ({"seq_lens": [2]}, "seq_lens"),
        ({"batch": 0, "seq_lens": 64}, "batch"),
        ({"optimization_style": "Max"}, "optimization_style"),
        ({"target_platform": "riscv"}, "target_platform"),
    ],
)
def test_invalid_option_names_the_field(bert_onnx, tmp_path, options, field):
    with pytest.raises(ConfigError, match=f"target ort-mobile: option {field}") as err:
        compile_artifact(bert_onnx, artifact.read_manifest(bert_onnx), TARGET, tmp_path / TARGET, options=options)
    assert "execution_providers" in err.value.hint
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("victim", [MODEL_FILE, CONFIG_FILE])
def test_tampered_files_are_detected(compiled, tmp_path, victim):
    out = shutil.copytree(compiled["bert-embedding"][0], tmp_path / TARGET)
    with open(out / victim, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match=f"{victim} does not match its sha256"):
        Predictor(out)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"seq_lens": "32,64"}, "ort-mobile fixes one shape: give one sequence length"),
        ({"batch": 2}, "batch fixes the shape together with seq_lens"),
    ],
)
def test_one_fixed_shape_only(options, message):
    with pytest.raises(ConfigError, match=f"target ort-mobile: options: {message}"):
        resolve_options(TARGET, options)
