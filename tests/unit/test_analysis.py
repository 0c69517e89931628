"""The report's per-source weight figure, and the study's summary over seeds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mindgap.pipeline.analysis import Report, plot_weight_statistics_by_source, seed_table, seed_values
from mindgap.pipeline.study import composition, paired_differences, report_dirs, rounds_summary, training_sets


def _report() -> Report:
    variants = [
        {"name": "SFT", "loss": {"name": "sft"}},
        {"name": "IS", "loss": {"name": "is"}},
        {"name": "DR+IS", "loss": {"name": "is"}},
    ]
    rows = []
    for step in (1, 2, 3):
        # Raw data holds expert records only; the rewritten set also self and guided ones.
        rows += [["IS", step, "is/expert/weight_var", 40.0], ["IS", step, "is/expert/ess", 0.1]]
        for source, variance in (("self", 0.2), ("guided", 0.5), ("expert", 30.0)):
            rows += [["DR+IS", step, f"is/{source}/weight_var", variance], ["DR+IS", step, f"is/{source}/ess", 0.9]]
        rows.append(["SFT", step, "is/expert/weight_var", 0.0])
    training = pd.DataFrame(rows, columns=["variant", "step", "metric", "value"])
    empty = pd.DataFrame()
    return Report(Path("."), {"variants": variants}, empty, training, empty, empty, empty)


def test_each_source_panel_holds_the_is_variants_that_have_records_of_it() -> None:
    axes = plot_weight_statistics_by_source(_report())
    labels = {ax.get_title(): [line.get_label() for line in ax.get_lines()] for ax in axes.ravel()}
    assert labels == {
        "self: weight_var": ["DR+IS"],
        "guided: weight_var": ["DR+IS"],
        "expert: weight_var": ["IS", "DR+IS"],  # SFT's constant weights are left out
        "self: ess": ["DR+IS"],
        "guided: ess": ["DR+IS"],
        "expert: ess": ["IS", "DR+IS"],
    }
    expert_variance = axes[0][2].get_lines()[0].get_ydata()
    assert list(expert_variance) == [40.0, 40.0, 40.0]


def _seed_report(seed: int, values: dict[tuple[str, str], float], data: str = "toy_train") -> Report:
    rows = [[group, variant, "avg@1", "mean", value] for (variant, group), value in values.items()]
    results = pd.DataFrame(rows, columns=["group", "variant", "metric", "benchmark", "value"])
    composition = pd.DataFrame(
        [["none", "expert", 256], ["mind_the_gap", "expert", 100 + seed], ["mind_the_gap", "self", 156 - seed]],
        columns=["rewrite", "source", "count"],
    )
    # Seed s: the rewritten set's self records have alignment NLL 0.1 * (s + 1).
    training_sets = pd.DataFrame(
        [["mind_the_gap", "self", 156 - seed, 0.1 * (seed + 1), 0.02, 0.5], ["none", "expert", 256, 2.0, 0.01, 0.3]],
        columns=["rewrite", "source", "records", "alignment_nll", "diversity", "distinct_2"],
    )
    empty = pd.DataFrame()
    variants = {"seed": seed, "data": data, "variants": []}
    return Report(Path("."), variants, results, empty, empty, composition, training_sets)


def test_paired_differences_are_taken_within_each_seed() -> None:
    # Seed 0: DR+SFT 0.30 vs SFT 0.10 (+20 points); seed 1: 0.20 vs 0.15 (+5); seed 2: 0.10 vs 0.20 (-10).
    target = {0: (0.30, 0.10), 1: (0.20, 0.15), 2: (0.10, 0.20)}
    reports = [
        _seed_report(seed, {("DR+SFT", "target"): dr, ("SFT", "target"): raw}) for seed, (dr, raw) in target.items()
    ]
    pairs = paired_differences(seed_values(reports))
    assert pairs["comparison"].tolist() == ["DR+SFT - SFT"]
    row = pairs.iloc[0]
    # Differences +20, +5, -10: mean 5, sample sd 15, half-width t(2) * 15 / sqrt(3) = 4.303 * 8.660 = 37.27.
    assert row["mean"] == pytest.approx(5.0)
    assert row["ci_high"] - row["mean"] == pytest.approx(4.303 * 15 / 3**0.5, rel=1e-4)
    assert (row["positive"], row["seeds"], row["per_seed"]) == (2, 3, "+20.0 +5.0 -10.0")
    assert composition(reports).loc["mind_the_gap"].tolist() == [101.0, 155.0]
    measured = training_sets(reports)
    assert measured.loc[("mind_the_gap", "self")].tolist() == pytest.approx([155.0, 0.2, 0.02, 0.5])
    assert measured.loc[("none", "expert"), "alignment_nll"] == pytest.approx(2.0)


def test_a_control_on_other_data_keeps_its_own_training_set_rows(tmp_path: Path) -> None:
    # Two seeds of the study on toy_train, and the oracle control's runs on the native solutions: its raw
    # ("none") set is another training set than the study's, so it gets its own rows, never their mean.
    reports = [_seed_report(seed, {("SFT", "target"): 0.1, ("base", "target"): 0.2}) for seed in (0, 1)]
    reports += [_seed_report(seed, {("oracle", "target"): 0.5}, data="toy_train_native") for seed in (0, 1)]
    assert composition(reports).index.tolist() == ["mind_the_gap", "mind_the_gap (toy_train_native)", "none",
                                                   "none (toy_train_native)"]  # fmt: skip
    assert training_sets(reports).loc[("none (toy_train_native)", "expert"), "records"] == 256
    pairs = paired_differences(seed_values(reports))
    # oracle - base within each seed: 50 - 20 = +30 points.
    assert pairs.set_index("comparison").loc["oracle - base", "mean"] == pytest.approx(30.0)
    # The sweep's jobs and the control's, one directory below (make study's layout).
    for job in ("0", "1", "oracle/0"):
        (tmp_path / job / "report").mkdir(parents=True)
        (tmp_path / job / "report" / "variants.json").write_text("{}")
    assert report_dirs(tmp_path) == [tmp_path / "0" / "report", tmp_path / "1" / "report", tmp_path / "oracle/0/report"]


def test_the_rounds_of_a_multi_round_variant_are_averaged_over_seeds_per_round() -> None:
    assert rounds_summary([_seed_report(0, {("SFT", "target"): 0.1})]) is None
    reports = []
    for seed in (0, 1):
        report = _seed_report(seed, {("DR+IS", "target"): 0.2})
        # Seed s: the expert share falls from 0.4 + 0.1 s in round 1 to 0.2 + 0.1 s in round 2.
        report.rounds = pd.DataFrame(
            [
                ["DR+IS", number, share, -1.0 * number, 1.5, 10.0 * number + seed, 20.0]
                for number, share in ((1, 0.4 + 0.1 * seed), (2, 0.2 + 0.1 * seed))
            ],
            columns=["variant", "round", "expert_share", "behavior_logprob", "alignment_nll", "target", "forgetting"],
        )
        reports.append(report)
    table = rounds_summary(reports)
    # Round 1: shares 40% and 50% -> 45%, targets 10 and 11 -> 10.5; round 2: 25% and 20.5.
    assert table.loc[("DR+IS", 1), ["expert_share", "target"]].tolist() == pytest.approx([45.0, 10.5])
    assert table.loc[("DR+IS", 2), ["expert_share", "target"]].tolist() == pytest.approx([25.0, 20.5])
    # Two seeds 10 points apart: the half-width is t(0.975, 1 df) * 7.071 / sqrt(2) = 12.706 * 5.
    assert table.loc[("DR+IS", 1), ["expert_share_ci", "seeds"]].tolist() == pytest.approx([63.53, 2], abs=0.01)


def test_the_seed_table_has_one_column_per_group_and_counts_each_variants_seeds() -> None:
    # SFT at 10% and 20% over two seeds (mean 15, half-width t(1) * sd 7.07 / sqrt(2) = 12.706 * 5 = 63.5);
    # the oracle control at 50% in one seed only.
    reports = [_seed_report(seed, {("SFT", "target"): 0.1 * (seed + 1)}) for seed in (0, 1)]
    reports.append(_seed_report(0, {("oracle", "target"): 0.5}, data="toy_train_native"))
    table = seed_table(reports)
    assert table.columns.tolist() == ["target", "seeds"]
    assert table.loc["SFT"].tolist() == ["15.0 ± 63.5", 2]
    assert table.loc["oracle"].tolist() == ["50.0 ± nan", 1]


def test_the_rounds_table_has_a_column_for_each_source_some_round_has(tmp_path: Path) -> None:
    from mindgap.pipeline.rounds import ROUND_COLUMNS, rounds_markdown

    nan = float("nan")
    # An SDFT variant (rewrites and fallbacks) and a Mind the Gap one (its own samples, guided, fallbacks).
    rows = [
        ["SDFT+SFT", 1, 8, 0, 0, 6, 2, 0.25, -0.5, 1.2, nan, nan, 10.0, 20.0],
        ["DR+IS", 1, 8, 3, 4, 0, 1, 0.125, -0.4, 1.1, 0.05, 0.9, 12.5, nan],
    ]
    pd.DataFrame(rows, columns=list(ROUND_COLUMNS)).to_csv(tmp_path / "rounds.csv", index=False)
    header, rule, *table = rounds_markdown(tmp_path / "rounds.csv").strip().splitlines()[-4:]
    cells = [line.strip("|").split("|") for line in (header, rule, *table)]
    assert [cell.strip() for cell in cells[0][:6]] == ["variant", "round", "self", "guided", "rewritten", "expert"]
    assert {len(row) for row in cells} == {13}
    assert [cell.strip() for cell in cells[2]] == [
        "SDFT+SFT", "1", "0", "0", "6", "2", "25.0%", "-0.500", "1.200", "-", "-", "10.00", "20.00"
    ]  # fmt: skip
    assert [cell.strip() for cell in cells[3]][-3:] == ["0.900", "12.50", "-"]
    # Mind the Gap alone never rewrites: no column of zeros.
    pd.DataFrame(rows[1:], columns=list(ROUND_COLUMNS)).to_csv(tmp_path / "rounds.csv", index=False)
    header, rule, row = rounds_markdown(tmp_path / "rounds.csv").strip().splitlines()[-3:]
    assert "rewritten" not in header
    assert header.count("|") == rule.count("|") == row.count("|") == 13
