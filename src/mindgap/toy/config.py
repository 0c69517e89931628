"""The toy world's schemas: its problem distributions, solution styles, splits, and the model pretrained on them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mindgap.checks import require_architecture, require_choice, require_positive
from mindgap.errors import ConfigError
from mindgap.prompts import PROMPT_TYPES

TOY_FAMILIES = ("inventory", "packs", "money")


TOY_SPLITS = ("target_train", "target_test", "forgetting")


@dataclass
class ToyDistributionConfig:
    """One distribution of toy word problems: a starting quantity changed by a chain of events."""

    # Families drawn from, uniformly: inventory (items gained and lost) | packs (also boxes of
    # items bought and groups of items given away) | money (dollars earned and spent, also several
    # things bought or sold at one price).
    families: list[str] = field(default_factory=lambda: list(TOY_FAMILIES))
    # Numbers of events (steps) a problem can have, each in [1, 10].
    steps: list[int] = field(default_factory=lambda: [1, 2, 3])
    # Relative frequency of each entry of ``steps``; null: uniform.
    step_weights: list[float] | None = None
    # Largest single gain or loss, group size and price.
    max_operand: int = 9
    # Largest number of groups (boxes, friends, things) in one event; at least 2.
    max_groups: int = 3
    # Largest starting quantity.
    max_start: int = 15
    # Largest running total: an event that would pass it is drawn as a loss instead.
    max_value: int = 30
    # Share of plain gains and losses told with the distribution's own wording (problems.NOVEL_VERBS:
    # items bought and sold, dollars found and lost), which no other distribution uses: a skill (the
    # sign depends on what is counted) that only data told this way can teach. 0 keeps every draw of
    # the distribution as it was without it.
    novel_share: float = 0.0
    # Share of plain gains and losses told as trades ("she trades 5 marbles"), each a gain or a loss at
    # random, so that only a worked solution tells which: in the distribution of the pretraining
    # examples that show one (world.hinted), they teach the model to take its signs from the reference.
    ambiguous_share: float = 0.0

    def __post_init__(self) -> None:
        for family in self.families:
            require_choice("toy distribution families", family, TOY_FAMILIES)
        if not self.families or not self.steps:
            raise ConfigError("toy distribution: families and steps must not be empty")
        if not all(1 <= steps <= 10 for steps in self.steps):
            raise ConfigError(f"toy distribution steps={list(self.steps)}: each must be in [1, 10]")
        weights = self.step_weights
        if weights is not None and (len(weights) != len(self.steps) or any(w < 0 for w in weights) or not any(weights)):
            raise ConfigError("toy distribution: step_weights needs one weight >= 0 per entry of steps, not all 0")
        # Amounts, starts and group counts are drawn from 2 upwards.
        for name in ("max_operand", "max_start", "max_groups"):
            if getattr(self, name) < 2:
                raise ConfigError(f"toy distribution {name}={getattr(self, name)} must be >= 2")
        if self.max_value < self.max_start:
            raise ConfigError("toy distribution max_value must be >= max_start")
        for name in ("novel_share", "ambiguous_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"toy distribution {name}={getattr(self, name)} must be in [0, 1]")
        if self.novel_share + self.ambiguous_share > 1:
            raise ConfigError("toy distribution: novel_share + ambiguous_share must be at most 1")


def _pretraining_distribution() -> ToyDistributionConfig:
    """The distribution the toy model is pretrained on: 1 to 4 events, mostly 2 or 3."""
    return ToyDistributionConfig(steps=[1, 2, 3, 4], step_weights=[2.0, 3.0, 3.0, 2.0])


@dataclass
class ToyWorldConfig:
    """The synthetic world of the CPU demo (mindgap.toy): a pretraining and a target distribution."""

    # Seed of every draw: the problems of each split and the pretraining corpus.
    seed: int = 0
    # The distribution the toy model is pretrained on (native style), and the forgetting set's.
    pretraining: ToyDistributionConfig = field(default_factory=_pretraining_distribution)
    # The distribution of the fine-tuning set (expert style) and of its held-out test set: problems no
    # longer than the pretraining ones, 60% of whose plain gains and losses are told in the target's own
    # wording (items bought and sold, dollars found and lost), a sign rule only the fine-tuning set
    # teaches (README: the toy world v2's calibration). It does not change the model (it is not part of
    # the model's fingerprint).
    target: ToyDistributionConfig = field(default_factory=lambda: ToyDistributionConfig(novel_share=0.6))
    # The distribution of the pretraining examples that show an expert-style solution (the guided and
    # rewrite prompts) when model.toy.pretraining.hints_from=hinted: the pretraining distribution with
    # half of its plain events told as trades, whose direction only the shown solution tells, so that
    # the model learns to take its signs from a reference; drawn from the pretraining part of the
    # problem space (never a target problem).
    hinted: ToyDistributionConfig = field(
        default_factory=lambda: dataclasses.replace(_pretraining_distribution(), ambiguous_share=0.5)
    )
    # Share of all problem texts (by a hash of the text) that no training set ever contains: the
    # target test set and the forgetting set are drawn from it alone.
    held_out_share: float = 0.2
    # Share of problem texts the target training set is drawn from; never in the pretraining corpus.
    target_train_share: float = 0.2

    def __post_init__(self) -> None:
        for name in ("held_out_share", "target_train_share"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"toy world {name}={getattr(self, name)} must be in (0, 1)")
        if self.held_out_share + self.target_train_share >= 1:
            raise ConfigError("toy world: held_out_share + target_train_share must leave a share for pretraining")


@dataclass
class ToyDataConfig:
    """A split of the toy world, generated on first use under the cache directory."""

    world: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    # Problems generated for the split (``data.limit`` can still keep fewer).
    size: int = 256

    def __post_init__(self) -> None:
        require_positive("data.toy.size", self.size)


@dataclass
class ToyPretrainingConfig:
    """How the toy model learns the native style: AdamW on native solutions and guided re-solves."""

    # Problems of the pretraining distribution the examples are made from.
    corpus_size: int = 20000
    # Share of examples that show the expert solution under the guided prompt.
    guided_share: float = 0.25
    # Share of examples that show it under the rewrite prompt (rewrite it in your own words); the
    # rest use the standard prompt. All are answered with the native-style solution.
    rewrite_share: float = 0.15
    # The problems the guided and rewrite examples show: pretraining (drawn as the others) | hinted
    # (world.hinted: problems the model cannot solve alone, so that it learns to read the reference).
    hints_from: str = "hinted"
    # Optimiser steps.
    steps: int = 1600
    # Examples per step.
    batch_size: int = 16
    lr: float = 2e-3
    # Linear warmup steps, then cosine decay to ``min_lr_ratio * lr``.
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    # Seed of the weight initialisation and of the example order.
    seed: int = 0
    # Intra-op CPU threads while pretraining (more than the machine's free cores stall every step
    # at the threads' barriers). On 2 idle cores, 2 threads run 1.8x as many steps per second as 1.
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("corpus_size", "steps", "batch_size", "lr", "threads"):
            require_positive(f"model.toy.pretraining.{name}", getattr(self, name))
        require_positive("model.toy.pretraining.warmup_steps", self.warmup_steps, allow_zero=True)
        require_positive("model.toy.pretraining.weight_decay", self.weight_decay, allow_zero=True)
        for name in ("guided_share", "rewrite_share", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"model.toy.pretraining.{name}={getattr(self, name)} must be in [0, 1]")
        require_choice("model.toy.pretraining.hints_from", self.hints_from, ("pretraining", "hinted"))
        if self.guided_share + self.rewrite_share > 1:
            raise ConfigError("model.toy.pretraining: guided_share + rewrite_share must be at most 1")


@dataclass
class ToyModelConfig:
    """The toy world's model: a small Qwen2-architecture LM pretrained here, on CPU, on the native style."""

    world: ToyWorldConfig = field(default_factory=ToyWorldConfig)
    # The prompt template the examples are rendered with; the apps must use the same prompt_type.
    prompt_type: str = "qwen-boxed"
    # Size of the BPE vocabulary (digits are always single tokens; special tokens included).
    vocab_size: int = 768
    hidden_size: int = 128
    num_hidden_layers: int = 2
    # hidden_size / num_attention_heads must be 64: the CPU build of vLLM rejects smaller heads.
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    pretraining: ToyPretrainingConfig = field(default_factory=ToyPretrainingConfig)

    def __post_init__(self) -> None:
        require_choice("model.toy.prompt_type", self.prompt_type, PROMPT_TYPES)
        require_architecture("model.toy", self)
