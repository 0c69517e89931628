"""The three rewriting stages over a list of problems, driven through a ``Generator``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from transformers import PreTrainedTokenizerBase

from mindgap.config import RewriteConfig, SamplingConfig
from mindgap.generation import Completion, Generator
from mindgap.prompts import guided_prompt, standard_prompt
from mindgap.records import Attempts, GeneratorInfo, Problem, Record
from mindgap.rewriting.expert import normalize_expert_solution
from mindgap.verify import is_correct

STAGES_OF = {
    # raw expert data
    "none": (),
    # only problems the model solves by itself; the rest are dropped (and counted)
    "self_only": ("self",),
    # self-alignment, then expert fallback
    "no_guided": ("self", "expert"),
    "mind_the_gap": ("self", "guided", "expert"),
}


@dataclass
class StageStats:
    """What one stage did: problems attempted and solved, responses sampled and correct, tokens."""

    attempted: int = 0
    solved: int = 0
    sampled: int = 0
    correct: int = 0
    tokens_generated: int = 0

    def as_dict(self) -> dict[str, float]:
        return {
            "attempted": self.attempted,
            "solved": self.solved,
            "sampled": self.sampled,
            "correct": self.correct,
            "tokens_generated": self.tokens_generated,
            "acceptance": self.solved / self.attempted if self.attempted else 0.0,
        }


@dataclass
class RewriteOutcome:
    records: list[Record]
    stages: dict[str, StageStats] = field(default_factory=dict)
    # Problems without a record (only under rewrite=self_only): id -> reason.
    dropped: dict[str, str] = field(default_factory=dict)

    def counts_per_source(self) -> dict[str, int]:
        return dict(Counter(record.source for record in self.records))


class Rewriter:
    """Runs the stages of ``config.strategy`` and returns the records to train on."""

    def __init__(
        self,
        config: RewriteConfig,
        generator: Generator | None,
        tokenizer: PreTrainedTokenizerBase | None,
        prompt_type: str,
        seed: int,
    ):
        self.config = config
        self.generator = generator
        self.tokenizer = tokenizer
        self.prompt_type = prompt_type
        self.seed = seed

    def run(self, problems: list[Problem]) -> RewriteOutcome:
        stages = STAGES_OF[self.config.strategy]
        outcome = RewriteOutcome(records=[])
        attempts = {problem.id: Attempts() for problem in problems}
        kept: dict[str, list[Record]] = {problem.id: [] for problem in problems}
        unsolved = list(problems)
        if "self" in stages:
            unsolved = self._sample_stage("self", unsolved, kept, attempts, outcome)
        if "guided" in stages:
            unsolved = self._sample_stage("guided", unsolved, kept, attempts, outcome)
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
        assert problem.expert_solution is not None
        return guided_prompt(problem.problem, problem.expert_solution, self.prompt_type, self.tokenizer)

    def _sample_stage(
        self,
        stage: str,
        problems: list[Problem],
        kept: dict[str, list[Record]],
        attempts: dict[str, Attempts],
        outcome: RewriteOutcome,
    ) -> list[Problem]:
        """Sample for every problem, keep the correct responses, return the problems left unsolved."""
        assert self.generator is not None
        sampling: SamplingConfig = self.config.self_sampling if stage == "self" else self.config.guided_sampling
        stats = outcome.stages.setdefault(stage, StageStats())
        if not problems:
            return []
        prompts = [self._prompt(stage, problem) for problem in problems]
        stage_seed = self.seed * 1_000_003 + (0 if stage == "self" else 1)
        completions = self.generator.generate(prompts, sampling, seed=stage_seed)
        info = GeneratorInfo(
            backend=self.generator.backend,
            model=self.generator.fingerprint,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=stage_seed,
        )
        unsolved = []
        for problem, prompt, samples in zip(problems, prompts, completions, strict=True):
            stats.attempted += 1
            stats.sampled += len(samples)
            stats.tokens_generated += sum(len(sample.token_ids) for sample in samples)
            if stage == "self":
                attempts[problem.id].self_samples += len(samples)
            else:
                attempts[problem.id].guided_samples += len(samples)
            correct = [sample for sample in samples if sample.text.strip() and is_correct(sample.text, problem.answer)]
            stats.correct += len(correct)
            if not correct:
                unsolved.append(problem)
                continue
            stats.solved += 1
            chosen = correct[:1] if self.config.keep == "first" else correct
            kept[problem.id].extend(
                self._model_record(problem, stage, prompt, sample, info, attempts[problem.id]) for sample in chosen
            )
        return unsolved

    def _model_record(
        self, problem: Problem, stage: str, prompt: str, sample: Completion, info: GeneratorInfo, attempts: Attempts
    ) -> Record:
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
        assert problem.expert_solution is not None
        return Record(
            id=problem.id,
            problem=problem.problem,
            answer=problem.answer,
            expert_solution=problem.expert_solution,
            source="expert",
            response=normalize_expert_solution(problem.expert_solution, problem.answer),
            response_token_ids=None,
            behavior_logprobs=None,
            behavior_prompt=self._prompt("self", problem),
            attempts=attempts,
        )
