"""The generate-verify-fallback pass of rewrite=sdft and rewrite=rl_agent, driven by a scripted generator."""

from __future__ import annotations

import pytest

from mindgap.generation.base import Completion
from mindgap.generation.config import SamplingConfig
from mindgap.prompts import standard_prompt
from mindgap.records import Problem
from mindgap.rewriting.config import RewriteConfig
from mindgap.rewriting.stages import round_seed
from mindgap.rewriting.strategies import make_rewriter, uses_generator
from mindgap.verification.answers import extract_answer
from mindgap.verification.verifier import Verdict, is_correct

EXPERT = "Add them: {q} = <<{q}={a}>>{a}\n#### {a}"
QUESTIONS = {"kept": ("1+1", "2"), "mentions": ("2+2", "4"), "copied": ("4+4", "8"), "wrong": ("3+3", "6")}
PROBLEMS = [
    Problem(f"p/{name}", f"What is {q}?", a, EXPERT.format(q=q, a=a), "p") for name, (q, a) in QUESTIONS.items()
]
# What the model answers to each problem's rewrite prompt.
SCRIPT = {
    "p/kept": "One and one make two, so \\boxed{2}",
    "p/mentions": "As the reference solution says, \\boxed{4}",
    # A verbatim copy of the normalised expert solution: allowed (only meta-phrases are filtered).
    "p/copied": "Add them: 4+4 = 8\nThe final answer is $\\boxed{8}$.",
    "p/wrong": "I think it is \\boxed{7}",
}


class ScriptedGenerator:
    backend = "scripted"
    fingerprint = "scripted:0"

    def __init__(self, cut_off: tuple[str, ...] = ()) -> None:
        # Problems whose rewrite runs into max_tokens (finish reason "length", no stop token).
        self.cut_off = cut_off
        self.calls: list[tuple[list[str], SamplingConfig, int]] = []

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]:
        self.calls.append((prompts, sampling, seed))
        results = []
        for prompt in prompts:
            problem = next(p for p in PROBLEMS if p.problem in prompt)
            ids, finish_reason = ([7, 8, 9], "length") if problem.id in self.cut_off else ([7, 8, 2], "stop")
            results.append([Completion(SCRIPT[problem.id], ids, [-0.5, -0.25, -0.125], finish_reason)])
        return results

    def close(self) -> None:
        pass


class InProcessVerifier:
    def verify(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        return [Verdict(is_correct(r, g), extract_answer(r)) for r, g in zip(responses, golds, strict=True)]


def _run(strategy: str, cut_off: tuple[str, ...] = ()):
    generator = ScriptedGenerator(cut_off)
    config = RewriteConfig(strategy=strategy, work_dir="unused")
    outcome = make_rewriter(config, generator, InProcessVerifier(), None, "qwen-boxed").run(PROBLEMS, seed=3)
    return outcome, generator


def test_sdft_keeps_correct_rewrites_without_meta_phrases() -> None:
    outcome, generator = _run("sdft")
    assert [(r.id, r.source) for r in outcome.records] == [
        ("p/kept", "rewritten"),
        ("p/mentions", "expert"),
        ("p/copied", "rewritten"),
        ("p/wrong", "expert"),
    ]
    kept, mentions, copied, wrong = outcome.records
    assert kept.response == SCRIPT["p/kept"]
    assert kept.response_token_ids == [7, 8, 2] and kept.behavior_logprobs == [-0.5, -0.25, -0.125]
    assert kept.rescored_logprobs is None
    # The rewrite prompt shows the expert solution normalised to the answer format, as the fallback holds it.
    assert "Rewrite this reference solution in your own words" in kept.behavior_prompt
    assert "Add them: 1+1 = 2\nThe final answer is $\\boxed{2}$." in kept.behavior_prompt
    assert "####" not in kept.behavior_prompt and "<<" not in kept.behavior_prompt
    assert (kept.generator.backend, kept.generator.temperature, kept.generator.seed) == (
        "scripted",
        0.0,
        round_seed(3, "rewrite", 0),
    )
    # Fallbacks are the normalised expert solution under the standard prompt, with the attempt counted.
    assert wrong.response == "Add them: 3+3 = 6\nThe final answer is $\\boxed{6}$."
    assert wrong.behavior_prompt == standard_prompt("What is 3+3?", "qwen-boxed")
    assert wrong.response_token_ids is None and wrong.behavior_logprobs is None
    assert [r.attempts.rewrite_samples for r in outcome.records] == [1, 1, 1, 1]
    assert mentions.source == "expert" and copied.source == "rewritten"

    stats = outcome.stages["rewrite"].as_dict()
    counts = ("attempted", "sampled", "correct", "solved", "rejected_meta_phrase", "rounds", "tokens_generated")
    assert [stats[key] for key in counts] == [4, 4, 3, 2, 1, 1, 12]
    assert stats["acceptance"] == 0.5
    # One generation call: every prompt once, greedy, one sample.
    ((prompts, sampling, _),) = generator.calls
    assert len(prompts) == 4 and (sampling.n, sampling.temperature) == (1, 0.0)


def test_rl_agent_pass_keeps_every_rewrite_whose_answer_matches() -> None:
    outcome, _ = _run("rl_agent")
    assert [r.source for r in outcome.records] == ["rewritten", "rewritten", "rewritten", "expert"]
    assert outcome.stages["rewrite"].rejected_meta_phrase == 0


@pytest.mark.parametrize("strategy", ["sdft", "rl_agent"])
def test_truncated_rewrites_fall_back_to_the_expert_solution(strategy: str) -> None:
    # p/kept and p/copied are correct rewrites, but cut off at max_tokens: never kept as targets.
    outcome, _ = _run(strategy, cut_off=("p/kept", "p/copied"))
    kept, _, copied, _ = outcome.records
    assert (kept.source, copied.source) == ("expert", "expert")
    stats = outcome.stages["rewrite"]
    assert (stats.correct, stats.rejected_truncated) == (3, 2)
    # p/mentions is left: rejected by SDFT's meta-phrase filter, kept by the RL agent's pass.
    assert stats.solved == (0 if strategy == "sdft" else 1)


def test_reference_rewrite_strategies_use_a_generator() -> None:
    assert uses_generator("sdft") and uses_generator("rl_agent") and not uses_generator("none")


def test_more_than_one_rewrite_per_problem_is_refused() -> None:
    config = RewriteConfig(strategy="sdft", work_dir="unused")
    config.sdft.sampling.n = 2
    with pytest.raises(ValueError, match="one rewrite per problem"):
        make_rewriter(config, ScriptedGenerator(), InProcessVerifier(), None, "qwen-boxed")
