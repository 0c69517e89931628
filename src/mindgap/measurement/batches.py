"""Synthetic training batches and the loss of mindgap's training step on them, for the training benchmarks.

Random token ids with a masked prompt, right-padded as TRL's collator pads, with behaviour log-probs
and sources the way mindgap's collated batches carry them; and a tiny Qwen2 architecture with the
real vocabulary, where the lm head dominates as it does in real models.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mindgap.measurement.memory import check_allocation_tracker
from mindgap.training.logits import label_logprobs
from mindgap.training.losses import IGNORE_INDEX, WeightedLoss, source_ids, weight_rules, weighted_loss
from mindgap.training.stats import WeightSums, weight_sums

QWEN_VOCAB_SIZE = 151_936
PAD_TOKEN_ID = 0
# The behaviour sources of the rows, cycled over a batch's rows.
ROW_SOURCES = ("self", "guided", "expert")
IS_CLIP_MAX = 5.0


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


def make_sequences(
    count: int, batch_size: int, seq_len: int, vocab_size: int, seed: int, ragged: bool = True
) -> list[TokenSequence]:
    """Random token sequences, the prompt an eighth to a quarter of each.

    ``ragged``: rows of 3/4 to all of ``seq_len`` tokens, the first row of every batch ``seq_len``
    long, so that every batch is padded to ``seq_len``; else every row is ``seq_len`` long.
    """
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    sequences = []
    for index in range(count):
        length = rng.randint(3 * seq_len // 4, seq_len) if ragged and index % batch_size else seq_len
        prompt_length = rng.randint(length // 8, length // 4)
        # Ids from 2 up: 0 pads and 1 is the unknown token of TRL's tokenizer.
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


@dataclass(frozen=True)
class StepLoss:
    """What mindgap's training step computes on one micro-batch before its backward."""

    result: WeightedLoss
    mask: torch.Tensor
    sources: torch.Tensor
    rules: torch.Tensor

    def weight_sums(self) -> WeightSums:
        """The importance-weight sums the module logs each step."""
        return weight_sums(
            self.result.weights, self.result.log_ratio, self.result.clipped, self.mask, self.sources, self.rules
        )


def step_loss(model: torch.nn.Module, batch: Batch, loss_name: str, chunk_size: int | None = None) -> StepLoss:
    """The loss of mindgap's training step (FineTuningModule.training_step) on one micro-batch."""
    logprobs, mask = label_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels, chunk_size)
    sources = source_ids(batch.sources, device=logprobs.device)
    rules = weight_rules(loss_name, sources, "uniform")
    result = weighted_loss(
        logprobs,
        mask,
        rules,
        batch.behavior_logprobs[:, 1:],
        num_step_tokens=batch.loss_tokens,
        clip_max=IS_CLIP_MAX if loss_name == "is" else None,
    )
    return StepLoss(result, mask, sources, rules)


@dataclass(frozen=True)
class BatchShape:
    """The command-line shape of a training benchmark: batch, length, repeats, vocabulary, device."""

    batch_size: int
    seq_len: int
    repeats: int
    chunk_size: int
    vocab_size: int
    device: torch.device
    bf16: bool
    seed: int

    @classmethod
    def parse(cls, description: str, argv: list[str] | None) -> BatchShape:
        parser = argparse.ArgumentParser(description=description)
        cls.add_arguments(parser)
        return cls.from_arguments(parser, parser.parse_args(argv))

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--quick", action="store_true", help="2 x 128 tokens, 2 repeats (under a minute)")
        parser.add_argument("--batch", type=int, default=None, help="sequences per batch (default 4; quick 2)")
        parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 1024; quick 128)")
        parser.add_argument("--repeats", type=int, default=None, help="timed steps each (default 3; quick 2)")
        parser.add_argument("--chunk-size", type=int, default=1024, help="loss tokens per lm-head chunk")
        parser.add_argument("--vocab-size", type=int, default=QWEN_VOCAB_SIZE)
        parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
        parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights)")
        parser.add_argument("--seed", type=int, default=0)

    @classmethod
    def from_arguments(cls, parser: argparse.ArgumentParser, args: argparse.Namespace) -> BatchShape:
        shape = cls(
            batch_size=args.batch or (2 if args.quick else 4),
            seq_len=args.seq_len or (128 if args.quick else 1024),
            repeats=args.repeats or (2 if args.quick else 3),
            chunk_size=args.chunk_size,
            vocab_size=args.vocab_size,
            device=torch.device(args.device),
            bf16=args.bf16,
            seed=args.seed,
        )
        if min(shape.batch_size, shape.seq_len, shape.repeats, shape.chunk_size) < 1 or shape.seq_len < 8:
            parser.error("--batch, --repeats and --chunk-size must be >= 1, --seq-len >= 8")
        if shape.device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available")
        return shape

    def model(self) -> Qwen2ForCausalLM:
        """The tiny Qwen2 model at this vocabulary, its random weights drawn from ``seed``."""
        torch.manual_seed(self.seed)
        return Qwen2ForCausalLM(tiny_qwen_config(self.vocab_size, self.seq_len))

    def sequences(self, batches: int) -> list[TokenSequence]:
        return make_sequences(self.batch_size * batches, self.batch_size, self.seq_len, self.vocab_size, self.seed)

    def describe(self, model: torch.nn.Module) -> str:
        """What a benchmark prints first: the memory tracker's self-check, the model and the run."""
        parameters = sum(parameter.numel() for parameter in model.parameters())
        memory = "CUDA allocator" if self.device.type == "cuda" else "allocation tracker"
        return (
            f"{check_allocation_tracker()}\n"
            f"model: Qwen2, vocab {self.vocab_size:,}, hidden 128, 2 layers, {parameters / 1e6:.1f}M parameters;"
            f" device {self.device}, {'bf16 autocast' if self.bf16 else 'fp32'}, {torch.get_num_threads()} threads;"
            f" memory: {memory}"
        )
