"""Device profiles: every shipped YAML validates and round-trips; bad fields are named."""

from __future__ import annotations

import pytest
import yaml

from edgekit.deploy import devices
from edgekit.errors import ConfigError


def test_every_shipped_profile_validates_and_round_trips():
    profiles = devices.all_profiles()
    assert {"x86-64-cpu", "x86-64-avx512", "intel-xeon-amx"} <= set(profiles)
    for f in sorted(devices.devices_dir().glob("*.yaml")):
        p = devices.load_profile(f)
        assert devices.DeviceProfile.model_validate(yaml.safe_load(yaml.safe_dump(p.model_dump()))) == p


def test_unknown_field_names_file_and_field(tmp_path):
    f = tmp_path / "dev.yaml"
    f.write_text("name: dev\ndescription: d\narch: x86_64\ntargets: [ort-cpu]\nthreds: 4\n")
    with pytest.raises(ConfigError, match=r"dev.yaml: threds: Extra inputs"):
        devices.load_profile(f)


def test_unknown_target_is_refused_by_the_registry(tmp_path):
    from edgekit.deploy import targets

    f = tmp_path / "dev.yaml"
    f.write_text("name: dev\ndescription: d\narch: x86_64\ntargets: [tpu]\n")
    profile = devices.load_profile(f)  # devices know nothing of the targets
    with pytest.raises(ConfigError, match="device dev: unknown target 'tpu'") as err:
        targets.check_profile(profile)
    assert "ort-cpu" in err.value.hint
    with pytest.raises(ConfigError, match="device dev: unknown target 'tpu'"):
        targets.resolve_options("ort-cpu", {}, profile)


def test_bad_yaml_is_one_line(tmp_path):
    f = tmp_path / "dev.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read YAML"):
        devices.load_profile(f)


def test_usable_here_checks_arch_and_flags(monkeypatch):
    p = devices.get("x86-64-cpu")
    monkeypatch.setattr(devices.platform, "machine", lambda: "aarch64")
    ok, why = devices.usable_here(p)
    assert not ok and "aarch64" in why
    monkeypatch.setattr(devices.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"sse2"})
    ok, why = devices.usable_here(p)
    assert not ok and "avx2" in why
    monkeypatch.setattr(devices, "cpu_flags", lambda: {"avx2"})
    assert devices.usable_here(p)[0]


def test_usable_here_needs_a_target_that_runs_here():
    from edgekit.deploy import targets

    p = devices.get("x86-64-cpu")
    if not devices.machine_matches(p)[0]:
        pytest.skip("this machine is not an x86-64 with AVX2")

    def nothing_runs(name):
        raise RuntimeError(f"no runtime for {name}")

    ok, why = devices.usable_here(p, nothing_runs)
    assert not ok and "no runtime for ort-cpu" in why and "no runtime for openvino-cpu" in why
    assert targets.usable_here(p) == (True, "runs here with ort-cpu")


def test_unknown_device_lists_known():
    with pytest.raises(ConfigError, match="known devices"):
        devices.get("pdp-11")


NEEDS = {"openvino-npu": {"seq_lens": "16,32"}}  # a static-shape target needs its buckets


@pytest.mark.parametrize("name", sorted(devices.all_profiles()))
def test_compile_runs_for_every_target_of_every_device(name, bert_onnx, tmp_path):
    """'edgekit compile --device NAME' produces, for each of the device's targets, what can be
    produced here: a checked artifact where the target runs here, a pending one (with its
    reason) where it does not."""
    from edgekit.build import compile as step
    from edgekit.deploy import artifact, targets

    profile = devices.get(name)
    manifest = artifact.read_manifest(bert_onnx)
    for target_name in profile.targets:
        target = targets.get(target_name)
        try:
            target.check_available()
        except Exception:  # noqa: BLE001 - a runtime missing here is listed by 'edgekit targets'
            continue
        chosen, opts = targets.compile_plan(profile, [target_name], dict(NEEDS.get(target_name, {})))
        out = tmp_path / target_name
        m = step.compile_artifact(bert_onnx, manifest, target_name, out, options=opts[target_name])
        assert (out / artifact.MANIFEST).exists() and m.target == target_name
        if "device" in target.options_model.model_fields:
            assert name in str(m.settings), m.settings  # the device is recorded
        if target.executable_here(m) is None:
            assert m.parity is not None and m.parity.max_abs_diff < 1e-3
        else:
            assert m.parity is None and m.settings.get("parity_not_run")
