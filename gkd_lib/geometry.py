"""Feature-space geometry: class centroids, relation matrices and the metrics that
turn "geometry kept" into numbers (DESIGN.md section 4).

Metrics compare the teacher's and the student's embeddings of the same images:
centroid correlation (Pearson and Spearman over the off-diagonal entries of the two
relation matrices), the normalised Frobenius distance between them, linear CKA,
class-neighbour agreement; and, for one embedding alone, silhouette, k-NN accuracy
and retrieval recall@1. scikit-learn and scipy compute what they already know.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from sklearn.metrics import silhouette_score
from sklearn.neighbors import NearestNeighbors

SIMILARITIES = ("cosine", "dot", "neg_sqdist")


def class_centroids(embedding: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The mean embedding of each class, (num_classes, dim); a class with no sample gets zeros."""
    one_hot = F.one_hot(labels, num_classes).to(embedding.dtype)
    counts = one_hot.sum(0).clamp(min=1)
    return (one_hot.T @ embedding) / counts[:, None]


def relation_matrix(centroids: torch.Tensor, similarity: str = "cosine") -> torch.Tensor:
    """The (C, C) matrix of pairwise similarities between class centroids."""
    if similarity == "cosine":
        unit = F.normalize(centroids, dim=1)
        return unit @ unit.T
    if similarity == "dot":
        return centroids @ centroids.T
    if similarity == "neg_sqdist":
        squared = (centroids * centroids).sum(1)
        return 2 * centroids @ centroids.T - squared[:, None] - squared[None, :]
    raise ValueError(f"similarity must be one of {', '.join(SIMILARITIES)}; got {similarity!r}")


def off_diagonal(matrix) -> np.ndarray:
    """The entries of a square matrix off its diagonal, row by row."""
    matrix = np.asarray(matrix)
    return matrix[~np.eye(len(matrix), dtype=bool)]


def centroid_correlation(teacher_relation, student_relation) -> dict[str, float]:
    """Pearson and Spearman correlation of the off-diagonal entries of two relation matrices."""
    t, s = off_diagonal(teacher_relation), off_diagonal(student_relation)
    return {
        "pearson": float(stats.pearsonr(t, s).statistic),
        "spearman": float(stats.spearmanr(t, s).statistic),
    }


def normalized_frobenius(teacher_relation, student_relation) -> float:
    """||S - T||_F / ||T||_F over the off-diagonal entries."""
    t, s = off_diagonal(teacher_relation), off_diagonal(student_relation)
    return float(np.linalg.norm(s - t) / np.linalg.norm(t))


def linear_cka(x, y) -> float:
    """Linear CKA of Kornblith et al. 2019 between two embeddings of the same n samples.

    CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring each feature.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples in both embeddings; got {x.shape[0]} and {y.shape[0]}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def neighbour_agreement(teacher_relation, student_relation, k: int = 5) -> float:
    """Mean overlap |N_T(c) & N_S(c)| / k of each class's k most similar other classes."""
    t, s = np.asarray(teacher_relation, dtype=np.float64), np.asarray(student_relation, dtype=np.float64)
    if not 1 <= k < len(t):
        raise ValueError(f"k must be in 1..{len(t) - 1} for {len(t)} classes, got {k!r}")
    np.fill_diagonal(t := t.copy(), -np.inf)
    np.fill_diagonal(s := s.copy(), -np.inf)
    top_t = np.argsort(-t, axis=1, kind="stable")[:, :k]
    top_s = np.argsort(-s, axis=1, kind="stable")[:, :k]
    overlaps = [len(set(a) & set(b)) / k for a, b in zip(top_t, top_s, strict=True)]
    return float(np.mean(overlaps))


def knn_scores(embedding, labels, k: int = 5) -> dict[str, float]:
    """Leave-one-out k-NN accuracy (majority of the k nearest others, cosine) and recall@1."""
    embedding = np.asarray(embedding, dtype=np.float32)
    labels = np.asarray(labels)
    index = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(embedding)
    _, neighbours = index.kneighbors(embedding)
    # The nearest point is the query itself, unless an exact duplicate came first.
    others = np.array([row[row != i][:k] for i, row in enumerate(neighbours)])
    votes = labels[others]
    num_classes = int(labels.max()) + 1
    counts = np.stack([(votes == c).sum(1) for c in range(num_classes)], axis=1)
    return {
        "knn_accuracy": float((counts.argmax(1) == labels).mean()),
        "recall_at_1": float((votes[:, 0] == labels).mean()),
    }


def silhouette(embedding, labels, sample_size: int = 5000, seed: int = 0) -> float:
    """Silhouette score of the classes in the embedding (cosine), on at most `sample_size` points."""
    embedding = np.asarray(embedding, dtype=np.float32)
    size = min(sample_size, len(embedding))
    return float(silhouette_score(embedding, labels, metric="cosine", sample_size=size, random_state=seed))


def geometry_metrics(
    teacher_embedding,
    student_embedding,
    labels,
    num_classes: int,
    *,
    similarity: str = "cosine",
    k_classes: int = 5,
    k_samples: int = 5,
) -> dict[str, float]:
    """Every metric of DESIGN.md section 4 for one student against the teacher."""
    teacher_embedding = torch.as_tensor(teacher_embedding, dtype=torch.float64)
    student_embedding = torch.as_tensor(student_embedding, dtype=torch.float64)
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    g_t = relation_matrix(class_centroids(teacher_embedding, labels_t, num_classes), similarity).numpy()
    g_s = relation_matrix(class_centroids(student_embedding, labels_t, num_classes), similarity).numpy()
    correlation = centroid_correlation(g_t, g_s)
    return {
        "centroid_pearson": correlation["pearson"],
        "centroid_spearman": correlation["spearman"],
        "relation_frobenius": normalized_frobenius(g_t, g_s),
        "cka": linear_cka(teacher_embedding.numpy(), student_embedding.numpy()),
        "neighbour_agreement": neighbour_agreement(g_t, g_s, min(k_classes, num_classes - 1)),
        "silhouette": silhouette(student_embedding.numpy(), labels),
        **knn_scores(student_embedding.numpy(), labels, k_samples),
    }
