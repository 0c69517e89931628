"""The ``data`` section: where records come from (files, hub datasets, the toy world) and their field names."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mindgap.checks import require_choice, require_positive
from mindgap.errors import ConfigError
from mindgap.toy.config import TOY_SPLITS, ToyDataConfig


@dataclass
class FieldsConfig:
    """Which field of a raw record holds each part of a problem."""

    # Field holding a stable id; null uses the row number.
    id: str | None = None
    problem: str = "problem"
    # Field holding the expert (reference) solution; null when the source has none.
    solution: str | None = "solution"
    # Field the gold answer is read from, interpreted by ``answer_format``.
    answer: str = "answer"
    # Field holding the options of a multiple-choice question (a list, or ARC's {"label": [...],
    # "text": [...]}); they are appended to the problem as "A. ..." lines. Null: not multiple choice.
    choices: str | None = None


@dataclass
class DataConfig:
    """One source of math problems: a file under data_root, any local file, or a hub dataset."""

    name: str = MISSING
    # jsonl | parquet (a file) | hub (``datasets.load_dataset``: a hub id or a local dataset dir) |
    # toy (a split of the toy world, generated into a jsonl file on first use).
    format: str = "jsonl"
    # File path (relative paths are under data_root) or hub id; for format=toy, the directory the
    # generated files go to (relative paths are under cache_dir).
    path: str = MISSING
    # Split and subset, for format=hub; for format=toy the split: target_train | target_test | forgetting.
    split: str = "train"
    subset: str | None = None
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    # How the gold answer is read from fields.answer:
    #   text   - the field itself (numbers are printed without a trailing .0)
    #   gsm8k  - the text after the final '####'
    #   boxed  - the content of the last \boxed{...}
    #   list   - a list of answers, joined with ', ', with '$' and a final '.' removed
    #   choice - the letter of the right option: an index from 0 (MMLU) or a label (ARC's "C" or "3")
    answer_format: str = "text"
    # text | first_of_list (OlympiadBench stores a list of solutions).
    solution_format: str = "text"
    # Keep only the first N problems.
    limit: int | None = None
    # The toy world and split size, for format=toy.
    toy: ToyDataConfig | None = None

    def __post_init__(self) -> None:
        require_choice("data.format", self.format, ("jsonl", "parquet", "hub", "toy"))
        if (self.format == "toy") != (self.toy is not None):
            raise ConfigError("data: format=toy needs data.toy, and data.toy is only for format=toy")
        if self.format == "toy":
            require_choice("data.split", self.split, TOY_SPLITS)
        require_choice("data.answer_format", self.answer_format, ("text", "gsm8k", "boxed", "list", "choice"))
        if (self.answer_format == "choice") != (self.fields.choices is not None):
            raise ConfigError("data: answer_format=choice needs data.fields.choices, and fields.choices needs it")
        require_choice("data.solution_format", self.solution_format, ("text", "first_of_list"))
        require_positive("data.limit", self.limit)
