"""Benchmark the loss path: step time and peak memory of sft / dft / is against the naive DFT and a chunked head.

Everything runs in one process on one tiny Qwen2 model built from a config (Qwen's vocabulary of
151,936, hidden 128, 2 layers; never downloaded) and random token batches whose prompt part is masked
and whose rows are right-padded (``mindgap.measurement.batches``). Only ratios between measurements
taken in this process are meant to be compared; nothing here asserts a timing.

Each variant is a forward + loss + backward of the whole model on the same batch: ``sft``, ``dft``
and ``is`` (``label_logprobs`` with full logits + ``weighted_loss``; ``is`` with synthetic behaviour
log-probs, clip max 5, rows from self / guided / expert), ``naive-dft`` (the DFT reference code:
per-token cross-entropy times a weight read from a full softmax over the vocabulary) and
``chunked-dft`` (``label_logprobs`` with a chunked lm head). Reported: the median step time, the peak
memory of the loss path alone (lm head, log-probs, loss and their backward, from fixed final hidden
states) and of the whole step. Timings are medians; each ratio is the median of ratios between
measurements taken next to each other. Peak memory: ``mindgap.measurement.memory.PeakMemory`` (CUDA's
allocator counters, or on CPUs the storages operators return, validated on known allocations first).
``scripts/bench_trl.py`` compares the whole DFT training step with TRL's.

    .venv/bin/python scripts/bench_loss.py --quick      # 2 x 128 tokens, under a minute on 2 cores
    .venv/bin/python scripts/bench_loss.py              # 4 x 1,024 tokens, the sizes issue 4 names
    .venv/bin/python scripts/bench_loss.py --device cuda --bf16
"""

from __future__ import annotations

import gc
import statistics
import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from rich.console import Console
from transformers import Qwen2ForCausalLM
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mindgap.measurement.batches import Batch, BatchShape, collate, step_loss
from mindgap.measurement.memory import PeakMemory
from mindgap.measurement.report import console as make_console
from mindgap.measurement.report import mib, ratio, spread, table, verdict
from mindgap.measurement.timing import Stopwatch, frozen_heap, rotated
from mindgap.training.losses import IGNORE_INDEX

# Targets of issue 4. Ratios are "this over the baseline" (lower is better).
TARGET_STEP_TIME_VS_SFT = 1.05
TARGET_LOSS_PEAK_VS_SFT = 1.05
TARGET_CHUNKED_PEAK_VS_NAIVE = 0.35
TARGET_CHUNKED_TOKENS = 4096


class _FixedDecoder(torch.nn.Module):
    def __init__(self, hidden_states: torch.Tensor) -> None:
        super().__init__()
        self.hidden_states = hidden_states

    def forward(self, input_ids: torch.Tensor) -> BaseModelOutputWithPast:
        return BaseModelOutputWithPast(last_hidden_state=self.hidden_states)


class HeadOverHiddenStates(torch.nn.Module):
    """A causal LM's lm head over fixed final hidden states, with the interface ``label_logprobs`` uses.

    Calling the real loss code on it measures the loss path alone (lm head, log-probs, loss, and
    their backward into the hidden states and the head weight) without the decoder.
    """

    def __init__(self, model: Qwen2ForCausalLM, hidden_states: torch.Tensor) -> None:
        super().__init__()
        self.config = model.config
        self.lm_head = model.get_output_embeddings()
        self.decoder = _FixedDecoder(hidden_states)

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.lm_head

    def get_decoder(self) -> torch.nn.Module:
        return self.decoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int | torch.Tensor = 0
    ) -> CausalLMOutputWithPast:
        hidden_states = self.decoder(input_ids).last_hidden_state
        # Which positions get logits, as Qwen2ForCausalLM reads logits_to_keep.
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return CausalLMOutputWithPast(logits=self.lm_head(hidden_states[:, kept, :]))


def naive_dft_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """DFT as its reference code computes it: cross-entropy times p read from a full softmax."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    shift_logits = logits[:, :-1, :].contiguous().view(-1, logits.size(-1))
    shift_labels = batch.labels[:, 1:].contiguous().view(-1)
    per_token = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    probabilities = torch.softmax(shift_logits, dim=-1).gather(1, shift_labels.clamp(min=0)[:, None]).squeeze(1)
    return (per_token * probabilities.detach()).sum() / batch.loss_tokens


@dataclass(frozen=True)
class LossVariant:
    name: str
    compute: Callable[[torch.nn.Module, Batch], torch.Tensor]


def loss_variants(chunk_size: int) -> list[LossVariant]:
    def mindgap(loss: str, chunk: int | None) -> Callable[[torch.nn.Module, Batch], torch.Tensor]:
        return lambda model, batch: step_loss(model, batch, loss, chunk).result.loss

    return [
        LossVariant("sft", mindgap("sft", None)),
        LossVariant("dft", mindgap("dft", None)),
        LossVariant("is", mindgap("is", None)),
        LossVariant("naive-dft", naive_dft_loss),
        LossVariant("chunked-dft", mindgap("dft", chunk_size)),
    ]


def autocast_context(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


@dataclass
class VariantResult:
    step_seconds: list[float] = field(default_factory=list)
    step_ratio_to_sft: list[float] = field(default_factory=list)
    step_peak_bytes: int = 0
    loss_path_peak_bytes: int = 0
    loss: float = 0.0


def measure_variants(
    model: Qwen2ForCausalLM, batch: Batch, variants: list[LossVariant], repeats: int, bf16: bool
) -> dict[str, VariantResult]:
    device = batch.input_ids.device
    results = {variant.name: VariantResult() for variant in variants}

    def step(variant: LossVariant) -> float:
        model.zero_grad(set_to_none=True)
        gc.collect()
        with Stopwatch(device) as watch:
            with autocast_context(device, bf16):
                loss = variant.compute(model, batch)
            loss.backward()
        results[variant.name].loss = loss.item()
        return watch.last

    if device.type == "cuda":
        # The first calls allocate library workspaces (cuBLAS) through the allocator, which would
        # count towards the peak of whichever variant is measured first.
        for variant in variants:
            step(variant)
    # Loss path alone: the real loss code over fixed final hidden states (see HeadOverHiddenStates).
    with torch.no_grad(), autocast_context(device, bf16):
        hidden_states = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for variant in variants:
        head = HeadOverHiddenStates(model, hidden_states.last_hidden_state.detach().requires_grad_())
        model.zero_grad(set_to_none=True)
        gc.collect()
        with PeakMemory(device) as peak, autocast_context(device, bf16):
            variant.compute(head, batch).backward()
        results[variant.name].loss_path_peak_bytes = peak.peak_bytes
        del head

    # The whole step. Its first run per variant measures memory and warms up (allocator, kernels).
    for variant in variants:
        with PeakMemory(device) as peak:
            step(variant)
        results[variant.name].step_peak_bytes = peak.peak_bytes
    for repeat in range(repeats):
        round_seconds = {variant.name: step(variant) for variant in rotated(variants, repeat)}
        for name, seconds in round_seconds.items():
            results[name].step_seconds.append(seconds)
            results[name].step_ratio_to_sft.append(seconds / round_seconds["sft"])
    model.zero_grad(set_to_none=True)
    return results


def print_variants(
    console: Console, results: dict[str, VariantResult], batch: Batch, chunk_size: int, repeats: int
) -> None:
    sft, naive = results["sft"], results["naive-dft"]
    tokens = batch.input_ids.numel()
    variants = table(
        f"Loss variants: forward + loss + backward, {batch.input_ids.shape[0]} x {batch.input_ids.shape[1]}"
        f" = {tokens:,} tokens ({batch.loss_tokens:,} loss tokens); step time median of {repeats}",
        ["variant", "ms/step", "x sft", "(range)", "loss-path peak MiB", "x sft", "x naive", "step peak MiB", "x sft"],
    )
    for name, result in results.items():
        variants.add_row(
            f"{name} ({chunk_size})" if name == "chunked-dft" else name,
            f"{statistics.median(result.step_seconds) * 1000:,.0f}",
            ratio(statistics.median(result.step_ratio_to_sft)),
            spread(result.step_ratio_to_sft),
            mib(result.loss_path_peak_bytes),
            ratio(result.loss_path_peak_bytes / sft.loss_path_peak_bytes),
            ratio(result.loss_path_peak_bytes / naive.loss_path_peak_bytes),
            mib(result.step_peak_bytes),
            ratio(result.step_peak_bytes / sft.step_peak_bytes),
        )
    console.print(variants)
    console.print(
        "losses on this batch: " + ", ".join(f"{name} {result.loss:.6g}" for name, result in results.items()),
        highlight=False,
    )

    checks = table("Targets (issue 4)", ["check", "target", "measured", ""])
    for name in ("dft", "is"):
        measured = statistics.median(results[name].step_ratio_to_sft)
        checks.add_row(
            f"{name} step time / sft",
            f"<= {TARGET_STEP_TIME_VS_SFT}x",
            ratio(measured),
            verdict(measured, TARGET_STEP_TIME_VS_SFT),
        )
    for name in ("dft", "is"):
        measured = results[name].loss_path_peak_bytes / sft.loss_path_peak_bytes
        checks.add_row(
            f"{name} loss-path peak / sft",
            f"<= {TARGET_LOSS_PEAK_VS_SFT}x",
            ratio(measured),
            verdict(measured, TARGET_LOSS_PEAK_VS_SFT),
        )
    measured = results["chunked-dft"].loss_path_peak_bytes / naive.loss_path_peak_bytes
    note = "" if tokens == TARGET_CHUNKED_TOKENS else f" (a target at {TARGET_CHUNKED_TOKENS:,} tokens)"
    checks.add_row(
        "chunked-dft loss-path peak / naive-dft" + note,
        f"<= {TARGET_CHUNKED_PEAK_VS_NAIVE}x",
        ratio(measured),
        verdict(measured, TARGET_CHUNKED_PEAK_VS_NAIVE),
    )
    console.print(checks)


def main(argv: list[str] | None = None) -> int:
    shape = BatchShape.parse(__doc__.split("\n\n")[0], argv)
    console = make_console()
    model = shape.model().to(shape.device)
    console.print(shape.describe(model), highlight=False)
    batch = collate(shape.sequences(1), shape.vocab_size, shape.seed).to(shape.device)
    with frozen_heap():
        results = measure_variants(model, batch, loss_variants(shape.chunk_size), shape.repeats, shape.bf16)
    print_variants(console, results, batch, shape.chunk_size, shape.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
