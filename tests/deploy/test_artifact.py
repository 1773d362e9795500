"""edgekit.deploy.artifact: atomic staging and verified manifests."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from edgekit.deploy import artifact
from edgekit.deploy.artifact import MANIFEST, Manifest, Source, TensorSpec, TokenizerInfo
from edgekit.errors import ArtifactError, ConfigError


def _manifest(name: str = "art") -> Manifest:
    return Manifest(
        kind="onnx",
        target="onnx",
        name=name,
        created=artifact.now(),
        source=Source(path="/ckpt", sha256="0" * 64, model_type="bert", task="embedding", pooling="mean", max_length=64),
        tokenizer=TokenizerInfo(pad_token="[PAD]", pad_id=0, max_length=64),
        model_file="model.onnx",
        inputs=[TensorSpec(name="input_ids", shape=["batch", "sequence"], dtype="int64")],
        outputs=[TensorSpec(name="embeddings", shape=["batch", 32], dtype="float32")],
        opset=17,
        runtime={"onnxruntime": "x"},
    )


def _finish(tmp, content: str = "new") -> Manifest:
    (tmp / "model.onnx").write_text(content)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "extra.bin").write_bytes(b"\0\1")
    return artifact.write_manifest(tmp, _manifest())


def _reseal(art) -> None:
    """Write manifest.sha256 for the manifest as it is now, so its parsing is what gets tested."""
    import hashlib

    raw = (art / MANIFEST).read_bytes()
    (art / artifact.MANIFEST_SHA256).write_text(f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n")


def _siblings(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


# --- staging ------------------------------------------------------------------------------


def test_staging_renames_into_place_only_on_success(tmp_path):
    out = tmp_path / "art"
    with artifact.staging(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(f".partial-art-{os.getpid()}-")
        assert not out.exists()
        written = _finish(tmp)
        assert not out.exists()
    assert not tmp.exists()
    assert (out / "model.onnx").read_text() == "new"
    assert artifact.read_manifest(out) == written
    assert _siblings(out) == []


def test_staging_gives_normal_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with artifact.staging(tmp_path / "art") as tmp:
            _finish(tmp)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "art").stat().st_mode) == 0o755


def test_staging_creates_missing_parents(tmp_path):
    out = tmp_path / "a" / "b" / "art"
    with artifact.staging(out) as tmp:
        _finish(tmp)
    assert artifact.read_manifest(out).name == "art"


def test_exception_keeps_the_old_artifact_and_no_partial(tmp_path):
    out = tmp_path / "art"
    with artifact.staging(out) as tmp:
        old = _finish(tmp, "old")
    with pytest.raises(ValueError, match="step failed"):
        with artifact.staging(out) as tmp:
            _finish(tmp, "new")  # even a complete artifact is not kept when the step raises
            raise ValueError("step failed")
    assert not tmp.exists()
    assert (out / "model.onnx").read_text() == "old"
    assert artifact.read_manifest(out) == old
    assert _siblings(out) == []


def test_interrupt_is_cleaned_up_too(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(KeyboardInterrupt):
        with artifact.staging(out) as tmp:
            (tmp / "model.onnx").write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_step_that_writes_no_manifest_is_not_kept(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError, match=f"without writing {MANIFEST}"):
        with artifact.staging(out) as tmp:
            (tmp / "model.onnx").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_success_replaces_an_existing_artifact(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "stale").write_text("stale")
    with artifact.staging(out) as tmp:
        _finish(tmp)
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, artifact.MANIFEST_SHA256, "model.onnx", "sub"])
    assert _siblings(out) == []


def test_failed_final_rename_restores_the_old_artifact(tmp_path, monkeypatch):
    out = tmp_path / "art"
    with artifact.staging(out) as tmp:
        _finish(tmp, "old")
    real = os.replace

    def replace(src, dst):
        if Path(src).name.startswith(".partial-"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(artifact.os, "replace", replace)
    with pytest.raises(ConfigError, match="no space left on .* needs ~1 MB"):
        with artifact.staging(out) as tmp:
            _finish(tmp, "new")
    assert (out / "model.onnx").read_text() == "old"
    assert _siblings(out) == []


def test_unwritable_output_dir_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a regular file")
    out = blocker / "art"
    with pytest.raises(ConfigError, match="cannot write the output directory") as err:
        with artifact.staging(out):
            pytest.fail("the body must not run")
    assert str(out) in err.value.message
    assert "--out" in err.value.hint
    assert isinstance(err.value.__cause__, OSError)


# --- manifests ----------------------------------------------------------------------------


@pytest.fixture
def art(tmp_path):
    out = tmp_path / "art"
    with artifact.staging(out) as tmp:
        _finish(tmp)
    return out


def test_manifest_lists_every_file_but_itself(art):
    manifest = artifact.read_manifest(art)
    assert set(manifest.files) == {"model.onnx", "sub/extra.bin"}
    assert (art / artifact.MANIFEST_SHA256).read_text() == f"{artifact.manifest_sha256(art)}  {MANIFEST}\n"
    assert manifest.files["sub/extra.bin"].bytes == 2
    assert manifest.files["model.onnx"].sha256 == artifact.sha256_file(art / "model.onnx")
    assert manifest.schema_version == artifact.SCHEMA_VERSION
    assert manifest.task == "embedding"


def test_read_manifest_missing_dir(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        artifact.read_manifest(tmp_path / "nope")


def test_read_manifest_on_a_file(art):
    with pytest.raises(ArtifactError, match="no such artifact directory"):
        artifact.read_manifest(art / "model.onnx")


def test_read_manifest_missing_manifest(art):
    (art / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match=f"no {MANIFEST}, so not a finished edgekit artifact"):
        artifact.read_manifest(art)


def test_read_manifest_invalid_json(art):
    (art / MANIFEST).write_text("{not json")
    _reseal(art)
    with pytest.raises(ArtifactError, match=f"{MANIFEST}: invalid manifest") as err:
        artifact.read_manifest(art)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


def test_read_manifest_not_utf8(art):
    (art / MANIFEST).write_bytes(b"\xff\xfe{}")
    _reseal(art)
    with pytest.raises(ArtifactError, match="invalid manifest"):
        artifact.read_manifest(art)


@pytest.mark.parametrize("change", [{"kind": "tflite"}, {"surprise": 1}, {"opset": "seventeen"}])
def test_read_manifest_schema_errors(art, change):
    raw = json.loads((art / MANIFEST).read_text())
    raw.update(change)
    (art / MANIFEST).write_text(json.dumps(raw))
    _reseal(art)
    with pytest.raises(ArtifactError, match="invalid manifest") as err:
        artifact.read_manifest(art)
    assert str(art / MANIFEST) in err.value.message
    assert type(err.value.__cause__).__name__ == "ValidationError"


def test_read_manifest_missing_field(art):
    raw = json.loads((art / MANIFEST).read_text())
    del raw["source"]
    (art / MANIFEST).write_text(json.dumps(raw))
    _reseal(art)
    with pytest.raises(ArtifactError, match="invalid manifest"):
        artifact.read_manifest(art)


def test_read_manifest_missing_listed_file(art):
    (art / "sub" / "extra.bin").unlink()
    with pytest.raises(ArtifactError, match="sub/extra.bin listed in the manifest is missing"):
        artifact.read_manifest(art)
    assert artifact.read_manifest(art, verify=False).name == "art"


@pytest.mark.parametrize("content", ["nex", "new but longer"])
def test_read_manifest_modified_file(art, content):
    (art / "model.onnx").write_text(content)
    with pytest.raises(ArtifactError, match="model.onnx does not match its sha256") as err:
        artifact.read_manifest(art)
    assert "rebuild" in err.value.hint
    artifact.read_manifest(art, verify=False)


def test_copy_tokenizer_copies_only_tokenizer_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir(), dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (src / name).write_text(name)
    artifact.copy_tokenizer(src, dst)
    assert sorted(p.name for p in dst.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_edited_manifest_is_refused(art):
    raw = json.loads((art / MANIFEST).read_text())
    raw["name"] = "renamed"
    (art / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="does not match manifest.sha256") as err:
        artifact.read_manifest(art, verify=False)
    assert "recompile" in err.value.hint


def test_manifest_without_its_hash_is_refused_with_recompile(art):
    (art / artifact.MANIFEST_SHA256).unlink()
    with pytest.raises(ArtifactError, match="no manifest.sha256") as err:
        artifact.read_manifest(art)
    assert "recompile" in err.value.hint


def test_model_file_must_be_hashed(art):
    raw = json.loads((art / MANIFEST).read_text())
    del raw["files"]["model.onnx"]
    (art / MANIFEST).write_text(json.dumps(raw))
    _reseal(art)
    with pytest.raises(ArtifactError, match="model.onnx is named by the manifest but is not among its hashed files"):
        artifact.read_manifest(art)


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "manifest.sha256"])
def test_files_outside_the_artifact_are_refused(art, name):
    raw = json.loads((art / MANIFEST).read_text())
    raw["files"][name] = raw["files"]["model.onnx"]
    (art / MANIFEST).write_text(json.dumps(raw))
    _reseal(art)
    with pytest.raises(ArtifactError, match="outside the artifact"):
        artifact.read_manifest(art)


@pytest.mark.parametrize(("target", "kind"), [("openvino-cpu", "compiled"), ("ort-mobile", "compiled"), ("ort-cpu", "onnx")])
def test_target_must_match_the_model_file(art, target, kind):
    raw = json.loads((art / MANIFEST).read_text())
    raw.update(target=target, kind=kind)
    (art / MANIFEST).write_text(json.dumps(raw))
    _reseal(art)
    with pytest.raises(ArtifactError, match="(is not what target|cannot have the target)"):
        # the manifest's own rules (kind vs target) at read time; the model file's kind against the
        # target's model_suffixes when the runtime takes it
        from edgekit.deploy.runtime import target_for

        target_for(artifact.read_manifest(art), art)


def test_write_bytes_replaces_whole_files_and_leaves_no_temp(tmp_path):
    path = tmp_path / "r" / "report.json"
    artifact.write_json(path, {"a": 1})
    artifact.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_write_into_an_unwritable_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(ConfigError, match="cannot write"):
            artifact.write_text(folder / "x.json", "{}")
    finally:
        folder.chmod(0o700)


def test_staging_removes_leftovers_of_dead_processes_only(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    stale = [tmp_path / f".partial-art-{pid}-abc123", tmp_path / f".old-art-{pid}-abc123"]
    for d in stale:
        d.mkdir()
        (d / "big.bin").write_bytes(b"x" * 1000)
    (tmp_path / f".tmp-report.json-{pid}-xyz").write_text("half")
    mine = tmp_path / f".partial-other-{os.getpid()}-abc123"
    mine.mkdir()
    with artifact.staging(tmp_path / "art") as tmp:
        _finish(tmp)
    assert _siblings(tmp_path / "art") == [mine.name]
    mine.rmdir()
