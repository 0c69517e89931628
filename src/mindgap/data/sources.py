"""Problem sources: files under data_root, any jsonl/parquet file, or a hub dataset.

Each source's raw fields are mapped to a ``Problem`` by its data config (conf/data/*.yaml),
never guessed: ``fields`` names the raw columns and ``answer_format`` says how the gold
answer is read from its column.
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mindgap.config import to_typed
from mindgap.data.config import DataConfig
from mindgap.errors import ConfigError, DataError
from mindgap.paths import CONFIG_DIR, default_cache_dir
from mindgap.records import Problem
from mindgap.verification.answers import last_boxed


@dataclass
class SkippedRecord:
    """A raw record left out under ``strict=false``, with the reason."""

    id: str
    reason: str


@dataclass
class LoadedProblems:
    problems: list[Problem]
    skipped: list[SkippedRecord] = field(default_factory=list)


def data_config(name: str) -> DataConfig:
    """The data config conf/data/<name>.yaml, typed and validated."""
    path = CONFIG_DIR / "data" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))
        raise ConfigError(f"unknown data config {name!r}; known: {', '.join(known)}")
    return to_typed(OmegaConf.load(path), DataConfig)


def resolve_path(data: DataConfig, data_root: str) -> Path:
    path = Path(data.path).expanduser()
    return path if path.is_absolute() else Path(data_root) / path


def _toy_file(data: DataConfig, cache_dir: str | None) -> Path:
    """The toy split's jsonl file, generated on first use under ``data.path`` (relative: under cache_dir)."""
    from mindgap.toy.world import materialise_split

    assert data.toy is not None
    directory = Path(data.path).expanduser()
    if not directory.is_absolute():
        directory = Path(cache_dir or default_cache_dir()).expanduser() / directory
    return materialise_split(data.toy, data.split, directory)


@dataclass
class _RawRow:
    """One raw record as read, or why it cannot be read."""

    # Where it is: "<file>:<line>" for jsonl, "<file> row <n>" for parquet and hub datasets (n from 1).
    where: str
    row: dict[str, Any] | None
    unreadable: str | None = None


def _raw_rows(data: DataConfig, data_root: str, cache_dir: str | None) -> Iterator[_RawRow]:
    if data.format == "hub":
        from datasets import load_dataset

        for number, row in enumerate(load_dataset(data.path, data.subset, split=data.split), start=1):
            yield _RawRow(f"{data.path} row {number}", row)
        return
    path = _toy_file(data, cache_dir) if data.format == "toy" else resolve_path(data, data_root)
    if not path.is_file():
        raise DataError(
            f"data '{data.name}': file not found: {path} (set data_root=DIR or MINDGAP_DATA_ROOT, or data.path=FILE)"
        )
    if data.format == "parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield _RawRow(f"{path} row {number}", row)
        return
    yield from _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[_RawRow]:
    """Every non-blank line of a jsonl file; a UTF-8 byte-order mark and CRLF line ends are fine."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            if line_number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                byte = raw[error.start]
                yield _RawRow(where, None, f"not UTF-8 text (byte 0x{byte:02x} at column {error.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                yield _RawRow(where, None, f"not valid JSON ({error.msg} at column {error.colno})")
                continue
            if not isinstance(value, dict):
                yield _RawRow(where, None, f"holds {_kind(value)}, not a record (a JSON object)")
                continue
            yield _RawRow(where, value)


def _kind(value: Any) -> str:
    """What a JSON value is, in words, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "an infinity"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_type(value: Any, column: str, numbers_too: bool = False) -> None:
    """Raise unless ``value`` is text (or, with ``numbers_too``, a finite number): never stringify a structure."""
    if isinstance(value, str) or value is None or (numbers_too and _is_finite_number(value)):
        return
    expected = "text or a number" if numbers_too else "text"
    raise DataError(f"field '{column}' holds {_kind(value)}, where {expected} is expected")


def _as_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def gold_answer(value: Any, answer_format: str) -> str:
    """Read the gold answer from the raw answer field; empty when it cannot be found."""
    if value is None:
        return ""
    if answer_format == "text":
        return _as_text(value)
    if answer_format == "gsm8k":
        text = str(value)
        if "####" not in text:
            return ""
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    if answer_format == "boxed":
        return last_boxed(str(value)) or ""
    if answer_format == "list":
        items = value if isinstance(value, list) else [value]
        # OlympiadBench writes each answer in math mode, several per item too: ['$69$,$84$'].
        return ", ".join(_as_text(item).replace("$", "").strip().rstrip(".").strip() for item in items)
    raise ConfigError(f"data.answer_format={answer_format!r} is not supported")


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def choice_options(value: Any) -> tuple[list[str], list[str]]:
    """(labels the source gives its options, option texts) of a multiple-choice field; ([], []) when malformed."""
    if isinstance(value, dict):
        texts = [str(text) for text in value.get("text") or []]
        labels = [str(label) for label in value.get("label") or LETTERS[: len(texts)]]
    elif isinstance(value, list):
        texts = [str(text) for text in value]
        labels = list(LETTERS[: len(texts)])
    else:
        return [], []
    if not texts or len(labels) != len(texts) or len(texts) > len(LETTERS):
        return [], []
    return labels, texts


def choice_answer(value: Any, labels: list[str]) -> str:
    """The letter of the right option: ``value`` is a label of the source or an index from 0; empty if neither."""
    if isinstance(value, str) and value.strip() in labels:
        return LETTERS[labels.index(value.strip())]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return LETTERS[value]
    return ""


# The gold answer is the letter, so the question asks for the letter rather than the option's text.
CHOICE_REQUEST = "Answer with the letter of the correct option."


def with_options(problem: str, texts: list[str]) -> str:
    lines = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, texts, strict=False))
    return f"{problem}\n\n{lines}\n\n{CHOICE_REQUEST}"


def _solution(value: Any, solution_format: str) -> str | None:
    if value is None:
        return None
    if solution_format == "first_of_list":
        if not isinstance(value, list) or not value:
            return None
        value = value[0]
    text = str(value).strip()
    return text or None


def _check_answer_type(value: Any, data: DataConfig) -> None:
    column = data.fields.answer
    if data.answer_format == "choice":  # a label of the source or an index (choice_answer)
        _check_type(value, column, numbers_too=True)
    elif data.answer_format == "list" and isinstance(value, list):
        for item in value:
            _check_type(item, column, numbers_too=True)
    else:
        _check_type(value, column, numbers_too=data.answer_format in ("text", "list"))


def _to_problem(row: dict[str, Any], index: int, data: DataConfig) -> Problem:
    fields = data.fields
    raw_id = row.get(fields.id) if fields.id else index
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int | None):
        raise DataError(f"record {data.name}/{index}: field '{fields.id}' (the id) holds {_kind(raw_id)}")
    record_id = f"{data.name}/{raw_id if raw_id is not None else index}"
    for name in ("problem", "answer", "solution", "choices"):
        column = getattr(fields, name)
        if column is not None and column not in row:
            raise DataError(f"record {record_id}: missing field '{column}' (data.fields.{name})")
    try:
        _check_type(row[fields.problem], fields.problem)
        _check_answer_type(row[fields.answer], data)
        if fields.solution is not None:
            solution = row[fields.solution]
            if data.solution_format == "first_of_list" and isinstance(solution, list):
                solution = solution[0] if solution else None
            _check_type(solution, fields.solution)
    except DataError as error:
        raise DataError(f"record {record_id}: {error}") from None
    problem = (row[fields.problem] or "").strip()
    if not problem:
        raise DataError(f"record {record_id}: field '{fields.problem}' is empty")
    if fields.choices is not None:
        labels, texts = choice_options(row[fields.choices])
        if not texts:
            raise DataError(f"record {record_id}: field '{fields.choices}' holds no options (data.fields.choices)")
        problem = with_options(problem, texts)
        answer = choice_answer(row[fields.answer], labels)
    else:
        answer = gold_answer(row[fields.answer], data.answer_format)
    if not answer:
        raise DataError(
            f"record {record_id}: no gold answer in field '{fields.answer}' (answer_format={data.answer_format})"
        )
    expert_solution = _solution(row[fields.solution], data.solution_format) if fields.solution else None
    return Problem(id=record_id, problem=problem, answer=answer, expert_solution=expert_solution, dataset=data.name)


def load_problems(
    data: DataConfig, data_root: str, strict: bool = True, cache_dir: str | None = None
) -> LoadedProblems:
    """The first ``data.limit`` problems; bad records raise, or are skipped and listed when not strict.

    Every message names the data config, where the record is (file and line, or row) and the record's id when
    it has one. ``cache_dir`` is where generated sources (format=toy) are written; None: the default cache dir.
    """
    loaded = LoadedProblems(problems=[])
    seen: set[str] = set()
    empty = True
    for index, raw in enumerate(_raw_rows(data, data_root, cache_dir)):
        empty = False
        if data.limit is not None and index >= data.limit:
            break
        try:
            if raw.row is None:
                raise DataError(raw.unreadable)
            problem = _to_problem(raw.row, index, data)
            if problem.id in seen:
                raise DataError(f"record {problem.id}: duplicate id (set data.fields.id to a unique field or null)")
        except DataError as error:
            reason = f"data '{data.name}': {raw.where}: {error}"
            if strict:
                raise DataError(reason) from None
            loaded.skipped.append(SkippedRecord(id=f"{data.name}/{index}", reason=reason))
            continue
        seen.add(problem.id)
        loaded.problems.append(problem)
    if empty:
        raise DataError(f"data '{data.name}': {data.path} holds no records")
    return loaded
