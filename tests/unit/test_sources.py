"""Every shared data set loads with its own field mapping; user files and bad records are handled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mindgap.data.config import DataConfig, FieldsConfig
from mindgap.data.sources import CHOICE_REQUEST, data_config, gold_answer, load_problems
from mindgap.errors import ConfigError, DataError

# (data config, records, first id, first gold answer, first record has an expert solution)
SHARED = [
    ("gsm8k_train", 7473, "gsm8k_train/0", "72", True),
    ("gsm8k_test", 1319, "gsm8k_test/0", "18", True),
    ("math500", 500, "math500/test/precalculus/807.json", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("minerva_math", 272, "minerva_math/0", "1.6", True),
    ("olympiadbench", 675, "olympiadbench/1606", "2", True),
    ("aime24", 30, "aime24/60", "204", True),
    ("amc23", 40, "amc23/0", "27", False),
]


@pytest.mark.parametrize(("name", "count", "first_id", "first_answer", "has_solution"), SHARED)
def test_shared_data_counts_and_mapping(
    name: str, count: int, first_id: str, first_answer: str, has_solution: bool, data_root: str
) -> None:
    loaded = load_problems(data_config(name), data_root)
    assert len(loaded.problems) == count
    assert loaded.skipped == []
    first = loaded.problems[0]
    assert (first.id, first.answer, first.dataset) == (first_id, first_answer, name)
    assert (first.expert_solution is not None) == has_solution
    assert len({problem.id for problem in loaded.problems}) == count


def test_olympiadbench_multiple_answers_are_joined(data_root: str) -> None:
    problems = load_problems(data_config("olympiadbench"), data_root).problems
    answers = {problem.answer for problem in problems}
    assert "69,84" in answers  # raw: ['$69$,$84$']
    assert "(-6,6), (2,6)" in answers  # raw: ['$(-6,6)$, $(2,6)$']
    assert all("$" not in answer for answer in answers)


def test_limit_keeps_first_problems(data_root: str) -> None:
    config = data_config("gsm8k_train")
    config.limit = 5
    problems = load_problems(config, data_root).problems
    assert [problem.id for problem in problems] == [f"gsm8k_train/{i}" for i in range(5)]


@pytest.mark.parametrize(
    ("value", "answer_format", "expected"),
    [
        ("a\nb\n#### 1,234", "gsm8k", "1234"),
        ("so $x=\\boxed{\\frac{1}{2}}$ and \\boxed{3}", "boxed", "3"),
        ("no box here", "boxed", ""),
        (27.0, "text", "27"),
        (2.5, "text", "2.5"),
        (["$3$", "$4$."], "list", "3, 4"),
        ("no hashes", "gsm8k", ""),
    ],
)
def test_gold_answer_formats(value: object, answer_format: str, expected: str) -> None:
    assert gold_answer(value, answer_format) == expected


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "train" / "gsm8k" / "train.jsonl")):
        load_problems(data_config("gsm8k_train"), str(tmp_path))


def test_unknown_data_config_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known: .*gsm8k_train"):
        data_config("gsm9k")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


USER_ROWS = [
    {"uid": "a", "q": "What is 1+1?", "sol": "1+1=2. \\boxed{2}"},
    {"uid": "b", "q": "What is 2+2?", "sol": "It is \\boxed{4}."},
]
USER_FIELDS = FieldsConfig(id="uid", problem="q", solution="sol", answer="sol")


def test_user_jsonl_with_field_mapping(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "mine.jsonl", USER_ROWS)
    config = DataConfig(name="mine", path=str(tmp_path / "mine.jsonl"), fields=USER_FIELDS, answer_format="boxed")
    problems = load_problems(config, data_root="/unused").problems
    assert [(p.id, p.problem, p.answer) for p in problems] == [
        ("mine/a", "What is 1+1?", "2"),
        ("mine/b", "What is 2+2?", "4"),
    ]


def test_user_parquet_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(USER_ROWS), tmp_path / "mine.parquet")
    config = DataConfig(name="mine", format="parquet", path="mine.parquet", fields=USER_FIELDS, answer_format="boxed")
    problems = load_problems(config, data_root=str(tmp_path)).problems
    assert [p.answer for p in problems] == ["2", "4"]


def test_hub_format_loads_through_datasets(tmp_path: Path) -> None:
    # load_dataset takes a hub id or a local dataset directory through the same call.
    (tmp_path / "repo").mkdir()
    _write_jsonl(tmp_path / "repo" / "train.jsonl", USER_ROWS)
    config = DataConfig(
        name="hubby",
        format="hub",
        path=str(tmp_path / "repo"),
        split="train",
        fields=USER_FIELDS,
        answer_format="boxed",
    )
    problems = load_problems(config, data_root="/unused").problems
    assert [p.id for p in problems] == ["hubby/a", "hubby/b"]


BAD_ROWS = [
    {"uid": "ok", "q": "Fine?", "sol": "\\boxed{1}"},
    {"uid": "no-answer", "q": "Where is the box?", "sol": "nothing boxed"},
    {"uid": "no-field", "sol": "\\boxed{1}"},
    {"uid": "empty", "q": "  ", "sol": "\\boxed{1}"},
]


def test_bad_records_raise_naming_the_record(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    config = DataConfig(name="bad", path=str(tmp_path / "bad.jsonl"), fields=USER_FIELDS, answer_format="boxed")
    with pytest.raises(DataError, match="record bad/no-answer: no gold answer in field 'sol'"):
        load_problems(config, data_root="/unused")


def test_bad_records_are_counted_when_not_strict(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    config = DataConfig(name="bad", path=str(tmp_path / "bad.jsonl"), fields=USER_FIELDS, answer_format="boxed")
    loaded = load_problems(config, data_root="/unused", strict=False)
    assert [p.id for p in loaded.problems] == ["bad/ok"]
    reasons = [skip.reason for skip in loaded.skipped]
    assert len(reasons) == 3
    assert "no gold answer" in reasons[0]
    assert "missing field 'q'" in reasons[1]
    assert "field 'q' is empty" in reasons[2]


# Every malformed input of a jsonl file, as the line between two good records: (name, line, what the message says,
# the record id it names or None when the line has none).
GOOD_LINES = [{"uid": "g1", "q": "1+1?", "sol": "2", "a": 2}, {"uid": "g2", "q": "2+2?", "sol": "4", "a": "4"}]
TYPED_FIELDS = FieldsConfig(id="uid", problem="q", solution="sol", answer="a")
MALFORMED = [
    ("undecodable bytes", b'{"uid": "u", "q": "caf\xe9?", "a": 1}', "not UTF-8 text (byte 0xe9 at column 23)", None),
    ("json text", b'"just a string"', "holds text, not a record (a JSON object)", None),
    ("json array", b"[1, 2]", "holds a list, not a record", None),
    ("json number", b"42", "holds a number, not a record", None),
    ("truncated json", b'{"uid": "t", "q": "cut', "not valid JSON", None),
    (
        "problem is an object",
        b'{"uid": "o", "q": {"text": "hi"}, "sol": "s", "a": 1}',
        "field 'q' holds an object",
        "o",
    ),
    ("problem is a list", b'{"uid": "l", "q": ["hi"], "sol": "s", "a": 1}', "field 'q' holds a list", "l"),
    ("problem is a number", b'{"uid": "k", "q": 7, "sol": "s", "a": 1}', "field 'q' holds a number", "k"),
    ("answer is a boolean", b'{"uid": "b", "q": "x?", "sol": "s", "a": true}', "field 'a' holds a boolean", "b"),
    ("answer is NaN", b'{"uid": "n", "q": "x?", "sol": "s", "a": NaN}', "field 'a' holds NaN", "n"),
    ("answer is infinite", b'{"uid": "i", "q": "x?", "sol": "s", "a": -Infinity}', "field 'a' holds an infinity", "i"),
    ("answer is an object", b'{"uid": "d", "q": "x?", "sol": "s", "a": {"v": 1}}', "field 'a' holds an object", "d"),
    ("solution is a list", b'{"uid": "s", "q": "x?", "sol": ["s"], "a": 1}', "field 'sol' holds a list", "s"),
    (
        "id is an object",
        b'{"uid": {"v": 1}, "q": "x?", "sol": "s", "a": 1}',
        "field 'uid' (the id) holds an object",
        None,
    ),
]


def _file_with(tmp_path: Path, middle: bytes) -> tuple[Path, DataConfig]:
    path = tmp_path / "bad.jsonl"
    good = [json.dumps(row).encode() for row in GOOD_LINES]
    path.write_bytes(b"\n".join([good[0], middle, good[1]]) + b"\n")
    return path, DataConfig(name="bad", path=str(path), fields=TYPED_FIELDS)


@pytest.mark.parametrize(("name", "line", "says", "record_id"), MALFORMED, ids=[row[0] for row in MALFORMED])
def test_malformed_line_gets_one_line_naming_file_line_and_record(
    tmp_path: Path, name: str, line: bytes, says: str, record_id: str | None
) -> None:
    path, config = _file_with(tmp_path, line)
    with pytest.raises(DataError) as raised:
        load_problems(config, data_root="/unused")
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"data 'bad': {path}:2: ")
    assert says in message
    if record_id is not None:
        assert f"record bad/{record_id}:" in message


@pytest.mark.parametrize(("name", "line", "says", "record_id"), MALFORMED, ids=[row[0] for row in MALFORMED])
def test_malformed_line_is_skipped_and_listed_when_not_strict(
    tmp_path: Path, name: str, line: bytes, says: str, record_id: str | None
) -> None:
    path, config = _file_with(tmp_path, line)
    loaded = load_problems(config, data_root="/unused", strict=False)
    assert [problem.id for problem in loaded.problems] == ["bad/g1", "bad/g2"]
    (skipped,) = loaded.skipped
    assert skipped.reason.startswith(f"data 'bad': {path}:2: ") and says in skipped.reason


def test_bom_crlf_and_blank_lines_load_normally(tmp_path: Path) -> None:
    path = tmp_path / "windows.jsonl"
    lines = [json.dumps(row).encode() for row in GOOD_LINES]
    path.write_bytes(b"\xef\xbb\xbf" + lines[0] + b"\r\n\r\n   \r\n" + lines[1] + b"\r\n\r\n")
    config = DataConfig(name="win", path=str(path), fields=TYPED_FIELDS)
    loaded = load_problems(config, data_root="/unused")
    assert [(p.id, p.answer) for p in loaded.problems] == [("win/g1", "2"), ("win/g2", "4")]
    assert loaded.skipped == []


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["empty", "blank lines only"])
@pytest.mark.parametrize("strict", [True, False])
def test_empty_file_names_the_file(tmp_path: Path, content: bytes, strict: bool) -> None:
    (tmp_path / "empty.jsonl").write_bytes(content)
    config = DataConfig(name="empty", path=str(tmp_path / "empty.jsonl"), fields=TYPED_FIELDS)
    with pytest.raises(DataError, match=f"data 'empty': {tmp_path / 'empty.jsonl'} holds no records"):
        load_problems(config, data_root="/unused", strict=strict)


# MMLU keeps options as a list and the answer as an index; ARC as {label, text} and the answer as a label
# that may be a digit. Both become "A. ..." lines and a letter.
CHOICE_ROWS = [
    {"id": "mmlu", "question": "2 + 2 =", "options": ["3", "4", "5"], "key": 1},
    {"id": "arc-letters", "question": "Sky?", "options": {"label": ["A", "B"], "text": ["blue", "green"]}, "key": "A"},
    {"id": "arc-digits", "question": "Sea", "options": {"label": ["1", "2", "3"], "text": ["x", "y", "z"]}, "key": "3"},
]
CHOICE_FIELDS = FieldsConfig(id="id", problem="question", solution=None, answer="key", choices="options")


def test_multiple_choice_options_become_lettered_lines(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "mc.jsonl", CHOICE_ROWS)
    config = DataConfig(name="mc", path=str(tmp_path / "mc.jsonl"), fields=CHOICE_FIELDS, answer_format="choice")
    problems = load_problems(config, data_root="/unused").problems
    ask = f"\n\n{CHOICE_REQUEST}"
    assert [(p.problem, p.answer) for p in problems] == [
        ("2 + 2 =\n\nA. 3\nB. 4\nC. 5" + ask, "B"),
        ("Sky?\n\nA. blue\nB. green" + ask, "A"),
        ("Sea\n\nA. x\nB. y\nC. z" + ask, "C"),
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"id": "out", "question": "q", "options": ["a", "b"], "key": 2}, "no gold answer in field 'key'"),
        ({"id": "none", "question": "q", "options": [], "key": 0}, "field 'options' holds no options"),
        (
            {"id": "odd", "question": "q", "options": {"label": ["A"], "text": ["a", "b"]}, "key": "A"},
            "field 'options' holds no options",
        ),
    ],
)
def test_bad_multiple_choice_records_name_the_record(tmp_path: Path, row: dict, reason: str) -> None:
    _write_jsonl(tmp_path / "mc.jsonl", [row])
    config = DataConfig(name="mc", path=str(tmp_path / "mc.jsonl"), fields=CHOICE_FIELDS, answer_format="choice")
    with pytest.raises(DataError, match=f"record mc/{row['id']}: {reason}"):
        load_problems(config, data_root="/unused")


def test_choice_format_and_choices_field_go_together() -> None:
    with pytest.raises(ConfigError, match=r"answer_format=choice needs data\.fields\.choices"):
        DataConfig(name="mc", path="x.jsonl", fields=FieldsConfig(answer="key"), answer_format="choice")
