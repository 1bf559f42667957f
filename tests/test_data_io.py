"""Import: every format, the column mapping, and every kind of bad input the issue lists."""

import json

import pytest

from r1lab.data.io import ImportSettings, import_problems, parse_mapping
from r1lab.errors import ConfigError, DataError


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _import(paths, **kw):
    skips = []
    rows = list(import_problems(ImportSettings(paths=[str(p) for p in paths], **kw), on_skip=lambda *a: skips.append(a)))
    return rows, skips


ROWS = [{"question": "What is 1+1?", "final_answer": 2, "level": 1}, {"question": "What is 2+3?", "final_answer": 5.0, "level": None}]
MAP = {"question": "prompt", "final_answer": "answer"}


def test_jsonl_with_mapping_keeps_extra_columns_in_metadata(tmp_path):
    rows, _ = _import([_write_jsonl(tmp_path / "raw.jsonl", ROWS)], mapping=MAP)
    assert [(p.id, p.prompt, p.answer, p.source) for p in rows] == [("raw-1", "What is 1+1?", "2", "raw"), ("raw-2", "What is 2+3?", "5", "raw")]
    assert rows[0].metadata == {"level": 1} and rows[1].answer == "5"  # 5.0 read as an integer answer


def test_parse_mapping_accepts_both_arrows():
    assert parse_mapping(["question->prompt", "final_answer=answer"]) == MAP
    with pytest.raises(ConfigError):
        parse_mapping(["question"])


def test_csv_parquet_json_and_hf_dir_give_the_same_problems(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.csv").write_text("question,final_answer\nWhat is 1+1?,2\n\"What is\n2+3?\",5\n", encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "b.parquet", row_group_size=1)
    (tmp_path / "c.json").write_text(json.dumps(ROWS), encoding="utf-8")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "d"))
    for name in ("a.csv", "b.parquet", "c.json", "d"):
        rows, _ = _import([tmp_path / name], mapping=MAP)
        assert [p.answer for p in rows] == ["2", "5"], name
        assert rows[0].prompt == "What is 1+1?"
    rows, _ = _import([tmp_path / "a.csv"], mapping=MAP)
    assert rows[1].prompt == "What is\n2+3?" and rows[1].id == "a-3"  # a multi-line field; ids are line numbers


def test_malformed_json_row_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        _import([path])


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "ok", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8"):
        _import([path])
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"prompt,answer\nok,1\ncaf\xe9,2\n")
    with pytest.raises(DataError, match=r"latin1.csv:3: not UTF-8"):
        _import([csv_path])


def test_missing_field_and_missing_answer_are_errors_naming_the_row(tmp_path):
    path = _write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "answer": "1"}, {"answer": "2"}])
    with pytest.raises(DataError, match=r"m.jsonl:2: no usable 'prompt'"):
        _import([path])
    path = _write_jsonl(tmp_path / "n.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": " "}])
    with pytest.raises(DataError, match=r"n.jsonl:2: no usable 'answer'"):
        _import([path])


def test_empty_files_are_errors(tmp_path):
    for name, content in (("e.jsonl", "\n\n"), ("e.csv", "prompt,answer\n"), ("e.json", "[]")):
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(DataError, match=rf"{name}: empty file"):
            _import([tmp_path / name])
    (tmp_path / "z.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"z.parquet: not a readable Parquet file"):
        _import([tmp_path / "z.parquet"])


def test_mapping_to_a_nonexistent_column(tmp_path):
    path = _write_jsonl(tmp_path / "raw.jsonl", ROWS)
    with pytest.raises(DataError, match=r"raw.jsonl:1: mapping names column 'problem', which the file does not have"):
        _import([path], mapping={"problem": "prompt"})
    with pytest.raises(ConfigError, match="not a Problem field"):
        _import([path], mapping={"question": "promt"})


def test_lenient_mode_counts_each_skip_with_its_reason(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"prompt": "a", "answer": "1"}\n{oops\n{"prompt": "caf\xe9", "answer": "2"}\n'
                     b'{"answer": "3"}\n{"prompt": "d"}\n{"id": "x", "prompt": "e", "answer": "5"}\n'
                     b'{"id": "x", "prompt": "f", "answer": "6"}\n[1, 2]\n')
    rows, skips = _import([path], lenient=True)
    assert [p.prompt for p in rows] == ["a", "e"]
    assert [(ref.split(":")[-1], reason) for ref, reason, _ in skips] == [
        ("2", "malformed"), ("3", "bad_encoding"), ("4", "missing_field"), ("5", "no_answer"), ("7", "duplicate_id"), ("8", "malformed")]


def test_chat_prompts_and_problem_schema_files_round_trip(tmp_path):
    row = {"id": "q1", "prompt": [{"role": "user", "content": "hi"}], "answer": "1", "task": "math", "metadata": {"k": 1}}
    rows, _ = _import([_write_jsonl(tmp_path / "p.jsonl", [row])])
    assert rows[0].prompt == row["prompt"] and rows[0].metadata == {"k": 1} and rows[0].id == "q1"


def test_common_column_names_are_found_without_a_mapping(tmp_path):
    rows, _ = _import([_write_jsonl(tmp_path / "q.jsonl", ROWS)])  # question + final_answer
    assert [(p.prompt, p.answer, p.metadata) for p in rows][0] == ("What is 1+1?", "2", {"level": 1})
    both = [{"prompt": "P", "problem": "Q", "answer": "1", "expected_answer": "2"}]
    rows, _ = _import([_write_jsonl(tmp_path / "b.jsonl", both)])  # the Problem fields win over look-alikes
    assert (rows[0].prompt, rows[0].answer, rows[0].metadata) == ("P", "1", {"problem": "Q", "expected_answer": "2"})
    rows, _ = _import([_write_jsonl(tmp_path / "m.jsonl", [{"problem": "Q", "question": "R", "gold": "3"}])], mapping={"question": "prompt"})
    assert (rows[0].prompt, rows[0].answer, rows[0].metadata) == ("R", "3", {"problem": "Q"})  # a given mapping wins


def test_detected_columns_are_reported(tmp_path):
    seen = {}
    path = _write_jsonl(tmp_path / "q.jsonl", ROWS)
    list(import_problems(ImportSettings(paths=[str(path)]), on_detect=seen.__setitem__))
    assert seen == {str(path): {"question": "prompt", "final_answer": "answer"}}
