"""edgekit.deploy.data: text, labeled and pair files; every error names the file and the line."""

from __future__ import annotations

import json

import pytest

from edgekit.deploy import data
from edgekit.errors import DataError

LABELS = ["negative", "neutral", "positive"]


def _write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path, records):
    return _write(path, "".join(json.dumps(r) + "\n" for r in records))


# --- texts --------------------------------------------------------------------------------


def test_txt_one_text_per_line_skipping_blank_lines(tmp_path):
    path = _write(tmp_path / "t.txt", "first line\n\n   \n  second line  \nthird, with comma\n")
    assert data.read_texts(path) == ["first line", "second line", "third, with comma"]


def test_txt_with_any_suffix_is_plain_text(tmp_path):
    path = _write(tmp_path / "notes.md", "# a heading\nbody\n")
    assert data.read_texts(path) == ["# a heading", "body"]
    assert data.kind(path) == "text"


def test_jsonl_text_field(tmp_path):
    path = _write(tmp_path / "t.jsonl", '{"text": "one", "id": 1}\n\n{"text": "two \\u00e9"}\n')
    assert data.read_texts(path) == ["one", "two é"]


def test_csv_text_field_with_quoted_commas(tmp_path):
    path = _write(tmp_path / "t.csv", 'id,text\n1,plain\n2,"with, a comma"\n')
    assert data.read_texts(path) == ["plain", "with, a comma"]


def test_sample_texts_are_shipped():
    texts = data.sample_texts()
    assert len(texts) > 1000
    assert all(t == t.strip() and t for t in texts)


# --- labeled ------------------------------------------------------------------------------


def test_labels_by_name_and_by_integer_id(tmp_path):
    path = _jsonl(
        tmp_path / "l.jsonl",
        [
            {"text": "a", "label": "positive"},
            {"text": "b", "label": 0},
            {"text": "c", "label": "1"},
            {"text": "d", "label": "negative"},
        ],
    )
    labeled = data.read_labeled(path, LABELS)
    assert labeled.texts == ["a", "b", "c", "d"]
    assert labeled.labels == [2, 0, 1, 0]


def test_labeled_csv(tmp_path):
    path = _write(tmp_path / "l.csv", "text,label\ngood,positive\nmeh,1\n")
    labeled = data.read_labeled(path, LABELS)
    assert (labeled.texts, labeled.labels) == (["good", "meh"], [2, 1])


@pytest.mark.parametrize("label", ["bogus", "3", "-1", "1.0", "Positive"])
def test_unknown_label_names_file_and_line(tmp_path, label):
    path = _jsonl(tmp_path / "l.jsonl", [{"text": "ok", "label": "neutral"}, {"text": "bad", "label": label}])
    with pytest.raises(DataError, match=f"l.jsonl:2: label '{label}' is not one of the model's labels") as err:
        data.read_labeled(path, LABELS)
    assert str(path) in err.value.message
    assert "negative, neutral, positive" in err.value.hint and "0..2" in err.value.hint


def test_unknown_label_in_csv_names_the_line(tmp_path):
    path = _write(tmp_path / "l.csv", "text,label\ngood,positive\nbad,bogus\n")
    with pytest.raises(DataError, match=r"l\.csv:3: label 'bogus'"):
        data.read_labeled(path, LABELS)


def test_csv_line_numbers_count_blank_lines(tmp_path):
    path = _write(tmp_path / "l.csv", "text,label\ngood,positive\n\nbad,bogus\n")
    with pytest.raises(DataError, match=r"l\.csv:4: label 'bogus'"):
        data.read_labeled(path, LABELS)


def test_csv_with_a_byte_order_mark(tmp_path):
    path = _write(tmp_path / "l.csv", "\ufefftext,label\ngood,positive\n")
    assert data.read_labeled(path, LABELS).texts == ["good"]


# --- pairs --------------------------------------------------------------------------------


def test_pairs(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"query": "q1", "doc": "d1"}, {"query": "q2", "doc": "d2", "extra": 1}])
    assert data.read_pairs(path) == (["q1", "q2"], ["d1", "d2"])


def test_pairs_csv(tmp_path):
    path = _write(tmp_path / "p.csv", "query,doc\nq1,d1\n")
    assert data.read_pairs(path) == (["q1"], ["d1"])


def test_shipped_pairs_parse():
    queries, docs = data.read_pairs(data.shipped(data.SAMPLE_PAIRS))
    assert len(queries) == len(docs) > 100


# --- errors -------------------------------------------------------------------------------


def test_bad_json_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": "unterminated\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON") as err:
        data.read_texts(path)
    assert isinstance(err.value.__cause__, json.JSONDecodeError)


def test_json_line_that_is_not_an_object(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n["text"]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object, got list"):
        data.read_texts(path)


@pytest.mark.parametrize(
    ("reader", "content", "match"),
    [
        (data.read_texts, '{"text": "a"}\n{"body": "b"}\n', r"m\.jsonl:2: missing field 'text' \(has: body\)"),
        (data.read_texts, '{"text": "a"}\n{"text": "   "}\n', r"m\.jsonl:2: missing field 'text'"),
        (lambda p: data.read_labeled(p, LABELS), '{"text": "a"}\n', r"m\.jsonl:1: missing field 'label' \(has: text\)"),
        (data.read_pairs, '{"query": "q", "doc": "d"}\n{"query": "q2"}\n', r"m\.jsonl:2: missing field 'doc'"),
        (data.read_texts, "{}\n", r"m\.jsonl:1: missing field 'text' \(has: nothing\)"),
    ],
)
def test_missing_field_names_file_and_line(tmp_path, reader, content, match):
    path = _write(tmp_path / "m.jsonl", content)
    with pytest.raises(DataError, match=match):
        reader(path)


def test_missing_field_in_csv_row(tmp_path):
    path = _write(tmp_path / "m.csv", "text,label\ngood,positive\nshort-row\n")
    with pytest.raises(DataError, match=r"m\.csv:3: missing field 'label'"):
        data.read_labeled(path, LABELS)


@pytest.mark.parametrize(("name", "content"), [("e.txt", ""), ("e.jsonl", ""), ("e.csv", ""), ("e.txt", "\n  \n"), ("e.jsonl", "\n  \n")])
def test_empty_file(tmp_path, name, content):
    path = _write(tmp_path / name, content)
    with pytest.raises(DataError, match=f"{name}: no records"):
        data.read_texts(path)


def test_csv_row_with_more_values_than_columns(tmp_path):
    path = _write(tmp_path / "m.csv", "text\nhello, world\n")
    with pytest.raises(DataError, match=r"m\.csv:2"):
        data.read_labeled(path, LABELS)


def test_csv_with_only_a_header_is_empty(tmp_path):
    path = _write(tmp_path / "h.csv", "text,label\n")
    with pytest.raises(DataError, match="no records"):
        data.read_labeled(path, LABELS)


@pytest.mark.parametrize(
    "reader",
    [data.read_texts, data.read_pairs, data.kind, lambda p: data.read_labeled(p, LABELS)],
    ids=["texts", "pairs", "kind", "labeled"],
)
@pytest.mark.parametrize("name", ["missing.jsonl", "missing.csv"])
def test_missing_file(tmp_path, reader, name):
    with pytest.raises(DataError, match=f"{name}: no such data file"):
        reader(tmp_path / name)


def test_missing_txt_file(tmp_path):
    with pytest.raises(DataError, match="missing.txt: no such data file"):
        data.read_texts(tmp_path / "missing.txt")


@pytest.mark.parametrize("name", ["dir.jsonl", "dir.csv"])
def test_directory_is_not_a_data_file(tmp_path, name):
    (tmp_path / name).mkdir()
    with pytest.raises(DataError, match=f"{name}: is a directory"):
        data.read_labeled(tmp_path / name, LABELS)


def test_directory_as_text_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        data.read_texts(tmp_path)


def test_not_utf8(tmp_path):
    for name in ("latin.txt", "latin.jsonl"):
        path = tmp_path / name
        path.write_bytes('{"text": "caf\xe9"}\n'.encode("latin-1"))
        with pytest.raises(DataError, match=f"{name}: cannot read as UTF-8"):
            data.read_texts(path)


# --- kind ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("k.jsonl", '{"query": "q", "doc": "d"}\n', "pairs"),
        ("k.jsonl", '{"text": "t", "label": "positive"}\n', "labeled"),
        ("k.jsonl", '{"text": "t"}\n', "text"),
        ("k.json", '{"text": "t"}\n', "text"),
        ("k.csv", "query,doc\nq,d\n", "pairs"),
        ("k.csv", "text,label\nt,1\n", "labeled"),
        ("k.csv", "text\nt\n", "text"),
        ("k.txt", '{"query": "q", "doc": "d"}\n', "text"),
    ],
)
def test_kind(tmp_path, name, content, expected):
    assert data.kind(_write(tmp_path / name, content)) == expected


def test_kind_of_records_without_known_fields(tmp_path):
    path = _jsonl(tmp_path / "k.jsonl", [{"sentence": "s", "score": 1}])
    with pytest.raises(DataError, match=r"k\.jsonl:1: records need 'text'.*has: sentence, score"):
        data.kind(path)


def test_kind_of_empty_file(tmp_path):
    with pytest.raises(DataError, match="no records"):
        data.kind(_write(tmp_path / "k.jsonl", ""))
