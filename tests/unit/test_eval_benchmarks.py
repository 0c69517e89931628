"""Benchmark loaders: the shared files, their hub copies (rows in the hub's schema, no network), limits."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from mindgap.config import EvalAppConfig, register_configs, to_typed
from mindgap.data.sources import data_config, load_problems
from mindgap.errors import ConfigError
from mindgap.evaluation.benchmarks import benchmark_configs, load_benchmarks
from mindgap.evaluation.config import PAPER_BENCHMARKS
from mindgap.paths import CONFIG_DIR
from mindgap.toy.world import split_problems


def eval_config(*overrides: str) -> EvalAppConfig:
    register_configs()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=["output_dir=/tmp/unused", *overrides])
    return to_typed(cfg, EvalAppConfig)


def test_default_benchmarks_are_the_papers_suite_with_their_protocol() -> None:
    config = eval_config()
    assert tuple(config.eval.benchmarks) == PAPER_BENCHMARKS
    sampling = config.eval.sampling
    assert (sampling.n, sampling.temperature, sampling.top_p, sampling.max_tokens) == (16, 1.0, 1.0, 4096)


# (benchmark, first 4 ids, first 4 gold answers), read off the raw files.
FIRST_FOUR = {
    "math500": (
        [
            "math500/test/precalculus/807.json",
            "math500/test/intermediate_algebra/1994.json",
            "math500/test/algebra/2584.json",
            "math500/test/number_theory/572.json",
        ],
        ["\\left( 3, \\frac{\\pi}{2} \\right)", "p - q", "\\frac{14}{3}", "9"],
    ),
    # The final answer is the last \boxed{} of the solution.
    "minerva_math": ([f"minerva_math/{i}" for i in range(4)], ["1.6", "4.5e33", "41.8", "20.39"]),
    # final_answer is a list in math mode: ['$\\frac{1}{2 n+2}$'].
    "olympiadbench": (
        ["olympiadbench/1606", "olympiadbench/1610", "olympiadbench/1612", "olympiadbench/1613"],
        ["2", "\\frac{1}{2 n+2}", "2^{1009}", "2"],
    ),
    "aime24": (["aime24/60", "aime24/61", "aime24/62", "aime24/63"], ["204", "113", "371", "385"]),
    # Numbers stored as floats (27.0).
    "amc23": ([f"amc23/{i}" for i in range(4)], ["27", "36", "45", "3159"]),
    # The text after '####'.
    "gsm8k_test": ([f"gsm8k_test/{i}" for i in range(4)], ["18", "3", "70000", "540"]),
}


def test_four_problems_of_each_benchmark() -> None:
    config = eval_config(f"benchmarks=[{','.join(FIRST_FOUR)}]", "eval.limit=4")
    benchmarks = load_benchmarks(config)
    assert [benchmark.name for benchmark in benchmarks] == list(FIRST_FOUR)
    for benchmark in benchmarks:
        assert benchmark.data.limit == 4 and all(problem.problem for problem in benchmark.problems)
        ids, answers = FIRST_FOUR[benchmark.name]
        assert [problem.id for problem in benchmark.problems] == ids
        assert [problem.answer for problem in benchmark.problems] == answers


def test_benchmarks_null_evaluates_the_data_config() -> None:
    (benchmark,) = load_benchmarks(eval_config("eval.benchmarks=null", "data=amc23", "data.limit=2"))
    assert (benchmark.name, len(benchmark.problems)) == ("amc23", 2)


def test_toy_benchmarks_follow_the_world_of_the_toy_training_data(tmp_path: Path) -> None:
    # Before: toy_test kept the default world, so a target override trained on one distribution and tested on another.
    overrides = ["experiment=demo", "data.toy.world.target.novel_share=0.6", "data.toy.world.target.steps=[2,3,4]"]
    config = eval_config(*overrides, f"cache_dir={tmp_path}", "eval.limit=8")
    test, forgetting = benchmark_configs(config)
    assert test.toy.world == forgetting.toy.world == config.data.toy.world
    assert (test.toy.world.target.novel_share, test.toy.size) == (0.6, data_config("toy_test").toy.size)
    target_test, _ = load_benchmarks(config)
    expected = split_problems(config.data.toy.world, "target_test", 8)
    assert [problem.problem for problem in target_test.problems] == [problem.text for problem in expected]
    # Data that is not a toy split leaves the benchmarks as their configs say.
    (untouched,) = benchmark_configs(eval_config("data=gsm8k_train", "eval.benchmarks=[toy_test]"))
    assert untouched == data_config("toy_test")


def test_empty_benchmark_list_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"eval\.benchmarks is empty"):
        eval_config("benchmarks=[]")


# Rows in each hub copy's own schema (field names and value types as the hub datasets have them).
HUB_ROWS = {
    "math500_hub": {
        "problem": "What is $1+1$?",
        "solution": "It is $\\boxed{2}$.",
        "answer": "2",
        "subject": "Algebra",
        "level": 1,
        "unique_id": "test/algebra/1.json",
    },
    "minerva_math_hub": {"question": "Compute $2 \\times 3$.", "answer": "6"},
    "olympiadbench_hub": {
        "id": 1606,
        "question": "Find all pairs.",
        "solution": ["First solution.", "Second solution."],
        "final_answer": ["$(-6,6)$, $(2,6)$"],
        "context": None,
        "is_multiple_answer": True,
        "unit": None,
        "answer_type": "Tuple",
    },
    "aime24_hub": {
        "id": 60,
        "problem": "Find $t$.",
        "solution": "So $t=204$.",
        "answer": "204",
        "url": "u",
        "year": "2024",
    },
    "amc23_hub": {"id": 0, "question": "How many miles?", "answer": 27.0, "url": "u"},
    "gsm8k_test_hub": {"question": "Janet has 3 eggs.", "answer": "3 + 15 = <<3+15=18>>18\n#### 18"},
}
# (benchmark name, id, gold answer, has an expert solution)
HUB_EXPECTED = {
    "math500_hub": ("math500", "math500/test/algebra/1.json", "2", True),
    "minerva_math_hub": ("minerva_math", "minerva_math/0", "6", False),
    "olympiadbench_hub": ("olympiadbench", "olympiadbench/1606", "(-6,6), (2,6)", True),
    "aime24_hub": ("aime24", "aime24/60", "204", True),
    "amc23_hub": ("amc23", "amc23/0", "27", False),
    "gsm8k_test_hub": ("gsm8k_test", "gsm8k_test/0", "18", True),
}


@pytest.mark.parametrize("config_name", sorted(HUB_ROWS))
def test_hub_copies_map_the_hubs_fields(config_name: str, tmp_path: Path, data_root: str) -> None:
    data = data_config(config_name)
    assert data.format == "hub" and "/" in data.path
    # The hub dataset, as a local dataset directory that load_dataset reads the same way (no network).
    local = tmp_path / "dataset"
    local.mkdir()
    (local / f"{data.split}.jsonl").write_text(json.dumps(HUB_ROWS[config_name]) + "\n")
    loaded = load_problems(dataclasses.replace(data, path=str(local), subset=None), data_root)
    (problem,) = loaded.problems
    name, problem_id, answer, has_solution = HUB_EXPECTED[config_name]
    assert (problem.dataset, problem.id, problem.answer) == (name, problem_id, answer)
    assert (problem.expert_solution is not None) == has_solution
