"""Hugging Face ``generate`` backend: batched, seeded sampling on CPU or GPU."""

from __future__ import annotations

import gc

import torch

from mindgap.config import SamplingConfig
from mindgap.generation.base import Completion
from mindgap.models import ModelSource, load_causal_lm, load_tokenizer, model_fingerprint, stop_token_ids


class HFGenerator:
    backend = "hf"

    def __init__(
        self, model: ModelSource | str, dtype: str = "float32", batch_size: int = 16, device: str | None = None
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = load_tokenizer(model)
        self.tokenizer.padding_side = "left"
        self.model = load_causal_lm(model, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(self.tokenizer, self.model)
        self.fingerprint = model_fingerprint(model)

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]:
        if self.model is None:
            raise RuntimeError("HFGenerator.generate after close()")
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), self.batch_size):
            # Seeding per batch makes a batch's samples independent of what ran before it.
            torch.manual_seed(seed + start)
            results.extend(self._generate_batch(prompts[start : start + self.batch_size], sampling))
        return results

    def close(self) -> None:
        """Drop the model and return cached device memory; the generator is unusable afterwards."""
        if self.model is None:
            return
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _generate_batch(self, prompts: list[str], sampling: SamplingConfig) -> list[list[Completion]]:
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        do_sample = sampling.temperature > 0
        output = self.model.generate(
            **encoded,
            do_sample=do_sample,
            temperature=sampling.temperature if do_sample else None,
            top_p=sampling.top_p if do_sample else None,
            top_k=0 if do_sample else None,
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=sampling.n,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
        generated = output.sequences[:, encoded["input_ids"].shape[1] :]
        # ``scores`` are the logits after temperature and top-p, i.e. the sampling distribution.
        step_logprobs = torch.stack(output.scores, dim=1).float().log_softmax(dim=-1)
        chosen_logprobs = step_logprobs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        completions = [
            self._completion(ids, logprobs) for ids, logprobs in zip(generated, chosen_logprobs, strict=True)
        ]
        return [completions[i : i + sampling.n] for i in range(0, len(completions), sampling.n)]

    def _completion(self, ids: torch.Tensor, logprobs: torch.Tensor) -> Completion:
        token_ids = ids.tolist()
        finish_reason = "length"
        for position, token in enumerate(token_ids):
            if token in self.stop_ids:
                token_ids = token_ids[: position + 1]
                finish_reason = "stop"
                break
        text_ids = token_ids[:-1] if finish_reason == "stop" else token_ids
        return Completion(
            text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
            token_ids=token_ids,
            logprobs=logprobs[: len(token_ids)].tolist(),
            finish_reason=finish_reason,
        )
