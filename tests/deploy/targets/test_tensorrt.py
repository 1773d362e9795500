"""Target jetson (edgekit/targets/tensorrt.py): TensorRT engines for NVIDIA Jetson.

TensorRT cannot be installed here, so these tests check everything that needs no GPU:
the TensorRT names edgekit uses against the names compiled into the TensorRT 10 and 11
Python bindings, the ONNX support check, the optimization profile, the build plan and
scripts, pending manifests, and the refusals. The builder and the session then run
against a stand-in ``tensorrt`` module (and ``cuda.bindings.runtime``) that offers only
the names in ``TRT_API``, so every line that calls TensorRT runs here too; what TensorRT
itself does with those calls is checked only on a Jetson (marker ``jetson``).
"""

from __future__ import annotations

import base64
import ctypes
import importlib.machinery
import json
import runpy
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact, data, parity
from edgekit.deploy.devices import DeviceProfile, RuntimeSpec
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets import TARGETS
from edgekit.deploy.targets import tensorrt_plan as plan
from edgekit.deploy.targets.tensorrt import JetsonOptions, JetsonTarget, profile_major
from edgekit.deploy.targets.tensorrt_device import finish, main
from edgekit.deploy.targets.tensorrt_engine import TRT_API, TRT_API_10, build_engine, l4t_release
from edgekit.errors import ConfigError, TargetError

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

TARGET = "jetson"
API_DIR = data.shipped("tensorrt_api")
ORIN = dict(description="test Jetson", arch="aarch64", targets=[TARGET], precisions=["fp32", "fp16", "int8"], compute_capability="8.7")


def names(major: int) -> set[str]:
    return {line for line in (API_DIR / f"{major}.x.txt").read_text().splitlines() if line and not line.startswith("#")}


def present(component: str, listed: set[str]) -> bool:
    # The linker stores a string that ends a longer one only once ('Builder' inside
    # 'IExprBuilder'), so a name may appear only as the tail of a longer string.
    return component in listed or any(n.endswith(component) for n in listed)


def device(**kw) -> DeviceProfile:
    return DeviceProfile(**{**ORIN, "name": "jetson-test", "runtimes": [RuntimeSpec(name="tensorrt", versions=">=10.3,<11")], **kw})


@pytest.fixture
def profiles(monkeypatch):
    """Device profiles built here, served by edgekit.deploy.devices.get (no YAML files needed)."""
    table = {
        "agx": device(name="agx", dla_cores=2, dla_precisions=["fp16", "int8"]),
        "nano": device(name="nano", dla_cores=0),
        "thor": device(name="thor", compute_capability="11.0", runtimes=[RuntimeSpec(name="tensorrt", versions=">=11.4")]),
    }
    monkeypatch.setattr("edgekit.deploy.devices.get", lambda name: table[name])
    return table


def compile_jetson(src: Path, out: Path, **options):
    return compile_artifact(src, artifact.read_manifest(src), TARGET, out / TARGET, options=options)


def edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of an exported artifact whose graph ``edit`` changed (manifest rewritten)."""
    shutil.copytree(src, dst)
    model = onnx.load(str(dst / "model.onnx"))
    edit(model)
    onnx.save(model, str(dst / "model.onnx"))
    artifact.write_manifest(dst, artifact.read_manifest(dst, verify=False))
    return dst


def add_custom_op(model) -> None:
    g = model.graph
    g.node.append(helper.make_node("Frobnicate", [g.output[0].name], ["frobbed"], domain="com.example", name="frob_0"))
    g.output.append(helper.make_tensor_value_info("frobbed", TensorProto.FLOAT, None))
    model.opset_import.append(helper.make_opsetid("com.example", 1))


def add_qdq(model) -> None:
    """Quantize the first MatMul's activation input (what a QDQ export looks like)."""
    g = model.graph
    mm = next(n for n in g.node if n.op_type == "MatMul")
    g.initializer.extend(
        [helper.make_tensor("q_scale", TensorProto.FLOAT, [], [0.05]), helper.make_tensor("q_zero", TensorProto.INT8, [], [0])]
    )
    q = helper.make_node("QuantizeLinear", [mm.input[0], "q_scale", "q_zero"], ["q_out"], name="q0")
    dq = helper.make_node("DequantizeLinear", ["q_out", "q_scale", "q_zero"], ["dq_out"], name="dq0")
    mm.input[0] = "dq_out"
    index = list(g.node).index(mm)
    g.node.insert(index, dq)
    g.node.insert(index, q)


# ---------------------------------------------------------------- TensorRT names


def test_every_tensorrt_name_edgekit_uses_exists_in_tensorrt_10_and_11():
    for major, used in ((10, TRT_API + TRT_API_10), (11, TRT_API)):
        listed = names(major)
        missing = [path for path in used if not all(present(part, listed) for part in path.split("."))]
        assert not missing, f"not in the TensorRT {major} Python bindings: {missing}"


def test_the_name_lists_catch_a_removed_api():
    # TensorRT 11 removed weak typing (BuilderFlag.FP16, INT8) and platform_has_fast_fp16:
    # the lists show it, so a name edgekit used that 11 dropped would fail the test above.
    assert "FP16" in names(10) and not present("FP16", names(11))
    assert "platform_has_fast_fp16" in names(10) and "platform_has_fast_fp16" not in names(11)
    assert not present("execute_async_v4", names(10) | names(11))


@pytest.mark.parametrize(("major", "wheel"), [(10, "tensorrt-cu12-bindings==10.16.1.11"), (11, "tensorrt-cu13-bindings==11.4.0.106")])
def test_name_lists_say_which_wheel_they_come_from(major, wheel):
    header = (API_DIR / f"{major}.x.txt").read_text().splitlines()[:3]
    assert wheel in header[1] and "tensorrt_bindings/tensorrt.so" in header[2]


def test_jetson_is_registered():
    assert TARGETS[TARGET] is JetsonTarget
    assert (JetsonTarget.runtime, JetsonTarget.options_model) == ("tensorrt", JetsonOptions)


# ---------------------------------------------------------------- compile without TensorRT


def test_dynamic_export_compiles_to_a_pending_plan(exported, tmp_path):
    src = exported("bert-classifier")
    manifest = compile_jetson(src, tmp_path)
    out = tmp_path / TARGET
    assert manifest.pending and "build_engine.sh" in manifest.pending
    assert "tensorrt is not installed here" in manifest.settings["parity_not_run"]
    assert (manifest.model_file, manifest.precision, manifest.runtime) == ("model.onnx", "fp16", {"tensorrt": "not installed here"})
    assert manifest.parity is None
    assert (out / "model.onnx").read_bytes() == (src / "model.onnx").read_bytes()
    assert {"model.onnx", "build_engine.sh", "build_engine.py", "tokenizer.json", parity.REFERENCE} <= set(manifest.files)
    s = manifest.settings
    assert s["shapes"] == {
        name: {"min": [1, 1], "opt": [1, 128], "max": [8, 128]} for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert (s["tensorrt_major"], s["strongly_typed"], s["builder_flags"], s["dla"]) == (10, False, ["FP16"], None)
    assert s["support_check"]["failures"] == [] and s["support_check"]["unsupported"] == {}
    assert "TensorRT 10.15" in s["support_check"]["table"]
    cmd = s["plan"]["trtexec"].split()
    assert cmd[:2] == ["trtexec", "--onnx=model.onnx"]
    for flag in (
        "--saveEngine=model.engine",
        "--timingCacheFile=timing.cache",
        "--memPoolSize=workspace:1024M",
        "--fp16",
        "--minShapes=input_ids:1x1,attention_mask:1x1,token_type_ids:1x1",
        "--optShapes=input_ids:1x128,attention_mask:1x128,token_type_ids:1x128",
        "--maxShapes=input_ids:8x128,attention_mask:8x128,token_type_ids:8x128",
    ):
        assert flag in cmd
    assert not {"--int8", "--stronglyTyped", "--allowGPUFallback"} & set(cmd)
    script = (out / "build_engine.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash") and (out / "build_engine.sh").stat().st_mode & stat.S_IXUSR
    assert all(arg in script for arg in cmd[1:]) and "/usr/src/tensorrt/bin/trtexec" in script and "build_engine.py --adopt" in script
    assert subprocess.run(["bash", "-n", str(out / "build_engine.sh")], capture_output=True).returncode == 0
    assert "from edgekit.deploy.targets.tensorrt_device import main" in (out / "build_engine.py").read_text()
    assert artifact.read_manifest(out) == manifest


def test_static_export_builds_its_one_shape(static_bert_onnx, tmp_path):
    manifest = compile_jetson(static_bert_onnx, tmp_path, precision="fp32", max_batch=4)
    shapes = manifest.settings["shapes"]
    assert shapes == {t.name: {"min": [2, 16], "opt": [2, 16], "max": [2, 16]} for t in manifest.inputs}
    assert "ignored: max_batch" in manifest.settings["sequence"]
    cmd = manifest.settings["plan"]["trtexec"]
    assert "Shapes=" not in cmd and "--fp16" not in cmd  # a static graph takes no shapes; fp32 takes no flag
    assert manifest.static_shape == [2, 16] and manifest.pending


def test_sequence_range_from_seq_lens_and_from_data(exported, tmp_path):
    src = exported("bert-embedding")  # max_length 64
    manifest = compile_jetson(src, tmp_path / "a", seq_lens="16, 24,48", max_batch=4, opt_batch=2)
    assert manifest.settings["shapes"]["input_ids"] == {"min": [1, 16], "opt": [2, 24], "max": [4, 48]}
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(data.sample_texts()[:200]))
    manifest = compile_jetson(src, tmp_path / "b", data=str(texts))
    seq = manifest.settings["shapes"]["input_ids"]
    assert seq["min"][1] < seq["opt"][1] <= seq["max"][1] <= 64 and seq["opt"][1] % 8 == 0
    assert manifest.settings["sequence"].startswith(f"{texts}: 200 texts, tokens min")


def test_seq_lens_longer_than_the_model_are_refused(exported, tmp_path):
    with pytest.raises(TargetError, match=r"jetson: sequence length 100 exceeds the model's max length 64"):
        compile_jetson(exported("bert-embedding"), tmp_path, seq_lens=[16, 100])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "fp32", "dla_core": 0}, "DLA runs fp16 or int8 only"),
        ({"opt_batch": 9}, "opt_batch 9 exceeds max_batch 8"),
        ({"seq_lens": [8], "data": "x.txt"}, "seq_lens or data, not both"),
        ({"tensorrt_major": 12}, "tensorrt_major"),
        ({"precision": "int4"}, "precision"),
    ],
)
def test_invalid_options(bert_onnx, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        compile_jetson(bert_onnx, tmp_path, **options)
    assert list(tmp_path.iterdir()) == []


def test_options_from_the_command_line_are_strings():
    options = JetsonOptions.model_validate({"seq_lens": "32,64", "tensorrt_major": "11", "dla_core": "1", "gpu_fallback": "false"})
    assert (options.seq_lens, options.tensorrt_major, options.dla_core, options.gpu_fallback) == ([32, 64], 11, 1, False)


# ---------------------------------------------------------------- the support check


def test_an_unsupported_operator_fails_with_its_name(exported, tmp_path):
    src = edited_copy(exported("bert-classifier"), tmp_path / "custom", add_custom_op)
    check = plan.check_graph(onnx.load(str(src / "model.onnx")), precision="fp16", trt_major=10)
    assert check.unsupported == {"com.example.Frobnicate": 1}
    assert check.failures == ["com.example.Frobnicate (1 node): a custom-domain operator needs a TensorRT plugin"]
    with pytest.raises(TargetError, match="cannot build this graph: com.example.Frobnicate"):
        compile_jetson(src, tmp_path)
    assert not (tmp_path / TARGET).exists()


def test_an_operator_the_parser_lacks_and_a_type_it_lacks(exported):
    model = onnx.load(str(exported("bert-classifier") / "model.onnx"))
    g = model.graph
    g.node.append(helper.make_node("Det", [g.output[0].name], ["det"]))
    g.node.append(helper.make_node("Cast", [g.output[0].name], ["as_double"], to=TensorProto.DOUBLE))
    g.node.append(helper.make_node("Erf", ["as_double"], ["erf_double"]))
    check = plan.check_graph(model, precision="fp16", trt_major=10)
    assert check.unsupported == {"Det": 1}
    assert any(w.startswith("Erf on DOUBLE tensors (1 node)") and "casts DOUBLE down" in w for w in check.type_warnings)


def test_an_opset_outside_the_parsers_range_fails(exported):
    model = onnx.load(str(exported("bert-classifier") / "model.onnx"))
    model.opset_import[0].version = 8
    assert "opset 8 is outside the range" in plan.check_graph(model, precision="fp32", trt_major=10).failures[0]


def test_int8_needs_qdq_nodes(exported, tmp_path):
    src = exported("bert-embedding")
    with pytest.raises(TargetError, match="precision int8 needs Q/DQ"):
        compile_jetson(src, tmp_path / "plain", precision="int8")
    qdq = edited_copy(src, tmp_path / "qdq", add_qdq)
    manifest = compile_jetson(qdq, tmp_path / "q10", precision="int8")
    assert manifest.settings["builder_flags"] == ["INT8", "FP16"] and "--int8 --fp16" in manifest.settings["plan"]["trtexec"]
    manifest = compile_jetson(qdq, tmp_path / "q11", precision="int8", tensorrt_major=11)
    cmd = manifest.settings["plan"]["trtexec"]
    assert manifest.settings["strongly_typed"] and "--stronglyTyped" in cmd and "--int8" not in cmd
    assert manifest.settings["plan"]["onnx"] == "model.onnx"


def test_tensorrt_11_builds_fp16_from_an_fp16_graph(exported, tmp_path):
    manifest = compile_jetson(exported("distilbert-classifier"), tmp_path, tensorrt_major=11)
    out = tmp_path / TARGET
    assert manifest.settings["plan"]["onnx"] == plan.FP16_ONNX and plan.FP16_ONNX in manifest.files
    cmd = manifest.settings["plan"]["trtexec"]
    assert f"--onnx={plan.FP16_ONNX}" in cmd and "--stronglyTyped" in cmd and "--fp16" not in cmd
    model = onnx.load(str(out / plan.FP16_ONNX))
    onnx.checker.check_model(model)
    assert {TensorProto.FLOAT16} <= {t.data_type for t in model.graph.initializer}
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.INT64] * 2  # inputs keep their types
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


# ---------------------------------------------------------------- devices and DLA


def test_dla_plan_lists_what_falls_back_to_the_gpu(profiles, exported, tmp_path):
    manifest = compile_jetson(exported("bert-classifier"), tmp_path, device="agx", dla_core=1, precision="fp16")
    s = manifest.settings
    assert s["dla"] == {"core": 1, "gpu_fallback": True} and s["device"] == "agx"
    fallback = s["support_check"]["dla_gpu_fallback"]
    assert {"MatMul", "Gather", "LayerNormalization", "Erf"} <= set(fallback) and "Add" not in fallback and "Constant" not in fallback
    assert any("static shapes only" in n for n in s["support_check"]["notes"])
    assert "--useDLACore=1 --allowGPUFallback" in s["plan"]["trtexec"]
    # DLA takes static shapes: the profile is pinned, and the manifest says so.
    assert s["shapes"]["input_ids"] == {"min": [1, 128], "opt": [1, 128], "max": [1, 128]}
    assert manifest.static_shape == [1, 128] and manifest.inputs[0].shape == [1, 128] and manifest.outputs[0].shape == [1, 3]
    assert s["pinned"] == {"tensorrt_major": 10, "compute_capability": "8.7"}
    with pytest.raises(TargetError, match="gpu_fallback is off but"):
        compile_jetson(exported("bert-classifier"), tmp_path / "strict", device="agx", dla_core=0, gpu_fallback=False)


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_dla_on_a_device_without_dla_is_a_clear_error(profiles, bert_onnx, tmp_path, precision):
    with pytest.raises(TargetError, match=r"jetson: device nano has no DLA cores, so dla_core=0 cannot be used") as err:
        compile_jetson(bert_onnx, tmp_path, device="nano", dla_core=0, precision=precision)
    assert "drop dla_core" in err.value.hint


def test_a_dla_core_the_device_lacks(profiles, bert_onnx, tmp_path):
    with pytest.raises(TargetError, match="device agx has 2 DLA core"):
        compile_jetson(bert_onnx, tmp_path, device="agx", dla_core=2)


def test_tensorrt_major_comes_from_the_device_profile(profiles, bert_onnx, tmp_path):
    assert profile_major(profiles["agx"]) == 10 and profile_major(profiles["thor"]) == 11
    assert profile_major(device(runtimes=[])) is None
    with pytest.raises(ConfigError, match="match both TensorRT 10 and 11"):
        profile_major(device(runtimes=[RuntimeSpec(name="tensorrt", versions=">=10.3")]))
    manifest = compile_jetson(bert_onnx, tmp_path, device="thor")
    assert (manifest.settings["tensorrt_major"], manifest.settings["tensorrt_major_from"]) == (11, "device thor")
    assert manifest.settings["pinned"] == {"tensorrt_major": 11, "compute_capability": "11.0"}


def test_l4t_release_is_read_from_nv_tegra_release(tmp_path):
    f = tmp_path / "nv_tegra_release"
    f.write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n")
    assert l4t_release(f) == "r36.4.3"
    assert l4t_release(tmp_path / "absent") is None


# ---------------------------------------------------------------- pending artifacts


def test_a_pending_artifact_cannot_be_run(bert_onnx, tmp_path):
    compile_jetson(bert_onnx, tmp_path)
    with pytest.raises(TargetError, match="not runnable yet: engine to be built on the device"):
        Predictor(tmp_path / TARGET)
    manifest = artifact.read_manifest(tmp_path / TARGET)
    with pytest.raises(TargetError, match="not built yet"):
        JetsonTarget().load(tmp_path / TARGET, manifest)
    assert "tensorrt is not installed here" in JetsonTarget().executable_here(manifest)
    assert main([str(tmp_path / TARGET)]) == 2  # build_engine.py without TensorRT: one line, exit code 2


def test_fit_reference_keeps_the_texts_a_profile_takes():
    feed = {"input_ids": np.arange(40).reshape(5, 8), "attention_mask": np.array([[1] * n + [0] * (8 - n) for n in (2, 8, 5, 3, 6)])}
    ref = np.arange(5.0)
    shapes = {k: {"min": [1, 1], "opt": [1, 4], "max": [4, 6]} for k in feed}
    fed, kept, batch = plan.fit_reference(feed, ref, shapes, pad_id=0)
    assert kept.tolist() == [0.0, 2.0, 3.0, 4.0] and fed["input_ids"].shape == (4, 6) and batch == 4
    static = {k: {"min": [3, 10], "opt": [3, 10], "max": [3, 10]} for k in feed}
    fed, kept, batch = plan.fit_reference(feed, ref, static, pad_id=7)
    assert (
        fed["input_ids"].shape == (3, 10)
        and batch == 3
        and (fed["input_ids"][:, 8:] == 7).all()
        and (fed["attention_mask"][:, 8:] == 0).all()
    )


# ---------------------------------------------------------------- against a stand-in TensorRT


class _Enum:
    def __init__(self, **members):
        for k, v in members.items():
            setattr(self, k, v)


class _Memory:
    """Device memory of the stand-in CUDA runtime: pointer -> bytearray."""

    def __init__(self):
        self.blocks: dict[int, bytearray] = {}
        self.next = 0x1000


def fake_cudart(memory: _Memory, cc=(8, 7)) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = _Enum(cudaSuccess=0)
    rt.cudaMemcpyKind = _Enum(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.cudaDeviceAttr = _Enum(cudaDevAttrComputeCapabilityMajor=75, cudaDevAttrComputeCapabilityMinor=76)

    def malloc(n):
        ptr, memory.next = memory.next, memory.next + n + 256
        memory.blocks[ptr] = bytearray(n)
        return 0, ptr

    def memcpy(dst, src, count, kind, stream):
        if kind == 1:
            memory.blocks[dst][:count] = ctypes.string_at(src, count)
        else:
            ctypes.memmove(dst, bytes(memory.blocks[src][:count]), count)
        return (0,)

    rt.cudaMalloc = malloc

    def free(ptr):
        memory.blocks.pop(ptr)
        return (0,)

    rt.cudaFree = free
    rt.cudaMemcpyAsync = memcpy
    rt.cudaStreamCreate = lambda: (0, 7)
    rt.cudaStreamSynchronize = lambda s: (0,)
    rt.cudaStreamDestroy = lambda s: (0,)
    rt.cudaDeviceGetAttribute = lambda attr, dev: (0, cc[0] if attr == 75 else cc[1])
    return rt


def fake_tensorrt(memory: _Memory, version: str = "10.3.0.30") -> types.ModuleType:
    """TensorRT's Python API as edgekit uses it; only names in TRT_API (and TRT_API_10 on 10) exist."""
    ort = pytest.importorskip("onnxruntime")
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.nptype = lambda dtype: np.dtype(dtype)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.NetworkDefinitionCreationFlag = type("NetworkDefinitionCreationFlag", (), {"STRONGLY_TYPED": 1})
    flags = {"GPU_FALLBACK": "GPU_FALLBACK"} | ({"FP16": "FP16", "INT8": "INT8"} if version.startswith("10.") else {})
    trt.BuilderFlag = type("BuilderFlag", (), flags)
    trt.MemoryPoolType = type("MemoryPoolType", (), {"WORKSPACE": "WORKSPACE"})
    trt.DeviceType = type("DeviceType", (), {"DLA": "DLA"})
    trt.TensorIOMode = type("TensorIOMode", (), {"INPUT": "INPUT"})
    dla_layers = {"Add", "Mul", "Sub", "Div", "Tanh", "Softmax", "Reshape", "Transpose"}

    class ITensor:
        __slots__ = ("name", "shape")

        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class ILayer:
        __slots__ = ("name", "type")

        def __init__(self, name, kind):
            self.name, self.type = name, kind

    class INetworkDefinition:
        __slots__ = ("_flags", "_inputs", "_layers", "_onnx")

        def __init__(self, flags):
            self._flags, self._inputs, self._layers, self._onnx = flags, [], [], b""

        num_inputs = property(lambda self: len(self._inputs))
        num_layers = property(lambda self: len(self._layers))

        def get_input(self, i):
            return self._inputs[i]

        def get_layer(self, i):
            return self._layers[i]

    class ParserError:
        __slots__ = ("_node", "_name", "_op")

        def __init__(self, node, name, op):
            self._node, self._name, self._op = node, name, op

        def desc(self):
            return f"No importer registered for op: {self._op}"

        def node(self):
            return self._node

        def node_name(self):
            return self._name

        def node_operator(self):
            return self._op

    class OnnxParser:
        __slots__ = ("_network", "_errors")

        def __init__(self, network, logger):
            self._network, self._errors = network, []

        def parse_from_file(self, path):
            model = onnx.load(path)
            net = self._network
            net._onnx = Path(path).read_bytes()
            net._inputs = [
                ITensor(i.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in i.type.tensor_type.shape.dim))
                for i in model.graph.input
            ]
            net._layers = [ILayer(n.name, n.op_type) for n in model.graph.node if n.op_type != "Constant"]
            self._errors = [ParserError(i, n.name, n.op_type) for i, n in enumerate(model.graph.node) if n.domain not in ("", "ai.onnx")]
            return not self._errors

        num_errors = property(lambda self: len(self._errors))

        def get_error(self, i):
            return self._errors[i]

    class ITimingCache:
        __slots__ = ()

        def serialize(self):
            return b"timing-cache"

    class IOptimizationProfile:
        __slots__ = ("_shapes",)

        def __init__(self):
            self._shapes = {}

        def set_shape(self, name, lo, opt, hi):
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (lo, opt, hi)
            self._shapes[name] = [list(lo), list(opt), list(hi)]

    class IBuilderConfig:
        __slots__ = ("_flags", "_pool", "_profiles", "default_device_type", "DLA_core")

        def __init__(self):
            self._flags, self._pool, self._profiles, self.default_device_type, self.DLA_core = [], {}, [], "GPU", -1

        def set_memory_pool_limit(self, pool, size):
            self._pool[pool] = size

        def set_flag(self, flag):
            self._flags.append(flag)

        def can_run_on_DLA(self, layer):  # noqa: N802 - TensorRT's name
            return layer.type in dla_layers

        def add_optimization_profile(self, profile):
            self._profiles.append(profile._shapes)

        def create_timing_cache(self, blob):
            return ITimingCache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return ITimingCache()

    class Builder:
        __slots__ = ()
        num_DLA_cores = 2

        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return INetworkDefinition(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            plan_ = {
                "onnx": base64.b64encode(network._onnx).decode(),
                "network_flags": network._flags,
                "flags": config._flags,
                "pool": config._pool,
                "profiles": config._profiles,
                "device": config.default_device_type,
                "dla_core": config.DLA_core,
            }
            return b"FAKE-ENGINE" + json.dumps(plan_).encode()

    class IExecutionContext:
        __slots__ = ("_engine", "_shapes", "_addresses")

        def __init__(self, engine):
            self._engine, self._shapes, self._addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            for lo, _, hi in engine_profile(self._engine, name):
                if not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
                    return False
            self._shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            batch = next(iter(self._shapes.values()))[0]
            meta = next(o for o in self._engine._sess.get_outputs() if o.name == name)
            return (batch, *meta.shape[1:])

        def set_tensor_address(self, name, ptr):
            self._addresses[name] = ptr

        def execute_async_v3(self, stream):
            e = self._engine
            feed = {
                n: np.frombuffer(bytes(memory.blocks[self._addresses[n]]), dtype=e._dtypes[n], count=int(np.prod(s))).reshape(s)
                for n, s in self._shapes.items()
            }
            for name, value in zip(e._outputs, e._sess.run(e._outputs, feed)):
                raw = np.ascontiguousarray(value, dtype=e._dtypes[name]).tobytes()
                memory.blocks[self._addresses[name]][: len(raw)] = raw
            return True

    def engine_profile(engine, name):
        return [p[name] for p in engine._plan["profiles"] if name in p]

    class ICudaEngine:
        __slots__ = ("_plan", "_sess", "_names", "_outputs", "_dtypes")

        def __init__(self, plan_):
            self._plan = plan_
            self._sess = ort.InferenceSession(base64.b64decode(plan_["onnx"]), providers=["CPUExecutionProvider"])
            types_ = {"tensor(int64)": np.int64, "tensor(float)": np.float32}
            io = [*self._sess.get_inputs(), *self._sess.get_outputs()]
            self._names = [t.name for t in io]
            self._outputs = [t.name for t in self._sess.get_outputs()]
            self._dtypes = {t.name: types_[t.type] for t in io}

        num_io_tensors = property(lambda self: len(self._names))

        def get_tensor_name(self, i):
            return self._names[i]

        def get_tensor_mode(self, name):
            return "OUTPUT" if name in self._outputs else "INPUT"

        def get_tensor_dtype(self, name):
            return self._dtypes[name]

        def create_execution_context(self):
            return IExecutionContext(self)

    class Runtime:
        __slots__ = ("DLA_core",)

        def __init__(self, logger):
            self.DLA_core = -1

        def deserialize_cuda_engine(self, blob):
            return ICudaEngine(json.loads(blob[len(b"FAKE-ENGINE") :])) if blob.startswith(b"FAKE-ENGINE") else None

    for cls in (
        Builder,
        IBuilderConfig,
        INetworkDefinition,
        ITensor,
        ILayer,
        OnnxParser,
        ParserError,
        ITimingCache,
        IOptimizationProfile,
        Runtime,
        ICudaEngine,
        IExecutionContext,
    ):
        setattr(trt, cls.__name__, cls)
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """Install the stand-in tensorrt and cuda.bindings.runtime; return a function to swap versions."""
    memory = _Memory()

    def install(version="10.3.0.30", cc=(8, 7)):
        trt, rt = fake_tensorrt(memory, version), fake_cudart(memory, cc)
        cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        cuda.bindings, bindings.runtime = bindings, rt
        for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
            monkeypatch.setitem(sys.modules, name, module)
        return trt

    install.memory = memory
    return install


def test_the_stand_in_offers_only_the_listed_names(fake_trt):
    trt = fake_trt()
    surface = set()
    for name, obj in vars(trt).items():
        if isinstance(obj, type):
            surface |= {f"{name}.{attr}" for attr in set(dir(obj)) - set(dir(object)) if not attr.startswith("_")}
        elif not name.startswith("__") or name == "__version__":
            surface.add(name)
    assert surface - {"__spec__"} <= set(TRT_API) | set(TRT_API_10), sorted(surface - set(TRT_API) - set(TRT_API_10))


def test_where_tensorrt_imports_compile_builds_the_engine_and_checks_parity(fake_trt, exported, encoders, texts, tmp_path):
    fake_trt()
    manifest = compile_jetson(exported("bert-classifier"), tmp_path, workspace_mb=256)
    out = tmp_path / TARGET
    assert manifest.pending is None and manifest.model_file == "model.engine"
    assert manifest.runtime == {"tensorrt": "10.3.0.30"} and manifest.parity.passed
    assert manifest.settings["built"]["compute_capability"] == "8.7"
    assert manifest.settings["pinned"] == {"tensorrt_version": "10.3.0.30", "compute_capability": "8.7"}
    assert {"model.engine", "timing.cache"} <= set(manifest.files)
    engine = json.loads((out / "model.engine").read_bytes()[len(b"FAKE-ENGINE") :])
    assert (engine["flags"], engine["pool"], engine["network_flags"], engine["device"]) == (["FP16"], {"WORKSPACE": 256 << 20}, 0, "GPU")
    assert engine["profiles"] == [{n: [[1, 1], [1, 128], [8, 128]] for n in ("input_ids", "attention_mask", "token_type_ids")}]
    with Predictor(out) as predictor:
        got = predictor.predict(texts, batch=16)  # more rows than the profile's 8: the session splits them
    encoder = encoders("bert-classifier")
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts)), atol=1e-4)


def test_dla_build_sets_the_core_and_reports_gpu_layers(fake_trt, profiles, exported, tmp_path):
    fake_trt()
    manifest = compile_jetson(exported("bert-classifier"), tmp_path, device="agx", dla_core=1)
    engine = json.loads((tmp_path / TARGET / "model.engine").read_bytes()[len(b"FAKE-ENGINE") :])
    assert (engine["device"], engine["dla_core"], engine["flags"]) == ("DLA", 1, ["FP16", "GPU_FALLBACK"])
    assert engine["profiles"][0]["input_ids"] == [[1, 128]] * 3
    on_gpu = manifest.settings["built"]["dla_layers_on_gpu"]
    assert any("(MatMul)" in layer for layer in on_gpu) and not any("(Add)" in layer for layer in on_gpu)
    assert manifest.parity.passed


def test_tensorrt_11_builds_strongly_typed(fake_trt, exported, tmp_path):
    fake_trt("11.4.0.106")
    manifest = compile_jetson(exported("bert-embedding"), tmp_path)
    engine = json.loads((tmp_path / TARGET / "model.engine").read_bytes()[len(b"FAKE-ENGINE") :])
    assert (manifest.settings["tensorrt_major"], engine["network_flags"], engine["flags"]) == (11, 2, [])
    assert manifest.runtime == {"tensorrt": "11.4.0.106"} and manifest.parity.passed


def test_other_tensorrt_or_gpu_here_leaves_the_engine_pending(fake_trt, profiles, bert_onnx, tmp_path):
    fake_trt("10.3.0.30", cc=(8, 9))
    manifest = compile_jetson(bert_onnx, tmp_path / "a", tensorrt_major=11)
    assert manifest.pending and "the plan targets TensorRT 11" in manifest.settings["not_built_here"]
    manifest = compile_jetson(bert_onnx, tmp_path / "b", device="agx")
    assert manifest.pending and "this GPU is compute capability 8.9; device agx is 8.7" in manifest.settings["not_built_here"]


def test_loading_refuses_another_tensorrt_or_gpu(fake_trt, bert_onnx, tmp_path):
    fake_trt("10.3.0.30")
    manifest = compile_jetson(bert_onnx, tmp_path)
    out = tmp_path / TARGET
    fake_trt("10.4.0.26")
    assert "built with TensorRT 10.3.0.30, this is TensorRT 10.4.0.26" in JetsonTarget().executable_here(manifest)
    with pytest.raises(TargetError, match="refusing to load the engine: the engine was built with TensorRT 10.3.0.30"):
        JetsonTarget().load(out, manifest)
    with pytest.raises(TargetError, match="cannot run here"):
        Predictor(out)
    fake_trt("10.3.0.30", cc=(7, 2))
    with pytest.raises(TargetError, match="for GPU compute capability 8.7, this GPU is 7.2"):
        JetsonTarget().load(out, manifest)


def test_build_engine_py_finishes_a_pending_artifact_on_the_device(fake_trt, exported, tmp_path, monkeypatch, capsys):
    src = exported("distilbert-classifier")
    manifest = compile_jetson(src, tmp_path, seq_lens=[8, 32])
    out = tmp_path / TARGET
    assert manifest.pending
    fake_trt()
    with pytest.raises(TargetError, match="no model.engine to adopt"):
        finish(out, adopt=True)
    manifest = finish(out)
    assert manifest.pending is None and manifest.model_file == "model.engine" and manifest.parity.passed
    assert " of 32 reference texts" in manifest.settings["parity_rows"]  # the longest texts exceed the 32-token profile
    assert "not_built_here" not in manifest.settings and "parity_not_run" not in manifest.settings
    assert artifact.read_manifest(out) == manifest
    with Predictor(out) as predictor:
        assert predictor.predict(["A short sentence."]).shape == (1, 3)
    # build_engine.py (what build_engine.sh runs after trtexec) adopts the engine there is.
    monkeypatch.setattr(sys, "argv", ["build_engine.py", "--adopt"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(out / "build_engine.py"), run_name="__main__")
    assert done.value.code == 0 and "parity passed" in capsys.readouterr().out
    assert artifact.read_manifest(out).settings["built"]["built_with"] == "trtexec"


def test_parser_errors_name_the_node(fake_trt, exported, tmp_path):
    trt = fake_trt()
    src = edited_copy(exported("bert-classifier"), tmp_path / "custom", add_custom_op)
    settings = {"strongly_typed": False, "builder_flags": [], "workspace_mb": 64, "shapes": {}}
    with pytest.raises(TargetError, match="ONNX parser rejected model.onnx: Frobnicate node frob_0: No importer registered"):
        build_engine(trt, src / "model.onnx", tmp_path, settings)


@pytest.mark.jetson
def test_on_a_jetson_the_engine_is_built_and_runs(exported, tmp_path):
    pytest.importorskip("tensorrt")
    manifest = compile_jetson(exported("bert-classifier"), tmp_path)
    assert manifest.pending is None and manifest.parity.passed
