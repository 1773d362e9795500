"""Comparison, Markdown and plots: built from real profiles of tiny artifacts (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact
from edgekit.deploy.eval import evaluate
from edgekit.deploy.profile import ProfileOptions, compare, time_interleaved, write_reports
from edgekit.deploy.render import markdown
from edgekit.deploy.report import Comparison, ratios

FAST = ProfileOptions(warmup=0, min_runs=3, max_runs=4, seconds_per_point=0.01, seq_len=16, seq_lens=[8, 16], batches=[1, 2], cold_runs=0)


@pytest.fixture(scope="module")
def two(exported, tmp_path_factory):
    src = exported("distilbert-classifier")
    root = tmp_path_factory.mktemp("cmp")
    dirs = []
    for t in ("ort-cpu", "openvino-cpu"):
        compile_artifact(src, artifact.read_manifest(src), t, root / t)
        dirs.append(root / t)
    return dirs


def test_interleaving_takes_turns():
    calls = []
    opts = ProfileOptions(warmup=0, min_runs=8, max_runs=8, seconds_per_point=1e-9)
    time_interleaved([lambda i: calls.append("a"), lambda i: calls.append("b")], opts)
    timed = calls[-16:]
    assert timed.count("a") == 8 and timed.count("b") == 8
    # blocks of 2 alternate a/b, then b/a: never all of one before the other
    assert timed[:4] == ["a", "a", "b", "b"] and timed[4:8] == ["b", "b", "a", "a"]


def test_compare_ratios_are_to_the_first(two):
    c = compare(two, FAST)
    assert [r.artifact.target for r in c.reports] == ["ort-cpu", "openvino-cpu"]
    assert all(v == pytest.approx(1.0) for v in c.ratios[0].values() if v is not None)
    r0, r1 = c.reports
    assert c.ratios[1]["first_token_p50_ms"] == pytest.approx(r1.first_token.model_only.p50 / r0.first_token.model_only.p50)
    assert r0.settings.interleaved_with == [str(two[1])]
    assert [p.seq_len for p in r1.latency_vs_seq] == [8, 16]
    assert Comparison.model_validate_json(c.model_dump_json()) == c


def test_reports_json_markdown_and_plots(two, tmp_path):
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": f"sentence number {i}", "label": i % 3}) + "\n" for i in range(6)))
    folder = two[0].parent / "reports"
    for d in two:  # eval results beside the artifacts feed the accuracy-vs-latency plot
        folder.mkdir(exist_ok=True)
        artifact.write_json(folder / f"{d.name}.eval.json", evaluate(d, data, fidelity=False).model_dump())
    c = compare(two, FAST)
    written = write_reports(c.reports, c, folder, "compare")
    names = {p.name for p in written}
    assert {"ort-cpu.profile.json", "openvino-cpu.profile.json", "compare.json", "compare.md"} <= names
    assert {"compare-latency-vs-seq.png", "compare-throughput.png", "compare-accuracy-vs-latency.png"} <= names
    for p in written:
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    md = (folder / "compare.md").read_text()
    assert "ort-cpu" in md and "openvino-cpu" in md and "accuracy" in md
    assert f"({c.ratios[1]['first_token_p50_ms']:.2f}x)" in md
    assert "![compare-throughput](compare-throughput.png)" in md


def test_markdown_of_a_single_report_has_every_percentile(two):
    c = compare(two[:1], FAST)
    md = markdown(c.reports)
    st = c.reports[0].first_token.model_only
    assert f"| first-token model-only | {st.p50:.2f} | {st.p90:.2f} | {st.p95:.2f} | {st.p99:.2f} |" in md
    assert ratios(c.reports)[0]["first_token_p50_ms"] == 1.0


def test_reports_of_one_target_get_one_file_each(two, tmp_path):
    """Several artifacts of the same target (e.g. fp32, early exit, low-bit on openvino-cpu)
    must not overwrite each other's JSON."""
    from edgekit.deploy.profile import report_names

    c = compare(two, FAST)
    r0, r1 = c.reports
    same = [r0, r1.model_copy(update={"artifact": r1.artifact.model_copy(update={"target": r0.artifact.target})})]
    names = report_names(same)
    assert len(set(names)) == 2 and all(r0.artifact.target in n for n in names), names
    written = write_reports(same, None, tmp_path / "rep", "x", plots=False)
    assert len({p.name for p in written if p.name.endswith(".profile.json")}) == 2
    assert report_names([r0, r0]) == [names[0], names[0] + "-2"]


def _text80(table) -> str:
    from rich.console import Console

    console = Console(width=80, record=True, file=open("/dev/null", "w"), color_system=None)  # noqa: SIM115
    console.print(table)
    return console.export_text()


def test_tables_fit_80_columns_without_cutting_a_cell(two):
    """Real reports (two measured, one imported with a long name): nothing wider than 80, no ellipsis."""
    from pathlib import Path

    from edgekit.deploy.foreign import import_report
    from edgekit.deploy.render import comparison_table, latency_table, point_rows

    c = compare(two, FAST)
    foreign_dir = Path(__file__).parents[1] / "data" / "foreign"
    imported = import_report(foreign_dir / "benchmark_app-cpp", seq_len=128, name="minilm-l6-fp32-buckets-64-128-from-benchmark-app")
    reports = [*c.reports, imported]
    for table in (latency_table(reports), comparison_table(Comparison(created=c.created, reports=reports, ratios=ratios(reports)))):
        text = _text80(table)
        lines = text.splitlines()
        assert max(len(line) for line in lines) <= 80, text
        assert "…" not in text and "..." not in text, text
        first_column = "".join(line.split("│")[1].strip() for line in lines if line.startswith("│"))
        for r in reports:  # a folded label is still whole, line after line
            assert f"{r.artifact.name}/{r.artifact.target}" in first_column, first_column
    # every figure of every row is printed whole
    text = _text80(latency_table(reports))
    for r in reports:
        for row in point_rows(r):
            for cell in row[1:]:
                assert cell in text, (cell, text)
