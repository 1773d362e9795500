"""The layers hold: import-linter's contracts (pyproject.toml), no import cycle between any two
modules, and the deploy side's commands run without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("edgekit")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append((module, imported))
    assert not cycles, f"import cycles: {cycles[:10]}"


def test_a_cycle_is_found_when_there_is_one(tmp_path, monkeypatch):
    """The cycle check can fail: two modules importing each other are reported."""
    pkg = tmp_path / "cyclic"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyclic import b\n")
    (pkg / "b.py").write_text("def f():\n    from cyclic import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic", cache_dir=None)
    assert graph.chain_exists(importer="cyclic.a", imported="cyclic.b") and graph.chain_exists(importer="cyclic.b", imported="cyclic.a")


def test_help_and_every_subcommand_help_import_no_heavy_runtime():
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom edgekit.cli.app import app\n"
        "r = CliRunner()\n"
        "cmds = [[]] + [[c] for c in ('export','compile','quickstart','profile','eval','targets','devices','clean','quantize','lower','ptq','build')]"
        " + [['recipe','check'],['recipe','new'],['exits','train'],['exits','calibrate'],['exits','export'],['exits','compile'],['exits','prune'],"
        "['report','import'],['report','show'],['report','schema']]\n"
        "for c in cmds:\n    res = r.invoke(app, [*c, '--help'])\n    assert res.exit_code == 0, (c, res.output)\n"
        "heavy = [m for m in ('torch', 'transformers', 'openvino', 'tensorrt', 'nncf', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
