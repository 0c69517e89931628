"""The RL rewriter's group-wise rewards against hand-computed groups, and the frozen-backbone scorer."""

from __future__ import annotations

import math

import pytest
import torch

from mindgap.prompts import validity_judge_prompt
from mindgap.rewriting.config import RLAgentConfig
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
from mindgap.verification.verifier import Verdict


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=0, atol=1e-6)


# The released code divides by std + 2 * 1e-6: a z of one standard deviation is 1 / (1 + 2e-6).
Z1 = 1 / (1 + 2e-6)


# Three rewrites; the middle one fails the gate. Embeddings: e1 = (1, 0), e2 = (0, 1), e3 = (0, 1).
PASSING = torch.tensor([True, False, True])
NLL = torch.tensor([1.0, 5.0, 3.0])
EMBEDDINGS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])


def test_gate_needs_the_answer_and_the_judge_when_given() -> None:
    _close(gate_rewards([True, False, True]), [1.0, 0.0, 1.0])
    _close(gate_rewards([True, False, True], judged_valid=[False, True, True]), [0.0, 0.0, 1.0])


def test_alignment_is_standardised_over_the_passing_rewrites_only() -> None:
    # Passing NLLs (1, 3): mean 2, population std 1, z = (-1, +1) / (1 + 2e-6): sigma(Z1) = 0.7310582,
    # sigma(-Z1) = 0.2689418. Had the failing 5.0 counted, the mean would be 3 and z_1 = -2 / sqrt(8/3) ~ -1.22
    # (sigma ~ 0.773).
    _close(alignment_rewards(NLL, PASSING), [0.7310582, 0.0, 0.2689418])
    _close(alignment_rewards(NLL, PASSING), [sigmoid(Z1), 0.0, sigmoid(-Z1)])
    # Lower NLL (more natural to the model) is rewarded more.
    assert alignment_rewards(NLL, PASSING)[0] > 0.5 > alignment_rewards(NLL, PASSING)[2]


def test_alignment_of_a_lone_or_uniform_passing_set_is_one_half_without_dividing_by_zero() -> None:
    # One passing rewrite: z = (x - x) / (0 + 2e-6) = 0, sigma(0) = 1/2.
    _close(alignment_rewards(NLL, torch.tensor([False, True, False])), [0.0, 0.5, 0.0])
    # Identical NLLs: std 0 again.
    _close(alignment_rewards(torch.tensor([2.0, 2.0, 2.0]), torch.ones(3, dtype=torch.bool)), [0.5, 0.5, 0.5])
    # Nobody passing: all 0.
    _close(alignment_rewards(NLL, torch.zeros(3, dtype=torch.bool)), [0.0, 0.0, 0.0])


def test_mean_pairwise_cosine_distance() -> None:
    # e1 = (1, 0), e2 = (0, 1), e3 = (-1, 0): distances (1 - cos) / 2 are d12 = (1 - 0) / 2 = 1/2,
    # d13 = (1 - (-1)) / 2 = 1, d23 = 1/2; mean (1/2 + 1 + 1/2) / 3 = 2/3. Opposite rewrites are at distance 1.
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine_distance(three).item() == pytest.approx(2 / 3)
    # Cosine ignores the norm: (2, 0) is as far from (0, 3) as (1, 0) from (0, 1).
    assert mean_pairwise_cosine_distance(torch.tensor([[2.0, 0.0], [0.0, 3.0]])).item() == pytest.approx(0.5)
    # D of fewer than two rewrites is 0 by definition.
    assert mean_pairwise_cosine_distance(three[:1]).item() == 0.0
    assert mean_pairwise_cosine_distance(three[:0]).item() == 0.0


def test_diversity_is_the_marginal_contribution_to_the_passing_set_floored_at_zero() -> None:
    # D(S) = 2/3 (above). Without e1: D = d23 = 1/2, so r1 = 2/3 - 1/2 = 1/6; without e2: D = d13 = 1, so
    # D(S) - D = -1/3, floored at 0 (e2 lies between the others; it is not penalised); without e3: D = d12 = 1/2,
    # r3 = 1/6.
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    _close(diversity_rewards(three, torch.ones(3, dtype=torch.bool)), [1 / 6, 0.0, 1 / 6])
    # Only passing rewrites count: with e2 failing, S = {e1, e3}, D(S) = d13 = 1 and D of one rewrite is 0.
    _close(diversity_rewards(three, torch.tensor([True, False, True])), [1.0, 0.0, 1.0])


def test_identical_rewrites_have_zero_diversity() -> None:
    same = torch.tensor([[0.3, -1.2, 2.0]] * 4)
    _close(diversity_rewards(same, torch.ones(4, dtype=torch.bool)), [0.0] * 4)


def test_a_lone_passing_rewrite_has_zero_diversity() -> None:
    # D({i}) = D({}) = 0.
    _close(diversity_rewards(EMBEDDINGS, torch.tensor([False, False, True])), [0.0, 0.0, 0.0])


def test_total_reward_of_a_hand_computed_group() -> None:
    # r = gate + gate * (0.35 * alignment + 0.5 * diversity). Passing S = {e1, e3} = {(1, 0), (0, 1)}:
    # D(S) = (1 - 0) / 2 = 1/2 and D of one rewrite is 0, so both get diversity 1/2; alignment sigma(Z1) = 0.7310582,
    # sigma(-Z1) = 0.2689418 (above). r1 = 1 + 0.35 * 0.7310582 + 0.5 * 0.5 = 1.5058704, r3 = 1.3441296; the failing
    # rewrite gets exactly 0.
    rewards = group_rewards(PASSING, NLL, EMBEDDINGS, 3, 0.35, 0.5)
    _close(rewards.gate, [1.0, 0.0, 1.0])
    _close(rewards.diversity, [0.5, 0.0, 0.5])
    _close(rewards.total, [1.5058704, 0.0, 1.3441296])
    assert rewards.total[1].item() == 0.0
    # The weights are parameters.
    _close(total_rewards(rewards.gate, rewards.alignment, rewards.diversity, 0.0, 1.0), [1.5, 0.0, 1.5])


def test_rewards_of_passing_rewrites_never_fall_below_the_gate() -> None:
    # e2 between e1 and e3 (the diversity test above): unfloored, its bonus would be 0.5 * (-1/3) and, with the
    # old distance 1 - cos, 0.5 * (-2/3). Floored, r2 = 1 + 0.35 * alignment >= 1.
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    rewards = group_rewards(torch.ones(3, dtype=torch.bool), torch.tensor([1.0, 2.0, 3.0]), three, 3, 0.35, 0.5)
    assert (rewards.total >= rewards.gate).all()
    # NLLs (1, 2, 3): z = (-1, 0, 1) * sqrt(3/2) / (1 + 2e-6 * sqrt(3/2)); r2 = 1 + 0.35 * sigma(0) = 1.175.
    assert rewards.total[1].item() == pytest.approx(1.175, abs=1e-6)


def test_a_group_with_one_passing_rewrite() -> None:
    # Alignment 1/2, diversity 0: r = 1 + 0.35 / 2 = 1.175; finite everywhere.
    rewards = group_rewards(torch.tensor([False, True, False]), NLL, EMBEDDINGS, 3, 0.35, 0.5)
    _close(rewards.total, [0.0, 1.175, 0.0])


def test_groups_are_consecutive_and_independent() -> None:
    # Group A: NLLs (1, 3); group B: (10, 30). z is scale-free (up to the 2e-6 in its denominator): both groups
    # get (sigma(Z1), sigma(-Z1)).
    passing = torch.ones(4, dtype=torch.bool)
    nll = torch.tensor([1.0, 3.0, 10.0, 30.0])
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    rewards = group_rewards(passing, nll, embeddings, 2, 0.35, 0.5)
    _close(rewards.alignment, [sigmoid(Z1), sigmoid(-Z1)] * 2)
    # Group A is orthogonal (distance 1/2 each); group B identical (0): no diversity leaks between groups.
    _close(rewards.diversity, [0.5, 0.5, 0.0, 0.0])
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


def test_scorer_nll_and_embedding_as_the_released_code_computes_them(scorer: RewardScorer, tiny_tokenizer) -> None:
    problems = ["What is 2+2?", "What is 2+2? Think carefully about it.", "2+2?"]
    rewrites = ["x = 4, so 4", "4", "two plus two is four, the answer is 4"]
    nll, embeddings = scorer.nll_and_embeddings(problems, rewrites)
    for row, (problem, rewrite) in enumerate(zip(problems, rewrites, strict=True)):
        # Scaffold and rewrite tokenised as one string; the rewrite's tokens are those past the scaffold's length.
        prefix = f"Problem:\n{problem}\n\nAnswer:\n"
        full = tiny_tokenizer(prefix + rewrite)["input_ids"]
        start = len(tiny_tokenizer(prefix)["input_ids"])
        with torch.no_grad():
            logits = scorer.model(torch.tensor([full])).logits[0, start - 1 : -1]
            alone = tiny_tokenizer(rewrite)["input_ids"]
            hidden = scorer.model(torch.tensor([alone]), output_hidden_states=True).hidden_states[-1][0]
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor(full[start:]))
        assert nll[row].item() == pytest.approx(expected.item(), abs=1e-5)
        # The embedding is of the rewrite alone, not of the rewrite in the context of its question.
        torch.testing.assert_close(embeddings[row], hidden.mean(dim=0), atol=1e-5, rtol=1e-4)


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
    valid = judge.judge_valid(problems, ["4"] * 3, rewrites)
    for problem, rewrite, verdict in zip(problems, rewrites, valid, strict=True):
        prompt = validity_judge_prompt(problem, "4", rewrite)
        assert f"Reference final answer:\n4\n\nCandidate solution:\n{rewrite}\n\nDecision:" in prompt
        with torch.no_grad():
            logits = judge.model(torch.tensor([tiny_tokenizer(prompt)["input_ids"]])).logits
        yes, no = (tiny_tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (" YES", " NO"))
        # A tie passes, as in the released code (p_yes >= p_no).
        assert verdict == bool(logits[0, -1, yes] >= logits[0, -1, no])
    gate = judge.score(problems, ["4"] * 3, rewrites, 3, 0.35, 0.5).gate
    # The judge only sees rewrites whose answer matched; it can close the gate, never open it.
    _close(gate, [float(valid[0]), float(valid[1]), 0.0])
