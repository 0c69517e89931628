"""Rewards of the RL rewriting agent (DESIGN.md §1), computed per group of rewrites of one problem.

As the paper's released reward function computes them (``verl/train/my_reward.py`` of its code): the
pure functions take one group: a boolean ``passing`` mask (the gate), per-token NLLs and embeddings, all
of shape [G] or [G, H]. Rewrites that fail the gate get exactly 0 from every term, and the statistics
that couple the members of a group (the standardisation of the NLL, the pairwise distances) are taken
over the passing rewrites only:

- gate: 1 when the rewrite's final answer matches the gold answer (and, optionally, the frozen
  backbone judges its reasoning valid), else 0. The released code compares the boxed strings
  exactly; here the verifier decides (``1/2`` matches ``0.5``);
- alignment: sigma(-z), z = (nll - mean) / (std + 2e-6) over the passing rewrites (population std; the
  released code's sigma + eps, then + eps again). A lone passing rewrite, or identical NLLs, get z = 0
  (alignment 1/2);
- diversity: max(0, D(S) - D(S minus i)), D(S) the mean over the unordered pairs of the passing set S
  of the cosine distance d = (1 - cos) / 2, in [0, 1], and D = 0 for fewer than two rewrites. So the
  diversity term is in [0, 1] and a rewrite is never penalised for lying between the others;
- total: gate + gate * (alignment_weight * alignment + diversity_weight * diversity), never below the gate.

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
from mindgap.models.loading import ModelSource, load_causal_lm
from mindgap.prompts import VALIDITY_NO, VALIDITY_YES, alignment_scaffold, validity_judge_prompt
from mindgap.rewriting.stages import BatchVerifier

# The released code's epsilon, added twice to the standard deviation (sigma = std + eps, z = (x - mu) / (sigma + eps)).
_EPS = 1e-6


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
    z = (values - values.mean()) / (values.std(unbiased=False) + 2 * _EPS)
    rewards[passing] = torch.sigmoid(-z)
    return rewards


def mean_pairwise_cosine_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """Scalar: mean of (1 - cos) / 2 over the unordered pairs of the rows; 0 for fewer than two rows."""
    count = embeddings.shape[0]
    if count < 2:
        return embeddings.new_zeros((), dtype=torch.float32)
    unit = F.normalize(embeddings.float(), dim=-1)
    distances = (1 - unit @ unit.T) / 2
    pairs = torch.triu_indices(count, count, offset=1)
    return distances[pairs[0], pairs[1]].mean()


def diversity_rewards(embeddings: torch.Tensor, passing: torch.Tensor) -> torch.Tensor:
    """[G]: each passing rewrite's marginal contribution max(0, D(S) - D(S minus i)) to the passing set's diversity."""
    passing = passing.bool()
    rewards = torch.zeros(embeddings.shape[0], dtype=torch.float32)
    indices = passing.nonzero().flatten().tolist()
    whole = mean_pairwise_cosine_distance(embeddings[passing])
    for position, index in enumerate(indices):
        others = indices[:position] + indices[position + 1 :]
        rewards[index] = (whole - mean_pairwise_cosine_distance(embeddings[others])).clamp(min=0)
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

    Tokenised as the released code does, with the tokenizer's own special tokens (a BOS for Llama-family
    models, none for Qwen). The NLL of a rewrite is its mean per-token NLL after ALIGNMENT_SCAFFOLD(question),
    scaffold and rewrite tokenised as one string and the rewrite's tokens being those past the scaffold's
    own tokenisation. Its embedding is the mean of the last hidden states over the rewrite tokenised alone.
    Both are computed for the rewrites that pass the gate only: the others' terms are 0 anyway. Without a
    verifier only ``nll_and_embeddings`` works (the pipeline's report measures its training sets so).
    """

    def __init__(
        self,
        model: ModelSource | str,
        dtype: str,
        tokenizer: PreTrainedTokenizerBase,
        verifier: BatchVerifier | None,
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
        if self.verifier is None:
            raise ValueError("RewardScorer.score needs the verifier of the gate; this scorer was built without one")
        verdicts = self.verifier.verify(list(rewrites), list(answers))
        correct = [verdict.correct and bool(text.strip()) for verdict, text in zip(verdicts, rewrites, strict=True)]
        valid = None
        if self.use_validity_judge:
            valid = [False] * len(rewrites)
            checked = [i for i, ok in enumerate(correct) if ok]
            judged = self.judge_valid(
                [problems[i] for i in checked], [answers[i] for i in checked], [rewrites[i] for i in checked]
            )
            for i, verdict in zip(checked, judged, strict=True):
                valid[i] = verdict
        passing = gate_rewards(correct, valid).bool()
        nll = torch.zeros(len(rewrites))
        embeddings = torch.zeros(len(rewrites), self.model.config.hidden_size)
        indices = passing.nonzero().flatten().tolist()
        if indices:
            passing_nll, passing_embeddings = self.nll_and_embeddings(
                [problems[i] for i in indices], [rewrites[i] for i in indices]
            )
            nll[indices], embeddings[indices] = passing_nll, passing_embeddings
        return group_rewards(passing, nll, embeddings, group_size, alignment_weight, diversity_weight)

    @torch.no_grad()
    def nll_and_embeddings(self, problems: Sequence[str], rewrites: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[N] mean per-token NLL of each rewrite given only its question, and [N, H] its mean-pooled embedding."""
        nlls, embeddings = [], []
        for start in range(0, len(rewrites), self.batch_size):
            batch_problems = problems[start : start + self.batch_size]
            batch_rewrites = rewrites[start : start + self.batch_size]
            nlls.append(self._nll_batch(batch_problems, batch_rewrites))
            embeddings.append(self._embedding_batch(batch_rewrites))
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

    def _nll_batch(self, problems: Sequence[str], rewrites: Sequence[str]) -> torch.Tensor:
        scaffolds = [alignment_scaffold(problem) for problem in problems]
        sequences = [
            self.tokenizer(scaffold + rewrite)["input_ids"]
            for scaffold, rewrite in zip(scaffolds, rewrites, strict=True)
        ]
        scaffold_lengths = [len(self.tokenizer(scaffold)["input_ids"]) for scaffold in scaffolds]
        lengths = [
            max(0, len(sequence) - scaffold) for sequence, scaffold in zip(sequences, scaffold_lengths, strict=True)
        ]
        keep = max(lengths) + 1
        # Only the rewrites' positions get vocabulary-sized logits: long questions never materialise them.
        logits = self.model(**self._left_padded(sequences), logits_to_keep=keep).logits.float()
        nll = torch.zeros(len(sequences))
        for row, (sequence, length) in enumerate(zip(sequences, lengths, strict=True)):
            if not length:
                continue
            # Logits at position t predict token t + 1: the rewrite's predictors end one before the last.
            predictors = logits[row, keep - 1 - length : keep - 1]
            targets = torch.tensor(sequence[len(sequence) - length :], device=self.device)
            nll[row] = F.cross_entropy(predictors, targets).cpu()
        return nll

    def _embedding_batch(self, rewrites: Sequence[str]) -> torch.Tensor:
        sequences = [self.tokenizer(rewrite)["input_ids"] for rewrite in rewrites]
        hidden = self.model.base_model(**self._left_padded([s or [self.tokenizer.pad_token_id] for s in sequences]))
        hidden = hidden.last_hidden_state.float()
        embeddings = torch.zeros(len(sequences), hidden.shape[-1])
        for row, sequence in enumerate(sequences):
            if sequence:
                embeddings[row] = hidden[row, -len(sequence) :].mean(dim=0).cpu()
        return embeddings

    @torch.no_grad()
    def judge_valid(self, problems: Sequence[str], golds: Sequence[str], rewrites: Sequence[str]) -> list[bool]:
        """Whether the frozen backbone finds each rewrite's reasoning valid: P(YES) >= P(NO) as the next token."""
        verdicts: list[bool] = []
        for start in range(0, len(rewrites), self.batch_size):
            items = zip(
                problems[start : start + self.batch_size],
                golds[start : start + self.batch_size],
                rewrites[start : start + self.batch_size],
                strict=True,
            )
            prompts = [self.tokenizer(validity_judge_prompt(p, g, r))["input_ids"] for p, g, r in items]
            logits = self.model(**self._left_padded(prompts), logits_to_keep=1).logits[:, -1].float()
            verdicts.extend((logits[:, self.yes_id] >= logits[:, self.no_id]).tolist())
        return verdicts
