"""Device profiles: every shipped YAML validates and round-trips; bad fields are named."""

from __future__ import annotations

import yaml
import pytest

from edgekit import devices
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


def test_unknown_target_lists_known(tmp_path):
    f = tmp_path / "dev.yaml"
    f.write_text("name: dev\ndescription: d\narch: x86_64\ntargets: [tpu]\n")
    with pytest.raises(ConfigError, match="known targets: ort-cpu"):
        devices.load_profile(f)


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


def test_unknown_device_lists_known():
    with pytest.raises(ConfigError, match="known devices"):
        devices.get("pdp-11")
