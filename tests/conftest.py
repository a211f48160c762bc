"""Shared fixtures: small datasets written in the official formats, an isolated cache."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GKD_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decode cache and no ambient data root."""
    monkeypatch.setenv("GKD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("GKD_DATA_ROOT", raising=False)


def _images(rng, n):
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)


def _dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


@pytest.fixture
def cifar100_root(tmp_path):
    """cifar-100-python/{train,test,meta} as the official pickles, 3 train and 1 test image per class."""
    rng = np.random.default_rng(100)
    root = tmp_path / "cifar100"
    train_x, test_x = _images(rng, 300), _images(rng, 100)
    train_y, test_y = [k % 100 for k in range(300)], list(range(100))
    names = [f"class_{k:02d}" for k in range(100)]
    folder = root / "cifar-100-python"
    for split, images, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
        batch = {"data": images.reshape(len(labels), -1), "fine_labels": labels, "filenames": []}
        _dump(folder / split, {**batch, "coarse_labels": [k // 5 for k in labels], "batch_label": ""})
    _dump(folder / "meta", {"fine_label_names": names, "coarse_label_names": [str(k) for k in range(20)]})
    return root, train_x, np.array(train_y), test_x, np.array(test_y), names


@pytest.fixture
def cifar10_root(tmp_path):
    """cifar-10-batches-py/ with five training batches of 4 images, a test batch and batches.meta."""
    rng = np.random.default_rng(10)
    root = tmp_path / "cifar10"
    folder = root / "cifar-10-batches-py"
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train_x, train_y = [], []
    for batch in range(1, 6):
        x, y = _images(rng, 4), [(batch * 4 + k) % 10 for k in range(4)]
        _dump(folder / f"data_batch_{batch}", {"data": x.reshape(4, -1), "labels": y})
        train_x.append(x)
        train_y += y
    test_x, test_y = _images(rng, 10), list(range(10))
    _dump(folder / "test_batch", {"data": test_x.reshape(10, -1), "labels": test_y})
    _dump(folder / "batches.meta", {"label_names": names})
    return root, np.concatenate(train_x), np.array(train_y), test_x, np.array(test_y), names


@pytest.fixture
def image_folder(tmp_path):
    """train/ and test/ folders of lossless 8x8 PNGs for three classes."""
    from PIL import Image

    rng = np.random.default_rng(3)
    root = tmp_path / "folder"
    classes = ["cat", "ant", "bee"]  # sorted order: ant, bee, cat
    written = {"train": {}, "test": {}}
    for split, count in (("train", 4), ("test", 2)):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for k in range(count):
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{k}.png")
                written[split][(name, k)] = pixels
    return root, written


@pytest.fixture(scope="session")
def cifar10_jpeg_layout(tmp_path_factory):
    """A stand-in for ../shared/data/cifar10-jpeg with its layout and image counts (10 classes,
    5,000 train and 1,000 test images each), every file a link to one real 32x32 PNG: enough for
    a dry run, which counts the files and opens one of them."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cifar10-jpeg-layout")
    image = root / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, count in (("train", 5000), ("test", 1000)):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                os.link(image, folder / f"{k:04d}.png")
    return root
