"""The record schema every stage reads and writes (DESIGN.md §3).

A ``Problem`` is one input item: a question with its gold answer and, for training data,
the expert solution. A ``Record`` is one training example produced by the rewriting stage.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from datasets import Features, Sequence, Value

from mindgap.errors import DataError

# self and guided: sampled by pi_0 (DESIGN.md §1); expert: the expert solution itself; rewritten: the expert
# solution rewritten by a model shown it as a reference (rewrite=sdft: pi_0; rewrite=rl_agent: pi_0 + LoRA).
SOURCES = ("self", "guided", "expert", "rewritten")


@dataclass(frozen=True)
class Problem:
    """One problem of a data source, fields already mapped to the common names."""

    # Unique within the source: "<data name>/<raw id or row number>".
    id: str
    problem: str
    # Gold final answer, as text.
    answer: str
    # The reference solution; None for sources without one (e.g. AMC23).
    expert_solution: str | None
    # Name of the data config it came from.
    dataset: str


@dataclass
class GeneratorInfo:
    """Which engine and sampling parameters produced a response (empty backend for expert text)."""

    backend: str = ""
    # Fingerprint of the generating model (mindgap.models.loading.model_fingerprint): the behaviour policy.
    model: str = ""
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 0
    seed: int = 0


@dataclass
class Attempts:
    """How many responses each stage sampled for the record's problem."""

    self_samples: int = 0
    guided_samples: int = 0
    # Rewrites of the expert solution drawn (rewrite=sdft | rl_agent).
    rewrite_samples: int = 0


@dataclass
class Record:
    """One training example: a problem and the response to train on, with its provenance."""

    id: str
    problem: str
    answer: str
    expert_solution: str
    # self | guided | expert | rewritten
    source: str
    response: str
    # The exact generated ids (eos included when generated); None for expert text.
    response_token_ids: list[int] | None
    # Log-probs of response_token_ids under the sampling distribution, aligned 1:1; None for expert text.
    behavior_logprobs: list[float] | None
    # The full prompt the response was generated under (standard, guided or rewrite).
    behavior_prompt: str
    # Log-prob of each response token under behavior_prompt by the record's behaviour policy, from the Hugging
    # Face model's own forward (DESIGN.md §1), at the record's sampling temperature and top-p (T = 1 for greedy
    # and expert records; mindgap.rewriting.rescore): the model that generated it (π₀; under rewrite=rl_agent
    # the trained rewriter for rewritten records), π₀ for expert text, of its tokenisation as trained
    # (mindgap.data.collate). None before the rescoring pass.
    rescored_logprobs: list[float] | None = None
    generator: GeneratorInfo = field(default_factory=GeneratorInfo)
    attempts: Attempts = field(default_factory=Attempts)

    def __post_init__(self) -> None:
        validate_record(asdict(self))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> Record:
        """Inverse of ``to_dict`` (also reads rows loaded from a saved dataset)."""
        values = dict(row)
        values["generator"] = GeneratorInfo(**values["generator"])
        values["attempts"] = Attempts(**values["attempts"])
        return cls(**values)


FEATURES = Features(
    {
        "id": Value("string"),
        "problem": Value("string"),
        "answer": Value("string"),
        "expert_solution": Value("string"),
        "source": Value("string"),
        "response": Value("string"),
        "response_token_ids": Sequence(Value("int32")),
        "behavior_logprobs": Sequence(Value("float32")),
        "behavior_prompt": Value("string"),
        "rescored_logprobs": Sequence(Value("float32")),
        "generator": {
            "backend": Value("string"),
            "model": Value("string"),
            "temperature": Value("float32"),
            "top_p": Value("float32"),
            "max_tokens": Value("int32"),
            "seed": Value("int64"),
        },
        "attempts": {
            "self_samples": Value("int32"),
            "guided_samples": Value("int32"),
            "rewrite_samples": Value("int32"),
        },
    }
)


def validate_record(record: dict[str, Any]) -> None:
    """Raise DataError naming the record when it breaks the contract."""
    record_id = record.get("id") or "<no id>"
    for name in ("id", "problem", "answer", "source", "response"):
        if not isinstance(record.get(name), str) or not record[name].strip():
            raise DataError(f"record {record_id}: field '{name}' is missing or empty")
    if record["source"] not in SOURCES:
        raise DataError(f"record {record_id}: source={record['source']!r} is not one of {', '.join(SOURCES)}")
    token_ids, logprobs = record.get("response_token_ids"), record.get("behavior_logprobs")
    if record["source"] != "expert" and not token_ids:
        raise DataError(f"record {record_id}: a model-generated response needs response_token_ids")
    if record["source"] == "rewritten" and not (record.get("expert_solution") or "").strip():
        raise DataError(f"record {record_id}: a rewritten response needs the expert_solution it rewrites")
    if logprobs is not None:
        if token_ids is None or len(logprobs) != len(token_ids):
            raise DataError(
                f"record {record_id}: behavior_logprobs has {len(logprobs)} values for "
                f"{0 if token_ids is None else len(token_ids)} response tokens"
            )
        if not all(math.isfinite(value) for value in logprobs):
            raise DataError(f"record {record_id}: behavior_logprobs holds a non-finite value")
    rescored = record.get("rescored_logprobs")
    if rescored is not None:
        if token_ids is not None and len(rescored) != len(token_ids):
            raise DataError(
                f"record {record_id}: rescored_logprobs has {len(rescored)} values for {len(token_ids)} response tokens"
            )
        if not all(math.isfinite(value) for value in rescored):
            raise DataError(f"record {record_id}: rescored_logprobs holds a non-finite value")
