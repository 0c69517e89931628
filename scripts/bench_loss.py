"""Benchmark the loss path: step time and peak memory of sft / dft / is, and DFT against TRL's SFTTrainer.

Everything runs in one process on one tiny Qwen2 model built from a config (Qwen's vocabulary of
151,936, hidden 128, 2 layers; never downloaded) and random token batches whose prompt part is masked
and whose rows are right-padded. Only ratios between measurements taken in this process are meant to
be compared; nothing here asserts a timing.

1. Loss variants, each a forward + loss + backward of the whole model on the same batch:
   ``sft``, ``dft`` and ``is`` (``label_logprobs`` with full logits + ``weighted_loss``; ``is`` with
   synthetic behaviour log-probs, clip max 5, rows from self / guided / expert), ``naive-dft`` (the
   DFT reference code: per-token cross-entropy times a weight read from a full softmax over the
   vocabulary) and ``chunked-dft`` (``label_logprobs`` with a chunked lm head). Reported: the median
   step time, the peak memory of the loss path alone (lm head, log-probs, loss and their backward,
   from fixed final hidden states) and of the whole step.
2. mindgap's training step (``label_logprobs`` + ``weighted_loss(dft)`` + importance-weight sums +
   clipped AdamW step) against TRL's ``SFTTrainer(loss_type="dft")`` on the same model, batches,
   batch size, optimiser and schedule: loss tokens per second and peak memory of a step. TRL's steps
   are timed by a callback, and our loops advance one step inside that callback after each of TRL's
   steps, so all trainers alternate step by step under the same machine load.

Timings are medians; each ratio is the median of ratios between measurements taken next to each
other. Peak memory is what a step allocates beyond what was allocated when it started: CUDA's
allocator counter on GPUs; on CPUs, which have none, the storages that operators return (see
``AllocationTracker``; a self-check validates it on known allocations before anything is measured).

    .venv/bin/python scripts/bench_loss.py --quick      # 2 x 128 tokens, under a minute on 2 cores
    .venv/bin/python scripts/bench_loss.py              # 4 x 1,024 tokens, the sizes issue 4 names
    .venv/bin/python scripts/bench_loss.py --device cuda --bf16
"""

from __future__ import annotations

import argparse
import copy
import gc
import random
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from mindgap.training.logits import label_logprobs
from mindgap.training.losses import IGNORE_INDEX, source_ids, weight_rules, weighted_loss
from mindgap.training.stats import WeightSums, weight_sums

QWEN_VOCAB_SIZE = 151_936
PAD_TOKEN_ID = 0
# The behaviour sources of the `is` rows, cycled over a batch's rows.
ROW_SOURCES = ("self", "guided", "expert")
IS_CLIP_MAX = 5.0
LEARNING_RATE = 1e-4
MIB = 2**20

# Targets of issue 4. Ratios are "this over the baseline": time, memory (lower is better), throughput.
TARGET_STEP_TIME_VS_SFT = 1.05
TARGET_LOSS_PEAK_VS_SFT = 1.05
TARGET_CHUNKED_PEAK_VS_NAIVE = 0.35
TARGET_CHUNKED_TOKENS = 4096
TARGET_THROUGHPUT_VS_TRL = 1.2
TARGET_PEAK_VS_TRL = 1.0


# --------------------------------------------------------------------------------------------------
# Peak memory


class AllocationTracker(TorchDispatchMode):
    """Live and peak bytes of the tensor storages that operators allocate while the mode is active.

    Every operator call, backward ones included (the autograd engine runs CPU work on the calling
    thread, inside the mode), passes through ``__torch_dispatch__``. An output whose storage is not
    one of the inputs' storages was allocated by that operator; its bytes stay live until the storage
    is freed, which ``weakref.finalize`` on the storage reports (PyTorch keeps a storage's Python
    object alive exactly as long as its data). Storages that existed before the mode (parameters,
    the batch) are never counted, so the peak is comparable to CUDA's ``max_memory_allocated`` minus
    the allocation at the start. Not seen: scratch memory a kernel allocates and frees internally,
    allocator rounding and fragmentation, and Python objects.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._sizes: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        outputs = func(*args, **kwargs)
        input_storages = {_storage_key(tensor) for tensor in tree_leaves((args, kwargs)) if _has_storage(tensor)}
        for tensor in tree_leaves(outputs):
            if _has_storage(tensor):
                self._record(tensor.untyped_storage(), input_storages)
        return outputs

    def _record(self, storage: torch.UntypedStorage, input_storages: set[int]) -> None:
        key, size = storage._cdata, storage.nbytes()
        if key in self._sizes:  # an in-place or out= operator may have resized a storage allocated here
            self.live_bytes += size - self._sizes[key]
            self._sizes[key] = size
        elif key not in input_storages and size > 0:  # else a view or the result of an in-place operator
            self._sizes[key] = size
            self.live_bytes += size
            weakref.finalize(storage, self._release, key)
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)

    def _release(self, key: int) -> None:
        self.live_bytes -= self._sizes.pop(key, 0)


def _has_storage(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type != "meta"


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


class PeakMemory:
    """Peak bytes allocated between ``start()`` and ``stop()`` beyond those allocated at ``start()``.

    CUDA: the caching allocator's counters. CPU: an :class:`AllocationTracker`. Usable as a context
    manager, or started and stopped from two callbacks.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes = 0
        self._tracker: AllocationTracker | None = None
        self._baseline = 0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        else:
            self._tracker = AllocationTracker()
            self._tracker.__enter__()

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        else:
            assert self._tracker is not None
            self._tracker.__exit__(None, None, None)
            self.peak_bytes = self._tracker.peak_bytes
        return self.peak_bytes

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def check_allocation_tracker() -> str:
    """Validate the tracker on allocations of known size (also on CUDA runs: it is the CPU method)."""
    known_bytes = 3 * MIB
    weight = torch.nn.Parameter(torch.randn(256, 128))
    inputs = torch.randn(512, 256, requires_grad=True)
    with AllocationTracker() as tracker:
        block = torch.empty(known_bytes, dtype=torch.uint8)
        block_view = block.view(3, -1)
        weight_view = weight.t()  # a view of a storage from before the mode: never counted
        after_allocation = tracker.live_bytes
        del block, block_view, weight_view
        after_free = tracker.live_bytes
        output = (inputs @ weight).relu().sum()
        output.backward()
        del output
        after_backward = tracker.live_bytes
    gradient_bytes = inputs.grad.nbytes + weight.grad.nbytes
    problems = []
    if tracker.peak_bytes < known_bytes or after_allocation != known_bytes or after_free != 0:
        problems.append(f"a {known_bytes} B tensor read as {after_allocation} B live, {after_free} B after its free")
    if after_backward != gradient_bytes:
        problems.append(f"backward left {after_backward} B live, the gradients hold {gradient_bytes} B")
    if problems:
        raise RuntimeError("the allocation tracker is wrong: " + "; ".join(problems))
    return (
        f"allocation tracker: a {known_bytes / MIB:.0f} MiB tensor reads {after_allocation / MIB:.3f} MiB and 0 after"
        f" its free, views add nothing; backward's gradients ({gradient_bytes / MIB:.3f} MiB) are seen"
    )


# --------------------------------------------------------------------------------------------------
# Model and data


def tiny_qwen_config(vocab_size: int, max_positions: int) -> Qwen2Config:
    # Head dim 64 like real Qwen2 models; an untied lm head like Qwen2.5-7B.
    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=2,
        intermediate_size=384,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )


@dataclass(frozen=True)
class TokenSequence:
    token_ids: list[int]
    prompt_length: int


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 on prompt and padding
    behavior_logprobs: torch.Tensor  # aligned with input_ids, like mindgap's collated batches
    sources: tuple[str, ...]
    loss_tokens: int  # positions with a next-token label

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.behavior_logprobs.to(device),
            self.sources,
            self.loss_tokens,
        )


def make_sequences(count: int, batch_size: int, seq_len: int, vocab_size: int, seed: int) -> list[TokenSequence]:
    """Random token sequences; the first row of every batch is ``seq_len`` long, so padded batches are too."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for index in range(count):
        length = seq_len if index % batch_size == 0 else rng.randint(3 * seq_len // 4, seq_len)
        prompt_length = rng.randint(length // 8, length // 4)
        # Ids from 2 up: 0 pads and 1 is the tokenizer's unknown token in the TRL run.
        token_ids = torch.randint(2, vocab_size, (length,), generator=generator).tolist()
        sequences.append(TokenSequence(token_ids, prompt_length))
    return sequences


def collate(sequences: list[TokenSequence], vocab_size: int, seed: int) -> Batch:
    """Right-padded to the longest row, as TRL's collator pads; the completion is the only loss part."""
    width = max(len(sequence.token_ids) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, sequence in enumerate(sequences):
        length = len(sequence.token_ids)
        input_ids[row, :length] = torch.tensor(sequence.token_ids)
        attention_mask[row, :length] = 1
        labels[row, sequence.prompt_length : length] = input_ids[row, sequence.prompt_length : length]
    # Synthetic finite behaviour log-probs around those of a uniform model (the untrained one is
    # close to uniform), so importance weights spread around 1 and a few exceed the clip.
    generator = torch.Generator().manual_seed(seed)
    behavior = -torch.log(torch.tensor(float(vocab_size))) + torch.randn(input_ids.shape, generator=generator)
    sources = tuple(ROW_SOURCES[row % len(ROW_SOURCES)] for row in range(len(sequences)))
    loss_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return Batch(input_ids, attention_mask, labels, behavior, sources, loss_tokens)


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


# --------------------------------------------------------------------------------------------------
# Loss variants


def mindgap_loss(model: torch.nn.Module, batch: Batch, loss_name: str, chunk_size: int | None) -> torch.Tensor:
    """The loss of mindgap's training step (FineTuningModule.training_step), for one micro-batch."""
    logprobs, mask = label_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels, chunk_size)
    rules = weight_rules(loss_name, source_ids(batch.sources, device=logprobs.device), "uniform")
    return weighted_loss(
        logprobs,
        mask,
        rules,
        batch.behavior_logprobs[:, 1:],
        num_step_tokens=batch.loss_tokens,
        clip_max=IS_CLIP_MAX if loss_name == "is" else None,
    ).loss


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
    return [
        LossVariant("sft", lambda model, batch: mindgap_loss(model, batch, "sft", None)),
        LossVariant("dft", lambda model, batch: mindgap_loss(model, batch, "dft", None)),
        LossVariant("is", lambda model, batch: mindgap_loss(model, batch, "is", None)),
        LossVariant("naive-dft", naive_dft_loss),
        LossVariant("chunked-dft", lambda model, batch: mindgap_loss(model, batch, "dft", chunk_size)),
    ]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        synchronize(device)
        started = time.perf_counter()
        with autocast_context(device, bf16):
            loss = variant.compute(model, batch)
        loss.backward()
        synchronize(device)
        elapsed = time.perf_counter() - started
        results[variant.name].loss = loss.item()
        return elapsed

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
        # A different variant goes first each round, so drift in the machine's load spreads evenly.
        shift = repeat % len(variants)
        round_seconds = {variant.name: step(variant) for variant in variants[shift:] + variants[:shift]}
        for name, seconds in round_seconds.items():
            results[name].step_seconds.append(seconds)
            results[name].step_ratio_to_sft.append(seconds / round_seconds["sft"])
    model.zero_grad(set_to_none=True)
    return results


# --------------------------------------------------------------------------------------------------
# mindgap's training loop against TRL's SFTTrainer


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
        device = batch.input_ids.device
        with autocast_context(device, self.bf16):
            logprobs, mask = label_logprobs(
                self.model, batch.input_ids, batch.attention_mask, batch.labels, self.chunk_size
            )
        sources = source_ids(batch.sources, device=logprobs.device)
        rules = weight_rules("dft", sources)
        result = weighted_loss(
            logprobs,
            mask,
            rules,
            batch.behavior_logprobs[:, 1:],
            num_step_tokens=batch.loss_tokens,
        )
        # What the module does besides the loss each step: a finiteness check and the importance-weight sums.
        if not torch.isfinite(result.loss):
            raise RuntimeError(f"non-finite loss {result.loss.item()}")
        self.weight_sums = WeightSums.zeros(device).merge(
            weight_sums(result.weights, result.log_ratio, result.clipped, mask, sources, rules)
        )
        result.loss.backward()
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
        synchronize(device)
        started = time.perf_counter()
        self.step(batch)
        synchronize(device)
        if phase == "timed":
            self.result.step_seconds[index] = time.perf_counter() - started


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


def compare_with_trl(
    template: Qwen2ForCausalLM,
    sequences: list[TokenSequence],
    batch_size: int,
    seq_len: int,
    chunk_size: int,
    timed_steps: int,
    device: torch.device,
    bf16: bool,
    seed: int,
) -> TrlComparison:
    import datasets
    import transformers
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    phases = step_phases(timed_steps)
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
            max_length=seq_len,
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
            MindgapLoop(
                "mindgap dft, full logits",
                copy.deepcopy(template).to(device),
                None,
                make_optimizer,
                config.max_grad_norm,
                bf16,
            ),
            MindgapLoop(
                f"mindgap dft, chunked lm head ({chunk_size})",
                copy.deepcopy(template).to(device),
                chunk_size,
                make_optimizer,
                config.max_grad_norm,
                bf16,
            ),
        ]

        # Apples to apples: TRL's first batch is ours, and both compute the same DFT loss on it.
        trl_batch = next(iter(trainer.get_train_dataloader()))
        for key in ("input_ids", "attention_mask", "labels"):
            if not torch.equal(trl_batch[key].to(device), getattr(batches[0], key)):
                raise RuntimeError(f"TRL's first batch differs from ours in {key}")
        with torch.no_grad(), autocast_context(device, bf16):
            first_loss_trl = trainer.compute_loss(trainer.model, trainer._prepare_inputs(dict(trl_batch))).item()
            first_loss_ours = mindgap_loss(loops[0].model, batches[0], "dft", None).item()

        trl_result = TrainerResult("TRL SFTTrainer, loss_type=dft")

        class InterleavedSteps(TrainerCallback):
            """Times TRL's steps; after each, advances each of our loops by one step on the same batch."""

            def __init__(self) -> None:
                self.index = 0
                self.started = 0.0
                self.peak: PeakMemory | None = None

            def on_step_begin(self, args, state, control, **kwargs):
                gc.collect()
                if phases[self.index] == "memory":
                    self.peak = PeakMemory(device)
                    self.peak.start()
                synchronize(device)
                self.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                synchronize(device)
                elapsed = time.perf_counter() - self.started
                phase = phases[self.index]
                if phase == "memory":
                    assert self.peak is not None
                    trl_result.peak_bytes = self.peak.stop()
                elif phase == "timed":
                    trl_result.step_seconds[self.index] = elapsed
                for loop in loops:
                    loop.run_step(self.index, batches[self.index], phase)
                self.index += 1

        gc.freeze()  # TRL's modules and the trainer too (see frozen_heap, which undoes it)
        trainer.add_callback(InterleavedSteps())
        trainer.remove_callback(PrinterCallback)  # it prints the end-of-training metrics even with logging off
        trainer.train()

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


# --------------------------------------------------------------------------------------------------
# Report


def mib(size: int) -> str:
    return f"{size / MIB:,.1f}"


def ratio(value: float) -> str:
    return f"{value:.3f}x"


def spread(ratios: list[float]) -> str:
    """The range of the ratios behind a median: how much the machine's load moved them."""
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def verdict(value: float, target: float, higher_is_better: bool = False) -> str:
    met = value >= target if higher_is_better else value <= target
    return "[green]met[/green]" if met else "[red]not met[/red]"


def print_variants(
    console: Console, results: dict[str, VariantResult], batch: Batch, chunk_size: int, repeats: int
) -> None:
    sft, naive = results["sft"], results["naive-dft"]
    tokens = batch.input_ids.numel()
    table = Table(
        title=f"Loss variants: forward + loss + backward, {batch.input_ids.shape[0]} x {batch.input_ids.shape[1]}"
        f" = {tokens:,} tokens ({batch.loss_tokens:,} loss tokens); step time median of {repeats}",
        title_justify="left",
    )
    headers = (
        "variant",
        "ms/step",
        "x sft",
        "(range)",
        "loss-path peak MiB",
        "x sft",
        "x naive",
        "step peak MiB",
        "x sft",
    )
    for header in headers:
        table.add_column(header, justify="left" if header == "variant" else "right")
    for name, result in results.items():
        table.add_row(
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
    console.print(table)
    console.print(
        "losses on this batch: " + ", ".join(f"{name} {result.loss:.6g}" for name, result in results.items()),
        highlight=False,
    )

    checks = Table(title="Targets (issue 4)", title_justify="left")
    for header in ("check", "target", "measured", ""):
        checks.add_column(header)
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


def print_trl(console: Console, comparison: TrlComparison, batch_size: int) -> None:
    def tokens_per_second(result: TrainerResult) -> float:
        return statistics.median(comparison.loss_tokens[i] / seconds for i, seconds in result.step_seconds.items())

    trl = comparison.trl
    steps = len(trl.step_seconds)
    table = Table(
        title=f"DFT training steps against TRL: batch {batch_size}, {steps} timed optimiser steps (median)"
        ", each trainer on the same batches in turn",
        title_justify="left",
    )
    for header in ("trainer", "loss tokens/s", "x TRL", "(range)", "step peak MiB", "x TRL"):
        table.add_column(header, justify="left" if header == "trainer" else "right")
    table.add_row(trl.name, f"{tokens_per_second(trl):,.0f}", ratio(1.0), "", mib(trl.peak_bytes), ratio(1.0))
    checks = Table(title="Targets against TRL (issue 4)", title_justify="left")
    for header in ("trainer", "throughput target", "measured", "", "memory target", "measured", ""):
        checks.add_column(header)
    for result in comparison.ours:
        speedups = [trl.step_seconds[i] / result.step_seconds[i] for i in trl.step_seconds]
        speedup = statistics.median(speedups)
        memory = result.peak_bytes / trl.peak_bytes
        table.add_row(
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
    console.print(table)
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


# --------------------------------------------------------------------------------------------------


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects alive now (modules, models) out of the garbage collector's sight meanwhile.

    transformers and TRL make a large heap: the collection before each measured step then takes
    milliseconds instead of a fifth of a second. Undone at the end, so that the collection at exit
    still finds what extension modules left behind.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 x 128 tokens, 2 repeats (under a minute on 2 cores)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per batch (default 4; quick 2)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024; quick 128)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant / trainer (default 3)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="loss tokens per lm-head chunk (chunked-dft)")
    parser.add_argument("--vocab-size", type=int, default=QWEN_VOCAB_SIZE)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights), for every trainer")
    parser.add_argument("--skip-trl", action="store_true", help="only the loss variants")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    batch_size = args.batch or (2 if args.quick else 4)
    seq_len = args.seq_len or (128 if args.quick else 1024)
    repeats = args.repeats or (2 if args.quick else 3)
    if min(batch_size, seq_len, repeats, args.chunk_size) < 1 or seq_len < 8:
        parser.error("--batch, --repeats and --chunk-size must be >= 1, --seq-len >= 8")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)

    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(check_allocation_tracker(), highlight=False)
    torch.manual_seed(args.seed)
    template = Qwen2ForCausalLM(tiny_qwen_config(args.vocab_size, seq_len))
    parameters = sum(parameter.numel() for parameter in template.parameters())
    memory_method = "CUDA allocator" if device.type == "cuda" else "allocation tracker"
    console.print(
        f"model: Qwen2, vocab {args.vocab_size:,}, hidden 128, 2 layers, {parameters / 1e6:.1f}M parameters;"
        f" device {args.device}, {'bf16 autocast' if args.bf16 else 'fp32'}, {torch.get_num_threads()} threads;"
        f" memory: {memory_method}",
        highlight=False,
    )
    steps = len(step_phases(repeats))
    sequences = make_sequences(batch_size * steps, batch_size, seq_len, args.vocab_size, args.seed)
    batch = collate(sequences[:batch_size], args.vocab_size, args.seed).to(device)

    with frozen_heap():
        model = copy.deepcopy(template).to(device)
        results = measure_variants(model, batch, loss_variants(args.chunk_size), repeats, args.bf16)
        print_variants(console, results, batch, args.chunk_size, repeats)
        del model
        if not args.skip_trl:
            comparison = compare_with_trl(
                template, sequences, batch_size, seq_len, args.chunk_size, repeats, device, args.bf16, args.seed
            )
            print_trl(console, comparison, batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
