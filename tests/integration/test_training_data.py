"""What training takes from a dataset: overlong and empty records are counted, by policy, never NaN; a given
dataset is checked against the record schema first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk
from hydra import compose, initialize_config_dir

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.data.datamodule import DATA_REPORT, RewrittenDataModule
from mindgap.errors import ConfigError, DataError
from mindgap.paths import CONFIG_DIR
from mindgap.records import FEATURES
from mindgap.rewriting.app import rewrite
from mindgap.training.run import run_training


def _config(output_dir: Path, *overrides: str) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke", "rewrite=none", f"output_dir={output_dir}", *overrides])
    return to_typed(cfg, MindgapConfig)


@pytest.fixture(scope="module")
def awkward_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four expert records: #1 has a very long solution, #2 is a generated response with no token."""
    out = tmp_path_factory.mktemp("awkward")
    rows = [dict(row) for row in load_from_disk(str(rewrite(_config(out, "data.limit=4"), out / "rewrite")))]
    rows[1]["response"] = " ".join(["step"] * 400) + " The final answer is $\\boxed{1}$."
    rows[2] |= {"source": "self", "response": "", "response_token_ids": [], "behavior_logprobs": []}
    path = out / "dataset"
    Dataset.from_list(rows, features=FEATURES).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(("policy", "trained", "truncated", "dropped"), [("truncate", 3, 1, 0), ("drop", 2, 0, 1)])
def test_overlong_and_empty_records_are_counted(
    tmp_path: Path, awkward_dataset: Path, policy: str, trained: int, truncated: int, dropped: int
) -> None:
    config = _config(
        tmp_path, f"train.dataset_path={awkward_dataset}", "train.max_length=300", f"train.overlong={policy}"
    )
    datamodule = RewrittenDataModule(config, tmp_path)
    datamodule.setup("fit")
    report = json.loads((tmp_path / DATA_REPORT).read_text())
    assert report["records"] == 4 and report["trained"] == trained == len(datamodule.examples)
    assert report["truncated"]["count"] == truncated
    assert report["left_out"]["overlong_dropped"]["count"] == dropped
    assert report["left_out"]["empty_response"] == {
        "count": 1,
        "ids": [datamodule.report["left_out"]["empty_response"]["ids"][0]],
    }
    assert all(len(example.input_ids) <= 300 and example.loss_tokens > 0 for example in datamodule.examples)


def test_given_dataset_is_validated_before_the_model_loads(
    tmp_path: Path, awkward_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the dataset was validated")

    monkeypatch.setattr("mindgap.training.module.load_causal_lm", no_model)
    config = _config(tmp_path, f"train.dataset_path={awkward_dataset}")
    # Row 3 is a model response without its text and tokens: not a record of the schema.
    with pytest.raises(DataError, match=f"train.dataset_path={awkward_dataset}: row 3: record .*: field 'response'"):
        run_training(config, tmp_path, logger=None)


@pytest.fixture(scope="module")
def overlong_dataset(awkward_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The awkward records that are valid records: the long one and two ordinary ones."""
    rows = [row for index, row in enumerate(load_from_disk(str(awkward_dataset))) if index != 2]
    path = tmp_path_factory.mktemp("overlong") / "dataset"
    Dataset.from_list(rows, features=FEATURES).save_to_disk(str(path))
    return path


@pytest.mark.slow
def test_training_on_the_awkward_records_has_finite_losses(tmp_path: Path, overlong_dataset: Path) -> None:
    config = _config(
        tmp_path, f"train.dataset_path={overlong_dataset}", "train.max_length=300", "logger=csv", "loss=dft"
    )
    from mindgap.app import stage_tracker

    tracker = stage_tracker(config, tmp_path, "train")
    run_training(config, tmp_path, tracker.logger)
    tracker.finish()
    metrics = next((tmp_path / "csv").glob("*/metrics.csv")).read_text().splitlines()
    header = metrics[0].split(",")
    losses = [float(row.split(",")[header.index("train/loss")]) for row in metrics[1:]]
    assert len(losses) == 1 and all(0 < loss < 100 for loss in losses)
    efficiency = float(metrics[1].split(",")[header.index("train/padding_efficiency")])
    assert 0 < efficiency <= 1


def test_fsdp_refuses_cpu_with_a_pointer_to_fsdp2(tmp_path: Path) -> None:
    config = _config(tmp_path, "strategy=fsdp", "train.strategy.accelerator=cpu", "train.strategy.devices=2")
    with pytest.raises(ConfigError, match=r"fsdp .* runs on GPUs only; use strategy=fsdp2"):
        run_training(config, tmp_path, logger=None)


@pytest.mark.slow
def test_wandb_run_is_grouped_tagged_and_gets_weight_histograms(tmp_path: Path) -> None:
    from mindgap.training.app import train

    config = _config(tmp_path, "loss=dft", "logger=wandb", "train.histogram_every_n_steps=1", "data.limit=4")
    train(config, tmp_path)
    import wandb

    # The W&B service writes the offline file asynchronously; shutting it down flushes it.
    wandb.teardown()
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    # The offline run is a log of protobuf records: the keys and strings appear verbatim.
    records = run_file.read_bytes()
    for expected in (b"is/expert/log10_weight", b"loss:dft", b"rewrite:none", b"data:gsm8k_train", b"smoke"):
        assert expected in records, expected
    # The smoke data holds expert records only: no histogram for the other sources.
    assert b"is/self/log10_weight" not in records
