"""Training throughput of the loss family on a real architecture: tokens/s, MFU, peak memory, FSDP2 vs single.

One process, one device. The model is a Qwen2.5 architecture (tests/gpu/configs/*.json) with random
weights and the tiny model's tokenizer; batches are random ids with a masked prompt
(``mindgap.measurement.batches``). Each variant runs warm-up steps, then timed optimiser steps
(forward, loss, backward, AdamW), alternating variant by variant so that all see the same machine:

- ``sft``, ``dft``, ``is`` on the unsharded model (bf16 autocast on GPU, fp32 on CPU);
- ``dft`` under FSDP2, sharded by ``strategy=fsdp2``'s own ``shard_model`` (one rank, bf16
  parameters and fp32 gradient reduction on GPU).

MFU counts 6 x parameters x tokens per step (attention's quadratic term left out) against
``--peak-tflops`` (790 TFLOP/s: one H200's dense bf16). Peak memory is the CUDA allocator's
(``max_memory_allocated``); CPU runs print none. Writes one JSON (``--out``); nothing asserts a timing.

    python scripts/bench_train.py --out bench_train.json                      # GPU, Qwen2.5-0.5B
    python scripts/bench_train.py --config qwen2.5-1.5b --rows 4 --length 2048
    python scripts/bench_train.py --dry-run --out /tmp/b.json                 # CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.distributed.device_mesh import init_device_mesh

from mindgap.measurement.batches import Batch, collate, make_sequences, step_loss
from mindgap.measurement.timing import Stopwatch
from mindgap.models.config import TinyModelConfig
from mindgap.models.loading import load_causal_lm
from mindgap.models.tiny import build_from_config_file, build_tiny_model
from mindgap.paths import PROJECT_ROOT
from mindgap.training.config import StrategyConfig, TrainConfig
from mindgap.training.strategy import shard_model

CONFIGS = PROJECT_ROOT / "tests" / "gpu" / "configs"
DATA_ROOT = os.environ.get("MINDGAP_DATA_ROOT") or str(PROJECT_ROOT.parent / "shared" / "data")
# A dry run's architecture: Qwen2.5-0.5B's layout, shrunk to run in seconds on 2 CPU cores.
DRY_RUN_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 2048,
    "tie_word_embeddings": True,
}


class Variant:
    def __init__(self, name: str, loss: str, model: torch.nn.Module, device: torch.device, bf16: bool):
        self.name, self.loss, self.model, self.device, self.bf16 = name, loss, model, device, bf16
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
        self.watch = Stopwatch(device)
        self.peak = 0

    def step(self, batch: Batch, timed: bool) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with self.watch if timed else Stopwatch(self.device):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = step_loss(self.model, batch, self.loss)
            loss.result.loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            # The whole footprint (weights, optimiser state, activations), not the growth over the step.
            self.peak = max(self.peak, torch.cuda.max_memory_allocated())


def _fsdp2(model: torch.nn.Module, device: torch.device, bf16: bool) -> torch.nn.Module:
    """The model sharded as ``strategy=fsdp2`` shards it, on a one-rank process group."""
    if not torch.distributed.is_initialized():
        store = Path(tempfile.mkdtemp()) / "store"
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)
    train = TrainConfig(
        precision="bf16-mixed" if bf16 else "32-true",
        strategy=StrategyConfig(name="fsdp2", accelerator="gpu" if device.type == "cuda" else "cpu"),
    )
    shard_model(model, init_device_mesh(device.type, (1,)), train)
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="qwen2.5-0.5b", help="tests/gpu/configs/<name>.json")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--dry-run", action="store_true", help="CPU, a tiny Qwen2 layout, 2 steps")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    bf16 = device.type == "cuda"
    cache = os.environ.get("MINDGAP_CACHE_DIR") or str(Path.home() / ".cache" / "mindgap")
    tokenizer_dir = str(build_tiny_model(TinyModelConfig(), cache, DATA_ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        if args.dry_run:
            config_file = Path(tmp) / "dry-run.json"
            config_file.write_text(json.dumps(DRY_RUN_CONFIG))
            args.rows, args.length, args.steps, args.warmup = 2, 64, 2, 1
        else:
            config_file = CONFIGS / f"{args.config}.json"
        path = str(build_from_config_file(config_file, tokenizer_dir, cache))
    variants = [Variant(loss, loss, load_causal_lm(path).to(device), device, bf16) for loss in ("sft", "dft", "is")]
    variants.append(Variant("fsdp2-dft", "dft", _fsdp2(load_causal_lm(path).to(device), device, bf16), device, bf16))
    parameters = sum(p.numel() for p in variants[0].model.parameters())
    vocab_size = variants[0].model.config.vocab_size
    sequences = make_sequences(args.rows, args.rows, args.length, vocab_size, seed=0, ragged=False)
    batch = collate(sequences, vocab_size, seed=0).to(device)
    tokens = batch.loss_tokens
    for index in range(args.warmup + args.steps):
        for variant in variants:
            variant.step(batch, timed=index >= args.warmup)
    sft_time = variants[0].watch.median
    single_dft = variants[1].watch.median
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": "bf16-mixed" if bf16 else "float32",
        "config": "dry-run" if args.dry_run else args.config,
        "parameters": parameters,
        "rows": args.rows,
        "length": args.length,
        "loss_tokens_per_step": tokens,
        "variants": {},
    }
    for variant in variants:
        seconds = variant.watch.median
        throughput = args.rows * args.length / seconds
        report["variants"][variant.name] = {
            "step_s": seconds,
            "tokens_per_s": throughput,
            "mfu": 6 * parameters * throughput / (args.peak_tflops * 1e12),
            "peak_memory_gib": variant.peak / 2**30 if device.type == "cuda" else None,
            "step_time_vs_sft": seconds / sft_time,
        }
    report["fsdp2_vs_single_dft"] = variants[3].watch.median / single_dft
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
