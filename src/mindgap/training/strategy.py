"""Lightning strategies from ``train.strategy``, and the FSDP2 sharding they apply to the model."""

from __future__ import annotations

import functools

import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from mindgap.config import StrategyConfig
from mindgap.errors import ConfigError
from mindgap.models import ModelSource, load_model_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def uses_gpu(config: StrategyConfig) -> bool:
    if config.accelerator == "auto":
        return torch.cuda.is_available()
    return config.accelerator == "gpu"


def param_dtype(config: StrategyConfig) -> torch.dtype:
    if config.param_dtype == "auto":
        return torch.bfloat16 if uses_gpu(config) else torch.float32
    return DTYPES[config.param_dtype]


def decoder_layer_names(model: ModelSource) -> set[str]:
    """Class names of the model's repeated blocks (transformers' ``_no_split_modules``): the units of sharding."""
    model_config = load_model_config(model)
    return set(MODEL_FOR_CAUSAL_LM_MAPPING[type(model_config)]._no_split_modules)


def _is_decoder_layer(names: set[str], module: torch.nn.Module) -> bool:
    return type(module).__name__ in names


def build_strategy(config: StrategyConfig, model: ModelSource) -> str | Strategy:
    """The Trainer's ``strategy`` argument."""
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
            param_dtype=param_dtype(config),
            reduce_dtype=DTYPES[config.reduce_dtype],
            buffer_dtype=param_dtype(config),
        ),
        sharding_strategy="FULL_SHARD",
        state_dict_type="sharded",
    )


def shard_model(model: torch.nn.Module, mesh, config: StrategyConfig) -> None:
    """FSDP2: one ``fully_shard`` unit per decoder layer, then the root (embeddings, norm, lm head)."""
    policy = MixedPrecisionPolicy(param_dtype=param_dtype(config), reduce_dtype=DTYPES[config.reduce_dtype])
    names = set(model._no_split_modules or ())
    layers = [module for module in model.modules() if _is_decoder_layer(names, module)]
    if not layers:
        raise ConfigError(f"strategy=fsdp2: no decoder layers ({sorted(names)}) found in {type(model).__name__}")
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
