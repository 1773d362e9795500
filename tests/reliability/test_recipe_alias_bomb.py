"""Probe: a YAML alias bomb in a typed recipe field is one short error, at once (it took 90 s and
ended in a MemoryError traceback when the error message printed the expanded input)."""

from __future__ import annotations

import time

from conftest import run_cli


def _bomb(levels: int = 9) -> str:
    lines = ['  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  - &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "name: r\ntargets: [ort-cpu]\ntask:\n" + "\n".join(lines) + "\n"


def test_alias_bomb_in_a_typed_field_is_one_short_line(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_bomb())  # 9**9 = 387 million strings once expanded
    t0 = time.perf_counter()
    code, out, err = run_cli(["recipe", "check", str(recipe)], monkeypatch, capsys)
    seconds = time.perf_counter() - t0
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "task:" in lines[0] and len(lines[0]) < 600 and "Traceback" not in err
    assert seconds < 20, f"took {seconds:.1f}s"  # generous on a loaded 2-core machine; the old code needed ~90 s and then failed
