"""The ``rewrite`` section: the strategy, its sampling rounds, the copy filter, SDFT and the RL rewriter."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mindgap.checks import require_choice, require_positive
from mindgap.errors import ConfigError
from mindgap.generation.config import SamplingConfig

REWRITE_STRATEGIES = ("none", "self_only", "no_guided", "mind_the_gap", "sdft", "rl_agent")


# Whole expressions (word boundaries at both ends), so that "the reference angle" is not one of them. The last
# two are echoes of the rewrite instruction, which small models repeat instead of following.
META_PHRASES = [
    "reference solution",
    "reference answer",
    "given solution",
    "provided solution",
    "solution provided",
    "solution above",
    "above solution",
    "original solution",
    "as shown in the solution",
    "rewritten solution",
    "in your own words",
]


@dataclass
class CopyFilterConfig:
    """Rejects guided responses that copy or mention the expert solution they were shown."""

    # Case-insensitive phrases that mark a response as talking about the reference, matched as whole expressions.
    meta_phrases: list[str] = field(default_factory=lambda: list(META_PHRASES))
    # Reject a response sharing this many consecutive words with the expert solution it was shown (LaTeX markup
    # stripped; runs that also occur in the problem statement do not count); null disables the check.
    max_shared_ngram: int | None = 16

    def __post_init__(self) -> None:
        require_positive("rewrite.copy_filter.max_shared_ngram", self.max_shared_ngram)


def _validate_one_rewrite(where: str, sampling: SamplingConfig) -> None:
    sampling.validate(where)
    if sampling.n != 1:
        raise ConfigError(f"{where}.n={sampling.n} must be 1: one rewrite per problem is kept or replaced")


@dataclass
class SDFTConfig:
    """rewrite=sdft: the model rewrites each expert solution shown to it as a reference (DESIGN.md §1)."""

    # The one rewrite per problem (n must be 1); greedy by default. It is kept when it has none of
    # rewrite.copy_filter.meta_phrases and its final answer matches the gold one, else the expert solution is.
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=1, temperature=0.0, max_tokens=512))

    def __post_init__(self) -> None:
        _validate_one_rewrite("rewrite.sdft.sampling", self.sampling)


@dataclass
class RLAgentConfig:
    """rewrite=rl_agent: a LoRA rewriter on the backbone trained with GRPO, then one greedy rewrite per problem.

    The defaults are conf/rewrite/rl_agent.yaml's (which says which are the paper's released values and which
    are scaled down); ``rewrite=rl_agent_paper`` carries the released ones, ``experiment=smoke`` shrinks them for
    the tiny model.
    Reward of a rewrite within its group (DESIGN.md §1, mindgap.rewriting.rewards):
    r = gate + gate * (alignment_weight * r_align + diversity_weight * r_div).
    """

    # Rewrites sampled per problem in one GRPO group (TRL num_generations); at least 2.
    group_size: int = 5
    # Problems (groups) per optimiser step, and per forward/backward micro-batch; the first must be a multiple
    # of the second.
    prompts_per_step: int = 8
    prompts_per_micro_batch: int = 1
    # Coefficient of the KL penalty to the backbone without the adapter (TRL beta).
    kl_coef: float = 0.001
    learning_rate: float = 3e-6
    lora_rank: int = 64
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # Modules that get a LoRA adapter: [all-linear] (every linear layer but the output head) or module names.
    lora_target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    # GRPO optimiser steps; null trains for ``epochs`` passes over the problems.
    max_steps: int | None = None
    epochs: float = 1.0
    # Sampling of the rewrites of a group.
    temperature: float = 1.0
    top_p: float = 1.0
    max_completion_tokens: int = 512
    # Weights of the alignment and diversity terms of the reward.
    alignment_weight: float = 0.35
    diversity_weight: float = 0.5
    # The gate also asks the frozen backbone whether the rewrite's reasoning is valid (P(YES) > P(NO)).
    use_validity_judge: bool = False
    # Sequences per forward pass of the frozen backbone that scores the rewards.
    reward_batch_size: int = 8
    # Recompute activations in the backward pass: less memory for real models, slower.
    gradient_checkpointing: bool = False
    # A resumable GRPO checkpoint every this many steps (a killed run continues from the last one); null: none.
    save_steps: int | None = 100
    # The generate-verify-fallback pass with backbone + adapter: one rewrite per problem (n must be 1), greedy by
    # default; kept when its final answer matches the gold one, else the expert solution is.
    rewrite_sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(n=1, temperature=0.0, max_tokens=512)
    )

    def __post_init__(self) -> None:
        where = "rewrite.rl_agent"
        if self.group_size < 2:
            raise ConfigError(f"{where}.group_size={self.group_size} must be >= 2 (GRPO compares rewrites in a group)")
        for name in (
            "prompts_per_step",
            "prompts_per_micro_batch",
            "learning_rate",
            "lora_rank",
            "lora_alpha",
            "max_steps",
            "epochs",
            "temperature",
            "max_completion_tokens",
            "reward_batch_size",
            "save_steps",
        ):
            require_positive(f"{where}.{name}", getattr(self, name))
        for name in ("kl_coef", "alignment_weight", "diversity_weight"):
            require_positive(f"{where}.{name}", getattr(self, name), allow_zero=True)
        if self.prompts_per_step % self.prompts_per_micro_batch:
            raise ConfigError(
                f"{where}.prompts_per_step={self.prompts_per_step} must be a multiple of "
                f"prompts_per_micro_batch={self.prompts_per_micro_batch}"
            )
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"{where}.lora_dropout={self.lora_dropout} must be in [0, 1)")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{where}.top_p={self.top_p} must be in (0, 1]")
        if not self.lora_target_modules or (
            "all-linear" in self.lora_target_modules and len(self.lora_target_modules) > 1
        ):
            raise ConfigError(f"{where}.lora_target_modules must be [all-linear] or a non-empty list of module names")
        _validate_one_rewrite(f"{where}.rewrite_sampling", self.rewrite_sampling)


@dataclass
class RewriteConfig:
    """The rewriting stage (DESIGN.md §1): self-alignment, guided re-solve, expert fallback; or SDFT; or RL agent."""

    # none (raw expert data) | self_only | no_guided | mind_the_gap | sdft (prompted rewrite of each expert
    # solution) | rl_agent (rewrite by a GRPO-trained LoRA rewriter)
    strategy: str = "mind_the_gap"
    # Stage 1 (n1 = self_sampling.n, the most samples per problem) under the standard prompt.
    self_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=4))
    # Stage 2 (n2 = guided_sampling.n) under the guided prompt, for problems stage 1 left unsolved.
    guided_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=4))
    # Samples drawn per unsolved problem in each round; a problem leaves the stage as soon as it has
    # ``keep_k`` correct responses. null draws all n at once (fixed-n sampling).
    samples_per_round: int | None = 2
    # Correct responses kept per problem: first | all | k (the first keep_k).
    keep: str = "first"
    keep_k: int = 2
    copy_filter: CopyFilterConfig = field(default_factory=CopyFilterConfig)
    # Recompute behaviour log-probs with the Hugging Face model (DESIGN.md §1); recorded ones are kept too.
    rescore: bool = True
    # Sequences per rescoring forward pass.
    rescore_batch_size: int = 8
    # Problems committed together: the unit of resumption.
    chunk_size: int = 64
    # Split the chunks over jobs: job ``shard_index`` (0-based) of ``num_shards`` takes every num_shards-th
    # chunk. null runs every chunk not yet done and merges them into the dataset.
    num_shards: int = 1
    shard_index: int | None = None
    # Only merge the finished chunks (an error names the missing shards); never generates.
    merge_only: bool = False
    # Finished chunks and merged datasets, keyed by the stage fingerprint; share it between sharded jobs.
    work_dir: str = MISSING
    # false: records with bad fields are skipped, counted and listed in the manifest.
    strict: bool = True
    # How jobs sharing work_dir lock a chunk or a merge (README "Reliability"): flock (fcntl.flock; on
    # Lustre it needs the ``flock`` mount option) | file (O_CREAT|O_EXCL lock files with a heartbeat,
    # for file systems without a coherent flock).
    lock: str = "flock"
    # A ``file`` lock whose heartbeat is older than this many seconds is stale and taken over.
    lock_stale_s: float = 600.0
    # Settings of strategy=sdft and strategy=rl_agent (ignored, and not fingerprinted, under other strategies).
    sdft: SDFTConfig = field(default_factory=SDFTConfig)
    rl_agent: RLAgentConfig = field(default_factory=RLAgentConfig)

    def __post_init__(self) -> None:
        require_choice("rewrite.strategy", self.strategy, REWRITE_STRATEGIES)
        require_choice("rewrite.keep", self.keep, ("first", "all", "k"))
        require_choice("rewrite.lock", self.lock, ("flock", "file"))
        require_positive("rewrite.lock_stale_s", self.lock_stale_s)
        self.self_sampling.validate("rewrite.self_sampling")
        self.guided_sampling.validate("rewrite.guided_sampling")
        for name in ("samples_per_round", "keep_k", "rescore_batch_size", "chunk_size", "num_shards"):
            require_positive(f"rewrite.{name}", getattr(self, name))
        if self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"rewrite.shard_index={self.shard_index} must be in [0, num_shards={self.num_shards})")
        if self.merge_only and self.shard_index is not None:
            raise ConfigError("rewrite.merge_only merges every shard: leave rewrite.shard_index null")

    def correct_wanted(self, samples: int) -> int:
        """Correct responses after which a problem stops sampling in a stage of ``samples`` draws."""
        return {"first": 1, "all": samples, "k": self.keep_k}[self.keep]
