"""The training loop: one loop for the teacher and for every student arm.

`train_teacher(cfg)` trains the teacher of a profile and stores its class
centroids beside its checkpoint; `train_student(cfg, method, seed)` distils one
student arm. Both run `fit`, which knows nothing of methods: it asks the
`Distiller` for a dict of weighted loss terms, sums them and logs each one.

Speed (DESIGN.md section 6): the dataset stays on the device and is augmented
there; channels_last everywhere; bfloat16 autocast on CUDA only (it is about 10x
slower on the CPUs this kit was built on); the teacher runs without gradients;
per-step metrics are summed on the device and read once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from gkd_lib.augment import TensorBatches
from gkd_lib.config import Config, check_flag, check_folder_name, check_seed
from gkd_lib.datasets import ImageData, load_dataset
from gkd_lib.distiller import Distiller
from gkd_lib.geometry import class_centroids
from gkd_lib.methods import MethodContext, build_methods, canonical_spec, method_defaults, split_spec
from gkd_lib.models import build_model, count_parameters
from gkd_lib.runs import (
    CheckpointError,
    MetricsLog,
    RunExistsError,
    bars_disabled,
    environment,
    load_checkpoint,
    locked,
    read_json,
    save_checkpoint,
    write_json,
)

SPLIT_SEED = 0  # the validation split is the same for every arm and seed
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite; the run stops with the last good checkpoint kept."""


# ----------------------------------------------------------------------------- devices


def select_device(spec: str = "auto", threads: int | None = None) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without it falls back with a warning."""
    if threads:
        torch.set_num_threads(threads)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"device {spec!r} was asked for, but CUDA is not available: using the CPU", stacklevel=2
        )
        return torch.device("cpu")
    return device


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA; float32 elsewhere (bfloat16 is slow on these CPUs)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- data and models


def load_data(cfg: Config) -> ImageData:
    """The profile's dataset with its validation split held out."""
    return load_dataset(
        cfg.dataset,
        cfg.resolved_data_root,
        download=cfg.download,
        val_fraction=cfg.val_fraction,
        train_subset=cfg.train_subset,
        test_subset=cfg.test_subset,
        seed=SPLIT_SEED,
    )


def model_info(name: str, width: float, data: ImageData, model: nn.Module) -> dict:
    return {
        "name": name,
        "width": width,
        "dataset": data.name,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "embedding_dim": model.embedding_dim,
        "params": count_parameters(model),
    }


def check_model_fits(model: nn.Module, data: ImageData, role: str) -> None:
    """Refuse a model whose class count or input channels differ from the dataset's."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    in_channels, num_classes = convs[0].in_channels, linears[-1].out_features
    if num_classes != data.num_classes or in_channels != data.in_channels:
        raise ValueError(
            f"the {role} has {num_classes} classes and {in_channels} input channels, but {data.name} "
            f"has {data.num_classes} classes and {data.in_channels} channels"
        )


def load_teacher(cfg: Config, data: ImageData, device: torch.device):
    """The trained teacher (best validation epoch) and its class centroids, checked against the data."""
    folder = cfg.teacher_dir
    checkpoint = folder / "best.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(
            f"no trained teacher at {checkpoint}; train it first (notebook 01_train_teacher, or "
            f"python -m gkd_lib.pipeline --profile {cfg.profile} --only teacher)"
        )
    state = load_checkpoint(checkpoint)
    info = state["model_info"]
    if (
        info["dataset"] != data.name
        or info["num_classes"] != data.num_classes
        or info["in_channels"] != data.in_channels
    ):
        raise ValueError(
            f"the teacher at {checkpoint} was trained on {info['dataset']} ({info['num_classes']} "
            f"classes, {info['in_channels']} channels), but this profile uses {data.name} "
            f"({data.num_classes} classes, {data.in_channels} channels); train a teacher for this dataset"
        )
    teacher = build_model(info["name"], info["num_classes"], info["in_channels"], info["width"])
    teacher.load_state_dict(state["model"])
    check_model_fits(teacher, data, "teacher")
    centroids_path = folder / "centroids.pt"
    centroids = load_checkpoint(centroids_path)["centroids"] if centroids_path.exists() else None
    return teacher.to(device, memory_format=torch.channels_last), centroids


@torch.no_grad()
def embed(
    model: nn.Module, images: torch.Tensor, data: ImageData, device: torch.device, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and logits of uint8 images, model in eval mode, no augmentation (float32, CPU)."""
    batches = TensorBatches(
        images,
        torch.zeros(len(images), dtype=torch.int64),
        data.mean,
        data.std,
        batch_size=batch_size,
        device=device,
    )
    was_training = model.training
    model.eval()
    embeddings, logits = [], []
    for x, _ in batches.eval_batches(batch_size):
        with autocast(device):
            e, z = model(x)
        embeddings.append(e.float().cpu())
        logits.append(z.float().cpu())
    model.train(was_training)
    return torch.cat(embeddings), torch.cat(logits)


@torch.no_grad()
def accuracy(model: nn.Module, batches: TensorBatches, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=batches.device)
    for x, y in batches.eval_batches(batch_size):
        with autocast(batches.device):
            _, logits = model(x)
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return correct.item() / max(1, len(batches.labels))


# ----------------------------------------------------------------------------- optimisation


def build_optimizer(cfg: Config, parameters) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm and bias parameters is common, but the paper and
    # the standard CIFAR protocol decay everything; so does this kit.
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid optimizers: sgd, adamw")


def lr_factor(cfg: Config, epochs: int, steps_per_epoch: int):
    """The learning-rate multiplier at a step: linear warm-up, then cosine or steps."""
    warmup = cfg.warmup_epochs * steps_per_epoch
    total = epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "step":
            epoch = step // steps_per_epoch
            return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ----------------------------------------------------------------------------- random state


def rng_state(generator: torch.Generator) -> dict:
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "data": generator.get_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["data"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- the loop


@dataclass
class Run:
    """One training run: where it lives and what identifies it."""

    folder: Path
    role: str  # "teacher" or "student"
    method: str
    seed: int
    epochs: int
    params: dict  # the parameters that decide its results; a resume must match them


def run_params(cfg: Config, role: str, method: str, seed: int, method_args: dict) -> dict:
    """The parameters that decide a run's results (not where it is written, nor on what device)."""
    keys = [
        "dataset",
        "train_subset",
        "test_subset",
        "val_fraction",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "schedule",
        "warmup_epochs",
        "milestones",
        "gamma",
    ]
    params = {k: cfg.to_dict()[k] for k in keys}
    if role == "teacher":
        params.update(model=cfg.teacher, width=cfg.teacher_width, epochs=cfg.teacher_epochs)
    else:
        # Every argument of the arm's methods, defaults included: a changed default is a changed run.
        arguments = {
            name: {**method_defaults(name), **(method_args.get(name) or {})} for name in split_spec(method)
        }
        params.update(
            model=cfg.student,
            width=cfg.student_width,
            epochs=cfg.epochs,
            teacher=cfg.teacher,
            teacher_width=cfg.teacher_width,
            teacher_epochs=cfg.teacher_epochs,
            teacher_seed=cfg.teacher_seed,
            method_args=arguments,
        )
    params.update(role=role, method=method, seed=seed)
    return params


def run_state(run: Run) -> str:
    """'done', 'resume' or 'new'; refuses a folder that holds a run with other parameters."""
    folder = run.folder
    config_path = folder / "config.json"
    if not config_path.exists():
        return "new"
    stored = read_json(config_path).get("run") or {}
    if stored != run.params:
        if not any((folder / name).exists() for name in ("last.pt", "best.pt", "summary.json")):
            return "new"  # a run that stopped before its first epoch ended holds no result to protect
        changed = sorted(k for k in set(stored) | set(run.params) if stored.get(k) != run.params.get(k))
        raise RunExistsError(
            f"{folder} holds a run made with other parameters (differing: {', '.join(changed)}); "
            "rerun with force=True (--force) to overwrite it, or choose another runs_dir"
        )
    if (folder / "summary.json").exists():
        return "done"
    return "resume" if (folder / "last.pt").exists() else "new"


def clear_run(folder: Path) -> None:
    """Remove a run's files (for --force); the lock file stays, it is held right now."""
    for child in folder.iterdir():
        if child.name != ".lock":
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def fit(
    run: Run,
    distiller: Distiller,
    data: ImageData,
    cfg: Config,
    *,
    device: torch.device,
    info: dict,
    force: bool = False,
    progress: bool = True,
    after_training=None,
) -> dict:
    """Train `distiller.student` for `run.epochs` epochs, resuming from `last.pt` when present.

    Returns the run's summary; a finished run with the same parameters is not retrained.
    `after_training(folder)` runs once the epochs are done, before the summary is written.
    """
    check_flag("force", force)
    with locked(run.folder, "training run"):
        if force:
            clear_run(run.folder)
        state = run_state(run)
        if state == "done":
            if after_training is not None:  # reached only when its output is missing (see train_teacher)
                after_training(run.folder)
            return read_json(run.folder / "summary.json")
        if state == "new":
            write_json(run.folder / "config.json", {"run": run.params, "profile": cfg.to_dict()})
            write_json(run.folder / "environment.json", environment(device))
        return _fit_locked(run, distiller, data, cfg, device, info, progress, after_training)


def _fit_locked(run, distiller, data, cfg, device, info, progress, after_training) -> dict:
    folder = run.folder
    train, val, test = (
        TensorBatches.of_split(data, split, batch_size=cfg.batch_size, device=device)
        for split in ("train", "val", "test")
    )

    distiller.to(device, memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, distiller.trainable_parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, run.epochs, len(train)))
    generator = torch.Generator(device=device)
    generator.manual_seed(run.seed)
    step_fn = torch.compile(distiller) if cfg.compile else distiller
    log = MetricsLog(folder)
    best = {"val_acc": -1.0, "epoch": 0, "test_acc": None, "best_test_acc": -1.0}
    start_epoch, elapsed = 0, 0.0

    if (folder / "last.pt").exists():
        checkpoint = load_checkpoint(folder / "last.pt", map_location=device)
        if checkpoint.get("run") != run.params:
            raise CheckpointError(f"{folder / 'last.pt'} belongs to another run; delete {folder} to restart")
        distiller.load_checkpoint_state(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"], generator)
        best, start_epoch, elapsed = checkpoint["best"], checkpoint["epoch"], checkpoint["elapsed_s"]
        log.keep_first(start_epoch)
        if progress and start_epoch < run.epochs:
            tqdm.write(f"resuming {folder} after epoch {start_epoch}")

    for epoch in range(start_epoch, run.epochs):
        distiller.train()
        distiller.set_epoch(epoch)
        started = time.perf_counter()
        sums, correct, seen = None, torch.zeros((), device=device), 0
        watch = NonFiniteWatch(device)
        bar = tqdm(
            train.train_epoch(generator),
            total=len(train),
            leave=False,
            disable=not progress or bars_disabled(),
            desc=f"{run.role} {run.method} seed {run.seed} epoch {epoch + 1}/{run.epochs}",
        )
        for step, (images, labels) in enumerate(bar):
            logits, terms, loss = train_step(step_fn, optimizer, scheduler, images, labels, device)
            values = torch.stack([loss.detach().float(), *(v.detach().float() for v in terms.values())])
            watch.check(values, epoch, f"{step + 1}/{len(train)}", ["loss", *terms])
            sums = values * len(labels) if sums is None else sums + values * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
        watch.raise_if_seen(epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - started
        means = dict(zip(["loss", *terms], (sums / seen).tolist(), strict=True))

        val_acc = accuracy(distiller.student, val, cfg.eval_batch_size)
        test_acc = accuracy(distiller.student, test, cfg.eval_batch_size)
        epoch_seconds = time.perf_counter() - started
        elapsed += epoch_seconds
        row = {
            "epoch": epoch + 1,
            "loss": means.pop("loss"),
            **means,
            "train_acc": correct.item() / seen,
            "val_acc": val_acc,
            "test_acc": test_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / train_seconds,
            "epoch_time_s": epoch_seconds,
            "elapsed_s": elapsed,
        }

        if val_acc > best["val_acc"]:
            best.update(val_acc=val_acc, epoch=epoch + 1, test_acc=test_acc)
            save_checkpoint(
                folder / "best.pt",
                {
                    "model": distiller.student.state_dict(),
                    "model_info": info,
                    "epoch": epoch + 1,
                    "val_acc": val_acc,
                    "test_acc": test_acc,
                },
            )
        best["best_test_acc"] = max(best["best_test_acc"], test_acc)
        save_checkpoint(
            folder / "last.pt",
            {
                "format": CHECKPOINT_FORMAT,
                "run": run.params,
                "epoch": epoch + 1,
                "elapsed_s": elapsed,
                "model": distiller.state_for_checkpoint(),
                "model_info": info,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(generator),
                "best": best,
            },
        )
        log.append(row)
        if progress:
            tqdm.write(_summary_line(run, row))

    if after_training is not None:
        after_training(folder)
    rows = log.rows()
    summary = {
        "role": run.role,
        "method": run.method,
        "seed": run.seed,
        "epochs": run.epochs,
        "model": info["name"],
        "params": info["params"],
        "test_acc_at_best_val": best["test_acc"],
        "best_val_acc": best["val_acc"],
        "best_val_epoch": best["epoch"],
        "test_acc_last": rows[-1]["test_acc"],
        "val_acc_last": rows[-1]["val_acc"],
        # Selected on the test set: only for comparison with the paper's Table 1.
        "best_test_acc_during_training_paper_comparable": best["best_test_acc"],
        "wall_time_s": elapsed,
        "device": str(device),
    }
    write_json(folder / "summary.json", summary)
    return summary


def train_step(step_fn, optimizer, scheduler, images, labels, device):
    """One optimisation step: forward under autocast, the sum of the loss terms, backward, update.

    Nothing here reads a value back to the host, so a GPU never waits for the CPU.
    """
    with autocast(device):
        logits, terms = step_fn(images, labels)
    loss = sum(terms.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return logits, terms, loss


class NonFiniteWatch:
    """Stops a run at a NaN or infinite loss, naming the epoch, the step and every term.

    On the CPU each step is checked at once (reading a CPU value costs nothing); on a
    GPU the first bad step and its values are kept on the device and read at the end of
    the epoch, so that no step waits for the host. Either way the run stops before the
    epoch's checkpoint is written, and the last good one stays.
    """

    def __init__(self, device: torch.device):
        self.on_host = device.type == "cpu"
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.values, self.where, self.names = None, {}, []

    def check(self, values: torch.Tensor, epoch: int, step: str, names: list[str]) -> None:
        finite = torch.isfinite(values).all()
        if self.on_host:
            if not finite:
                _raise_non_finite(epoch, step, dict(zip(names, values.tolist(), strict=True)))
            return
        index = len(self.where)
        self.where[index], self.names = step, names
        newly = (self.first_bad < 0) & ~finite
        self.first_bad = torch.where(newly, index, self.first_bad)
        self.values = values if self.values is None else torch.where(newly, values, self.values)

    def raise_if_seen(self, epoch: int) -> None:
        if self.on_host or self.values is None:
            return
        first = int(self.first_bad.item())
        if first >= 0:
            _raise_non_finite(
                epoch, self.where[first], dict(zip(self.names, self.values.tolist(), strict=True))
            )


def _raise_non_finite(epoch, step, values: dict[str, float]) -> None:
    listed = ", ".join(f"{name} = {value:.4g}" for name, value in values.items())
    raise NonFiniteLossError(
        f"non-finite loss at epoch {epoch + 1}, step {step}: {listed}. The run stopped; its last good "
        "checkpoint (last.pt, from the previous epoch) is kept. Lower the learning rate or the loss weights."
    )


def _summary_line(run: Run, row: dict) -> str:
    terms = " ".join(
        f"{k} {v:.3f}"
        for k, v in row.items()
        if k
        not in {
            "epoch",
            "loss",
            "train_acc",
            "val_acc",
            "test_acc",
            "lr",
            "images_per_s",
            "epoch_time_s",
            "elapsed_s",
        }
    )
    return (
        f"{run.role:7s} {run.method:14s} seed {run.seed}  epoch {row['epoch']:3d}/{run.epochs:<3d} "
        f"loss {row['loss']:.3f} ({terms})  train {100 * row['train_acc']:5.1f}%  "
        f"val {100 * row['val_acc']:5.1f}%  test {100 * row['test_acc']:5.1f}%  lr {row['lr']:.4f}  "
        f"{row['images_per_s']:7.0f} img/s  {row['epoch_time_s']:6.1f}s"
    )


# ----------------------------------------------------------------------------- entry points


def teacher_run(cfg: Config) -> Run:
    return Run(
        cfg.teacher_dir,
        "teacher",
        "baseline",
        cfg.teacher_seed,
        cfg.teacher_epochs,
        run_params(cfg, "teacher", "baseline", cfg.teacher_seed, {}),
    )


def student_run(
    cfg: Config, method: str, seed: int, run_name: str | None = None, method_args: dict | None = None
) -> Run:
    method_args = cfg.method_args if method_args is None else method_args
    check_seed(seed)
    if run_name is not None:
        check_folder_name("run_name", run_name, "runs/<profile>/students/<run name>")
    return Run(
        cfg.student_dir(run_name or method, seed),
        "student",
        method,
        seed,
        cfg.epochs,
        run_params(cfg, "student", method, seed, method_args),
    )


def train_teacher(
    cfg: Config, data: ImageData | None = None, *, force: bool = False, progress: bool = True
) -> dict:
    """Train the profile's teacher, then store its class centroids (train split) beside it."""
    run = teacher_run(cfg)
    if not force and run_state(run) == "done" and (run.folder / "centroids.pt").exists():
        return read_json(run.folder / "summary.json")
    data = data or load_data(cfg)
    device = select_device(cfg.device, cfg.threads)
    seed_everything(cfg.teacher_seed)
    teacher = build_model(cfg.teacher, data.num_classes, data.in_channels, cfg.teacher_width)
    check_model_fits(teacher, data, "teacher")
    distiller = Distiller(
        teacher, build_methods("baseline", {}, MethodContext(data.num_classes, teacher.embedding_dim))
    )
    info = model_info(cfg.teacher, cfg.teacher_width, data, teacher)

    def store_centroids(folder: Path) -> None:
        best = load_checkpoint(folder / "best.pt", map_location=device)
        teacher.load_state_dict(best["model"])
        embedding, _ = embed(teacher, data.train_images, data, device, cfg.eval_batch_size)
        centroids = class_centroids(embedding, data.train_labels, data.num_classes)
        save_checkpoint(
            folder / "centroids.pt",
            {
                "centroids": centroids,
                "dataset": data.name,
                "num_classes": data.num_classes,
                "epoch": best["epoch"],
            },
        )

    return fit(
        run,
        distiller,
        data,
        cfg,
        device=device,
        info=info,
        force=force,
        progress=progress,
        after_training=store_centroids,
    )


def train_student(
    cfg: Config,
    method: str,
    seed: int,
    *,
    run_name: str | None = None,
    method_args: dict | None = None,
    data: ImageData | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Distil one student arm (`method`, for example 'geometry' or 'kd+geometry') with one seed."""
    method = canonical_spec(method)
    method_args = cfg.method_args if method_args is None else method_args
    run = student_run(cfg, method, seed, run_name, method_args)
    if not force and run_state(run) == "done":
        return read_json(run.folder / "summary.json")
    try:
        teacher_state = run_state(teacher_run(cfg))
    except RunExistsError as error:
        raise RunExistsError(
            f"the teacher on disk does not match this profile: {error}. Distilling from it would record "
            "the wrong teacher; retrain the teacher (notebook 01 with force=True) or use its parameters"
        ) from None
    if teacher_state != "done":
        raise FileNotFoundError(
            f"the teacher at {cfg.teacher_dir} has not finished training; train it first (notebook "
            f"01_train_teacher, or python -m gkd_lib.pipeline --profile {cfg.profile} --only teacher)"
        )
    data = data or load_data(cfg)
    device = select_device(cfg.device, cfg.threads)
    teacher, centroids = load_teacher(cfg, data, device)

    seed_everything(seed)
    student = build_model(cfg.student, data.num_classes, data.in_channels, cfg.student_width)
    check_model_fits(student, data, "student")
    context = MethodContext(data.num_classes, student.embedding_dim, teacher.embedding_dim, centroids)
    distiller = Distiller(student, build_methods(method, method_args, context), teacher)
    info = model_info(cfg.student, cfg.student_width, data, student)
    return fit(run, distiller, data, cfg, device=device, info=info, force=force, progress=progress)
