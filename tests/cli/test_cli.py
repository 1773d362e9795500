"""CLI: fast --help without heavy imports, and every user error as one line, exit code 2,
no traceback, no half-written artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli  # noqa: E402 - shared by the CLI tests

COMMANDS = ["export", "compile", "profile", "eval", "targets", "devices", "quickstart", "quantize", "report", "exits"]


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    joined = " ".join(line.strip() for line in lines)  # rich may wrap a long line
    for fragment in fragments:
        assert fragment in joined, joined


def no_partials(parent: Path) -> bool:
    return not any(".partial-" in p.name for p in parent.iterdir()) if parent.exists() else True


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_is_light(command):
    args = ["--help"] if command is None else [command, "--help"]
    code = (
        "import sys, json\n"
        "from edgekit.cli.app import app\n"
        f"try:\n    app({args!r})\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'openvino', 'tensorrt', 'onnxruntime') if m in sys.modules]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_targets_and_devices_list_usability(monkeypatch, capsys):
    code, out, _ = run_cli(["targets"], monkeypatch, capsys)
    assert code == 0 and "ort-cpu" in out and "openvino-cpu" in out
    code, out, _ = run_cli(["devices"], monkeypatch, capsys)
    assert code == 0 and "x86-64-cpu" in out and "intel-xeon-amx" in out


def test_quickstart_runs_only_targets_that_execute_here():
    """A compile-only target (a TensorRT plan with no tensorrt here) compiles but is not
    evaluated or profiled by the main job: it is listed as skipped with the reason."""
    from edgekit.build.plan import usable_targets
    from edgekit.deploy.targets import TARGETS

    compiles, _ = usable_targets()
    runs, skipped = usable_targets(must_run=True)
    assert {"ort-cpu", "openvino-cpu", "ort-mobile"} <= set(runs) <= set(compiles)
    for name in set(compiles) - set(runs):
        assert TARGETS[name]().runs_here() is not None
        assert skipped[name].startswith("compiles here, runs elsewhere")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "jetson" in compiles and "jetson" not in runs


def test_missing_path(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], monkeypatch, capsys)
    assert_user_error(code, err, "no such directory")
    assert not (tmp_path / "o").exists()


def test_not_a_model_dir(monkeypatch, capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run_cli(["export", str(tmp_path), "--out", str(tmp_path / "o")], monkeypatch, capsys)
    assert_user_error(code, err, "no config.json")


def test_truncated_safetensors(monkeypatch, capsys, copy_checkpoint, tmp_path):
    ckpt = copy_checkpoint("bert-embedding")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = run_cli(["compile", str(ckpt), "--out", str(tmp_path / "dist")], monkeypatch, capsys)
    assert_user_error(code, err, "truncated")
    assert not (tmp_path / "dist" / "onnx").exists() and no_partials(tmp_path / "dist")


def test_unsupported_architecture_lists_supported(monkeypatch, capsys, copy_checkpoint):
    ckpt = copy_checkpoint("bert-embedding")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["export", str(ckpt)], monkeypatch, capsys)
    assert_user_error(code, err, "'gpt2' is not supported", "bert", "roberta", "distilbert")


def test_unknown_target(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(["compile", "--target", "tpu", "--out", str(tmp_path)], monkeypatch, capsys)
    assert_user_error(code, err, "unknown target 'tpu'", "ort-cpu", "openvino-cpu")


def test_command_line_mistakes_are_one_line_with_the_help_to_read(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # exits train writes build/exits by default
    code, _, err = run_cli(["exits", "train", "--data", "x.txt", "--bogus"], monkeypatch, capsys)
    assert_user_error(code, err, "No such option: --bogus", "see 'edgekit exits train --help'")
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["exits", "train"], monkeypatch, capsys)
    assert_user_error(code, err, "Missing option '--data'")
    code, _, err = run_cli(["exits", "train", "--data", "x.txt", "--epochs", "many"], monkeypatch, capsys)
    assert_user_error(code, err, "Invalid value for '--epochs'")
    code, _, err = run_cli(["nosuchcommand"], monkeypatch, capsys)
    assert_user_error(code, err, "No such command 'nosuchcommand'", "see 'edgekit --help'")
    assert not (tmp_path / "build").exists()
    code, out, _ = run_cli(["exits"], monkeypatch, capsys)  # a group alone shows its help, once
    assert code == 2 and out.count("Usage:") == 1 and "calibrate" in out
    code, out, _ = run_cli(["exits", "train", "--help"], monkeypatch, capsys)
    assert code == 0 and "--unlabeled" in out


def test_bad_target_option(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(["compile", "-t", "openvino-cpu", "-o", "precision=int3", "--out", str(tmp_path)], monkeypatch, capsys)
    assert_user_error(code, err, "option precision")
    code, _, err = run_cli(["compile", "-t", "ort-cpu", "-o", "novalue", "--out", str(tmp_path)], monkeypatch, capsys)
    assert_user_error(code, err, "KEY=VALUE")
    for target in ("ort-cpu", "openvino-cpu"):  # openvino-cpu raised its own RuntimeError at compile
        code, _, err = run_cli(["compile", "-t", target, "-o", "threads=-1", "--out", str(tmp_path)], monkeypatch, capsys)
        assert_user_error(code, err, f"target {target}: option threads: Input should be greater than or equal to 0")


def test_missing_runtime_names_the_extra(monkeypatch, capsys, checkpoints, tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    code, _, err = run_cli(
        ["compile", str(checkpoints["bert-embedding"]), "-t", "openvino-cpu", "--out", str(tmp_path / "d")], monkeypatch, capsys
    )
    assert_user_error(code, err, "openvino is not installed", "pip install 'edgekit[openvino]'")
    assert not (tmp_path / "d").exists()


def test_unwritable_output_dir(monkeypatch, capsys, checkpoints, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_cli(["export", str(checkpoints["bert-embedding"]), "--out", str(blocker / "sub")], monkeypatch, capsys)
    assert_user_error(code, err, "cannot write the output directory")


def test_parity_failure_leaves_no_artifact(monkeypatch, capsys, checkpoints, tmp_path):
    out = tmp_path / "onnx"
    code, _, err = run_cli(["export", str(checkpoints["bert-classifier"]), "--out", str(out), "--atol", "1e-30"], monkeypatch, capsys)
    assert_user_error(code, err, "differs from PyTorch", "'logits'", "max abs diff")
    assert not out.exists() and no_partials(tmp_path)


def test_wrong_data_schema(monkeypatch, capsys, exported, tmp_path):
    bad = tmp_path / "dev.jsonl"
    bad.write_text('{"sentence": "x", "y": 1}\n')
    code, _, err = run_cli(["eval", str(exported("bert-classifier")), "--data", str(bad)], monkeypatch, capsys)
    assert_user_error(code, err, "dev.jsonl:1", "'text'")
    bad.write_text("{not json\n")
    code, _, err = run_cli(["eval", str(exported("bert-classifier")), "--data", str(bad)], monkeypatch, capsys)
    assert_user_error(code, err, "dev.jsonl:1: not valid JSON")


def test_profile_of_a_non_artifact(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(["profile", str(tmp_path)], monkeypatch, capsys)
    assert_user_error(code, err, "not a finished edgekit artifact")


def test_sizes_and_counts_below_one_are_one_line_errors(monkeypatch, capsys, exported, tmp_path):
    art = str(exported("bert-classifier"))
    dev = tmp_path / "dev.jsonl"
    dev.write_text('{"text": "a short text", "label": "positive"}\n')
    code, _, err = run_cli(["eval", art, "--data", str(dev), "--batch", "0"], monkeypatch, capsys)
    assert_user_error(code, err, "'--batch'", "edgekit eval --help")
    for flags, field in ((["--batches", "4,0"], "batches"), (["--seq-lens", "2"], "seq_lens"), (["--seq-len", "0"], "seq_len")):
        code, _, err = run_cli(["profile", art, *flags, "--out", str(tmp_path / "r")], monkeypatch, capsys)
        assert_user_error(code, err, f"invalid profile option: {field}: Input should be greater than or equal to")
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(monkeypatch, capsys, tmp_path):
    from edgekit.errors import CheckpointError

    with pytest.raises(CheckpointError):
        run_cli(["--debug", "export", str(tmp_path / "nope")], monkeypatch, capsys)


def test_export_compile_eval_profile_through_the_cli(monkeypatch, capsys, checkpoints, tmp_path):
    dist = tmp_path / "dist"
    code, out, err = run_cli(
        ["compile", str(checkpoints["roberta-classifier"]), "-t", "ort-cpu", "-t", "openvino-cpu", "--out", str(dist)], monkeypatch, capsys
    )
    assert code == 0, err
    assert out.count("parity vs PyTorch") == 2 and "-> ok" in out
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\nA plain sentence.,neutral\nAnother one here.,positive\n")
    code, out, err = run_cli(["eval", str(dist / "openvino-cpu"), "--data", str(dev)], monkeypatch, capsys)
    assert code == 0, err
    report = json.loads((dist / "reports" / "openvino-cpu.eval.json").read_text())
    assert report["n"] == 2 and 0 <= report["metrics"]["accuracy"] <= 1
    code, out, err = run_cli(
        [
            "profile",
            str(dist / "ort-cpu"),
            "--seq-len",
            "16",
            "--batches",
            "1,2",
            "--seconds",
            "0.01",
            "--min-runs",
            "3",
            "--cold-runs",
            "0",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    prof = json.loads((dist / "reports" / "ort-cpu.profile.json").read_text())
    assert prof["first_token"]["model_only"]["n"] >= 3 and [p["batch"] for p in prof["throughput"]] == [1, 2]


FOREIGN = Path(__file__).parents[1] / "data" / "foreign"


def test_report_import_then_show_side_by_side(monkeypatch, capsys, tmp_path):
    """Foreign reports land in edgekit's schema and in the same table as each other."""
    trt = tmp_path / "trt.json"
    code, out, err = run_cli(
        [
            "report",
            "import",
            str(FOREIGN / "trtexec-times.json"),
            "--seq-len",
            "128",
            "--target",
            "jetson",
            "--name",
            "orin",
            "--json",
            str(trt),
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    ov = tmp_path / "ov.json"
    code, _, err = run_cli(
        ["report", "import", str(FOREIGN / "benchmark_app-cpp"), "--seq-len", "128", "--json", str(ov)], monkeypatch, capsys
    )
    assert code == 0, err
    from edgekit.deploy import foreign, report

    a = report.load(trt)
    assert a.artifact.target == "jetson" and a.source.tool.startswith("trtexec")
    direct = foreign.import_report(FOREIGN / "trtexec-times.json", seq_len=128)
    assert a.first_token.model_only == direct.first_token.model_only
    md = tmp_path / "both.md"
    code, out, err = run_cli(["report", "show", str(trt), str(ov), "--markdown", str(md)], monkeypatch, capsys)
    assert code == 0, err
    assert "orin" in out and md.read_text().count("|") > 10


def test_report_show_refuses_a_file_that_is_not_a_profile(monkeypatch, capsys, tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    code, _, err = run_cli(["report", "show", str(bad)], monkeypatch, capsys)
    assert_user_error(code, err, "not an edgekit profile report", "report import")
    code, _, err = run_cli(["report", "import", str(tmp_path / "none.json")], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err


def test_profile_schema_in_docs_is_current(tmp_path, monkeypatch, capsys):
    """docs/profile.schema.json is what 'edgekit report schema' writes from the models."""
    out = tmp_path / "s.json"
    code, _, err = run_cli(["report", "schema", "--out", str(out)], monkeypatch, capsys)
    assert code == 0, err
    shipped = Path(__file__).parents[2] / "docs" / "profile.schema.json"
    assert json.loads(out.read_text()) == json.loads(shipped.read_text()), "run 'edgekit report schema' and commit docs/profile.schema.json"


def test_compile_for_a_device_checks_its_targets_and_precisions(monkeypatch, capsys, tmp_path):
    from edgekit.build.plan import resolve_target

    jetson = resolve_target("jetson", {"precision": "fp16"}, "jetson-orin-nano")
    assert jetson.options["device"] == "jetson-orin-nano" and jetson.precision == "fp16" and jetson.device == "jetson-orin-nano"
    code, _, err = run_cli(
        ["compile", str(tmp_path / "none"), "--device", "jetson-orin-nano", "-t", "openvino-cpu", "--out", str(tmp_path / "o")],
        monkeypatch,
        capsys,
    )
    assert_user_error(code, err, "does not run target 'openvino-cpu'", "jetson")
    code, _, err = run_cli(
        ["compile", "--device", "raspberry-pi-5", "-o", "precision=fp16", "--out", str(tmp_path / "o")], monkeypatch, capsys
    )
    assert_user_error(code, err, "target ort-mobile: option precision")
    code, _, err = run_cli(["compile", "--device", "no-such-board", "--out", str(tmp_path / "o")], monkeypatch, capsys)
    assert_user_error(code, err, "unknown device", "jetson-orin-nano")
    assert not (tmp_path / "o").exists()


def test_quantize_refuses_an_unknown_scheme(monkeypatch, capsys, tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("a sentence\n")
    code, _, err = run_cli(
        ["quantize", "default", "--data", str(data), "--scheme", "w0a0", "--out", str(tmp_path / "q")], monkeypatch, capsys
    )
    assert_user_error(code, err, "w0a0")
    assert not (tmp_path / "q").exists()
