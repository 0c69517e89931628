"""The toy world: deterministic problems, correct gold answers, two distinct styles, disjoint splits on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re

import pytest

from mindgap.data.config import DataConfig
from mindgap.data.sources import data_config, load_problems
from mindgap.errors import ConfigError
from mindgap.rewriting.config import CopyFilterConfig
from mindgap.rewriting.copy_filter import copy_reason
from mindgap.rewriting.expert import normalize_expert_solution
from mindgap.toy.config import ToyDataConfig, ToyDistributionConfig, ToyWorldConfig
from mindgap.toy.problems import (
    AMBIGUOUS_VERB,
    GAIN,
    GAIN_GROUPS,
    LOSE,
    LOSE_GROUPS,
    NOVEL_VERBS,
    ORDINALS,
    Event,
    Person,
    ToyProblem,
    draw_problem,
)
from mindgap.toy.styles import expert_solution, native_solution
from mindgap.toy.world import split_file, split_problems, split_rows
from mindgap.verification.answers import extract_answer
from mindgap.verification.verifier import is_correct

WORLD = ToyWorldConfig()
SPLITS = ("target_train", "target_test", "forgetting", "pretraining")


def _event(kind: str, amount: int, sentence: str, count: int = 1, noun: str = "") -> Event:
    return Event(kind=kind, amount=amount, count=count, group_noun=noun, sentence=sentence)


MIA = Person("Mia", "she")
# (problem, native solution, expert solution), written out by hand.
STYLE_TABLE = [
    (
        ToyProblem(
            "inventory",
            MIA,
            "marbles",
            7,
            (_event(GAIN, 5, "First, she finds 5 more marbles."), _event(LOSE, 3, "Second, she loses 3 marbles.")),
            "",
        ),
        "Mia has 7 marbles.\n"
        "First, she finds 5 more marbles, so she has 7 + 5 = 12 marbles.\n"
        "Second, she loses 3 marbles, so she has 12 - 3 = 9 marbles.\n"
        "So Mia has 9 marbles now. The answer is \\boxed{9}.",
        "$7 + 5 = 12$, $12 - 3 = 9$.\n$\\boxed{9}$",
    ),
    (
        ToyProblem(
            "packs",
            MIA,
            "beads",
            3,
            (
                _event(LOSE, 2, "First, she gives away 2 beads."),
                _event(GAIN, 8, "Second, she gets 8 more beads."),
                _event(LOSE_GROUPS, 3, "Third, she gives 2 friends 3 beads each.", 2, "friends"),
                _event(GAIN_GROUPS, 13, "Fourth, she gets 4 bags of 13 beads.", 4, "bags"),
            ),
            "",
        ),
        "Mia has 3 beads.\n"
        "First, she gives away 2 beads, so she has 3 - 2 = 1 beads.\n"
        "Second, she gets 8 more beads, so she has 1 + 8 = 9 beads.\n"
        "Third, she gives 2 friends 3 beads each, which is 2 * 3 = 6 beads, so she has 9 - 6 = 3 beads.\n"
        "Fourth, she gets 4 bags of 13 beads, which is 4 * 13 = 52 beads, so she has 3 + 52 = 55 beads.\n"
        "So Mia has 55 beads now. The answer is \\boxed{55}.",
        "$2 \\cdot 3 = 6$, $4 \\cdot 13 = 52$.\n$3 - 2 = 1$, $1 + 8 = 9$, $9 - 6 = 3$, $3 + 52 = 55$.\n$\\boxed{55}$",
    ),
    (
        ToyProblem(
            "money",
            MIA,
            "dollars",
            20,
            (_event(LOSE_GROUPS, 4, "First, she buys 3 pens for 4 dollars each.", 3, "pens"),),
            "",
        ),
        "Mia has 20 dollars.\n"
        "First, she buys 3 pens for 4 dollars each, which is 3 * 4 = 12 dollars, so she has 20 - 12 = 8 dollars.\n"
        "So Mia has 8 dollars now. The answer is \\boxed{8}.",
        "$3 \\cdot 4 = 12$.\n$20 - 12 = 8$.\n$\\boxed{8}$",
    ),
]


@pytest.mark.parametrize(("problem", "native", "expert"), STYLE_TABLE)
def test_styles_written_from_the_structure(problem: ToyProblem, native: str, expert: str) -> None:
    assert native_solution(problem) == native
    assert expert_solution(problem) == expert


_NUMBER = r"(\d+)"
# Sentence patterns of the problem text -> change of the quantity, recomputed without the generator.
_CHANGES = [
    (re.compile(rf"(?:finds|gets) {_NUMBER} more \w+\.$"), lambda a: a),
    (re.compile(rf"earns {_NUMBER} dollars\.$"), lambda a: a),
    (re.compile(rf"(?:loses|gives away) {_NUMBER} \w+\.$"), lambda a: -a),
    (re.compile(rf"spends {_NUMBER} dollars\.$"), lambda a: -a),
    (re.compile(rf"gets {_NUMBER} \w+ of {_NUMBER} \w+\.$"), lambda c, s: c * s),
    (re.compile(rf"gives {_NUMBER} friends {_NUMBER} \w+ each\.$"), lambda c, s: -c * s),
    (re.compile(rf"sells {_NUMBER} \w+ for {_NUMBER} dollars each\.$"), lambda c, p: c * p),
    (re.compile(rf"buys {_NUMBER} \w+ for {_NUMBER} dollars each\.$"), lambda c, p: -c * p),
    # The novel wording (novel_share > 0): items bought and sold, dollars found and lost.
    (re.compile(rf"buys {_NUMBER} (?!dollars)\w+\.$"), lambda a: a),
    (re.compile(rf"sells {_NUMBER} (?!dollars)\w+\.$"), lambda a: -a),
    (re.compile(rf"finds {_NUMBER} dollars\.$"), lambda a: a),
    (re.compile(rf"loses {_NUMBER} dollars\.$"), lambda a: -a),
]


def _answer_from_text(text: str) -> int:
    sentences = re.findall(r"[^.?]+[.?]", text)
    total = int(re.fullmatch(r"\w+ has (\d+) \w+\.", sentences[0].strip()).group(1))
    assert sentences[-1].strip().startswith("How many")
    for sentence in sentences[1:-1]:
        sentence = sentence.strip()
        matches = [(pattern.search(sentence), change) for pattern, change in _CHANGES]
        match, change = next((m, c) for m, c in matches if m)
        total += change(*map(int, match.groups()))
        assert total >= 0, text
    return total


@pytest.mark.parametrize("split", SPLITS)
def test_gold_answers_match_the_text(split: str) -> None:
    for problem in split_problems(WORLD, split, 200):
        assert _answer_from_text(problem.text) == problem.answer, problem.text
        assert [event.sentence.split(",")[0] for event in problem.events] == ORDINALS[: problem.steps]
        assert all(total <= problem_spec(split).max_value for total in problem.running_totals())


def problem_spec(split: str) -> ToyDistributionConfig:
    return WORLD.target if split.startswith("target") else WORLD.pretraining


@pytest.mark.parametrize("split", SPLITS)
def test_both_styles_end_with_the_gold_answer_and_verify(split: str) -> None:
    for problem in split_problems(WORLD, split, 100):
        gold = str(problem.answer)
        for solution in (native_solution(problem), expert_solution(problem)):
            assert solution.rstrip().endswith(("\\boxed{" + gold + "}.", "$\\boxed{" + gold + "}$"))
            assert extract_answer(solution) == gold
            assert is_correct(solution, gold)
            assert not is_correct(solution, str(problem.answer + 1))
        # Already in the answer format: the expert fallback keeps it unchanged.
        assert normalize_expert_solution(expert_solution(problem), gold) == expert_solution(problem)


def test_styles_differ_and_native_passes_the_copy_filter() -> None:
    for problem in split_problems(WORLD, "target_train", 100):
        native, expert = native_solution(problem), expert_solution(problem)
        assert not set(native.splitlines()) & set(expert.splitlines())
        assert "*" not in expert and "\\cdot" not in native and "$" not in native
        assert all(event.sentence.removesuffix(".") in native for event in problem.events)
        # A guided re-solve in the native style is the model's own words, not a copy of the reference.
        assert copy_reason(native, expert, problem.text, CopyFilterConfig()) is None
        assert len(native) > 2 * len(expert)


def test_generation_is_deterministic_per_seed() -> None:
    first = [problem.text for problem in split_problems(WORLD, "target_train", 50)]
    assert first == [problem.text for problem in split_problems(ToyWorldConfig(), "target_train", 50)]
    assert len(set(first)) == 50
    other = [problem.text for problem in split_problems(ToyWorldConfig(seed=1), "target_train", 50)]
    assert not set(first) & set(other)
    # A split's first problems do not depend on how many are drawn.
    assert first[:10] == [problem.text for problem in split_problems(WORLD, "target_train", 10)]


def test_splits_are_disjoint_and_the_target_is_told_in_its_own_wording() -> None:
    texts = {split: {problem.text for problem in split_problems(WORLD, split, 400)} for split in SPLITS}
    for held_out in ("target_test", "forgetting"):
        assert not texts[held_out] & (texts["target_train"] | texts["pretraining"])
    assert not texts["target_train"] & texts["pretraining"]
    target, pretraining = split_problems(WORLD, "target_train", 400), split_problems(WORLD, "pretraining", 400)
    # The target is no longer than the pretraining problems: what it adds is the sign rule of its
    # wording, in 60% of its plain events (a binomial share of about 500 events, within 4 sd).
    assert sum(p.steps for p in target) <= sum(p.steps for p in pretraining)
    plain = [(p.family, e.sentence.split()[2]) for p in target for e in p.events if e.kind in (GAIN, LOSE)]
    assert 0.5 < sum(phrasing in NOVEL for phrasing in plain) / len(plain) < 0.7
    assert not _phrasings(pretraining) & NOVEL
    assert {p.family for p in target} == {p.family for p in pretraining} == {"inventory", "packs", "money"}


@pytest.mark.parametrize(("name", "split"), [("toy_train", "target_train"), ("toy_test", "target_test"),
                                             ("toy_forgetting", "forgetting")])  # fmt: skip
def test_data_configs_generate_and_load_through_the_sources(name: str, split: str, tmp_path) -> None:
    config = data_config(name)
    assert (config.format, config.split) == ("toy", split)
    loaded = load_problems(config, data_root="/no/data/needed", cache_dir=str(tmp_path))
    rows = split_rows(config.toy.world, split, config.toy.size)
    assert [p.problem for p in loaded.problems] == [row["problem"] for row in rows]
    assert [p.answer for p in loaded.problems] == [row["answer"] for row in rows]
    assert loaded.problems[0].id == f"{name}/{split}-00000"
    expected_solution = "native_solution" if split == "forgetting" else "expert_solution"
    assert loaded.problems[0].expert_solution == rows[0][expected_solution]
    file = split_file(tmp_path / "toy", config.toy.world, split, config.toy.size)
    assert [json.loads(line)["id"] for line in file.read_text().splitlines()] == [row["id"] for row in rows]
    written = file.stat().st_mtime_ns
    load_problems(config, data_root="/no/data/needed", cache_dir=str(tmp_path))
    assert file.stat().st_mtime_ns == written


def test_limit_and_world_overrides(tmp_path) -> None:
    config = data_config("toy_train")
    config.limit = 5
    config.toy = ToyDataConfig(world=ToyWorldConfig(seed=3), size=20)
    problems = load_problems(config, data_root="", cache_dir=str(tmp_path)).problems
    assert [p.problem for p in problems] == [p.text for p in split_problems(ToyWorldConfig(seed=3), "target_train", 5)]
    assert len(list((tmp_path / "toy").iterdir())) == 1


def _phrasings(problems: list[ToyProblem]) -> set[tuple[str, str]]:
    """(family, verb) of every event: the verb is the sentence's third word ("First, she buys ...")."""
    return {(problem.family, event.sentence.split()[2]) for problem in problems for event in problem.events}


NOVEL = {(family, verb) for family, verbs in NOVEL_VERBS.items() for verb in verbs.values()}


def test_novel_wording_only_where_asked_and_the_rest_unchanged() -> None:
    spec = ToyDistributionConfig(steps=[2, 3, 4])
    plain = [draw_problem(spec, random.Random(seed)) for seed in range(300)]
    assert not _phrasings(plain) & NOVEL
    # The pretraining corpus never tells them.
    assert not _phrasings(split_problems(WORLD, "pretraining", 400)) & NOVEL
    told = [draw_problem(dataclasses.replace(spec, novel_share=0.5), random.Random(seed)) for seed in range(300)]
    plain_events = [(p.family, e) for p in told for e in p.events if e.kind in (GAIN, LOSE)]
    share = sum((family, e.sentence.split()[2]) in NOVEL for family, e in plain_events) / len(plain_events)
    assert 0.4 < share < 0.6
    # Every new phrasing occurs, each with the sign the structure says (items bought are gained).
    assert _phrasings(told) >= NOVEL
    assert all(_answer_from_text(p.text) == p.answer for p in told)
    # With share 0 no number is drawn for the wording: the same 300 problems as before the field existed.
    assert hashlib.sha256("\n".join(p.text for p in plain).encode()).hexdigest()[:16] == "673d640320efad07"
    with pytest.raises(ConfigError, match="novel_share"):
        ToyDistributionConfig(novel_share=1.5)


def test_trades_go_either_way_and_only_the_worked_solution_tells() -> None:
    spec = ToyDistributionConfig(steps=[2, 3, 4], ambiguous_share=0.5)
    problems = [draw_problem(spec, random.Random(seed)) for seed in range(300)]
    plain_events = [e for p in problems for e in p.events if e.kind in (GAIN, LOSE)]
    trades = [e for e in plain_events if e.sentence.split()[2] == AMBIGUOUS_VERB]
    assert 0.4 < len(trades) / len(plain_events) < 0.6
    assert 0.3 < sum(e.is_gain for e in trades) / len(trades) < 0.7
    # The problem text says the same for a gain and a loss of the same amount; the expert solution differs.
    gain = next(p for p in problems if any(e.is_gain and e.sentence.split()[2] == AMBIGUOUS_VERB for e in p.events))
    event = next(e for e in gain.events if e.is_gain and e.sentence.split()[2] == AMBIGUOUS_VERB)
    assert f"+ {event.size} =" in expert_solution(gain) and "trades" not in expert_solution(gain)
    assert not _phrasings(problems) & NOVEL
    with pytest.raises(ConfigError, match="novel_share \\+ ambiguous_share"):
        ToyDistributionConfig(novel_share=0.6, ambiguous_share=0.6)


def test_bad_toy_configs_fail_with_the_key() -> None:
    with pytest.raises(ConfigError, match=r"format=toy needs data\.toy"):
        DataConfig(name="x", format="toy", path="toy", split="target_train")
    with pytest.raises(ConfigError, match=r"data\.split='train' is not one of"):
        DataConfig(name="x", format="toy", path="toy", toy=ToyDataConfig())
    with pytest.raises(ConfigError, match="step_weights"):
        ToyDistributionConfig(steps=[1, 2], step_weights=[1.0])
    with pytest.raises(ConfigError, match="held_out_share"):
        ToyWorldConfig(held_out_share=0.0)
