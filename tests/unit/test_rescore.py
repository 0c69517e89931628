"""The rescoring pass: teacher-forced behaviour log-probs, and the recorded-vs-rescored diagnostic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from hydra import compose, initialize_config_dir
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.data.collate import response_ids
from mindgap.generation.config import SamplingConfig
from mindgap.generation.distribution import top_p_logprobs
from mindgap.generation.hf import HFGenerator
from mindgap.paths import CONFIG_DIR
from mindgap.prompts import guided_prompt, standard_prompt
from mindgap.records import GeneratorInfo, Record
from mindgap.rewriting.rescore import Gaps, Rescorer, without_nonfinite

QUESTIONS = ["What is 2+3?", "Tom has 4 apples and eats one. How many are left?", "Half of 12?"]
EXPERT = "Tom eats one apple, so 4 - 1 = 3 are left.\nThe final answer is $\\boxed{3}$."


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0), (1.0, 0.8), (0.6, 0.5)])
def test_top_p_logprobs_match_transformers_warpers(temperature: float, top_p: float) -> None:
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3
    warped = TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, logits.clone()))
    expected = warped.log_softmax(-1)
    actual = top_p_logprobs(logits, temperature, top_p)
    assert torch.equal(torch.isinf(actual), torch.isinf(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[finite], expected[finite], atol=1e-6, rtol=0)


def test_a_kept_token_stays_in_the_nucleus() -> None:
    # p = (0.5, 0.3, 0.2), top-p 0.6: ascending cumulative mass (0.2, 0.5, 1.0); 0.2 <= 1 - 0.6 removes the
    # last token, leaving (0.5, 0.3) / 0.8. Kept (the generator drew it), it stays: the plain softmax.
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    nucleus = top_p_logprobs(logits, 1.0, 0.6)
    torch.testing.assert_close(nucleus[0, :2], torch.tensor([0.625, 0.375]).log())
    assert nucleus[0, 2] == float("-inf")
    kept = top_p_logprobs(logits, 1.0, 0.6, keep=torch.tensor([2]))
    torch.testing.assert_close(kept, logits)


@pytest.fixture(scope="module")
def generator(tiny_model_path: str) -> HFGenerator:
    return HFGenerator(tiny_model_path, batch_size=3)


def _records(generator: HFGenerator, sampling: SamplingConfig) -> list[Record]:
    prompts = [standard_prompt(q, "qwen-boxed") for q in QUESTIONS[:2]]
    prompts.append(guided_prompt(QUESTIONS[1], EXPERT, "qwen-boxed"))
    records = []
    for index, (prompt, samples) in enumerate(zip(prompts, generator.generate(prompts, sampling, seed=5), strict=True)):
        for sample in samples:
            records.append(
                Record(
                    id=f"p/{index}",
                    problem=QUESTIONS[min(index, 1)],
                    answer="3",
                    expert_solution=EXPERT,
                    source="guided" if index == 2 else "self",
                    response=sample.text.strip() or "(empty)",
                    response_token_ids=sample.token_ids,
                    behavior_logprobs=sample.logprobs,
                    behavior_prompt=prompt,
                    generator=GeneratorInfo("hf", "tiny", sampling.temperature, sampling.top_p, sampling.max_tokens),
                )
            )
    records.append(
        Record(
            "p/x", QUESTIONS[1], "3", EXPERT, "expert", EXPERT, None, None, standard_prompt(QUESTIONS[1], "qwen-boxed")
        )
    )
    return records


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_rescoring_reproduces_the_recorded_sampling_logprobs(
    generator: HFGenerator, tiny_model_path: str, temperature: float, top_p: float
) -> None:
    # Greedy decoding has one response per prompt.
    n = 2 if temperature > 0 else 1
    records = _records(generator, SamplingConfig(n=n, temperature=temperature, top_p=top_p, max_tokens=12))
    rescorer = Rescorer(tiny_model_path, "float32", generator.tokenizer, batch_size=4)
    gaps = rescorer.rescore(records).largest
    # HF generate (KV cache, left-padded batch) against one full forward: fp32 rounding only.
    assert set(gaps) == {"self", "guided"} and max(gaps.values()) < 1e-4
    for record in records:
        ids = response_ids(record.to_dict(), generator.tokenizer)
        assert record.rescored_logprobs is not None and len(record.rescored_logprobs) == len(ids)
        prompt_ids = generator.tokenizer(record.behavior_prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = generator.model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1]
        # Stored values are log-probs of the distribution the record was drawn from: π₀ at its temperature over
        # its top-p nucleus; T = 1 for greedy records (no density of their own) and for expert text.
        drawn = record.source != "expert" and temperature > 0
        distribution = top_p_logprobs(logits, temperature, top_p) if drawn else logits.log_softmax(-1)
        expected = distribution.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1)
        assert torch.isfinite(expected).all()
        torch.testing.assert_close(torch.tensor(record.rescored_logprobs), expected, atol=1e-4, rtol=0)
    # The expert text is scored as it is trained: its tokens plus eos.
    assert records[-1].rescored_logprobs is not None
    assert len(records[-1].rescored_logprobs) == len(generator.tokenizer(EXPERT)["input_ids"]) + 1


def test_rescoring_does_not_depend_on_batch_composition(generator: HFGenerator, tiny_model_path: str) -> None:
    records = _records(generator, SamplingConfig(n=2, temperature=1.0, max_tokens=12))
    singles = [Record.from_dict(record.to_dict()) for record in records]
    Rescorer(tiny_model_path, "float32", generator.tokenizer, batch_size=8).rescore(records)
    Rescorer(tiny_model_path, "float32", generator.tokenizer, batch_size=1).rescore(singles)
    for batched, single in zip(records, singles, strict=True):
        torch.testing.assert_close(
            torch.tensor(batched.rescored_logprobs), torch.tensor(single.rescored_logprobs), atol=1e-5, rtol=0
        )


def _scored(record_id: str, source: str, logprobs: list[float]) -> Record:
    tokens = [1] * len(logprobs) if source != "expert" else None
    record = Record(
        record_id, "q", "3", EXPERT, source, "r", tokens, None, "p", rescored_logprobs=[0.0] * len(logprobs)
    )
    record.rescored_logprobs = logprobs  # as Rescorer.rescore assigns them, past the record's own validation
    return record


def test_nonfinite_records_are_removed_and_their_problems_fall_back_or_drop() -> None:
    nan, inf = float("nan"), float("inf")
    records = [
        _scored("a", "self", [-1.0, -2.0]),
        _scored("a", "self", [nan, -2.0]),  # a has another self record: no fallback
        _scored("b", "guided", [-inf]),  # b is left with nothing: its expert solution instead
        _scored("c", "expert", [-1.0, inf]),  # c's expert text is not finite: c is dropped
    ]

    def experts(removed: list[Record]) -> list[Record]:
        return [_scored(record.id, "expert", [-0.5]) for record in removed]

    def rescore(fallbacks: list[Record]) -> None:
        for record in fallbacks:
            record.rescored_logprobs = [nan] if record.id == "c" else [-0.25]

    outcome = without_nonfinite(records, experts, rescore)
    assert [(record.id, record.source, record.rescored_logprobs) for record in outcome.records] == [
        ("a", "self", [-1.0, -2.0]),
        ("b", "expert", [-0.25]),
    ]
    assert outcome.removed == {"self": 1, "guided": 1, "expert": 1}
    assert outcome.fell_back_to_expert == 1
    assert list(outcome.dropped) == ["c"]


def test_gaps_keep_infinite_ones_out_of_the_largest_and_count_them() -> None:
    gaps = Gaps()
    for source, gap in [("self", 0.5), ("self", float("inf")), ("guided", 0.1), ("self", 0.25)]:
        gaps.add(source, gap)
    assert gaps.largest == {"self": 0.5, "guided": 0.1}
    assert gaps.nonfinite == {"self": 1}


def test_stage_commits_no_nonfinite_logprob_and_writes_a_strict_manifest(
    tiny_model_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mindgap.rewriting.run import run_rewrite_stage

    score_batch, rescore = Rescorer._score_batch, Rescorer.rescore
    poisoned = "gsm8k_train/1"

    def nan_for_one_record(self, records):
        scored = score_batch(self, records)
        return [
            torch.full_like(rescored, float("nan")) if record.id == poisoned else rescored
            for record, rescored in zip(records, scored, strict=True)
        ]

    def with_an_infinite_gap(self, records):
        gaps = rescore(self, records)
        gaps.add("expert", float("inf"))  # expert text has no recorded log-probs: stand in for a sampled record's
        return gaps

    monkeypatch.setattr(Rescorer, "_score_batch", nan_for_one_record)
    monkeypatch.setattr(Rescorer, "rescore", with_an_infinite_gap)
    register_configs()
    overrides = ["experiment=smoke", "rewrite=none", "data.limit=4", "rewrite.chunk_size=2"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("rewrite", overrides=[*overrides, f"rewrite.work_dir={tmp_path}", f"output_dir={tmp_path}/out"])
    result = run_rewrite_stage(to_typed(cfg, MindgapConfig))

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    manifest = json.loads((result.dataset_dir.parent / "manifest.json").read_text(), parse_constant=refuse)
    assert manifest["nonfinite_logprobs"] == {"removed": {"expert": 1}, "fell_back_to_expert": 0, "dropped": 1}
    assert poisoned in manifest["dropped"]
    assert manifest["logprob_gap_recorded_vs_rescored"] == {"expert": None}
    assert manifest["logprob_gap_infinite"]["expert"] >= 1
    rows = list(load_from_disk(str(result.dataset_dir)))
    assert [row["id"] for row in rows] == ["gsm8k_train/0", "gsm8k_train/2", "gsm8k_train/3"]
