"""Profiles and the resolved configuration of a study.

A profile is a YAML file of study parameters under notebooks/profiles/ (demo,
cifar10-cpu, paper, full, ...). Every key of a profile is a field of `Config`; the
field defaults below are the one source of defaults, and a profile states what it
changes. The same YAML works with papermill directly (`papermill -f PROFILE.yaml`),
since every notebook declares these keys in its `parameters` cell.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = REPO_ROOT / "notebooks" / "profiles"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class Config:
    """Every parameter of a study; a profile overrides some of them."""

    profile: str = "custom"

    # data
    dataset: str = "digits"
    data_root: str | None = None  # else $GKD_DATA_ROOT, else data/ at the repository root
    download: bool = False
    train_subset: int | None = None  # keep this many training images (stratified)
    test_subset: int | None = None  # keep this many test images (stratified)
    val_fraction: float = 0.1  # held out from train, selects the best epoch

    # networks
    teacher: str = "resnet20"
    teacher_width: float = 1.0
    student: str = "resnet8"
    student_width: float = 1.0

    # methods: the student arms, and keyword arguments per method name
    methods: tuple[str, ...] = ("baseline", "kd", "feature", "geometry")
    method_args: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    teacher_seed: int = 0

    # optimisation (the same for the teacher and every student arm)
    epochs: int = 10
    teacher_epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine with linear warm-up, or step (x gamma at milestones)
    warmup_epochs: int = 1
    milestones: tuple[int, ...] = (150, 180, 210)
    gamma: float = 0.1

    # execution
    device: str = "auto"  # auto: CUDA when present, else CPU
    compile: bool = False  # torch.compile the student (a GPU option)
    threads: int | None = None  # CPU threads for torch; None: torch's default (all cores)
    eval_batch_size: int = 512
    runs_dir: str = "runs"  # relative paths here are relative to the repository root
    figures_dir: str = "figures"

    # analysis and the lambda sweep
    umap_points: int = 2000  # test images per UMAP panel
    sweep_weights: tuple[float, ...] = ()  # geometry weights to sweep; empty: no sweep
    sweep_centroids: tuple[str, ...] = ("running", "batch")
    use_sweep_best: bool = False  # geometry arms take the sweep's best weight

    @property
    def profile_dir(self) -> Path:
        return in_repo(self.runs_dir) / self.profile

    @property
    def teacher_dir(self) -> Path:
        return self.profile_dir / "teacher"

    def student_dir(self, run_name: str, seed: int) -> Path:
        return self.profile_dir / "students" / run_name / f"seed{seed}"

    @property
    def figure_dir(self) -> Path:
        return in_repo(self.figures_dir) / self.profile

    @property
    def resolved_data_root(self) -> Path:
        """data_root, else $GKD_DATA_ROOT, else data/; relative ones are relative to the repository
        root, so that the pipeline and its notebooks' kernels (which start there) read one folder."""
        return in_repo(self.data_root or os.environ.get("GKD_DATA_ROOT") or "data")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def replace(self, **changes) -> Config:
        return validate(dataclasses.replace(self, **_normalise(changes)))


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
LIST_FIELDS = [name for name, f in FIELDS.items() if isinstance(f.default, tuple)]
_FOLDER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def in_repo(path: str | os.PathLike) -> Path:
    """A path from a profile: relative paths are relative to the repository root, not the cwd,
    so that a notebook opened in notebooks/ and the pipeline find the same folders."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


class ConfigError(ValueError):
    """A profile or parameter that cannot be used; the message says what is accepted."""


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_path(profile: str | os.PathLike) -> Path:
    """A profile name (notebooks/profiles/NAME.yaml) or a path to a YAML file."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"profile file {path} does not exist")
        return path
    named = PROFILES_DIR / f"{profile}.yaml"
    if not named.is_file():
        raise ConfigError(
            f"unknown profile {str(profile)!r}; valid profiles: {', '.join(profile_names())} "
            "(or a path to a .yaml file)"
        )
    return named


def load_profile(profile: str | os.PathLike) -> dict:
    """The raw parameters of a profile, with its keys checked."""
    path = profile_path(profile)
    with open(path) as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"profile {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path} must be a mapping of parameter names to values")
    check_keys(data, f"profile {path}")
    data.setdefault("profile", path.stem)
    return data


def check_keys(parameters: dict, where: str) -> None:
    unknown = sorted(set(parameters) - set(FIELDS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown parameter {', '.join(unknown)}; valid parameters: {', '.join(FIELDS)}"
        )


def resolve(profile: str | os.PathLike = "demo", **overrides) -> Config:
    """The profile's parameters, then the overrides that are not None, checked."""
    data = load_profile(profile)
    changes = {k: v for k, v in overrides.items() if v is not None}
    check_keys(changes, "parameters")
    data.update(changes)
    return validate(Config(**_normalise(data)))


def from_notebook(namespace: dict) -> Config:
    """The configuration a notebook's parameters cell describes.

    `profile` names the profile; every other study parameter that is not None
    overrides it (papermill injects them from `-f PROFILE.yaml` or `-p KEY VALUE`).
    """
    check_flag("force", namespace.get("force", False))
    overrides = {k: namespace[k] for k in FIELDS if k != "profile" and namespace.get(k) is not None}
    return resolve(namespace.get("profile") or "demo", **overrides)


def check_flag(name: str, value) -> bool:
    """A true/false parameter must be a real boolean: papermill passes `-p force false` as the
    text 'false', which Python would take as true."""
    if not isinstance(value, bool):
        raise ConfigError(
            f"{name} must be true or false, got {value!r}"
            + (" (with papermill -p, write True or False)" if isinstance(value, str) else "")
        )
    return value


# PyYAML reads exponent numbers without a dot (5e-4) as text; they are numbers here.
_EXPONENT_NUMBER = re.compile(r"^[-+]?\d+(\.\d*)?[eE][-+]?\d+$")


def _number(value):
    return float(value) if isinstance(value, str) and _EXPONENT_NUMBER.match(value) else value


def _normalise(data: dict) -> dict:
    """YAML lists -> tuples (a Config compares by value); 5e-4 written without a dot -> a number."""
    normal = {}
    for key, value in data.items():
        if isinstance(value, list):
            value = tuple(_number(v) for v in value)
        elif key == "method_args" and isinstance(value, dict):
            value = {
                m: {k: _number(v) for k, v in a.items()} if isinstance(a, dict) else a
                for m, a in value.items()
            }
        normal[key] = _number(value)
    return normal


def validate(cfg: Config) -> Config:
    """Refuse names that are not registered and values out of range, before any training."""
    import torch

    from gkd_lib.datasets import DATASETS
    from gkd_lib.methods import MethodContext, build_methods, canonical_spec, check_method_args, split_spec
    from gkd_lib.models import MODELS

    for name in LIST_FIELDS:
        if not isinstance(getattr(cfg, name), tuple):
            example = {"seeds": "[0, 1, 2]", "methods": "[baseline, kd]"}.get(name, "[...]")
            raise ConfigError(f"{name} must be a list, for example {example}; got {getattr(cfg, name)!r}")
    check_folder_name("profile name", cfg.profile, "runs/<profile>, figures/<profile>")
    DATASETS.get(cfg.dataset)
    MODELS.get(cfg.teacher)
    MODELS.get(cfg.student)
    if not cfg.methods:
        raise ConfigError("methods is empty; list at least one method, for example [baseline]")
    arms = {}
    for spec in cfg.methods:
        key = frozenset(split_spec(spec))
        if key in arms:
            raise ConfigError(f"methods lists the same arm twice: {arms[key]!r} and {spec!r}")
        arms[key] = spec
    for name in ("seeds", "sweep_weights", "sweep_centroids"):
        values = getattr(cfg, name)
        if len(set(values)) != len(values):
            raise ConfigError(f"{name} lists a value twice: {list(values)}")
    check_method_args(cfg.method_args)
    cfg = dataclasses.replace(cfg, methods=tuple(canonical_spec(spec) for spec in cfg.methods))
    # Building each arm's methods on a toy context checks every argument's value now,
    # not hours later when that arm's turn comes.
    toy = MethodContext(num_classes=2, student_dim=2, teacher_dim=2, teacher_centroids=torch.eye(2))
    for spec in cfg.methods:
        build_methods(spec, cfg.method_args, toy)
    _check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _check_choice("schedule", cfg.schedule, SCHEDULES)
    _check_device(cfg.device)
    for name in ("download", "nesterov", "compile", "use_sweep_best"):
        check_flag(name, getattr(cfg, name))
    for name in ("data_root", "runs_dir", "figures_dir"):
        value = getattr(cfg, name)
        if not (isinstance(value, (str, os.PathLike)) or (name == "data_root" and value is None)):
            raise ConfigError(f"{name} must be a folder path, got {value!r}")

    for name in ("epochs", "teacher_epochs", "batch_size", "eval_batch_size", "umap_points"):
        _check_int(name, getattr(cfg, name), minimum=1)
    _check_int("warmup_epochs", cfg.warmup_epochs, minimum=0)
    for name in ("train_subset", "test_subset", "threads"):
        if getattr(cfg, name) is not None:
            _check_int(name, getattr(cfg, name), minimum=1)
    if not cfg.seeds:
        raise ConfigError("seeds is empty; list at least one seed, for example [0]")
    for seed in (*cfg.seeds, cfg.teacher_seed):
        check_seed(seed)
    _check_number("lr", cfg.lr, low=0, low_open=True)
    _check_number("weight_decay", cfg.weight_decay, low=0)
    _check_number("gamma", cfg.gamma, low=0, low_open=True)
    _check_number("teacher_width", cfg.teacher_width, low=0, low_open=True)
    _check_number("student_width", cfg.student_width, low=0, low_open=True)
    if not (_is_number(cfg.momentum) and 0 <= cfg.momentum < 1):
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum!r}")
    if cfg.optimizer == "sgd" and cfg.nesterov and cfg.momentum == 0:
        raise ConfigError(
            "nesterov needs a momentum above 0, got momentum 0; set nesterov: false, or a momentum in (0, 1)"
        )
    if not (_is_number(cfg.val_fraction) and 0 < cfg.val_fraction < 1):
        raise ConfigError(
            f"val_fraction must be in (0, 1): a validation split selects the best epoch; "
            f"got {cfg.val_fraction!r}"
        )
    for milestone in cfg.milestones:
        _check_int("milestones", milestone, minimum=1)
    for weight in cfg.sweep_weights:
        _check_number("sweep_weights", weight, low=0)
    for mode in cfg.sweep_centroids:
        _check_choice("sweep_centroids", mode, ("running", "batch"))
    if cfg.use_sweep_best and not any(weight > 0 for weight in cfg.sweep_weights):
        raise ConfigError(
            "use_sweep_best needs a lambda sweep with a weight above 0; "
            f"sweep_weights is {list(cfg.sweep_weights)}"
        )
    return cfg


def check_folder_name(what: str, value, folders: str) -> str:
    """A name that becomes a folder must be one name, not a path."""
    if not (isinstance(value, str) and _FOLDER_NAME.match(value)):
        raise ConfigError(
            f"{what} {value!r} names folders ({folders}): use letters, digits, '-', '_', '+' and '.', "
            "not a path"
        )
    return value


def check_seed(value) -> int:
    _check_int("seed", value, minimum=0)
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(name, value, low, low_open=False):
    if not _is_number(value) or value < low or (low_open and value == low):
        bound = f"> {low}" if low_open else f">= {low}"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}")


def _check_device(device) -> None:
    """'auto', or a device name torch knows (cpu, cuda, cuda:1, mps)."""
    import torch

    accepted = "auto, cpu, cuda, cuda:N or mps"
    if not isinstance(device, str):
        raise ConfigError(f"device must be one of {accepted}; got {device!r}")
    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; valid devices: {accepted}") from None
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unknown device {device!r}; valid devices: {accepted}")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; valid {name}s: {', '.join(choices)}")
