"""The lambda sweep: the geometry weight over a grid, for each centroid mode.

Every grid point is a student run named `sweep-<centroids>-w<weight>` with the
profile's first seed; weight 0 switches the term off, so it is one run, `sweep-w0`,
shared by every centroid mode. The sweep table puts the validation and test accuracy of
each point beside its centroid correlation with the teacher; the best weight is
chosen on validation accuracy (never on test), ties going to the higher
centroid correlation.
"""

from __future__ import annotations

import copy

import pandas as pd

from gkd_lib.config import Config
from gkd_lib.runs import read_json, write_json


def point_name(mode: str, weight: float) -> str:
    """The run name of a grid point; weight 0 is one run for every mode (the term is off)."""
    return "sweep-w0" if weight == 0 else f"sweep-{mode}-w{weight:g}"


def _arguments(cfg: Config, mode: str, weight: float) -> dict:
    args = copy.deepcopy(cfg.method_args)
    args["geometry"] = {**args.get("geometry", {}), "weight": float(weight), "centroids": mode}
    return args


def sweep_points(cfg: Config) -> list[tuple[str, dict]]:
    """(run name, method_args) for every distinct run of the grid."""
    points = {}
    for mode in cfg.sweep_centroids:
        for weight in cfg.sweep_weights:
            points.setdefault(point_name(mode, weight), _arguments(cfg, mode, weight))
    return list(points.items())


def sweep_table(cfg: Config, geometry: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per finished grid point (mode, weight): accuracies (%) and, if given, geometry metrics."""
    rows = []
    seed = cfg.seeds[0]
    for mode in cfg.sweep_centroids:
        for weight in cfg.sweep_weights:
            name = point_name(mode, weight)
            folder = cfg.student_dir(name, seed)
            if not (folder / "summary.json").exists():
                continue
            summary = read_json(folder / "summary.json")
            rows.append(
                {
                    "arm": name,
                    "seed": seed,
                    "weight": float(weight),
                    "centroids": mode,
                    "val_top1": 100 * summary["best_val_acc"],
                    "test_top1": 100 * summary["test_acc_at_best_val"],
                }
            )
    table = pd.DataFrame(rows)
    if geometry is not None and len(table):
        table = table.merge(
            geometry.drop(columns=["test_acc"], errors="ignore"), on=["arm", "seed"], how="left"
        )
    return table


def best_weight(table: pd.DataFrame) -> dict:
    """The grid point with the best validation accuracy (ties: higher centroid correlation).

    Weight 0 is the sweep's reference (the term switched off), never its best: a geometry arm
    that took it would be the baseline under another name.
    """
    candidates = table[table["weight"] > 0] if not table.empty else table
    if candidates.empty:
        raise ValueError("the sweep has no finished run with a weight above 0; sweep_weights needs one")
    keys = ["val_top1", "centroid_pearson"] if "centroid_pearson" in table else ["val_top1"]
    row = candidates.sort_values(keys, ascending=False).iloc[0]
    return {
        "weight": float(row["weight"]),
        "centroids": str(row["centroids"]),
        "val_top1": float(row["val_top1"]),
        "test_top1": float(row["test_top1"]),
        "selected_on": "validation accuracy",
    }


def best_path(cfg: Config):
    return cfg.profile_dir / "sweep" / "best.json"


def save_best(cfg: Config, best: dict) -> None:
    best_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    write_json(best_path(cfg), best)


def with_best_weight(cfg: Config) -> Config:
    """The profile with the sweep's best geometry weight and centroid mode, if it asks for them."""
    if not cfg.use_sweep_best:
        return cfg
    path = best_path(cfg)
    if not path.exists():
        raise FileNotFoundError(
            f"use_sweep_best is set, but the sweep has no result yet ({path}); "
            "run the sweep first (--only sweep)"
        )
    best = read_json(path)
    args = copy.deepcopy(cfg.method_args)
    args["geometry"] = {**args.get("geometry", {}), "weight": best["weight"], "centroids": best["centroids"]}
    return cfg.replace(method_args=args)
