"""Every committed config composes and validates; bad keys and values fail fast, in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from mindgap.config import EvalAppConfig, MindgapConfig, register_configs, to_typed
from mindgap.errors import ConfigError
from mindgap.models.config import TinyModelConfig
from mindgap.paths import CONFIG_DIR
from mindgap.pipeline.app import check_forgetting
from tests.conftest import run_app_subprocess

APPS = ("rewrite", "train", "eval", "pipeline")
GROUPS = ("model", "data", "logger", "generator", "rewrite", "loss", "strategy")
# mindgap-eval adds top-level shorthands for its eval.* keys to the shared schema.
SCHEMAS = {"eval": EvalAppConfig}


def _options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def _compose(app: str, overrides: list[str]):
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(app, overrides=["output_dir=/tmp/unused", *overrides], return_hydra_config=False)


FILL_REQUIRED = {"model": {"local": ["model.name_or_path=/some/dir"]}, "data": {"file": ["data.path=/some/file.jsonl"]}}


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("experiment", [None, *_options("experiment")])
def test_every_app_and_experiment_composes(app: str, experiment: str | None) -> None:
    overrides = [] if experiment is None else [f"experiment={experiment}"]
    typed = to_typed(_compose(app, overrides), SCHEMAS.get(app, MindgapConfig))
    assert typed.output_dir == "/tmp/unused"
    assert typed.data_root.endswith("shared/data")
    if app == "pipeline":
        check_forgetting(typed)


def test_forgetting_benchmarks_must_be_evaluated() -> None:
    typed = to_typed(_compose("pipeline", ["experiment=demo", "pipeline.forgetting_benchmarks=[mmlu]"]), MindgapConfig)
    with pytest.raises(ConfigError, match="mmlu not among the evaluated benchmarks"):
        check_forgetting(typed)


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize(
    ("group", "option"),
    [(group, option) for group in GROUPS for option in _options(group)],
)
def test_every_group_option_composes(app: str, group: str, option: str) -> None:
    overrides = [f"{group}={option}", *FILL_REQUIRED.get(group, {}).get(option, [])]
    typed = to_typed(_compose(app, overrides), SCHEMAS.get(app, MindgapConfig))
    node = getattr(typed.train, group) if group in ("loss", "strategy") else getattr(typed, group)
    # A benchmark's hub copy (data/<name>_hub.yaml) keeps the benchmark's name, so their results compare; a
    # strategy's preset (rewrite/<strategy>_paper.yaml) is that strategy.
    expected = {"data": option.removesuffix("_hub"), "rewrite": option.removesuffix("_paper")}.get(group, option)
    assert (
        getattr(node, "strategy" if group == "rewrite" else "backend" if group in ("logger", "generator") else "name")
        == expected
    )


@pytest.mark.parametrize("launcher", _options("hydra/launcher"))
def test_launcher_configs_compose(launcher: str) -> None:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.startswith("hydra_plugins.hydra_submitit_launcher")
    assert cfg.hydra.launcher.tasks_per_node == 1


SWEEP_JOBS = {"seeds": 5, "rewrite_shards": 4, "loss_by_data": 6, "clip": 4, "stages": 3}


@pytest.mark.parametrize("sweep", _options("sweep"))
def test_every_job_of_every_sweep_composes(sweep: str) -> None:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("pipeline", overrides=["output_dir=/tmp/unused", f"+sweep={sweep}"], return_hydra_config=True)
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    # The basic sweeper's own expansion of the sweep's parameters into jobs.
    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), max_batch_size=None)[0]
    assert len(jobs) == SWEEP_JOBS[sweep]
    for job in jobs:
        typed = to_typed(_compose("pipeline", [f"+sweep={sweep}", *job]), MindgapConfig)
        if sweep in ("loss_by_data", "clip", "stages"):
            assert typed.pipeline.variants == []
        if sweep == "clip":
            assert typed.train.loss.name == "is" and typed.rewrite.strategy == "mind_the_gap"


def test_data_limit_and_common_keys_override() -> None:
    typed = to_typed(_compose("rewrite", ["data=math500", "data.limit=3", "seed=7", "logger=csv"]), MindgapConfig)
    assert (typed.data.name, typed.data.limit, typed.seed, typed.logger.backend) == ("math500", 3, 7, "csv")


def test_tiny_model_must_have_head_dim_64() -> None:
    with pytest.raises(ConfigError, match="head dim of 64"):
        TinyModelConfig(hidden_size=64, num_attention_heads=4)


def test_value_checks_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"rewrite\.guided_sampling\.top_p=1\.5"):
        to_typed(_compose("rewrite", ["rewrite.guided_sampling.top_p=1.5"]), MindgapConfig)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.limt=3", "Key 'limt' not in 'DataConfig'"),
        ("data.limit=abc", "could not be converted to Integer"),
        ("+extra_key=1", "unknown config key 'extra_key'"),
        ("model=no_such_model", "Could not find 'model/no_such_model'"),
        ("model.dtype=fp8", "model.dtype='fp8' is not one of"),
    ],
)
def test_bad_config_fails_fast_with_one_line(override: str, expected: str) -> None:
    result = run_app_subprocess("rewrite", override, "output_dir=/tmp/never-written")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mindgap-rewrite: error: ")
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["pipeline.rounds=3", "train.max_steps=64"], "DR+SFT trains for 3 rounds; set train.max_steps to a multiple"),
        (["pipeline.rounds=3", "train.max_steps=null"], "every variant trains for train.max_steps steps"),
        (["pipeline.variants=[{name: SFT, rewrite: none, rounds: 2}]"], "rewrite=none has no rewriting to repeat"),
        (["rounds.resolve=some"], "rounds.resolve='some' is not one of all, unsolved"),
        (
            # One variant, but two training runs: each would start its own ranks.
            [
                "pipeline.variants=[{name: DR, rewrite: mind_the_gap}]",
                "pipeline.baseline=DR",
                "pipeline.rounds=2",
                "train.max_steps=64",
                "strategy=ddp",
                "train.strategy.devices=2",
            ],
            "2 training runs (variants and their rounds) with strategy=ddp need ranks started by torchrun",
        ),
        (
            [
                "pipeline.variants=[{name: A, rewrite: mind_the_gap, rounds: 3}, {name: B, rewrite: mind_the_gap,"
                " rounds: 2}]",
                "pipeline.baseline=A",
                "rounds.steps_per_round=5",
            ],
            "B trains for 2 rounds, which cannot split 3 rounds of rounds.steps_per_round=5 steps evenly",
        ),
    ],
)
def test_rounds_that_cannot_split_the_steps_fail_before_any_work(overrides: list[str], message: str) -> None:
    from mindgap.pipeline.app import pipeline

    with pytest.raises(ConfigError, match=re.escape(message)):
        pipeline(to_typed(_compose("pipeline", ["experiment=demo", *overrides]), MindgapConfig), Path("unused"))
