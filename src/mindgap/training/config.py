"""The ``train`` section: loss, optimiser, strategy, precision, checkpoints and validation."""

from __future__ import annotations

from dataclasses import dataclass, field

from mindgap.checks import require_choice, require_positive
from mindgap.data.config import DataConfig
from mindgap.errors import ConfigError


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
        require_positive("train.optim.lr", self.lr)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.optim.betas={list(self.betas)} must be two numbers in [0, 1)")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.optim.warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        require_positive("train.optim.grad_clip", self.grad_clip)


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
        require_choice("train.loss.clip.mode", self.mode, ("truncate", "mask"))
        require_positive("train.loss.clip.max", self.max)
        require_positive("train.loss.clip.min", self.min, allow_zero=True)
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
        require_choice("train.loss.name", self.name, ("sft", "dft", "is"))
        require_choice("train.loss.level", self.level, ("token", "sequence"))
        require_choice("train.loss.expert_behavior", self.expert_behavior, ("uniform", "one", "model"))
        require_choice("train.loss.behavior_logprobs", self.behavior_logprobs, ("rescored", "recorded"))
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
        require_choice("train.strategy.name", self.name, ("single", "ddp", "ddp_spawn", "fsdp2", "fsdp"))
        require_choice("train.strategy.accelerator", self.accelerator, ("cpu", "gpu", "auto"))
        require_choice("train.strategy.reduce_dtype", self.reduce_dtype, ("float32", "bfloat16"))
        require_positive("train.strategy.devices", self.devices)
        require_positive("train.strategy.num_nodes", self.num_nodes)
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
        require_positive("train.checkpoint.every_n_steps", self.every_n_steps)
        require_positive("train.checkpoint.keep", self.keep)


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
        require_choice("train.precision", self.precision, ("auto", "32-true", "bf16-mixed", "bf16-true"))
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
            require_positive(f"train.{name}", getattr(self, name))
        require_choice("train.overlong", self.overlong, ("truncate", "drop"))
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
