"""Every target in edgekit.deploy.targets.TARGETS satisfies the protocol and has its own tests."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgekit.deploy import targets
from edgekit.deploy.targets.base import Target, TargetOptions
from edgekit.errors import TargetError

HERE = Path(__file__).parent


@pytest.fixture(params=sorted(targets.TARGETS))
def target_cls(request):
    return targets.TARGETS[request.param]


def test_declares_name_runtime_description_and_options(target_cls):
    assert targets.TARGETS[target_cls.name] is target_cls
    assert isinstance(target_cls.runtime, str) and target_cls.runtime
    assert isinstance(target_cls.description, str) and target_cls.description
    assert inspect.isclass(target_cls.options_model) and issubclass(target_cls.options_model, TargetOptions)


def test_satisfies_the_target_protocol(target_cls):
    target = target_cls()
    assert isinstance(target, Target)
    for method in ("check_available", "compile", "load"):
        assert callable(getattr(target, method))
    assert list(inspect.signature(target.compile).parameters) == ["onnx_dir", "manifest", "options", "out"]
    assert list(inspect.signature(target.load).parameters)[:2] == ["artifact_dir", "manifest"]


def test_options_forbid_unknown_keys_and_are_frozen(target_cls):
    with pytest.raises(ValidationError):
        target_cls.options_model.model_validate({"no_such_option": 1})
    options = target_cls.options_model()
    with pytest.raises(ValidationError):
        options.threads = 2


def test_has_a_test_file(target_cls):
    module = target_cls.__module__.rsplit(".", 1)[-1]
    assert target_cls.__module__ == f"edgekit.deploy.targets.{module}"
    assert (HERE / f"test_{module}.py").is_file(), f"add tests/targets/test_{module}.py for target {target_cls.name}"


def test_get_returns_an_instance(target_cls):
    assert type(targets.get(target_cls.name)) is target_cls


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError, match="unknown target 'tensorrt-fp8'") as err:
        targets.get("tensorrt-fp8")
    for name in targets.TARGETS:
        assert name in err.value.hint
