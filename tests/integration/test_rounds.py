"""Multi-round rewriting (mindgap.pipeline.rounds) and the reuse of finished training runs it relies on.

The tiny model on eight GSM8K problems: it solves none of them, so its rounds are expert fallbacks rescored
by each round's model, which is enough to see whose log-probs a round's records carry.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk
from hydra import compose, initialize_config_dir

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.data.sources import load_problems
from mindgap.models.loading import model_fingerprint
from mindgap.models.resolve import resolve_model
from mindgap.paths import CONFIG_DIR
from mindgap.pipeline.config import VariantConfig
from mindgap.records import FEATURES
from mindgap.rewriting.app import rewrite
from mindgap.rewriting.run import MANIFEST
from mindgap.training.app import STEP_METRICS, train

pytestmark = pytest.mark.slow

VARIANTS = (
    "pipeline.variants=[{name: SFT, rewrite: none, loss: {name: sft}},"
    " {name: DR+IS, rewrite: mind_the_gap, loss: {name: is}}]"
)


def _config(app: str, output_dir: Path, *overrides: str) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(app, overrides=["experiment=smoke", "logger=none", f"output_dir={output_dir}", *overrides])
    return to_typed(cfg, MindgapConfig)


def _steps(train_dir: Path) -> list[int]:
    with (train_dir / STEP_METRICS).open() as handle:
        return [int(row["step"]) for row in csv.DictReader(handle) if row["train/loss"]]


def test_a_finished_training_run_is_reused_and_trains_again_on_a_new_dataset_at_its_path(tmp_path: Path) -> None:
    records = tmp_path / "records"
    dataset = rewrite(_config("rewrite", records, "rewrite=none", "data.limit=4"), records)
    config = _config(
        "train", tmp_path, "rewrite=none", "train.max_steps=2", "train.max_epochs=2", f"train.dataset_path={dataset}"
    )
    model = train(config, tmp_path / "run")
    weights = model / "model.safetensors"
    first = weights.stat().st_mtime_ns
    assert train(config, tmp_path / "run") == model
    assert weights.stat().st_mtime_ns == first, "the finished run was trained again"
    # Another dataset published at the same path (here: its manifest's fingerprint changes) is new work...
    manifest = json.loads((dataset.parent / MANIFEST).read_text())
    (dataset.parent / MANIFEST).write_text(json.dumps({**manifest, "fingerprint": "another"}))
    train(config, tmp_path / "run")
    assert weights.stat().st_mtime_ns != first
    # ...and its steps replace the earlier run's in metrics.csv instead of following them.
    assert _steps(tmp_path / "run") == [0, 1]


def test_round_two_rewrites_with_round_one_model_and_trains_on_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mindgap.pipeline import app

    trained: list[MindgapConfig] = []

    def recording_train(config: MindgapConfig, output_dir: Path, label: str | None = None) -> Path:
        trained.append(config)
        return train(config, output_dir, label)

    monkeypatch.setattr(app, "train", recording_train)
    out = tmp_path / "out"
    config = _config("pipeline", out, VARIANTS, "pipeline.rounds=2", "train.max_steps=4", "eval.limit=2")
    app.pipeline(config, out)

    # SFT has no rewrite to repeat: one run of both rounds' steps. DR+IS: two rounds of two steps each.
    assert [(run.train.loss.name, run.train.max_steps) for run in trained] == [("sft", 4), ("is", 2), ("is", 2)]
    assert _steps(out / "train" / "SFT") == [0, 1, 2, 3]
    round_one_model = out / "rounds" / "1" / "DR+IS" / "train" / "model"
    assert trained[2].model.name_or_path == str(round_one_model)
    assert trained[2].logger.tags[-1] == "round:2"
    manifest = json.loads((out / "rounds" / "2" / "DR+IS" / "rewrite" / MANIFEST).read_text())
    behaviour = model_fingerprint(resolve_model(trained[2].model, config.cache_dir, config.data_root))
    initial = model_fingerprint(resolve_model(config.model, config.cache_dir, config.data_root))
    assert behaviour != initial
    assert manifest["behavior_models"] == {"expert": behaviour}
    assert trained[2].train.dataset_path == str(out / "rounds" / "2" / "DR+IS" / "rewrite" / "dataset")

    with (out / "report" / "rounds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["variant"], row["round"], row["expert"]) for row in rows] == [("DR+IS", "1", "8"), ("DR+IS", "2", "8")]
    # Round 2's records are rescored by a model trained on them: their log-probs rise.
    assert float(rows[1]["behavior_logprob"]) > float(rows[0]["behavior_logprob"])
    assert (out / "report" / "figures" / "rounds.png").is_file()
    assert "## Rounds" in (out / "report" / "results.md").read_text()
    labels = [path.name for path in sorted((out / "eval").iterdir()) if (path / "gsm8k_test").is_dir()]
    assert labels == ["DR+IS", "DR+IS@r1", "SFT", "base"]
    with (out / "report" / "training_metrics.csv").open() as handle:
        steps = {int(row["step"]) for row in csv.DictReader(handle) if row["variant"] == "DR+IS"}
    assert steps == {0, 1, 2, 3}, "round 2's steps follow round 1's on one axis"


def test_resolve_unsolved_rewrites_only_the_expert_fallbacks_and_keeps_the_rest(tmp_path: Path, tiny_tokenizer) -> None:
    from mindgap.pipeline.rounds import UNSOLVED_FILE, run_rounds, unsolved_data

    config = _config(
        "pipeline", tmp_path, "pipeline.rounds=2", "train.max_steps=2", "rounds.resolve=unsolved", "rounds.init=initial"
    )
    first = rewrite(config, tmp_path / "first")
    # Round 1 as if the model had solved half the problems itself: those records become its own samples.
    rows = list(load_from_disk(str(first)))
    for row in rows[::2]:
        ids = tiny_tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        row.update(source="self", response_token_ids=ids, behavior_logprobs=[-1.0] * len(ids))
        row["rescored_logprobs"] = [-1.0] * len(ids)
    crafted = tmp_path / "round1" / "dataset"
    Dataset.from_list(rows, features=FEATURES).save_to_disk(str(crafted))
    (crafted.parent / MANIFEST).write_text(json.dumps({"fingerprint": "crafted", "counts_per_source": {}}))

    trained: list[MindgapConfig] = []

    def recording_train(run: MindgapConfig, output_dir: Path, label: str | None = None) -> Path:
        trained.append(run)
        return train(run, output_dir, label)

    variant = VariantConfig("DR+SFT", "mind_the_gap")
    done = run_rounds(config, variant, crafted, tmp_path / "out", rewrite, recording_train, most_rounds=2)

    unsolved = {row["id"] for row in rows if row["source"] == "expert"}
    round_dir = tmp_path / "out" / "rounds" / "2" / "DR+SFT" / "rewrite"
    subset = load_problems(unsolved_data(config.data.name, round_dir / UNSOLVED_FILE), config.data_root)
    originals = {problem.id: problem for problem in load_problems(config.data, config.data_root).problems}
    assert [problem.id for problem in subset.problems] == sorted(unsolved, key=list(originals).index)
    assert all(problem == originals[problem.id] for problem in subset.problems), "the problems survive the file"
    merged = list(load_from_disk(str(done[1].dataset)))
    assert [row["id"] for row in merged] == [row["id"] for row in rows], "the merged set keeps round 1's order"
    for old, new in zip(rows, merged, strict=True):
        if old["source"] == "self":
            assert new == old, "a solved problem keeps its record and its behaviour policy"
        else:
            assert new["rescored_logprobs"] != old["rescored_logprobs"], "re-solved under round 1's model"
    counts = json.loads((round_dir / MANIFEST).read_text())
    assert (counts["kept"], counts["resolved"]) == (len(rows) - len(unsolved), len(unsolved))
    # rounds.init=initial: round 2 restarts from the initial model.
    assert trained[1].model == config.model


def test_a_merged_round_puts_every_record_of_a_resolved_problem_where_its_fallback_was(tmp_path: Path) -> None:
    from mindgap.pipeline.rounds import _merge

    config = _config("rewrite", tmp_path, "rewrite=none", "data.limit=3")
    a, b, c = list(load_from_disk(str(rewrite(config, tmp_path / "raw"))))
    a = {**a, "source": "self", "response_token_ids": [5, 6], "behavior_logprobs": [-1.0, -1.0],
         "rescored_logprobs": [-1.0, -1.0]}  # fmt: skip
    previous = tmp_path / "previous" / "dataset"
    Dataset.from_list([a, b, c], features=FEATURES).save_to_disk(str(previous))
    # Under rewrite.keep=all the round kept two solutions of b, and wrote nothing for c.
    solutions = [{**a, "id": b["id"], "response": f"solution {n}", "source": "guided"} for n in (1, 2)]
    resolved = tmp_path / "resolved" / "dataset"
    Dataset.from_list(solutions, features=FEATURES).save_to_disk(str(resolved))
    _merge([a, b, c], previous, resolved, "merged", tmp_path / "round")
    merged = list(load_from_disk(str(tmp_path / "round" / "dataset")))
    assert [(row["id"], row["source"], row["response"]) for row in merged] == [
        (a["id"], "self", a["response"]),
        (b["id"], "guided", "solution 1"),
        (b["id"], "guided", "solution 2"),
        (c["id"], "expert", c["response"]),
    ]
    manifest = json.loads((tmp_path / "round" / MANIFEST).read_text())
    assert manifest["counts_per_source"] == {"self": 1, "guided": 2, "expert": 1}
    assert (manifest["kept"], manifest["resolved"], manifest["problems"]) == (2, 1, 3)


@pytest.mark.parametrize("strategy", ["sdft", "rl_agent"])
def test_the_rewriters_of_round_two_are_round_one_model(tmp_path: Path, strategy: str) -> None:
    from mindgap.pipeline.rounds import run_rounds, trained_model

    short = ["rewrite.rl_agent.max_completion_tokens=16", "rewrite.rl_agent.rewrite_sampling.max_tokens=16"]
    config = _config(
        "pipeline", tmp_path, f"rewrite={strategy}", "data.limit=2", "rewrite.rl_agent.prompts_per_step=1", *short,
        "rewrite.sdft.sampling.max_tokens=16", "pipeline.rounds=2", "train.max_steps=2", "rounds.resolve=all",
        f"rewrite.work_dir={tmp_path / 'work'}",
    )  # fmt: skip
    first = rewrite(config, tmp_path / "first")
    variant = VariantConfig("V", strategy)
    done = run_rounds(config, variant, first, tmp_path / "out", rewrite, train, most_rounds=2)

    manifests = [json.loads((first.parent / MANIFEST).read_text())]
    manifests.append(json.loads((done[1].dataset.parent / MANIFEST).read_text()))
    initial = resolve_model(config.model, config.cache_dir, config.data_root)
    round_one = resolve_model(trained_model(config.model, done[0].model_dir, "r1"), config.cache_dir, config.data_root)
    assert manifests[0]["model"]["fingerprint"] == model_fingerprint(initial)
    assert manifests[1]["model"]["fingerprint"] == model_fingerprint(round_one), "round 2 rewrites with round 1's model"
    assert manifests[1]["behavior_models"]["expert"] == model_fingerprint(round_one)
    if strategy == "rl_agent":
        from mindgap.rewriting.rl_agent import merged_rewriter

        # The adapter is trained again, against round 1's weights: each round's merged rewriter is its own model.
        assert manifests[1]["rl_agent"]["steps"] == manifests[0]["rl_agent"]["steps"] > 0
        rewriters = {model_fingerprint(str(merged_rewriter(work))) for work in (tmp_path / "work").iterdir()}
        assert len(rewriters) == 2 and rewriters.isdisjoint({model_fingerprint(initial), model_fingerprint(round_one)})


def test_a_round_stage_by_stage_makes_the_pipelines_dataset(
    tmp_path: Path, tiny_tokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    from mindgap.pipeline.rounds import _resolve_unsolved, main

    config = _config("pipeline", tmp_path, "rewrite=none", "data.limit=4")
    rows = list(load_from_disk(str(rewrite(config, tmp_path / "first"))))
    # Round 1 as if the model had solved the first problem: only the other three are re-solved.
    ids = tiny_tokenizer(rows[0]["response"], add_special_tokens=False)["input_ids"]
    rows[0].update(source="self", response_token_ids=ids, behavior_logprobs=[-1.0] * len(ids))
    rows[0]["rescored_logprobs"] = [-1.0] * len(ids)
    previous = tmp_path / "round1" / "dataset"
    Dataset.from_list(rows, features=FEATURES).save_to_disk(str(previous))
    (previous.parent / MANIFEST).write_text(json.dumps({"fingerprint": "round1", "counts_per_source": {}}))
    resolving = _config("pipeline", tmp_path, "data.limit=4", "rewrite=mind_the_gap")
    in_pipeline = _resolve_unsolved(resolving, previous, tmp_path / "pipeline", rewrite)

    stages = tmp_path / "stages"
    assert main(["unsolved", str(previous), str(stages), "--data-name", config.data.name]) == 0
    printed = capsys.readouterr().out
    assert "3 of 4 problems to re-solve" in printed
    subset = printed.split("rewrite them with ")[1].split()
    resolved = rewrite(_config("pipeline", tmp_path, "rewrite=mind_the_gap", *subset), stages / "resolved")
    assert main(["merge", str(previous), str(resolved), str(stages)]) == 0

    manifests = [json.loads((path / MANIFEST).read_text()) for path in (tmp_path / "pipeline", stages)]
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"], "the same problems, rewritten alike"
    assert list(load_from_disk(str(stages / "dataset"))) == list(load_from_disk(str(in_pipeline)))
    assert main(["unsolved", str(tmp_path / "missing"), str(stages), "--data-name", "x"]) == 2
    assert main(["unsolved", str(previous), str(stages), "--data-name", "another"]) == 2
    assert "is not a problem of the training set 'another'" in capsys.readouterr().err


def test_resolve_none_trains_every_round_on_round_one_records(tmp_path: Path) -> None:
    from mindgap.pipeline.rounds import run_rounds

    config = _config(
        "pipeline",
        tmp_path,
        "rewrite=none",
        "data.limit=4",
        "train.max_steps=4",
        "pipeline.rounds=2",
        "rounds.resolve=none",
    )
    first = rewrite(config, tmp_path / "first")

    def no_rewrite(*args: object, **kwargs: object) -> Path:
        raise AssertionError("resolve=none rewrote a round")

    trained: list[MindgapConfig] = []

    def recording_train(run: MindgapConfig, output_dir: Path, label: str | None = None) -> Path:
        trained.append(run)
        return train(run, output_dir, label)

    done = run_rounds(config, VariantConfig("DR+SFT", "mind_the_gap"), first, tmp_path, no_rewrite, recording_train, 2)
    assert [(step.dataset, step.steps) for step in done] == [(first, 2), (first, 2)]
    # Round 2 trains on from round 1's weights, with an optimiser and a schedule of its own.
    assert trained[1].model.name_or_path == str(done[0].model_dir)
    assert _steps(done[1].train_dir) == [0, 1]
