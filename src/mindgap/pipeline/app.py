"""mindgap-pipeline: rewrite, train every variant, evaluate them all, write the report.

The stages' code is imported by the job, once the config is valid (see ``mindgap.app``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from mindgap.app import is_rank_zero, run_app, run_cli
from mindgap.config import MindgapConfig, register_configs
from mindgap.errors import ConfigError
from mindgap.evaluation.app import evaluate
from mindgap.paths import CONFIG_DIR
from mindgap.pipeline.config import VariantConfig
from mindgap.rewriting.app import rewrite
from mindgap.training.app import train

register_configs()

REWRITE_DIR, TRAIN_DIR, EVAL_DIR, REPORT_DIR = "rewrite", "train", "eval", "report"
# Set by the launchers that start every rank themselves (torchrun, SLURM with one task per device).
_EXTERNAL_LAUNCH = ("TORCHELASTIC_RUN_ID", "SLURM_STEP_NUM_TASKS")


def variants_of(config: MindgapConfig) -> list[VariantConfig]:
    """The configured variants, or the one the plain rewrite + loss keys describe."""
    return config.pipeline.variants or [VariantConfig("run", config.rewrite.strategy, config.train.loss)]


def _check_launch(config: MindgapConfig, variants: list[VariantConfig]) -> None:
    from mindgap.pipeline.rounds import rounds_of

    strategy = config.train.strategy
    relaunching = strategy.name in ("ddp", "fsdp2", "fsdp") and strategy.world_size > 1
    runs = sum(rounds_of(config, variant) for variant in variants)
    if runs > 1 and relaunching and not any(key in os.environ for key in _EXTERNAL_LAUNCH):
        # Lightning would start new rank processes for every training run while the first ones still run.
        raise ConfigError(
            f"pipeline: {runs} training runs (variants and their rounds) with strategy={strategy.name} need ranks"
            " started by torchrun or SLURM; on one machine use strategy=ddp_spawn"
        )


def check_forgetting(config: MindgapConfig) -> None:
    """Forgetting benchmarks are named as the evaluation names them: each must be one of eval.benchmarks."""
    from mindgap.data.sources import data_config

    evaluated = {data_config(name).name for name in config.eval.benchmarks or []}
    unknown = [name for name in config.pipeline.forgetting_benchmarks if name not in evaluated]
    if unknown:
        raise ConfigError(
            f"pipeline.forgetting_benchmarks: {', '.join(unknown)} not among the evaluated benchmarks"
            f" ({', '.join(sorted(evaluated))})"
        )


def pipeline(config: MindgapConfig, output_dir: Path) -> float:
    """Rewrite once per strategy, train each variant, evaluate them (and the initial model), report.

    With ``pipeline.rounds`` > 1, each variant that rewrites goes on for more rounds (mindgap.pipeline.rounds),
    and every round's model is evaluated. Returns the first variant's mean score, the sweep metric.
    """
    from mindgap.models.resolve import resolve_model_path
    from mindgap.pipeline.report import BASE_LABEL, TrainedVariant, write_report
    from mindgap.pipeline.rewrite_quality import dataset_quality
    from mindgap.pipeline.rounds import round_steps, rounds_of, run_rounds, with_steps

    variants = variants_of(config)
    _check_launch(config, variants)
    check_forgetting(config)
    most_rounds = max(rounds_of(config, variant) for variant in variants)
    if most_rounds > 1:
        for variant in variants:
            round_steps(config, variant, most_rounds)
    single = len(variants) == 1
    datasets: dict[str, Path] = {}
    for strategy in dict.fromkeys(variant.rewrite for variant in variants):
        stage_config = dataclasses.replace(config, rewrite=dataclasses.replace(config.rewrite, strategy=strategy))
        dataset = rewrite(stage_config, output_dir / REWRITE_DIR if single else output_dir / REWRITE_DIR / strategy)
        if dataset is None:
            raise ConfigError("rewrite.shard_index runs one shard of mindgap-rewrite; the pipeline needs them all")
        datasets[strategy] = dataset

    trained = []
    for variant in variants:
        variant_config = dataclasses.replace(
            config,
            rewrite=dataclasses.replace(config.rewrite, strategy=variant.rewrite),
            train=dataclasses.replace(config.train, loss=variant.loss, dataset_path=str(datasets[variant.rewrite])),
        )
        if rounds_of(config, variant) > 1:
            done = run_rounds(
                variant_config, variant, datasets[variant.rewrite], output_dir, rewrite, train, most_rounds
            )
            last = done[-1]
            trained.append(TrainedVariant(variant, datasets[variant.rewrite], last.train_dir, last.model_dir, done))
            continue
        if most_rounds > 1:
            steps = round_steps(config, variant, most_rounds)
            variant_config = with_steps(variant_config, steps, datasets[variant.rewrite])
        train_dir = output_dir / TRAIN_DIR if single else output_dir / TRAIN_DIR / variant.name
        model_dir = train(variant_config, train_dir, label=None if single else variant.name)
        trained.append(TrainedVariant(variant, datasets[variant.rewrite], train_dir, model_dir))
    if not is_rank_zero():
        # A multi-process training run re-runs the app in each extra process; only rank zero evaluates.
        return float("nan")

    for dataset in dict.fromkeys([*datasets.values(), *(step.dataset for item in trained for step in item.rounds)]):
        dataset_quality(config, dataset)
    # Every round's model is evaluated: the last under the variant's name, the earlier ones as <name>@r<k>.
    evaluated = [
        (label, str(model_dir))
        for item in trained
        for label, model_dir in [
            *((step.label, step.model_dir) for step in item.rounds[:-1]),
            (item.variant.name, item.model_dir),
        ]
    ]
    labels, models = [label for label, _ in evaluated], [model for _, model in evaluated]
    if config.pipeline.evaluate_base:
        labels.append(BASE_LABEL)
        models.append(resolve_model_path(config.model, config.cache_dir, config.data_root))
    eval_config = dataclasses.replace(
        config,
        eval=dataclasses.replace(
            config.eval, models=models, labels=labels, baseline=config.pipeline.baseline or variants[0].name
        ),
    )
    score = evaluate(eval_config, output_dir / EVAL_DIR)
    report_dir = output_dir / REPORT_DIR
    for line in write_report(eval_config, trained, output_dir / EVAL_DIR, report_dir):
        print(f"mindgap-pipeline: {line}", flush=True)
    print(f"mindgap-pipeline: report in {report_dir}", flush=True)
    return score


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="pipeline")
def _hydra_main(cfg: DictConfig) -> float:
    return run_app(cfg, MindgapConfig, pipeline, "pipeline")


def main() -> None:
    run_cli(_hydra_main, "pipeline")


if __name__ == "__main__":
    main()
