"""Every branch of the rewriting stages, driven by a scripted generator."""

from __future__ import annotations

import pytest

from mindgap.config import RewriteConfig, SamplingConfig
from mindgap.generation import Completion
from mindgap.records import Problem
from mindgap.rewriting.expert import normalize_expert_solution
from mindgap.rewriting.stages import Rewriter

PROBLEMS = [
    Problem("p/self", "What is 1+1?", "2", "1+1 = <<1+1=2>>2\n#### 2", "p"),
    Problem("p/guided", "What is 2+2?", "4", "2+2 = <<2+2=4>>4\n#### 4", "p"),
    Problem("p/expert", "What is 3+3?", "6", "3+3 = <<3+3=6>>6\n#### 6", "p"),
]


class ScriptedGenerator:
    """Answers by prompt kind: the standard prompt solves only 'self', the guided one also 'guided'."""

    backend = "scripted"
    fingerprint = "scripted:0"

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], SamplingConfig]] = []

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]:
        self.calls.append((prompts, sampling))
        results = []
        for prompt in prompts:
            guided = "reference solution" in prompt
            solved = "1+1" in prompt or (guided and "2+2" in prompt)
            answer = {"1+1": "2", "2+2": "4", "3+3": "6"}[next(k for k in ("1+1", "2+2", "3+3") if k in prompt)]
            texts = ["I am unsure. \\boxed{0}"] + (
                [f"So it is \\boxed{{{answer}}}"] * 2 if solved else ["\\boxed{1}"] * 2
            )
            results.append([Completion(t, [7, 8, 2], [-0.5, -0.25, -0.125], "stop") for t in texts][: sampling.n])
        return results


def _run(strategy: str, keep: str = "first"):
    generator = ScriptedGenerator()
    config = RewriteConfig(
        strategy=strategy, keep=keep, self_sampling=SamplingConfig(n=3), guided_sampling=SamplingConfig(n=3)
    )
    return Rewriter(config, generator, None, "qwen-boxed", seed=0).run(PROBLEMS), generator


def test_mind_the_gap_uses_all_three_sources() -> None:
    outcome, generator = _run("mind_the_gap")
    assert [(r.id, r.source) for r in outcome.records] == [
        ("p/self", "self"),
        ("p/guided", "guided"),
        ("p/expert", "expert"),
    ]
    # Stage 2 only sees what stage 1 left unsolved.
    assert len(generator.calls[0][0]) == 3 and len(generator.calls[1][0]) == 2
    self_record, guided_record, expert_record = outcome.records
    assert self_record.behavior_prompt == generator.calls[0][0][0]
    assert "reference solution" in guided_record.behavior_prompt
    assert guided_record.response_token_ids == [7, 8, 2]
    assert guided_record.behavior_logprobs == [-0.5, -0.25, -0.125]
    assert (guided_record.attempts.self_samples, guided_record.attempts.guided_samples) == (3, 3)
    assert expert_record.response_token_ids is None and expert_record.behavior_logprobs is None
    assert "reference solution" not in expert_record.behavior_prompt
    stages = {name: stats.as_dict() for name, stats in outcome.stages.items()}
    assert stages["self"]["attempted"] == 3 and stages["self"]["solved"] == 1 and stages["self"]["correct"] == 2
    assert stages["guided"]["attempted"] == 2 and stages["guided"]["solved"] == 1
    assert stages["self"]["tokens_generated"] == 9 * 3


@pytest.mark.parametrize(
    ("strategy", "sources", "dropped"),
    [
        ("none", ["expert", "expert", "expert"], []),
        ("no_guided", ["self", "expert", "expert"], []),
        ("self_only", ["self"], ["p/expert", "p/guided"]),
    ],
)
def test_ablations(strategy: str, sources: list[str], dropped: list[str]) -> None:
    outcome, generator = _run(strategy)
    assert [r.source for r in outcome.records] == sources
    assert sorted(outcome.dropped) == dropped
    assert len(generator.calls) == (0 if strategy == "none" else 1)


def test_keep_all_keeps_every_correct_response() -> None:
    outcome, _ = _run("mind_the_gap", keep="all")
    assert [r.source for r in outcome.records] == ["self", "self", "guided", "guided", "expert"]


def test_expert_fallback_is_normalised_to_the_answer_format() -> None:
    assert normalize_expert_solution("3+3 = <<3+3=6>>6\n#### 6", "6") == "3+3 = 6\nThe final answer is $\\boxed{6}$."
    already_boxed = "so $x=\\boxed{5}$"
    assert normalize_expert_solution(already_boxed, "5") == already_boxed
