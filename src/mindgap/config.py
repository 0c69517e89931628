"""Typed configuration schemas for the four Hydra apps.

Every app composes its root YAML on top of one of the dataclasses below (registered in
Hydra's ConfigStore), so a misspelt key or a wrong type is rejected while the config is
composed. ``to_typed`` then builds the dataclass objects, which runs the ``__post_init__``
checks on values (ranges, choices) and turns any failure into a one-line ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mindgap.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"

T = TypeVar("T")


def _require_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}={value!r} is not one of {', '.join(choices)}")


def _require_positive(where: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value} must be {'>= 0' if allow_zero else '> 0'}")


# --------------------------------------------------------------------------- model


@dataclass
class TinyModelConfig:
    """A tiny Qwen2-architecture model built locally (never downloaded)."""

    # Size of the BPE vocabulary trained on ``corpus`` (special tokens included).
    vocab_size: int = 2048
    hidden_size: int = 128
    num_hidden_layers: int = 2
    # hidden_size / num_attention_heads must be 64: the CPU build of vLLM rejects smaller heads.
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    intermediate_size: int = 384
    max_position_embeddings: int = 2048
    # Names of data configs (conf/data/*.yaml) whose problems and solutions train the tokenizer.
    corpus: list[str] = field(default_factory=lambda: ["gsm8k_train"])
    # Seed of the weight initialisation.
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            _require_positive(f"model.tiny.{name}", getattr(self, name))
        if self.hidden_size % self.num_attention_heads or self.hidden_size // self.num_attention_heads != 64:
            raise ConfigError(
                f"model.tiny: hidden_size/num_attention_heads = {self.hidden_size}/{self.num_attention_heads}"
                " must be a head dim of 64 (vLLM's CPU kernels reject smaller heads)"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("model.tiny.num_key_value_heads must divide num_attention_heads")
        if not self.corpus:
            raise ConfigError("model.tiny.corpus must name at least one data config")


@dataclass
class ModelConfig:
    """Which causal LM every stage loads, through ``from_pretrained``."""

    # Short label used in run names and fingerprints.
    name: str = MISSING
    # A hub id or a local directory; null means build ``tiny`` locally.
    name_or_path: str | None = None
    # Build recipe for a local tiny model; used only when name_or_path is null.
    tiny: TinyModelConfig | None = None
    # Parameter dtype when loading: float32 | bfloat16 | float16 | auto.
    dtype: str = "float32"
    # Hub revision (branch, tag or commit) for hub ids.
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _require_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16", "auto"))
        if (self.name_or_path is None) == (self.tiny is None):
            raise ConfigError("model: set exactly one of model.name_or_path and model.tiny")


# --------------------------------------------------------------------------- data


@dataclass
class FieldsConfig:
    """Which field of a raw record holds each part of a problem."""

    # Field holding a stable id; null uses the row number.
    id: str | None = None
    problem: str = "problem"
    # Field holding the expert (reference) solution; null when the source has none.
    solution: str | None = "solution"
    # Field the gold answer is read from, interpreted by ``answer_format``.
    answer: str = "answer"


@dataclass
class DataConfig:
    """One source of math problems: a file under data_root, any local file, or a hub dataset."""

    name: str = MISSING
    # jsonl | parquet (a file) or hub (``datasets.load_dataset``: a hub id or a local dataset dir).
    format: str = "jsonl"
    # File path (relative paths are under data_root) or hub id.
    path: str = MISSING
    # Split and subset, for format=hub.
    split: str = "train"
    subset: str | None = None
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    # How the gold answer is read from fields.answer:
    #   text   - the field itself (numbers are printed without a trailing .0)
    #   gsm8k  - the text after the final '####'
    #   boxed  - the content of the last \boxed{...}
    #   list   - a list of answers, joined with ', ', with '$' and a final '.' removed
    answer_format: str = "text"
    # text | first_of_list (OlympiadBench stores a list of solutions).
    solution_format: str = "text"
    # Keep only the first N problems.
    limit: int | None = None

    def __post_init__(self) -> None:
        _require_choice("data.format", self.format, ("jsonl", "parquet", "hub"))
        _require_choice("data.answer_format", self.answer_format, ("text", "gsm8k", "boxed", "list"))
        _require_choice("data.solution_format", self.solution_format, ("text", "first_of_list"))
        _require_positive("data.limit", self.limit)


# --------------------------------------------------------------------------- logging


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
        _require_choice("logger.backend", self.backend, ("wandb", "csv", "none"))
        _require_choice("logger.mode", self.mode, ("offline", "online"))


# --------------------------------------------------------------------------- generation


@dataclass
class GeneratorConfig:
    """The engine that samples responses; sampling parameters belong to each stage."""

    # hf: transformers generate (batched, seeded; the CPU default) | vllm: vLLM's offline LLM engine.
    backend: str = "hf"
    # hf: prompts per forward batch.
    batch_size: int = 16
    # vllm: GPUs one engine shards the model over.
    tensor_parallel_size: int = 1
    # vllm: share of device memory for weights and KV cache (of CPU memory with the CPU build).
    gpu_memory_utilization: float = 0.9
    # vllm: longest prompt + response in tokens; null takes the model's own limit.
    max_model_len: int | None = None
    # vllm: skip CUDA-graph capture (faster start, slower decoding).
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        _require_choice("generator.backend", self.backend, ("hf", "vllm"))
        _require_positive("generator.batch_size", self.batch_size)
        _require_positive("generator.tensor_parallel_size", self.tensor_parallel_size)
        _require_positive("generator.max_model_len", self.max_model_len)
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"generator.gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")


@dataclass
class SamplingConfig:
    """Sampling parameters of one generation call."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512

    def validate(self, where: str) -> None:
        _require_positive(f"{where}.n", self.n)
        _require_positive(f"{where}.temperature", self.temperature, allow_zero=True)
        _require_positive(f"{where}.max_tokens", self.max_tokens)
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"{where}.top_p={self.top_p} must be in (0, 1]")


@dataclass
class VerifierConfig:
    """Answer checking: a fast exact/numeric path in process, math-verify in a process pool."""

    # Processes of the math-verify pool; null uses every available core.
    workers: int | None = None
    # Wall-clock limit per math-verify call; a verdict that takes longer counts as wrong and as a timeout.
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        _require_positive("verifier.workers", self.workers)
        _require_positive("verifier.timeout_s", self.timeout_s)


# --------------------------------------------------------------------------- stages


REWRITE_STRATEGIES = ("none", "self_only", "no_guided", "mind_the_gap")

META_PHRASES = [
    "reference solution",
    "reference answer",
    "the reference",
    "provided solution",
    "given solution",
    "solution above",
    "as shown in the solution",
]


@dataclass
class CopyFilterConfig:
    """Rejects guided responses that copy or mention the expert solution they were shown."""

    # Case-insensitive phrases that mark a response as talking about the reference.
    meta_phrases: list[str] = field(default_factory=lambda: list(META_PHRASES))
    # Reject a response sharing this many consecutive words with the expert solution; null disables the check.
    max_shared_ngram: int | None = 16

    def __post_init__(self) -> None:
        _require_positive("rewrite.copy_filter.max_shared_ngram", self.max_shared_ngram)


@dataclass
class RewriteConfig:
    """The rewriting stage (DESIGN.md §1): self-alignment, guided re-solve, expert fallback."""

    # none (raw expert data) | self_only | no_guided | mind_the_gap
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

    def __post_init__(self) -> None:
        _require_choice("rewrite.strategy", self.strategy, REWRITE_STRATEGIES)
        _require_choice("rewrite.keep", self.keep, ("first", "all", "k"))
        self.self_sampling.validate("rewrite.self_sampling")
        self.guided_sampling.validate("rewrite.guided_sampling")
        for name in ("samples_per_round", "keep_k", "rescore_batch_size", "chunk_size", "num_shards"):
            _require_positive(f"rewrite.{name}", getattr(self, name))
        if self.shard_index is not None and not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(f"rewrite.shard_index={self.shard_index} must be in [0, num_shards={self.num_shards})")
        if self.merge_only and self.shard_index is not None:
            raise ConfigError("rewrite.merge_only merges every shard: leave rewrite.shard_index null")

    def correct_wanted(self, samples: int) -> int:
        """Correct responses after which a problem stops sampling in a stage of ``samples`` draws."""
        return {"first": 1, "all": samples, "k": self.keep_k}[self.keep]


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay."""

    lr: float = 5e-5
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    # Minimum learning rate at the end of the cosine, as a fraction of lr.
    min_lr_ratio: float = 0.0
    # Gradient-norm clipping; null disables it.
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        _require_positive("train.optim.lr", self.lr)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.optim.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        _require_positive("train.optim.grad_clip", self.grad_clip)


@dataclass
class ClipConfig:
    """Bounds on the importance weight."""

    # c_max; null: no upper bound.
    max: float | None = None
    # c_min; null: no lower bound.
    min: float | None = None
    # truncate: clamp the weight into [min, max] | mask: weight 0 for tokens outside [min, max]
    mode: str = "truncate"

    def __post_init__(self) -> None:
        _require_choice("train.loss.clip.mode", self.mode, ("truncate", "mask"))
        _require_positive("train.loss.clip.max", self.max)
        _require_positive("train.loss.clip.min", self.min, allow_zero=True)
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ConfigError(f"train.loss.clip: min={self.min} is above max={self.max}")


@dataclass
class LossConfig:
    """The training objective (DESIGN.md §1, "The loss family"): L = -sum m w logp / N_step."""

    # sft: w = 1 | dft: w = sg(p) | is: w = sg(p) / beta, from the records' behaviour log-probs.
    name: str = "sft"
    clip: ClipConfig = field(default_factory=ClipConfig)
    # token: one weight per token | sequence: w = exp(mean log-ratio) for the whole response.
    level: str = "token"
    # is, expert records: uniform (beta = 1, the DFT weight) | one (w = 1) | model (beta = pi_0, unguided prompt)
    expert_behavior: str = "uniform"
    # is: rescored (the HF model's own forward, DESIGN.md §1) | recorded (the generator's values).
    behavior_logprobs: str = "rescored"

    def __post_init__(self) -> None:
        _require_choice("train.loss.name", self.name, ("sft", "dft", "is"))
        _require_choice("train.loss.level", self.level, ("token", "sequence"))
        _require_choice("train.loss.expert_behavior", self.expert_behavior, ("uniform", "one", "model"))
        _require_choice("train.loss.behavior_logprobs", self.behavior_logprobs, ("rescored", "recorded"))
        if self.name == "is" and self.expert_behavior == "model" and self.behavior_logprobs == "recorded":
            raise ConfigError(
                "train.loss: expert_behavior=model needs behavior_logprobs=rescored (expert text has no recorded"
                " values)"
            )


@dataclass
class StrategyConfig:
    """How training is spread over devices (a Lightning strategy)."""

    # single: one device | ddp: data parallel, one process per device (gloo on CPU) | ddp_spawn: the
    # same with spawned processes (for Hydra multiruns on one machine, where ddp would re-run the sweep)
    name: str = "single"
    # cpu | gpu | auto
    accelerator: str = "auto"
    # Devices (processes) per node.
    devices: int = 1
    num_nodes: int = 1
    # Lightning precision string: 32-true | bf16-mixed | bf16-true | 16-mixed
    precision: str = "32-true"

    def __post_init__(self) -> None:
        _require_choice("train.strategy.name", self.name, ("single", "ddp", "ddp_spawn"))
        _require_choice("train.strategy.accelerator", self.accelerator, ("cpu", "gpu", "auto"))
        _require_choice("train.strategy.precision", self.precision, ("32-true", "bf16-mixed", "bf16-true", "16-mixed"))
        _require_positive("train.strategy.devices", self.devices)
        _require_positive("train.strategy.num_nodes", self.num_nodes)
        if self.name == "single" and self.devices * self.num_nodes != 1:
            raise ConfigError("train.strategy: name=single runs on one device; use strategy=ddp for more")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


@dataclass
class TrainConfig:
    """Supervised fine-tuning on the (rewritten) records."""

    loss: LossConfig = field(default_factory=LossConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    micro_batch_size: int = 4
    accumulate_grad_batches: int = 1
    # Optimiser steps; null trains for max_epochs.
    max_steps: int | None = None
    max_epochs: int = 1
    # Prompt + response tokens; longer records are truncated from the end.
    max_length: int = 2048
    # A rewritten dataset directory to train on; null runs the rewriting stage first.
    dataset_path: str | None = None
    log_every_n_steps: int = 1

    def __post_init__(self) -> None:
        for name in (
            "micro_batch_size",
            "accumulate_grad_batches",
            "max_steps",
            "max_epochs",
            "max_length",
            "log_every_n_steps",
        ):
            _require_positive(f"train.{name}", getattr(self, name))


@dataclass
class EvalConfig:
    """Evaluation on benchmarks named by their data config."""

    # Names of data configs to evaluate; null evaluates ``data``.
    benchmarks: list[str] | None = None
    # Keep only the first N problems of each benchmark.
    limit: int | None = None
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=1, temperature=0.0))
    # A trained model directory to evaluate instead of ``model``.
    model_path: str | None = None

    def __post_init__(self) -> None:
        _require_positive("eval.limit", self.limit)
        self.sampling.validate("eval.sampling")


# --------------------------------------------------------------------------- apps

PROMPT_TYPES = ("qwen-boxed", "llama-base-boxed", "deepseek-math", "chat")


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
        _require_choice("prompt_type", self.prompt_type, PROMPT_TYPES)


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


def register_configs() -> None:
    """Put the schema where the root YAML files find it (``defaults: [mindgap_schema, ...]``)."""
    ConfigStore.instance().store(name="mindgap_schema", node=MindgapConfig)


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
