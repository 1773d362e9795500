"""``edgekit exits calibrate`` / ``export``: the budget's bound, and bad input as one line, exit 2."""

from __future__ import annotations

import json
import re

import pytest
from conftest import LABELS, run_cli

from tests.cli.test_cli import assert_user_error


@pytest.fixture(scope="module")
def heads(checkpoints, texts, tmp_path_factory):
    from edgekit.build.exits.model import MultiExitModel
    from edgekit.build.exits.train import TrainConfig, train_heads
    from edgekit.build.load import load

    out = tmp_path_factory.mktemp("heads")
    model = MultiExitModel(load(checkpoints["bert-classifier"]), [1])
    train_heads(model, texts * 2, None, out, TrainConfig(epochs=1, batch=4), resume=False)
    model.save(out)
    return out


def _dev(path, texts, n):
    rows = [{"text": texts[i % len(texts)], "label": LABELS[i % 3]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_calibrate_reports_the_bound_or_refuses_a_dev_set_too_small(heads, texts, tmp_path, monkeypatch, capsys):
    dev = _dev(tmp_path / "dev.jsonl", texts, 12)
    code, _, err = run_cli(["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(tmp_path / "c1")], monkeypatch, capsys)
    assert_user_error(code, err, "dev set too small for a 90% bound", "texts needed")
    code, out, err = run_cli(
        ["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(tmp_path / "c2"), "--confidence", "0", "--max-drop", "100"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "c2" / "calibration.json").read_text())
    assert doc["confidence"] is None and doc["interval"] is None and doc["exits"] is None and "exits" in out
    dev = _dev(tmp_path / "dev40.jsonl", texts, 40)  # too few to hold half out: 30 texts or more on each side
    code, _, err = run_cli(["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(tmp_path / "c4")], monkeypatch, capsys)
    assert_user_error(code, err, "held-out rows", "--holdout 0")
    code, out, err = run_cli(
        ["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(tmp_path / "c3"), "--max-drop", "100", "--holdout", "0"],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "c3" / "calibration.json").read_text())
    i = doc["interval"]
    assert doc["confidence"] == 0.9 and i["quality_low"] <= i["quality"] <= i["quality_high"] and i["dev_texts"] == 40
    assert "90% bound" in out and "texts would bring" in out
    code, _, err = run_cli(["exits", "calibrate", str(heads), "--data", str(dev), "--holdout", "0.9"], monkeypatch, capsys)
    assert_user_error(code, err, "holdout 0.9 out of range")


def test_queries_only_needs_an_embedding_model_and_pairs(heads, texts, tmp_path, monkeypatch, capsys):
    dev = _dev(tmp_path / "dev.jsonl", texts, 40)
    args = ["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(tmp_path / "q"), "--queries-only"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert_user_error(code, err, "--queries-only needs an embedding model and a dev file of query/doc pairs (got a classifier model")
    assert not (tmp_path / "q").exists()


def test_calibrate_with_the_expected_estimate_fits_a_temperature_and_refuses_bad_input(heads, texts, tmp_path, monkeypatch, capsys):
    dev = _dev(tmp_path / "dev.jsonl", texts, 40)
    sample = tmp_path / "sample.txt"
    sample.write_text("\n".join(texts[i % len(texts)] for i in range(40)) + "\n")
    base = ["exits", "calibrate", str(heads), "--data", str(sample), "--max-drop", "100", "--holdout", "0"]
    code, out, err = run_cli(
        [*base, "--out", str(tmp_path / "e"), "--unsupervised", "--estimate", "expected", "--temperature-data", str(dev)],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "e" / "calibration.json").read_text())
    assert doc["metric"] == "expected accuracy under the final exit's probabilities" and doc["temperature_data"] == str(dev)
    assert 0.05 <= doc["temperature"] <= 20 and 0 < doc["base_quality"] < 1  # the top probability, not agreement's 1.0
    assert f"temperature{doc['temperature']:.3g},fiton{dev}" in re.sub(r"\s", "", out)  # rich wraps long paths
    for extra, *want in (
        (["--estimate", "expected"], "it needs --unsupervised"),
        (["--unsupervised", "--temperature-data", str(dev)], "--temperature-data scales the probabilities", "add --estimate expected"),
        (["--unsupervised", "--estimate", "expected", "--temperature-data", str(sample)], "needs labelled rows"),
        (["--unsupervised", "--estimate", "expected", "--temperature-data", str(tmp_path / "none.jsonl")], "no such file"),
    ):
        code, _, err = run_cli([*base, "--out", str(tmp_path / "bad"), *extra], monkeypatch, capsys)
        assert_user_error(code, err, *want)
        assert not (tmp_path / "bad").exists()


def test_calibrate_reports_its_held_out_sequence(heads, texts, tmp_path, monkeypatch, capsys):
    dev = _dev(tmp_path / "dev.jsonl", texts, 80)
    args = ["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(tmp_path / "h"), "--max-drop", "100"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    seq = json.loads((tmp_path / "h" / "calibration.json").read_text())["held_out_sequence"]
    assert seq and all(t["held_out_drop_bound"] <= 100 for t in seq)
    assert f"held-out sequence: {len(seq)} points tried, every point held" in " ".join(out.split())


def test_calibrate_says_the_best_reachable_drop(heads, texts, tmp_path, monkeypatch, capsys):
    dev = _dev(tmp_path / "dev.jsonl", texts, 12)
    code, _, err = run_cli(
        ["exits", "calibrate", str(heads), "--data", str(dev), "--confidence", "0", "--max-drop", "-50"], monkeypatch, capsys
    )
    assert_user_error(code, err, "no operating point stays within --max-drop -50", "best reachable drop is", "layers")


def test_export_refuses_thresholds_of_the_wrong_length(heads, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(
        ["exits", "export", str(heads), "--policy", "entropy=0.1,0.2,0.3", "--out", str(tmp_path / "x")], monkeypatch, capsys
    )
    assert_user_error(code, err, "3 thresholds given, 1 expected")


def test_export_exits_and_calibration_options(heads, tmp_path, monkeypatch, capsys):
    def export(*extra):
        return run_cli(["exits", "export", str(heads), "--out", str(tmp_path / "x"), *extra], monkeypatch, capsys)

    code, _, err = export("--policy", "entropy=0.1", "--exits", "1,x")
    assert_user_error(code, err, "invalid --exits '1,x'", "comma-separated integers")
    code, _, err = export("--policy", "entropy=0.1", "--exits", "3")
    assert_user_error(code, err, "no exit at layer 3", "layers [1, 2]")
    code, _, err = export("--policy", "entropy=0.1,0.2", "--exits", "1")
    assert_user_error(code, err, "2 thresholds given, 1 expected", "kept exits at layers 1,2")
    code, _, err = export("--policy", "entropy=0.1", "--calibration", str(tmp_path / "missing.json"))
    assert_user_error(code, err, "missing.json: no such calibration.json")
    code, _, err = export("--policy", "entropy=0.1", "--exits", "2")
    assert_user_error(code, err, "exits 2: only the last layer's exit is left", "keep at least one earlier exit")
    for name, content in (("binary.json", b"\xff\xfe"), ("broken.json", b"{bad"), ("list.json", b"[1, 2]")):
        (tmp_path / name).write_bytes(content)
        code, _, err = export("--policy", "entropy=0.1", "--calibration", str(tmp_path / name))
        assert_user_error(code, err, f"{name}: not a calibration.json", "'edgekit exits calibrate' wrote")
    assert not (tmp_path / "x").exists()
    plan = {"buckets": [16, 64], "check": [False, True]}
    cal = tmp_path / "calibration.json"
    cal.write_text(json.dumps({"chosen": {"policy": "entropy", "param": [0.3]}, "exits": None, "length_plan": plan}))
    code, out, err = export("--policy", "entropy=0.3", "--exits", "1", "--calibration", str(cal))
    assert code == 0, err
    assert "exits at layers 1,2 (entropy=0.3)" in out
    m = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert m["exits"]["param"] == 0.3 and m["settings"]["exits"]["length_plan"] == plan


def test_export_form_one_graph_by_default_segments_on_request(heads, tmp_path, monkeypatch, capsys):
    def export(out, *extra):
        return run_cli(
            ["exits", "export", str(heads), "--policy", "entropy=0.2", "--out", str(tmp_path / out), *extra], monkeypatch, capsys
        )

    code, out, err = export("g")
    assert code == 0, err
    assert "exported one graph, exits at layers 1,2" in out
    assert json.loads((tmp_path / "g" / "manifest.json").read_text())["exits"]["graph"]["model_file"] == "exits.onnx"
    code, out, err = export("s", "--form", "segments")
    assert code == 0 and "exported 2 segments" in out, err
    code, _, err = export("x", "--form", "one")
    assert_user_error(code, err, "unknown early-exit form 'one'", "graph, segments")
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli(["exits", "calibrate", str(heads), "--data", str(tmp_path / "none.jsonl"), "--form", "one"], monkeypatch, capsys)
    assert_user_error(code, err, "unknown early-exit form 'one'")


def test_target_options_are_checked_before_any_model_work(heads, texts, tmp_path, monkeypatch, capsys):
    dev = _dev(tmp_path / "dev.jsonl", texts, 6)
    base = ["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(tmp_path / "c")]
    code, _, err = run_cli([*base, "-o", "seq_lens=32"], monkeypatch, capsys)
    assert_user_error(code, err, "target options were given without --target", "add --target")
    code, _, err = run_cli([*base, "--target", "openvino-cpu", "-o", "buckets=32"], monkeypatch, capsys)
    assert_user_error(code, err, "buckets")
    code, _, err = run_cli([*base, "--target", "openvino-cpu", "-o", "seq_lens=32", "--form", "segments"], monkeypatch, capsys)
    assert_user_error(code, err, "one-graph exit form only, not --form segments", "--form graph")
    code, _, err = run_cli([*base, "--target", "openvino-cpu", "-o", "seq_lens"], monkeypatch, capsys)
    assert_user_error(code, err, "invalid --option 'seq_lens'", "KEY=VALUE")
    code, _, err = run_cli([*base, "--target", "openvino-cpu", "-o", f"data={tmp_path / 'none.jsonl'}"], monkeypatch, capsys)
    assert_user_error(code, err, "none.jsonl: no such data file", "option such as data=")
    code, _, err = run_cli([*base, "--target", "openvino-cpu", "-o", "max_buckets=3"], monkeypatch, capsys)
    assert_user_error(code, err, "max_buckets picks that many lengths from data", "data=FILE")
    code, _, err = run_cli([*base, "--resamples", "5"], monkeypatch, capsys)
    assert_user_error(code, err, "--resamples 5: too few for a bootstrap bound", "at least 100")
    code, _, err = run_cli([*base, "--subsets", "-1"], monkeypatch, capsys)
    assert_user_error(code, err, "--subsets -1 is negative")
    assert not (tmp_path / "c").exists()


def test_a_calibration_that_fails_while_timing_leaves_the_earlier_one_as_it_was(heads, texts, tmp_path, monkeypatch, capsys):
    dev = _dev(tmp_path / "dev.jsonl", texts, 12)
    out = tmp_path / "c"

    def calibrate(to, *extra: str):
        args = ["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(to), "--confidence", "0", "--max-drop", "100"]
        return run_cli([*args, "--holdout", "0", *extra], monkeypatch, capsys)

    code, _, err = calibrate(out)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "calibration.json" in before
    # a bucket longer than the model takes fails in the timing compile, after the exit outputs are computed
    too_long = ("--target", "openvino-cpu", "-o", "seq_lens=4096")
    code, _, err = calibrate(out, *too_long)
    assert_user_error(code, err, "exceeds the model's max length")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no timing folders left, the old files intact
    code, _, err = calibrate(tmp_path / "fresh", *too_long)
    assert_user_error(code, err, "exceeds the model's max length")
    assert not (tmp_path / "fresh").exists()


def test_calibrate_times_openvino_buckets_and_says_to_compile_with_them(heads, texts, tmp_path, monkeypatch, capsys):
    dev = _dev(tmp_path / "dev.jsonl", texts, 12)
    args = ["exits", "calibrate", str(heads), "--data", str(dev), "--out", str(tmp_path / "c"), "--target", "openvino-cpu"]
    args += ["-o", "seq_lens=16,128", "--confidence", "0", "--max-drop", "100", "--holdout", "0"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "c" / "calibration.json").read_text())["target_options"] == {"seq_lens": "16,128"}
    assert "timed with -o seq_lens=16,128: compile the exported point with the same" in " ".join(out.split())
    timed = json.loads((tmp_path / "c" / "graph" / "openvino-cpu" / "manifest.json").read_text())
    assert timed["settings"]["buckets"] == [16, 128]


def test_exits_compile_takes_sequence_buckets_for_the_one_graph(heads, texts, tmp_path, monkeypatch, capsys):
    for form in ("graph", "segments"):
        args = ["exits", "export", str(heads), "--policy", "entropy=0.5", "--out", str(tmp_path / form), "--form", form]
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 0, err
    base = ["exits", "compile", "-t", "openvino-cpu", "-o", "seq_lens=16,64"]
    code, out, err = run_cli([*base, str(tmp_path / "graph"), "--out", str(tmp_path / "ov")], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "ov" / "openvino-cpu" / "manifest.json").read_text())["settings"]["buckets"] == [16, 64]
    code, _, err = run_cli([*base, str(tmp_path / "segments"), "--out", str(tmp_path / "ov2")], monkeypatch, capsys)
    assert_user_error(code, err, "one-graph exit form only", "--form graph")
    assert not (tmp_path / "ov2" / "openvino-cpu").exists()
    # the heads themselves, or a plain export, are not what this command compiles
    code, _, err = run_cli([*base, str(heads), "--out", str(tmp_path / "ov3")], monkeypatch, capsys)
    assert_user_error(code, err, "exit heads, not an exit export", "edgekit exits export")
    plain = tmp_path / "plain"
    code, _, err = run_cli(["exits", "prune", str(heads), "--layer", "1", "--out", str(plain)], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = run_cli([*base, str(plain), "--out", str(tmp_path / "ov3")], monkeypatch, capsys)
    assert_user_error(code, err, "not an early-exit export", "'edgekit compile'")
    assert not (tmp_path / "ov3").exists()


def test_train_with_a_dev_file_keeps_an_epoch_and_refuses_bad_flags(checkpoints, texts, tmp_path, monkeypatch, capsys):
    train = _dev(tmp_path / "train.jsonl", texts, 10)
    dev = _dev(tmp_path / "dev.jsonl", texts, 6)
    base = ["exits", "train", str(checkpoints["bert-classifier"]), "--data", str(train), "--layers", "1", "--device", "cpu"]
    code, out, _ = run_cli([*base, "--out", str(tmp_path / "h"), "--epochs", "2", "--eval", str(dev)], monkeypatch, capsys)
    assert code == 0 and "kept epoch" in out
    meta = json.loads((tmp_path / "h" / "exits.json").read_text())
    assert meta["training"]["dev"]["texts"] == 6 and len(meta["training"]["dev"]["curve"]) == 2
    code, _, err = run_cli([*base, "--out", str(tmp_path / "x"), "--anchor-weight", "-1"], monkeypatch, capsys)
    assert_user_error(code, err, "--anchor-weight must be >= 0")
    code, _, err = run_cli([*base, "--out", str(tmp_path / "x"), "--epochs", "0"], monkeypatch, capsys)
    assert_user_error(code, err, "--epochs must be at least 1 (got 0)")
    code, _, err = run_cli([*base, "--out", str(tmp_path / "x"), "--lr", "0"], monkeypatch, capsys)
    assert_user_error(code, err, "--lr must be > 0")
    code, _, err = run_cli([*base, "--out", str(tmp_path / "x"), "--layers", "2,a"], monkeypatch, capsys)
    assert_user_error(code, err, "--layers '2,a': not a list of layer numbers", "2,4,6")
    assert not (tmp_path / "x").exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_cli([*base, "--out", str(tmp_path / "y"), "--eval", str(empty)], monkeypatch, capsys)
    assert code == 2 and ("empty" in err.lower() or "no texts" in err) and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "y").exists()


def test_train_distils_on_an_unlabeled_corpus_and_refuses_a_bad_one(checkpoints, texts, tmp_path, monkeypatch, capsys):
    train = _dev(tmp_path / "train.jsonl", texts, 10)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([*texts, "A new text without a label.", "A new text without a label.", "Another one."]) + "\n")
    base = ["exits", "train", str(checkpoints["bert-classifier"]), "--data", str(train), "--layers", "1", "--device", "cpu"]
    base += ["--epochs", "1"]
    code, _, err = run_cli([*base, "--out", str(tmp_path / "h"), "--unlabeled", str(corpus)], monkeypatch, capsys)
    assert code == 0, err
    training = json.loads((tmp_path / "h" / "exits.json").read_text())["training"]
    # the training texts and the repeated line are distilled once: two new texts
    assert (training["texts"], training["unlabeled"], training["labels"]) == (12, 2, True)
    for name, content in (("empty.txt", b"\n\n"), ("latin1.txt", "caf\xe9 cr\xe8me\n".encode("latin-1"))):
        (tmp_path / name).write_bytes(content)
        code, _, err = run_cli([*base, "--out", str(tmp_path / "x"), "--unlabeled", str(tmp_path / name)], monkeypatch, capsys)
        assert_user_error(code, err, name)
        assert not (tmp_path / "x").exists()


def test_calibrate_with_groups_bootstraps_them_and_refuses_a_missing_field(heads, texts, tmp_path, monkeypatch, capsys):
    rows = [{"text": texts[i % len(texts)], "label": LABELS[i % 3], "source": f"s{i // 4}"} for i in range(80)]
    dev = tmp_path / "dev.jsonl"
    dev.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["exits", "calibrate", str(heads), "--data", str(dev), "--max-drop", "100"]
    code, out, err = run_cli([*args, "--out", str(tmp_path / "c"), "--groups", "source"], monkeypatch, capsys)
    assert code == 0, err
    i = json.loads((tmp_path / "c" / "calibration.json").read_text())["interval"]
    assert 0 < i["dev_groups"] < 20 and i["dev_texts"] == 4 * i["dev_groups"] and i["search_texts"] == 80 - i["dev_texts"]
    said = re.sub(r"-\s+", "-", " ".join(out.split()))  # as printed, without the console's line wrapping
    assert f"on {i['dev_texts']} held-out texts in {i['dev_groups']} groups (source)" in said
    code, _, err = run_cli([*args, "--out", str(tmp_path / "x"), "--groups", "customer"], monkeypatch, capsys)
    assert_user_error(code, err, "missing field 'customer'")
    assert not (tmp_path / "x").exists()


def test_an_embedding_model_calibrates_on_retrieval_pairs(checkpoints, tmp_path, monkeypatch, capsys):
    """Query/doc pairs make the budget recall@1 over the queries, with queries and docs both embedded as deployed."""
    import numpy as np

    from edgekit.build.exits.model import MultiExitModel
    from edgekit.build.exits.segments import torch_exits
    from edgekit.build.load import load
    from edgekit.deploy import data
    from edgekit.deploy.eval import retrieval

    heads = tmp_path / "heads"
    model = MultiExitModel(load(checkpoints["bert-embedding"]), [1])  # untrained heads: identity projections
    model.save(heads)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(data.shipped("pydoc_pairs.jsonl").read_text().splitlines(keepends=True)[:40]))
    queries, docs = data.read_pairs(pairs)
    code, out, err = run_cli(
        ["exits", "calibrate", str(heads), "--data", str(pairs), "--out", str(tmp_path / "c"), "--max-drop", "100"], monkeypatch, capsys
    )
    assert code == 0, err
    doc = json.loads((tmp_path / "c" / "calibration.json").read_text())
    final = torch_exits(model, model.encoder.tokenize(queries + docs, max_length=model.encoder.info.max_length))[-1]["output"]
    want = retrieval(final[:40], final[40:])["recall@1"]
    assert doc["metric"] == "recall@1" and doc["base_quality"] == pytest.approx(want)
    assert doc["interval"]["dev_texts"] == 40  # the bound resamples the 40 queries
    assert sum(doc["points"][0]["exit_histogram"]) == 80  # every query and doc runs through the exits
    assert f"no exit: recall@1 {100 * want:.2f}%" in out and "on 40 query/doc pairs" in " ".join(out.split())
    few = tmp_path / "few.jsonl"
    few.write_text("".join(pairs.read_text().splitlines(keepends=True)[:10]))
    code, _, err = run_cli(["exits", "calibrate", str(heads), "--data", str(few), "--out", str(tmp_path / "f")], monkeypatch, capsys)
    assert_user_error(code, err, "(10 query/doc pairs are fewer than 30): about 30 query/doc pairs needed")
    assert not (tmp_path / "f" / "calibration.json").exists()

    def calibrated(flag: str) -> dict:
        out_dir = tmp_path / flag.strip("-")
        args = ["exits", "calibrate", str(heads), "--data", str(pairs), "--out", str(out_dir), flag, "--confidence", "0"]
        code, _, err = run_cli(args, monkeypatch, capsys)
        assert code == 0, err
        return json.loads((out_dir / "calibration.json").read_text())

    doc = calibrated("--queries-only")
    assert doc["metric"].startswith("recall@1 (queries") and doc["base_quality"] == pytest.approx(want)
    assert sum(doc["points"][0]["exit_histogram"]) == 40  # only the queries run the exits
    doc = calibrated("--unsupervised")
    assert doc["metric"] == "cosine to the final exit" and np.isclose(doc["base_quality"], 1.0)
