"""openvino-cpu with the 1-bit kernel (option ``xnor``; edgekit/deploy/kernels/openvino_xnor.py).

A lowered tiny W1A1 BERT classifier compiled with ``xnor=on``: the artifact ships and hashes the
library, runs in a fresh process (its own Core, no torch) with outputs within 1e-6 of the ``xnor=off``
artifact (the same integer dot products; observed identical), counts its BinaryMatMul nodes as integer
execution, refuses a changed library, rebuilds the kernel where the recorded OpenVINO version is not the
one running; a ternary model under ``xnor=on`` is a one-line error, under ``auto`` a recorded reason; the
autotuner times the ``xnor=on`` candidate on W1A1 and records why it skips it elsewhere.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgekit.build import tune
from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact, parity, targets
from edgekit.deploy.kernels import xnor
from edgekit.errors import ArtifactError, TargetError

pytestmark = pytest.mark.openvino
pytest.importorskip("openvino")
TARGET = "openvino-cpu"
ATOL = 1e-6  # xnor=on vs xnor=off: the same integers, the same float epilogue order


@pytest.fixture(scope="module")
def w1a1(lowered_model, xnor_lib, tmp_path_factory):
    """(lowered dir, its manifest, {"on": (dir, manifest), "off": (dir, manifest)})."""
    src, manifest = lowered_model("bit-w1a1")
    root = tmp_path_factory.mktemp("ov-xnor")
    built = {}
    for mode in ("on", "off"):
        out = root / mode
        # unsigned=off: the kernel is checked against the lowered INT8 graph as lowered (s8 activations); the u8
        # rewrite rescales the kept int8 matmuls in another float order (tests/deploy/targets/test_openvino_fq.py)
        options = {"tune": "off", "xnor": mode, "unsigned": "off"}
        built[mode] = (out, compile_artifact(src, manifest, TARGET, out, options=options, progress=False))
    return src, manifest, built


def _outputs(path, feed) -> np.ndarray:
    manifest = artifact.read_manifest(path)
    with targets.get(TARGET).load(path, manifest) as session:
        return session.infer(feed)[manifest.outputs[0].name]


def test_xnor_on_ships_the_kernel_and_matches_xnor_off(w1a1, tmp_path):
    src, lowered, built = w1a1
    (on, m_on), (off, m_off) = built["on"], built["off"]
    rec = m_on.settings["kernels"]["xnor"]
    linears = lowered.settings["lowered"]["modules"]["linear"]
    assert rec["library"] == f"kernels/{xnor.LIBRARY}" and rec["rewritten"] == linears and rec["kept"] >= 1
    assert rec["isa"] in ("avx512-vpopcntdq", "portable") and rec["openvino"] == m_on.runtime["openvino"]
    assert rec["fused"] == lowered.settings["lowered"]["modules"]["attention"]  # each FFN's two matmuls joined by bits
    assert m_on.files[rec["library"]].sha256 == rec["sha256"] == artifact.sha256_file(on / rec["library"])
    assert f"kernels/{xnor.LIBRARY}.sha256" in m_on.files
    assert "kernels" not in m_off.settings and not (off / "kernels").exists()
    assert rec["attention"] == lowered.settings["lowered"]["modules"]["attention"]  # each attention one BinaryAttention
    # the kernel's nodes count as integer execution (a BinaryAttention as its two activation x activation matmuls):
    # every lowered matmul runs as integers
    int8 = m_on.settings["int8"]
    assert int8["binary_matmul_nodes"] == linears + 2 * rec["attention"] and int8["all_int8"] is True
    assert m_on.parity.passed and m_on.parity.max_abs_diff <= m_off.parity.max_abs_diff + ATOL

    feed, _ = parity.load_reference(src / parity.REFERENCE)
    np.savez(tmp_path / "feed.npz", **feed)
    # a fresh process: its own Core, the library loaded from the artifact, and no torch
    code = (
        "import json, sys, numpy as np\n"
        "from edgekit.deploy import artifact, targets\n"
        f"path = {str(on)!r}\n"
        "m = artifact.read_manifest(path)\n"
        f"feed = dict(np.load({str(tmp_path / 'feed.npz')!r}))\n"
        f"with targets.get({TARGET!r}).load(path, m) as s:\n"
        f"    np.save({str(tmp_path / 'out.npy')!r}, s.infer(feed)[m.outputs[0].name])\n"
        "    print(json.dumps({'torch': 'torch' in sys.modules, 'notes': s.notes}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"torch": False, "notes": []}
    fresh = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(fresh, _outputs(off, feed), rtol=0, atol=ATOL)


def test_a_changed_library_is_refused(w1a1, tmp_path):
    _, _, built = w1a1
    on, _ = built["on"]
    copy = tmp_path / "copy"
    shutil.copytree(on, copy)
    lib = copy / "kernels" / xnor.LIBRARY
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"kernels/{xnor.LIBRARY} does not match its sha256"):
        artifact.read_manifest(copy)
    manifest = artifact.read_manifest(copy, verify=False)
    with pytest.raises(TargetError, match="does not match the sha256 the manifest records") as err:
        targets.get(TARGET).load(copy, manifest)
    assert "\n" not in err.value.message


def test_another_openvino_version_rebuilds_the_kernel_here(w1a1, capsys):
    src, _, built = w1a1
    on, manifest = built["on"]
    rec = {**manifest.settings["kernels"]["xnor"], "openvino": "2020.1.0"}
    older = manifest.model_copy(update={"settings": {**manifest.settings, "kernels": {"xnor": rec}}})
    feed, _ = parity.load_reference(src / parity.REFERENCE)
    with targets.get(TARGET).load(on, older) as session:
        got = session.infer(feed)[manifest.outputs[0].name]
        (note,) = session.notes
    assert "built for OpenVINO 2020.1.0" in note and "using one built for this machine" in note and "\n" not in note
    assert f"note: {note}" in capsys.readouterr().err
    np.testing.assert_array_equal(got, _outputs(on, feed))


def test_xnor_on_a_ternary_model_is_a_one_line_error(lowered_model, xnor_lib, tmp_path):
    src, manifest = lowered_model("ternary-w2a8")
    with pytest.raises(TargetError, match="xnor=on: the model is not W1A1") as err:
        compile_artifact(src, manifest, TARGET, tmp_path / "on", options={"tune": "off", "xnor": "on"}, progress=False)
    assert "\n" not in err.value.message and "W1A1" in err.value.hint
    assert not (tmp_path / "on").exists()
    auto = compile_artifact(src, manifest, TARGET, tmp_path / "auto", options={"tune": "off", "xnor": "auto"}, progress=False)
    assert auto.settings["kernels"]["xnor"]["used"] is False and "not W1A1" in auto.settings["kernels"]["xnor"]["reason"]
    assert not (tmp_path / "auto" / "kernels").exists() and auto.parity.passed


def test_tune_times_xnor_on_w1a1_and_skips_it_with_the_reason_elsewhere(lowered_model, xnor_lib, tmp_path, monkeypatch):
    # on a tiny model the kernel's per-call cost may be several times the INT8 graph's on a loaded machine (a CI
    # run probed it out as "no contender"): whether it is faster is the benchmark's business, that it is timed this test's
    monkeypatch.setattr(tune, "PROBE_RATIO", float("inf"))
    monkeypatch.setattr(tune, "DROP_RATIO", float("inf"))
    target = targets.get(TARGET)
    src, manifest = lowered_model("bit-w1a1")
    opts = targets.resolve_options(TARGET, {"tune": "on"})
    (cand,) = [c for c in target.tune_candidates(opts, manifest) if c["name"] == "xnor=on"]
    assert cand["options"] == {"xnor": "on"} and "skip" not in cand
    tuned = compile_artifact(
        src, manifest, TARGET, tmp_path / "w1a1", options={"tune": "on", "tune_budget_s": 180}, candidates=[cand], progress=False
    )
    record = tuned.settings["tune"]
    timed = {c["name"]: c for c in record["candidates"]}
    assert timed["xnor=on"]["status"] == "timed", timed["xnor=on"]
    assert timed["xnor=on"]["status"] == "timed" and timed["xnor=on"]["parity"] == "pass" and timed["xnor=on"]["p50_ms"] > 0
    assert record["chosen"] in ("default", "xnor=on")
    # the artifact is what the tuner chose, and the manifest says how to rebuild it
    assert ("kernels" in tuned.settings) == (record["chosen"] == "xnor=on") == (record["options"].get("xnor") == "on")

    src, manifest = lowered_model("ternary-w2a8")
    (cand,) = [c for c in target.tune_candidates(opts, manifest) if c["name"] == "xnor=on"]
    assert cand["skip"] == "the model is not W1A1 (lowered ternary-w2a8)"
    tuned = compile_artifact(
        src, manifest, TARGET, tmp_path / "ternary", options={"tune": "on", "tune_budget_s": 30}, candidates=[cand], progress=False
    )
    (skipped,) = [c for c in tuned.settings["tune"]["candidates"] if c["name"] == "xnor=on"]
    assert skipped["status"] == "skipped" and skipped["why"] == cand["skip"] and tuned.settings["tune"]["chosen"] == "default"
