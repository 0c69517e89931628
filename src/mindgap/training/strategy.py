"""Lightning strategies and precision from ``train``, and the FSDP2 sharding they apply to the model.

Master weights and optimiser state are fp32 unless ``train.precision=bf16-true`` (DESIGN.md §4:
a bf16 weight near 0.02 does not move under an AdamW step at lr 5e-5). Under ``bf16-mixed`` the
compute runs in bf16: Lightning's autocast for ``single`` / ``ddp``, the FSDP mixed-precision
policies (parameters gathered in bf16 from fp32 shards, gradients reduced in ``reduce_dtype``) for
``fsdp2`` / ``fsdp``, where Lightning's own precision stays ``32-true``.
"""

from __future__ import annotations

import functools

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from mindgap.errors import ConfigError
from mindgap.models.loading import ModelSource, load_model_config
from mindgap.training.config import StrategyConfig, TrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHARDED = ("fsdp2", "fsdp")


def uses_gpu(config: StrategyConfig) -> bool:
    if config.accelerator == "auto":
        return torch.cuda.is_available()
    return config.accelerator == "gpu"


def resolved_precision(train: TrainConfig) -> str:
    """``train.precision`` with ``auto`` decided: bf16-mixed on GPUs, 32-true on CPU."""
    if train.precision == "auto":
        return "bf16-mixed" if uses_gpu(train.strategy) else "32-true"
    return train.precision


def master_dtype(train: TrainConfig) -> str:
    """The dtype the trained parameters and the optimiser state live in."""
    return "bfloat16" if resolved_precision(train) == "bf16-true" else "float32"


def compute_dtype(train: TrainConfig) -> torch.dtype:
    return torch.float32 if resolved_precision(train) == "32-true" else torch.bfloat16


def lightning_precision(train: TrainConfig) -> str:
    """The Trainer's ``precision``: the sharded strategies compute in bf16 through their own policies."""
    return "32-true" if train.strategy.name in SHARDED else resolved_precision(train)


def decoder_layer_names(model: ModelSource) -> set[str]:
    """Class names of the model's repeated blocks (transformers' ``_no_split_modules``): the units of sharding."""
    model_config = load_model_config(model)
    return set(MODEL_FOR_CAUSAL_LM_MAPPING[type(model_config)]._no_split_modules)


def _is_decoder_layer(names: set[str], module: torch.nn.Module) -> bool:
    return type(module).__name__ in names


def build_strategy(train: TrainConfig, model: ModelSource) -> str | Strategy:
    """The Trainer's ``strategy`` argument."""
    config = train.strategy
    if config.name == "single":
        return "auto"
    if config.name in ("ddp", "ddp_spawn"):
        return config.name
    if config.name == "fsdp2":
        # The model is sharded by ``shard_model`` inside configure_model; the strategy owns the mesh,
        # the process group and (sharded) checkpointing.
        return ModelParallelStrategy(data_parallel_size=config.world_size, tensor_parallel_size=1)
    if not uses_gpu(config):
        raise ConfigError(
            "train.strategy: fsdp (Lightning FSDPStrategy) runs on GPUs only; use strategy=fsdp2 to shard on CPU"
        )
    from torch.distributed.fsdp import MixedPrecision
    from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

    names = decoder_layer_names(model)
    return FSDPStrategy(
        auto_wrap_policy=functools.partial(
            lambda_auto_wrap_policy, lambda_fn=functools.partial(_is_decoder_layer, names)
        ),
        mixed_precision=MixedPrecision(
            param_dtype=compute_dtype(train),
            reduce_dtype=DTYPES[config.reduce_dtype],
            buffer_dtype=compute_dtype(train),
        ),
        sharding_strategy="FULL_SHARD",
        state_dict_type="sharded",
    )


def shard_model(model: torch.nn.Module, mesh, train: TrainConfig) -> None:
    """FSDP2: one ``fully_shard`` unit per decoder layer, then the root (embeddings, norm, lm head).

    The shards keep the dtype the model was loaded in (the master weights); ``param_dtype`` is what
    each unit is gathered and computed in.
    """
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype(train), reduce_dtype=DTYPES[train.strategy.reduce_dtype])
    names = set(model._no_split_modules or ())
    layers = [module for module in model.modules() if _is_decoder_layer(names, module)]
    if not layers:
        raise ConfigError(f"strategy=fsdp2: no decoder layers ({sorted(names)}) found in {type(model).__name__}")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
