"""Every branch of the rewriting stages, driven by a scripted generator."""

from __future__ import annotations

from collections import defaultdict

import pytest

from mindgap.generation.base import Completion
from mindgap.generation.config import SamplingConfig
from mindgap.records import Problem
from mindgap.rewriting.config import CopyFilterConfig, RewriteConfig
from mindgap.rewriting.copy_filter import copy_reason, words
from mindgap.rewriting.expert import normalize_expert_solution
from mindgap.rewriting.stages import Rewriter, round_seed
from mindgap.verification.answers import extract_answer
from mindgap.verification.verifier import Verdict, is_correct

COPIED = "Add the two numbers together, which gives the sum of both of the given numbers in the question: "
EXPERT = COPIED + "<<{q}={a}>>{a}\n#### {a}"
QUESTIONS = {"self": ("1+1", "2"), "guided": ("2+2", "4"), "copied": ("5+5", "10"), "expert": ("3+3", "6")}
PROBLEMS = [
    Problem(f"p/{name}", f"What is {q}?", a, EXPERT.format(q=q, a=a), "p") for name, (q, a) in QUESTIONS.items()
]
RIGHT, WRONG = "So it is \\boxed{{{a}}}", "I am unsure. \\boxed{{0}}"
# What the model says, by problem and prompt kind, sample after sample (the last one repeats). A response
# wrapped in Cut() ran into max_tokens (finish reason "length").
SCRIPT = {
    ("p/self", "self"): [WRONG, RIGHT, RIGHT],
    ("p/guided", "self"): [WRONG],
    ("p/guided", "guided"): [RIGHT],
    ("p/copied", "self"): [WRONG],
    # Correct, but it talks about the reference, then copies a long run of the expert's words.
    ("p/copied", "guided"): [
        "As the reference solution says, \\boxed{{{a}}}",
        COPIED + "\\boxed{{{a}}}",
    ],
    ("p/expert", "self"): [WRONG],
    ("p/expert", "guided"): [WRONG],
}


class Cut(str):
    """A scripted response cut off at max_tokens."""


class ScriptedGenerator:
    """Replays a script (SCRIPT by default): each prompt draws its problem's next scripted responses."""

    backend = "scripted"
    fingerprint = "scripted:0"

    def __init__(self, script: dict[tuple[str, str], list[str]] | None = None) -> None:
        self.script = SCRIPT if script is None else script
        self.calls: list[tuple[list[str], SamplingConfig, int]] = []
        self.drawn: dict[tuple[str, str], int] = defaultdict(int)

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]:
        self.calls.append((prompts, sampling, seed))
        results = []
        for prompt in prompts:
            problem = next(p for p in PROBLEMS if p.problem in prompt)
            key = (problem.id, "guided" if "reference solution" in prompt else "self")
            script = self.script[key]
            samples = []
            for _ in range(sampling.n):
                scripted = script[min(self.drawn[key], len(script) - 1)]
                self.drawn[key] += 1
                # A cut-off response has no stop token (2 is the scripted one).
                ids, finish_reason = ([7, 8, 9], "length") if isinstance(scripted, Cut) else ([7, 8, 2], "stop")
                samples.append(Completion(scripted.format(a=problem.answer), ids, [-0.5, -0.25, -0.125], finish_reason))
            results.append(samples)
        return results

    def close(self) -> None:
        pass


class InProcessVerifier:
    def verify(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        return [Verdict(is_correct(r, g), extract_answer(r)) for r, g in zip(responses, golds, strict=True)]


def _run(
    strategy: str = "mind_the_gap",
    n: int = 4,
    per_round: int | None = 1,
    script: dict[tuple[str, str], list[str]] | None = None,
    **config_overrides,
):
    generator = ScriptedGenerator(script)
    config = RewriteConfig(
        strategy=strategy,
        self_sampling=SamplingConfig(n=n),
        guided_sampling=SamplingConfig(n=n),
        samples_per_round=per_round,
        work_dir="unused",
        **config_overrides,
    )
    outcome = Rewriter(config, generator, InProcessVerifier(), None, "qwen-boxed").run(PROBLEMS, seed=0)
    return outcome, generator


def test_mind_the_gap_uses_all_three_sources_and_rejects_copies() -> None:
    outcome, generator = _run()
    assert [(r.id, r.source) for r in outcome.records] == [
        ("p/self", "self"),
        ("p/guided", "guided"),
        ("p/copied", "expert"),
        ("p/expert", "expert"),
    ]
    self_record, guided_record, copied_record, expert_record = outcome.records
    assert self_record.response == "So it is \\boxed{2}"
    assert "reference solution" not in self_record.behavior_prompt
    assert "reference solution" in guided_record.behavior_prompt
    # The guided prompt shows the expert solution as the rewrite prompts and the fallback do: normalised.
    assert "2+2=4" not in guided_record.behavior_prompt and "####" not in guided_record.behavior_prompt
    assert "The final answer is $\\boxed{4}$." in guided_record.behavior_prompt
    assert guided_record.response_token_ids == [7, 8, 2]
    assert guided_record.behavior_logprobs == [-0.5, -0.25, -0.125]
    assert guided_record.rescored_logprobs is None
    # p/guided: 4 self samples (all wrong), then one guided round that solved it.
    assert (guided_record.attempts.self_samples, guided_record.attempts.guided_samples) == (4, 1)
    assert (copied_record.attempts.self_samples, copied_record.attempts.guided_samples) == (4, 4)
    assert expert_record.response_token_ids is None and expert_record.behavior_logprobs is None
    assert "reference solution" not in expert_record.behavior_prompt

    stages = {name: stats.as_dict() for name, stats in outcome.stages.items()}
    # Self: p/self stops after its 2nd sample; the other three draw all 4.
    counts = ("attempted", "solved", "sampled", "correct", "rounds", "acceptance")
    assert [stages["self"][key] for key in counts] == [4, 1, 2 + 3 * 4, 1, 4, 0.25]
    # Guided: 3 problems; p/copied is correct 4 times but rejected (1 meta phrase, then 3 shared n-grams).
    assert (stages["guided"]["attempted"], stages["guided"]["solved"], stages["guided"]["correct"]) == (3, 1, 5)
    assert (stages["guided"]["rejected_meta_phrase"], stages["guided"]["rejected_shared_ngram"]) == (1, 3)
    # Rounds draw one sample for every unsolved problem: 3 problems in round 1, then 2 until n.
    assert [len(prompts) for prompts, _, _ in generator.calls] == [4, 4, 3, 3, 3, 2, 2, 2]


def test_truncated_responses_are_never_kept() -> None:
    # Correct answers that ran into max_tokens: the model would learn not to stop. p/self is cut off once
    # and then stops; p/guided is cut off under both prompts; p/copied and p/expert as in SCRIPT.
    script = {
        **SCRIPT,
        ("p/self", "self"): [Cut(RIGHT), RIGHT],
        ("p/guided", "self"): [Cut(RIGHT)],
        ("p/guided", "guided"): [Cut(RIGHT)],
    }
    outcome, _ = _run(script=script)
    assert [(r.id, r.source) for r in outcome.records] == [
        ("p/self", "self"),
        ("p/guided", "expert"),
        ("p/copied", "expert"),
        ("p/expert", "expert"),
    ]
    assert outcome.records[0].response_token_ids == [7, 8, 2]
    stages = {name: stats.as_dict() for name, stats in outcome.stages.items()}
    # Self: p/self's first sample and all 4 of p/guided's are correct but cut off.
    assert (stages["self"]["correct"], stages["self"]["rejected_truncated"], stages["self"]["solved"]) == (6, 5, 1)
    assert (stages["guided"]["rejected_truncated"], stages["guided"]["solved"]) == (4, 0)


def test_adaptive_rounds_report_tokens_against_fixed_n() -> None:
    outcome, _ = _run()
    self_stats = outcome.stages["self"]
    # 3 tokens per sample: p/self drew 2 of 4 samples, the others all 4.
    assert self_stats.tokens_generated == 3 * 14
    assert self_stats.tokens_fixed_n == 3 * 16
    assert self_stats.as_dict()["token_savings"] == pytest.approx(1 - 14 / 16)

    fixed, generator = _run(per_round=None)
    assert [len(prompts) for prompts, _, _ in generator.calls] == [4, 3]
    assert fixed.stages["self"].tokens_generated == fixed.stages["self"].tokens_fixed_n == 3 * 16
    # Same yield either way.
    assert [(r.id, r.source) for r in fixed.records] == [(r.id, r.source) for r in outcome.records]


@pytest.mark.parametrize(("keep", "keep_k", "self_records"), [("first", 2, 1), ("k", 2, 2), ("all", 2, 3)])
def test_keep_policy(keep: str, keep_k: int, self_records: int) -> None:
    outcome, _ = _run(keep=keep, keep_k=keep_k)
    assert [r.source for r in outcome.records].count("self") == self_records


@pytest.mark.parametrize(
    ("strategy", "sources", "dropped"),
    [
        ("none", ["expert"] * 4, []),
        ("no_guided", ["self", "expert", "expert", "expert"], []),
        ("self_only", ["self"], ["p/copied", "p/expert", "p/guided"]),
    ],
)
def test_ablations(strategy: str, sources: list[str], dropped: list[str]) -> None:
    outcome, generator = _run(strategy, per_round=None)
    assert [r.source for r in outcome.records] == sources
    assert sorted(outcome.dropped) == dropped
    assert len(generator.calls) == (0 if strategy == "none" else 1)


def test_round_seeds_are_distinct_and_reproducible() -> None:
    _, generator = _run()
    seeds = [seed for _, _, seed in generator.calls]
    assert len(set(seeds)) == len(seeds)
    assert seeds[0] == round_seed(0, "self", 0) and seeds[4] == round_seed(0, "guided", 0)
    assert seeds == [seed for _, _, seed in _run()[1].calls]


EXPERT_SHOWN = "so: one two three four five six seven eight; done"


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ("Following the Reference Solution, x = 2.", "meta_phrase"),
        ("As the given\nsolution says, x = 2.", "meta_phrase"),
        # The instruction echoed back (SmolLM2-135M-Instruct under rewrite=sdft).
        ("Here is the rewritten solution: x = 2. Rewrite this solution in your own words and style:", "meta_phrase"),
        # Whole expressions only: geometry has reference angles, and the model may refer to a given number.
        ("The reference angle is 30 degrees, so x = 2.", None),
        ("With the given numbers, x = 2.", None),
        ("one two three four five six seven eight", "shared_ngram"),
        ("ONE two, three! four five six seven eight.", "shared_ngram"),
        ("one two three four five six seven nine", None),
        ("eight seven six five four three two one", None),
    ],
)
def test_copy_filter(response: str, reason: str | None) -> None:
    config = CopyFilterConfig(max_shared_ngram=8)
    assert copy_reason(response, EXPERT_SHOWN, "What is x?", config) == reason


def test_copy_filter_ignores_runs_that_restate_the_problem() -> None:
    config = CopyFilterConfig(max_shared_ngram=8)
    problem = "The farmer has seven cows and five pigs on his small farm. How many animals?"
    expert = "The farmer has seven cows and five pigs on his small farm, so 7 + 5 = 12."
    response = "We know the farmer has seven cows and five pigs on his small farm. Adding gives 12."
    assert copy_reason(response, expert, problem, config) is None
    assert copy_reason(response, expert, "How many animals?", config) == "shared_ngram"


def test_copy_filter_compares_words_without_latex_markup() -> None:
    config = CopyFilterConfig(max_shared_ngram=8)
    expert = "First $\\frac{3}{4} \\cdot 8 = 6$ and $\\sqrt{16} = 4$, done."
    # 6 shared words once the markup is gone (3/4 8 6 and 16 4), not 10 one-character pieces (frac 3 4 cdot ...).
    assert words(expert) == ["first", "3/4", "8", "6", "and", "16", "4", "done"]
    assert copy_reason("Then $\\frac{3}{4} \\cdot 8 = 6$ and $\\sqrt{16} = 4$ here.", expert, "", config) is None
    # A formula written without spaces is one word.
    assert words("so $x^{2}+3x=10$.") == ["so", "x^2+3x=10"]
    assert copy_reason(expert, expert, "", config) == "shared_ngram"


def test_copy_filter_ngram_check_can_be_disabled() -> None:
    config = CopyFilterConfig(max_shared_ngram=None)
    text = "a b c d e f g h i j k l m n o p q r"
    assert copy_reason(text, text, "", config) is None


def test_expert_fallback_is_normalised_to_the_answer_format() -> None:
    assert normalize_expert_solution("3+3 = <<3+3=6>>6\n#### 6", "6") == "3+3 = 6\nThe final answer is $\\boxed{6}$."
    already_boxed = "so $x=\\boxed{5}$"
    assert normalize_expert_solution(already_boxed, "5") == already_boxed
