"""The LightningDataModule over a rewritten dataset on disk."""

from __future__ import annotations

import torch
from datasets import load_from_disk
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from mindgap.data.collate import Collator, TokenizedExample, tokenize_record
from mindgap.errors import DataError
from mindgap.models import load_tokenizer


class RecordsDataModule(LightningDataModule):
    def __init__(
        self, dataset_path: str, model_path: str, prompt_type: str, max_length: int, micro_batch_size: int, seed: int
    ):
        super().__init__()
        self.dataset_path = dataset_path
        self.model_path = model_path
        self.prompt_type = prompt_type
        self.max_length = max_length
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.examples: list[TokenizedExample] = []

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        tokenizer = load_tokenizer(self.model_path)
        dataset = load_from_disk(self.dataset_path)
        self.examples = [tokenize_record(row, tokenizer, self.prompt_type, self.max_length) for row in dataset]
        if not self.examples:
            raise DataError(f"dataset {self.dataset_path} has no records to train on")
        self.collator = Collator(tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.examples,
            batch_size=self.micro_batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=self.collator,
        )
