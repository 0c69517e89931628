"""Rewards of the RL rewriting agent (DESIGN.md §1), computed per group of rewrites of one problem.

The pure functions take one group: a boolean ``passing`` mask (the gate), per-token NLLs and
embeddings, all of shape [G] or [G, H]. Rewrites that fail the gate get exactly 0 from every
term, and the statistics that couple the members of a group (the standardisation of the NLL,
the pairwise distances) are taken over the passing rewrites only:

- gate: 1 when the rewrite's final answer matches the gold answer (and, optionally, the frozen
  backbone judges its reasoning valid), else 0;
- alignment: sigma(-z), z = (nll - mean) / std over the passing rewrites (population std). With
  fewer than two passing rewrites, or identical NLLs, std is 0 and z is taken as 0 (alignment 1/2):
  nothing in the group to be more or less aligned than;
- diversity: D(S) - D(S minus i), D(S) the mean cosine distance over the unordered pairs of the
  passing set S, with D = 0 for a set of fewer than two rewrites;
- total: gate + gate * (alignment_weight * alignment + diversity_weight * diversity).

``RewardScorer`` computes the inputs with the frozen backbone (batched, no gradient) and the
verifier, and applies the pure functions group by group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from mindgap.errors import ConfigError
from mindgap.models import ModelSource, load_causal_lm
from mindgap.prompts import VALIDITY_NO, VALIDITY_YES, alignment_scaffold, validity_judge_prompt
from mindgap.rewriting.stages import BatchVerifier

# Below this the passing NLLs count as identical: z would only amplify rounding noise.
_STD_FLOOR = 1e-8


def gate_rewards(answer_correct: Sequence[bool], judged_valid: Sequence[bool] | None = None) -> torch.Tensor:
    """[G] float: 1 where the answer matches (and the judge, when given, says valid), else 0."""
    passing = torch.tensor(list(answer_correct), dtype=torch.bool)
    if judged_valid is not None:
        passing &= torch.tensor(list(judged_valid), dtype=torch.bool)
    return passing.float()


def alignment_rewards(nll: torch.Tensor, passing: torch.Tensor) -> torch.Tensor:
    """[G]: sigma(-z) of the per-token NLL standardised over the passing rewrites; 0 where not passing."""
    passing = passing.bool()
    rewards = torch.zeros_like(nll, dtype=torch.float32)
    if not passing.any():
        return rewards
    values = nll[passing].float()
    std = values.std(unbiased=False)
    z = (values - values.mean()) / std if std > _STD_FLOOR else torch.zeros_like(values)
    rewards[passing] = torch.sigmoid(-z)
    return rewards


def mean_pairwise_cosine_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """Scalar: mean of 1 - cos over the unordered pairs of the rows; 0 for fewer than two rows."""
    count = embeddings.shape[0]
    if count < 2:
        return embeddings.new_zeros((), dtype=torch.float32)
    unit = F.normalize(embeddings.float(), dim=-1)
    distances = 1 - unit @ unit.T
    pairs = torch.triu_indices(count, count, offset=1)
    return distances[pairs[0], pairs[1]].mean()


def diversity_rewards(embeddings: torch.Tensor, passing: torch.Tensor) -> torch.Tensor:
    """[G]: each passing rewrite's marginal contribution D(S) - D(S minus i) to the passing set's diversity."""
    passing = passing.bool()
    rewards = torch.zeros(embeddings.shape[0], dtype=torch.float32)
    indices = passing.nonzero().flatten().tolist()
    whole = mean_pairwise_cosine_distance(embeddings[passing])
    for position, index in enumerate(indices):
        others = indices[:position] + indices[position + 1 :]
        rewards[index] = whole - mean_pairwise_cosine_distance(embeddings[others])
    return rewards


def total_rewards(
    gate: torch.Tensor,
    alignment: torch.Tensor,
    diversity: torch.Tensor,
    alignment_weight: float,
    diversity_weight: float,
) -> torch.Tensor:
    """[G]: gate + gate * (alignment_weight * alignment + diversity_weight * diversity)."""
    return gate + gate * (alignment_weight * alignment + diversity_weight * diversity)


@dataclass
class GroupRewards:
    """Each reward component of a batch of rewrites, [N] each, groups of consecutive rewrites."""

    gate: torch.Tensor
    alignment: torch.Tensor
    diversity: torch.Tensor
    total: torch.Tensor


def group_rewards(
    passing: torch.Tensor,
    nll: torch.Tensor,
    embeddings: torch.Tensor,
    group_size: int,
    alignment_weight: float,
    diversity_weight: float,
) -> GroupRewards:
    """The rewards of N = groups * group_size rewrites; rewrites i*G .. (i+1)*G - 1 are one problem's group."""
    if passing.shape[0] % group_size:
        raise ValueError(f"{passing.shape[0]} rewrites do not split into groups of {group_size}")
    gate = passing.float()
    alignment = torch.cat(
        [alignment_rewards(n, p) for n, p in zip(nll.split(group_size), passing.split(group_size), strict=True)]
    )
    diversity = torch.cat(
        [diversity_rewards(e, p) for e, p in zip(embeddings.split(group_size), passing.split(group_size), strict=True)]
    )
    total = total_rewards(gate, alignment, diversity, alignment_weight, diversity_weight)
    return GroupRewards(gate=gate, alignment=alignment, diversity=diversity, total=total)


class RewardScorer:
    """The rewards' inputs from the frozen backbone and the verifier, then ``group_rewards``.

    For each rewrite, one forward pass of the frozen backbone over ALIGNMENT_SCAFFOLD(question) +
    rewrite gives both its per-token NLL and its embedding (the last hidden states of the rewrite's
    tokens, mean-pooled; the question prefix is the same for every member of a group). The rewrite
    is tokenised as text, without an end-of-sequence token.
    """

    def __init__(
        self,
        model: ModelSource | str,
        dtype: str,
        tokenizer: PreTrainedTokenizerBase,
        verifier: BatchVerifier,
        batch_size: int,
        use_validity_judge: bool = False,
        device: str | None = None,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_causal_lm(model, dtype=dtype).to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.verifier = verifier
        self.batch_size = batch_size
        self.use_validity_judge = use_validity_judge
        self.yes_id, self.no_id = (
            tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in (VALIDITY_YES, VALIDITY_NO)
        )
        if use_validity_judge and self.yes_id == self.no_id:
            raise ConfigError(
                f"rewrite.rl_agent.use_validity_judge: {VALIDITY_YES!r} and {VALIDITY_NO!r} start with the same token"
            )

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def score(
        self,
        problems: Sequence[str],
        answers: Sequence[str],
        rewrites: Sequence[str],
        group_size: int,
        alignment_weight: float,
        diversity_weight: float,
    ) -> GroupRewards:
        """Rewards of ``rewrites`` (consecutive groups of ``group_size``), with their problems and gold answers."""
        verdicts = self.verifier.verify(list(rewrites), list(answers))
        correct = [verdict.correct and bool(text.strip()) for verdict, text in zip(verdicts, rewrites, strict=True)]
        valid = None
        if self.use_validity_judge:
            valid = [False] * len(rewrites)
            checked = [i for i, ok in enumerate(correct) if ok]
            for i, verdict in zip(
                checked, self.judge_valid([problems[i] for i in checked], [rewrites[i] for i in checked]), strict=True
            ):
                valid[i] = verdict
        passing = gate_rewards(correct, valid).bool()
        nll, embeddings = self.nll_and_embeddings(problems, rewrites)
        return group_rewards(passing, nll, embeddings, group_size, alignment_weight, diversity_weight)

    @torch.no_grad()
    def nll_and_embeddings(self, problems: Sequence[str], rewrites: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] mean per-token NLL of each rewrite given only its question, and [N, H] its mean-pooled embedding."""
        nlls, embeddings = [], []
        for start in range(0, len(rewrites), self.batch_size):
            batch_nll, batch_embeddings = self._score_batch(
                problems[start : start + self.batch_size], rewrites[start : start + self.batch_size]
            )
            nlls.append(batch_nll)
            embeddings.append(batch_embeddings)
        return torch.cat(nlls), torch.cat(embeddings)

    def _left_padded(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        """Left padding puts every sequence's end at the last position; positions restart at each start."""
        width = max(len(sequence) for sequence in sequences)
        input_ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, sequence in enumerate(sequences):
            input_ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[row, width - len(sequence) :] = 1
        position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)
        return {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention_mask.to(self.device),
            "position_ids": position_ids.to(self.device),
        }

    def _score_batch(self, problems: Sequence[str], rewrites: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prefixes = [self.tokenizer(alignment_scaffold(p), add_special_tokens=False)["input_ids"] for p in problems]
        bodies = [self.tokenizer(r, add_special_tokens=False)["input_ids"] for r in rewrites]
        inputs = self._left_padded([prefix + body for prefix, body in zip(prefixes, bodies, strict=True)])
        # The decoder's last hidden states serve both outputs; the vocabulary projection is applied to the
        # rewrites' positions only, so long questions never materialise vocabulary-sized rows.
        hidden = self.model.base_model(**inputs).last_hidden_state
        keep = max(len(body) for body in bodies) + 1
        logits = self.model.get_output_embeddings()(hidden[:, -keep:]).float()
        nll = torch.zeros(len(bodies))
        embeddings = torch.zeros(len(bodies), hidden.shape[-1])
        for row, body in enumerate(bodies):
            if not body:
                continue
            # Logits at position t predict token t + 1: the rewrite's predictors end one before the last.
            predictors = logits[row, keep - 1 - len(body) : keep - 1]
            nll[row] = F.cross_entropy(predictors, torch.tensor(body, device=self.device)).cpu()
            embeddings[row] = hidden[row, -len(body) :].float().mean(dim=0).cpu()
        return nll, embeddings

    @torch.no_grad()
    def judge_valid(self, problems: Sequence[str], rewrites: Sequence[str]) -> list[bool]:
        """Whether the frozen backbone finds each rewrite's reasoning valid: P(YES) > P(NO) as the next token."""
        verdicts: list[bool] = []
        for start in range(0, len(rewrites), self.batch_size):
            pairs = zip(
                problems[start : start + self.batch_size], rewrites[start : start + self.batch_size], strict=True
            )
            prompts = [
                self.tokenizer(validity_judge_prompt(p, r), add_special_tokens=False)["input_ids"] for p, r in pairs
            ]
            logits = self.model(**self._left_padded(prompts), logits_to_keep=1).logits[:, -1].float()
            verdicts.extend((logits[:, self.yes_id] > logits[:, self.no_id]).tolist())
        return verdicts
