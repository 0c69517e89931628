"""A training run that can stop itself after a given optimiser step, as a preempted job would.

Per-step metrics go to ``OUTPUT_DIR/csv/run/metrics.csv``.

``python -m tests.integration.interrupted_training OUTPUT_DIR STOP_AFTER_STEP OVERRIDE...`` (a
STOP_AFTER_STEP of -1 never stops). Multi-process strategies re-run this script in every rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger

from mindgap.config import CONFIG_DIR, MindgapConfig, register_configs, to_typed
from mindgap.training.run import run_training


class StopAfterStep(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_index) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def main() -> None:
    output_dir, stop_after, *overrides = sys.argv[1:]
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"output_dir={output_dir}"])
    callbacks = [StopAfterStep(int(stop_after))] if int(stop_after) >= 0 else []
    logger = CSVLogger(save_dir=output_dir, name="csv", version="run")
    run_training(to_typed(cfg, MindgapConfig), Path(output_dir), logger=logger, callbacks=callbacks)


if __name__ == "__main__":
    main()
