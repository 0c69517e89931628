"""On one GPU: bf16 training under every strategy with exact resume, bf16 loss and generation against fp32
references, and the chunked head's memory, on Qwen2.5-0.5B / 1.5B architectures with random weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mindgap.generation.config import SamplingConfig
from mindgap.generation.distribution import top_p_logprobs
from mindgap.generation.hf import HFGenerator
from mindgap.models.loading import load_causal_lm
from mindgap.prompts import standard_prompt
from mindgap.training.logits import label_logprobs
from mindgap.training.losses import IGNORE_INDEX, source_ids, weight_rules, weighted_loss
from tests.conftest import run_app_subprocess

# Two optimiser steps, a checkpoint after each; the resumed run starts from the first.
TRAIN = [
    "experiment=smoke",
    "rewrite=none",
    "data.limit=8",
    "loss=is",
    "logger=csv",
    "train.micro_batch_size=2",
    "train.accumulate_grad_batches=2",
    "train.max_steps=2",
    "train.checkpoint.every_n_steps=1",
    "train.checkpoint.keep=null",
    "train.progress_bar=false",
    "train.strategy.accelerator=gpu",
]
# bf16 compute over fp32 master weights under every strategy (train.precision=bf16-mixed): Lightning's
# autocast for single, the FSDP mixed-precision policies over fp32 shards for fsdp2 and fsdp.
STRATEGIES = {
    "single": ["strategy=single", "train.precision=bf16-mixed"],
    "fsdp2": ["strategy=fsdp2", "train.strategy.devices=1", "train.precision=bf16-mixed"],
    "fsdp": ["strategy=fsdp", "train.strategy.devices=1", "train.precision=bf16-mixed"],
}


def _train(model: str, output_dir: Path, *overrides: str) -> None:
    result = run_app_subprocess(
        "train", *TRAIN, "model=local", f"model.name_or_path={model}", f"output_dir={output_dir}", *overrides
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_bf16_training_resumes_exactly(qwen_model_path, tmp_path: Path, strategy: str) -> None:
    model = qwen_model_path("qwen2.5-0.5b")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    _train(model, full, *STRATEGIES[strategy])
    checkpoints = sorted(path.name for path in (full / "checkpoints").iterdir())
    assert checkpoints == ["step-000001.ckpt", "step-000002.ckpt"]
    _train(model, resumed, *STRATEGIES[strategy], f"train.checkpoint.resume={full / 'checkpoints' / checkpoints[0]}")
    initial = load_causal_lm(model).state_dict()
    full_weights = load_file(full / "model" / "model.safetensors")
    resumed_weights = load_file(resumed / "model" / "model.safetensors")
    assert full_weights.keys() == resumed_weights.keys()
    moved = 0
    for name, tensor in full_weights.items():
        # Same kernels, same data, same optimiser state: the resumed step is bit-identical.
        torch.testing.assert_close(resumed_weights[name], tensor, rtol=0, atol=0, msg=name)
        moved += int(not torch.equal(tensor.float(), initial[name].float()))
    assert moved > len(full_weights) // 2


def _batch(vocab: int, rows: int = 4, length: int = 256, prompt: int = 64) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (rows, length), generator=generator)
    labels = input_ids.clone()
    labels[:, :prompt] = IGNORE_INDEX
    # Right padding on the last row.
    labels[-1, length - 32 :] = IGNORE_INDEX
    attention_mask = (labels != IGNORE_INDEX) | (torch.arange(length) < prompt)
    return {"input_ids": input_ids, "attention_mask": attention_mask.long(), "labels": labels}


@pytest.mark.parametrize("loss", ["dft", "is"])
def test_bf16_losses_match_fp32_cpu(qwen_model_path, loss: str) -> None:
    path = qwen_model_path("qwen2.5-0.5b")
    batch = _batch(vocab=2048)
    sources = source_ids(["self", "guided", "expert", "self"])
    # Behaviour log-probs near the model's (a random model is near uniform over 151,936 ids: log p ≈ -11.9).
    behavior = torch.full(batch["labels"].shape, -11.9)
    values = {}
    for device, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        model = load_causal_lm(path).to(device)
        on_device = {key: value.to(device) for key, value in batch.items()}
        with torch.autocast(device, dtype=dtype, enabled=dtype == torch.bfloat16):
            logprobs, mask = label_logprobs(model, **on_device, chunk_size=None)
        rules = weight_rules(loss, sources.to(device))
        result = weighted_loss(
            logprobs, mask, rules, behavior[:, 1:].to(device), num_step_tokens=int(mask.sum()), clip_max=5.0
        )
        values[device] = result.loss.item()
    # bf16 has 8 significant bits: log-probs of -11.9 carry errors of about 2^-8 * 12 ≈ 0.05 per token, which
    # average out over ~700 loss tokens; 1% of the loss is above that and far below a wrong weight rule.
    assert values["cuda"] == pytest.approx(values["cpu"], rel=1e-2)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_bf16_generation_logprobs_match_teacher_forcing(qwen_model_path, temperature: float, top_p: float) -> None:
    generator = HFGenerator(qwen_model_path("qwen2.5-0.5b"), dtype="bfloat16", batch_size=4, device="cuda")
    prompts = [standard_prompt(q, "qwen-boxed") for q in ("What is 2+3?", "Half of 12?")]
    sampling = SamplingConfig(n=4, temperature=temperature, top_p=top_p, max_tokens=32)
    gaps = []
    for prompt, samples in zip(prompts, generator.generate(prompts, sampling, seed=0), strict=True):
        prompt_ids = generator.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for sample in samples:
            ids = torch.tensor([prompt_ids + sample.token_ids], device="cuda")
            with torch.no_grad():
                logits = generator.model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
            chosen = torch.tensor(sample.token_ids, device="cuda")[:, None]
            expected = top_p_logprobs(logits, temperature, top_p, keep=chosen[:, 0]).gather(-1, chosen).squeeze(-1)
            gaps.append((torch.tensor(sample.logprobs, device="cuda") - expected).abs().max().item())
    print(f"max |generated - teacher-forced| log-prob in bf16: {max(gaps):.3e}")
    # KV-cached decoding against one full forward in bf16: kernels differ in accumulation order, which moves
    # logits by a few bf16 ulps; 0.05 nats is above that and below any difference of distribution (T, top-p).
    assert max(gaps) < 5e-2
    generator.close()


def test_chunked_head_peak_memory(qwen_model_path) -> None:
    model = load_causal_lm(qwen_model_path("qwen2.5-1.5b"), dtype="bfloat16").to("cuda")
    batch = {key: value.to("cuda") for key, value in _batch(vocab=2048, rows=4, length=1024, prompt=128).items()}
    peaks = {}
    for chunk_size in (None, 1024):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        logprobs, mask = label_logprobs(model, **batch, chunk_size=chunk_size)
        (-(logprobs * mask).sum() / mask.sum()).backward()
        torch.cuda.synchronize()
        peaks[chunk_size] = torch.cuda.max_memory_allocated() - start
        del logprobs, mask
    logit_bytes = 4 * 1023 * 151_936 * 2  # rows x positions x vocab x bf16
    print({size: f"{peak / 2**30:.2f} GiB" for size, peak in peaks.items()}, f"logits {logit_bytes / 2**30:.2f} GiB")
    # Full logits exist at once (bf16, plus their fp32 log-softmax): the peak holds them; chunked, it does not.
    assert peaks[None] > logit_bytes
    assert peaks[None] - peaks[1024] > logit_bytes / 2
