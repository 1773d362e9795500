"""Every target in edgekit.deploy.targets.TARGETS keeps the contract: protocol, own tests,
strict options resolved in one place, device profiles that resolve, static shapes honoured."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest

from edgekit.deploy import artifact, devices, targets
from edgekit.deploy.targets.base import Target, TargetOptions
from edgekit.errors import ConfigError, EdgekitError, TargetError

HERE = Path(__file__).parent


@pytest.fixture(params=sorted(targets.TARGETS))
def target_cls(request):
    return targets.TARGETS[request.param]


def test_satisfies_the_target_protocol(target_cls):
    target = target_cls()
    assert isinstance(target, Target)
    assert target_cls.runtime and target_cls.description
    assert isinstance(target_cls.static_shapes, bool)
    assert inspect.isclass(target_cls.options_model) and issubclass(target_cls.options_model, TargetOptions)
    assert list(inspect.signature(target.compile).parameters) == ["onnx_dir", "manifest", "options", "out"]
    assert list(inspect.signature(target.load).parameters)[:2] == ["artifact_dir", "manifest"]
    assert inspect.ismethod(target_cls.device_options)  # a classmethod: profile -> options


def test_has_a_test_file(target_cls):
    module = target_cls.__module__.rsplit(".", 1)[-1]
    assert target_cls.__module__ == f"edgekit.deploy.targets.{module}"
    assert (HERE / f"test_{module}.py").is_file(), f"add tests/deploy/targets/test_{module}.py for target {target_cls.name}"


def test_an_unknown_option_is_one_line_naming_target_field_and_valid_options(target_cls):
    with pytest.raises(ConfigError) as err:
        targets.resolve_options(target_cls.name, {"no_such_option": 1})
    assert str(err.value.message) == f"target {target_cls.name}: option no_such_option: Extra inputs are not permitted"
    assert "\n" not in err.value.message
    assert err.value.hint == f"valid options: {', '.join(target_cls.options_model.model_fields)}"


def test_options_are_frozen_and_say_their_precision(target_cls):
    options = targets.resolve_options(target_cls.name)
    with pytest.raises(Exception, match="frozen"):
        options.threads = 2
    fields = target_cls.options_model.model_fields
    expected = fields["precision"].default if "precision" in fields else "fp32"
    assert options.build_precision == expected


def test_a_static_shapes_target_refuses_a_dynamic_export_without_sequence_lengths(target_cls, bert_onnx, tmp_path):
    manifest = artifact.read_manifest(bert_onnx)
    assert manifest.static_shape is None
    target = target_cls()
    try:
        target.check_available()
    except EdgekitError:
        pytest.skip(f"{target_cls.name} cannot compile here")
    options = targets.resolve_options(target_cls.name)
    if target_cls.static_shapes:
        with pytest.raises(ConfigError, match="seq_lens"):
            target.compile(bert_onnx, manifest, options, tmp_path)
        assert not list(tmp_path.iterdir())
    else:
        fields = target.compile(bert_onnx, manifest, options, tmp_path)
        assert fields.get("static_shape") is None  # a dynamic export stays dynamic


def test_static_targets_are_the_declared_ones():
    assert targets.static_targets() == [n for n, cls in targets.TARGETS.items() if cls.static_shapes]
    assert "openvino-npu" in targets.static_targets() and "ort-cpu" not in targets.static_targets()


PROFILES = devices.all_profiles()


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_device_profile_resolves_for_each_of_its_targets(name):
    profile = targets.check_profile(PROFILES[name])
    for target_name in profile.targets:
        cls = targets.TARGETS[target_name]
        options = targets.resolve_options(target_name, {}, profile)
        applied = cls.device_options(profile)
        assert options.model_dump(include=set(applied)) == applied
        if "device" in cls.options_model.model_fields:
            assert options.device == profile.name
        if profile.threads:
            assert options.threads in (profile.threads, None)
        # a precision the device does not run is refused, naming target, field and choices
        # (one the target builds, so that only the device can refuse it)
        field = cls.options_model.model_fields.get("precision")
        wrong = next((p for p in typing.get_args(field.annotation) if p not in profile.precisions), None) if field else None
        if wrong is not None:
            with pytest.raises(ConfigError, match=f"target {target_name}: option precision") as err:
                targets.resolve_options(target_name, {"precision": wrong}, profile)
            assert profile.precisions[0] in err.value.hint


def test_a_device_that_does_not_list_the_target_is_refused():
    profile = devices.DeviceProfile(name="box", description="d", arch="x86_64", targets=["ort-cpu"])
    with pytest.raises(ConfigError, match="device box does not run target 'jetson'") as err:
        targets.resolve_options("jetson", {}, profile)
    assert err.value.hint == "its targets: ort-cpu"


def test_compile_plan_picks_the_first_target_and_fills_the_device_in():
    profile = devices.DeviceProfile(name="board", description="d", arch="aarch64", targets=["ort-mobile", "ort-cpu"], threads=4)
    with pytest.raises(ConfigError, match="names no onnxruntime runtime"):
        targets.compile_plan(profile, [], {})
    profile = profile.model_copy(update={"runtimes": [devices.RuntimeSpec(name="onnxruntime", versions=">=1.17")]})
    chosen, plans = targets.compile_plan(profile, [], {"seq_lens": "64"})
    assert chosen == ["ort-mobile"]
    assert plans["ort-mobile"] == {"device": "board", "target_platform": "arm", "threads": 4, "seq_lens": [64]}


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError, match="unknown target 'tensorrt-fp8'") as err:
        targets.get("tensorrt-fp8")
    for name in targets.TARGETS:
        assert name in err.value.hint
    with pytest.raises(TargetError, match="unknown target 'tensorrt-fp8'"):
        targets.resolve_options("tensorrt-fp8", {})
