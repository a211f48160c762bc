"""The benchmark runs end to end for a few steps (its figures are not asserted: machines are noisy)."""

from __future__ import annotations

import math

from gkd_lib import bench


def test_benchmark_runs_a_few_steps(capsys):
    result = bench.run_benchmark(
        bench.build_parser().parse_args(
            [
                "--model",
                "resnet8",
                "--width",
                "0.5",
                "--teacher",
                "resnet8",
                "--method",
                "kd+geometry",
                "--batch-size",
                "16",
                "--classes",
                "10",
                "--images",
                "256",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--repeats",
                "2",
                "--workers",
                "0",
            ]
        )
    )
    printed = capsys.readouterr().out
    assert set(result["images_per_s"]) == {"project", "reference"}
    assert all(v > 0 and math.isfinite(v) for v in result["images_per_s"].values())
    assert len(result["repeats"]["project"]) == 2
    assert result["ratio"] == result["images_per_s"]["project"] / result["images_per_s"]["reference"]
    assert set(result["shares"]) == {"teacher forward", "kd", "geometry"}
    assert all(0 < share for share in result["shares"].values())
    assert "ratio project / reference:" in printed and "geometry" in printed


def test_synthetic_cifar_loads_through_the_real_reader(tmp_path):
    from gkd_lib.datasets import load_dataset

    name = bench.write_synthetic_cifar(tmp_path, images=300, classes=100)
    data = load_dataset(name, tmp_path)
    assert name == "cifar100" and len(data.train_labels) == 300 and data.num_classes == 100


def test_fewer_images_than_a_batch_is_refused(capsys):
    import pytest

    args = bench.build_parser().parse_args(
        ["--model", "resnet8", "--classes", "10", "--images", "10", "--batch-size", "32", "--workers", "0"]
    )
    with pytest.raises(ValueError, match="at least one full batch: 10 training images for --batch-size 32"):
        bench.run_benchmark(args)
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--batch-size", "0"])
    assert "must be a whole number >= 1, got 0" in capsys.readouterr().err
