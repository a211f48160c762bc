"""Distillation methods: loss values worked out by hand, and how they combine."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gkd_lib.distiller import Distiller
from gkd_lib.methods import METHODS, MethodContext, Outputs, build_methods
from gkd_lib.registry import UnknownNameError

SQRT_HALF = math.sqrt(0.5)


def context(num_classes=3, student_dim=2, teacher_dim=2, centroids=None):
    return MethodContext(num_classes, student_dim, teacher_dim, centroids)


def outputs(embedding, logits=None):
    embedding = torch.as_tensor(embedding, dtype=torch.float32)
    if logits is None:
        logits = torch.zeros(len(embedding), 3)
    return Outputs(embedding, torch.as_tensor(logits, dtype=torch.float32))


def test_kd_by_hand():
    # Teacher logits (ln 3, 0) give probabilities (3/4, 1/4); student logits (0, 0) give (1/2, 1/2).
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    (kd,) = build_methods("kd", {"kd": {"temperature": 1.0, "alpha": 0.5}}, context(2))
    term = kd(outputs([[0, 0]], [[0.0, 0.0]]), outputs([[0, 0]], [[math.log(3), 0.0]]), torch.tensor([0]))
    assert term["kd"].item() == pytest.approx(0.5 * kl)
    assert kd.ce_weight == pytest.approx(0.5)
    # At T = 2 the teacher logits (2 ln 3, 0) soften to the same (3/4, 1/4); the term carries T^2 = 4.
    (kd,) = build_methods("kd", {"kd": {"temperature": 2.0, "alpha": 0.9}}, context(2))
    term = kd(outputs([[0, 0]], [[0.0, 0.0]]), outputs([[0, 0]], [[2 * math.log(3), 0.0]]), torch.tensor([0]))
    assert term["kd"].item() == pytest.approx(0.9 * 4 * kl)


def test_feature_by_hand():
    (feature,) = build_methods(
        "feature", {"feature": {"beta": 2.0}}, context(3, student_dim=2, teacher_dim=3)
    )
    with torch.no_grad():
        feature.regressor.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    # W s = (1, 2, 3) against t = (1, 0, 0): squared errors 0, 4, 9 -> mean 13/3
    term = feature(outputs([[1.0, 2.0]]), outputs([[1.0, 0.0, 0.0]]), torch.tensor([0]))
    assert term["feature"].item() == pytest.approx(2.0 * 13 / 3)
    assert feature.regressor.weight.requires_grad


TEACHER_CENTROIDS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cosines: 0, 1/sqrt2, 1/sqrt2


def geometry_method(**args):
    (method,) = build_methods("geometry", {"geometry": args}, context(centroids=TEACHER_CENTROIDS))
    return method.train()


def test_geometry_running_means_by_hand():
    method = geometry_method(weight=3.0, momentum=0.9)
    # Step 1: one sample per class; first sight, so each centroid is its batch mean.
    # Student cosines: (0,1) -> 1, (0,2) -> 0, (1,2) -> 0. Squared errors 1, 1/2, 1/2 on both
    # triangles: mean over the 6 ordered pairs = 4/6; times the weight 3 -> 2.
    step1 = method(outputs([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), None, torch.tensor([0, 1, 2]))
    assert step1["geometry"].item() == pytest.approx(3.0 * 4 / 6)
    assert method.bank.tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]

    # Step 2: only class 0, with embedding (0, 1): c_0 = 0.9 (1, 0) + 0.1 (0, 1) = (0.9, 0.1);
    # classes 1 and 2 keep their bank entries; only the 4 pairs that touch class 0 count.
    norm = math.sqrt(0.82)
    expected = ((0.9 / norm - 0.0) ** 2 + (0.1 / norm - SQRT_HALF) ** 2) / 2
    step2 = method(outputs([[0.0, 1.0]]), None, torch.tensor([0]))
    assert step2["geometry"].item() == pytest.approx(3.0 * expected, rel=1e-5)
    assert method.bank[0].tolist() == pytest.approx([0.9, 0.1])


def test_geometry_batch_centroids_by_hand():
    method = geometry_method(weight=1.0, centroids="batch")
    assert method.needs_teacher
    labels = torch.tensor([0, 0, 1])
    teacher = outputs([[1.0, 0.0], [1.0, 2.0], [0.0, 1.0]])  # class means (1, 1) and (0, 1): cosine 1/sqrt2
    student = outputs([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])  # class means (2, 0) and (0, 5): cosine 0
    # Class 2 is absent, so only the pairs (0, 1) and (1, 0) count: (0 - 1/sqrt2)^2 = 1/2.
    assert method(student, teacher, labels)["geometry"].item() == pytest.approx(0.5)


def test_geometry_is_zero_when_the_student_reproduces_the_teacher_relations():
    rng = torch.Generator().manual_seed(0)
    teacher_embedding = torch.randn(12, 5, generator=rng)
    labels = torch.arange(12) % 4
    centroids = torch.stack([teacher_embedding[labels == k].mean(0) for k in range(4)])
    (method,) = build_methods("geometry", {}, MethodContext(4, 5, 5, centroids))
    method.train()
    # A rotated and scaled copy keeps every cosine between centroids.
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=rng))
    loss = method(outputs(2.0 * teacher_embedding @ q), None, labels)["geometry"]
    assert loss.item() == pytest.approx(0.0, abs=1e-10)

    (method,) = build_methods("geometry", {}, MethodContext(4, 5, 5, centroids))
    method.train()
    other = teacher_embedding + torch.randn(12, 5, generator=rng)
    assert method(outputs(other), None, labels)["geometry"].item() > 1e-3


def test_geometry_gradient_reaches_the_student_through_the_batch_means():
    torch.manual_seed(0)
    inputs, labels = torch.randn(9, 4), torch.tensor([0, 1, 2] * 3)
    grads = {}
    for momentum in (0.0, 0.9):
        torch.manual_seed(1)
        student = nn.Linear(4, 2)
        method = geometry_method(weight=1.0, momentum=momentum)
        loss = method(outputs(student(inputs)), None, labels)["geometry"]
        loss.backward()
        grads[momentum] = student.weight.grad.clone()
    assert grads[0.0].abs().sum() > 0
    # On a first step c_k = m * b_k.detach() + (1 - m) * b_k: only the (1 - m) share carries gradient.
    assert torch.allclose(grads[0.9], 0.1 * grads[0.0], rtol=1e-4, atol=1e-7)


def test_geometry_bank_is_frozen_in_eval_mode():
    method = geometry_method()
    method.eval()
    method(outputs([[1.0, 0.0]]), None, torch.tensor([0]))
    assert not method.seen.any() and method.bank.abs().sum() == 0


def test_geometry_other_similarities_by_hand():
    method = geometry_method(similarity="dot")
    # Teacher dots: (0,1) -> 0, (0,2) -> 1, (1,2) -> 1. Student (2,0),(0,1),(0,0): dots 0, 0, 0.
    loss = method(outputs([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), None, torch.tensor([0, 1, 2]))
    assert loss["geometry"].item() == pytest.approx(10.0 * (0 + 1 + 1) * 2 / 6)
    method = geometry_method(weight=1.0, similarity="neg_sqdist")
    # Teacher -d^2: (0,1) -> -2, (0,2) -> -1, (1,2) -> -1. Student (1,0),(0,1),(1,1): the same.
    loss = method(outputs([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), None, torch.tensor([0, 1, 2]))
    assert loss["geometry"].item() == pytest.approx(0.0)


def test_combination_sums_terms_and_weights_cross_entropy_once():
    torch.manual_seed(0)
    student, teacher = nn.Linear(2, 3), nn.Linear(2, 3)

    class Net(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return x, self.layer(x)

    args = {"kd": {"alpha": 0.75, "temperature": 2.0}, "geometry": {"weight": 5.0}}
    methods = build_methods("kd+geometry", args, context(centroids=TEACHER_CENTROIDS))
    distiller = Distiller(Net(student), methods, Net(teacher)).train()
    x, labels = torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    logits, terms = distiller(x, labels)
    assert set(terms) == {"ce", "kd", "geometry"}
    assert terms["ce"].item() == pytest.approx(0.25 * nn.functional.cross_entropy(logits, labels).item())
    kd_alone = build_methods("kd", args, context())[0]
    geometry_alone = geometry_method(weight=5.0)
    with torch.no_grad():
        assert terms["kd"].item() == pytest.approx(
            kd_alone(Outputs(x, logits), Outputs(x, teacher(x)), labels)["kd"].item()
        )
        assert terms["geometry"].item() == pytest.approx(
            geometry_alone(Outputs(x, logits), None, labels)["geometry"].item()
        )
    assert not distiller.teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_baseline_holds_no_teacher():
    student = nn.Linear(2, 3)
    distiller = Distiller(student, build_methods("baseline", {}, context()), teacher=nn.Linear(2, 3))
    assert distiller.teacher is None


@pytest.mark.parametrize(
    ("spec", "args", "error", "fragment"),
    [
        ("kd++geometry", {}, ValueError, "has an empty name; join method names with '+'"),
        ("distill", {}, UnknownNameError, "valid methods: baseline"),
        (
            "kd",
            {"kd": {"tau": 2}},
            ValueError,
            "method 'kd' has no argument tau; accepted: temperature, alpha",
        ),
        ("kd", {"kd": {"temperature": 0}}, ValueError, "kd temperature must be a finite number > 0, got 0"),
        ("kd", {"kd": {"alpha": -0.1}}, ValueError, "kd alpha must be a finite number >= 0, got -0.1"),
        ("geometry", {"geometry": {"weight": float("nan")}}, ValueError, "geometry weight must be a finite"),
        ("geometry", {"geometry": {"weight": float("inf")}}, ValueError, "got inf"),
        (
            "geometry",
            {"geometry": {"momentum": 1.0}},
            ValueError,
            "geometry momentum must be in [0, 1), got 1.0",
        ),
        ("geometry", {"geometry": {"momentum": -0.5}}, ValueError, "got -0.5"),
        ("geometry", {"geometry": {"similarity": "l2"}}, ValueError, "one of cosine, dot, neg_sqdist"),
        ("feature", {"feature": {"beta": -1}}, ValueError, "feature beta must be a finite number >= 0"),
        ("kd+kd", {}, ValueError, "names a method twice"),
    ],
)
def test_bad_method_input_is_refused(spec, args, error, fragment):
    with pytest.raises(error) as raised:
        build_methods(spec, args, context(centroids=TEACHER_CENTROIDS))
    assert fragment in str(raised.value)


def test_geometry_needs_teacher_centroids():
    with pytest.raises(ValueError, match="needs the teacher's class centroids"):
        build_methods("geometry", {}, context(centroids=None))
    with pytest.raises(ValueError, match="cover 3 classes, but the dataset has 5"):
        build_methods("geometry", {}, context(num_classes=5, centroids=TEACHER_CENTROIDS))


def test_every_method_names_its_source():
    for name in METHODS:
        module = __import__(METHODS.get(name).__module__, fromlist=["_"])
        assert module.__doc__ and module.__doc__.startswith(f"{name}:"), name


# ----------------------------------------------------------------------------- comparison arms


def test_rkd_is_blind_to_scale_and_matches_a_hand_value():
    (rkd,) = build_methods("rkd", {"rkd": {"distance_weight": 1.0, "angle_weight": 1.0}}, context())
    teacher = outputs([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    scaled = outputs([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    terms = rkd(scaled, teacher, torch.tensor([0, 1, 2]))
    assert terms["rkd_distance"].item() == pytest.approx(0.0, abs=1e-7)
    assert terms["rkd_angle"].item() == pytest.approx(0.0, abs=1e-7)

    # Student (0,0), (1,0), (0,2). Distances over the 6 ordered pairs:
    # teacher 1, 1, sqrt2 (mean (2 + sqrt2)/3), student 1, 2, sqrt5 (mean (3 + sqrt5)/3).
    mt, ms = (2 + math.sqrt(2)) / 3, (3 + math.sqrt(5)) / 3
    diffs = [1 / ms - 1 / mt, 2 / ms - 1 / mt, math.sqrt(5) / ms - math.sqrt(2) / mt]
    distance = sum(2 * 0.5 * d * d for d in diffs) / 9  # smooth L1 below 1, mean over the 3x3 matrix
    # Angles at each vertex (cosines); the only nonzero triplets are (i, j, k) with i, k != j.
    # Teacher: at 0: 0; at 1: cos 45 deg; at 2: cos 45 deg. Student: at 0: 0; at 1: 1/sqrt5; at 2: 2/sqrt5.
    angle_diffs = [0.0, 1 / math.sqrt(5) - SQRT_HALF, 2 / math.sqrt(5) - SQRT_HALF]
    # each vertex j has 2 off-diagonal (i, k) entries with the angle, 2 diagonal entries equal to 1 in both
    angle = sum(2 * 0.5 * d * d for d in angle_diffs) / 27
    terms = rkd(outputs([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), teacher, torch.tensor([0, 1, 2]))
    assert terms["rkd_distance"].item() == pytest.approx(distance, rel=1e-5)
    assert terms["rkd_angle"].item() == pytest.approx(angle, rel=1e-5)


def test_sp_by_hand():
    (sp,) = build_methods("sp", {"sp": {"weight": 1.0}}, context())
    # Teacher rows (1,0), (1,1): G = [[1,1],[1,2]], normalised rows [1,1]/sqrt2, [1,2]/sqrt5.
    # Student rows (1,0), (0,1): G = I.
    teacher, student = outputs([[1.0, 0.0], [1.0, 1.0]]), outputs([[1.0, 0.0], [0.0, 1.0]])
    squared = (1 - SQRT_HALF) ** 2 + SQRT_HALF**2 + (1 / math.sqrt(5)) ** 2 + (1 - 2 / math.sqrt(5)) ** 2
    assert sp(student, teacher, torch.tensor([0, 1]))["sp"].item() == pytest.approx(squared / 4, rel=1e-5)


def test_cc_by_hand():
    (cc,) = build_methods("cc", {"cc": {"weight": 1.0, "gamma": 0.5, "order": 1}}, context())
    # gamma 0.5, order 1: k(x, y) = exp(-1) (1 + x.y) on unit vectors.
    # Teacher: orthogonal pair, off-diagonal 1/e; student: the same direction, off-diagonal 2/e.
    # Diagonals are 2/e in both. Loss = 2 (1/e)^2 / 4.
    teacher, student = outputs([[1.0, 0.0], [0.0, 3.0]]), outputs([[1.0, 1.0], [2.0, 2.0]])
    expected = 2 * math.exp(-2) / 4
    assert cc(student, teacher, torch.tensor([0, 1]))["cc"].item() == pytest.approx(expected, rel=1e-5)


def test_dkd_by_hand():
    args = {"dkd": {"alpha": 1.0, "beta": 8.0, "temperature": 1.0, "warmup": 0}}
    (dkd,) = build_methods("dkd", args, context())
    student = outputs([[0, 0]], [[0.0, 0.0, 0.0]])  # uniform: 1/3 each
    # Teacher (0, ln3, 0): p = (1/5, 3/5, 1/5). Label 0.
    # TCKD: b_t = (1/5, 4/5) against b_s = (1/3, 2/3).
    # NCKD: non-target t = (3/4, 1/4) against s = (1/2, 1/2).
    teacher = outputs([[0, 0]], [[0.0, math.log(3), 0.0]])
    terms = dkd(student, teacher, torch.tensor([0]))
    tckd = 0.2 * math.log(0.2 / (1 / 3)) + 0.8 * math.log(0.8 / (2 / 3))
    nckd = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert terms["dkd_tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert terms["dkd_nckd"].item() == pytest.approx(8.0 * nckd, rel=1e-5)

    (dkd,) = build_methods("dkd", {"dkd": {"temperature": 1.0, "warmup": 4}}, context())
    dkd.set_epoch(0)  # the first of four warm-up epochs: a quarter of the weight
    assert dkd(student, teacher, torch.tensor([0]))["dkd_tckd"].item() == pytest.approx(tckd / 4, rel=1e-5)
    dkd.set_epoch(10)
    assert dkd(student, teacher, torch.tensor([0]))["dkd_tckd"].item() == pytest.approx(tckd, rel=1e-5)
