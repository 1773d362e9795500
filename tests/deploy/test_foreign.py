"""foreign: trtexec and benchmark_app reports imported into the ProfileReport schema.

The fixtures in tests/data/foreign follow the tools' own writers (see the README there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.deploy.foreign import FORMATS, detect, import_report
from edgekit.deploy.render import latency_table, markdown
from edgekit.deploy.report import ProfileReport, headline
from edgekit.errors import ConfigError, DataError, EdgekitError

DATA = Path(__file__).parents[1] / "data" / "foreign"
TIMES, OLD_TIMES, PROFILE = DATA / "trtexec-times.json", DATA / "trtexec-8.2-times.json", DATA / "trtexec-profile.json"
CPP, PY = DATA / "benchmark_app-cpp" / "benchmark_report.json", DATA / "benchmark_app-python" / "benchmark_report.json"


def column(path: Path, key: str) -> list[float]:
    return [r[key] for r in json.loads(path.read_text())]


def assert_one_line_error(excinfo, *words: str) -> None:
    text = str(excinfo.value)
    assert "\n" not in text, text
    for w in words:
        assert w in text, text


# ---- trtexec --exportTimes -------------------------------------------------------------


def test_trtexec_model_only_is_latency_ms_with_numpy_percentiles():
    r = import_report(TIMES, batch=8, seq_len=128)
    lat = column(TIMES, "latencyMs")
    s = r.first_token.model_only
    assert s.n == len(lat) == 24
    for q in (50, 90, 95, 99):
        assert getattr(s, f"p{q}") == pytest.approx(np.percentile(lat, q))
    assert (s.mean, s.min, s.max, s.std) == pytest.approx((np.mean(lat), np.min(lat), np.max(lat), np.std(lat)))
    assert r.source.tool == "trtexec" and r.source.version is None and r.source.file == str(TIMES)
    assert r.artifact.target == "tensorrt" and r.artifact.name == "trtexec-times"
    assert "H2D" in r.includes["model_only"] and "D2H" in r.includes["model_only"]
    assert r.first_token.end_to_end is None and r.cold_first_result is None and r.host is None
    assert r.memory.peak_rss_mb is None and r.settings.batches == [8] and r.settings.seq_len == 128


def test_trtexec_compute_only_and_transfers_are_in_the_notes():
    r = import_report(TIMES)
    compute = column(TIMES, "computeMs")
    gpu = next(n for n in r.source.notes if n.startswith("GPU compute only"))
    assert f"p50 {np.percentile(compute, 50):.3f}" in gpu and f"p99 {np.percentile(compute, 99):.3f}" in gpu
    assert any(n.startswith("H2D p50") and "enqueue p50" in n for n in r.source.notes)
    # latencyMs is H2D + compute + D2H: never below compute alone
    assert r.first_token.model_only.p50 > np.percentile(compute, 50)


def test_trtexec_throughput_from_the_wall_span():
    recs = json.loads(TIMES.read_text())
    span = max(r["endD2hMs"] for r in recs) - min(r["startH2dMs"] for r in recs)
    r = import_report(TIMES, batch=8, seq_len=128)
    (p,) = r.throughput
    assert p.best and p.batch == 8 and p.seq_len == 128 and p.runs == 24
    assert p.seq_per_s == pytest.approx(8 * 24 / span * 1000)
    assert p.tokens_per_s == pytest.approx(p.seq_per_s * 128)
    assert p.latency_ms_p50 == r.first_token.model_only.p50
    assert any("batch 8" in w for w in r.warnings)  # first-token is not batch 1 here


def test_trtexec_without_seq_len_tables_no_throughput():
    r = import_report(TIMES)
    assert r.throughput == [] and r.first_token.seq_len is None and r.first_token.lengths == "unknown"
    assert any("pass seq_len" in n for n in r.source.notes)


def test_trtexec_before_8_4_is_flagged_for_its_warmups():
    r = import_report(OLD_TIMES)
    assert r.first_token.model_only.p50 == pytest.approx(np.percentile(column(OLD_TIMES, "latencyMs"), 50))
    assert any("before TensorRT 8.4" in w and "warm-up" in w for w in r.warnings)


def test_trtexec_no_data_transfers_is_warned(tmp_path):
    recs = json.loads(TIMES.read_text())
    for rec in recs:
        rec.update(h2dMs=0, d2hMs=0, latencyMs=rec["computeMs"])
    (f := tmp_path / "t.json").write_text(json.dumps(recs))
    assert any("noDataTransfers" in w for w in import_report(f).warnings)


def test_trtexec_latency_is_summed_when_the_file_lacks_it(tmp_path):
    recs = [{k: v for k, v in rec.items() if k != "latencyMs"} for rec in json.loads(TIMES.read_text())]
    (f := tmp_path / "t.json").write_text(json.dumps(recs))
    sums = [r["h2dMs"] + r["computeMs"] + r["d2hMs"] for r in recs]
    assert import_report(f, "trtexec-times").first_token.model_only.p50 == pytest.approx(np.percentile(sums, 50))


def test_trtexec_profile_is_summarised_in_the_notes():
    r = import_report(TIMES, layers=PROFILE)
    note = next(n for n in r.source.notes if n.startswith("per-layer"))
    layers = json.loads(PROFILE.read_text())[1:]
    total = sum(x["averageMs"] for x in layers)
    assert note.startswith("per-layer (trtexec --exportProfile, 24 profiled iterations") and f"{total:.3f} ms per inference" in note
    assert "{ForeignNode[bert.embeddings" in note and "(95%)" in note


def test_a_profile_alone_is_refused_with_the_way_to_attach_it():
    with pytest.raises(DataError) as e:
        import_report(PROFILE)
    assert_one_line_error(e, str(PROFILE), "per-layer", "layers=")


# ---- benchmark_app -------------------------------------------------------------------


def test_benchmark_app_cpp_maps_what_it_reports():
    r = import_report(CPP, seq_len=128)
    res = json.loads(CPP.read_text())["execution_results"]
    s = r.first_token.model_only
    assert (s.n, s.p50, s.mean, s.min, s.max) == (
        res["iterations_num"],
        res["latency_median"],
        res["latency_avg"],
        res["latency_min"],
        res["latency_max"],
    )
    assert (s.p90, s.p95, s.p99, s.std) == (None, None, None, None)
    assert any("not reported by benchmark_app: p90, p95, p99, std" in n for n in r.source.notes)
    (p,) = r.throughput
    assert p.seq_per_s == res["throughput"] and p.tokens_per_s == pytest.approx(res["throughput"] * 128) and p.best
    assert r.source.tool == "benchmark_app" and r.artifact.target == "openvino-cpu" and r.artifact.name == "main_graph"
    assert r.artifact.path == "minilm-l6/model.xml" and r.settings.threads == 4 and r.settings.seconds_per_point == 10.0
    assert r.warnings == []  # sync, one request: comparable with edgekit's model_only


def test_benchmark_app_python_strings_and_async_warning():
    r = import_report(PY)
    s = r.first_token.model_only
    assert (s.n, s.p50, s.mean, s.min, s.max) == (20212, 11.74, 11.86, 8.12, 29.53)
    assert any("4 async requests in flight" in w for w in r.warnings)
    assert any(n.startswith("benchmark_app (Python app)") for n in r.source.notes)


def test_benchmark_app_folder_and_counters_beside_it():
    r = import_report(CPP.parent)
    assert r.source.file == str(CPP)
    note = next(n for n in r.source.notes if n.startswith("per-layer"))
    assert (
        "average counters" in note
        and "5 timed layers, 1.937 ms" in note
        and "intermediate/dense/MatMul [brgemm_avx512_FP32] 1.103 ms" in note
    )
    note = next(n for n in import_report(PY.parent).source.notes if n.startswith("per-layer"))
    assert "mean of 2 requests" in note and "1.975 ms per inference" in note  # (1.937 + 1.04 * 1.937) / 2


def test_benchmark_app_batch_from_the_report_wins(tmp_path):
    r = import_report(CPP, batch=4, seq_len=128)
    assert r.throughput[0].batch == 1 and any("batch 4 was given" in n for n in r.source.notes)


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda d: d["execution_results"].update(percentile_boundary=90), ["90th latency percentile"]),
        (lambda d: d["execution_results"].update(error="Cannot load library"), ["failed run", "Cannot load library"]),
        (lambda d: [d["execution_results"].pop(k) for k in ("latency_median", "percentile_boundary")], ["no latency figures"]),
        (lambda d: d["execution_results"].update(latency_avg="fast"), ["execution_results.latency_avg", "not a number"]),
        (lambda d: d["execution_results"].pop("iterations_num"), ["execution_results.iterations_num is missing"]),
    ],
)
def test_benchmark_app_refusals(tmp_path, change, words):
    d = json.loads(CPP.read_text())
    change(d)
    (f := tmp_path / "benchmark_report.json").write_text(json.dumps(d))
    with pytest.raises(DataError) as e:
        import_report(f)
    assert_one_line_error(e, str(f), *words)


def test_python_percentile_key_is_read(tmp_path):
    d = json.loads(PY.read_text())
    d["execution_results"]["latency (90 percentile) (ms)"] = d["execution_results"].pop("latency (ms)")
    (f := tmp_path / "benchmark_report.json").write_text(json.dumps(d))
    with pytest.raises(DataError, match="90th latency percentile"):
        import_report(f)


# ---- detection, errors, round trip -------------------------------------------------------


@pytest.mark.parametrize(
    "path, fmt",
    [(TIMES, "trtexec-times"), (OLD_TIMES, "trtexec-times"), (PROFILE, "trtexec-profile"), (CPP, "benchmark-app"), (PY, "benchmark-app")],
)
def test_detect(path, fmt):
    assert detect(json.loads(path.read_text()), path) == fmt
    assert fmt in FORMATS


def test_explicit_format_equals_detected():
    assert import_report(TIMES, "trtexec-times") == import_report(TIMES)
    assert import_report(CPP, "benchmark-app") == import_report(CPP)


@pytest.mark.parametrize(
    "content, words",
    [
        ("not json {", ["not JSON"]),
        ('{"foo": 1}', ["not a report edgekit can import", "object with foo"]),
        ("[1, 2, 3]", ["not a report edgekit can import", "array of 3"]),
        ("[]", ["not a report edgekit can import"]),
        ('[{"computeMs": 1.0}]', ["no h2dMs or inMs"]),
        ('[{"computeMs": 1.0, "h2dMs": "x", "d2hMs": 0.1, "startH2dMs": 0, "endD2hMs": 1}]', ["record 0 h2dMs is 'x', not a number"]),
        ('{"report_type": "average", "avg_performance": {"nodes": []}}', ["per-layer counters", "benchmark_report.json"]),
    ],
)
def test_wrong_files_are_one_line_data_errors(tmp_path, content, words):
    (f := tmp_path / "x.json").write_text(content)
    with pytest.raises(DataError) as e:
        import_report(f)
    assert_one_line_error(e, str(f), *words)
    assert e.value.hint and (
        ("trtexec-times" in e.value.hint and "benchmark-app" in e.value.hint) or "benchmark_report.json" in e.value.hint
    )


def test_missing_file_and_wrong_explicit_format(tmp_path):
    with pytest.raises(DataError) as e:
        import_report(tmp_path / "nope.json")
    assert_one_line_error(e, "nope.json", "no such file")
    with pytest.raises(DataError) as e:
        import_report(TIMES, "benchmark-app")
    assert_one_line_error(e, str(TIMES), "execution_results")
    with pytest.raises(DataError) as e:
        import_report(CPP, "trtexec-times")
    assert_one_line_error(e, str(CPP), "JSON array")


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError) as e:
        import_report(TIMES, "nsys")  # type: ignore[arg-type]
    assert_one_line_error(e, "unknown report format 'nsys'")
    assert "trtexec-times" in e.value.hint
    with pytest.raises(ConfigError):
        import_report(TIMES, batch=0)
    with pytest.raises(DataError) as e:
        import_report(TIMES, layers=CPP)
    assert_one_line_error(e, "not a per-layer file")


def test_never_a_bare_key_or_type_error(tmp_path):
    shapes = [
        '[{"count": 3}]',
        '[{"latencyMs": 1}]',
        '{"execution_results": []}',
        '{"execution_results": {"latency_median": null}}',
        '[{"computeMs": 1, "h2dMs": 0, "d2hMs": 0, "startH2dMs": 5, "endD2hMs": 5}]',
        '"just a string"',
        "null",
    ]
    for i, content in enumerate(shapes):
        (f := tmp_path / f"{i}.json").write_text(content)
        with pytest.raises(EdgekitError):
            import_report(f)


@pytest.mark.parametrize(
    "path, kw", [(TIMES, {"batch": 8, "seq_len": 128, "layers": PROFILE}), (OLD_TIMES, {}), (CPP, {"seq_len": 128}), (PY, {})]
)
def test_round_trip_and_render(path, kw):
    r = import_report(path, **kw)
    assert ProfileReport.model_validate_json(r.model_dump_json()) == r
    md = markdown([r])
    assert r.source.tool in md and "| first-token model-only |" in md
    latency_table([r])  # p90/p99 None render as "-"
    h = headline(r)
    assert h["first_token_p50_ms"] == r.first_token.model_only.p50 and h["cold_first_result_ms"] is None


def test_markdown_shows_missing_percentiles_as_dashes():
    md = markdown([import_report(CPP)])
    assert "| first-token model-only | 7.04 | - | - | - | 7.17 | 1389 |" in md


def test_fixtures_are_the_committed_files():
    # the README documents every fixture; keep the two in step
    readme = (DATA / "README.md").read_text()
    for f in DATA.rglob("*.json"):
        assert f"`{f.relative_to(DATA).as_posix()}`" in readme or f"`{f.name}`" in readme, f


# ---- real benchmark_app output ------------------------------------------------------------

REAL = DATA / "benchmark_app-real"


def test_real_benchmark_app_report_imports():
    """A report benchmark_app itself wrote (Python app, OpenVINO 2026.4; README says the command)."""
    r = import_report(REAL, seq_len=128, name="benchmark_app")
    res = json.loads((REAL / "benchmark_report.json").read_text())["execution_results"]
    s = r.first_token.model_only
    assert (s.n, s.p50, s.mean, s.min, s.max) == (
        int(res["total number of iterations"]),
        float(res["latency (ms)"]),
        float(res["avg latency"]),
        float(res["min latency"]),
        float(res["max latency"]),
    )
    assert s.min <= s.p50 <= s.max and (s.p90, s.p99) == (None, None)
    assert r.artifact.target == "openvino-cpu" and r.artifact.precision == "f32" and r.warnings == []
    assert "C++ clock around infer()" in r.includes["model_only"]
    # the Python app's sync throughput is wall clock: iterations / total execution time
    wall = int(res["total number of iterations"]) / float(res["total execution time (ms)"]) * 1000
    assert r.throughput[0].seq_per_s == pytest.approx(wall, rel=0.01)
    assert not any("median latency, not wall clock" in n for n in r.source.notes)
    assert any(n.startswith("inputs from input_ids:") for n in r.source.notes)
    layers = next(n for n in r.source.notes if n.startswith("per-layer"))
    assert "detailed counters" in layers and "timed layers" in layers and "[gemm" in layers


@pytest.mark.slow
@pytest.mark.openvino
def test_benchmark_app_on_a_tiny_ir_imports(exported, tmp_path):
    """Runs the real benchmark_app (Python app from the openvino wheel) for a few iterations."""
    import shutil
    import subprocess
    import sys

    from edgekit.build.compile import compile_artifact
    from edgekit.deploy import artifact

    tool = shutil.which("benchmark_app") or str(Path(sys.executable).with_name("benchmark_app"))
    if not Path(tool).exists():
        pytest.skip("benchmark_app is not installed (it ships with the openvino wheel)")
    src = exported("bert-embedding")
    art = tmp_path / "ov"
    compile_artifact(src, artifact.read_manifest(src), "openvino-cpu", art)
    folder = tmp_path / "report"
    folder.mkdir()
    cmd = [tool, "-m", str(art / "model.xml"), "-d", "CPU", "-hint", "latency", "-api", "sync", "-shape", "[1,16]"]
    cmd += ["-infer_precision", "f32", "-niter", "20", "-report_type", "detailed_counters", "-report_folder", str(folder), "-json_stats"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    r = import_report(folder, seq_len=16)
    s = r.first_token.model_only
    assert s.n == 20 and 0 < s.min <= s.p50 <= s.max
    assert r.artifact.path == str(art / "model.xml") and r.artifact.target == "openvino-cpu"
    assert any(n.startswith("inputs: random values") for n in r.source.notes)
    assert any(n.startswith("per-layer (benchmark_app detailed counters") for n in r.source.notes)
