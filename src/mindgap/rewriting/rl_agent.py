"""The RL rewriting agent: a LoRA adapter on the backbone, trained with TRL's GRPO to rewrite expert solutions.

Trained once per stage fingerprint, before the chunked generate-verify-fallback pass, in
``<work>/rl_agent/``:

- ``trainer/``: TRL checkpoints every ``rewrite.rl_agent.save_steps`` (a killed run resumes from
  the newest complete one: marked ``COMPLETE``, with the stage fingerprint, once TRL has saved it;
  removed once the adapter is saved);
- ``adapter/``: the trained LoRA adapter (PEFT format);
- ``merged/``: backbone + adapter merged into a plain Hugging Face model directory with the
  tokenizer, which every generator backend (HF or vLLM) loads like any model;
- ``training.json``: TRL's per-step log (loss, KL, each reward term) and a summary.

Each directory is staged privately and renamed into place when complete (``training.json`` is
committed before the adapter, so a finished adapter always has its log), and a lock
(``rewrite.lock``) lets one job train while concurrent shard jobs wait and then reuse its result.

The GRPO prompts are the rewrite prompts (mindgap.prompts.rewrite_prompt), tokenised by TRL
with the tokenizer's special tokens (none for Qwen-family tokenizers). TRL passes each reward
function a whole generation batch in which the ``group_size`` rewrites of one prompt are
consecutive; ``GroupRewardFunctions`` scores the batch group by group once and hands out the
three terms as three reward functions (``gate``, ``alignment``, ``diversity``) with weights
(1, alignment_weight, diversity_weight): TRL sums them into
r = gate + gate * (alignment_weight * alignment + diversity_weight * diversity) (the latter two
terms are already 0 wherever the gate is) and logs each term's mean and standard deviation under
``rewards/<term>/``; the logged alignment and diversity means are therefore over all rewrites,
failing ones counting 0.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from datasets import Dataset
from transformers import TrainerCallback

from mindgap import publish
from mindgap.config import MindgapConfig
from mindgap.errors import ConfigError, MindgapError
from mindgap.locks import Lock
from mindgap.models.loading import ModelSource, load_causal_lm, load_tokenizer
from mindgap.records import Problem
from mindgap.rewriting.config import RLAgentConfig
from mindgap.rewriting.reference_rewrite import reference_rewrite_prompt
from mindgap.rewriting.rewards import GroupRewards, RewardScorer
from mindgap.rewriting.stages import BatchVerifier

if TYPE_CHECKING:
    from trl import GRPOTrainer

AGENT_DIR = "rl_agent"
TRAINER_DIR = "trainer"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
TRAINING_LOG = "training.json"
_LOCK = ".lock"
_COMPLETE = "COMPLETE"
REWARD_TERMS = ("gate", "alignment", "diversity")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class GroupRewardFunctions:
    """The reward terms as TRL reward functions, computed once per generation batch from whole groups."""

    def __init__(self, scorer: RewardScorer, agent: RLAgentConfig):
        self.scorer = scorer
        self.agent = agent
        self._batch: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._rewards: GroupRewards | None = None

    @property
    def functions(self) -> list[RewardTerm]:
        return [RewardTerm(self, term) for term in REWARD_TERMS]

    @property
    def weights(self) -> list[float]:
        return [1.0, self.agent.alignment_weight, self.agent.diversity_weight]

    def rewards(
        self, prompts: Sequence[str], completions: Sequence[str], problem: Sequence[str], answer: Sequence[str]
    ) -> GroupRewards:
        batch = (tuple(prompts), tuple(completions))
        if batch != self._batch:
            size = self.agent.group_size
            groups = [prompts[start : start + size] for start in range(0, len(prompts), size)]
            if len(prompts) % size or any(len(set(group)) != 1 for group in groups):
                raise RuntimeError(f"GRPO batch of {len(prompts)} completions is not made of groups of {size}")
            self._rewards = self.scorer.score(
                problem, answer, completions, size, self.agent.alignment_weight, self.agent.diversity_weight
            )
            self._batch = batch
        assert self._rewards is not None
        return self._rewards


class RewardTerm:
    """One term of the reward, called by TRL with the batch; TRL logs it under its ``__name__``."""

    def __init__(self, source: GroupRewardFunctions, term: str):
        self.source = source
        self.__name__ = term

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        problem: Sequence[str],
        answer: Sequence[str],
        **_: Any,
    ) -> list[float]:
        return getattr(self.source.rewards(prompts, completions, problem, answer), self.__name__).tolist()


def merged_rewriter(work: Path) -> Path | None:
    """The finished merged backbone + adapter directory under ``work``, None before there is one."""
    merged = work / AGENT_DIR / MERGED_DIR
    return merged if (merged / _COMPLETE).exists() else None


def trained_rewriter(
    config: MindgapConfig, problems: list[Problem], model: ModelSource, verifier: BatchVerifier, work: Path
) -> Path:
    """The merged backbone + adapter directory under ``work``: trained on first use, reused afterwards."""
    root = work / AGENT_DIR
    merged = root / MERGED_DIR
    if merged_rewriter(work) is not None:
        return merged
    root.mkdir(parents=True, exist_ok=True)
    with Lock(root / _LOCK, config.rewrite.lock, config.rewrite.lock_stale_s):
        if merged_rewriter(work) is not None:  # another job finished it while this one waited
            return merged
        publish.clean_stale_staging(root)
        if not (root / ADAPTER_DIR / _COMPLETE).exists():
            # The work dir is named by the stage fingerprint, which covers every setting of the training.
            train_adapter(config, problems, model, verifier, root, fingerprint=work.name)
        _merge_adapter(model, config.model.dtype, root / ADAPTER_DIR, merged)
    return merged


def training_summary(work: Path) -> dict[str, Any] | None:
    """What ``training.json`` says about the agent's training (no per-step log); None before training."""
    path = work / AGENT_DIR / TRAINING_LOG
    if not path.exists():
        return None
    log = json.loads(path.read_text())
    return {key: value for key, value in log.items() if key != "log_history"}


def build_grpo_trainer(
    config: MindgapConfig, problems: list[Problem], model: ModelSource, verifier: BatchVerifier, output_dir: Path
) -> tuple[GRPOTrainer, RewardScorer]:
    """TRL's GRPOTrainer for the LoRA rewriter on ``problems``, and the frozen-backbone scorer its rewards use."""
    with _trl_version_warning_silenced():
        from peft import LoraConfig
        from trl import GRPOConfig, GRPOTrainer

    agent = config.rewrite.rl_agent
    if len(problems) < agent.prompts_per_step:
        raise ConfigError(
            f"rewrite.rl_agent.prompts_per_step={agent.prompts_per_step} is more than the {len(problems)} problems"
        )
    tokenizer = load_tokenizer(model)
    chat_tokenizer = tokenizer if config.prompt_type == "chat" else None
    dataset = Dataset.from_list(
        [
            {
                "prompt": reference_rewrite_prompt(problem, config.prompt_type, chat_tokenizer),
                "problem": problem.problem,
                "answer": problem.answer,
            }
            for problem in problems
        ]
    )
    policy = load_causal_lm(model, dtype=config.model.dtype)
    scorer = RewardScorer(
        model, config.model.dtype, tokenizer, verifier, agent.reward_batch_size, agent.use_validity_judge
    )
    rewards = GroupRewardFunctions(scorer, agent)
    args = GRPOConfig(
        output_dir=str(output_dir),
        num_generations=agent.group_size,
        per_device_train_batch_size=agent.group_size * agent.prompts_per_micro_batch,
        gradient_accumulation_steps=agent.prompts_per_step // agent.prompts_per_micro_batch,
        max_steps=agent.max_steps or -1,
        num_train_epochs=agent.epochs,
        learning_rate=agent.learning_rate,
        beta=agent.kl_coef,
        temperature=agent.temperature,
        top_p=agent.top_p,
        max_completion_length=agent.max_completion_tokens,
        reward_weights=rewards.weights,
        use_cpu=not torch.cuda.is_available(),
        bf16=policy.dtype == torch.bfloat16,
        fp16=policy.dtype == torch.float16,
        gradient_checkpointing=agent.gradient_checkpointing,
        save_strategy="steps" if agent.save_steps else "no",
        save_steps=agent.save_steps or 1,
        logging_steps=1,
        report_to="none",
        seed=config.seed,
    )
    lora = LoraConfig(
        r=agent.lora_rank,
        lora_alpha=agent.lora_alpha,
        lora_dropout=agent.lora_dropout,
        target_modules="all-linear" if agent.lora_target_modules == ["all-linear"] else list(agent.lora_target_modules),
        task_type="CAUSAL_LM",
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=rewards.functions,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
    )
    return trainer, scorer


class CheckpointMarker(TrainerCallback):
    """Marks each TRL checkpoint complete, with the run's fingerprint, once the trainer has saved all of it."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            publish.write_json(checkpoint / _COMPLETE, {"fingerprint": self.fingerprint, "step": state.global_step})


def last_complete_checkpoint(trainer_dir: Path, fingerprint: str) -> str | None:
    """The newest checkpoint a killed training left complete; incomplete ones are skipped, saying so."""
    steps = {
        int(match.group(1)): path
        for path in (trainer_dir.iterdir() if trainer_dir.is_dir() else [])
        if (match := _CHECKPOINT.match(path.name)) and path.is_dir()
    }
    for step in sorted(steps, reverse=True):
        marker = steps[step] / _COMPLETE
        if not marker.is_file():
            # Killed while saving: the one before it is what the run last finished.
            print(f"rewrite: RL agent checkpoint {steps[step]} is incomplete: skipped", flush=True)
            continue
        found = json.loads(marker.read_text()).get("fingerprint")
        if found != fingerprint:
            raise MindgapError(
                f"rewrite: RL agent checkpoint {steps[step]} belongs to another run (fingerprint {found}, this run "
                f"{fingerprint}); delete {trainer_dir} to train from the start"
            )
        return str(steps[step])
    return None


def train_adapter(
    config: MindgapConfig,
    problems: list[Problem],
    model: ModelSource,
    verifier: BatchVerifier,
    root: Path,
    fingerprint: str,
) -> Path:
    """Train the LoRA rewriter with GRPO on ``problems``; save it to ``root/adapter`` and its log to training.json."""
    started = time.time()
    trainer_dir = root / TRAINER_DIR
    trainer, scorer = build_grpo_trainer(config, problems, model, verifier, trainer_dir)
    trainer.add_callback(CheckpointMarker(fingerprint))
    try:
        checkpoint = last_complete_checkpoint(trainer_dir, fingerprint)
        trainer.train(resume_from_checkpoint=checkpoint)
        history = trainer.state.log_history
        log = {
            "steps": trainer.state.global_step,
            "resumed_from": checkpoint,
            "wall_time_s": round(time.time() - started, 3),
            "adapter_dir": str(root / ADAPTER_DIR),
            "training_log": str(root / TRAINING_LOG),
            "reward_means": _reward_means(history),
            "log_history": history,
        }
        # The log first, then the adapter (whose COMPLETE marker says both are there).
        publish.write_json(root / TRAINING_LOG, log, indent=2)
        with publish.staged_dir(root / ADAPTER_DIR) as staging:
            trainer.model.save_pretrained(str(staging))
            (staging / _COMPLETE).touch()
    finally:
        scorer.close()
        del trainer
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    shutil.rmtree(trainer_dir, ignore_errors=True)
    return root / ADAPTER_DIR


@contextmanager
def _trl_version_warning_silenced() -> Iterator[None]:
    """TRL warns at import about the installed vLLM version; its vLLM integration is not used here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TRL currently supports vLLM", category=UserWarning)
        yield


def _reward_means(history: list[dict[str, Any]]) -> dict[str, float]:
    """Each reward term's (and the total's) mean over the logged steps."""
    keys = {f"rewards/{term}/mean": term for term in REWARD_TERMS} | {"reward": "total"}
    means = {}
    for key, name in keys.items():
        values = [entry[key] for entry in history if key in entry]
        if values:
            means[name] = sum(values) / len(values)
    return means


def _merge_adapter(backbone: ModelSource, dtype: str, adapter_dir: Path, merged: Path) -> None:
    from peft import PeftModel

    base = load_causal_lm(backbone, dtype=dtype)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with publish.staged_dir(merged) as staging:
        model.save_pretrained(str(staging))
        load_tokenizer(backbone).save_pretrained(str(staging))
        (staging / _COMPLETE).touch()
    del model, base
    gc.collect()
