"""Multi-round rewriting (``pipeline.rounds`` or a variant's ``rounds`` > 1): the training data follows the policy.

Round 1 is the one-round pipeline: the initial model rewrites the training problems (once per strategy) and
each variant trains on the result. Round r >= 2 rewrites them again, per variant, with the model that variant
trained in round r-1, through the same resumable stage (its fingerprint holds that model's weights): the
round's model samples, re-solves its failures with the expert's hint, and falls back to the expert when both
fail. That model is the behaviour policy of every record it writes (the rescored log-probs, expert text
included), so the round's importance weights are against the model that produced its data. Under
``rounds.resolve=unsolved`` only the expert fallbacks are rewritten; the other records keep the model that
wrote them as their behaviour policy; under ``resolve=none`` nothing is, and every round trains on round 1's
records (the control for what restarting the optimiser and the schedule each round does). Under
``rewrite=sdft|rl_agent`` the rewriter of round r is the round r-1 model; the RL adapter is trained again for
it (the stage's fingerprint holds its weights), since a LoRA adapter is a delta learnt against the weights it
was trained on. A variant without a rewrite strategy has no data to move: it trains once, for the whole budget.

Each round writes ``rounds/<r>/<variant>/{rewrite,train}``; a killed pipeline restarts at the round and stage
where it stopped, because every stage reuses its finished work. On a cluster, ``python -m mindgap.pipeline.rounds
unsolved|merge`` runs a ``resolve=unsolved`` round's steps around a sharded rewrite (README).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mindgap import publish
from mindgap.config import MindgapConfig
from mindgap.data.config import DataConfig, FieldsConfig
from mindgap.errors import ConfigError
from mindgap.fingerprints import config_fingerprint
from mindgap.locks import Lock
from mindgap.models.config import ModelConfig
from mindgap.pipeline.config import VariantConfig

ROUNDS_DIR = "rounds"
# The problems a round re-solves under rounds.resolve=unsolved, as a jsonl data file.
UNSOLVED_FILE = "unsolved.jsonl"
# Held while a round's records are merged, so that the ranks of a multi-process run merge once.
MERGE_LOCK = "merge.lock"


@dataclasses.dataclass
class Round:
    """What one round of a variant produced."""

    number: int
    # The evaluation's label of the round's model: the variant's name for the last round, <name>@r<number> before.
    label: str
    dataset: Path
    train_dir: Path
    model_dir: Path
    # Its optimiser steps: the rounds of a variant follow one another on the report's step axis.
    steps: int


def round_label(name: str, number: int, rounds: int) -> str:
    return name if number == rounds else f"{name}@r{number}"


def rounds_of(config: MindgapConfig, variant: VariantConfig) -> int:
    """A variant's rounds: its own ``rounds``, else pipeline.rounds; one for a variant without a rewrite."""
    if variant.rewrite == "none":
        return 1
    return variant.rounds or config.pipeline.rounds


def round_steps(config: MindgapConfig, variant: VariantConfig, most_rounds: int) -> int:
    """The optimiser steps of each of the variant's rounds, in a pipeline whose variants have up to ``most_rounds``.

    train.max_steps is then every variant's budget, split evenly over its rounds, so that variants of one and of
    several rounds compare at equal steps. rounds.steps_per_round instead sets each round's steps, and every
    variant's budget is ``most_rounds`` of them (split over its own rounds).
    """
    count, steps = rounds_of(config, variant), config.rounds.steps_per_round
    if steps is not None:
        if steps * most_rounds % count:
            raise ConfigError(
                f"pipeline: {variant.name} trains for {count} rounds, which cannot split {most_rounds} rounds of"
                f" rounds.steps_per_round={steps} steps evenly"
            )
        return steps * most_rounds // count
    total = config.train.max_steps
    if total is None:
        raise ConfigError(
            "pipeline: with variants of several rounds, every variant trains for train.max_steps steps (split over"
            " its rounds): set it, or rounds.steps_per_round"
        )
    if total % count:
        raise ConfigError(
            f"pipeline: {variant.name} trains for {count} rounds; set train.max_steps to a multiple of {count}"
            f" (it is {total}) or set rounds.steps_per_round, so that every round trains for the same steps"
        )
    return total // count


def with_steps(config: MindgapConfig, steps: int, dataset: Path, model: ModelConfig | None = None) -> MindgapConfig:
    """``config`` training for exactly ``steps`` steps on ``dataset`` (epochs never end a round early)."""
    train = dataclasses.replace(config.train, max_steps=steps, max_epochs=steps, dataset_path=str(dataset))
    return dataclasses.replace(config, train=train, model=model or config.model)


def trained_model(initial: ModelConfig, model_dir: Path, name: str) -> ModelConfig:
    """The model a round trained, loaded as the initial one is (same dtype), from its exported directory."""
    return dataclasses.replace(
        initial, name=name, name_or_path=str(model_dir), tiny=None, toy=None, gguf=None, revision=None
    )


def tagged(config: MindgapConfig, number: int) -> MindgapConfig:
    """Runs of one round carry the tag ``round:<number>`` in the experiment's W&B group."""
    logger = dataclasses.replace(config.logger, tags=[*config.logger.tags, f"round:{number}"])
    return dataclasses.replace(config, logger=logger)


def run_rounds(
    config: MindgapConfig,
    variant: VariantConfig,
    first_dataset: Path,
    output_dir: Path,
    rewrite: Callable[..., Path | None],
    train: Callable[..., Path],
    most_rounds: int,
) -> list[Round]:
    """Every round of one variant (``config`` is the variant's); round 1 trains on ``first_dataset``.

    ``most_rounds``: the most rounds of any variant of the pipeline (round_steps)."""
    rounds, steps = rounds_of(config, variant), round_steps(config, variant, most_rounds)
    done: list[Round] = []
    for number in range(1, rounds + 1):
        round_dir = output_dir / ROUNDS_DIR / str(number) / variant.name
        round_config = tagged(config, number)
        dataset = first_dataset
        start = config.model
        if number > 1:
            previous = done[-1]
            behaviour = trained_model(config.model, previous.model_dir, f"{config.model.name}-{previous.label}")
            dataset = _rewrite_round(
                dataclasses.replace(round_config, model=behaviour),
                previous.dataset,
                round_dir / "rewrite",
                functools.partial(rewrite, label=f"{variant.name}-round{number}"),
            )
            if config.rounds.init == "previous":
                start = behaviour
        train_dir = round_dir / "train"
        model_dir = train(
            with_steps(round_config, steps, dataset, start), train_dir, label=f"{variant.name}-round{number}"
        )
        done.append(Round(number, round_label(variant.name, number, rounds), dataset, train_dir, model_dir, steps))
    return done


def _rewrite_round(
    config: MindgapConfig, previous_dataset: Path, output_dir: Path, rewrite: Callable[..., Path | None]
) -> Path:
    if config.rounds.resolve == "none":
        return previous_dataset
    if config.rounds.resolve == "all":
        return _complete(rewrite(config, output_dir))
    return _resolve_unsolved(config, previous_dataset, output_dir, rewrite)


def _complete(dataset: Path | None) -> Path:
    if dataset is None:
        raise ConfigError("rewrite.shard_index runs one shard of mindgap-rewrite; the pipeline needs them all")
    return dataset


def unsolved_data(name: str, path: Path) -> DataConfig:
    """The data config of an unsolved.jsonl: its ids, texts and answers are the loaded ones, so its problems (and
    their fingerprint) are those of the training set."""
    fields = FieldsConfig(id="id", problem="problem", solution="solution", answer="answer")
    return DataConfig(name=name, format="jsonl", path=str(path.resolve()), fields=fields)


def _resolve_unsolved(
    config: MindgapConfig, previous_dataset: Path, output_dir: Path, rewrite: Callable[..., Path | None]
) -> Path:
    """Rewrite only the problems the last round fell back to the expert on, and keep every other record."""
    from datasets import load_from_disk

    previous = list(load_from_disk(str(previous_dataset)))
    unsolved = write_unsolved(previous, config.data.name, output_dir)
    if unsolved is None:
        return previous_dataset
    subset = unsolved_data(config.data.name, unsolved)
    resolved = _complete(rewrite(dataclasses.replace(config, data=subset), output_dir / "resolved"))
    return merge_round(
        previous_dataset, resolved, output_dir, config.rewrite.lock, config.rewrite.lock_stale_s, previous=previous
    )


def write_unsolved(previous: list[dict], data_name: str, output_dir: Path) -> Path | None:
    """``output_dir/unsolved.jsonl``: the problems of the expert records of ``previous`` (the last round's
    records of the training set ``data_name``), as a jsonl data file (unsolved_data); None when there are none."""
    # An expert record is the fallback of a problem the round's model did not solve (its only record).
    unsolved = {row["id"]: row for row in previous if row["source"] == "expert"}
    if not unsolved:
        return None
    prefix = f"{data_name}/"
    for problem_id in unsolved:
        if not problem_id.startswith(prefix):
            raise ConfigError(f"rounds: record {problem_id!r} is not a problem of the training set {data_name!r}")
    lines = [
        json.dumps(
            {
                "id": problem_id.removeprefix(prefix),
                "problem": row["problem"],
                "solution": row["expert_solution"],
                "answer": row["answer"],
            }
        )
        for problem_id, row in unsolved.items()
    ]
    output_dir.mkdir(parents=True, exist_ok=True)
    publish.write_text(output_dir / UNSOLVED_FILE, "\n".join(lines) + "\n")
    return output_dir / UNSOLVED_FILE


def merge_round(
    previous_dataset: Path,
    resolved: Path,
    output_dir: Path,
    lock: str = "flock",
    lock_stale_s: float = 600.0,
    previous: list[dict] | None = None,
) -> Path:
    """``output_dir/dataset``: the last round's records with the re-solved problems' records in place of their
    fallbacks, merged once (under a lock, by the fingerprint of both inputs) by however many jobs ask.
    ``previous``: the records of ``previous_dataset``, when the caller has read them."""
    from datasets import load_from_disk

    from mindgap.rewriting.run import DATASET_DIR, MANIFEST

    fingerprint = config_fingerprint(
        [json.loads((path.parent / MANIFEST).read_text())["fingerprint"] for path in (previous_dataset, resolved)]
    )
    manifest_path = output_dir / MANIFEST
    with Lock(output_dir / MERGE_LOCK, lock, lock_stale_s):
        if not (manifest_path.is_file() and json.loads(manifest_path.read_text()).get("fingerprint") == fingerprint):
            rows = previous if previous is not None else list(load_from_disk(str(previous_dataset)))
            _merge(rows, previous_dataset, resolved, fingerprint, output_dir)
    return output_dir / DATASET_DIR


def _merge(previous: list[dict], previous_dataset: Path, resolved: Path, fingerprint: str, output_dir: Path) -> None:
    """The last round's records (``previous``, saved at ``previous_dataset``) in their order, each unsolved
    problem's expert record replaced by what this round wrote for it (all of its records, under rewrite.keep;
    the expert record again where it wrote none)."""
    from datasets import load_from_disk

    from mindgap.rewriting.run import commit_dataset, source_counts

    new: dict[str, list[dict]] = {}
    for row in load_from_disk(str(resolved)):
        new.setdefault(row["id"], []).append(row)
    rows, replaced = [], set()
    for row in previous:
        if row["id"] not in new:
            rows.append(row)
        elif row["id"] not in replaced:
            rows.extend(new[row["id"]])
            replaced.add(row["id"])
    manifest: dict[str, Any] = {
        "fingerprint": fingerprint,
        "records": len(rows),
        "problems": len({row["id"] for row in rows}),
        "counts_per_source": source_counts(rows),
        "resolve": "unsolved",
        "kept": len(previous) - len(replaced),
        "resolved": len(replaced),
        "resolved_rewritten": sum(row["source"] != "expert" for group in new.values() for row in group),
        "previous_dataset": str(previous_dataset),
        "resolved_dataset": str(resolved),
    }
    commit_dataset(output_dir, rows, manifest)


# Records per source, the expert fallbacks last (beside their share).
SOURCE_COLUMNS = ("self", "guided", "rewritten", "expert")
# The columns of rounds.csv, one row per (variant, round).
ROUND_COLUMNS = (
    "variant",
    "round",
    "records",
    *SOURCE_COLUMNS,
    "expert_share",
    "behavior_logprob",
    "alignment_nll",
    "weight_var",
    "ess",
    "target",
    "forgetting",
)


def round_row(name: str, step: Round, sections: dict[str, Any]) -> dict[str, Any]:
    """One round's composition, policy gap, importance weights and accuracy (percent, the headline metric).

    behavior_logprob: mean log-prob of the training tokens under their behaviour policy (the round's rewriting
    model; for kept records, the one that wrote them), the gap the round's importance weights measure.
    alignment_nll: mean per-token NLL of the responses under the initial model, one scale for every round.
    weight_var, ess: the importance weights' mean over the round's steps (empty for losses without them).
    """
    import pandas as pd
    from datasets import load_from_disk

    from mindgap.pipeline.rewrite_quality import QUALITY_JSON
    from mindgap.rewriting.run import MANIFEST
    from mindgap.training.app import STEP_METRICS

    counts = json.loads((step.dataset.parent / MANIFEST).read_text())["counts_per_source"]
    records = sum(counts.values())
    logprobs = [value for values in load_from_disk(str(step.dataset))["rescored_logprobs"] for value in values or []]
    quality = json.loads((step.dataset.parent / QUALITY_JSON).read_text())["sources"]["all"]
    metrics = pd.read_csv(step.train_dir / STEP_METRICS)
    weights = {
        statistic: float(metrics[column].mean()) if (column := f"is/all/{statistic}") in metrics else float("nan")
        for statistic in ("weight_var", "ess")
    }
    accuracy = {}
    for group in ("target", "forgetting"):
        comparison = sections.get(group)
        accuracy[group] = (
            100 * comparison.values[comparison.metrics[0]][step.label]["mean"].value if comparison else float("nan")
        )
    return {
        "variant": name,
        "round": step.number,
        "records": records,
        **{source: counts.get(source, 0) for source in SOURCE_COLUMNS},
        "expert_share": counts.get("expert", 0) / records,
        "behavior_logprob": sum(logprobs) / len(logprobs) if logprobs else float("nan"),
        "alignment_nll": quality["alignment_nll"],
        **weights,
        **accuracy,
    }


def write_rounds(variants: list[tuple[str, list[Round]]], sections: dict[str, Any], path: Path) -> None:
    """rounds.csv: a row per round of each multi-round variant."""
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=ROUND_COLUMNS)
        writer.writeheader()
        for name, steps in variants:
            for step in steps:
                writer.writerow(round_row(name, step, sections))


def rounds_markdown(path: Path) -> str:
    """The report's Rounds table; a source no round of any variant has (rewritten under mind_the_gap) has no column."""
    import pandas as pd

    table = pd.read_csv(path)
    sources = [source for source in SOURCE_COLUMNS if table[source].any()]
    lines = [
        "## Rounds",
        "",
        "Each round's training set (records per source, expert share), the mean log-prob of its tokens under their"
        " behaviour policy, its alignment NLL under the initial model, the importance weights' mean variance and ESS"
        " over the round's steps, and the round's model's accuracy (percent).",
        "",
        "| variant | round | " + " | ".join(sources) + " | expert share | behaviour log-prob | alignment NLL"
        " | weight var | ESS | target | forgetting |",
        "|---|---:|" + "---:|" * (len(sources) + 7),
    ]
    for row in table.to_dict("records"):
        cells = [
            row["variant"],
            row["round"],
            *(row[source] for source in sources),
            f"{100 * row['expert_share']:.1f}%",
            *(_number(row[column], ".3f") for column in ("behavior_logprob", "alignment_nll")),
            _number(row["weight_var"], ".3g"),
            _number(row["ess"], ".3f"),
            *(_number(row[column], ".2f") for column in ("target", "forgetting")),
        ]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _number(value: float, spec: str) -> str:
    """A value of the table; a measure that does not apply (a loss without weights, no forgetting set) is '-'."""
    return "-" if math.isnan(value) else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    """A ``resolve=unsolved`` round stage by stage, as the cluster recipe runs it (README "Multi-round rewriting"):
    ``unsolved`` writes the problems to re-solve, a sharded mindgap-rewrite re-solves them, ``merge`` merges."""
    from datasets import load_from_disk

    from mindgap.rewriting.run import MANIFEST

    parser = argparse.ArgumentParser(prog="python -m mindgap.pipeline.rounds", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    unsolved = commands.add_parser("unsolved", help="write the problems the last round fell back to the expert on")
    unsolved.add_argument("previous", type=Path, help="the last round's dataset directory")
    unsolved.add_argument("output_dir", type=Path, help=f"where {UNSOLVED_FILE} goes")
    unsolved.add_argument("--data-name", required=True, help="data.name of the training set")
    merge = commands.add_parser("merge", help="the last round's records, the re-solved ones in their place")
    merge.add_argument("previous", type=Path, help="the last round's dataset directory")
    merge.add_argument("resolved", type=Path, help="the dataset directory of the re-solved problems' rewrite")
    merge.add_argument("output_dir", type=Path, help="where the round's dataset and manifest go")
    merge.add_argument("--lock", choices=("flock", "file"), default="flock", help="as rewrite.lock")
    args = parser.parse_args(argv)
    try:
        if args.command == "unsolved":
            previous = list(load_from_disk(str(args.previous)))
            path = write_unsolved(previous, args.data_name, args.output_dir)
            if path is None:
                print(f"mindgap-rounds: {args.previous} has no expert fallback: the round trains on it as it is")
                return 0
            count = sum(row["source"] == "expert" for row in previous)
            print(
                f"mindgap-rounds: {count} of {len(previous)} problems to re-solve in {path}; rewrite them with"
                f" data=file data.name={args.data_name} data.path={path.resolve()} data.fields.id=id"
            )
        else:
            dataset = merge_round(args.previous, args.resolved, args.output_dir, args.lock)
            counts = json.loads((dataset.parent / MANIFEST).read_text())["counts_per_source"]
            print(f"mindgap-rounds: the round's dataset is {dataset} ({counts})")
    except (ConfigError, FileNotFoundError) as error:
        print(f"mindgap-rounds: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
