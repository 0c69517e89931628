"""The learned and prompted rewriters on the tiny model: GRPO on a LoRA adapter, and both strategies end to end."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from unittest.mock import patch

import pytest
import torch
from datasets import load_from_disk
from hydra import compose, initialize_config_dir

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.generation.base import Completion
from mindgap.generation.config import SamplingConfig
from mindgap.models.loading import load_tokenizer
from mindgap.paths import CONFIG_DIR
from mindgap.prompts import standard_prompt
from mindgap.rewriting import run as stage_run
from mindgap.rewriting.app import rewrite
from mindgap.rewriting.rl_agent import build_grpo_trainer
from mindgap.rewriting.run import RewriteStage
from mindgap.training.app import train
from mindgap.verification.verifier import Verdict

pytestmark = pytest.mark.slow

# Short rewrites keep GRPO's sampling and the greedy pass to a few seconds on two cores.
SHORT = ["rewrite.rl_agent.max_completion_tokens=16", "rewrite.rl_agent.rewrite_sampling.max_tokens=16"]


def _config(app: str, *overrides: str) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(app, overrides=["experiment=smoke", *overrides])
    return to_typed(cfg, MindgapConfig)


class CoinFlipVerifier:
    """Passes a rewrite when its text's CRC is even: the random tiny model never reaches a gold answer, and GRPO
    needs some rewrites of a group to pass and others to fail for its advantages (so the gradient) to be non-zero."""

    def verify(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        return [Verdict(zlib.crc32(response.encode()) % 2 == 0, None) for response in responses]


def test_two_grpo_steps_change_only_the_lora_weights(tmp_path: Path) -> None:
    config = _config(
        "rewrite", "rewrite=rl_agent", "data.limit=2", "rewrite.rl_agent.prompts_per_step=1", *SHORT,
        f"output_dir={tmp_path}",
    )  # fmt: skip
    stage = RewriteStage(config)
    trainer, scorer = build_grpo_trainer(config, stage.problems, stage.model, CoinFlipVerifier(), tmp_path)
    before = {name: parameter.detach().clone() for name, parameter in trainer.model.named_parameters()}
    trainer.train()
    scorer.close()

    assert trainer.state.global_step == 2
    after = dict(trainer.model.named_parameters())
    lora = [name for name in before if "lora_" in name]
    # Rank 8 on all seven linear layers of both blocks, A and B each.
    assert len(lora) == 2 * 7 * 2
    assert all(torch.equal(before[name], after[name]) for name in before if name not in lora)
    changed = [name for name in lora if not torch.equal(before[name], after[name])]
    assert any("lora_B" in name for name in changed)
    assert all(not after[name].requires_grad for name in before if name not in lora)

    steps = [entry for entry in trainer.state.log_history if "rewards/gate/mean" in entry]
    assert len(steps) == 2
    for entry in steps:
        # Some but not all rewrites passed, and each logged term is of the passing ones.
        assert 0 < entry["rewards/gate/mean"] < 1
        assert 0 < entry["rewards/alignment/mean"] < entry["rewards/gate/mean"]
        assert entry["reward"] == pytest.approx(
            entry["rewards/gate/mean"] + 0.35 * entry["rewards/alignment/mean"] + 0.5 * entry["rewards/diversity/mean"],
            abs=1e-5,
        )


def _stage_files(work: Path) -> Path:
    (fingerprint_dir,) = work.iterdir()
    return fingerprint_dir


def test_rl_agent_stage_trains_once_and_writes_the_record_contract(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "out"
    overrides = [
        "rewrite=rl_agent", "data.limit=3", "rewrite.chunk_size=2", "rewrite.rl_agent.prompts_per_step=1", *SHORT,
        "logger=csv", f"rewrite.work_dir={work}",
    ]  # fmt: skip
    rewrite(_config("rewrite", *overrides, f"output_dir={out}"), out)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["rewrite"]["strategy"] == "rl_agent"
    assert sum(manifest["counts_per_source"].values()) == manifest["records"] == 3
    assert set(manifest["counts_per_source"]) <= {"rewritten", "expert"}
    assert manifest["stages"]["rewrite"]["attempted"] == manifest["stages"]["rewrite"]["sampled"] == 3
    agent = manifest["rl_agent"]
    assert agent["steps"] == 2
    assert set(agent["reward_means"]) == {"gate", "alignment", "diversity", "total"}
    records = list(load_from_disk(str(out / "dataset")))
    assert [row["id"] for row in records] == [f"gsm8k_train/{i}" for i in range(3)]
    for row in records:
        assert row["attempts"]["rewrite_samples"] == 1
        assert row["rescored_logprobs"] is not None
        if row["source"] == "expert":
            assert row["behavior_prompt"] == standard_prompt(row["problem"], "qwen-boxed")
        else:
            assert "Rewrite this reference solution" in row["behavior_prompt"]

    (fingerprint_dir,) = work.iterdir()
    agent_dir = fingerprint_dir / "rl_agent"
    assert (agent_dir / "adapter" / "adapter_config.json").exists()
    assert (agent_dir / "merged" / "config.json").exists() and not (agent_dir / "trainer").exists()
    metrics = next((out / "csv").rglob("metrics.csv")).read_text()
    assert "rewrite/rl_agent/rewards/diversity/mean" in metrics and "rewrite/count/" in metrics

    # Lose everything but the trained rewriter: the rerun reuses it (no training) and writes the same dataset.
    training_log = (agent_dir / "training.json").read_text()
    for name in ("generated", "rescored", "dataset", "manifest.json"):
        path = fingerprint_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with patch("mindgap.rewriting.rl_agent.train_adapter", side_effect=AssertionError("trained again")):
        again = rewrite(_config("rewrite", *overrides, f"output_dir={tmp_path / 'again'}"), tmp_path / "again")
    assert again is not None and list(load_from_disk(str(again))) == records
    assert (agent_dir / "training.json").read_text() == training_log


class ReferenceEchoGenerator:
    """Answers a rewrite prompt with the reference it shows, tokenised like a real response (eos included),
    for even-numbered prompts, and with a wrong answer for the others: both branches of the fallback, with real
    token ids that the rescoring pass and training consume."""

    backend = "echo"
    fingerprint = "echo:0"

    def __init__(self, model_path: str):
        self.tokenizer = load_tokenizer(model_path)

    def generate(self, prompts: list[str], sampling: SamplingConfig, seed: int) -> list[list[Completion]]:
        results = []
        for index, prompt in enumerate(prompts):
            reference = prompt.split("reference solution to this problem:\n", 1)[1].split("\n\nRewrite this", 1)[0]
            text = reference if index % 2 == 0 else "It is \\boxed{-1}"
            ids = [*self.tokenizer(text, add_special_tokens=False)["input_ids"], self.tokenizer.eos_token_id]
            results.append([Completion(text, ids, [-1.0] * len(ids), "stop")])
        return results

    def close(self) -> None:
        pass


def test_sdft_dataset_with_rewritten_records_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage_run, "make_generator", lambda config, path, dtype: ReferenceEchoGenerator(path))
    overrides = ["rewrite=sdft", "data.limit=4", f"rewrite.work_dir={tmp_path / 'work'}", "loss=is", "logger=csv"]
    result = RewriteStage(_config("rewrite", *overrides, f"output_dir={tmp_path}")).run()
    assert result.manifest["counts_per_source"] == {"rewritten": 2, "expert": 2}
    assert result.manifest["stages"]["rewrite"]["solved"] == 2
    records = list(load_from_disk(str(result.dataset_dir)))
    rewritten = [row for row in records if row["source"] == "rewritten"]
    assert all(len(row["rescored_logprobs"]) == len(row["response_token_ids"]) for row in rewritten)
    # Recorded (-1 per token, scripted) and rescored log-probs differ: the gap is reported for the new source.
    assert result.manifest["logprob_gap_recorded_vs_rescored"]["rewritten"] > 0

    out = tmp_path / "train"
    config = _config("train", *overrides, f"train.dataset_path={result.dataset_dir}", f"output_dir={out}")
    model_dir = train(config, out)
    assert (model_dir / "config.json").exists()
    metrics = next(out.rglob("metrics.csv")).read_text()
    assert "is/rewritten/weight_mean" in metrics and "is/expert/weight_mean" in metrics


def _teacher_forced(model_dir: str | Path, tokenizer, prompt: str, response_ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits at T=1 over the response tokens, after the prompt."""
    from mindgap.models.loading import load_causal_lm

    model = load_causal_lm(str(model_dir)).eval()
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + response_ids])).logits[0, len(prompt_ids) - 1 : -1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(response_ids)[:, None]).squeeze(-1)


def test_rl_agent_rewrites_are_rescored_by_the_rewriter_that_generated_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_path: str
) -> None:
    from peft import LoraConfig, get_peft_model

    from mindgap.models.loading import load_causal_lm
    from mindgap.rewriting import rl_agent

    overrides = [
        "rewrite=rl_agent", "data.limit=4", "rewrite.rl_agent.rewrite_sampling.temperature=1.0",
        f"rewrite.work_dir={tmp_path / 'work'}", f"output_dir={tmp_path}",
    ]  # fmt: skip
    stage = RewriteStage(_config("rewrite", *overrides))
    # A trained rewriter in place (no GRPO run): a LoRA initialised at random, so that it moves the policy.
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    rewriter = get_peft_model(load_causal_lm(tiny_model_path), lora).merge_and_unload()
    merged = stage.work / rl_agent.AGENT_DIR / rl_agent.MERGED_DIR
    rewriter.save_pretrained(str(merged))
    load_tokenizer(tiny_model_path).save_pretrained(str(merged))
    (merged / rl_agent._COMPLETE).touch()
    sampled_from: list[str] = []

    def echo(config, model, dtype):
        sampled_from.append(str(model))
        return ReferenceEchoGenerator(str(model))

    monkeypatch.setattr(stage_run, "make_generator", echo)
    result = stage.run()

    assert sampled_from == [str(merged)]
    tokenizer = load_tokenizer(tiny_model_path)
    rows = list(load_from_disk(str(result.dataset_dir)))
    assert {row["source"] for row in rows} == {"rewritten", "expert"}
    for row in (row for row in rows if row["source"] == "rewritten"):
        rescored = torch.tensor(row["rescored_logprobs"])
        under_rewriter = _teacher_forced(merged, tokenizer, row["behavior_prompt"], row["response_token_ids"])
        under_backbone = _teacher_forced(tiny_model_path, tokenizer, row["behavior_prompt"], row["response_token_ids"])
        torch.testing.assert_close(rescored, under_rewriter, atol=1e-4, rtol=0)
        assert (rescored - under_backbone).abs().max() > 0.1
    manifest = result.manifest
    assert manifest["behavior_models"]["rewritten"] != manifest["behavior_models"]["expert"]
    assert manifest["behavior_models"]["expert"] == manifest["model"]["fingerprint"]
