"""Records keep the contract of DESIGN.md §3 or fail naming the record."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset

from mindgap.errors import DataError
from mindgap.records import FEATURES, Record, validate_record


def _record(**overrides) -> dict:
    record = {
        "id": "gsm8k_train/3",
        "problem": "What is 1+1?",
        "answer": "2",
        "expert_solution": "1+1=2\n#### 2",
        "source": "self",
        "response": "1+1=2, so \\boxed{2}",
        "response_token_ids": [5, 6, 7],
        "behavior_logprobs": [-0.1, -0.2, -0.3],
        "behavior_prompt": "prompt",
    }
    return record | overrides


def test_round_trip_through_datasets() -> None:
    rows = [
        Record(**_record()).to_dict(),
        Record(**_record(source="expert", response_token_ids=None, behavior_logprobs=None)).to_dict(),
    ]
    dataset = Dataset.from_list(rows, features=FEATURES)
    assert dataset[0]["response_token_ids"] == [5, 6, 7]
    assert dataset[0]["behavior_logprobs"] == pytest.approx([-0.1, -0.2, -0.3])
    assert dataset[1]["response_token_ids"] is None
    assert dataset[1]["attempts"] == {"self_samples": 0, "guided_samples": 0, "rewrite_samples": 0}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "teacher"}, "source='teacher' is not one of self, guided, expert, rewritten"),
        ({"response": " "}, "field 'response' is missing or empty"),
        ({"behavior_logprobs": [-0.1, -0.2]}, "behavior_logprobs has 2 values for 3 response tokens"),
        ({"behavior_logprobs": [-0.1, math.nan, -0.3]}, "non-finite"),
        ({"response_token_ids": None, "behavior_logprobs": None}, "needs response_token_ids"),
        ({"source": "rewritten", "response_token_ids": None, "behavior_logprobs": None}, "needs response_token_ids"),
        ({"source": "rewritten", "expert_solution": ""}, "needs the expert_solution it rewrites"),
    ],
)
def test_contract_violations_name_the_record(overrides: dict, message: str) -> None:
    with pytest.raises(DataError, match=f"record gsm8k_train/3: .*{message}"):
        validate_record(_record(**overrides))
