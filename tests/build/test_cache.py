"""The step cache: keys, hits, tamper detection, interrupted entries and cleaning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.build import cache
from edgekit.build.cache import OWNER, STEP_RECORD, Runner, clean, hash_path, step_key


@pytest.fixture(autouse=True)
def _rank_zero(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)


class Counting:
    """A step function that writes ``out/result.txt`` (and a sub-folder) and counts its calls."""

    def __init__(self, text: str = "result") -> None:
        self.calls = 0
        self.text = text

    def __call__(self, entry: Path) -> tuple[str, dict]:
        self.calls += 1
        out = entry / "out"
        (out / "sub").mkdir(parents=True, exist_ok=True)
        (out / "result.txt").write_text(self.text)
        (out / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 64)
        return "out", {"calls": self.calls}


def _runner(root: Path, *, use_cache: bool = True) -> tuple[Runner, list[str]]:
    said: list[str] = []
    return Runner(root / "cache", use_cache=use_cache, say=said.append), said


# ----------------------------------------------------------------------------- keys


def test_step_key_depends_on_the_payload_not_its_order():
    a = step_key("export", {"model": "abc", "opset": 17})
    assert a == step_key("export", {"opset": 17, "model": "abc"})
    assert len(a) == 64 and int(a, 16) >= 0
    assert a != step_key("export", {"model": "abc", "opset": 18})
    assert a != step_key("export", {"model": "abd", "opset": 17})
    assert a != step_key("export", {"model": "abc", "opset": 17, "max_length": None})
    assert a != step_key("lower", {"model": "abc", "opset": 17})  # the step's name is part of the key


def test_step_key_changes_with_the_versions_of_the_steps_tools(monkeypatch):
    base = dict(cache.tool_versions())
    before = {s: step_key(s, {"x": 1}) for s in ("export", "ptq", "compile")}

    def bumped(**changes):
        monkeypatch.setattr(cache, "tool_versions", lambda: {**base, **changes})
        return {s: step_key(s, {"x": 1}) for s in before}

    after = bumped(onnxruntime="0.0.1")  # every one of these steps runs onnxruntime
    assert all(after[s] != before[s] for s in before)
    after = bumped(openvino="0.0.1")  # export and ptq do not run OpenVINO: their keys stay
    assert after["export"] == before["export"] and after["ptq"] == before["ptq"] and after["compile"] != before["compile"]
    after = bumped(torch="0.0.1")
    assert after["export"] != before["export"] and after["compile"] == before["compile"]
    after = bumped(edgekit="999.0")  # edgekit's own version keys every step
    assert all(after[s] != before[s] for s in before)


def test_tool_versions_name_edgekit_python_and_installed_tools():
    versions = cache.tool_versions()
    assert versions["edgekit"] == cache.__version__
    assert versions["python"].count(".") == 2
    assert {"onnx", "onnxruntime", "numpy"} <= set(versions)


def test_hash_path_covers_names_and_contents_and_skips_hidden_files(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("one")
    (d / "sub" / "b.txt").write_text("two")
    h = hash_path(d)
    (d / ".owner").write_text("123")
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert hash_path(d) == h  # hidden files and caches do not count
    (d / "sub" / "b.txt").write_text("TWO")
    assert hash_path(d) != h
    (d / "sub" / "b.txt").write_text("two")
    assert hash_path(d) == h
    (d / "sub" / "b.txt").rename(d / "sub" / "c.txt")
    assert hash_path(d) != h  # same bytes under another name


# ----------------------------------------------------------------------------- runner


def test_a_cache_hit_skips_the_step(tmp_path):
    fn = Counting()
    runner, said = _runner(tmp_path)
    first = runner.run("export", "export", {"model": "m"}, fn)
    assert not first.cached and fn.calls == 1 and first.out == first.dir / "out"
    record = json.loads((first.dir / STEP_RECORD).read_text())
    assert record["key"] == first.key == step_key("export", {"model": "m"}) and record["output_sha256"] == hash_path(first.out)
    assert record["summary"] == {"calls": 1} and record["inputs"] == {"model": "m"}

    again, said = _runner(tmp_path)  # a later build
    hit = again.run("export", "export", {"model": "m"}, fn)
    assert hit.cached and fn.calls == 1 and hit.dir == first.dir and hit.summary == {"calls": 1}
    assert said == [f"export: cached ({first.dir})"]

    other = again.run("export", "export", {"model": "other"}, fn)  # another payload is another entry
    assert not other.cached and fn.calls == 2 and other.dir != first.dir


def test_no_cache_reruns_but_a_step_runs_once_per_build(tmp_path):
    fn = Counting()
    _runner(tmp_path)[0].run("export", "export", {"model": "m"}, fn)
    runner, _ = _runner(tmp_path, use_cache=False)
    a = runner.run("export", "export", {"model": "m"}, fn)
    b = runner.run("export", "export", {"model": "m"}, fn)
    assert fn.calls == 2 and not a.cached and b is a
    assert runner.steps == [a]  # listed once


@pytest.mark.parametrize("damage", ["edit", "edit-in-subfolder", "add", "delete-output"])
def test_a_tampered_entry_is_detected_and_the_step_reruns(tmp_path, damage):
    fn = Counting()
    first = _runner(tmp_path)[0].run("export", "export", {"model": "m"}, fn)
    if damage == "edit":
        (first.out / "result.txt").write_text("RESULT, edited by hand")
    elif damage == "edit-in-subfolder":
        (first.out / "sub" / "weights.bin").write_bytes(b"\x00\x02" * 64)  # same size
    elif damage == "add":
        (first.out / "extra.txt").write_text("x")
    else:
        import shutil

        shutil.rmtree(first.out)
    runner, said = _runner(tmp_path)
    step = runner.run("export", "export", {"model": "m"}, fn)
    assert fn.calls == 2 and not step.cached
    assert said[0].startswith("export: cache entry unusable (") and said[0].endswith("running it again")
    assert (first.out / "result.txt").read_text() == "result"
    # the rerun wrote a fresh record: the next build is a hit again
    assert _runner(tmp_path)[0].run("export", "export", {"model": "m"}, fn).cached and fn.calls == 2


def test_an_unreadable_record_reruns_the_step(tmp_path):
    fn = Counting()
    first = _runner(tmp_path)[0].run("export", "export", {"model": "m"}, fn)
    (first.dir / STEP_RECORD).write_text("{not json")
    assert not _runner(tmp_path)[0].run("export", "export", {"model": "m"}, fn).cached and fn.calls == 2


def test_an_interrupted_entry_is_redone(tmp_path):
    def crash(entry: Path):
        (entry / "out").mkdir()
        (entry / "out" / "half.txt").write_text("half")
        raise KeyboardInterrupt

    runner, _ = _runner(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        runner.run("export", "export", {"model": "m"}, crash)
    entry = next((tmp_path / "cache").iterdir())
    assert not (entry / STEP_RECORD).exists() and (entry / OWNER).read_text() == str(os.getpid())
    fn = Counting()
    step = _runner(tmp_path)[0].run("export", "export", {"model": "m"}, fn)
    assert fn.calls == 1 and not step.cached and step.dir == entry and (entry / STEP_RECORD).exists()


# ----------------------------------------------------------------------------- clean


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(proc.stdout)


def _unfinished(root: Path, name: str, pid: int | str | None) -> Path:
    entry = root / name
    (entry / "out").mkdir(parents=True)
    (entry / "out" / "partial.bin").write_bytes(b"x")
    if pid is not None:
        (entry / OWNER).write_text(str(pid))
    return entry


def test_clean_removes_unfinished_entries_of_dead_processes_only(tmp_path):
    root = tmp_path / "cache"
    dead = _unfinished(root, "quantize-dead", _dead_pid())
    garbled = _unfinished(root, "quantize-garbled", "not a pid")
    live = _unfinished(root, "quantize-live", os.getpid())
    finished = _unfinished(root, "export-done", _dead_pid())
    (finished / STEP_RECORD).write_text("{}")
    assert sorted(clean(root)) == sorted([dead, garbled])
    assert not dead.exists() and not garbled.exists()
    assert live.exists() and finished.exists()
    assert clean(root) == []


def test_clean_leaves_a_runner_filling_an_entry_alone(tmp_path):
    seen = {}

    def step(entry: Path):
        seen["removed"] = clean(entry.parent)  # e.g. `edgekit clean` from another shell meanwhile
        (entry / "out").mkdir()
        return "out", {}

    _runner(tmp_path)[0].run("export", "export", {"model": "m"}, step)
    assert seen["removed"] == []


def test_clean_of_a_missing_cache_is_a_no_op(tmp_path):
    assert clean(tmp_path / "nothing-here") == []
