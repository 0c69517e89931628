"""Hugging Face ``generate`` backend: batched, seeded sampling on CPU or GPU.

Samples come from exactly softmax(logits / T) restricted to the top-p nucleus, the rule of
``top_p_logprobs`` that vLLM and the rescoring pass follow too. One logits processor applies it
(transformers' own temperature, top-k and top-p warpers are left off), and the model's
``generation_config`` (repetition_penalty, top_k, min_p, no_repeat_ngram_size, ...) is replaced
by one that holds only the special token ids, so none of its processors runs.

The log-prob of each sampled token is read at the step that sampled it, from the log-probs the
processor handed the sampler. Stacking every step's full-vocabulary scores (``output_scores``)
would give the same numbers but keep a vocabulary-sized row per token to the end of the batch:
3.2 GB for 32 sequences of 512 tokens over SmolLM2's 49,152 ids, allocated step by step. The
values stay those of the incremental, KV-cached decoding, so the rescoring pass's
recorded-vs-rescored gap still measures what it did: the engine's numerics against one full
teacher-forced forward.
"""

from __future__ import annotations

import gc

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from mindgap.generation.base import Completion
from mindgap.generation.config import SamplingConfig
from mindgap.generation.distribution import top_p_logprobs
from mindgap.models.loading import ModelSource, load_causal_lm, load_tokenizer, model_fingerprint, stop_token_ids


class NucleusLogprobs(LogitsProcessor):
    """Turns each step's logits into the sampling distribution's log-probs and records the sampled ones.

    The sampler draws from softmax of what this returns, which is that distribution itself. The token
    a row drew at step t is only known at step t + 1 (the last id of ``input_ids``); ``finish`` reads
    the last step's from the returned sequences. Greedy decoding (T = 0) gets the T = 1 log-probs,
    whose argmax is the logits'.
    """

    def __init__(self, temperature: float, top_p: float) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.steps: list[torch.Tensor] = []
        self._logprobs: torch.Tensor | None = None

    def _take(self, chosen: torch.Tensor) -> None:
        assert self._logprobs is not None
        self.steps.append(self._logprobs.gather(-1, chosen[:, None]).squeeze(-1))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self._logprobs is not None:
            self._take(input_ids[:, -1])
        self._logprobs = top_p_logprobs(scores.float(), self.temperature, self.top_p)
        return self._logprobs

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """(rows, steps) log-probs aligned with ``generated`` (the new ids of each row)."""
        self._take(generated[:, -1])
        return torch.stack(self.steps, dim=1)


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
        # Only the special ids survive from the model's generation config: generate() fills every unset
        # field from model.generation_config, so its sampling processors must not be there to be found.
        self.model.generation_config = GenerationConfig(
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=self.model.generation_config.bos_token_id,
        )

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
        recorder = NucleusLogprobs(sampling.temperature, sampling.top_p if do_sample else 1.0)
        sequences = self.model.generate(
            **encoded,
            do_sample=do_sample,
            # The recorder applies T and top-p; these values keep transformers' warpers out (its
            # global default top_k is 50, and 0 turns that warper off).
            temperature=1.0 if do_sample else None,
            top_p=1.0 if do_sample else None,
            top_k=0 if do_sample else None,
            max_new_tokens=sampling.max_tokens,
            num_return_sequences=sampling.n,
            logits_processor=LogitsProcessorList([recorder]),
        )
        generated = sequences[:, encoded["input_ids"].shape[1] :]
        chosen_logprobs = recorder.finish(generated)
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
