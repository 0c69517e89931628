"""The LightningDataModule over the rewriting stage's dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from datasets import load_from_disk
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from mindgap.config import MindgapConfig
from mindgap.data.batching import StepBatchSampler, ValidationBatchSampler
from mindgap.data.collate import Collator, TokenizedExample, tokenize_record
from mindgap.data.sources import load_problems
from mindgap.errors import ConfigError, DataError
from mindgap.models.loading import load_tokenizer
from mindgap.models.resolve import resolve_model
from mindgap.records import validate_record
from mindgap.rewriting.expert import normalize_expert_solution
from mindgap.rewriting.run import DATASET_DIR

REWRITE_DIR = "rewrite"
DATA_REPORT = "data_report.json"
# Source label of validation examples that are a problem's reference (expert) solution: val/loss.
REFERENCE = "reference"


def held_out(problem: str, seed: int, share: float) -> bool:
    """Whether ``train.val_share`` holds this problem out: a hash of its text, the same in every variant."""
    digest = hashlib.sha256(f"{seed}\0{problem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


class RewrittenDataModule(LightningDataModule):
    """Trains on ``train.dataset_path``, or on the rewritten dataset of the configured (model, data, rewrite).

    ``prepare_data`` (one process) makes sure that dataset exists: it runs the rewriting stage when
    it is missing and reuses finished work when the stage fingerprint matches. Every example is the
    standard, unguided prompt followed by the stored response tokens.
    """

    def __init__(self, config: MindgapConfig, output_dir: Path):
        super().__init__()
        # The stage writes to a directory every node sees; generating once is enough.
        self.prepare_data_per_node = False
        self.config = config
        self.output_dir = output_dir
        self.rewrite_dir = output_dir / REWRITE_DIR
        given = config.train.dataset_path
        self.dataset_path = Path(given) if given is not None else self.rewrite_dir / DATASET_DIR
        self.examples: list[TokenizedExample] = []
        # Validation examples: reference solutions (source ``reference``) and held-out rewritten records.
        self.val_examples: list[TokenizedExample] = []
        # What setup trained on and left out (also written to <output_dir>/data_report.json).
        self.report: dict[str, Any] = {}

    def prepare_data(self) -> None:
        if self.config.train.dataset_path is not None:
            if not self.dataset_path.is_dir():
                raise DataError(f"train.dataset_path={self.dataset_path} is not a saved dataset directory")
            self._validate_given_dataset()
            return
        if self.config.rewrite.shard_index is not None:
            raise ConfigError("rewrite.shard_index is for mindgap-rewrite jobs; training needs every shard merged")
        from mindgap.rewriting.app import rewrite

        rewrite(self.config, self.rewrite_dir)

    def _validate_given_dataset(self) -> None:
        """Every row of ``train.dataset_path`` against the record schema, before the model loads (in setup).

        The stage's own output is valid by construction (each Record validates itself); a given dataset may be
        written by anything.
        """
        for number, row in enumerate(load_from_disk(str(self.dataset_path)), start=1):
            try:
                validate_record(row)
            except DataError as error:
                raise DataError(f"train.dataset_path={self.dataset_path}: row {number}: {error}") from None

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        train = self.config.train
        tokenizer = load_tokenizer(resolve_model(self.config.model, self.config.cache_dir, self.config.data_root))
        dataset = load_from_disk(str(self.dataset_path))
        behavior_field = None
        if train.loss.name == "is":
            behavior_field = {"rescored": "rescored_logprobs", "recorded": "behavior_logprobs"}[
                train.loss.behavior_logprobs
            ]
        left_out: dict[str, list[str]] = {"empty_response": [], "overlong_dropped": [], "no_response_fits": []}
        truncated: list[str] = []
        held_out_rows = []
        for row in dataset:
            if train.val_share is not None and held_out(row["problem"], self.config.seed, train.val_share):
                held_out_rows.append(row)
                continue
            example = tokenize_record(row, tokenizer, self.config.prompt_type, train.max_length, behavior_field)
            if example.truncated_tokens and train.overlong == "drop":
                left_out["overlong_dropped"].append(example.id)
            elif example.loss_tokens == 0:
                # A record with nothing to train on would give its optimiser step a zero denominator.
                reason = "no_response_fits" if example.truncated_tokens else "empty_response"
                left_out[reason].append(example.id)
            else:
                if example.truncated_tokens:
                    truncated.append(example.id)
                self.examples.append(example)
        if not self.examples:
            raise DataError(f"dataset {self.dataset_path}: no record has a response token to train on")
        self.val_examples = self._validation_examples(tokenizer, held_out_rows)
        sampler = self._sampler()
        self.report = {
            "dataset": str(self.dataset_path),
            "records": len(dataset),
            "trained": len(self.examples),
            "truncated": {"count": len(truncated), "ids": truncated},
            "left_out": {reason: {"count": len(ids), "ids": ids} for reason, ids in left_out.items()},
            "held_out_for_validation": {"count": len(held_out_rows), "ids": [row["id"] for row in held_out_rows]},
            "validation_examples": {
                source: sum(example.source == source for example in self.val_examples)
                for source in sorted({example.source for example in self.val_examples})
            },
            "max_length": train.max_length,
            "overlong": train.overlong,
            # Every trained record is in exactly one step of each epoch; the last step may be smaller.
            "steps_per_epoch": sampler.steps_per_epoch(),
            "records_per_step": train.micro_batch_size * train.accumulate_grad_batches * sampler.world_size,
        }
        if self.trainer is None or self.trainer.is_global_zero:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / DATA_REPORT).write_text(json.dumps(self.report, indent=2) + "\n")
        self.collator = Collator(tokenizer.pad_token_id)

    def _validation_examples(self, tokenizer, held_out_rows: list[dict[str, Any]]) -> list[TokenizedExample]:
        """Reference solutions of ``train.val`` or of the held-out problems, then the held-out responses."""
        train = self.config.train
        if train.val is not None:
            problems = load_problems(train.val, self.config.data_root, strict=True, cache_dir=self.config.cache_dir)
            references = [
                {"id": p.id, "problem": p.problem, "answer": p.answer, "expert_solution": p.expert_solution}
                for p in problems.problems
                if p.expert_solution
            ]
            if not references:
                raise DataError(f"train.val={train.val.name}: no problem has a reference solution to validate on")
        else:
            by_problem = {row["problem"]: row for row in held_out_rows}
            references = [dict(row) for row in by_problem.values()]
        examples = [
            tokenize_record(
                {
                    "id": reference["id"],
                    "problem": reference["problem"],
                    "source": REFERENCE,
                    "response": normalize_expert_solution(reference["expert_solution"], reference["answer"]),
                    "response_token_ids": None,
                },
                tokenizer,
                self.config.prompt_type,
                train.max_length,
            )
            for reference in references
        ]
        prompt_type = self.config.prompt_type
        examples += [tokenize_record(row, tokenizer, prompt_type, train.max_length) for row in held_out_rows]
        return [example for example in examples if example.loss_tokens > 0]

    def optimizer_steps_per_epoch(self) -> int:
        return self._sampler().steps_per_epoch()

    def micro_batches_per_epoch(self) -> int:
        return len(self._sampler())

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(
            _PlannedExamples(self.examples), self._sampler(), self.collator, micro_batches_done=self._micro_batches_done
        )

    def val_dataloader(self) -> DataLoader:
        if not self.val_examples:
            return []
        trainer = self.trainer
        sampler = ValidationBatchSampler(
            [len(example.input_ids) for example in self.val_examples],
            self.config.train.micro_batch_size,
            world_size=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        return DataLoader(_CountedExamples(self.val_examples), batch_sampler=sampler, collate_fn=self._collate_counted)

    def _collate_counted(self, items: list[tuple[TokenizedExample, bool]]) -> dict[str, Any]:
        batch = self.collator([example for example, _ in items])
        batch["counted"] = items[0][1]
        return batch

    def _sampler(self) -> StepBatchSampler:
        train = self.config.train
        trainer = self.trainer
        return StepBatchSampler(
            lengths=[len(example.input_ids) for example in self.examples],
            loss_tokens=[example.loss_tokens for example in self.examples],
            micro_batch_size=train.micro_batch_size,
            accumulate=train.accumulate_grad_batches,
            world_size=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=self.config.seed,
            group_by_length=True,
        )

    def _micro_batches_done(self) -> int:
        # Checkpoints are written after a micro-batch is processed; the resumed loader starts after it.
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed


class ResumableLoader(DataLoader):
    """A DataLoader over a step plan whose state is the fit loop's position in the epoch.

    Lightning saves ``state_dict`` in checkpoints and hands it back on resume, so a run resumed
    mid-epoch continues with the micro-batch after the checkpoint, as the uninterrupted run did.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_sampler: StepBatchSampler,
        collate_fn: Callable[[list[TokenizedExample]], dict[str, Any]],
        micro_batches_done: Callable[[], int],
    ):
        super().__init__(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn)
        self.micro_batches_done = micro_batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "micro_batches_done": self.micro_batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.resume(state["epoch"], state["micro_batches_done"])


class _PlannedExamples(Dataset):
    """Examples addressed by ``(index, step loss tokens)``, as the step batch sampler yields them."""

    def __init__(self, examples: list[TokenizedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> TokenizedExample:
        index, step_loss_tokens = key
        return dataclasses.replace(self.examples[index], step_loss_tokens=step_loss_tokens)


class _CountedExamples(Dataset):
    """Validation examples addressed by ``(index, counted)``; uncounted ones only keep ranks in step."""

    def __init__(self, examples: list[TokenizedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[TokenizedExample, bool]:
        index, counted = key
        return self.examples[index], counted
