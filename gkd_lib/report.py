"""The results table of a profile: the paper's Table 1 as numbers.

For every arm: test top-1 at the best-validation epoch (the reported figure) and at
the last epoch, mean and standard deviation over seeds; the difference from the
baseline and a Welch t-test against the baseline and against kd; the best test
accuracy seen during training, labelled as the figure comparable with the paper
(it selects on the test set); and the geometry metrics of the analysis step.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from gkd_lib.analysis import student_runs
from gkd_lib.config import Config
from gkd_lib.runs import MetricsLog, read_json

GEOMETRY_COLUMNS = {
    "centroid_pearson": "centroid Pearson",
    "centroid_spearman": "centroid Spearman",
    "relation_frobenius": "relation Frobenius",
    "cka": "CKA",
    "neighbour_agreement": "neighbour agreement",
    "silhouette": "silhouette",
    "knn_accuracy": "k-NN acc.",
    "recall_at_1": "recall@1",
}


def run_table(cfg: Config, arms=None) -> pd.DataFrame:
    """One row per finished run (the teacher first): accuracies in %, and geometry metrics."""
    rows = []
    teacher = read_json(cfg.teacher_dir / "summary.json")
    rows.append(
        {"arm": "teacher", "seed": cfg.teacher_seed, "model": teacher["model"], **_accuracies(teacher)}
    )
    for run in student_runs(cfg, arms):
        summary = read_json(run.folder / "summary.json")
        rows.append({"arm": run.arm, "seed": run.seed, "model": summary["model"], **_accuracies(summary)})
    table = pd.DataFrame(rows)
    geometry_csv = cfg.profile_dir / "analysis" / "geometry.csv"
    if geometry_csv.exists():
        geometry = pd.read_csv(geometry_csv).drop(columns=["test_acc"], errors="ignore")
        table = table.merge(geometry, on=["arm", "seed"], how="left")
    return table


def _accuracies(summary: dict) -> dict:
    return {
        "top1_best_val": 100 * summary["test_acc_at_best_val"],
        "top1_last": 100 * summary["test_acc_last"],
        "top1_best_test_paper": 100 * summary["best_test_acc_during_training_paper_comparable"],
        "best_val_epoch": summary["best_val_epoch"],
        "wall_time_s": summary["wall_time_s"],
    }


def welch_p(a, b) -> float:
    """Two-sided Welch t-test p-value; NaN when either side has fewer than two seeds."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def results_table(runs: pd.DataFrame, baseline: str = "baseline", reference: str = "kd") -> pd.DataFrame:
    """Per arm: mean and std over seeds, difference from the baseline, Welch p-values."""
    rows = []
    by_arm = {arm: group for arm, group in runs.groupby("arm", sort=False)}
    base = by_arm.get(baseline)
    ref = by_arm.get(reference)
    for arm, group in by_arm.items():
        accuracy = group["top1_best_val"]
        row = {
            "arm": arm,
            "seeds": len(group),
            "top1_best_val_mean": accuracy.mean(),
            "top1_best_val_std": accuracy.std(ddof=1) if len(group) > 1 else math.nan,
            "top1_last_mean": group["top1_last"].mean(),
            "top1_last_std": group["top1_last"].std(ddof=1) if len(group) > 1 else math.nan,
            "top1_best_test_paper_mean": group["top1_best_test_paper"].mean(),
            "delta_vs_baseline": accuracy.mean() - base["top1_best_val"].mean()
            if base is not None and arm != "teacher"
            else math.nan,
            "p_vs_baseline": welch_p(accuracy, base["top1_best_val"])
            if base is not None and arm not in ("teacher", baseline)
            else math.nan,
            "p_vs_kd": welch_p(accuracy, ref["top1_best_val"])
            if ref is not None and arm not in ("teacher", reference)
            else math.nan,
        }
        for column in GEOMETRY_COLUMNS:
            if column in group:
                row[column] = group[column].mean()
                row[f"{column}_std"] = group[column].std(ddof=1) if len(group) > 1 else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(mean, std, digits=2) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _number(value, digits=3) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def to_markdown(table: pd.DataFrame) -> str:
    """The results table for people: accuracies as mean ± std, blanks where a figure does not apply."""
    shown = pd.DataFrame(
        {
            "arm": table["arm"],
            "seeds": table["seeds"],
            "test top-1 % (best-val epoch)": [
                _mean_std(m, s)
                for m, s in zip(table["top1_best_val_mean"], table["top1_best_val_std"], strict=True)
            ],
            "test top-1 % (last epoch)": [
                _mean_std(m, s) for m, s in zip(table["top1_last_mean"], table["top1_last_std"], strict=True)
            ],
            "Δ vs baseline": [("" if math.isnan(v) else f"{v:+.2f}") for v in table["delta_vs_baseline"]],
            "p vs baseline": [_number(v) for v in table["p_vs_baseline"]],
            "p vs kd": [_number(v) for v in table["p_vs_kd"]],
            "best test % during training (paper-comparable)": [
                _number(v, 2) for v in table["top1_best_test_paper_mean"]
            ],
        }
    )
    for column, title in GEOMETRY_COLUMNS.items():
        if column in table:
            stds = table.get(f"{column}_std", pd.Series(math.nan, index=table.index))
            shown[title] = [_mean_std(m, s, 3) for m, s in zip(table[column], stds, strict=True)]
    # tabulate would parse the formatted figures back into numbers ("+2.69" -> 2.69, "0.950" -> 0.95)
    aligned = ("left",) + ("right",) * (len(shown.columns) - 1)
    table_text = shown.to_markdown(index=False, disable_numparse=True, colalign=aligned)
    return table_text + "\n\n" + COLUMN_NOTES.rstrip()


COLUMN_NOTES = """\
How to read the columns: accuracies are test top-1 in %, mean ± standard deviation over seeds
(one seed: no ±). "best-val epoch" is the epoch with the best accuracy on the validation split
held out from the training images; the test set is only measured. Δ is the difference of the
means from the baseline. p: two-sided Welch t-test over seeds (empty with fewer than 2 seeds).
"paper-comparable": the best test accuracy seen during training, which selects on the test set,
as the paper's Table 1 did. Geometry (test set, models at their best-val epoch, mean ± std over
seeds): centroid Pearson and Spearman correlate the off-diagonal entries of the student's and
the teacher's relation matrices (cosine similarities of class centroids; 1 is the teacher's
geometry); relation Frobenius is ||G_S - G_T|| / ||G_T|| over those entries (0 is the
teacher's); CKA is linear CKA between the embeddings; neighbour agreement is the overlap of
each class's 5 nearest classes (C - 1 with fewer classes); silhouette, k-NN accuracy
(5 neighbours, leave-one-out) and recall@1 (cosine) describe each model's own embedding space.
"""


def histories(cfg: Config, arms=None) -> dict[str, list[list[dict]]]:
    """Per arm, the per-epoch metrics of each seed."""
    result: dict[str, list[list[dict]]] = {}
    for run in student_runs(cfg, arms):
        result.setdefault(run.arm, []).append(MetricsLog(run.folder).rows())
    return result


def accuracy_vs_geometry(cfg: Config, table: pd.DataFrame):
    """Mean test top-1 against mean centroid correlation for each arm, with the sweep's points."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    if "centroid_pearson" not in table:
        return None
    arms = table[(table["arm"] != "teacher") & table["centroid_pearson"].notna()]
    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    sweep_csv = cfg.profile_dir / "sweep" / "sweep.csv"
    if sweep_csv.exists():
        sweep = pd.read_csv(sweep_csv)
        for mode, group in sweep.groupby("centroids"):
            group = group.sort_values("weight")
            axis.plot(
                group["centroid_pearson"],
                group["test_top1"],
                marker=".",
                ls=":",
                alpha=0.7,
                label=f"sweep, {mode} centroids",
            )
            for _, row in group.iterrows():
                axis.annotate(
                    f"λ={row['weight']:g}",
                    (row["centroid_pearson"], row["test_top1"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                    alpha=0.8,
                )
    palette = sns.color_palette("tab10", len(arms))
    for colour, (_, row) in zip(palette, arms.iterrows(), strict=False):
        error = row["top1_best_val_std"] if not math.isnan(row["top1_best_val_std"]) else None
        axis.errorbar(
            row["centroid_pearson"],
            row["top1_best_val_mean"],
            yerr=error,
            fmt="o",
            ms=9,
            color=colour,
            capsize=3,
            label=f"{row['arm']} (n={row['seeds']})",
        )
    axis.set_xlabel("centroid correlation with the teacher (Pearson, test set)")
    axis.set_ylabel("test top-1 % (best-validation epoch)")
    axis.set_title("Accuracy against geometry kept")
    axis.legend(frameon=False, fontsize=8, loc="best")
    sns.despine(figure)
    figure.tight_layout()
    return figure
