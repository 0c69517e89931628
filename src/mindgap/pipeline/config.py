"""The ``pipeline`` and ``rounds`` sections: the variants compared, the baseline, the forgetting benchmarks, rounds."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from mindgap.checks import require_choice, require_label, require_positive
from mindgap.errors import ConfigError
from mindgap.rewriting.config import REWRITE_STRATEGIES
from mindgap.training.config import LossConfig


@dataclass
class VariantConfig:
    """One trained model of the pipeline's comparison: a training set and a loss."""

    # Label in tables, figures and W&B runs (e.g. DR+IS).
    name: str = MISSING
    # Rewrite strategy that makes its training set (none: the raw expert data); the rest of
    # ``rewrite`` is shared by every variant.
    rewrite: str = "none"
    loss: LossConfig = field(default_factory=LossConfig)
    # Rounds of rewriting and training of this variant (mindgap.pipeline.rounds); null: pipeline.rounds. A
    # variant of one round beside one of three compares them at equal steps in one run.
    rounds: int | None = None

    def __post_init__(self) -> None:
        require_label("pipeline.variants[].name", self.name)
        require_choice(f"pipeline.variants[{self.name}].rewrite", self.rewrite, REWRITE_STRATEGIES)
        require_positive(f"pipeline.variants[{self.name}].rounds", self.rounds)
        if self.rewrite == "none" and (self.rounds or 1) > 1:
            raise ConfigError(f"pipeline.variants[{self.name}]: rewrite=none has no rewriting to repeat in rounds")


ROUND_INITS = ("previous", "initial")
ROUND_RESOLVES = ("all", "unsolved", "none")


@dataclass
class RoundsConfig:
    """How the rounds of a multi-round pipeline (pipeline.rounds > 1) follow one another."""

    # previous: round r trains on from round r-1's weights | initial: each round restarts from the initial model.
    init: str = "previous"
    # Optimiser steps of each round; null splits train.max_steps, every variant's budget, evenly over its rounds.
    steps_per_round: int | None = None
    # all: every problem is sampled again by the round's model (fresh on-policy data) | unsolved: only the
    # problems the last round fell back to the expert on; the other records are kept as they were | none: no
    # problem, every round trains on round 1's records (a control: the rounds' restarts of the optimiser and of
    # the learning-rate schedule, without the data that moves).
    resolve: str = "all"

    def __post_init__(self) -> None:
        require_choice("rounds.init", self.init, ROUND_INITS)
        require_choice("rounds.resolve", self.resolve, ROUND_RESOLVES)
        require_positive("rounds.steps_per_round", self.steps_per_round)


@dataclass
class PipelineConfig:
    """mindgap-pipeline: rewrite once per strategy, train every variant, evaluate all, write a report."""

    # Variants trained with the same steps and seed; empty: one variant, the configured
    # rewrite.strategy and train.loss, labelled ``run``.
    variants: list[VariantConfig] = field(default_factory=list)
    # Label the others are compared with; null: the first variant.
    baseline: str | None = None
    # Also evaluate the initial model, labelled ``base``.
    evaluate_base: bool = True
    # Benchmarks (of eval.benchmarks) outside the fine-tuning target: they measure forgetting
    # and are reported apart from the target mean.
    forgetting_benchmarks: list[str] = field(default_factory=list)
    # Rounds of rewriting and training of the variants that rewrite (mindgap.pipeline.rounds): round r >= 2
    # rewrites the training problems with the model the variant trained in round r-1; 1 rewrites once, with the
    # initial model.
    rounds: int = 1

    def __post_init__(self) -> None:
        require_positive("pipeline.rounds", self.rounds)
        names = [variant.name for variant in self.variants]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"pipeline.variants: names must be unique, {', '.join(duplicates)} repeat")
        labels = [*names, *(["base"] if self.evaluate_base else [])]
        if self.baseline is not None and names and self.baseline not in labels:
            raise ConfigError(f"pipeline.baseline={self.baseline!r} is not one of {', '.join(labels)}")
