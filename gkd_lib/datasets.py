"""Image datasets as uint8 tensors, registered by name.

Every loader returns an `ImageData`: train and test images as uint8 tensors of
shape (N, C, H, W), integer labels, class names and the per-channel mean and
std of the training images. The readers are torchvision's (CIFAR, Fashion-MNIST,
ImageFolder) and scikit-learn's (digits); this module only turns what they read
into tensors once, so that training can keep the whole set on its device.

The data root comes from the `root` argument, else the environment variable
GKD_DATA_ROOT, else ./data. Nothing is downloaded unless `download=True`.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from gkd_lib.registry import Registry
from gkd_lib.runs import bars_disabled

DATASETS: Registry = Registry("dataset")

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataNotFoundError(FileNotFoundError):
    """The files of a dataset are not where the loader looked."""


@dataclass(frozen=True)
class ImageData:
    """A dataset held as tensors: images are uint8 (N, C, H, W), labels int64 (N,)."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # random-crop padding used by training augmentation
    flip: bool  # whether a horizontal flip is a valid augmentation
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"ImageData({self.summary()})"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[-1])

    def summary(self) -> str:
        val = 0 if self.val_labels is None else len(self.val_labels)
        return (
            f"{self.name}: {len(self.train_labels)} train, {val} validation, "
            f"{len(self.test_labels)} test images of {self.in_channels}x{self.image_size}x"
            f"{self.image_size}, {self.num_classes} classes"
        )


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """The data root: the argument, else $GKD_DATA_ROOT, else ./data."""
    if root is None:
        root = os.environ.get("GKD_DATA_ROOT", "data")
    return Path(root).expanduser()


def cache_dir() -> Path:
    """Where decoded image folders are cached: $GKD_CACHE_DIR, else the user cache."""
    if "GKD_CACHE_DIR" in os.environ:
        return Path(os.environ["GKD_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gkd"


SHAPES = {  # classes, channels, image size, train and test images: what a dry run needs without the data
    "cifar100": (100, 3, 32, 50000, 10000),
    "cifar10": (10, 3, 32, 50000, 10000),
    "fashion_mnist": (10, 1, 28, 60000, 10000),
    "digits": (10, 1, 8, 1437, 360),
}
OFFICIAL_FOLDERS = {
    "cifar100": "cifar-100-python",
    "cifar10": "cifar-10-batches-py",
    "fashion_mnist": "FashionMNIST/raw",
}


def describe(name: str, root: str | os.PathLike | None = None) -> tuple[int, int, int, int, int]:
    """(classes, channels, image size, train images, test images), decoding one image at most."""
    DATASETS.get(name)
    if name in SHAPES:
        return SHAPES[name]
    train, test = _image_folders(resolve_data_root(root))
    with Image.open(train.samples[0][0]) as image:
        size = image.size[0]
    return len(train.classes), 3, size, len(train.samples), len(test.samples)


def data_present(name: str, root: str | os.PathLike | None = None) -> bool:
    """Whether a dataset's files are where a real run will look (digits always are)."""
    if name == "digits":
        return True
    root = resolve_data_root(root)
    if name == "imagefolder":
        return (root / "train").is_dir() and (root / "test").is_dir()
    if name == "fashion_mnist" and FASHION_MNIST_SYSTEM_DIR.is_dir():
        return True
    return (root / OFFICIAL_FOLDERS[name]).is_dir()


def check_present(name: str, root: str | os.PathLike | None = None) -> None:
    """Raise now, decoding nothing, the error the loader would raise for a dataset's missing files."""
    root = resolve_data_root(root)
    if name == "imagefolder":
        _image_folders(root)
    elif not data_present(name, root):
        raise _missing(name, root / OFFICIAL_FOLDERS[name], downloadable=True)


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    download: bool = False,
    val_fraction: float = 0.0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Load a registered dataset, optionally shrink it, and hold out a validation split.

    `train_subset` and `test_subset` keep that many images, stratified by class and
    seeded, for quick CPU profiles. `val_fraction` moves a stratified, seeded share of
    the (possibly shrunk) training images into a validation split.
    """
    loader = DATASETS.get(name)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    data = loader(resolve_data_root(root), download=download)
    if train_subset is not None:
        images, labels = _stratified_subset(
            data.train_images, data.train_labels, train_subset, seed, "train_subset"
        )
        data = replace(data, train_images=images, train_labels=labels)
    if test_subset is not None:
        images, labels = _stratified_subset(
            data.test_images, data.test_labels, test_subset, seed, "test_subset"
        )
        data = replace(data, test_images=images, test_labels=labels)
    if val_fraction > 0:
        data = _hold_out_validation(data, val_fraction, seed)
    return data


def check_subset(name: str, size, total: int, classes: int) -> None:
    """A stratified subset needs one image per class on each side of the split, or all the images."""
    if (
        isinstance(size, bool)
        or not isinstance(size, int)
        or not (classes <= size <= total - classes or size == total)
    ):
        raise ValueError(
            f"{name} must be a whole number from {classes} (one image per class) to {total - classes}, "
            f"or {total} (all the images); got {size!r}"
        )


def check_validation_split(fraction: float, images: int, classes: int) -> None:
    """Both sides of the validation split need at least one image per class."""
    held_out = int(np.ceil(fraction * images))
    if held_out < classes or images - held_out < classes:
        raise ValueError(
            f"a validation split of {fraction:g} of {images} training images gives {held_out} "
            f"validation and {images - held_out} training images; each needs at least one per class "
            f"({classes}): use more training images (train_subset) or another val_fraction"
        )


def _stratified_subset(images, labels, size: int, seed: int, name: str):
    check_subset(name, size, len(labels), len(torch.unique(labels)))
    if size == len(labels):
        return images, labels
    keep, _ = train_test_split(
        np.arange(len(labels)), train_size=size, stratify=labels.numpy(), random_state=seed
    )
    keep = torch.from_numpy(np.sort(keep))
    return images[keep], labels[keep]


def _hold_out_validation(data: ImageData, fraction: float, seed: int) -> ImageData:
    labels = data.train_labels.numpy()
    check_validation_split(fraction, len(labels), data.num_classes)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=seed
    )
    train_idx, val_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(val_idx))
    return replace(
        data,
        train_images=data.train_images[train_idx],
        train_labels=data.train_labels[train_idx],
        val_images=data.train_images[val_idx],
        val_labels=data.train_labels[val_idx],
    )


def _make(name, train_x, train_y, test_x, test_y, classes, *, crop_padding, flip) -> ImageData:
    """Build an ImageData from (N, H, W[, C]) uint8 arrays and integer labels."""
    train_images, test_images = _to_nchw(train_x), _to_nchw(test_x)
    pixels = train_images.float().div_(255).transpose(0, 1).flatten(1)
    return ImageData(
        name=name,
        train_images=train_images,
        train_labels=torch.as_tensor(np.asarray(train_y), dtype=torch.int64),
        test_images=test_images,
        test_labels=torch.as_tensor(np.asarray(test_y), dtype=torch.int64),
        classes=tuple(classes),
        mean=tuple(round(v, 4) for v in pixels.mean(1).tolist()),
        std=tuple(round(v, 4) for v in pixels.std(1).tolist()),
        crop_padding=crop_padding,
        flip=flip,
    )


def _to_nchw(array) -> torch.Tensor:
    tensor = torch.as_tensor(np.ascontiguousarray(array), dtype=torch.uint8)
    if tensor.ndim == 3:
        tensor = tensor.unsqueeze(-1)
    return tensor.permute(0, 3, 1, 2).contiguous()


def _missing(name: str, looked_at: Path, *, downloadable: bool, extra: str = "") -> DataNotFoundError:
    ways = [
        "pass the folder that holds it as data_root (--data-root PATH, or DATA_ROOT=PATH for make)",
        "or set the environment variable GKD_DATA_ROOT",
    ]
    if downloadable:
        ways.insert(0, "download it with download=True (--download) where a network exists")
    return DataNotFoundError(
        f"{name} not found: looked at {looked_at.resolve()}. {extra}To provide it: " + "; ".join(ways)
    )


@DATASETS.register("cifar100")
def _cifar100(root: Path, download: bool = False) -> ImageData:
    from torchvision.datasets import CIFAR100

    return _cifar(CIFAR100, "cifar100", "cifar-100-python", root, download)


@DATASETS.register("cifar10")
def _cifar10(root: Path, download: bool = False) -> ImageData:
    from torchvision.datasets import CIFAR10

    return _cifar(CIFAR10, "cifar10", "cifar-10-batches-py", root, download)


def _cifar(reader, name: str, folder: str, root: Path, download: bool) -> ImageData:
    if not download:
        reader = _without_checksums(reader)
    try:
        train = reader(str(root), train=True, download=download)
        test = reader(str(root), train=False, download=download)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise _missing(name, root / folder, downloadable=True, extra=f"({error}) ") from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise DataNotFoundError(
            f"{name} files under {root / folder} are unreadable ({type(error).__name__}: {error}); "
            "replace them with the official ones (or download=True)"
        ) from None
    return _make(
        name,
        train.data,
        train.targets,
        test.data,
        test.targets,
        train.classes,
        crop_padding=4,
        flip=True,
    )


def _without_checksums(reader):
    """torchvision's reader, checking that the official files exist but not their md5.

    torchvision verifies md5 sums when it downloads; files put in place by hand (or
    the small files in the official format that the tests write) are read as they are.
    """
    return type(
        reader.__name__,
        (reader,),
        {
            "train_list": [[name, None] for name, _ in reader.train_list],
            "test_list": [[name, None] for name, _ in reader.test_list],
            "meta": {**reader.meta, "md5": None},
        },
    )


@DATASETS.register("fashion_mnist")
def _fashion_mnist(root: Path, download: bool = False) -> ImageData:
    from torchvision.datasets import FashionMNIST

    if download or (root / "FashionMNIST" / "raw").is_dir():
        try:
            train = FashionMNIST(str(root), train=True, download=download)
            test = FashionMNIST(str(root), train=False, download=download)
        except RuntimeError as error:
            raise _missing(
                "fashion_mnist", root / "FashionMNIST", downloadable=True, extra=f"({error}) "
            ) from None
        return _make(
            "fashion_mnist",
            train.data.numpy(),
            train.targets,
            test.data.numpy(),
            test.targets,
            train.classes,
            crop_padding=2,
            flip=True,
        )
    if FASHION_MNIST_SYSTEM_DIR.is_dir():
        return _fashion_mnist_from_idx(FASHION_MNIST_SYSTEM_DIR, FashionMNIST.classes)
    raise _missing(
        "fashion_mnist",
        root / "FashionMNIST" / "raw",
        downloadable=True,
        extra=f"Nor is Debian's dataset-fashion-mnist installed ({FASHION_MNIST_SYSTEM_DIR}). ",
    )


def _fashion_mnist_from_idx(folder: Path, classes) -> ImageData:
    """Read the original IDX files (gzipped or not), as Debian's package ships them."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    with tempfile.TemporaryDirectory() as tmp:

        def read(stem: str, reader):
            path = folder / stem
            if not path.exists():
                gz = folder / f"{stem}.gz"
                path = Path(tmp) / stem
                with gzip.open(gz, "rb") as src, open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            return reader(str(path))

        train_x = read("train-images-idx3-ubyte", read_image_file)
        train_y = read("train-labels-idx1-ubyte", read_label_file)
        test_x = read("t10k-images-idx3-ubyte", read_image_file)
        test_y = read("t10k-labels-idx1-ubyte", read_label_file)
    return _make(
        "fashion_mnist", train_x.numpy(), train_y, test_x.numpy(), test_y, classes, crop_padding=2, flip=True
    )


@DATASETS.register("digits")
def _digits(root: Path | None = None, download: bool = False) -> ImageData:
    """scikit-learn's bundled 8x8 digits, split 80/20 with a fixed seed (no files needed)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    classes = [str(k) for k in range(10)]
    return _make("digits", train_x, train_y, test_x, test_y, classes, crop_padding=1, flip=False)


@DATASETS.register("imagefolder")
def _imagefolder(root: Path, download: bool = False) -> ImageData:
    """A folder with train/ and test/, each holding one folder of images per class.

    The images are decoded once and cached as arrays under `cache_dir()` (never
    inside the data root, which may be read-only), keyed by the folder's path and
    the names, sizes and modification times of its files.
    """
    train, test = _image_folders(root)
    key = _folder_key(root, train.samples + test.samples)
    cached = cache_dir() / f"imagefolder-{key}.npz"
    if cached.exists():
        with np.load(cached) as arrays:
            train_x, train_y, test_x, test_y = (arrays[k] for k in ("train_x", "train_y", "test_x", "test_y"))
    else:
        train_x, train_y = _decode(train, "train")
        test_x, test_y = _decode(test, "test")
        _save_npz_atomic(cached, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    # CIFAR-sized images get CIFAR's augmentation; larger ones a proportional padding.
    padding = max(1, train_x.shape[1] // 8)
    return _make(
        "imagefolder", train_x, train_y, test_x, test_y, train.classes, crop_padding=padding, flip=True
    )


def _image_folders(root: Path):
    """torchvision's ImageFolder over train/ and test/ (it lists the image files, decoding none)."""
    from torchvision.datasets import ImageFolder

    absent = [split + "/" for split in ("train", "test") if not (root / split).is_dir()]
    if absent:
        raise _missing(
            "imagefolder",
            root,
            downloadable=False,
            extra=f"It needs train/ and test/ subfolders with one folder per class; {' and '.join(absent)} "
            f"{'is' if len(absent) == 1 else 'are'} missing. ",
        )
    try:
        train, test = ImageFolder(str(root / "train")), ImageFolder(str(root / "test"))
    except FileNotFoundError as error:  # an empty split, or a class folder without images
        raise DataNotFoundError(f"image folder {root}: {error}") from None
    if train.classes != test.classes:
        raise ValueError(
            f"train/ and test/ of {root} hold different class folders: {train.classes} and {test.classes}"
        )
    return train, test


def _folder_key(root: Path, samples) -> str:
    digest = hashlib.sha1(str(root.resolve()).encode())
    for path, label in samples:
        stat = os.stat(path)
        digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(folder, split: str) -> tuple[np.ndarray, np.ndarray]:
    images, first_shape = [], None
    bar = tqdm(
        folder.samples, desc=f"decoding {split} images", unit="img", leave=False, disable=bars_disabled()
    )
    for path, _ in bar:
        array = np.asarray(folder.loader(path))
        if first_shape is None:
            first_shape = array.shape
        elif array.shape != first_shape:
            raise ValueError(
                f"image {path} has shape {array.shape}, but the first image has {first_shape}; "
                "an image folder must hold images of one size"
            )
        images.append(array)
    return np.stack(images), np.asarray(folder.targets, dtype=np.int64)


def _save_npz_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz.tmp", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)
