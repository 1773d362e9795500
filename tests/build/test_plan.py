"""One typed plan: recipes and command flags become the same frozen Plan, options resolved once."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgekit.build import plan, recipe
from edgekit.build.cache import hash_path
from edgekit.build.plan import Plan, TargetPlan, for_compile, for_export, for_lower, for_ptq, for_quantize, for_quickstart, from_recipe
from edgekit.deploy import data, devices, targets
from edgekit.errors import ConfigError


def _recipe(targets_: list, **fields) -> recipe.Recipe:
    return recipe.parse({"name": "demo", "targets": targets_, **fields}, "r.yaml")


@pytest.fixture
def resolve_calls(monkeypatch) -> list[str]:
    """Names passed to ``edgekit.deploy.targets.resolve_options`` (the real function still runs)."""
    calls: list[str] = []
    real = targets.resolve_options

    def counting(name, options=None, device=None):
        calls.append(name)
        return real(name, options, device)

    monkeypatch.setattr(targets, "resolve_options", counting)
    return calls


# ----------------------------------------------------------------------------- from_recipe


def test_from_recipe_resolves_each_target_once_with_its_device_profile(resolve_calls):
    pi = devices.get("raspberry-pi-5")
    assert pi.threads and "ort-cpu" in pi.targets
    r = _recipe(
        [
            {"name": "ort-cpu", "device": "raspberry-pi-5"},
            {"name": "openvino-cpu", "device": "intel-xeon-amx", "options": {"precision": "bf16"}},
            "ort-mobile",
        ]
    )
    p = from_recipe(r, "r.yaml")
    assert resolve_calls == ["ort-cpu", "openvino-cpu", "ort-mobile"]
    ort, ov, mobile = p.targets
    assert ort == TargetPlan(name="ort-cpu", device="raspberry-pi-5", options={"threads": pi.threads}, precision="fp32")
    assert ov.device == "intel-xeon-amx" and ov.precision == "bf16" and ov.options == {"precision": "bf16"}
    assert "threads" not in ov.options  # that profile sets no thread count
    assert mobile.options == {} and mobile.device is None
    assert p.targets_in_recipe == ("ort-cpu", "openvino-cpu", "ort-mobile")


def test_user_options_win_over_the_device_profile():
    p = from_recipe(_recipe([{"name": "ort-cpu", "device": "raspberry-pi-5", "options": {"threads": 2}}]), "r.yaml")
    assert p.targets[0].options == {"threads": 2}


def test_static_targets_are_marked():
    p = from_recipe(_recipe(["ort-cpu", {"name": "openvino-npu", "options": {"seq_lens": [64]}}]), "r.yaml")
    assert [t.static_shapes for t in p.targets] == [False, True]
    assert p.targets[1].options == {"seq_lens": [64]}


def test_shipped_data_paths_are_resolved_in_target_options():
    p = from_recipe(_recipe([{"name": "openvino-npu", "options": {"data": f"edgekit:{data.SAMPLE_TEXTS}"}}]), "r.yaml")
    path = Path(p.targets[0].options["data"])
    assert path == data.shipped(data.SAMPLE_TEXTS) and path.is_file()


@pytest.mark.parametrize(
    ("targets_", "message"),
    [
        ([{"name": "ort-cpu", "options": {"optimisation": "all"}}], r"^r\.yaml: targets\[0\]: target ort-cpu: option optimisation: "),
        (
            ["ort-mobile", {"name": "ort-cpu", "options": {"optimization": "max"}}],
            r"^r\.yaml: targets\[1\]: target ort-cpu: option optimization: Input should be 'basic', 'extended' or 'all'",
        ),
        (
            ["ort-cpu", {"name": "openvino-cpu", "device": "x86-64-cpu", "options": {"precision": "bf16"}}],
            r"^r\.yaml: targets\[1\]: target openvino-cpu: option precision: device x86-64-cpu does not run 'bf16' \(",
        ),
        (
            [{"name": "ort-cpu", "device": "android-arm64"}],
            r"^r\.yaml: targets\[0\]: device android-arm64 does not run target 'ort-cpu' \(",
        ),
    ],
)
def test_a_bad_target_option_is_one_config_error_naming_the_target(targets_, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_recipe(_recipe(targets_), "r.yaml")
    assert "\n" not in info.value.message and info.value.hint


def test_the_hint_lists_what_is_valid():
    with pytest.raises(ConfigError) as info:
        from_recipe(_recipe([{"name": "ort-cpu", "options": {"optimisation": "all"}}]), "r.yaml")
    from edgekit.deploy.targets.ort import OrtOptions

    assert info.value.hint == f"valid options: {', '.join(OrtOptions.model_fields)}" and "optimization" in info.value.hint
    with pytest.raises(ConfigError) as info:
        from_recipe(_recipe([{"name": "openvino-cpu", "device": "x86-64-cpu", "options": {"precision": "bf16"}}]), "r.yaml")
    assert info.value.hint == f"its precisions: {', '.join(devices.get('x86-64-cpu').precisions)}"


def test_a_subset_of_targets_resolves_only_those(resolve_calls):
    r = _recipe(["ort-cpu", "openvino-cpu", "ort-mobile"])
    p = from_recipe(r, "r.yaml", targets=["ort-mobile", "ort-cpu", "ort-mobile"])
    assert [t.name for t in p.targets] == ["ort-cpu", "ort-mobile"]  # recipe order, no duplicates
    assert resolve_calls == ["ort-cpu", "ort-mobile"]
    assert p.targets_in_recipe == ("ort-cpu", "openvino-cpu", "ort-mobile")
    with pytest.raises(ConfigError, match=r"--targets 'jetson' is not one of the recipe's targets") as info:
        from_recipe(r, "r.yaml", targets=["jetson"])
    assert info.value.hint == "its targets: ort-cpu, openvino-cpu, ort-mobile"


def test_from_recipe_carries_the_recipe_and_its_origin(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(
        "name: demo\nmodel: ./ckpt\noutput: out\ncache: c\ndata: {dev: dev.jsonl}\ntargets: [ort-cpu]\nprofile: {seq_len: 64}\n"
    )
    r = recipe.load(path)
    p = from_recipe(r, path)
    assert p.layout == "build" and p.source == str(path) and p.model == "./ckpt"
    assert p.output == Path("out") / "demo" and p.cache == Path("c")
    assert p.evaluate is True and p.profile is not None and p.profile.seq_len == 64
    assert p.origin == {
        "name": "demo",
        "path": str(path.resolve()),
        "sha256": r.sha256(),
        "file_sha256": hash_path(path),
        "description": "",
    }

    off = from_recipe(_recipe(["ort-cpu"], profile={"enabled": False}), "r.yaml")
    assert off.profile is None and off.evaluate is False and off.origin["file_sha256"] is None


# ----------------------------------------------------------------------------- commands


def test_for_compile_writes_one_folder_per_target(tmp_path):
    p = for_compile("ckpt", tmp_path / "dist", [("ort-cpu", {}), ("openvino-cpu", {"precision": "bf16"})], device="intel-xeon-amx")
    assert p.layout == "targets" and p.name == "dist" and p.output == tmp_path / "dist" and p.source == "edgekit compile"
    assert [(t.name, t.device, t.precision) for t in p.targets] == [
        ("ort-cpu", "intel-xeon-amx", "fp32"),
        ("openvino-cpu", "intel-xeon-amx", "bf16"),
    ]
    assert p.steps.export == recipe.Export() and p.steps.quantize is None
    assert p.profile is None and not p.evaluate and p.cache is None
    with pytest.raises(ConfigError, match="device x86-64-cpu does not run 'bf16'"):
        for_compile("ckpt", tmp_path / "d", [("openvino-cpu", {"precision": "bf16"})], device="x86-64-cpu")
    export = plan.export_settings(static_shape="1x64", max_length=64)
    assert for_compile("ckpt", tmp_path / "d", [("ort-cpu", {})], export=export).steps.export.static_shape == (1, 64)


def test_export_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="^invalid export option: ") as info:
        plan.export_settings(static_shape="1by64")
    assert "\n" not in info.value.message


def test_for_quickstart_builds_every_target_that_runs_here(tmp_path):
    profile = recipe.Profile(seq_len=32)
    p = for_quickstart("ckpt", tmp_path / "qs", eval_data="dev.jsonl", profile=profile)
    ok, skipped = plan.usable_targets(must_run=True)
    assert p.layout == "build" and p.output == tmp_path / "qs" and p.name == "qs"
    assert p.evaluate and p.fidelity and p.profile == profile and p.data.dev == "dev.jsonl"
    assert [t.name for t in p.targets] == ok and p.skipped == skipped
    assert set(ok) | set(skipped) == set(targets.TARGETS) and not set(ok) & set(skipped)
    assert "ort-cpu" in ok  # onnxruntime is a core dependency: it always runs here
    for name, why in skipped.items():
        assert why, name
    for t in p.targets:  # a static-shape target gets its sequence lengths from the shipped texts
        assert t.options == ({"data": str(data.shipped(data.SAMPLE_TEXTS))} if t.static_shapes else {})


def test_usable_targets_without_must_run_includes_compile_only_targets():
    runs, _ = plan.usable_targets(must_run=True)
    compiles, skipped = plan.usable_targets()
    assert set(runs) <= set(compiles)
    for name in set(compiles) - set(runs):
        assert targets.get(name).runs_here() is not None
    assert not any(why.startswith("compiles here") for why in skipped.values())


def test_for_quantize_writes_the_checkpoint(tmp_path):
    q = recipe.quantize_settings(scheme="ternary-w2a8", steps=5)
    p = for_quantize("ckpt", tmp_path / "q", "train.jsonl", q, cache=tmp_path / "c", dev="dev.jsonl", train_progress=False)
    assert p.layout == "checkpoint" and p.output == tmp_path / "q" and p.name == "q"
    assert p.steps.quantize == q and p.steps.exits is None and p.targets == ()
    assert p.data.train == "train.jsonl" and p.data.dev == "dev.jsonl" and p.cache == tmp_path / "c"
    assert p.train_progress is False and p.profile is None and not p.evaluate


def test_onnx_layout_commands(tmp_path):
    assert for_export("ckpt", tmp_path / "e").layout == "onnx"
    lowered = for_lower("ckpt", tmp_path / "l", pack=False)
    assert lowered.layout == "onnx" and lowered.steps.lower == recipe.Lower(pack=False)
    ptq = for_ptq("onnx-dir", tmp_path / "p", "calib.txt", 64, method="nncf")
    assert ptq.layout == "onnx" and ptq.steps.ptq == recipe.Ptq(samples=64, method="nncf") and ptq.data.calibration == "calib.txt"
    with pytest.raises(ConfigError, match="unknown PTQ method 'tflite'"):
        for_ptq("onnx-dir", tmp_path / "p", "calib.txt", 64, method="tflite")
    # a bad sample count is named as such, not as an unknown method
    with pytest.raises(ConfigError, match="invalid PTQ option: samples: Input should be greater than or equal to 1"):
        for_ptq("onnx-dir", tmp_path / "p", "calib.txt", 0)


# ----------------------------------------------------------------------------- frozen


def test_the_plan_is_frozen_and_strict(tmp_path):
    p = for_compile("ckpt", tmp_path / "dist", [("ort-cpu", {})])
    with pytest.raises(ValidationError):
        p.layout = "build"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        p.targets[0].precision = "int8"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Plan(source="x", name="x", model="m", output=tmp_path, layuot="onnx")
    with pytest.raises(ValidationError):
        Plan(source="x", name="x", model="m", output=tmp_path, layout="zip")
    assert isinstance(p.targets, tuple)
