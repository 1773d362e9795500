"""Recipe schema: every shipped recipe validates, every mistake is one line naming the field
and the allowed keys or values, ``edgekit recipe new`` writes a starter that validates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import run_cli  # noqa: E402 - shared by the CLI tests

from edgekit.build import recipe as schema
from edgekit.build import recipe_check
from edgekit.errors import CheckpointError, ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
MINIMAL = {"name": "r", "targets": ["ort-cpu"]}


def parse(**fields) -> schema.Recipe:
    return schema.parse({**MINIMAL, **fields}, "r.yaml")


def error_of(**fields) -> str:
    """The one-line error of a recipe: its schema, then its target options (validated once, as it becomes a plan)."""
    from edgekit.build import plan

    with pytest.raises(ConfigError) as info:
        plan.from_recipe(parse(**fields), "r.yaml")
    return str(info.value)


def test_recipes_are_shipped():
    assert len(RECIPES) >= 3, RECIPES


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    r = schema.load(path)
    assert r.name == path.stem
    assert schema.parse(json.loads(json.dumps(r.model_dump(mode="json"))), str(path)) == r  # round-trips
    assert r.steps.quantize is None or r.steps.quantize.steps or r.steps.quantize.epochs
    model = Path(r.model)
    if r.model == "default" or model.is_dir():  # .ckpt/ models are made by a documented script
        recipe_check.check_files(r, str(path))
    else:
        assert "bench/finetune.py" in path.read_text(), f"{path}: say how to make {r.model}"


def test_template_validates_and_is_commented():
    r = schema.parse(yaml.safe_load(recipe_check.TEMPLATE), "template")
    assert r.step_names() == ["quantize", "export"]
    assert recipe_check.TEMPLATE.count("#") > 30
    recipe_check.check_files(r, "template")


def test_unknown_keys_name_the_field_and_the_valid_keys():
    msg = error_of(modle="x")
    assert msg.startswith("r.yaml: modle: unknown key 'modle'; valid keys: schema_version, name,")
    msg = error_of(steps={"distill": {}})
    assert "steps.distill: unknown step 'distill'; valid steps: quantize, exits, prune, lower, ptq, export" in msg
    msg = error_of(steps={"quantize": {"scheme": "ternary-w2a8", "steps": 3, "stpes": 4}})
    assert "steps.quantize.stpes: unknown key" in msg and "valid keys: scheme, steps, epochs" in msg
    msg = error_of(budgets={"max_drop": 1})
    assert "budgets.max_drop: unknown key" in msg and "max_accuracy_drop" in msg


def test_wrong_values_name_the_allowed_ones():
    msg = error_of(targets=["tensorrt"])
    assert "targets[0].name:" in msg and "'ort-cpu'" in msg and "'jetson'" in msg and "'tensorrt'" in msg
    msg = error_of(targets=[{"name": "ort-cpu", "options": {"optimisation": "all"}}])
    assert "targets[0]: target ort-cpu: option optimisation" in msg and "valid options:" in msg
    msg = error_of(targets=[{"name": "ort-cpu", "device": "pixel"}])
    assert "targets[0].device: unknown device 'pixel'; known devices:" in msg
    msg = error_of(targets=[{"name": "openvino-npu", "device": "x86-64-cpu"}])
    assert "does not run target 'openvino-npu'" in msg
    msg = error_of(data={"train": "t.txt"}, steps={"quantize": {"scheme": "w3a3", "steps": 1}})
    assert "steps.quantize.scheme: unknown scheme 'w3a3'; valid schemes: ternary-w2a8" in msg
    assert "task:" in error_of(task="regression") and "'classifier' or 'embedding'" in error_of(task="regression")
    assert "budgets.metric:" in error_of(budgets={"metric": "f1"})
    assert "targets: target 'ort-cpu' is listed twice" in error_of(targets=["ort-cpu", "ort-cpu"])
    assert "targets: List should have at least 1 item" in error_of(targets=[])
    assert "steps.export.static_shape: " in error_of(steps={"export": {"static_shape": "1by128"}})
    assert parse(steps={"export": {"static_shape": "1x128"}}).steps.export.static_shape == (1, 128)


def test_inconsistent_recipes_say_what_is_missing():
    assert "give the training budget as steps or epochs" in error_of(data={"train": "t.txt"}, steps={"quantize": {"scheme": "w2a8"}})
    assert "steps.quantize needs data.train" in error_of(steps={"quantize": {"scheme": "w2a8", "steps": 1}})
    assert "steps.prune needs steps.exits" in error_of(steps={"prune": {}})
    assert "dynamic early exit cannot run on openvino-npu" in error_of(data={"train": "t"}, steps={"exits": {}}, targets=["openvino-npu"])
    assert "steps.lower takes a whole quantized checkpoint" in error_of(data={"train": "t"}, steps={"exits": {}, "lower": {}})
    assert "steps.ptq quantizes a float model" in error_of(
        data={"train": "t"}, steps={"quantize": {"scheme": "w2a8", "steps": 1}, "ptq": {}}
    )
    assert "budgets.max_accuracy_drop needs data.dev" in error_of(budgets={"max_accuracy_drop": 1})
    msg = error_of(budgets={"max_p50_ms": {"x86-64-cpu": 10}}, profile={"enabled": False})
    assert "needs profiling, and profile.enabled is false: the budget could never be checked" in msg
    assert "device jetson-orin-nano runs none of this recipe's targets" in error_of(budgets={"max_p50_ms": {"jetson-orin-nano": 10}})
    r = parse(data={"train": "t"}, steps={"exits": {"layers": [1]}, "prune": {"layer": 1}, "ptq": {}})
    assert r.step_names() == ["exits", "prune", "ptq"]
    assert r.data.calibration_file() == "t"


def test_load_reads_files_and_reports_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntargets: [ort-cpu\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: cannot read YAML"):
        schema.load(bad)
    with pytest.raises(ConfigError, match="no such recipe file"):
        schema.load(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- ort-cpu\n")
    with pytest.raises(ConfigError, match="a recipe is a YAML mapping, got list"):
        schema.load(listy)


def test_check_files_names_missing_data_and_models(tmp_path, checkpoints, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ck = str(checkpoints["bert-classifier"])
    with pytest.raises(DataError, match=r"r.yaml: data.train: .*nope.jsonl: no such file"):
        recipe_check.check_files(parse(model=ck, data={"train": "nope.jsonl"}), "r.yaml")
    with pytest.raises(CheckpointError, match="no such directory"):
        recipe_check.check_files(parse(model=str(tmp_path / "none")), "r.yaml")
    (tmp_path / "dev.txt").write_text("one text\n")
    with pytest.raises(DataError, match="data.dev: .* has no labels, and the model is a classifier"):
        recipe_check.check_files(parse(model=ck, data={"dev": "dev.txt"}), "r.yaml")
    with pytest.raises(ConfigError, match="steps.lower needs a quantized checkpoint"):
        recipe_check.check_files(parse(model=ck, steps={"lower": {}}), "r.yaml")
    with pytest.raises(ConfigError, match="budgets.metric: 'mrr' is not a metric of a classifier"):
        recipe_check.check_files(parse(model=ck, budgets={"metric": "mrr"}), "r.yaml")
    (tmp_path / "cal.jsonl").write_text('{"text": "a", "label": "a"}\n')
    with pytest.raises(DataError, match=r"r.yaml: steps.exits.groups: .*cal.jsonl:1: missing field 'source'"):
        recipe_check.check_files(parse(model=ck, data={"train": "cal.jsonl"}, steps={"exits": {"groups": "source"}}), "r.yaml")
    (tmp_path / "cal.jsonl").write_text('{"text": "a", "label": "a", "source": "s1"}\n')
    recipe_check.check_files(parse(model=ck, data={"train": "cal.jsonl"}, steps={"exits": {"groups": "source"}}), "r.yaml")
    (tmp_path / "blank.txt").write_text("\n \n")
    for step, settings in (("exits", {}), ("quantize", {"scheme": "ternary-w2a8", "steps": 1})):
        steps = {step: {**settings, "unlabeled": "blank.txt"}}
        with pytest.raises(DataError, match=rf"r.yaml: steps.{step}.unlabeled: .*blank.txt: no text"):
            recipe_check.check_files(parse(model=ck, data={"train": "cal.jsonl"}, steps=steps), "r.yaml")
    q = {"exits": {"queries_only": True}}
    with pytest.raises(ConfigError, match=r"steps.exits.queries_only needs an embedding model .*\(the model is a classifier"):
        recipe_check.check_files(parse(model=ck, data={"train": "cal.jsonl"}, steps=q), "r.yaml")
    emb = str(checkpoints["bert-embedding"])
    with pytest.raises(ConfigError, match=r"data.calibration is labeled data"):
        recipe_check.check_files(parse(model=emb, data={"train": "cal.jsonl"}, steps=q), "r.yaml")
    (tmp_path / "pairs.jsonl").write_text('{"query": "a", "doc": "b"}\n')
    recipe_check.check_files(parse(model=emb, data={"train": "cal.jsonl", "calibration": "pairs.jsonl"}, steps=q), "r.yaml")
    notes = recipe_check.check_files(parse(model=ck, targets=["ort-cpu", "jetson"]), "r.yaml")
    assert any(n.startswith("jetson: compiles here, runs on the device only") for n in notes)
    buckets = [{"name": "openvino-cpu", "options": {"data": "missing.jsonl"}}]
    with pytest.raises(DataError, match=r"r.yaml: targets: openvino-cpu: option data: missing.jsonl: no such data file"):
        recipe_check.check_files(parse(model=ck, targets=buckets), "r.yaml")
    depth = json.loads((checkpoints["bert-classifier"] / "config.json").read_text())["num_hidden_layers"]
    with pytest.raises(ConfigError, match=rf"steps.exits.layers: the model has layers 1..{depth}, not {depth + 1}"):
        recipe_check.check_files(parse(model=ck, data={"train": "cal.jsonl"}, steps={"exits": {"layers": [1, depth + 1]}}), "r.yaml")
    with pytest.raises(ConfigError, match=r"steps.exits.layers\[0\]: Input should be greater than or equal to 1"):
        parse(steps={"exits": {"layers": [0]}})
    assert schema.resolve_path("edgekit:pydoc_pairs.jsonl").is_file()


def test_recipe_hash_ignores_formatting_but_not_settings():
    a = parse(description="x")
    b = schema.parse(yaml.safe_load("targets: [ort-cpu]\nname: r\ndescription: x\noutput: dist\n"), "b")
    assert a.sha256() == b.sha256()
    assert parse(description="y").sha256() != a.sha256()


def test_cli_recipe_new_and_check(tmp_path, monkeypatch, capsys):
    path = tmp_path / "sub" / "mine.yaml"
    code, out, _ = run_cli(["recipe", "new", str(path)], monkeypatch, capsys)
    assert code == 0 and path.exists(), out
    code, _, err = run_cli(["recipe", "new", str(path)], monkeypatch, capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    code, out, _ = run_cli(["recipe", "check", str(path)], monkeypatch, capsys)
    assert code == 0 and "ok" in out and "quantize -> export -> compile" in out
    path.write_text(path.read_text().replace("model: default", "model: default\nmodle: x"))
    code, _, err = run_cli(["recipe", "check", str(path)], monkeypatch, capsys)
    assert code == 2 and err.startswith("error:") and "modle: unknown key 'modle'" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["build", "--help"], ["recipe", "--help"], ["recipe", "check", "--help"], ["recipe", "new", "--help"]])
def test_help_is_light(args):
    code = (
        "import sys, json\nfrom edgekit.cli.app import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'openvino', 'tensorrt', 'onnxruntime') if m in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_ci_example_builds_a_target_matrix_uploads_and_gates():
    flow = yaml.safe_load((ROOT / "examples" / "ci" / "edgekit-build.yml").read_text())
    job = flow["jobs"]["build"]
    assert len(job["strategy"]["matrix"]["target"]) >= 2 and job["strategy"]["fail-fast"] is False
    runs = " ".join(s.get("run", "") for s in job["steps"])
    assert "edgekit build" in runs and "--targets '${{ matrix.target }}'" in runs and "edgekit recipe check" in runs
    upload = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and upload["with"]["path"].startswith("dist/")
    recipe = schema.load(ROOT / job["strategy"]["matrix"]["recipe"][0])
    assert set(job["strategy"]["matrix"]["target"]) <= {t.name for t in recipe.targets}


def test_exits_temperature_data_needs_the_expected_estimate():
    assert "temperature_data scales the probabilities" in error_of(steps={"exits": {"temperature_data": "dev.jsonl"}})
    assert "steps.exits.estimate" in error_of(steps={"exits": {"estimate": "soft"}})
    e = parse(data={"train": "t.jsonl"}, steps={"exits": {"estimate": "expected", "temperature_data": "dev.jsonl"}}).steps.exits
    assert (e.estimate, e.temperature_data) == ("expected", "dev.jsonl")
