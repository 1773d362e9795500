"""Adding a target is one class plus one entry in TARGETS.

``OrtBasicTarget`` below is a small but real target: ONNX Runtime on the CPU with only the
basic graph optimizations saved offline and applied at load (the shipped ``ort-cpu`` saves
"extended" and applies "all"). Registered for the test only, it is compiled by the same
``compile_artifact`` as every shipped target (parity with PyTorch included), resolved with a
device profile by ``resolve_options``, and run through ``edgekit.deploy.runtime``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact, devices, targets
from edgekit.deploy.artifact import Manifest
from edgekit.deploy.devices import DeviceProfile
from edgekit.deploy.runtime import Predictor
from edgekit.deploy.targets.base import Session, Target, TargetOptions, runtime_version
from edgekit.deps import require
from edgekit.errors import ConfigError

NAME = "ort-basic"
MODEL_FILE = "model.basic.onnx"


class OrtBasicOptions(TargetOptions):
    level: Literal["disabled", "basic"] = "basic"


class OrtBasicSession:
    def __init__(self, path: Path, level: str, threads: int | None) -> None:
        ort = require("onnxruntime", for_=f"target {NAME}")
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC"}[level]
        )
        so.intra_op_num_threads = threads or 0
        self._sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self.level = level

    def __enter__(self) -> OrtBasicSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sess = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._sess.run(self.output_names, feed)))


class OrtBasicTarget:
    name: ClassVar[str] = NAME
    runtime: ClassVar[str] = "onnxruntime"
    description: ClassVar[str] = "ONNX Runtime, CPU, basic graph optimizations only"
    options_model: ClassVar[type[TargetOptions]] = OrtBasicOptions
    static_shapes: ClassVar[bool] = False
    model_suffixes: ClassVar[tuple[str, ...]] = (".onnx",)

    @classmethod
    def device_options(cls, profile: DeviceProfile) -> dict[str, Any]:
        return {"threads": profile.threads} if profile.threads else {}

    def check_available(self) -> None:
        require("onnxruntime", for_=f"target {self.name}")

    def compile(self, onnx_dir: Path, manifest: Manifest, options: OrtBasicOptions, out: Path) -> dict[str, Any]:
        ort = require("onnxruntime", for_=f"target {self.name}")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(out / MODEL_FILE)
        ort.InferenceSession(str(onnx_dir / manifest.model_file), so, providers=["CPUExecutionProvider"])
        return {
            "model_file": MODEL_FILE,
            "precision": manifest.precision,
            "runtime": {"onnxruntime": runtime_version(ort)},
            "settings": {"level": options.level, "threads": options.threads},
        }

    def runs_here(self) -> str | None:
        return None

    def executable_here(self, manifest: Manifest) -> str | None:
        return None

    def load(self, artifact_dir: Path, manifest: Manifest, options: TargetOptions | None = None) -> OrtBasicSession:
        level = getattr(options, "level", None) or manifest.settings["level"]
        threads = options.threads if options is not None else manifest.settings.get("threads")
        return OrtBasicSession(Path(artifact_dir) / manifest.model_file, level, threads)


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(targets.TARGETS, NAME, OrtBasicTarget)
    return OrtBasicTarget


def test_the_class_satisfies_the_protocol():
    assert isinstance(OrtBasicTarget(), Target)
    assert NAME not in targets.TARGETS  # registered only by the fixture


def test_a_registered_target_compiles_checks_parity_and_runs(registered, exported, encoders, texts, tmp_path):
    src = exported("bert-classifier")
    out = tmp_path / NAME
    manifest = compile_artifact(src, artifact.read_manifest(src), NAME, out, options={"threads": "1"})
    assert (manifest.kind, manifest.target, manifest.model_file) == ("compiled", NAME, MODEL_FILE)
    assert manifest.parity.passed and manifest.parity.max_abs_diff < 1e-4
    assert manifest.settings["level"] == "basic" and manifest.settings["threads"] == 1
    assert artifact.read_manifest(out) == manifest
    encoder = encoders("bert-classifier")
    with Predictor(out) as predictor:
        assert isinstance(predictor.target, OrtBasicTarget) and isinstance(predictor.session, Session)
        assert predictor.session.level == "basic"
        got = predictor.predict(texts, batch=2)
    np.testing.assert_allclose(got, encoder.run(encoder.tokenize(texts)), atol=1e-4)


def test_a_registered_target_takes_device_profiles_and_strict_options(registered):
    board = devices.DeviceProfile(name="board", description="d", arch="x86_64", targets=[NAME], threads=3)
    assert targets.resolve_options(NAME, {}, board).threads == 3
    assert targets.resolve_options(NAME, {"threads": 1}, board).threads == 1  # the user's option wins
    with pytest.raises(ConfigError, match=f"target {NAME}: option level: Input should be 'disabled' or 'basic'"):
        targets.resolve_options(NAME, {"level": "all"})
    with pytest.raises(ConfigError, match=f"target {NAME}: option optimization: Extra inputs are not permitted"):
        targets.resolve_options(NAME, {"optimization": "all"})
