"""Geometry metrics against values worked out by hand or by an independent formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group

from gkd_lib import geometry


def hsic_cka(x, y):
    """Linear CKA written the other way: HSIC with Gram matrices and the centring matrix H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h)  # noqa: E731
    return hsic(k, l_) / math.sqrt(hsic(k, k) * hsic(l_, l_))


@pytest.fixture
def embeddings():
    rng = np.random.default_rng(0)
    return rng.normal(size=(60, 12)), rng.normal(size=(60, 7))


def test_cka_matches_the_hsic_formula(embeddings):
    x, y = embeddings
    assert geometry.linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)


def test_cka_of_identical_spaces_is_one(embeddings):
    x, _ = embeddings
    assert geometry.linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling(embeddings):
    x, y = embeddings
    q = ortho_group.rvs(12, random_state=1)
    base = geometry.linear_cka(x, y)
    assert geometry.linear_cka(x @ q, y) == pytest.approx(base, rel=1e-10)
    assert geometry.linear_cka(7.5 * x, 0.2 * y) == pytest.approx(base, rel=1e-10)
    # ... but not to an anisotropic scaling, so the test can tell the difference
    assert geometry.linear_cka(x * np.linspace(0.1, 10, 12), y) != pytest.approx(base, rel=1e-3)


def test_relation_matrix_by_hand():
    c = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    cosine = geometry.relation_matrix(c, "cosine")
    assert cosine[0, 1].item() == pytest.approx(0.0)
    assert cosine[0, 2].item() == pytest.approx(3 / 5)
    assert cosine[1, 2].item() == pytest.approx(8 / 10)
    assert geometry.relation_matrix(c, "dot")[1, 2].item() == pytest.approx(8.0)
    # -||(0,2) - (3,4)||^2 = -(9 + 4)
    assert geometry.relation_matrix(c, "neg_sqdist")[1, 2].item() == pytest.approx(-13.0)
    with pytest.raises(ValueError, match="cosine, dot, neg_sqdist"):
        geometry.relation_matrix(c, "euclid")


def test_class_centroids_by_hand():
    e = torch.tensor([[1.0, 1.0], [3.0, 5.0], [10.0, 0.0]])
    centroids = geometry.class_centroids(e, torch.tensor([0, 0, 2]), 3)
    assert centroids.tolist() == [[2.0, 3.0], [0.0, 0.0], [10.0, 0.0]]


def test_centroid_correlation_and_frobenius():
    t = np.array([[1, 0.2, 0.5], [0.2, 1, 0.1], [0.5, 0.1, 1]])
    same = geometry.centroid_correlation(t, t)
    assert same["pearson"] == pytest.approx(1.0) and same["spearman"] == pytest.approx(1.0)
    s = np.array([[9, 0.1, 0.4], [0.1, 9, 0.3], [0.4, 0.3, 9]])  # the diagonal must not count
    off_t, off_s = [0.2, 0.5, 0.2, 0.1, 0.5, 0.1], [0.1, 0.4, 0.1, 0.3, 0.4, 0.3]
    result = geometry.centroid_correlation(t, s)
    assert result["pearson"] == pytest.approx(np.corrcoef(off_t, off_s)[0, 1])
    # ranks of t: 0.1 -> 1.5, 0.2 -> 3.5, 0.5 -> 5.5; of s: 0.1 -> 1.5, 0.3 -> 3.5, 0.4 -> 5.5
    ranks_t, ranks_s = [3.5, 5.5, 3.5, 1.5, 5.5, 1.5], [1.5, 5.5, 1.5, 3.5, 5.5, 3.5]
    assert result["spearman"] == pytest.approx(np.corrcoef(ranks_t, ranks_s)[0, 1])
    # ||s - t|| over off-diagonals: sqrt(2 * (0.01 + 0.01 + 0.04)) / sqrt(2 * (0.04 + 0.25 + 0.01))
    assert geometry.normalized_frobenius(t, s) == pytest.approx(math.sqrt(0.12 / 0.6))


def test_neighbour_agreement_by_hand():
    # Four classes on a line; teacher neighbours (k=1): 0->1, 1->0, 2->3, 3->2.
    t = -np.abs(np.subtract.outer([0, 1, 5, 6], [0, 1, 5, 6])).astype(float)
    # Student: 0->1, 1->2, 2->1, 3->2: agrees for classes 0 and 3 only.
    s = -np.abs(np.subtract.outer([0, 1, 1.5, 2.5], [0, 1, 1.5, 2.5])).astype(float)
    assert geometry.neighbour_agreement(t, s, k=1) == pytest.approx(0.5)
    assert geometry.neighbour_agreement(t, t, k=2) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k must be in 1..3"):
        geometry.neighbour_agreement(t, s, k=4)


def test_knn_scores_by_hand():
    # Directions (cosine): two tight bundles, and one class-1 point inside the class-0 bundle.
    angles = np.array([0.0, 0.05, 0.1, 0.07, 1.5, 1.52, 1.55])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    scores = geometry.knn_scores(points, labels, k=3)
    # Nearest other point: 0->1, 1->3(0.07, label 1), 2->3, 3->1 or 2 (label 0), 4->5, 5->4, 6->5.
    # Recall@1: correct for points 0, 4, 5, 6 and wrong for 1, 2, 3 -> 4/7.
    assert scores["recall_at_1"] == pytest.approx(4 / 7)
    # 3 nearest others: 0 -> {1,3,2} votes 0; 1 -> {3,0,2} 0; 2 -> {3,1,0} 0; 3 -> {1,2,0} 0 (wrong);
    # 4,5,6 -> class 1 majority. Six of seven right.
    assert scores["knn_accuracy"] == pytest.approx(6 / 7)


def test_silhouette_separated_clusters_is_high_and_mixed_is_low():
    rng = np.random.default_rng(0)
    centres = np.eye(4) * 10
    labels = np.repeat(np.arange(4), 25)
    tight = centres[labels] + rng.normal(scale=0.1, size=(100, 4))
    assert geometry.silhouette(tight, labels) > 0.95
    assert geometry.silhouette(rng.normal(size=(100, 4)), labels) < 0.1


def test_geometry_metrics_of_a_student_equal_to_the_teacher():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 20)
    teacher = rng.normal(size=(6, 16))[labels] + 0.3 * rng.normal(size=(120, 16))
    metrics = geometry.geometry_metrics(teacher, teacher, labels, 6)
    assert metrics["centroid_pearson"] == pytest.approx(1.0)
    assert metrics["centroid_spearman"] == pytest.approx(1.0)
    assert metrics["relation_frobenius"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["cka"] == pytest.approx(1.0)
    assert metrics["neighbour_agreement"] == pytest.approx(1.0)
    noisy = geometry.geometry_metrics(teacher, rng.normal(size=(120, 8)), labels, 6)
    assert noisy["cka"] < 0.5 and noisy["relation_frobenius"] > 0.1
