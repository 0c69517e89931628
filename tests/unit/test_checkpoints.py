"""Resume with provenance: only complete checkpoints of the same run; metrics.csv continued, never deleted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.errors import ConfigError
from mindgap.paths import CONFIG_DIR
from mindgap.tracking import AppendingCSVLogger
from mindgap.training.checkpoints import marker_of, resume_path, run_fingerprint


def _config(*overrides: str) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return to_typed(compose("train", overrides=["experiment=smoke", "output_dir=out", *overrides]), MindgapConfig)


def _checkpoint(directory: Path, step: int, fingerprint: dict[str, str] | None) -> Path:
    # A sharded (fsdp2) checkpoint is a directory; a complete one has its marker beside it.
    path = directory / f"step-{step:06d}.ckpt"
    path.mkdir(parents=True)
    if fingerprint is not None:
        marker_of(path).write_text(json.dumps({"fingerprint": fingerprint, "step": step}))
    return path


def test_resume_last_skips_an_incomplete_newest_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fingerprint = run_fingerprint(_config())
    complete = _checkpoint(tmp_path, 2, fingerprint)
    broken = _checkpoint(tmp_path, 4, None)
    assert resume_path("last", tmp_path, fingerprint) == str(complete)
    assert f"{broken} is incomplete" in capsys.readouterr().out


def test_resume_last_without_a_complete_checkpoint_starts_fresh(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 4, None)
    assert resume_path("last", tmp_path, run_fingerprint(_config())) is None


def test_an_explicit_incomplete_checkpoint_is_refused(tmp_path: Path) -> None:
    broken = _checkpoint(tmp_path, 4, None)
    with pytest.raises(ConfigError, match=r"incomplete.*train\.checkpoint\.resume=null"):
        resume_path(str(broken), tmp_path, run_fingerprint(_config()))


@pytest.mark.parametrize(
    ("override", "part"),
    [
        ("loss=dft", "loss"),
        ("train.optim.lr=0.5", "optimiser"),
        ("data.limit=5", "data"),
        ("train.micro_batch_size=2", "batch layout"),
        ("strategy=ddp", "strategy"),
        ("model=toy", "model"),
    ],
)
def test_another_runs_checkpoint_is_refused_naming_what_differs(tmp_path: Path, override: str, part: str) -> None:
    _checkpoint(tmp_path, 2, run_fingerprint(_config()))
    with pytest.raises(ConfigError, match=f"its {part} differ"):
        resume_path("last", tmp_path, run_fingerprint(_config(override)))


def test_where_a_run_logs_and_resumes_from_is_not_part_of_its_fingerprint() -> None:
    assert run_fingerprint(_config()) == run_fingerprint(
        _config("train.checkpoint.resume=last", "logger=csv", "train.progress_bar=false")
    )


def test_metrics_csv_of_an_earlier_run_is_continued_not_deleted(tmp_path: Path) -> None:
    first = AppendingCSVLogger(save_dir=str(tmp_path), name="", version="")
    first.log_metrics({"train/loss": 2.0}, step=0)
    first.save()
    resumed = AppendingCSVLogger(save_dir=str(tmp_path), name="", version="")
    resumed.log_metrics({"train/loss": 1.0, "val/loss": 1.5}, step=1)
    resumed.save()
    with (tmp_path / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    kept = [(row["step"], row["train/loss"], row["val/loss"]) for row in rows]
    assert kept == [("0", "2.0", ""), ("1", "1.0", "1.5")]
