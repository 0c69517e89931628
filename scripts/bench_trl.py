"""Benchmark mindgap's DFT training step against TRL's ``SFTTrainer(loss_type="dft")``: throughput, memory, same result.

One process, one tiny Qwen2 model built from a config (Qwen's vocabulary of 151,936, hidden 128,
2 layers; never downloaded), random right-padded token batches with a masked prompt
(``mindgap.measurement.batches``). mindgap's step (``label_logprobs`` + ``weighted_loss(dft)`` +
importance-weight sums + clipped AdamW step), with full logits and with the chunked lm head, runs on
the same model, batches, batch size, optimiser and schedule as TRL. TRL's steps are timed by a
callback, and our loops advance one step inside that callback after each of TRL's steps, so all
trainers alternate step by step under the same machine load. Reported: loss tokens per second
(median of the timed steps; each ratio the median of per-step ratios), the peak memory of a step
(``mindgap.measurement.memory.PeakMemory``), the first batch's loss under both, and the largest
weight difference to TRL's model after all steps. Nothing here asserts a timing.

    .venv/bin/python scripts/bench_trl.py --quick      # 2 x 128 tokens, under a minute on 2 cores
    .venv/bin/python scripts/bench_trl.py              # 4 x 1,024 tokens
    .venv/bin/python scripts/bench_trl.py --device cuda --bf16
"""

from __future__ import annotations

import copy
import gc
import statistics
import sys
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from transformers import Qwen2ForCausalLM

from mindgap.measurement.batches import (
    PAD_TOKEN_ID,
    Batch,
    BatchShape,
    TokenSequence,
    collate,
    step_loss,
)
from mindgap.measurement.memory import PeakMemory
from mindgap.measurement.report import console as make_console
from mindgap.measurement.report import mib, ratio, spread, table, verdict
from mindgap.measurement.timing import Stopwatch, frozen_heap, synchronize
from mindgap.training.stats import WeightSums

LEARNING_RATE = 1e-4
# Targets of issue 4: throughput over TRL's (higher is better), peak memory over TRL's (lower is better).
TARGET_THROUGHPUT_VS_TRL = 1.2
TARGET_PEAK_VS_TRL = 1.0


def autocast_context(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@dataclass
class TrainerResult:
    name: str
    step_seconds: dict[int, float] = field(default_factory=dict)  # timed step index -> seconds
    peak_bytes: int = 0


class MindgapLoop:
    """Optimiser steps as mindgap's FineTuningModule takes them, with the optimiser and schedule of TRL's run."""

    def __init__(
        self,
        name: str,
        model: Qwen2ForCausalLM,
        chunk_size: int | None,
        make_optimizer: Callable[[torch.nn.Module], tuple[torch.optim.Optimizer, Any]],
        max_grad_norm: float,
        bf16: bool,
    ) -> None:
        self.model = model
        self.chunk_size = chunk_size
        self.optimizer, self.scheduler = make_optimizer(model)
        self.max_grad_norm = max_grad_norm
        self.bf16 = bf16
        self.result = TrainerResult(name)
        self.weight_sums = WeightSums.zeros()

    def step(self, batch: Batch) -> None:
        with autocast_context(batch.input_ids.device, self.bf16):
            loss = step_loss(self.model, batch, "dft", self.chunk_size)
        # What the module does besides the loss each step: a finiteness check and the importance-weight sums.
        if not torch.isfinite(loss.result.loss):
            raise RuntimeError(f"non-finite loss {loss.result.loss.item()}")
        self.weight_sums = WeightSums.zeros(batch.input_ids.device).merge(loss.weight_sums())
        loss.result.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.model.zero_grad(set_to_none=True)

    def run_step(self, index: int, batch: Batch, phase: str) -> None:
        device = batch.input_ids.device
        gc.collect()
        if phase == "memory":
            with PeakMemory(device) as peak:
                self.step(batch)
            self.result.peak_bytes = peak.peak_bytes
            return
        with Stopwatch(device) as watch:
            self.step(batch)
        if phase == "timed":
            self.result.step_seconds[index] = watch.last


def step_phases(timed_steps: int) -> list[str]:
    # The warm-up step also creates AdamW's state; memory is measured on a step that finds it there.
    return ["warm-up"] + ["timed"] * timed_steps + ["memory"]


@dataclass
class TrlComparison:
    trl: TrainerResult
    ours: list[TrainerResult]
    loss_tokens: dict[int, int]
    first_loss_ours: float
    first_loss_trl: float
    largest_weight_difference: dict[str, float]


def compare_with_trl(template: Qwen2ForCausalLM, sequences: list[TokenSequence], shape: BatchShape) -> TrlComparison:
    import datasets
    import transformers
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    batch_size, chunk_size, device, bf16, seed = (
        shape.batch_size,
        shape.chunk_size,
        shape.device,
        shape.bf16,
        shape.seed,
    )
    phases = step_phases(shape.repeats)
    vocab_size = template.config.vocab_size
    batches = [
        collate(sequences[index * batch_size : (index + 1) * batch_size], vocab_size, seed + index).to(device)
        for index in range(len(phases))
    ]
    # Pre-tokenised prompt-completion data: TRL folds completion_mask into labels (completion_only_loss).
    dataset = datasets.Dataset.from_dict(
        {
            "input_ids": [sequence.token_ids for sequence in sequences],
            "completion_mask": [
                [0] * sequence.prompt_length + [1] * (len(sequence.token_ids) - sequence.prompt_length)
                for sequence in sequences
            ],
        }
    )
    # SFTTrainer needs a tokenizer for its pad token only: the data are token ids already.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<pad>": PAD_TOKEN_ID, "<unk>": 1}, unk_token="<unk>")),
        pad_token="<pad>",
        unk_token="<unk>",
    )

    with tempfile.TemporaryDirectory() as output_dir:
        config = SFTConfig(
            output_dir=output_dir,
            loss_type="dft",
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=1,
            max_steps=len(phases),
            learning_rate=LEARNING_RATE,
            lr_scheduler_type="linear",
            warmup_steps=0,
            optim="adamw_torch",
            max_grad_norm=1.0,
            # SFTConfig turns these on by default; our loop uses neither, so neither does TRL here.
            gradient_checkpointing=False,
            bf16=bf16,
            max_length=shape.seq_len,
            packing=False,
            padding_free=False,
            completion_only_loss=True,
            train_sampling_strategy="sequential",
            dataloader_num_workers=0,
            seed=seed,
            use_cpu=device.type == "cpu",
            report_to=[],
            logging_strategy="no",
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=copy.deepcopy(template), args=config, train_dataset=dataset, processing_class=tokenizer
        )

        def make_optimizer(model: torch.nn.Module) -> tuple[torch.optim.Optimizer, Any]:
            optimizer = torch.optim.AdamW(
                model.parameters(),
                lr=config.learning_rate,
                betas=(config.adam_beta1, config.adam_beta2),
                eps=config.adam_epsilon,
                weight_decay=config.weight_decay,
            )
            total = len(phases)  # TRL's "linear" schedule without warm-up
            return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total))

        loops = [
            MindgapLoop(name, copy.deepcopy(template).to(device), chunk, make_optimizer, config.max_grad_norm, bf16)
            for name, chunk in (
                ("mindgap dft, full logits", None),
                (f"mindgap dft, chunked lm head ({chunk_size})", chunk_size),
            )
        ]

        # Apples to apples: TRL's first batch is ours, and both compute the same DFT loss on it.
        trl_batch = next(iter(trainer.get_train_dataloader()))
        for key in ("input_ids", "attention_mask", "labels"):
            if not torch.equal(trl_batch[key].to(device), getattr(batches[0], key)):
                raise RuntimeError(f"TRL's first batch differs from ours in {key}")
        with torch.no_grad(), autocast_context(device, bf16):
            first_loss_trl = trainer.compute_loss(trainer.model, trainer._prepare_inputs(dict(trl_batch))).item()
            first_loss_ours = step_loss(loops[0].model, batches[0], "dft").result.loss.item()

        trl_result = TrainerResult("TRL SFTTrainer, loss_type=dft")

        class InterleavedSteps(TrainerCallback):
            """Times TRL's steps; after each, advances each of our loops by one step on the same batch."""

            def __init__(self) -> None:
                self.index = 0
                self.watch = Stopwatch(device)
                self.peak: PeakMemory | None = None

            def on_step_begin(self, args, state, control, **kwargs):
                gc.collect()
                if phases[self.index] == "memory":
                    self.peak = PeakMemory(device)
                    self.peak.start()
                self.watch.__enter__()

            def on_step_end(self, args, state, control, **kwargs):
                self.watch.__exit__(None, None, None)
                phase = phases[self.index]
                if phase == "memory":
                    trl_result.peak_bytes = self.peak.stop()
                elif phase == "timed":
                    trl_result.step_seconds[self.index] = self.watch.last
                for loop in loops:
                    loop.run_step(self.index, batches[self.index], phase)
                self.index += 1

        gc.freeze()  # TRL's modules and the trainer too (the caller's frozen_heap undoes it)
        trainer.add_callback(InterleavedSteps())
        trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics even with logging off
        trainer.train()
        synchronize(device)

    trl_weights = dict(trainer.model.named_parameters())
    largest_weight_difference = {
        loop.result.name: max(
            (parameter - trl_weights[name]).abs().max().item() for name, parameter in loop.model.named_parameters()
        )
        for loop in loops
    }
    return TrlComparison(
        trl=trl_result,
        ours=[loop.result for loop in loops],
        loss_tokens={index: batch.loss_tokens for index, batch in enumerate(batches)},
        first_loss_ours=first_loss_ours,
        first_loss_trl=first_loss_trl,
        largest_weight_difference=largest_weight_difference,
    )


def print_trl(console: Console, comparison: TrlComparison, batch_size: int) -> None:
    def tokens_per_second(result: TrainerResult) -> float:
        return statistics.median(comparison.loss_tokens[i] / seconds for i, seconds in result.step_seconds.items())

    trl = comparison.trl
    steps = len(trl.step_seconds)
    trainers = table(
        f"DFT training steps against TRL: batch {batch_size}, {steps} timed optimiser steps (median)"
        ", each trainer on the same batches in turn",
        ["trainer", "loss tokens/s", "x TRL", "(range)", "step peak MiB", "x TRL"],
    )
    trainers.add_row(trl.name, f"{tokens_per_second(trl):,.0f}", ratio(1.0), "", mib(trl.peak_bytes), ratio(1.0))
    checks = table(
        "Targets against TRL (issue 4)",
        ["trainer", "throughput target", "measured", "", "memory target", "measured", ""],
    )
    for result in comparison.ours:
        speedups = [trl.step_seconds[i] / result.step_seconds[i] for i in trl.step_seconds]
        speedup = statistics.median(speedups)
        memory = result.peak_bytes / trl.peak_bytes
        trainers.add_row(
            result.name,
            f"{tokens_per_second(result):,.0f}",
            ratio(speedup),
            spread(speedups),
            mib(result.peak_bytes),
            ratio(memory),
        )
        checks.add_row(
            result.name,
            f">= {TARGET_THROUGHPUT_VS_TRL}x",
            ratio(speedup),
            verdict(speedup, TARGET_THROUGHPUT_VS_TRL, higher_is_better=True),
            f"<= {TARGET_PEAK_VS_TRL}x",
            ratio(memory),
            verdict(memory, TARGET_PEAK_VS_TRL),
        )
    console.print(trainers)
    difference = abs(comparison.first_loss_ours - comparison.first_loss_trl) / abs(comparison.first_loss_trl)
    console.print(
        f"same loss: DFT loss on the first batch, mindgap {comparison.first_loss_ours:.8g},"
        f" TRL {comparison.first_loss_trl:.8g} (relative difference {difference:.1e})",
        highlight=False,
    )
    console.print(
        "same training: after all steps, largest |weight difference| to TRL's model: "
        + ", ".join(f"{name} {value:.1e}" for name, value in comparison.largest_weight_difference.items()),
        highlight=False,
    )
    console.print(checks)


def main(argv: list[str] | None = None) -> int:
    shape = BatchShape.parse(__doc__.split("\n\n")[0], argv)
    console = make_console()
    template = shape.model()
    console.print(shape.describe(template), highlight=False)
    with frozen_heap():
        comparison = compare_with_trl(template, shape.sequences(len(step_phases(shape.repeats))), shape)
    print_trl(console, comparison, shape.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
