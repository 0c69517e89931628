"""How the toy model meets the toy world: what each rewriting stage would solve, and what it costs.

Builds (or reuses) ``model=toy`` and, on the first ``--problems`` problems of the target training
set, samples ``--samples`` responses under the standard prompt (the self stage) and under the
guided prompt that shows the expert solution (the guided stage), at the rewriting stage's
temperature. Prints the share solved by one sample (the mean over samples) and by any of them
(pass@k), the share only the guided prompt solves, the share neither solves (the expert
fallback), greedy accuracy on the held-out target test set and on the forgetting set, and the
wall time of pretraining and of generation. Any config override applies, as in the apps; the
three data sets are drawn from the model's world (``model.toy.world``):

    .venv/bin/python scripts/toy_world_report.py --problems 128 --samples 4
    .venv/bin/python scripts/toy_world_report.py model.toy.pretraining.steps=200
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

from hydra import compose, initialize_config_dir

from mindgap.config import MindgapConfig, register_configs, to_typed
from mindgap.data.config import DataConfig
from mindgap.data.sources import data_config, load_problems
from mindgap.generation.config import SamplingConfig
from mindgap.generation.factory import make_generator
from mindgap.models.loading import load_tokenizer
from mindgap.models.resolve import resolve_model
from mindgap.paths import CONFIG_DIR
from mindgap.prompts import guided_prompt, standard_prompt
from mindgap.records import Problem
from mindgap.rewriting.copy_filter import copy_reason
from mindgap.rewriting.expert import shown_expert_solution
from mindgap.toy.config import ToyWorldConfig
from mindgap.toy.pretraining import PRETRAINING_REPORT, toy_model_is_built
from mindgap.toy.world import split_problems
from mindgap.verification.verifier import Verifier

# The toy world's answers are short; the rewriting stage's default max_tokens is sized for real models.
DEFAULTS = [
    "model=toy",
    "data=toy_train",
    "rewrite.self_sampling.max_tokens=256",
    "rewrite.guided_sampling.max_tokens=256",
    "eval.sampling.max_tokens=256",
]


def compose_config(overrides: list[str]) -> MindgapConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("rewrite", overrides=["output_dir=unused", *DEFAULTS, *overrides])
    return to_typed(cfg, MindgapConfig)


def in_world(data: DataConfig, world: ToyWorldConfig, limit: int) -> DataConfig:
    """``data`` drawn from the model's world, so that world overrides (model.toy.world.*) reach every data set."""
    assert data.toy is not None, f"data {data.name} is not a toy world split"
    return dataclasses.replace(data, toy=dataclasses.replace(data.toy, world=world), limit=limit)


def correct_matrix(generator, verifier: Verifier, prompts: list[str], problems: list[Problem], sampling, seed: int):
    """Per problem, the list of (correct, response text) of its samples; and the generation wall time."""
    started = time.perf_counter()
    completions = generator.generate(prompts, sampling, seed=seed)
    wall = time.perf_counter() - started
    texts = [sample.text for samples in completions for sample in samples]
    golds = [problem.answer for problem, samples in zip(problems, completions, strict=True) for _ in samples]
    verdicts = iter(verifier.verify(texts, golds))
    results = [[(next(verdicts).correct and bool(s.text.strip()), s.text) for s in samples] for samples in completions]
    return results, wall, sum(len(s.token_ids) for samples in completions for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=128, help="target training problems to sample on")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem and stage (n1 = n2)")
    parser.add_argument("--eval-problems", type=int, default=128, help="problems of the test and forgetting sets")
    parser.add_argument("--show", type=int, default=0, help="print this many sampled responses of each stage")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.toy.pretraining.steps=200")
    args = parser.parse_args()
    config = compose_config(args.overrides)
    assert config.model.toy is not None, "the report is about model=toy"
    world = config.model.toy.world

    cached = toy_model_is_built(config.model.toy, config.cache_dir)
    started = time.perf_counter()
    model = resolve_model(config.model, config.cache_dir, config.data_root)
    model_path = model.path
    build_wall = time.perf_counter() - started
    pretraining = json.loads((Path(model_path) / PRETRAINING_REPORT).read_text())
    tokenizer = load_tokenizer(model)

    data = in_world(config.data, world, args.problems)
    problems = load_problems(data, config.data_root, cache_dir=config.cache_dir).problems
    generator = make_generator(config.generator, model, config.model.dtype)
    self_sampling = dataclasses.replace(config.rewrite.self_sampling, n=args.samples)
    guided_sampling = dataclasses.replace(config.rewrite.guided_sampling, n=args.samples)
    with Verifier.from_config(config.verifier) as verifier:
        standard = [standard_prompt(p.problem, config.prompt_type, tokenizer) for p in problems]
        self_results, self_wall, self_tokens = correct_matrix(
            generator, verifier, standard, problems, self_sampling, config.seed
        )
        guided = [guided_prompt(p.problem, shown_expert_solution(p), config.prompt_type, tokenizer) for p in problems]
        guided_results, guided_wall, guided_tokens = correct_matrix(
            generator, verifier, guided, problems, guided_sampling, config.seed + 1
        )
        greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=config.eval.sampling.max_tokens)
        held_out = {}
        for name in ("toy_test", "toy_forgetting"):
            source = in_world(data_config(name), world, args.eval_problems)
            eval_problems = load_problems(source, config.data_root, cache_dir=config.cache_dir).problems
            prompts = [standard_prompt(p.problem, config.prompt_type, tokenizer) for p in eval_problems]
            results, wall, _ = correct_matrix(generator, verifier, prompts, eval_problems, greedy, config.seed)
            held_out[name] = (sum(r[0][0] for r in results) / len(results), wall, len(results))
    generator.close()

    count = len(problems)
    self_any = [any(c for c, _ in samples) for samples in self_results]
    # A correct guided response counts only when the copy filter would keep it, as in the rewriting stage.
    copy_filter = config.rewrite.copy_filter
    guided_kept = [
        [correct and copy_reason(text, shown_expert_solution(p), p.problem, copy_filter) is None for correct, text in s]
        for p, s in zip(problems, guided_results, strict=True)
    ]
    guided_any = [any(samples) for samples in guided_kept]
    copies = sum(
        correct and copy_reason(text, shown_expert_solution(p), p.problem, copy_filter) is not None
        for p, samples in zip(problems, guided_results, strict=True)
        for correct, text in samples
    )
    k = args.samples

    def share(values) -> str:
        values = list(values)
        return f"{sum(values) / len(values):6.1%}" if values else "   n/a"

    rows = [
        ("model", f"{model_path}"),
        ("pretraining wall time", f"{pretraining['wall_s']:.1f} s, CPU {pretraining.get('cpu_s', 0):.1f} s"
                                  f" ({pretraining['steps']} steps; "
                                  f"{'cached, recorded at build' if cached else f'built now, {build_wall:.1f} s'})"),
        ("pretraining final loss", f"{sum(pretraining['losses'][-20:]) / len(pretraining['losses'][-20:]):.3f}"),
        ("target problems", f"{count} of {config.data.name}, T={self_sampling.temperature}, {k} samples each"),
        ("self: one sample solves", share(c for samples in self_results for c, _ in samples)),
        (f"self: pass@{k} (stage 1 keeps)", share(self_any)),
        ("guided: one sample solves", share(c for samples in guided_kept for c in samples)),
        (f"guided: pass@{k}", share(guided_any)),
        (f"guided pass@{k} on self-unsolved", share(g for s, g in zip(self_any, guided_any, strict=True) if not s)),
        ("stage 2 keeps (share of all)", share(g and not s for s, g in zip(self_any, guided_any, strict=True))),
        ("neither: expert fallback", share(not s and not g for s, g in zip(self_any, guided_any, strict=True))),
        ("guided correct but copy-filtered", f"{copies}"),
        ("target test, greedy", f"{held_out['toy_test'][0]:6.1%} of {held_out['toy_test'][2]}"),
        ("forgetting set, greedy", f"{held_out['toy_forgetting'][0]:6.1%} of {held_out['toy_forgetting'][2]}"),
        ("generation: self stage", f"{self_wall:.1f} s for {count * k} samples, {self_tokens} tokens"),
        ("generation: guided stage", f"{guided_wall:.1f} s for {count * k} samples, {guided_tokens} tokens"),
        ("generation: greedy test + forgetting", f"{held_out['toy_test'][1] + held_out['toy_forgetting'][1]:.1f} s"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    assert config.data.toy is not None
    steps_of = [problem.steps for problem in split_problems(world, config.data.split, count)]
    by_steps = defaultdict(list)
    for steps, s, g, samples in zip(steps_of, self_any, guided_any, self_results, strict=True):
        by_steps[steps].append((sum(c for c, _ in samples) / len(samples), s, g))
    print("\nsteps  problems  self one-sample  self pass@k  guided-only  neither")
    for steps, items in sorted(by_steps.items()):
        print(
            f"{steps:>5}  {len(items):>8}  {share(i[0] for i in items):>15}  {share(i[1] for i in items):>11}"
            f"  {share(i[2] and not i[1] for i in items):>11}  {share(not i[1] and not i[2] for i in items):>7}"
        )
    for stage, results in (("self", self_results), ("guided", guided_results)):
        for samples in results[: args.show]:
            correct, text = samples[0]
            print(f"\n--- {stage} ({'correct' if correct else 'wrong'}) ---\n{text}")


if __name__ == "__main__":
    main()
