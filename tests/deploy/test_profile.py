"""profile: the arithmetic on controlled inputs, and the report schema on a tiny artifact.

No timing is asserted: speed is shown in bench/, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgekit.build.compile import compile_artifact
from edgekit.deploy import artifact
from edgekit.deploy.profile import ProfileOptions, profile
from edgekit.deploy.report import ProfileReport, latency_stats, mark_best, noise_warning, percentile, throughput_point
from edgekit.errors import ConfigError

FAST = ProfileOptions(warmup=1, min_runs=3, seconds_per_point=0.01, max_runs=5, seq_len=16, batches=[1, 2], cold_runs=1)


@pytest.fixture(scope="module")
def ort_artifact(exported, tmp_path_factory):
    src = exported("bert-classifier")
    out = tmp_path_factory.mktemp("prof") / "ort-cpu"
    compile_artifact(src, artifact.read_manifest(src), "ort-cpu", out)
    return out


@pytest.mark.parametrize("q", [0, 10, 50, 90, 95, 99, 100])
def test_percentile_matches_numpy(q):
    values = sorted([3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.3, 5.8])
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_latency_stats_in_ms():
    s = latency_stats([0.001, 0.002, 0.003, 0.004])
    assert s.n == 4 and s.unit == "ms"
    assert s.min == pytest.approx(1.0) and s.max == pytest.approx(4.0)
    assert s.mean == pytest.approx(2.5) and s.p50 == pytest.approx(2.5)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4]))


def test_throughput_arithmetic():
    # 4 runs of batch 8 with 8*100 real tokens, 0.5 s each: 16 seq/s, 1600 tok/s
    p = throughput_point(8, 800, [0.5] * 4)
    assert p.seq_per_s == pytest.approx(16.0)
    assert p.tokens_per_s == pytest.approx(1600.0)
    assert p.seq_len == 100 and p.runs == 4 and p.latency_ms_p50 == pytest.approx(500.0)


def test_mark_best_marks_highest_throughput_only():
    pts = mark_best([throughput_point(b, b * 10, [t]) for b, t in ((1, 0.1), (4, 0.2), (8, 0.8))])
    assert [p.best for p in pts] == [False, True, False]  # 10, 20, 10 seq/s


def test_noise_warning():
    assert noise_warning("x", latency_stats([0.01] * 9 + [0.01])) is None
    noisy = latency_stats([0.01] * 5 + [0.05] * 5)
    assert "noisy" in noise_warning("x", noisy)


def test_profile_report_schema(ort_artifact):
    r = profile(ort_artifact, FAST)
    assert r.schema_version == 1 and r.artifact.target == "ort-cpu"
    assert r.artifact.manifest_sha256 == artifact.manifest_sha256(ort_artifact)
    ft = r.first_token
    assert ft.seq_len == 16 and ft.mean_tokens == 16
    assert ft.model_only.n >= 3 and ft.model_only.p50 <= ft.model_only.p99
    assert [p.batch for p in r.throughput] == [1, 2] and sum(p.best for p in r.throughput) == 1
    assert all(p.tokens_per_s == pytest.approx(p.seq_per_s * 16) for p in r.throughput)
    assert r.cold_first_result.runs == 1 and r.cold_first_result.total_ms > r.cold_first_result.loaded_to_first_output_ms
    assert r.memory.peak_rss_mb > 0
    assert set(r.includes) >= {"model_only", "end_to_end", "cold_first_result", "throughput", "memory"}
    again = ProfileReport.model_validate(json.loads(r.model_dump_json()))
    assert again == r


def test_profile_lengths_from_text_file(ort_artifact, tmp_path):
    f = tmp_path / "lens.txt"
    f.write_text("short one.\nA somewhat longer sentence with several more words in it.\n")
    r = profile(ort_artifact, FAST.model_copy(update={"text_file": f, "cold_runs": 0}))
    assert r.first_token.lengths.startswith("text:") and r.first_token.seq_len is None
    assert 4 < r.first_token.mean_tokens < 16
    assert r.cold_first_result is None and r.memory.peak_rss_mb is None


def test_static_artifact_refuses_other_batches(checkpoints, tmp_path):
    from edgekit.build.export import ExportOptions, export

    out = tmp_path / "static"
    export(checkpoints["bert-embedding"], out, ExportOptions(static_shape=(1, 16)))
    with pytest.raises(ConfigError, match="static shape"):
        profile(out, FAST.model_copy(update={"batches": [4]}))
    r = profile(out, FAST.model_copy(update={"cold_runs": 0, "batches": None}))
    assert [p.batch for p in r.throughput] == [1] and r.settings.seq_len == 16


def test_seq_len_beyond_max_length_is_an_error(ort_artifact):
    with pytest.raises(ConfigError, match="max length"):
        profile(ort_artifact, FAST.model_copy(update={"seq_len": 4096}))


def test_deploy_side_never_imports_torch(ort_artifact):
    code = (
        "import sys, json\n"
        "from edgekit.deploy.profile import profile, ProfileOptions\n"
        f"profile({str(ort_artifact)!r}, ProfileOptions(warmup=0, min_runs=3, max_runs=3, seconds_per_point=0.01, seq_len=8, batches=[1], cold_runs=0))\n"
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'openvino', 'tensorrt') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
