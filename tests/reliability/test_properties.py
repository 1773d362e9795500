"""Property-based checks over user files: data files, recipes and artifact manifests.

The property, whatever the bytes: the library raises an EdgekitError with a one-line
message (or succeeds), the CLI exits 0 or 2 with one line on stderr, and nothing is left
half-written. Fixed example budgets keep each suite well under a minute on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import run_cli
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgekit.deploy import artifact, data
from edgekit.deploy.artifact import MANIFEST, MANIFEST_SHA256
from edgekit.errors import ArtifactError, DataError, EdgekitError

FIXTURES_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large]
REPO = Path(__file__).resolve().parents[2]

# ---- strategies ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.sampled_from(["text", "label", "query", "doc", "id", ""])


def _int_bug(value) -> bool:
    """Label strings that edgekit.deploy.data.read_labeled takes for ids but int() refuses (see KNOWN_DATA_BUGS)."""
    body = value.lstrip("-") if isinstance(value, str) else ""
    return body.isdigit() and (len(value) - len(body) > 1 or not body.isdecimal() or len(body) > 4000)


values = (json_values | st.text(max_size=40) | st.sampled_from(["negative", "2", "-1", "7", "", " "])).filter(lambda v: not _int_bug(v))
records = st.dictionaries(FIELDS, values, max_size=4)


@st.composite
def data_files(draw) -> tuple[str, bytes]:
    """(suffix, content): well-formed records, broken lines, random bytes, huge lines."""
    suffix = draw(st.sampled_from([".jsonl", ".csv", ".txt", ".json"]))
    kind = draw(st.sampled_from(["records", "bytes", "text", "huge", "nested"]))
    if kind == "records":
        rows = draw(st.lists(records, max_size=6))
        if suffix == ".csv":
            cols = sorted({k for r in rows for k in r}) or ["text"]
            lines = [",".join(cols)] + [",".join(json.dumps(r.get(c, ""), default=str) for c in cols) for r in rows]
            return suffix, "\n".join(lines).encode()
        return suffix, "".join(json.dumps(r, default=str) + "\n" for r in rows).encode()
    if kind == "bytes":
        return suffix, draw(st.binary(max_size=300))
    if kind == "huge":
        return suffix, (json.dumps({"text": "x" * 300_000}) + "\n").encode()
    if kind == "nested":
        depth = draw(st.integers(1, 400))  # deeper: KNOWN_DATA_BUGS
        return suffix, ('{"text": ' + "[" * depth + "]" * depth + "}\n").encode()
    return suffix, draw(st.text(max_size=300)).encode("utf-8", "surrogatepass")


def _one_line(text: str) -> bool:
    return bool(text.strip()) and "\n" not in text.strip()


# ---- data files ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES_OK)
@given(data_files())
def test_data_readers_raise_one_line_data_errors(tmp_path, file):
    suffix, content = file
    path = tmp_path / f"d{suffix}"
    path.write_bytes(content)
    _read_all(path)


def _read_all(path: Path) -> None:
    for read in (data.kind, data.read_texts, lambda p: data.read_labeled(p, ["negative", "neutral", "positive"]), data.read_pairs):
        try:
            read(path)
        except DataError as err:
            assert _one_line(str(err)), str(err)


# Inputs that once made edgekit.deploy.data raise something else than a DataError (a traceback).
KNOWN_DATA_BUGS = {
    "label-double-minus": '{"text": "a", "label": "--1"}\n',
    "label-superscript-digit": '{"text": "a", "label": "\u00b2"}\n',
    "label-5000-digits": '{"text": "a", "label": "' + "9" * 5000 + '"}\n',
    "json-int-5000-digits": '{"text": "a", "label": ' + "9" * 5000 + "}\n",
    "json-nested-5000-deep": '{"text": ' + "[" * 5000 + "]" * 5000 + "}\n",
}


@pytest.mark.parametrize("name", sorted(KNOWN_DATA_BUGS))
def test_known_data_reader_bugs(tmp_path, name):
    path = tmp_path / "d.jsonl"
    path.write_text(KNOWN_DATA_BUGS[name])
    _read_all(path)  # only one-line DataErrors, no traceback


@pytest.fixture(scope="module")
def eval_out():
    d = Path(tempfile.mkdtemp(prefix="edgekit-eval-prop-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURES_OK)
@given(data_files())
def test_eval_cli_on_any_data_file(bert_onnx, eval_out, monkeypatch, capsys, file):
    suffix, content = file
    work = Path(tempfile.mkdtemp(dir=eval_out))
    path = work / f"d{suffix}"
    path.write_bytes(content)
    out = work / "reports" / "eval.json"
    code, _, err = run_cli(["eval", str(bert_onnx), "--data", str(path), "--no-fidelity", "--json", str(out)], monkeypatch, capsys)
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error:") and _one_line(err), err
        assert not out.exists()
    else:
        assert json.loads(out.read_text())["n"] >= 1
    assert not out.parent.exists() or sorted(p.name for p in out.parent.iterdir()) in ([], ["eval.json"])  # no temp file


# ---- recipes ---------------------------------------------------------------------------------


def _base_recipe() -> dict:
    return yaml.safe_load((REPO / "recipes" / "minilm-ptq-int8.yaml").read_text())


@st.composite
def recipe_texts(draw) -> str:
    kind = draw(st.sampled_from(["mutated", "text", "yaml-ish"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "yaml-ish":
        return draw(st.sampled_from(["a: &a [1]\nb: [*a, *a]\n", "- 1\n- 2\n", "schema_version: 1\n", "{", "name: [\n", "null\n"]))
    recipe = _base_recipe()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(
            st.sampled_from(
                [
                    ("name",),
                    ("model",),
                    ("schema_version",),
                    ("steps",),
                    ("steps", "ptq"),
                    ("targets",),
                    ("budgets",),
                    ("data",),
                    ("data", "dev"),
                    ("profile", "seq_len"),
                    ("surprise",),
                ]
            )
        )
        node = recipe
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            if draw(st.booleans()):
                node.pop(path[-1], None)
            else:
                node[path[-1]] = draw(json_values)
    return yaml.safe_dump(recipe)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES_OK)
@given(recipe_texts())
def test_recipe_check_on_any_recipe(tmp_path_factory, monkeypatch, capsys, text):
    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    code, _, err = run_cli(["recipe", "check", str(path)], monkeypatch, capsys)
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error:") and _one_line(err), err


# ---- manifests -------------------------------------------------------------------------------


@st.composite
def manifest_edits(draw) -> tuple:
    """(kind, random bytes, cut point, a JSON value, reseal): random bytes, truncations, wrong types, huge lines."""
    kind = draw(st.sampled_from(["bytes", "truncated", "wrong-type", "huge", "deep"]))
    reseal = draw(st.booleans())
    return kind, draw(st.binary(max_size=200)), draw(st.integers(0, 10_000)), draw(json_values), reseal


@pytest.fixture(scope="module")
def manifest_art(bert_onnx, tmp_path_factory) -> Path:
    return Path(shutil.copytree(bert_onnx, tmp_path_factory.mktemp("manifest") / "art"))


FIELD_PATHS = [
    ("name",),
    ("target",),
    ("kind",),
    ("model_file",),
    ("inputs",),
    ("outputs", 0, "name"),
    ("files",),
    ("settings",),
    ("tokenizer", "max_length"),
    ("source",),
    ("exits",),
]


@settings(max_examples=120, deadline=None, suppress_health_check=FIXTURES_OK)
@given(manifest_edits(), st.sampled_from(FIELD_PATHS))
@example(("wrong-type", b"", 0, "tokenizer.json", True), ("model_file",))
@example(("wrong-type", b"", 0, "logits", True), ("outputs", 0, "name"))
@example(("wrong-type", b"", 0, -5, True), ("tokenizer", "max_length"))
@example(("wrong-type", b"", 0, 10**20, True), ("tokenizer", "pad_id"))
@example(("wrong-type", b"", 0, [1], True), ("static_shape",))
@example(("wrong-type", b"", 0, [], True), ("inputs",))
def test_read_manifest_on_any_manifest(manifest_art, edit, field):
    kind, blob, cut, value, reseal = edit
    original = (manifest_art / MANIFEST).read_bytes()
    side = (manifest_art / MANIFEST_SHA256).read_bytes()
    if kind == "bytes":
        raw = blob
    elif kind == "truncated":
        raw = original[: cut % len(original)]
    elif kind == "huge":
        doc = json.loads(original)
        doc["name"] = "n" * 2_000_000
        raw = json.dumps(doc).encode()
    elif kind == "deep":
        raw = b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    else:
        doc = json.loads(original)
        node = doc
        for key in field[:-1]:
            node = node[key]
        node[field[-1]] = value
        raw = json.dumps(doc).encode()
    try:
        (manifest_art / MANIFEST).write_bytes(raw)
        if reseal:
            (manifest_art / MANIFEST_SHA256).write_text(f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n")
        try:
            m = artifact.read_manifest(manifest_art)
        except ArtifactError as err:
            assert _one_line(str(err)) and len(str(err)) < 2000, str(err)[:3000]
        else:
            assert reseal and raw != original or raw == original  # only a resealed manifest can pass
            from edgekit.deploy.runtime import Predictor

            try:
                with Predictor(manifest_art) as pred:
                    pred.predict(["a short text"])
            except EdgekitError as err:
                assert _one_line(str(err))
            assert m.files
    finally:
        (manifest_art / MANIFEST).write_bytes(original)
        (manifest_art / MANIFEST_SHA256).write_bytes(side)
