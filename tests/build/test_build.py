"""``edgekit build``: steps in order, served from the cache the second time, budgets as the
CI gate (exit code 3 naming the figure), no half-written build, byte-identical ONNX.

Every build here runs on the tiny random-weight checkpoints of tests/conftest.py (seconds).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from conftest import run_cli  # noqa: E402 - shared by the CLI tests

from edgekit.build import cache, pipeline, runner
from edgekit.errors import ConfigError, MissingDependency

FAST_PROFILE = {"seconds": 0.02, "min_runs": 3, "warmup": 0, "cold_runs": 0, "seq_len": 32}
LABELS = ("negative", "neutral", "positive")


def doc(result) -> dict:
    """A build's manifest as the JSON it writes (what CI jobs read)."""
    return result.manifest.model_dump(mode="json")


@pytest.fixture
def work(tmp_path, monkeypatch, checkpoints):
    """A working directory with labeled train/dev files and a helper that writes recipes."""
    from edgekit.deploy import data

    monkeypatch.chdir(tmp_path)
    rng = random.Random(0)
    texts = data.sample_texts()
    for name, rows in (("train.jsonl", texts[:48]), ("dev.jsonl", texts[200:236])):
        Path(name).write_text("".join(json.dumps({"text": t, "label": rng.choice(LABELS)}) + "\n" for t in rows))

    def write(name: str = "tiny", file: str | None = None, **fields) -> Path:
        doc = {
            "name": name,
            "model": str(checkpoints["bert-classifier"]),
            "data": {"train": "train.jsonl", "dev": "dev.jsonl"},
            "targets": ["ort-cpu"],
            "profile": FAST_PROFILE,
            **fields,
        }
        path = tmp_path / (file or f"{name}.yaml")
        path.write_text(yaml.safe_dump(doc))
        return path

    return write


def quiet(_: str) -> None:
    pass


def test_build_writes_targets_reports_and_manifest_then_serves_from_cache(work):
    path = work(
        targets=["ort-cpu", "openvino-cpu", {"name": "jetson", "device": "jetson-orin-nano"}],
        budgets={"max_accuracy_drop": 0.5, "max_size_mb": 5, "max_p50_ms": {"x86-64-cpu": 1000}},
    )
    said: list[str] = []
    first = runner.build(path, say=said.append)
    out = Path("dist/tiny").resolve()
    assert first.path == out and first.exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m == doc(first) and m["kind"] == "edgekit-build"
    assert sorted(p.name for p in out.iterdir()) == ["jetson", "manifest.json", "openvino-cpu", "ort-cpu", "report.html", "reports"]
    page = (out / "report.html").read_text()
    assert "<table" in page and "ort-cpu" in page and "openvino-cpu" in page and 'src="http' not in page
    assert sorted(p.name for p in (out / "reports").iterdir()) == [
        "fp32.eval.json",
        "openvino-cpu.eval.json",
        "openvino-cpu.profile.json",
        "ort-cpu.eval.json",
        "ort-cpu.profile.json",
    ]
    assert [s["step"] for s in m["steps"]] == [
        "export",
        "compile:ort-cpu",
        "compile:openvino-cpu",
        "compile:jetson",
        "eval:fp32",
        "eval:ort-cpu",
        "profile:ort-cpu",
        "eval:openvino-cpu",
        "profile:openvino-cpu",
    ]
    assert not any(s["cached"] for s in m["steps"])
    assert m["recipe"]["sha256"] and m["checkpoint"]["sha256"] and m["data"]["dev"]["sha256"]
    assert {"edgekit", "python", "torch", "onnx", "onnxruntime"} <= set(m["tools"])
    ort = m["artifacts"]["ort-cpu"]
    assert ort["parity"]["passed"] and ort["runs_here"] and ort["precision"] == "fp32"
    assert ort["files"]["model.ort-opt.onnx"]["bytes"] == (out / "ort-cpu" / "model.ort-opt.onnx").stat().st_size
    assert ort["inputs"][0]["shape"] == ["batch", "sequence"]
    assert ort["accuracy"]["drop_points"] == 0.0 and ort["accuracy"]["metric"] == "accuracy"
    assert ort["latency"]["p50_ms"] > 0 and ort["latency"]["seq_len"] == 32
    assert {b["budget"]: b["status"] for b in ort["budgets"]} == {
        "max_accuracy_drop": "passed",
        "max_p50_ms[x86-64-cpu]": "passed",
        "max_size_mb": "passed",
    }
    jet = m["artifacts"]["jetson"]
    assert not jet["runs_here"] and jet["pending"] and jet["accuracy"] is None and jet["latency"] is None
    assert {b["budget"]: b["status"] for b in jet["budgets"]} == {"max_accuracy_drop": "unchecked", "max_size_mb": "unchecked"}
    assert m["budgets"]["status"] == "partly-checked" and len(m["budgets"]["unchecked"]) == 2
    assert (out / "jetson" / "build_engine.sh").exists()
    # the same build again: every step from the cache, the same artifacts
    said.clear()
    second = runner.build(path, say=said.append)
    assert all(s["cached"] for s in doc(second)["steps"]) and doc(second)["cached_steps"] == doc(second)["total_steps"]
    assert sum("cached" in line for line in said) == len(doc(second)["steps"])
    assert doc(second)["artifacts"]["ort-cpu"]["files"] == ort["files"]
    # a changed setting reruns only what depends on it
    work(
        targets=["ort-cpu", "openvino-cpu", {"name": "jetson", "device": "jetson-orin-nano"}],
        budgets={"max_accuracy_drop": 0.5, "max_size_mb": 5, "max_p50_ms": {"x86-64-cpu": 1000}},
        profile={**FAST_PROFILE, "seq_len": 16},
    )
    third = runner.build(path, say=quiet)
    rerun = [s["step"] for s in doc(third)["steps"] if not s["cached"]]
    assert rerun == ["profile:ort-cpu", "profile:openvino-cpu"]
    # --no-cache runs everything again (each step once)
    fourth = runner.build(path, say=quiet, use_cache=False)
    assert not any(s["cached"] for s in doc(fourth)["steps"])


def test_too_tight_budget_exits_3_naming_the_figure(work, monkeypatch, capsys):
    path = work(budgets={"max_size_mb": 0.001, "max_accuracy_drop": 1})
    code, out, err = run_cli(["build", str(path)], monkeypatch, capsys)
    assert code == 3, out + err
    m = json.loads(Path("dist/tiny/manifest.json").read_text())
    assert m["budgets"]["status"] == "failed" and m["budgets"]["failed"][0]["budget"] == "max_size_mb"
    size = m["budgets"]["failed"][0]["value"]  # the model files' size, as the manifest records it
    assert size == pytest.approx(m["artifacts"]["ort-cpu"]["model_bytes"] / 1e6, abs=1e-3)
    assert f"budget failed: ort-cpu: max_size_mb = {size:g}" in err and "> limit 0.001 MB" in err
    assert "Traceback" not in err
    # loosen it: the build passes, served from the cache
    work(budgets={"max_size_mb": 5, "max_accuracy_drop": 1})
    code, out, err = run_cli(["build", str(path)], monkeypatch, capsys)
    assert code == 0, err
    assert "from the cache" in out


def test_unchecked_budget_is_said_and_fails_with_strict(work, monkeypatch, capsys):
    from edgekit.deploy import targets

    monkeypatch.setattr(targets, "usable_here", lambda p: (False, "CPU lacks amx_tile"))
    path = work(budgets={"max_p50_ms": {"intel-xeon-amx": 5}})
    code, _, err = run_cli(["build", str(path)], monkeypatch, capsys)
    assert code == 0
    assert (
        "budget not checked here: ort-cpu max_p50_ms[intel-xeon-amx] <= 5 ms: this machine is not a intel-xeon-amx (CPU lacks amx_tile)"
        in " ".join(err.split())
    )
    code, _, err = run_cli(["build", str(path), "--strict"], monkeypatch, capsys)
    assert code == 3 and "budget not checked (--strict)" in err


def test_targets_subset_and_unknown_target(work, monkeypatch, capsys):
    path = work(targets=["ort-cpu", "openvino-cpu"])
    result = runner.build(path, targets=["openvino-cpu"], say=quiet)
    assert doc(result)["targets_built"] == ["openvino-cpu"] and doc(result)["targets_in_recipe"] == ["ort-cpu", "openvino-cpu"]
    assert not (result.path / "ort-cpu").exists() and (result.path / "openvino-cpu" / "model.xml").exists()
    code, _, err = run_cli(["build", str(path), "--targets", "ort-cpu,jetson"], monkeypatch, capsys)
    assert code == 2 and "--targets 'jetson' is not one of the recipe's targets" in err and "its targets: ort-cpu, openvino-cpu" in err


def test_output_of_another_recipe_or_foreign_files_is_not_replaced(work):
    runner.build(work(name="tiny"), say=quiet)
    other = work(name="tiny", file="other.yaml")
    with pytest.raises(ConfigError, match=r"holds the build of another recipe \(.*tiny.yaml"):
        runner.build(other, say=quiet)
    Path("dist/mine").mkdir(parents=True)
    Path("dist/mine/notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not an edgekit build"):
        runner.build(work(name="mine"), say=quiet)
    assert Path("dist/mine/notes.txt").read_text() == "mine"


def test_interrupted_build_leaves_no_complete_looking_output_and_resumes(work, monkeypatch):
    from edgekit.build import compile as compile_step

    path = work(targets=["ort-cpu", "openvino-cpu"])
    real = compile_step.compile_artifact

    def interrupted(onnx_dir, manifest, name, out, **kw):
        if name == "openvino-cpu":
            raise KeyboardInterrupt
        return real(onnx_dir, manifest, name, out, **kw)

    monkeypatch.setattr(compile_step, "compile_artifact", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.build(path, say=quiet)
    assert not Path("dist/tiny").exists() and not any(".partial-" in p.name for p in Path("dist").glob("*"))
    cache = Path("build/cache")
    assert not (next(cache.glob("compile-openvino-cpu-*")) / "step.json").exists()
    monkeypatch.setattr(compile_step, "compile_artifact", real)
    result = runner.build(path, say=quiet)
    fresh = {s["step"] for s in doc(result)["steps"] if not s["cached"]}
    assert "export" not in fresh and "compile:ort-cpu" not in fresh and "compile:openvino-cpu" in fresh
    assert (result.path / "manifest.json").exists()


def test_damaged_cache_entry_is_rebuilt(work):
    path = work()
    first = runner.build(path, say=quiet)
    entry = Path(doc(first)["artifacts"]["ort-cpu"]["step_key"])
    compiled = next(Path("build/cache").glob(f"compile-ort-cpu-{str(entry)[:20]}"))
    (compiled / "tiny" / "ort-cpu" / "model.ort-opt.onnx").write_bytes(b"broken")
    said: list[str] = []
    second = runner.build(path, say=said.append)
    assert any("cache entry unusable" in line for line in said)
    assert not next(s for s in doc(second)["steps"] if s["step"] == "compile:ort-cpu")["cached"]


def test_same_recipe_gives_byte_identical_onnx(work):
    """Reproducibility: two builds with no cache write the same ONNX bytes (export and ort-cpu)."""
    path = work(targets=["ort-cpu"], cache="cache-a")
    a = runner.build(path, say=quiet, use_cache=False)
    onnx_a = next(Path("cache-a").glob("export-*")) / "onnx" / "model.onnx"
    saved = {"export": onnx_a.read_bytes(), "ort": (a.path / "ort-cpu" / "model.ort-opt.onnx").read_bytes()}
    path = work(targets=["ort-cpu"], cache="cache-b")
    import shutil

    shutil.rmtree("dist")
    b = runner.build(path, say=quiet, use_cache=False)
    onnx_b = next(Path("cache-b").glob("export-*")) / "onnx" / "model.onnx"
    assert onnx_b.read_bytes() == saved["export"]
    assert (b.path / "ort-cpu" / "model.ort-opt.onnx").read_bytes() == saved["ort"]
    assert doc(a)["artifacts"]["ort-cpu"]["files"] == doc(b)["artifacts"]["ort-cpu"]["files"]


def test_quantize_exits_prune_pipeline_on_a_tiny_classifier(work):
    path = work(
        name="lowbit",
        steps={
            "quantize": {"scheme": "ternary-w2a8", "steps": 2, "limit": 16, "batch_size": 8, "max_length": 32},
            # 24 calibration texts are too few for a bootstrap bound on the drop: choose on the point estimate
            "exits": {"layers": [1, 2], "epochs": 2, "limit": 24, "confidence": 0},
            "prune": {"layer": 1},
        },
        budgets={"max_accuracy_drop": 100},
    )
    result = runner.build(path, say=quiet, train_progress=False)
    steps = [s["step"] for s in doc(result)["steps"]]
    assert steps[:4] == ["quantize", "exits", "prune", "compile:ort-cpu"]
    q = doc(result)["steps"][0]["summary"]
    assert q["scheme"] == "ternary-w2a8" and q["stages"][0]["steps"] == 2
    assert doc(result)["artifacts"]["ort-cpu"]["accuracy"] is not None
    assert result.exit_code == 0
    again = runner.build(path, say=quiet)
    assert all(s["cached"] for s in doc(again)["steps"])


def test_embedding_model_with_pairs_and_a_short_max_length(work, checkpoints, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    from edgekit.deploy import data

    texts = data.sample_texts()
    pairs.write_text("".join(json.dumps({"query": texts[i], "doc": texts[i + 1]}) + "\n" for i in range(0, 40, 2)))
    path = work(
        name="emb",
        model=str(checkpoints["bert-embedding"]),
        data={"dev": str(pairs)},
        profile={**FAST_PROFILE, "seq_len": 128},
        budgets={"max_accuracy_drop": 0.1},
    )
    m = doc(runner.build(path, say=quiet))
    ort = m["artifacts"]["ort-cpu"]
    assert ort["accuracy"]["metric"] == "mrr" and ort["accuracy"]["drop_points"] == pytest.approx(0, abs=1e-6)
    assert ort["latency"]["seq_len"] == 64  # the model's limit, not the profile's 128


@pytest.mark.parametrize("queries_only", [False, True])
def test_embedding_exits_in_a_recipe_calibrate_on_pairs_by_recall_at_1(work, checkpoints, tmp_path, queries_only):
    from edgekit.deploy import data

    texts = data.sample_texts()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": texts[i], "doc": texts[i + 1]}) + "\n" for i in range(0, 60, 2)))
    path = work(
        name="embexits",
        model=str(checkpoints["bert-embedding"]),
        data={"train": "train.jsonl", "dev": str(pairs), "calibration": str(pairs)},
        steps={"exits": {"layers": [1, 2], "epochs": 1, "confidence": 0, "queries_only": queries_only}},
        budgets={"max_accuracy_drop": 100},
    )
    runner.build(path, say=quiet, train_progress=False)
    (cal,) = [json.loads(f.read_text()) for f in tmp_path.rglob("calibration.json")]
    assert cal["metric"].startswith("recall@1") and ("queries" in cal["metric"]) == queries_only
    assert sum(cal["points"][0]["exit_histogram"]) == (30 if queries_only else 60)  # the queries (and the docs)


def test_a_step_whose_module_is_missing_says_which_step():
    with pytest.raises(MissingDependency, match="recipe's step lower needs it"):
        pipeline._lazy("edgekit.no_such_module_here", "lower")


def test_hash_path_skips_caches_and_sees_content(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "a.txt").write_text("a")
    h = cache.hash_path(d)
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.pyc").write_bytes(b"x")
    assert cache.hash_path(d) == h
    (d / "a.txt").write_text("b")
    assert cache.hash_path(d) != h


def test_an_exits_step_with_too_few_calibration_texts_for_its_bound_says_how_to_go_on(work):
    from edgekit.build.exits.operating import DevSetTooSmall

    path = work(name="fewcal", steps={"exits": {"layers": [1, 2], "epochs": 1, "limit": 24}})  # the 90 % bound, held out
    with pytest.raises(DevSetTooSmall, match=r"^steps.exits: dev set too small for a 90% bound") as err:
        runner.build(path, say=quiet, train_progress=False)
    assert "steps.exits.holdout: 0" in err.value.hint and "steps.exits.confidence: 0" in err.value.hint


def test_an_exits_step_counts_disagreements_by_expected_cost_on_unlabelled_calibration_texts(work):
    from edgekit.deploy import data

    Path("deploy.txt").write_text("\n".join(data.sample_texts()[300:380]) + "\n")
    exits = {"layers": [1, 2], "epochs": 1, "estimate": "expected", "holdout": 0}
    path = work(name="labelled", steps={"exits": exits}, budgets={"max_accuracy_drop": 100})
    with pytest.raises(ConfigError, match="steps.exits.estimate: expected .* the calibration texts are labelled"):
        runner.build(path, say=quiet, train_progress=False)
    assert not list(Path().rglob("heads"))  # refused before the heads trained
    path = work(
        name="expected",
        data={"train": "train.jsonl", "dev": "dev.jsonl", "calibration": "deploy.txt"},
        steps={"exits": {**exits, "temperature_data": "dev.jsonl"}},
        budgets={"max_accuracy_drop": 100},
    )
    runner.build(path, say=quiet, train_progress=False)
    (cal,) = [json.loads(f.read_text()) for f in Path().rglob("calibration.json")]
    assert cal["metric"] == "expected accuracy under the final exit's probabilities" and cal["temperature_data"] == "dev.jsonl"
