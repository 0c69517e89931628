"""The composed configuration of the apps: one ``MindgapConfig`` of every stage's section.

Each section's schema lives beside the code that reads it (``mindgap.<stage>.config``); this module
holds what the stages share (``logger``, the common keys) and composes them. Every app
composes its root YAML on top of one of these dataclasses (registered in Hydra's ConfigStore), so a
misspelt key or a wrong type is rejected while the config is composed. ``to_typed`` then builds the
dataclass objects, which runs the ``__post_init__`` checks on values (ranges, choices) and turns any
failure into a one-line ``ConfigError``. Nothing here imports torch: a bad config fails in a second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mindgap.checks import require_choice
from mindgap.data.config import DataConfig
from mindgap.errors import ConfigError
from mindgap.evaluation.config import CompareConfig, EvalConfig
from mindgap.generation.config import GeneratorConfig
from mindgap.models.config import ModelConfig
from mindgap.paths import PROJECT_ROOT
from mindgap.pipeline.config import PipelineConfig, RoundsConfig
from mindgap.prompts import PROMPT_TYPES
from mindgap.rewriting.config import RewriteConfig
from mindgap.training.config import TrainConfig
from mindgap.verification.config import VerifierConfig

T = TypeVar("T")


@dataclass
class LoggerConfig:
    """Where metrics go; W&B runs are offline unless ``mode=online``."""

    # wandb | csv | none
    backend: str = "none"
    project: str = "mindgap"
    entity: str | None = None
    # W&B group; null uses the experiment name.
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    # offline | online (W&B only)
    mode: str = "offline"

    def __post_init__(self) -> None:
        require_choice("logger.backend", self.backend, ("wandb", "csv", "none"))
        require_choice("logger.mode", self.mode, ("offline", "online"))


@dataclass
class CommonConfig:
    """Keys every app accepts."""

    # Where results go; the app prints it at the end.
    output_dir: str = MISSING
    seed: int = 0
    # Label of the experiment: W&B group and report headings.
    experiment_name: str = "default"
    # Root of the shared data files (benchmarks and GSM8K train).
    data_root: str = MISSING
    # Where built models and other reusable artefacts are cached.
    cache_dir: str = MISSING
    # qwen-boxed | llama-base-boxed | deepseek-math | chat (the tokenizer's chat template)
    prompt_type: str = "qwen-boxed"
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    logger: LoggerConfig = MISSING

    def __post_init__(self) -> None:
        require_choice("prompt_type", self.prompt_type, PROMPT_TYPES)


@dataclass
class MindgapConfig(CommonConfig):
    """The one schema of all four apps, so an experiment file drives any of them.

    Each app reads the sections it needs: rewrite (generator, rewrite), train (generator,
    rewrite, train), eval (generator, eval), pipeline (all).
    """

    generator: GeneratorConfig = MISSING
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    rewrite: RewriteConfig = field(default_factory=RewriteConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    rounds: RoundsConfig = field(default_factory=RoundsConfig)


@dataclass
class EvalAppConfig(MindgapConfig):
    """mindgap-eval's schema: the shared one plus top-level shorthands for keys of ``eval``.

    A shorthand that is set replaces its ``eval.*`` key, after experiment files, so that the papers'
    protocol reads ``mindgap-eval models=[DIR] benchmarks=[...] n_samples=16 temperature=1.0 ...``.
    """

    # eval.models: model directories, training run directories, checkpoints or hub ids.
    models: list[str] | None = None
    # eval.labels
    labels: list[str] | None = None
    # eval.baseline
    baseline: str | None = None
    # eval.benchmarks
    benchmarks: list[str] | None = None
    # eval.sampling.n
    n_samples: int | None = None
    # eval.sampling.temperature
    temperature: float | None = None
    # eval.sampling.top_p
    top_p: float | None = None
    # eval.sampling.max_tokens
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for shorthand, section, key in (
            ("models", self.eval, "models"),
            ("labels", self.eval, "labels"),
            ("baseline", self.eval, "baseline"),
            ("benchmarks", self.eval, "benchmarks"),
            ("n_samples", self.eval.sampling, "n"),
            ("temperature", self.eval.sampling, "temperature"),
            ("top_p", self.eval.sampling, "top_p"),
            ("max_tokens", self.eval.sampling, "max_tokens"),
        ):
            value = getattr(self, shorthand)
            if value is not None:
                setattr(section, key, list(value) if isinstance(value, list) else value)
        self.eval.validate()


def register_configs() -> None:
    """Put the schemas where the root YAML files find them (``defaults: [mindgap_schema, ...]``)."""
    store = ConfigStore.instance()
    store.store(name="mindgap_schema", node=MindgapConfig)
    store.store(name="mindgap_eval_schema", node=EvalAppConfig)
    store.store(name="mindgap_compare_schema", node=CompareConfig)


def _project_root() -> str:
    return str(PROJECT_ROOT)


if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", _project_root)


def to_typed(cfg: DictConfig, schema: type[T]) -> T:
    """Resolve ``cfg`` and build the typed, validated ``schema`` object, or raise ConfigError."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise ConfigError(_one_line(error)) from error
    assert dataclasses.is_dataclass(typed)
    # Keys forced in with '+key=value' survive the merge; the schema has no place for them.
    unknown = _unknown_keys(OmegaConf.to_container(cfg, resolve=False), dataclasses.asdict(typed))
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r} (not in {schema.__name__})")
    return typed


def _unknown_keys(given: Any, known: Any, prefix: str = "") -> list[str]:
    if not isinstance(given, dict) or not isinstance(known, dict):
        return []
    unknown = []
    for key, value in given.items():
        if key not in known:
            unknown.append(f"{prefix}{key}")
        else:
            unknown.extend(_unknown_keys(value, known[key], f"{prefix}{key}."))
    return unknown


def _one_line(error: OmegaConfBaseException) -> str:
    message = str(error).splitlines()[0]
    full_key = getattr(error, "full_key", None)
    return f"{full_key}: {message}" if full_key and full_key not in message else message
