"""The benchmarks' shared measurement pieces: the CPU allocation tracker, timers, synthetic batches, ratio tables."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from transformers import Qwen2ForCausalLM

from mindgap.measurement.batches import BatchShape, collate, make_sequences, step_loss, tiny_qwen_config
from mindgap.measurement.memory import MIB, AllocationTracker, PeakMemory, check_allocation_tracker
from mindgap.measurement.report import Throughput, throughput_table
from mindgap.measurement.timing import Stopwatch, rotated
from mindgap.training.logits import label_logprobs
from mindgap.training.losses import IGNORE_INDEX


def test_tracker_counts_new_storages_until_freed_and_never_views_or_old_storages() -> None:
    existing = torch.zeros(1024)
    with AllocationTracker() as tracker:
        block = torch.empty(2 * MIB, dtype=torch.uint8)
        assert tracker.live_bytes == 2 * MIB
        block.view(2, -1).add_(1)  # a view and an in-place result: no new storage
        existing.view(4, -1).mul_(2)  # a storage from before the mode
        assert tracker.live_bytes == 2 * MIB
        doubled = block.float()  # 4 bytes per element: 8 MiB more
        assert tracker.live_bytes == 10 * MIB
        del block
        assert tracker.live_bytes == 8 * MIB
        del doubled
        assert tracker.live_bytes == 0
    assert tracker.peak_bytes == 10 * MIB
    assert "reads 3.000 MiB and 0 after its free" in check_allocation_tracker()


def test_peak_memory_sees_that_a_chunked_head_never_holds_the_full_logits() -> None:
    vocab, rows, length = 8192, 8, 256
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen_config(vocab, length))
    # Only the head trains, so the decoder keeps no activations for backward: what is left is the
    # loss path (the head, the log-probs and their backward), as scripts/bench_loss.py measures it.
    model.requires_grad_(False).get_output_embeddings().requires_grad_(True)
    batch = collate(make_sequences(rows, rows, length, vocab, seed=0), vocab, seed=0)
    logit_bytes = rows * (length - 1) * vocab * 4  # fp32 logits of every labelled position, at most
    peaks = {}
    for chunk_size in (None, 64):
        with PeakMemory(torch.device("cpu")) as peak:
            logprobs, _ = label_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels, chunk_size)
            logprobs.sum().backward()
        model.zero_grad(set_to_none=True)
        peaks[chunk_size] = peak.peak_bytes
    # Full logits: at least the logits of the loss tokens exist at once. Chunks of 64 positions: a
    # slab of 64 x vocab at a time, besides the head's gradient (4 MiB).
    assert peaks[None] >= batch.loss_tokens * vocab * 4
    assert peaks[64] < logit_bytes / 2 < peaks[None]


def test_ragged_batches_are_padded_to_the_full_length_and_label_only_completions() -> None:
    sequences = make_sequences(8, 4, 32, vocab_size=100, seed=1)
    assert [len(s.token_ids) for s in sequences[::4]] == [32, 32]  # each batch's first row
    assert all(24 <= len(s.token_ids) <= 32 and 3 <= s.prompt_length <= 8 for s in sequences)
    assert all(len(s.token_ids) == 32 for s in make_sequences(8, 4, 32, vocab_size=100, seed=1, ragged=False))
    batch = collate(sequences[:4], vocab_size=100, seed=0)
    for row, sequence in enumerate(sequences[:4]):
        length = len(sequence.token_ids)
        assert batch.attention_mask[row].sum() == length
        assert (batch.labels[row, : sequence.prompt_length] == IGNORE_INDEX).all()
        assert (batch.labels[row, length:] == IGNORE_INDEX).all()
        assert (
            batch.labels[row, sequence.prompt_length : length].tolist() == sequence.token_ids[sequence.prompt_length :]
        )
    assert batch.loss_tokens == sum(len(s.token_ids) - s.prompt_length for s in sequences[:4])
    assert batch.sources == ("self", "guided", "expert", "self")


def test_step_loss_of_sft_is_the_mean_cross_entropy_of_the_completion_tokens() -> None:
    vocab = 256
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen_config(vocab, 32))
    batch = collate(make_sequences(3, 3, 32, vocab, seed=2), vocab, seed=2)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        expected = (
            F.cross_entropy(
                logits[:, :-1].reshape(-1, vocab),
                batch.labels[:, 1:].reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            / batch.loss_tokens
        )
        loss = step_loss(model, batch, "sft")
    torch.testing.assert_close(loss.result.loss, expected, rtol=1e-5, atol=1e-6)
    assert int(loss.mask.sum()) == batch.loss_tokens
    # DFT weights each token by its detached probability: below SFT's loss, above zero.
    with torch.no_grad():
        dft = step_loss(model, batch, "dft").result.loss
    assert 0 < dft < loss.result.loss


def test_stopwatch_keeps_each_span_and_rotation_puts_a_different_item_first_each_round() -> None:
    watch = Stopwatch()
    for _ in range(3):
        with watch:
            pass
    assert len(watch.spans) == 3 and watch.seconds == pytest.approx(sum(watch.spans))
    assert [rotated("abc", index) for index in range(4)] == [list("abc"), list("bca"), list("cab"), list("abc")]


def test_throughput_table_gives_each_rate_as_a_ratio_to_the_baseline() -> None:
    rows = [Throughput("bare", 300, 3.0), Throughput("stage", 180, 2.0)]
    console = Console(width=200, record=True)
    console.print(throughput_table("t", rows, "tokens", "bare", {"note": ["a", "b"]}))
    text = console.export_text()
    assert "100.0" in text and "1.000x" in text and "90.0" in text and "0.900x" in text
    with pytest.raises(ValueError, match="no row named 'vllm'"):
        throughput_table("t", rows, "tokens", "vllm")


def test_batch_shape_reads_quick_and_refuses_a_length_too_short_to_mask() -> None:
    quick = BatchShape.parse("", ["--quick"])
    assert (quick.batch_size, quick.seq_len, quick.repeats, quick.vocab_size) == (2, 128, 2, 151_936)
    assert len(quick.sequences(3)) == 6
    with pytest.raises(SystemExit):
        BatchShape.parse("", ["--seq-len", "4"])
