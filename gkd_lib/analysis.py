"""Geometry analysis of a profile's runs: test-set embeddings of the teacher and of
every student run, their relation matrices, the geometry metrics and UMAP projections.

Models are loaded at their best-validation epoch and run in eval mode without
augmentation. The metrics of every run go to `runs/<profile>/analysis/geometry.csv`,
which the report reads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from gkd_lib.config import Config
from gkd_lib.datasets import ImageData
from gkd_lib.geometry import class_centroids, geometry_metrics, knn_scores, relation_matrix, silhouette
from gkd_lib.models import build_model
from gkd_lib.runs import load_checkpoint
from gkd_lib.train import embed, load_data, select_device


@dataclass(frozen=True)
class StudentRun:
    arm: str  # the run name: a method spec, or a sweep point
    seed: int
    folder: Path


def student_runs(cfg: Config, arms=None, seeds=None) -> list[StudentRun]:
    """The finished student runs of a profile (default: the profile's methods and seeds)."""
    runs = []
    for arm in arms or cfg.methods:
        for seed in seeds or cfg.seeds:
            folder = cfg.student_dir(arm, seed)
            if (folder / "summary.json").exists():
                runs.append(StudentRun(arm, seed, folder))
    return runs


def load_trained(folder: Path, device) -> torch.nn.Module:
    """The model of a run folder at its best-validation epoch, in eval mode."""
    state = load_checkpoint(Path(folder) / "best.pt", map_location=device)
    info = state["model_info"]
    model = build_model(info["name"], info["num_classes"], info["in_channels"], info["width"])
    model.load_state_dict(state["model"])
    return model.to(device, memory_format=torch.channels_last).eval()


def centroid_relation(embedding: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """The cosine relation matrix of test-set class centroids."""
    centroids = class_centroids(embedding.double(), labels, num_classes)
    return relation_matrix(centroids, "cosine").numpy()


@dataclass
class GeometryAnalysis:
    data: ImageData
    teacher_embedding: torch.Tensor
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # arm -> first seed's embedding
    relations: dict[str, np.ndarray] = field(default_factory=dict)  # "teacher" and each arm
    metrics: pd.DataFrame | None = None  # one row per run

    @property
    def labels(self) -> np.ndarray:
        return self.data.test_labels.numpy()


def analyse(
    cfg: Config, data: ImageData | None = None, arms=None, seeds=None, progress: bool = True
) -> GeometryAnalysis:
    """Embed the test set with the teacher and every student run, and measure the geometry.

    `arms` are run names (default: the profile's methods); every finished seed of each is measured.
    """
    arms, seeds = list(arms or cfg.methods), list(seeds or cfg.seeds)
    data = data or load_data(cfg)
    device = select_device(cfg.device, cfg.threads)
    labels = data.test_labels
    teacher = load_trained(cfg.teacher_dir, device)
    teacher_embedding, teacher_logits = embed(teacher, data.test_images, data, device, cfg.eval_batch_size)
    result = GeometryAnalysis(data, teacher_embedding)
    result.relations["teacher"] = centroid_relation(teacher_embedding, labels, data.num_classes)

    rows = [
        {
            "arm": "teacher",
            "seed": cfg.teacher_seed,
            "test_acc": float((teacher_logits.argmax(1) == labels).float().mean()),
            "silhouette": silhouette(teacher_embedding.numpy(), labels.numpy()),
            **knn_scores(teacher_embedding.numpy(), labels.numpy()),
        }
    ]
    runs = student_runs(cfg, arms, seeds)
    missing = [
        (arm, seed)
        for arm in arms
        for seed in seeds
        if not (cfg.student_dir(arm, seed) / "summary.json").exists()
    ]
    if missing:
        warnings.warn(f"no finished run for {missing}; the analysis leaves them out", stacklevel=2)
    for run in runs:
        student = load_trained(run.folder, device)
        embedding, logits = embed(student, data.test_images, data, device, cfg.eval_batch_size)
        if run.arm not in result.embeddings:
            result.embeddings[run.arm] = embedding
            result.relations[run.arm] = centroid_relation(embedding, labels, data.num_classes)
        metrics = geometry_metrics(teacher_embedding, embedding, labels.numpy(), data.num_classes)
        rows.append(
            {
                "arm": run.arm,
                "seed": run.seed,
                "test_acc": float((logits.argmax(1) == labels).float().mean()),
                **metrics,
            }
        )
        if progress:
            print(
                f"{run.arm:>14s} seed {run.seed}: centroid Pearson {metrics['centroid_pearson']:.3f}, "
                f"CKA {metrics['cka']:.3f}, test {100 * rows[-1]['test_acc']:.2f}%"
            )
    result.metrics = pd.DataFrame(rows)
    return result


def save_metrics(cfg: Config, metrics: pd.DataFrame, folder: str = "analysis") -> Path:
    folder = cfg.profile_dir / folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "geometry.csv"
    metrics.to_csv(path, index=False)
    return path


def umap_projections(
    embeddings: dict[str, torch.Tensor], labels: np.ndarray, points: int, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """2-D UMAP of each embedding on the same stratified subset of at most `points` test images."""
    import umap

    index = np.arange(len(labels))
    if points < len(labels):
        index, _ = train_test_split(index, train_size=points, stratify=labels, random_state=seed)
        index = np.sort(index)
    projections = {}
    for name, embedding in embeddings.items():
        reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*n_jobs value 1 overridden.*")
            projections[name] = reducer.fit_transform(np.asarray(embedding)[index])
    return projections, labels[index]
