"""The RL rewriter's group-wise rewards against hand-computed groups, and the frozen-backbone scorer."""

from __future__ import annotations

import math

import pytest
import torch

from mindgap.config import RLAgentConfig
from mindgap.rewriting.rewards import (
    GroupRewards,
    RewardScorer,
    alignment_rewards,
    diversity_rewards,
    gate_rewards,
    group_rewards,
    mean_pairwise_cosine_distance,
    total_rewards,
)
from mindgap.rewriting.rl_agent import GroupRewardFunctions
from mindgap.verify import Verdict


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-6)


# Three rewrites; the middle one fails the gate. Embeddings: e1 = (1, 0), e2 = (0, 1), e3 = (0, 1).
PASSING = torch.tensor([True, False, True])
NLL = torch.tensor([1.0, 5.0, 3.0])
EMBEDDINGS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])


def test_gate_needs_the_answer_and_the_judge_when_given() -> None:
    _close(gate_rewards([True, False, True]), [1.0, 0.0, 1.0])
    _close(gate_rewards([True, False, True], judged_valid=[False, True, True]), [0.0, 0.0, 1.0])


def test_alignment_is_standardised_over_the_passing_rewrites_only() -> None:
    # Passing NLLs (1, 3): mean 2, population std 1, z = (-1, +1): sigma(1), sigma(-1). Had the failing 5.0
    # counted, the mean would be 3 and z_1 = -2 / sqrt(8/3) ~ -1.22 (sigma ~ 0.773).
    _close(alignment_rewards(NLL, PASSING), [sigmoid(1.0), 0.0, sigmoid(-1.0)])
    # Lower NLL (more natural to the model) is rewarded more.
    assert alignment_rewards(NLL, PASSING)[0] > 0.5 > alignment_rewards(NLL, PASSING)[2]


def test_alignment_of_a_lone_or_uniform_passing_set_is_one_half_without_dividing_by_zero() -> None:
    # One passing rewrite: std 0, z taken as 0, sigma(0) = 1/2.
    _close(alignment_rewards(NLL, torch.tensor([False, True, False])), [0.0, 0.5, 0.0])
    # Identical NLLs: std 0 again.
    _close(alignment_rewards(torch.tensor([2.0, 2.0, 2.0]), torch.ones(3, dtype=torch.bool)), [0.5, 0.5, 0.5])
    # Nobody passing: all 0.
    _close(alignment_rewards(NLL, torch.zeros(3, dtype=torch.bool)), [0.0, 0.0, 0.0])


def test_mean_pairwise_cosine_distance() -> None:
    # e1 = (1, 0), e2 = (0, 1), e3 = (-1, 0): distances 1 - cos are d12 = 1, d13 = 2, d23 = 1; mean 4/3.
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine_distance(three).item() == pytest.approx(4 / 3)
    # Cosine ignores the norm: (2, 0) is as far from (0, 3) as (1, 0) from (0, 1).
    assert mean_pairwise_cosine_distance(torch.tensor([[2.0, 0.0], [0.0, 3.0]])).item() == pytest.approx(1.0)
    # D of fewer than two rewrites is 0 by definition.
    assert mean_pairwise_cosine_distance(three[:1]).item() == 0.0
    assert mean_pairwise_cosine_distance(three[:0]).item() == 0.0


def test_diversity_is_the_marginal_contribution_to_the_passing_set() -> None:
    # D(S) = 4/3 (above). Without e1: D = d23 = 1, so r1 = 1/3; without e2: D = d13 = 2, so r2 = 4/3 - 2 = -2/3
    # (e2 lies between the others: removing it makes the set more diverse); without e3: D = d12 = 1, r3 = 1/3.
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    _close(diversity_rewards(three, torch.ones(3, dtype=torch.bool)), [1 / 3, -2 / 3, 1 / 3])
    # Only passing rewrites count: with e2 failing, S = {e1, e3}, D(S) = 2 and D of one rewrite is 0.
    _close(diversity_rewards(three, torch.tensor([True, False, True])), [2.0, 0.0, 2.0])


def test_identical_rewrites_have_zero_diversity() -> None:
    same = torch.tensor([[0.3, -1.2, 2.0]] * 4)
    _close(diversity_rewards(same, torch.ones(4, dtype=torch.bool)), [0.0] * 4)


def test_a_lone_passing_rewrite_has_zero_diversity() -> None:
    # D({i}) = D({}) = 0.
    _close(diversity_rewards(EMBEDDINGS, torch.tensor([False, False, True])), [0.0, 0.0, 0.0])


def test_total_reward_of_a_hand_computed_group() -> None:
    # r = gate + gate * (0.35 * alignment + 0.5 * diversity). Passing S = {e1, e3} = {(1, 0), (0, 1)}: D(S) = 1,
    # so both get diversity 1; alignment sigma(1), sigma(-1) (above). The failing rewrite gets exactly 0.
    rewards = group_rewards(PASSING, NLL, EMBEDDINGS, 3, 0.35, 0.5)
    _close(rewards.gate, [1.0, 0.0, 1.0])
    _close(rewards.diversity, [1.0, 0.0, 1.0])
    _close(rewards.total, [1 + 0.35 * sigmoid(1.0) + 0.5, 0.0, 1 + 0.35 * sigmoid(-1.0) + 0.5])
    assert rewards.total[1].item() == 0.0
    # ~ (1.75587, 0, 1.59413)
    assert rewards.total[0].item() == pytest.approx(1.7558705, abs=1e-6)
    # The weights are parameters.
    _close(total_rewards(rewards.gate, rewards.alignment, rewards.diversity, 0.0, 1.0), [2.0, 0.0, 2.0])


def test_a_group_with_one_passing_rewrite() -> None:
    # Alignment 1/2, diversity 0: r = 1 + 0.35 / 2 = 1.175; finite everywhere.
    rewards = group_rewards(torch.tensor([False, True, False]), NLL, EMBEDDINGS, 3, 0.35, 0.5)
    _close(rewards.total, [0.0, 1.175, 0.0])


def test_groups_are_consecutive_and_independent() -> None:
    # Group A: NLLs (1, 3); group B: (10, 30). z is scale-free: both groups get (sigma(1), sigma(-1)).
    passing = torch.ones(4, dtype=torch.bool)
    nll = torch.tensor([1.0, 3.0, 10.0, 30.0])
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    rewards = group_rewards(passing, nll, embeddings, 2, 0.35, 0.5)
    _close(rewards.alignment, [sigmoid(1.0), sigmoid(-1.0)] * 2)
    # Group A is orthogonal (distance 1 each); group B identical (0): no diversity leaks between groups.
    _close(rewards.diversity, [1.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        group_rewards(passing, nll, embeddings, 3, 0.35, 0.5)


class CountingScorer:
    """Stands in for the backbone: gate = "right" in the text, NLL = length, embedding = one-hot of the length."""

    def __init__(self) -> None:
        self.calls = 0

    def score(self, problems, answers, rewrites, group_size, alignment_weight, diversity_weight) -> GroupRewards:
        self.calls += 1
        passing = torch.tensor(["right" in text for text in rewrites])
        nll = torch.tensor([float(len(text)) for text in rewrites])
        embeddings = torch.nn.functional.one_hot(torch.tensor([len(t) % 4 for t in rewrites]), 4).float()
        return group_rewards(passing, nll, embeddings, group_size, alignment_weight, diversity_weight)


def test_trl_reward_functions_score_each_batch_once_and_sum_to_the_total() -> None:
    scorer = CountingScorer()
    functions = GroupRewardFunctions(scorer, RLAgentConfig(group_size=2))
    batch = {
        "prompts": ["p1", "p1", "p2", "p2"],
        "completions": ["right a", "wrong", "right", "right bb"],
        "problem": ["q1", "q1", "q2", "q2"],
        "answer": ["1", "1", "2", "2"],
    }
    # TRL calls each reward function with the whole batch and sums them with the weights.
    terms = [torch.tensor(function(**batch, trainer_state=None)) for function in functions.functions]
    assert [function.__name__ for function in functions.functions] == ["gate", "alignment", "diversity"]
    assert scorer.calls == 1
    summed = sum(weight * term for weight, term in zip(functions.weights, terms, strict=True))
    expected = scorer.score(batch["problem"], batch["answer"], batch["completions"], 2, 0.35, 0.5).total
    torch.testing.assert_close(summed, expected)
    assert summed[1].item() == 0.0
    with pytest.raises(RuntimeError, match="not made of groups of 2"):
        functions.rewards(["p1", "p2", "p2", "p1"], ["a", "b", "c", "d"], ["q"] * 4, ["1"] * 4)


class ListVerifier:
    """Correct exactly where the response is in ``right``."""

    def __init__(self, right: set[str]):
        self.right = right

    def verify(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        return [Verdict(response in self.right, None) for response in responses]


@pytest.fixture(scope="module")
def scorer(tiny_model_path: str, tiny_tokenizer) -> RewardScorer:
    return RewardScorer(tiny_model_path, "float32", tiny_tokenizer, ListVerifier({"x = 4, so 4", "4"}), batch_size=2)


def test_scorer_nll_matches_an_unbatched_forward(scorer: RewardScorer, tiny_tokenizer) -> None:
    problems = ["What is 2+2?", "What is 2+2? Think carefully about it.", "2+2?"]
    rewrites = ["x = 4, so 4", "4", "two plus two is four, the answer is 4"]
    nll, embeddings = scorer.nll_and_embeddings(problems, rewrites)
    for row, (problem, rewrite) in enumerate(zip(problems, rewrites, strict=True)):
        prefix = tiny_tokenizer(f"Problem: {problem}\nAnswer: ", add_special_tokens=False)["input_ids"]
        body = tiny_tokenizer(rewrite, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            output = scorer.model(torch.tensor([prefix + body]), output_hidden_states=True)
        logits = output.logits[0, len(prefix) - 1 : -1]
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor(body))
        assert nll[row].item() == pytest.approx(expected.item(), abs=1e-5)
        hidden = output.hidden_states[-1][0, len(prefix) :].mean(dim=0)
        torch.testing.assert_close(embeddings[row], hidden, atol=1e-5, rtol=1e-4)


def test_scorer_rewards_a_group(scorer: RewardScorer) -> None:
    rewrites = ["x = 4, so 4", "x = 4, so 4", "wrong", "4"]
    rewards = scorer.score(["What is 2+2?"] * 4, ["4"] * 4, rewrites, 4, 0.35, 0.5)
    _close(rewards.gate, [1.0, 1.0, 0.0, 1.0])
    assert rewards.total[2].item() == 0.0
    # The two identical rewrites add nothing to each other: their marginal diversity is equal, and the
    # distinct one contributes more than either.
    assert rewards.diversity[0].item() == pytest.approx(rewards.diversity[1].item(), abs=1e-6)
    assert rewards.diversity[3] > rewards.diversity[0]
    assert torch.isfinite(rewards.total).all()


def test_validity_judge_compares_yes_with_no_and_can_only_close_the_gate(tiny_model_path: str, tiny_tokenizer) -> None:
    judge = RewardScorer(
        tiny_model_path, "float32", tiny_tokenizer, ListVerifier({"x = 4, so 4", "4"}), 2, use_validity_judge=True
    )
    problems = ["What is 2+2?", "What is 2+2? Be brief.", "2+2?"]
    rewrites = ["x = 4, so 4", "4", "wrong"]
    valid = judge.judge_valid(problems, rewrites)
    for problem, rewrite, verdict in zip(problems, rewrites, valid, strict=True):
        prompt = (
            f"Problem: {problem}\nSolution: {rewrite}\n"
            "Is the reasoning in this solution valid? Answer YES or NO.\nAnswer:"
        )
        with torch.no_grad():
            logits = judge.model(torch.tensor([tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]])).logits
        yes, no = (tiny_tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" YES", " NO"))
        assert verdict == bool(logits[0, -1, yes] > logits[0, -1, no])
    gate = judge.score(problems, ["4"] * 3, rewrites, 3, 0.35, 0.5).gate
    # The judge only sees rewrites whose answer matched; it can close the gate, never open it.
    _close(gate, [float(valid[0]), float(valid[1]), 0.0])
