"""Figures of the study: relation-matrix heatmaps, UMAP projections, centroid-correlation
scatters, training curves and the lambda-sweep Pareto plot.

Every function returns a matplotlib Figure; `save` writes it as PNG and PDF into a
profile's figure folder. Class names label the axes; the same class keeps the same
colour in every panel.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform

from gkd_lib.geometry import off_diagonal

sns.set_theme(context="notebook", style="white")


def save(figure, folder: str | Path, name: str, formats=("png", "pdf")) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in formats:
        path = folder / f"{name}.{extension}"
        figure.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def clustered_order(relation: np.ndarray) -> np.ndarray:
    """An order of the classes that puts similar ones together (average linkage on 1 - similarity)."""
    relation = np.asarray(relation, dtype=np.float64)
    distance = relation.max() - relation
    np.fill_diagonal(distance, 0.0)
    distance = (distance + distance.T) / 2
    tree = linkage(squareform(distance, checks=False), method="average", optimal_ordering=True)
    return leaves_list(tree)


def _label_size(num_classes: int) -> float:
    return float(np.clip(220 / max(num_classes, 1), 3.5, 10))


LEGIBLE_CLASSES = 30  # beyond this many classes the overview drops its tick labels


def _relation_panels(relations: dict[str, np.ndarray], teacher_key: str):
    """The teacher's clustered order, each matrix and difference in it, and shared colour limits."""
    order = clustered_order(relations[teacher_key])
    ordered = {name: np.asarray(m, dtype=float)[np.ix_(order, order)] for name, m in relations.items()}
    differences = {name: m - ordered[teacher_key] for name, m in ordered.items() if name != teacher_key}
    for matrix in (*ordered.values(), *differences.values()):
        np.fill_diagonal(matrix, np.nan)
    off = np.concatenate([off_diagonal(np.asarray(m)) for m in relations.values()])
    limits = {
        "relation": (np.percentile(off, 1), np.percentile(off, 99)),
        "difference": max([np.nanmax(np.abs(d)) for d in differences.values()] + [1e-6]),
    }
    return order, ordered, differences, limits


def _heatmap(matrix, axis, kind, limits, labels, show_y, colorbar_axis=None):
    if kind == "relation":
        style = {"cmap": "viridis", "vmin": limits["relation"][0], "vmax": limits["relation"][1]}
        label = "cosine similarity"
    else:
        style = {"cmap": "RdBu_r", "vmin": -limits["difference"], "vmax": limits["difference"]}
        label = "student − teacher"
    sns.heatmap(
        matrix,
        ax=axis,
        square=True,
        xticklabels=labels if labels is not None else False,
        yticklabels=labels if (labels is not None and show_y) else False,
        cbar=colorbar_axis is not None,
        cbar_ax=colorbar_axis,
        cbar_kws={"label": label},
        **style,
    )


def relation_heatmaps(relations: dict[str, np.ndarray], class_names, teacher_key: str = "teacher"):
    """Top row: each model's relation matrix; bottom row: each student minus the teacher.

    All panels share the teacher's clustered class order and one colour scale per row. With
    more than 30 classes the names would not be legible here: `relation_heatmap_pages` draws
    one large figure per model with every name.
    """
    names = list(relations)
    order, ordered, differences, limits = _relation_panels(relations, teacher_key)
    labels = [class_names[k] for k in order] if len(order) <= LEGIBLE_CLASSES else None
    panel = 3.2 if len(order) <= 20 else 6.0
    figure, axes = plt.subplots(
        2,
        len(names) + 1,
        figsize=(panel * len(names) + 1.2, 2 * panel + 1.2),
        squeeze=False,
        gridspec_kw={"width_ratios": [1] * len(names) + [0.04]},
    )
    first_student = next(i for i, n in enumerate(names) if n != teacher_key)
    for column, name in enumerate(names):
        _heatmap(
            ordered[name],
            axes[0, column],
            "relation",
            limits,
            labels,
            column == 0,
            axes[0, -1] if column == 0 else None,
        )
        axes[0, column].set_title(name)
        if name == teacher_key:
            axes[1, column].axis("off")
            axes[1, column].text(
                0.5,
                0.5,
                "bottom row:\nstudent − teacher\n\nred: the student sees the\n"
                "pair as more alike\nblue: less alike",
                ha="center",
                va="center",
                transform=axes[1, column].transAxes,
            )
            continue
        first = column == first_student
        _heatmap(
            differences[name],
            axes[1, column],
            "difference",
            limits,
            labels,
            first,
            axes[1, -1] if first else None,
        )
        axes[1, column].set_title(f"{name} − {teacher_key}")
    for axis in axes[:, :-1].flat:
        axis.tick_params(labelsize=_label_size(len(order)), length=0)
    title = (
        "Relation matrices of class centroids (test set, cosine; classes in the teacher's clustered order)"
    )
    if labels is None:
        title += "\nclass names: the relation_heatmap_<model> figures"
    figure.suptitle(title, y=1.0)
    figure.tight_layout()
    return figure


def relation_heatmap_pages(relations: dict[str, np.ndarray], class_names, teacher_key: str = "teacher"):
    """One large figure per model, every class named: the teacher's matrix, and for each student
    its matrix beside its difference from the teacher (same order and colours as the overview)."""
    order, ordered, differences, limits = _relation_panels(relations, teacher_key)
    labels = [class_names[k] for k in order]
    side = max(6.0, 0.16 * len(order))
    pages = {}
    for name in relations:
        panels = [("relation", ordered[name], name)]
        if name != teacher_key:
            panels.append(("difference", differences[name], f"{name} − {teacher_key}"))
        figure, axes = plt.subplots(1, len(panels), figsize=(side * len(panels) + 2, side + 1), squeeze=False)
        for axis, (kind, matrix, title) in zip(axes[0], panels, strict=True):
            _heatmap(matrix, axis, kind, limits, labels, True, None)
            axis.collections[0].figure.colorbar(
                axis.collections[0],
                ax=axis,
                shrink=0.6,
                label="cosine similarity" if kind == "relation" else "student − teacher",
            )
            axis.set_title(title)
            axis.tick_params(labelsize=6.5, length=0)
        figure.tight_layout()
        pages[name] = figure
    return pages


def class_palette(num_classes: int):
    if num_classes <= 10:
        return sns.color_palette("tab10", num_classes)
    if num_classes <= 20:
        return sns.color_palette("tab20", num_classes)
    return sns.color_palette("husl", num_classes)


def umap_panels(projections: dict[str, np.ndarray], labels: np.ndarray, class_names):
    """One 2-D UMAP projection of the test embeddings per model, the same colour per class."""
    names = list(projections)
    num_classes = len(class_names)
    palette = class_palette(num_classes)
    columns = min(len(names), 3)
    rows = int(np.ceil(len(names) / columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.2 * columns, 5.0 * rows), squeeze=False, layout="constrained"
    )
    colours = np.asarray(palette)[labels]
    marker = float(np.clip(6000 / len(labels), 3, 25))
    for axis, name in zip(axes.flat, names, strict=False):
        points = projections[name]
        axis.scatter(points[:, 0], points[:, 1], c=colours, s=marker, alpha=0.7, linewidths=0)
        for k in range(num_classes):
            centre = np.median(points[labels == k], axis=0)
            axis.annotate(
                class_names[k],
                centre,
                fontsize=_label_size(num_classes) + 1,
                ha="center",
                va="bottom",
                xytext=(0, 6),
                textcoords="offset points",
                color="black",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "alpha": 0.5, "lw": 0},
            )
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
        axis.margins(0.08)  # room for the labels of the classes at the edges
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    if num_classes <= 20:
        handles = [
            plt.Line2D([], [], marker="o", ls="", color=palette[k], label=class_names[k])
            for k in range(num_classes)
        ]
        figure.legend(handles=handles, loc="outside right center", frameon=False, title="class")
    figure.suptitle("UMAP of the test-set embeddings (one projection per model; labels at class medians)")
    return figure


def centroid_scatter(
    teacher_relation: np.ndarray,
    student_relations: dict[str, np.ndarray],
    pearson: dict[str, float] | None = None,
):
    """Each pair of classes as a point: the teacher's similarity against the student's."""
    names = list(student_relations)
    columns = min(len(names), 4)
    rows = int(np.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.8 * columns, 3.8 * rows), squeeze=False)
    upper = np.triu_indices(len(teacher_relation), k=1)
    x = np.asarray(teacher_relation)[upper]
    for axis, name in zip(axes.flat, names, strict=False):
        y = np.asarray(student_relations[name])[upper]
        axis.scatter(x, y, s=6 if len(x) > 500 else 18, alpha=0.5, linewidths=0)
        r = np.corrcoef(x, y)[0, 1] if pearson is None else pearson[name]
        axis.set_title(f"{name}  (Pearson r = {r:.3f})", fontsize=10)
        axis.set_xlabel("teacher: centroid cosine")
        axis.set_ylabel("student: centroid cosine")
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    figure.suptitle("Centroid correlation: every pair of classes, teacher against student (test set)")
    figure.tight_layout()
    return figure


ACCURACY_KEYS = ("train_acc", "val_acc", "test_acc")
NOT_TERMS = {"epoch", "loss", "lr", "images_per_s", "epoch_time_s", "elapsed_s", *ACCURACY_KEYS}


def training_curves(histories: dict[str, list[list[dict]]], key: str, ylabel: str, title: str):
    """One line per arm: the mean over seeds of `key` per epoch, with a band of +-1 std.

    Accuracies are drawn in % (as in the tables); arms alternate line styles, so that one
    lying on top of another still shows.
    """
    figure, axis = plt.subplots(figsize=(7, 4.2))
    palette = sns.color_palette("tab10", len(histories))
    styles = ("-", "--", "-.", ":")
    scale = 100.0 if key in ACCURACY_KEYS else 1.0
    for index, (colour, (name, runs)) in enumerate(zip(palette, histories.items(), strict=False)):
        length = min(len(rows) for rows in runs)
        values = scale * np.array([[row[key] for row in rows[:length]] for rows in runs], dtype=float)
        epochs = np.arange(1, length + 1)
        mean = values.mean(0)
        axis.plot(
            epochs,
            mean,
            label=f"{name} (n={len(runs)})",
            color=colour,
            lw=2,
            ls=styles[index % len(styles)],
            marker="o" if length <= 15 else None,  # a short run's epochs, and a one-epoch run at all
            ms=3,
        )
        if len(runs) > 1:
            std = values.std(0, ddof=1)
            axis.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, lw=0)
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend(frameon=False)
    sns.despine(figure)
    figure.tight_layout()
    return figure


def run_curves(rows: list[dict], title: str):
    """One run: each weighted loss term and the total per epoch; train, validation and test accuracy."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = [row["epoch"] for row in rows]
    left.plot(epochs, [row["loss"] for row in rows], label="total", color="black", lw=2)
    for name in [k for k in rows[0] if k not in NOT_TERMS]:
        left.plot(epochs, [row[name] for row in rows], label=name)
    left.set_xlabel("epoch")
    left.set_ylabel("loss (weighted terms)")
    left.legend(frameon=False)
    for key in ACCURACY_KEYS:
        right.plot(epochs, [100 * row[key] for row in rows], label=key.replace("_acc", ""))
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy %")
    right.legend(frameon=False)
    figure.suptitle(title)
    sns.despine(figure)
    figure.tight_layout()
    return figure


def pareto(points, x: str, y: str, hue: str, label: str, title: str):
    """Accuracy against geometry for every weight of the sweep; the Pareto front is marked."""
    import pandas as pd

    frame = pd.DataFrame(points)
    figure, axis = plt.subplots(figsize=(7, 4.6))
    sns.scatterplot(data=frame, x=x, y=y, hue=hue, style=hue, s=80, ax=axis)
    for _, row in frame.iterrows():
        axis.annotate(
            f"{row[label]:g}", (row[x], row[y]), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    ordered = frame.sort_values(x, ascending=False)
    front, best_y = [], -np.inf
    for _, row in ordered.iterrows():
        if row[y] > best_y:
            front.append(row)
            best_y = row[y]
    front = pd.DataFrame(front).sort_values(x)
    axis.plot(front[x], front[y], color="grey", ls="--", lw=1, label="Pareto front")
    axis.set_title(title)
    axis.legend(frameon=False)
    sns.despine(figure)
    figure.tight_layout()
    return figure
