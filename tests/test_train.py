"""The training loop on digits: accuracy, every method, determinism, the run folder."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from gkd_lib import config, train
from gkd_lib.augment import random_crop_flip
from gkd_lib.methods import METHODS

TIMING = {"images_per_s", "epoch_time_s", "elapsed_s"}


@pytest.fixture(scope="module")
def digits_cfg(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return config.resolve(
        "demo",
        runs_dir=str(runs),
        figures_dir=str(runs / "figures"),
        teacher="resnet20",
        teacher_width=1.0,
        teacher_epochs=8,
        student="resnet8",
        student_width=0.5,
        epochs=4,
    )


@pytest.fixture(scope="module")
def teacher_summary(digits_cfg):
    return train.train_teacher(digits_cfg, progress=False)


def rows(folder):
    with open(folder / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle]


def test_teacher_reaches_90_percent_on_digits(teacher_summary, digits_cfg):
    print(
        f"digits teacher: {teacher_summary['wall_time_s']:.1f} s for {teacher_summary['epochs']} epochs, "
        f"test {100 * teacher_summary['test_acc_at_best_val']:.1f}%"
    )
    assert teacher_summary["test_acc_at_best_val"] >= 0.90
    folder = digits_cfg.teacher_dir
    centroids = torch.load(folder / "centroids.pt", weights_only=True)["centroids"]
    assert centroids.shape == (10, 64)


def test_run_folder_holds_everything(teacher_summary, digits_cfg):
    folder = digits_cfg.teacher_dir
    for name in (
        "config.json",
        "environment.json",
        "metrics.jsonl",
        "metrics.csv",
        "last.pt",
        "best.pt",
        "centroids.pt",
        "summary.json",
    ):
        assert (folder / name).is_file(), name
    environment = json.loads((folder / "environment.json").read_text())
    assert environment["torch_build"] == torch.__version__
    assert torch.__version__.startswith(environment["packages"]["torch"])
    assert environment["device"] == "cpu" and "git_commit" in environment
    epochs = rows(folder)
    assert [row["epoch"] for row in epochs] == list(range(1, 9))
    for key in ("loss", "ce", "train_acc", "val_acc", "test_acc", "lr", "images_per_s", "epoch_time_s"):
        assert all(math.isfinite(row[key]) for row in epochs), key
    header = (folder / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["epoch", "loss", "ce"]
    best = max(epochs, key=lambda row: row["val_acc"])  # the first epoch with the best validation
    assert teacher_summary["best_val_epoch"] == best["epoch"]
    assert teacher_summary["test_acc_at_best_val"] == best["test_acc"]
    assert teacher_summary["test_acc_last"] == epochs[-1]["test_acc"]
    assert teacher_summary["best_test_acc_during_training_paper_comparable"] == max(
        r["test_acc"] for r in epochs
    )


@pytest.mark.parametrize("method", [*METHODS.names(), "kd+geometry"])
def test_every_method_lowers_its_loss_and_beats_chance(teacher_summary, digits_cfg, method):
    summary = train.train_student(digits_cfg, method, seed=0, progress=False)
    epochs = rows(digits_cfg.student_dir(method, 0))
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert summary["test_acc_at_best_val"] > 0.5  # chance is 0.1
    for name in method.split("+"):  # each method's terms are logged under its name (dkd_tckd, ...)
        assert name == "baseline" or any(key.split("_")[0] == name for key in epochs[0])


def test_same_seed_gives_identical_metrics(teacher_summary, digits_cfg, tmp_path):
    cfg = digits_cfg.replace(epochs=2)
    results = []
    for attempt in ("a", "b"):
        run_cfg = cfg.replace(runs_dir=str(tmp_path / attempt))
        shutil.copytree(digits_cfg.teacher_dir, run_cfg.teacher_dir)
        train.train_student(run_cfg, "kd+geometry", seed=3, progress=False)
        results.append(
            [
                {k: v for k, v in row.items() if k not in TIMING}
                for row in rows(run_cfg.student_dir("kd+geometry", 3))
            ]
        )
    assert results[0] == results[1]
    other = cfg.replace(runs_dir=str(tmp_path / "a"))
    train.train_student(other, "kd+geometry", seed=4, progress=False)
    changed = [
        {k: v for k, v in row.items() if k not in TIMING} for row in rows(other.student_dir("kd+geometry", 4))
    ]
    assert changed != results[0]


def test_finished_run_is_not_retrained(teacher_summary, digits_cfg):
    again = train.train_teacher(digits_cfg, progress=False)
    assert again == teacher_summary


def test_cosine_schedule_with_warmup_by_hand():
    cfg = config.Config(warmup_epochs=1, schedule="cosine")
    factor = train.lr_factor(cfg, epochs=3, steps_per_epoch=4)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # after warm-up: 8 cosine steps from 1 down towards 0
    assert factor(4) == pytest.approx(1.0)
    assert factor(8) == pytest.approx(0.5)
    assert factor(11) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_step_schedule_by_hand():
    cfg = config.Config(warmup_epochs=0, schedule="step", milestones=(2, 3), gamma=0.1)
    factor = train.lr_factor(cfg, epochs=4, steps_per_epoch=10)
    assert [factor(s) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_random_crop_flip_keeps_pixels_of_the_padded_image():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    generator = torch.Generator().manual_seed(0)
    out = random_crop_flip(images, padding=1, flip=True, generator=generator)
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    for n in range(2):
        crops = [padded[n, :, y : y + 4, x : x + 4] for y in range(3) for x in range(3)]
        candidates = crops + [c.flip(2) for c in crops]
        assert any(torch.equal(out[n], c) for c in candidates)
    assert torch.equal(random_crop_flip(images, 0, False, generator), images)


def test_all_registered_methods_are_known():
    assert {"baseline", "kd", "feature", "geometry"} <= set(METHODS.names())


def test_deferred_non_finite_check_names_the_first_bad_step():
    # The GPU path keeps the first bad step on the device; exercised here on the CPU.
    watch = train.NonFiniteWatch(torch.device("cpu"))
    watch.on_host = False
    names = ["loss", "ce", "kd"]
    watch.check(torch.tensor([1.0, 0.5, 0.5]), 0, "1/3", names)
    watch.check(torch.tensor([float("inf"), 0.5, float("inf")]), 0, "2/3", names)
    watch.check(torch.tensor([float("nan"), float("nan"), 0.5]), 0, "3/3", names)
    with pytest.raises(train.NonFiniteLossError, match=r"epoch 1, step 2/3: loss = inf, ce = 0.5, kd = inf"):
        watch.raise_if_seen(0)
    healthy = train.NonFiniteWatch(torch.device("cpu"))
    healthy.on_host = False
    healthy.check(torch.tensor([1.0]), 0, "1/1", ["loss"])
    healthy.raise_if_seen(0)
