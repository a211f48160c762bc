"""Datasets: the real readers over small files in the official formats, and the real CIFAR-10 JPEGs."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from gkd_lib import config, datasets
from gkd_lib.datasets import DataNotFoundError, load_dataset
from gkd_lib.registry import UnknownNameError


def test_cifar100_reads_official_pickles(cifar100_root):
    root, train_x, train_y, test_x, test_y, names = cifar100_root
    data = load_dataset("cifar100", root)
    assert data.train_images.dtype == torch.uint8
    assert tuple(data.train_images.shape) == (300, 3, 32, 32)
    assert np.array_equal(data.train_images.numpy(), train_x)
    assert np.array_equal(data.test_images.numpy(), test_x)
    assert data.train_labels.tolist() == train_y.tolist()
    assert data.test_labels.tolist() == test_y.tolist()
    assert data.classes == tuple(names) and data.num_classes == 100
    expected_mean = train_x.astype(np.float64).mean(axis=(0, 2, 3)) / 255
    assert np.allclose(data.mean, expected_mean, atol=1e-4)
    expected_std = (train_x.astype(np.float64) / 255).transpose(1, 0, 2, 3).reshape(3, -1).std(1, ddof=1)
    assert np.allclose(data.std, expected_std, atol=1e-4)


def test_cifar10_reads_official_batches(cifar10_root):
    root, train_x, train_y, test_x, test_y, names = cifar10_root
    data = load_dataset("cifar10", root)
    assert np.array_equal(data.train_images.numpy(), train_x)
    assert data.train_labels.tolist() == train_y.tolist()
    assert np.array_equal(data.test_images.numpy(), test_x)
    assert data.classes == tuple(names)


def test_validation_split_is_stratified_seeded_and_held_out(cifar100_root):
    root, train_x, *_ = cifar100_root
    first = load_dataset("cifar100", root, val_fraction=1 / 3, seed=5)
    again = load_dataset("cifar100", root, val_fraction=1 / 3, seed=5)
    other = load_dataset("cifar100", root, val_fraction=1 / 3, seed=6)
    assert len(first.val_labels) == 100 and len(first.train_labels) == 200
    # stratified: each of the 100 classes gives exactly one of its three images
    assert sorted(first.val_labels.tolist()) == list(range(100))
    assert torch.equal(first.val_images, again.val_images)
    assert not torch.equal(first.val_images, other.val_images)
    # held out: no validation image is also a training image, and together they are the train set
    joined = torch.cat([first.train_images, first.val_images]).flatten(1)
    assert len({bytes(row.numpy()) for row in joined}) == 300
    assert {bytes(row) for row in train_x.reshape(300, -1)} == {bytes(row.numpy()) for row in joined}


def test_missing_cifar_names_path_and_remedies(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_dataset("cifar100", tmp_path / "nowhere")
    message = str(error.value)
    assert str((tmp_path / "nowhere" / "cifar-100-python").resolve()) in message
    assert "download=True" in message and "GKD_DATA_ROOT" in message and "data_root" in message


def test_data_root_from_environment(cifar10_root, monkeypatch):
    root, train_x, *_ = cifar10_root
    monkeypatch.setenv("GKD_DATA_ROOT", str(root))
    assert np.array_equal(load_dataset("cifar10").train_images.numpy(), train_x)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid datasets: cifar10, cifar100, digits, fashion_mnist"):
        load_dataset("cifar1000")


def test_digits_is_a_fixed_stratified_split():
    data = load_dataset("digits")
    assert (len(data.train_labels), len(data.test_labels)) == (1437, 360)
    assert tuple(data.train_images.shape[1:]) == (1, 8, 8)
    assert data.train_images.max() == 255 and data.crop_padding == 1 and not data.flip
    from sklearn.datasets import load_digits

    totals = np.bincount(load_digits().target)
    assert np.all(np.abs(torch.bincount(data.test_labels).numpy() - 0.2 * totals) <= 1)
    assert torch.equal(load_dataset("digits").test_images, data.test_images)


def test_subsets_are_stratified(cifar100_root):
    root, *_ = cifar100_root
    data = load_dataset("cifar100", root, train_subset=200)
    assert torch.bincount(data.train_labels, minlength=100).tolist() == [2] * 100
    digits = load_dataset("digits", test_subset=100)
    assert torch.bincount(digits.test_labels).tolist() == [10] * 10


def test_image_folder_decodes_once_into_the_cache(image_folder, monkeypatch, tmp_path):
    root, written = image_folder
    data = load_dataset("imagefolder", root)
    assert data.classes == ("ant", "bee", "cat")
    assert len(data.train_labels) == 12 and len(data.test_labels) == 6
    # ImageFolder order: classes sorted, files sorted within a class
    expected = np.stack([written["train"][(name, k)] for name in ("ant", "bee", "cat") for k in range(4)])
    assert np.array_equal(data.train_images.permute(0, 2, 3, 1).numpy(), expected)
    assert data.train_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4

    cached = list(datasets.cache_dir().glob("imagefolder-*.npz"))
    assert len(cached) == 1 and not list(root.rglob("*.npz"))

    def must_not_decode(*args, **kwargs):
        raise AssertionError("the second load decoded the images again")

    monkeypatch.setattr(datasets, "_decode", must_not_decode)
    again = load_dataset("imagefolder", root)
    assert torch.equal(again.train_images, data.train_images)


def test_image_folder_cache_follows_file_changes(image_folder):
    from PIL import Image

    root, _ = image_folder
    load_dataset("imagefolder", root)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "train" / "ant" / "9.png")
    data = load_dataset("imagefolder", root)
    assert len(data.train_labels) == 13
    assert len(list(datasets.cache_dir().glob("imagefolder-*.npz"))) == 2


def test_image_folder_without_splits_is_refused(tmp_path):
    (tmp_path / "only" / "train").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="train/ and test/ subfolders .*; test/ is missing"):
        load_dataset("imagefolder", tmp_path / "only")
    with pytest.raises(DataNotFoundError, match="test/ is missing"):
        datasets.describe("imagefolder", tmp_path / "only")


def test_describe_counts_what_the_loader_reads(image_folder):
    root, _ = image_folder
    (root / "train" / "ant" / ".DS_Store").write_bytes(b"not an image")
    (root / "train" / "notes.txt").write_text("a stray file beside the class folders")
    data = load_dataset("imagefolder", root)
    # 3 classes, RGB, 8x8 images, 4 train and 2 test images per class: the fixture's files only
    assert datasets.describe("imagefolder", root) == (3, 3, 8, 12, 6)
    assert (len(data.train_labels), len(data.test_labels)) == (12, 6)


def test_an_empty_class_folder_is_named(image_folder):
    root, _ = image_folder
    (root / "train" / "dog").mkdir()
    (root / "test" / "dog").mkdir()
    for read in (datasets.describe, load_dataset, datasets.check_present):
        with pytest.raises(
            DataNotFoundError, match=f"image folder {root}: Found no valid file for the classes dog"
        ):
            read("imagefolder", root)


@pytest.mark.skipif(
    not datasets.FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed (/usr/share/datasets/fashion-mnist)",
)
def test_fashion_mnist_from_the_debian_package(tmp_path):
    data = load_dataset("fashion_mnist", tmp_path)
    assert (len(data.train_labels), len(data.test_labels)) == (60000, 10000)
    assert tuple(data.train_images.shape[1:]) == (1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert data.classes[0] == "T-shirt/top"


CIFAR10_JPEG = SHARED_DATA / "cifar10-jpeg"


@pytest.mark.skipif(not CIFAR10_JPEG.is_dir(), reason=f"the real CIFAR-10 JPEGs are not at {CIFAR10_JPEG}")
def test_real_cifar10_jpeg_folder():
    data = load_dataset("imagefolder", CIFAR10_JPEG)
    assert (len(data.train_labels), len(data.test_labels)) == (50000, 10000)
    assert data.classes == (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    assert torch.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.allclose(data.mean, (0.491, 0.482, 0.447), atol=0.002)
    started = time.perf_counter()
    again = load_dataset("imagefolder", CIFAR10_JPEG)
    print(f"second load of the CIFAR-10 JPEG folder: {time.perf_counter() - started:.2f} s (from the cache)")
    assert torch.equal(again.test_images, data.test_images)


def test_profile_data_root_precedence_and_relative_paths(monkeypatch, tmp_path):
    demo = config.resolve("demo")
    assert demo.resolved_data_root == config.REPO_ROOT / "data"
    monkeypatch.setenv("GKD_DATA_ROOT", "elsewhere/cifar")
    monkeypatch.chdir(tmp_path)  # a relative root means the same folder from any cwd and in the kernels
    assert demo.resolved_data_root == config.REPO_ROOT / "elsewhere" / "cifar"
    assert demo.replace(data_root=str(tmp_path)).resolved_data_root == tmp_path
