"""The results table: means, standard deviations and Welch t-tests over seeds, by hand."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
from scipy import stats

from gkd_lib.report import results_table, to_markdown


def runs(arm, accuracies, pearson):
    return [
        {
            "arm": arm,
            "seed": seed,
            "top1_best_val": a,
            "top1_last": a - 1,
            "top1_best_test_paper": a + 1,
            "centroid_pearson": p,
        }
        for seed, (a, p) in enumerate(zip(accuracies, pearson, strict=True))
    ]


@pytest.fixture
def table():
    frame = pd.DataFrame(
        runs("teacher", [80.0], [math.nan])
        + runs("baseline", [60.0, 61.0, 65.0], [0.90, 0.92, 0.94])
        + runs("geometry", [70.0, 72.0, 74.0], [0.97, 0.98, 0.99])
    )
    return results_table(frame).set_index("arm")


def test_mean_std_and_difference_by_hand(table):
    # geometry: mean 72, sample variance ((-2)^2 + 0 + 2^2) / 2 = 4; baseline: mean 62, variance 7
    assert table.loc["geometry", "top1_best_val_mean"] == pytest.approx(72.0)
    assert table.loc["geometry", "top1_best_val_std"] == pytest.approx(2.0)
    assert table.loc["baseline", "top1_best_val_std"] == pytest.approx(math.sqrt(7.0))
    assert table.loc["geometry", "delta_vs_baseline"] == pytest.approx(10.0)
    assert table.loc["geometry", "centroid_pearson"] == pytest.approx(0.98)
    assert table.loc["geometry", "centroid_pearson_std"] == pytest.approx(0.01)
    assert math.isnan(table.loc["teacher", "top1_best_val_std"])  # one run: no spread


def test_welch_p_value_by_hand(table):
    # t = (72 - 62) / sqrt(4/3 + 7/3); Welch-Satterthwaite df = (11/3)^2 / ((4/3)^2/2 + (7/3)^2/2) = 242/65
    t = 10 / math.sqrt(11 / 3)
    expected = 2 * stats.t.sf(t, 242 / 65)
    assert table.loc["geometry", "p_vs_baseline"] == pytest.approx(expected, rel=1e-9)
    assert 0.005 < expected < 0.02
    assert math.isnan(table.loc["baseline", "p_vs_baseline"]) and math.isnan(table.loc["teacher", "p_vs_kd"])


def test_markdown_shows_spreads_and_explains_its_columns(table):
    markdown = to_markdown(table.reset_index())
    assert re.search(
        r"\| geometry +\| +3 \| +72\.00 ± 2\.00 +\| +71\.00 ± 2\.00 +\| +\+10\.00 +\| +0\.008 +\|", markdown
    )
    assert "0.980 ± 0.010" in markdown
    assert "How to read the columns" in markdown and "Welch t-test" in markdown
