"""Supervised fine-tuning: pure losses, the LightningModule, and the run that exports the model."""
