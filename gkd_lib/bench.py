"""Benchmark: the project's training loop against a reference loop built the common way.

    python -m gkd_lib.bench --model resnet20 --method baseline --batch-size 128
    python -m gkd_lib.bench --model resnet20 --method geometry --batch-size 64
    python -m gkd_lib.bench --model resnet18 --teacher resnet50 --method kd --batch-size 64 --device cuda

Both loops train the same student (same initial weights) with the same method, batch
size and device on the same images, in the CIFAR-10/100 format:

- project: the images held as uint8 tensors on the device, augmented there in whole
  batches, channels_last, bfloat16 autocast on CUDA, no host synchronisation in a step
  (gkd_lib.augment.TensorBatches and gkd_lib.train.train_step, as in every run);
- reference: torchvision's CIFAR dataset with PIL transforms (RandomCrop with padding,
  RandomHorizontalFlip, ToTensor, Normalize) through a DataLoader with worker
  processes, default memory format, float32, the teacher run per batch, and the loss
  read with .item() each step for logging, as most distillation code does.

The two loops alternate, `--repeats` times each; warm-up steps (and, on CUDA,
compilation) are excluded; the figure of each loop is the median over its repeats.
The benchmark also times, on one batch, the teacher's forward pass and each
distillation term (forward and backward through the term alone) as a share of a
project step.
"""

from __future__ import annotations

import argparse
import copy
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gkd_lib.augment import TensorBatches
from gkd_lib.datasets import load_dataset
from gkd_lib.distiller import Distiller
from gkd_lib.methods import MethodContext, Outputs, build_methods
from gkd_lib.models import build_model
from gkd_lib.train import select_device, train_step


def write_synthetic_cifar(root: Path, images: int, classes: int, seed: int = 0) -> str:
    """Random 32x32 images in the official CIFAR pickle format; returns the dataset name."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(images, 3 * 32 * 32), dtype=np.uint8)
    labels = (np.arange(images) % classes).tolist()
    test = {"data": data[:classes], "labels": list(range(classes)), "fine_labels": list(range(classes))}
    if classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        chunks = np.array_split(np.arange(images), 5)
        for number, chunk in enumerate(chunks, start=1):
            _dump(
                folder / f"data_batch_{number}", {"data": data[chunk], "labels": [labels[i] for i in chunk]}
            )
        _dump(folder / "test_batch", test)
        _dump(folder / "batches.meta", {"label_names": [f"class{k}" for k in range(10)]})
        return "cifar10"
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _dump(folder / "train", {"data": data, "fine_labels": labels, "coarse_labels": [k // 5 for k in labels]})
    _dump(folder / "test", test)
    _dump(folder / "meta", {"fine_label_names": [f"class{k}" for k in range(classes)]})
    return "cifar100"


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _models(args, data, device):
    torch.manual_seed(0)
    student = build_model(args.model, data.num_classes, data.in_channels, args.width)
    teacher = None
    if args.teacher:
        teacher = build_model(args.teacher, data.num_classes, data.in_channels).eval()
    with torch.no_grad():
        embedding, _ = (teacher or student)(
            torch.zeros(2, data.in_channels, data.image_size, data.image_size)
        )
    centroids = torch.randn(data.num_classes, embedding.shape[1])
    context = MethodContext(
        data.num_classes, student.embedding_dim, teacher.embedding_dim if teacher else None, centroids
    )
    methods = build_methods(args.method, {}, context)
    if teacher is None and any(method.needs_teacher for method in methods):
        raise ValueError(
            f"method {args.method} reads the teacher's outputs: give --teacher, e.g. --teacher resnet20"
        )
    return student, teacher, methods


class ProjectLoop:
    def __init__(self, args, data, student, teacher, methods, device):
        self.device = device
        self.distiller = Distiller(student, methods, teacher).to(device, memory_format=torch.channels_last)
        self.step_fn = torch.compile(self.distiller) if args.compile else self.distiller
        self.optimizer = torch.optim.SGD(
            self.distiller.trainable_parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.batches = TensorBatches.of_split(data, "train", batch_size=args.batch_size, device=device)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.stream = self._forever()

    def _forever(self):
        while True:
            yield from self.batches.train_epoch(self.generator)

    def run(self, steps: int) -> int:
        self.distiller.train()
        for _ in range(steps):
            images, labels = next(self.stream)
            train_step(self.step_fn, self.optimizer, None, images, labels, self.device)
        return steps * self.batches.batch_size


class ReferenceLoop:
    def __init__(self, args, dataset_name, root, data, student, teacher, methods, device):
        import torchvision.transforms as T
        from torch.utils.data import DataLoader
        from torchvision import datasets as tv

        from gkd_lib.datasets import _without_checksums

        transform = T.Compose(
            [
                T.RandomCrop(data.image_size, padding=data.crop_padding),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(data.mean, data.std),
            ]
        )
        if dataset_name == "imagefolder":  # JPEG or PNG files, decoded by PIL every time
            dataset = tv.ImageFolder(str(root / "train"), transform=transform)
        else:
            reader = _without_checksums(tv.CIFAR10 if dataset_name == "cifar10" else tv.CIFAR100)
            dataset = reader(str(root), train=True, transform=transform)
        self.loader = DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=args.workers > 0,
        )
        self.device = device
        self.distiller = Distiller(student, methods, teacher).to(device)
        self.optimizer = torch.optim.SGD(
            self.distiller.trainable_parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
        )
        self.batch_size = args.batch_size
        self.stream = self._forever()

    def _forever(self):
        while True:
            yield from self.loader

    def run(self, steps: int) -> int:
        self.distiller.train()
        for _ in range(steps):
            images, labels = next(self.stream)
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            _, terms = self.distiller(images, labels)
            loss = sum(terms.values())
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            loss.item()  # logged every step, as most training scripts do
        return steps * self.batch_size


def images_per_second(loop, steps: int, warmup: int, device) -> float:
    loop.run(warmup)
    _sync(device)
    started = time.perf_counter()
    images = loop.run(steps)
    _sync(device)
    return images / (time.perf_counter() - started)


def _median_time(fn, device, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def step_shares(project: ProjectLoop, device) -> dict[str, float]:
    """Seconds of a whole project step, of the teacher's forward pass, and of each term alone."""
    from gkd_lib.train import autocast

    distiller = project.distiller
    images, labels = next(project.stream)
    shares = {"step": _median_time(lambda: project.run(1), device)}
    with torch.no_grad(), autocast(device):
        embedding, logits = distiller.student(images)
    teacher_outputs = None
    if distiller.teacher is not None:

        def teacher_forward():
            with torch.no_grad(), autocast(device):
                return distiller.teacher(images)

        shares["teacher forward"] = _median_time(teacher_forward, device)
        teacher_outputs = Outputs(*teacher_forward())
    for method in distiller.methods:

        def term(method=method):
            student = Outputs(embedding.detach().requires_grad_(), logits.detach().requires_grad_())
            values = method(student, teacher_outputs, labels)
            if values:
                sum(values.values()).backward()
            return values

        names = list(term())
        if names:  # the baseline adds no term
            shares[" + ".join(names)] = _median_time(term, device)
    return shares


def run_benchmark(args, echo=print) -> dict:
    device = select_device(args.device, args.threads)
    if args.data_root:
        root, dataset_name = Path(args.data_root), args.dataset
        temporary = None
    else:
        temporary = tempfile.TemporaryDirectory(prefix="gkd-bench-")
        root = Path(temporary.name)
        dataset_name = write_synthetic_cifar(root, args.images, args.classes)
    try:
        data = load_dataset(dataset_name, root)
        if len(data.train_labels) < args.batch_size:
            raise ValueError(
                f"the benchmark needs at least one full batch: {len(data.train_labels)} training images "
                f"for --batch-size {args.batch_size}; give --images >= {args.batch_size}"
            )
        student, teacher, methods = _models(args, data, device)
        reference_models = copy.deepcopy((student, teacher, methods))
        project = ProjectLoop(args, data, student, teacher, methods, device)
        reference = ReferenceLoop(args, dataset_name, root, data, *reference_models, device)

        figures = {"project": [], "reference": []}
        for _ in range(args.repeats):
            figures["project"].append(images_per_second(project, args.steps, args.warmup, device))
            figures["reference"].append(images_per_second(reference, args.steps, args.warmup, device))
        medians = {name: statistics.median(values) for name, values in figures.items()}
        shares = step_shares(project, device)
    finally:
        if temporary is not None:
            temporary.cleanup()

    where = f"{device}" + (
        f" ({torch.cuda.get_device_name(device)})"
        if device.type == "cuda"
        else f" ({torch.get_num_threads()} threads)"
    )
    echo(
        f"benchmark: student {args.model}"
        + (f", teacher {args.teacher}" if args.teacher else "")
        + f", method {args.method}, batch {args.batch_size}, {data.num_classes} classes, device {where}, "
        f"torch {torch.__version__}"
    )
    echo(
        f"{args.steps} timed steps after {args.warmup} warm-up steps, {args.repeats} repeats, "
        f"loops alternating; reference DataLoader workers: {args.workers}"
    )
    echo(f"{'loop':<10s} {'images/s (median)':>18s}   repeats")
    for name, values in figures.items():
        echo(f"{name:<10s} {medians[name]:>18.1f}   " + ", ".join(f"{v:.1f}" for v in values))
    ratio = medians["project"] / medians["reference"]
    echo(f"ratio project / reference: {ratio:.2f}x")
    step = shares.pop("step")
    echo(f"share of one project step ({1000 * step:.2f} ms, median of 20):")
    for name, seconds in shares.items():
        echo(f"  {name:<28s} {1000 * seconds:8.3f} ms  {100 * seconds / step:6.2f} %")
    if not shares:
        echo("  (no teacher and no distillation term: the whole step is the student's)")
    return {
        "images_per_s": medians,
        "repeats": figures,
        "ratio": ratio,
        "step_s": step,
        "shares": {name: seconds / step for name, seconds in shares.items()},
    }


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _device(text: str) -> str:
    """A device this machine has: a benchmark measured elsewhere than asked would mislead."""
    if text != "auto":
        try:
            device = torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a device; use auto, cpu, cuda or cuda:N"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine")
        if device.type not in ("cpu", "cuda"):
            raise argparse.ArgumentTypeError(f"{text}: the benchmark runs on cpu or cuda")
    return text


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gkd_lib.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="resnet20", help="student model (default resnet20)")
    parser.add_argument("--width", type=float, default=1.0, help="student width multiplier (small ResNets)")
    parser.add_argument("--teacher", help="teacher model, for methods that read it (kd, feature, ...)")
    parser.add_argument("--method", default="baseline", help="method spec, e.g. geometry or kd+geometry")
    parser.add_argument("--batch-size", type=_positive, default=128)
    parser.add_argument(
        "--classes", type=int, default=100, choices=(10, 100), help="synthetic CIFAR-10 or -100"
    )
    parser.add_argument("--images", type=_positive, default=4096, help="synthetic training images")
    parser.add_argument("--data-root", help="use real images under this folder instead of synthetic ones")
    parser.add_argument(
        "--dataset",
        default="cifar100",
        choices=("cifar10", "cifar100", "imagefolder"),
        help="with --data-root: CIFAR files, or a folder of train/<class>/ images (the CIFAR-10 JPEGs)",
    )
    parser.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=_positive, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--workers", type=_not_negative, default=2, help="reference DataLoader workers (default 2)"
    )
    parser.add_argument("--steps", type=_positive, default=20, help="timed steps per repeat")
    parser.add_argument("--warmup", type=_not_negative, default=3, help="untimed steps before each timing")
    parser.add_argument("--repeats", type=_positive, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the project's step")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        run_benchmark(build_parser().parse_args(argv))
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
