"""The LightningDataModule over the rewriting stage's dataset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from datasets import load_from_disk
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from mindgap.config import MindgapConfig
from mindgap.data.batching import StepBatchSampler
from mindgap.data.collate import Collator, TokenizedExample, tokenize_record
from mindgap.errors import ConfigError, DataError
from mindgap.models import load_tokenizer, resolve_model_path
from mindgap.rewriting.run import DATASET_DIR

REWRITE_DIR = "rewrite"


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
        self.rewrite_dir = output_dir / REWRITE_DIR
        given = config.train.dataset_path
        self.dataset_path = Path(given) if given is not None else self.rewrite_dir / DATASET_DIR
        self.examples: list[TokenizedExample] = []

    def prepare_data(self) -> None:
        if self.config.train.dataset_path is not None:
            if not self.dataset_path.is_dir():
                raise DataError(f"train.dataset_path={self.dataset_path} is not a saved dataset directory")
            return
        if self.config.rewrite.shard_index is not None:
            raise ConfigError("rewrite.shard_index is for mindgap-rewrite jobs; training needs every shard merged")
        from mindgap.rewrite import rewrite

        rewrite(self.config, self.rewrite_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        train = self.config.train
        tokenizer = load_tokenizer(resolve_model_path(self.config.model, self.config.cache_dir, self.config.data_root))
        dataset = load_from_disk(str(self.dataset_path))
        behavior_field = None
        if train.loss.name == "is":
            behavior_field = {"rescored": "rescored_logprobs", "recorded": "behavior_logprobs"}[
                train.loss.behavior_logprobs
            ]
        self.examples = [
            tokenize_record(row, tokenizer, self.config.prompt_type, train.max_length, behavior_field)
            for row in dataset
        ]
        if not self.examples:
            raise DataError(f"dataset {self.dataset_path} has no records to train on")
        self.collator = Collator(tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        train = self.config.train
        trainer = self.trainer
        sampler = StepBatchSampler(
            lengths=[len(example.input_ids) for example in self.examples],
            loss_tokens=[example.loss_tokens for example in self.examples],
            micro_batch_size=train.micro_batch_size,
            accumulate=train.accumulate_grad_batches,
            world_size=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=self.config.seed,
            group_by_length=True,
        )
        return DataLoader(_PlannedExamples(self.examples), batch_sampler=sampler, collate_fn=self.collator)


class _PlannedExamples(Dataset):
    """Examples addressed by ``(index, step loss tokens)``, as the step batch sampler yields them."""

    def __init__(self, examples: list[TokenizedExample]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> TokenizedExample:
        index, step_loss_tokens = key
        return dataclasses.replace(self.examples[index], step_loss_tokens=step_loss_tokens)
