"""The three rewriting stages over a list of problems, driven through a ``Generator`` and a ``Verifier``."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from mindgap.generation.base import Completion, Generator
from mindgap.generation.config import SamplingConfig
from mindgap.prompts import guided_prompt, standard_prompt
from mindgap.records import Attempts, GeneratorInfo, Problem, Record
from mindgap.rewriting.config import RewriteConfig
from mindgap.rewriting.copy_filter import copy_reason
from mindgap.rewriting.expert import shown_expert_solution
from mindgap.verification.verifier import Verdict

STAGES_OF = {
    # raw expert data
    "none": (),
    # only problems the model solves by itself; the rest are dropped (and counted)
    "self_only": ("self",),
    # self-alignment, then expert fallback
    "no_guided": ("self", "expert"),
    "mind_the_gap": ("self", "guided", "expert"),
}


class BatchVerifier(Protocol):
    def verify(self, responses: list[str], golds: list[str]) -> list[Verdict]: ...


@dataclass
class StageStats:
    """What one sampling stage did; sums over chunks with ``add``."""

    attempted: int = 0
    solved: int = 0
    sampled: int = 0
    correct: int = 0
    rounds: int = 0
    tokens_generated: int = 0
    # Tokens fixed-n sampling (every problem drawing all n samples) would have generated for the same
    # solved problems: each problem's mean response length times n.
    tokens_fixed_n: float = 0.0
    verifier_timeouts: int = 0
    # Correct responses cut off at max_tokens (finish reason "length"), rejected as targets.
    rejected_truncated: int = 0
    # Correct guided responses rejected by the copy filter, by reason.
    rejected_meta_phrase: int = 0
    rejected_shared_ngram: int = 0

    def add(self, other: StageStats) -> None:
        for item in dataclasses.fields(self):
            name = item.name
            combined = max if name == "rounds" else sum
            setattr(self, name, combined((getattr(self, name), getattr(other, name))))

    def as_dict(self) -> dict[str, float]:
        values = dataclasses.asdict(self)
        values["acceptance"] = self.solved / self.attempted if self.attempted else 0.0
        values["token_savings"] = 1 - self.tokens_generated / self.tokens_fixed_n if self.tokens_fixed_n else 0.0
        return values


@dataclass
class RewriteOutcome:
    records: list[Record]
    stages: dict[str, StageStats] = field(default_factory=dict)
    # Problems without a record (only under rewrite=self_only): id -> reason.
    dropped: dict[str, str] = field(default_factory=dict)


def round_seed(seed: int, stage: str, round_index: int) -> int:
    """Seed of one sampling round: a function of its coordinates only, so a resumed run draws the same."""
    digest = hashlib.sha256(f"{seed}/{stage}/{round_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Rewriter:
    """Runs the stages of ``config.strategy`` and returns the records to train on."""

    def __init__(
        self,
        config: RewriteConfig,
        generator: Generator | None,
        verifier: BatchVerifier | None,
        tokenizer: PreTrainedTokenizerBase | None,
        prompt_type: str,
    ):
        self.config = config
        self.generator = generator
        self.verifier = verifier
        self.tokenizer = tokenizer
        self.prompt_type = prompt_type

    def run(self, problems: list[Problem], seed: int) -> RewriteOutcome:
        stages = STAGES_OF[self.config.strategy]
        outcome = RewriteOutcome(records=[])
        attempts = {problem.id: Attempts() for problem in problems}
        kept: dict[str, list[Record]] = {problem.id: [] for problem in problems}
        unsolved = list(problems)
        for stage in ("self", "guided"):
            if stage in stages:
                unsolved = self._sample_stage(stage, unsolved, kept, attempts, outcome, seed)
        for problem in unsolved:
            if "expert" in stages or not stages:
                kept[problem.id].append(self._expert_record(problem, attempts[problem.id]))
            else:
                outcome.dropped[problem.id] = "not solved by the model (rewrite.strategy=self_only)"
        outcome.records = [record for problem in problems for record in kept[problem.id]]
        return outcome

    def _prompt(self, stage: str, problem: Problem) -> str:
        if stage == "self":
            return standard_prompt(problem.problem, self.prompt_type, self.tokenizer)
        return guided_prompt(problem.problem, shown_expert_solution(problem), self.prompt_type, self.tokenizer)

    def _sample_stage(
        self,
        stage: str,
        problems: list[Problem],
        kept: dict[str, list[Record]],
        attempts: dict[str, Attempts],
        outcome: RewriteOutcome,
        seed: int,
    ) -> list[Problem]:
        """Sample in rounds until each problem has enough correct responses or n; return the unsolved."""
        assert self.generator is not None and self.verifier is not None
        sampling: SamplingConfig = self.config.self_sampling if stage == "self" else self.config.guided_sampling
        stats = outcome.stages.setdefault(stage, StageStats())
        wanted = self.config.correct_wanted(sampling.n)
        per_round = self.config.samples_per_round or sampling.n
        prompts = {problem.id: self._prompt(stage, problem) for problem in problems}
        accepted: dict[str, list[Record]] = {problem.id: [] for problem in problems}
        tokens: Counter[str] = Counter()
        samples_drawn: Counter[str] = Counter()
        drawn = 0
        active = list(problems)
        while active and drawn < sampling.n:
            round_sampling = dataclasses.replace(sampling, n=min(per_round, sampling.n - drawn))
            seed_of_round = round_seed(seed, stage, stats.rounds)
            completions = self.generator.generate([prompts[p.id] for p in active], round_sampling, seed=seed_of_round)
            verdicts = iter(
                self.verifier.verify(
                    [sample.text for samples in completions for sample in samples],
                    [p.answer for p, samples in zip(active, completions, strict=True) for _ in samples],
                )
            )
            info = GeneratorInfo(
                backend=self.generator.backend,
                model=self.generator.fingerprint,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed_of_round,
            )
            for problem, samples in zip(active, completions, strict=True):
                attempt = attempts[problem.id]
                if stage == "self":
                    attempt.self_samples += len(samples)
                else:
                    attempt.guided_samples += len(samples)
                stats.sampled += len(samples)
                samples_drawn[problem.id] += len(samples)
                tokens[problem.id] += sum(len(sample.token_ids) for sample in samples)
                for sample in samples:
                    verdict = next(verdicts)
                    stats.verifier_timeouts += verdict.timed_out
                    if not verdict.correct or not sample.text.strip():
                        continue
                    stats.correct += 1
                    if sample.truncated:
                        stats.rejected_truncated += 1
                        continue
                    if stage == "guided" and self._is_copy(sample.text, problem, stats):
                        continue
                    record = self._model_record(problem, stage, prompts[problem.id], sample, info, attempt)
                    accepted[problem.id].append(record)
            drawn += round_sampling.n
            stats.rounds += 1
            active = [problem for problem in active if len(accepted[problem.id]) < wanted]

        unsolved = []
        for problem in problems:
            stats.attempted += 1
            samples_drawn = (
                attempts[problem.id].self_samples if stage == "self" else attempts[problem.id].guided_samples
            )
            stats.tokens_generated += tokens[problem.id]
            stats.tokens_fixed_n += tokens[problem.id] * sampling.n / samples_drawn
            if accepted[problem.id]:
                stats.solved += 1
                kept[problem.id].extend(accepted[problem.id][:wanted])
            else:
                unsolved.append(problem)
        return unsolved

    def _is_copy(self, response: str, problem: Problem, stats: StageStats) -> bool:
        reason = copy_reason(response, shown_expert_solution(problem), problem.problem, self.config.copy_filter)
        if reason is not None:
            setattr(stats, f"rejected_{reason}", getattr(stats, f"rejected_{reason}") + 1)
        return reason is not None

    def _model_record(
        self, problem: Problem, stage: str, prompt: str, sample: Completion, info: GeneratorInfo, attempts: Attempts
    ) -> Record:
        # ``attempts`` is shared and still growing; every record of a problem reports the final counts.
        return Record(
            id=problem.id,
            problem=problem.problem,
            answer=problem.answer,
            expert_solution=problem.expert_solution or "",
            source=stage,
            response=sample.text,
            response_token_ids=list(sample.token_ids),
            behavior_logprobs=list(sample.logprobs),
            behavior_prompt=prompt,
            generator=info,
            attempts=attempts,
        )

    def _expert_record(self, problem: Problem, attempts: Attempts) -> Record:
        return expert_record(problem, attempts, self.prompt_type, self.tokenizer)


def expert_record(
    problem: Problem, attempts: Attempts, prompt_type: str, tokenizer: PreTrainedTokenizerBase | None
) -> Record:
    """The fallback record: the expert solution normalised to the answer format, under the standard prompt."""
    assert problem.expert_solution is not None
    return Record(
        id=problem.id,
        problem=problem.problem,
        answer=problem.answer,
        expert_solution=problem.expert_solution,
        source="expert",
        response=shown_expert_solution(problem),
        response_token_ids=None,
        behavior_logprobs=None,
        behavior_prompt=standard_prompt(problem.problem, prompt_type, tokenizer),
        attempts=attempts,
    )
