"""html: one self-contained page from real reports, checked in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.build.exits.calibrate import CalibrationReport, choose, save, sweep
from edgekit.deploy import artifact, html
from edgekit.deploy.eval import evaluate
from edgekit.deploy.foreign import import_report
from edgekit.deploy.profile import ProfileOptions, profile_many, write_reports
from edgekit.deploy.render import label
from edgekit.errors import DataError

FAST = ProfileOptions(warmup=0, min_runs=3, max_runs=4, seconds_per_point=0.01, seq_len=16, seq_lens=[8, 16], batches=[1, 2], cold_runs=0)
FOREIGN = Path(__file__).parents[1] / "data" / "foreign"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def inputs(exported, tmp_path_factory) -> list[Path]:
    """Two measured profiles with their eval reports, an imported benchmark_app report, a calibration."""
    src = exported("distilbert-classifier")
    root = tmp_path_factory.mktemp("html")
    dirs = []
    for t in ("ort-cpu", "openvino-cpu"):
        compile_artifact(src, artifact.read_manifest(src), t, root / t)
        dirs.append(root / t)
    reports = profile_many(dirs, FAST)
    written = write_reports(reports, None, root / "reports", "cmp", plots=False)
    data = root / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": f"sentence number {i}", "label": i % 3}) + "\n" for i in range(6)))
    for d in dirs:
        artifact.write_json(root / "reports" / f"{d.name}.eval.json", evaluate(d, data, fidelity=False).model_dump())
    imported = root / "reports" / "benchmark_app.edgekit.json"
    artifact.write_json(imported, import_report(FOREIGN / "benchmark_app-cpp", seq_len=128, name="benchmark_app").model_dump())
    rng = np.random.default_rng(0)
    exits = [{"output": rng.normal(size=(40, 3)).astype(np.float32)} for _ in range(3)]
    labels = rng.integers(0, 3, 40)
    base, points = sweep(exits, [2, 4, 6], "classifier", labels=labels, policies=["entropy", "patience"], segment_ms=[1.0, 1.0, 1.0])
    report = CalibrationReport(
        base_quality=base,
        layers=[2, 4, 6],
        per_exit_quality=[base] * 3,
        points=points,
        chosen=choose(base, points, max_drop=50.0),
        recommendation="exits",
        message="",
        segment_latency_ms=[1.0, 1.0, 1.0],
        data="dev.jsonl",
    )
    save(report, root / "cal")
    return [
        *(p for p in written if p.name.endswith(".profile.json")),
        root / "reports" / "ort-cpu.eval.json",
        imported,
        root / "cal" / "calibration.json",
    ]


def test_page_holds_every_table_and_inlined_plots(inputs, tmp_path):
    out = html.write(inputs, tmp_path / "report.html")
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # self-contained: no external fetch of any kind
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page), "an external asset"
    assert "<script" not in page and "@import" not in page and "url(" not in page
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    # latency-vs-seq, throughput, accuracy-vs-latency, calibration
    assert len(pngs) == 4
    import base64

    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    labels = [label(r) for r in html.read(inputs).profiles]
    assert len(labels) == 3 and labels[-1] == "benchmark_app/openvino-cpu"
    for text in (*labels, "accuracy"):
        assert text in page, text
    assert "Early-exit calibration" in page and "Accuracy of the artifacts" in page and "not measured by benchmark_app" in page


def test_a_folder_is_read_and_a_stray_file_is_a_data_error(inputs, tmp_path):
    got = html.read([inputs[0].parent])
    assert len(got.profiles) == 3 and len(got.evals) == 2
    (bad := tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(DataError, match="not a profile, comparison, eval or calibration report"):
        html.read([bad])
    with pytest.raises(DataError, match="no report files"):
        html.read([tmp_path / "empty"] if (tmp_path / "empty").mkdir() is None else [])


def test_cli_report_html(inputs, tmp_path, monkeypatch, capsys):
    from typer.testing import CliRunner

    from edgekit.cli.report import app

    result = CliRunner().invoke(app, ["html", *map(str, inputs), "--out", str(tmp_path / "r.html"), "--title", "nightly"])
    assert result.exit_code == 0, result.output
    assert "<title>nightly</title>" in (tmp_path / "r.html").read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_renders_in_headless_chromium(inputs, tmp_path):
    out = html.write(inputs, tmp_path / "report.html")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    rows = re.findall(r"<tr>.*?</tr>", dom, flags=re.S)
    assert len(rows) >= 12, dom[:2000]
    for name in (label(r) for r in html.read(inputs).profiles):
        assert any(name in r for r in rows), name
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1200,1600", f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    dark = (pixels.mean(axis=-1) < 0.5).mean()
    assert 0.005 < dark < 0.5, dark  # text and table borders, not a blank (or black) page
    # matplotlib's first line colour (#1f77b4) is on screen: an inlined plot was decoded and drawn
    blue = np.abs(pixels - np.array([0x1F, 0x77, 0xB4]) / 255).max(axis=-1) < 0.08
    assert blue.sum() > 50, blue.sum()
