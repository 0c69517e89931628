"""The toy world's calibration controls, each judged against a criterion fixed before any comparison ran.

The criteria (README, "The toy world": calibration criteria) are measured on controls only, never on
the variants the study compares. In one process, on the world ``experiment=demo`` builds (any
override applies, as in the apps), at the demo's training budget unless said otherwise:

  (a) learnability: SFT on the fine-tuning problems' oracle solutions in the model's native style
      (``data=toy_train_native``) must raise greedy target accuracy by ``ORACLE_GAIN`` points;
  (b) the initial model solves ``INITIAL_TARGET`` of the target test set greedily;
  (c) the policy gap: under the initial model, the expert solutions' mean token log-prob is at least
      ``POLICY_GAP`` nats below the native solutions' (the same problems, the standard prompt);
  (d) instruction following: under the SDFT rewrite prompt the initial model keeps the gold answer
      in at least ``REWRITE_KEEPS_ANSWER`` of the fine-tuning problems (greedy);
  (e) the expert style is learnable in principle: SFT on ``EXPERT_SCALE`` x as many expert-style
      target problems for ``EXPERT_EPOCHS`` epochs reaches ``EXPERT_TARGET`` target accuracy.

Prints one line per criterion (measured, criterion, holds) and writes ``controls.json``.

    .venv/bin/python scripts/toy_world_controls.py                       # outputs/toy-controls
    .venv/bin/python scripts/toy_world_controls.py --skip-expert-scale   # without (e), about half the time
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.paths import CONFIG_DIR, PROJECT_ROOT

# The criteria, fixed before the comparison (README). Accuracies in points of percent.
ORACLE_GAIN = 10.0
INITIAL_TARGET = (15.0, 40.0)
POLICY_GAP = 1.0
REWRITE_KEEPS_ANSWER = 0.5
EXPERT_SCALE = 8
EXPERT_EPOCHS = 4
EXPERT_TARGET = 50.0


def compose_config(app: str, overrides: list[str]) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(app, overrides=["experiment=demo", "logger=none", "output_dir=unused", *overrides])
    return to_typed(cfg, MindgapConfig)


def accuracy(results_dir: Path, benchmark: str) -> float:
    results = json.loads((results_dir / "results.json").read_text())
    return 100 * results["benchmarks"][benchmark]["avg@1"]


def sft_control(name: str, settings: list[str], overrides: list[str], directory: Path) -> dict[str, dict[str, float]]:
    """One SFT variant (raw data, no rewriting) through the pipeline: label -> {target, forgetting} accuracy.

    The control's own ``settings`` come after the user's ``overrides``, so that they hold.
    """
    from mindgap.evaluation.run import results_dir_of
    from mindgap.pipeline.app import EVAL_DIR, pipeline

    variant = f"pipeline.variants=[{{name: {name}, rewrite: none, loss: {{name: sft}}}}]"
    # The control is its own baseline unless its settings name another (the oracle's: the initial model).
    baseline = f"pipeline.baseline={name}"
    config = compose_config("pipeline", [*overrides, variant, baseline, *settings, f"output_dir={directory}"])
    pipeline(config, directory)
    labels = [name, "base"] if config.pipeline.evaluate_base else [name]
    benchmarks = {"target": "toy_test", "forgetting": "toy_forgetting"}
    # One evaluated model (the expert-scale control) writes its results into eval/ itself.
    results = {label: results_dir_of(directory / EVAL_DIR, label, len(labels) > 1) for label in labels}
    return {
        label: {group: accuracy(results[label], benchmark) for group, benchmark in benchmarks.items()}
        for label in labels
    }


def mean_token_logprob(dataset_dir: Path) -> float:
    """Mean over all response tokens of the records' log-probs under the initial model (the rescoring pass)."""
    import datasets

    logprobs = [value for row in datasets.load_from_disk(str(dataset_dir))["rescored_logprobs"] for value in row]
    return statistics.fmean(logprobs)


def run_controls(overrides: list[str], output_dir: Path, expert_scale: bool) -> dict:
    from mindgap.pipeline.app import REWRITE_DIR
    from mindgap.rewriting.app import rewrite

    measured: dict = {"overrides": overrides, "seconds": {}}

    started = time.perf_counter()
    # (a), (b) and the native half of (c): the oracle SFT control next to the initial model.
    oracle_dir = output_dir / "oracle"
    oracle = sft_control("oracle", ["data=toy_train_native", "pipeline.baseline=base"], overrides, oracle_dir)
    measured |= {f"initial_{group}": value for group, value in oracle["base"].items()}
    measured |= {f"oracle_{group}": value for group, value in oracle["oracle"].items()}
    measured["native_logprob"] = mean_token_logprob(oracle_dir / REWRITE_DIR / "dataset")
    measured["seconds"]["oracle"] = time.perf_counter() - started

    # The expert half of (c): the raw fine-tuning set, rescored under the initial model.
    started = time.perf_counter()
    expert_dir = output_dir / "expert"
    expert = compose_config("rewrite", ["rewrite=none", f"output_dir={expert_dir}", *overrides])
    measured["expert_logprob"] = mean_token_logprob(rewrite(expert, expert_dir))
    measured["seconds"]["expert"] = time.perf_counter() - started

    # (d): SDFT's rewrite prompt, greedy, on the fine-tuning problems.
    started = time.perf_counter()
    sdft_dir = output_dir / "sdft"
    sdft = compose_config(
        "rewrite", ["rewrite=sdft", "rewrite.sdft.sampling.max_tokens=160", f"output_dir={sdft_dir}", *overrides]
    )
    rewrite(sdft, sdft_dir)
    manifest = json.loads((sdft_dir / "manifest.json").read_text())
    stage = manifest["stages"]["rewrite"]
    measured["rewrite_stage"] = stage
    measured["rewrite_keeps_answer"] = stage["correct"] / stage["attempted"]
    measured["rewrite_kept"] = stage["solved"] / stage["attempted"]
    measured["seconds"]["sdft"] = time.perf_counter() - started

    if expert_scale:
        # (e): the expert style at scale, SFT only.
        started = time.perf_counter()
        size = compose_config("pipeline", overrides).data.toy.size
        settings = [f"data.toy.size={size * EXPERT_SCALE}", f"train.max_epochs={EXPERT_EPOCHS}"]
        scaled = sft_control(
            "expert-scale", [*settings, "pipeline.evaluate_base=false"], overrides, output_dir / "scale"
        )
        measured |= {f"expert_scale_{group}": value for group, value in scaled["expert-scale"].items()}
        measured["seconds"]["expert_scale"] = time.perf_counter() - started
    return measured


def verdicts(measured: dict) -> list[tuple[str, str, str, bool]]:
    """(criterion, measured, required, holds) for each criterion measured."""
    gain = measured["oracle_target"] - measured["initial_target"]
    gap = measured["native_logprob"] - measured["expert_logprob"]
    low, high = INITIAL_TARGET
    rows = [
        (
            "(a) oracle SFT gain on the target",
            f"{gain:+.1f} points ({measured['initial_target']:.1f} -> {measured['oracle_target']:.1f})",
            f">= +{ORACLE_GAIN:.0f}",
            gain >= ORACLE_GAIN,
        ),
        (
            "(b) initial model, target greedy",
            f"{measured['initial_target']:.1f}% (forgetting set {measured['initial_forgetting']:.1f}%)",
            f"{low:.0f}-{high:.0f}%",
            low <= measured["initial_target"] <= high,
        ),
        (
            "(c) policy gap, mean token log-prob",
            f"native {measured['native_logprob']:.2f}, expert {measured['expert_logprob']:.2f} (gap {gap:.2f})",
            f">= {POLICY_GAP:.1f} nats",
            gap >= POLICY_GAP,
        ),
        (
            "(d) SDFT prompt keeps the answer",
            f"{measured['rewrite_keeps_answer']:.1%} (kept after the filters {measured['rewrite_kept']:.1%})",
            f">= {REWRITE_KEEPS_ANSWER:.0%}",
            measured["rewrite_keeps_answer"] >= REWRITE_KEEPS_ANSWER,
        ),
    ]
    if "expert_scale_target" in measured:
        rows.append(
            (
                f"(e) SFT on {EXPERT_SCALE}x expert data, {EXPERT_EPOCHS} epochs",
                f"{measured['expert_scale_target']:.1f}% target"
                f" (forgetting set {measured['expert_scale_forgetting']:.1f}%)",
                f">= {EXPERT_TARGET:.0f}%",
                measured["expert_scale_target"] >= EXPERT_TARGET,
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides of the world, model or budget")
    parser.add_argument("--output-dir", type=Path, default=PROJECT_ROOT / "outputs" / "toy-controls")
    parser.add_argument("--skip-expert-scale", action="store_true", help="leave out control (e)")
    args = parser.parse_args()
    measured = run_controls(args.overrides, args.output_dir, expert_scale=not args.skip_expert_scale)
    rows = verdicts(measured)
    measured["verdicts"] = [dict(zip(("criterion", "measured", "required", "holds"), row, strict=True)) for row in rows]
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "controls.json").write_text(json.dumps(measured, indent=2))
    width = max(len(row[0]) for row in rows)
    print("\nThe toy world's controls")
    for criterion, value, required, holds in rows:
        print(f"  {criterion:<{width}}  {value}  [{required}: {'holds' if holds else 'FAILS'}]")
    print(f"  seconds: {', '.join(f'{k} {v:.0f}' for k, v in measured['seconds'].items())}")
    print(f"controls in {args.output_dir / 'controls.json'}")
    return 0 if all(row[3] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
