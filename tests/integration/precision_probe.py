"""One training step that writes, per rank, the dtype of the trained parameters and which weights moved.

``python -m tests.integration.precision_probe OUTPUT_DIR OVERRIDE...`` writes
``OUTPUT_DIR/probe-<rank>.json``: the dtypes of the parameters (their local shards under fsdp2) and,
for weights of magnitude in [2^-6, 2^-5) (about 0.02, where half a bf16 ulp is 6.1e-5), the share
that the step changed. Multi-process strategies re-run this script in every rank.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.paths import CONFIG_DIR
from mindgap.training.run import run_training

BAND = (2.0**-6, 2.0**-5)


def _local(parameter: torch.Tensor) -> torch.Tensor:
    return parameter.to_local() if hasattr(parameter, "to_local") else parameter


class PrecisionProbe(Callback):
    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.before: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = [_local(p).detach().clone() for p in pl_module.model.parameters()]

    def on_train_end(self, trainer, pl_module) -> None:
        after = [_local(p).detach() for p in pl_module.model.parameters()]
        in_band = moved = 0
        for old, new in zip(self.before, after, strict=True):
            band = (old.abs() >= BAND[0]) & (old.abs() < BAND[1])
            in_band += int(band.sum())
            moved += int((band & (new != old)).sum())
        dtypes = sorted({str(p.dtype) for p in after})
        probe = {"dtypes": dtypes, "in_band": in_band, "moved_share": moved / max(in_band, 1)}
        (self.output_dir / f"probe-{trainer.global_rank}.json").write_text(json.dumps(probe))


def main() -> None:
    output_dir, *overrides = sys.argv[1:]
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"output_dir={output_dir}"])
    config = to_typed(cfg, MindgapConfig)
    run_training(config, Path(output_dir), logger=None, callbacks=[PrecisionProbe(Path(output_dir))])


if __name__ == "__main__":
    main()
