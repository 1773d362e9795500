"""edgekit.build.quant.report: earlier quant_report.json files read back; the package imports without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.build.quant.report import EvalResult, QuantReport
from edgekit.errors import ArtifactError

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"
FULL = sorted(RESULTS.glob("ddp/*.quant_report.json"))
PER_STAGE = sorted(p for p in RESULTS.rglob("*quant_report.json") if p not in FULL)


@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(RESULTS)))
def test_bench_reports_read_back_unchanged(path):
    report = QuantReport.read(path)
    assert report.stages[-1].eval.accuracy > 0.5 and report.teacher_eval.accuracy > 0.5
    assert json.loads(report.model_dump_json()) == json.loads(path.read_text())  # same keys, same values


@pytest.mark.parametrize("path", PER_STAGE, ids=lambda p: str(p.relative_to(RESULTS)))
def test_bench_per_stage_reports_read_back(path):
    # bench/quant_bench.py writes one stage per file under "stage"
    doc = json.loads(path.read_text())
    stage = doc.pop("stage")
    report = QuantReport.model_validate({**doc, "stages": [stage]})
    assert report.stages[0].model.savings.flops_saving > 1
    assert report.model_dump(mode="json")["stages"][0] == stage


def test_mapping_reads_match_attributes():
    report = QuantReport.read(FULL[0])
    typed = report.stages[0]
    stage = report["stages"][0]  # the JSON form, as the dict report gave it
    assert stage == json.loads(FULL[0].read_text())["stages"][0]
    assert (stage["scheme"], stage["steps"], stage["seconds"]) == (typed.scheme, typed.steps, typed.seconds)
    assert stage.get("eval", {}).get("accuracy") == typed.eval.accuracy == typed.get("eval", {}).get("accuracy")
    assert report.get("teacher_eval", {}).get("accuracy") == report.teacher_eval.accuracy
    assert (report["texts"], report["device"]) == (report.texts, report.device)
    assert "eval" in typed and "nope" not in typed and "teacher_eval" in report
    with pytest.raises(KeyError):
        report["nope"]
    unmeasured = report.model_copy(update={"teacher_eval": None})
    assert unmeasured.get("teacher_eval", {}).get("accuracy") is None and "teacher_eval" not in unmeasured.model_dump()
    assert EvalResult(texts=3, accuracy=None, cosine_to_teacher=0.5).model_dump() == {"texts": 3, "cosine_to_teacher": 0.5}


def test_unreadable_report_is_an_artifact_error(tmp_path):
    bad = tmp_path / "quant_report.json"
    bad.write_text(json.dumps({"stages": []}))
    with pytest.raises(ArtifactError, match="not a quantization report"):
        QuantReport.read(bad)
    with pytest.raises(ArtifactError, match="cannot read"):
        QuantReport.read(tmp_path / "missing.json")


def test_configs_options_and_report_import_without_torch():
    code = (
        "import sys\n"
        "import edgekit.build.quant as q, edgekit.build.quant.config as c\n"
        "from edgekit.build.quant.options import TrainOptions\n"
        "from edgekit.build.quant.report import QuantReport\n"
        "c.SCHEMES; q.make_config('w1a1'); q.DISTILL_DEFAULTS['bit']\n"
        "TrainOptions(model='m', data='d', out='o', scheme='w2a8', ce=0.5)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "q.quantize_\n"  # a torch-side name: imported on first use
        "assert 'torch' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_lazy_names_and_submodules():
    import edgekit.build.quant as q
    from edgekit.build.quant import distill

    assert q.quantize_.__module__ == "edgekit.build.quant.api"
    assert distill.DEFAULTS is q.DISTILL_DEFAULTS and distill.DistillConfig is q.DistillConfig
    assert {"quantize_", "QuantLinear", "SCHEMES"} <= set(dir(q))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        q.nope  # noqa: B018
