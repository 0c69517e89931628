"""Generate, verify, fall back: one rewrite of each expert solution, kept when it still holds (DESIGN.md §1).

The strategies ``sdft`` (the backbone, prompted) and ``rl_agent`` (the backbone plus the
GRPO-trained LoRA adapter, merged) share this pass; they differ in the generator's weights and
in whether a rewrite that mentions the reference is rejected (SDFT's meta-phrase filter).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from mindgap.generation.base import Generator
from mindgap.generation.config import SamplingConfig
from mindgap.prompts import rewrite_prompt
from mindgap.records import Attempts, GeneratorInfo, Problem, Record
from mindgap.rewriting.copy_filter import mentions_reference
from mindgap.rewriting.expert import shown_expert_solution
from mindgap.rewriting.stages import BatchVerifier, RewriteOutcome, StageStats, expert_record, round_seed

STAGE = "rewrite"


def reference_rewrite_prompt(
    problem: Problem, prompt_type: str, tokenizer: PreTrainedTokenizerBase | None = None
) -> str:
    """The rewrite prompt of ``problem``, showing its expert solution as the fallback record would hold it."""
    return rewrite_prompt(problem.problem, shown_expert_solution(problem), prompt_type, tokenizer)


class ReferenceRewriter:
    """One rewrite per problem under the rewrite prompt: a ``rewritten`` record when it passes, else ``expert``.

    A rewrite passes when its final answer matches the gold one, it stopped before max_tokens and,
    with ``meta_phrases``, it contains none of them as a whole expression. Long runs of words
    shared with the expert solution are allowed: a rewrite of a solution may keep its phrasing where
    it is already natural.
    """

    def __init__(
        self,
        sampling: SamplingConfig,
        meta_phrases: list[str] | None,
        generator: Generator,
        verifier: BatchVerifier,
        tokenizer: PreTrainedTokenizerBase | None,
        prompt_type: str,
    ):
        if sampling.n != 1:
            raise ValueError(f"one rewrite per problem, not n={sampling.n}")
        self.sampling = sampling
        # Only the meta-phrase test of the copy filter applies to rewrites.
        self.meta_phrases = meta_phrases
        self.generator = generator
        self.verifier = verifier
        self.tokenizer = tokenizer
        self.prompt_type = prompt_type

    def run(self, problems: list[Problem], seed: int) -> RewriteOutcome:
        stats = StageStats(rounds=1)
        prompts = [reference_rewrite_prompt(problem, self.prompt_type, self.tokenizer) for problem in problems]
        seed_of_round = round_seed(seed, STAGE, 0)
        completions = [samples[0] for samples in self.generator.generate(prompts, self.sampling, seed=seed_of_round)]
        verdicts = self.verifier.verify([sample.text for sample in completions], [p.answer for p in problems])
        info = GeneratorInfo(
            backend=self.generator.backend,
            model=self.generator.fingerprint,
            temperature=self.sampling.temperature,
            top_p=self.sampling.top_p,
            max_tokens=self.sampling.max_tokens,
            seed=seed_of_round,
        )
        records = []
        for problem, prompt, sample, verdict in zip(problems, prompts, completions, verdicts, strict=True):
            attempts = Attempts(rewrite_samples=1)
            stats.attempted += 1
            stats.sampled += 1
            stats.tokens_generated += len(sample.token_ids)
            stats.tokens_fixed_n += len(sample.token_ids)
            stats.verifier_timeouts += verdict.timed_out
            kept = verdict.correct and bool(sample.text.strip())
            if kept:
                stats.correct += 1
                if sample.truncated:
                    stats.rejected_truncated += 1
                    kept = False
                elif self.meta_phrases is not None and mentions_reference(sample.text, self.meta_phrases):
                    stats.rejected_meta_phrase += 1
                    kept = False
            if kept:
                stats.solved += 1
                records.append(
                    Record(
                        id=problem.id,
                        problem=problem.problem,
                        answer=problem.answer,
                        expert_solution=problem.expert_solution or "",
                        source="rewritten",
                        response=sample.text,
                        response_token_ids=list(sample.token_ids),
                        behavior_logprobs=list(sample.logprobs),
                        behavior_prompt=prompt,
                        generator=info,
                        attempts=attempts,
                    )
                )
            else:
                records.append(expert_record(problem, attempts, self.prompt_type, self.tokenizer))
        return RewriteOutcome(records=records, stages={STAGE: stats})
