"""Reliability: resume after SIGKILL, damaged checkpoints, bad input refused before training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from gkd_lib import config, pipeline, train
from gkd_lib.config import ConfigError
from gkd_lib.datasets import load_dataset
from gkd_lib.methods import METHODS, Method
from gkd_lib.models import build_model
from gkd_lib.registry import UnknownNameError
from gkd_lib.runs import CheckpointError, RunExistsError, ensure_writable, load_checkpoint

TIMING = {"images_per_s", "epoch_time_s", "elapsed_s"}
# A teacher slow enough (about a second an epoch) for a kill to land between epochs.
KILLABLE = {"teacher": "resnet20", "teacher_width": 2.0, "teacher_epochs": 6, "threads": 1}


@pytest.fixture(autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def metrics(folder):
    with open(folder / "metrics.jsonl") as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in handle]


def kill_after_epochs(command: list[str], metrics_file, epochs: int) -> None:
    """Start `command`, SIGKILL it once `metrics_file` has `epochs` rows."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= epochs:
            break
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {process.stderr.read().decode()}")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def test_sigkilled_run_resumes_to_identical_metrics(tmp_path):
    killed = config.resolve("demo", runs_dir=str(tmp_path / "killed"), **KILLABLE)
    script = (
        "import sys; from gkd_lib import config, train; "
        f"cfg = config.resolve('demo', runs_dir=sys.argv[1], **{KILLABLE!r}); "
        "train.train_teacher(cfg, progress=False)"
    )
    kill_after_epochs(
        [sys.executable, "-c", script, str(tmp_path / "killed")],
        killed.teacher_dir / "metrics.jsonl",
        epochs=2,
    )
    assert not (killed.teacher_dir / "summary.json").exists()
    stopped_at = load_checkpoint(killed.teacher_dir / "last.pt")["epoch"]
    assert 2 <= stopped_at < 6

    resumed = train.train_teacher(killed, progress=False)
    whole = config.resolve("demo", runs_dir=str(tmp_path / "whole"), **KILLABLE)
    uninterrupted = train.train_teacher(whole, progress=False)
    assert metrics(killed.teacher_dir) == metrics(whole.teacher_dir)
    assert len(metrics(killed.teacher_dir)) == 6
    for key in ("test_acc_at_best_val", "best_val_epoch", "test_acc_last"):
        assert resumed[key] == uninterrupted[key]
    assert torch.equal(
        torch.load(killed.teacher_dir / "centroids.pt")["centroids"],
        torch.load(whole.teacher_dir / "centroids.pt")["centroids"],
    )


def test_killed_pipeline_resumes_its_run(tmp_path):
    profile = tmp_path / "resume.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "profile": "resume",
                "dataset": "digits",
                "methods": ["baseline"],
                "runs_dir": str(tmp_path / "runs"),
                "figures_dir": str(tmp_path / "fig"),
                **KILLABLE,
            }
        )
    )
    cfg = config.resolve(profile)
    command = [sys.executable, "-m", "gkd_lib.pipeline", "--profile", str(profile), "--only", "teacher"]
    kill_after_epochs(command, cfg.teacher_dir / "metrics.jsonl", epochs=2)
    assert not (cfg.teacher_dir / "summary.json").exists()

    lines = []
    pipeline.run_pipeline(cfg, only="teacher", echo=lines.append)
    assert any(line.startswith("[  ok] 01 teacher") for line in lines)
    notebook = (cfg.profile_dir / "notebooks" / "01_train_teacher.ipynb").read_text()
    assert "resuming" in notebook
    whole = config.resolve("demo", runs_dir=str(tmp_path / "whole"), **KILLABLE)
    train.train_teacher(whole, progress=False)
    assert metrics(cfg.teacher_dir) == metrics(whole.teacher_dir)


@pytest.fixture(scope="module")
def small_teacher(tmp_path_factory):
    cfg = config.resolve(
        "demo",
        runs_dir=str(tmp_path_factory.mktemp("runs")),
        teacher="resnet8",
        teacher_width=0.5,
        teacher_epochs=2,
        student_width=0.5,
        epochs=2,
    )
    train.train_teacher(cfg, progress=False)
    return cfg


def test_truncated_checkpoint_gives_a_clear_error(small_teacher, tmp_path):
    damaged = tmp_path / "last.pt"
    data = (small_teacher.teacher_dir / "last.pt").read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(damaged)
    message = str(error.value)
    assert str(damaged) in message and "truncated or corrupt" in message and "restart" in message
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(garbage)


def test_corrupt_checkpoint_stops_a_resume_with_a_clear_error(small_teacher, tmp_path):
    cfg = small_teacher.replace(runs_dir=str(tmp_path / "runs"), teacher_epochs=2)
    folder = cfg.teacher_dir
    train.train_teacher(cfg, progress=False)
    (folder / "summary.json").unlink()  # as if killed after the last checkpoint
    (folder / "last.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match=f"{folder / 'last.pt'}.*--force"):
        train.train_teacher(cfg, progress=False)


def test_checkpoints_load_with_weights_only(small_teacher):
    state = torch.load(small_teacher.teacher_dir / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng", "epoch", "best"} <= set(state)
    assert {"torch", "data", "numpy", "python"} <= set(state["rng"])


def test_geometry_bank_is_in_the_checkpoint(small_teacher):
    train.train_student(small_teacher, "geometry", seed=0, progress=False)
    state = torch.load(small_teacher.student_dir("geometry", 0) / "last.pt", weights_only=True)
    bank = state["model"]["methods"]["0.bank"]
    assert bank.shape == (10, 32) and bank.abs().sum() > 0
    assert state["model"]["methods"]["0.seen"].all()


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        (
            {"methods": ["distill"]},
            "unknown method 'distill'; valid methods: baseline, cc, dkd, feature, geometry",
        ),
        ({"student": "vgg8"}, "unknown model 'vgg8'; valid models: resnet14"),
        ({"teacher": "wrn40"}, "unknown model 'wrn40'"),
        ({"dataset": "imagenet"}, "unknown dataset 'imagenet'; valid datasets: cifar10, cifar100, digits"),
        ({"optimizer": "adam"}, "unknown optimizer 'adam'; valid optimizers: sgd, adamw"),
        ({"method_args": {"kd": {"temperature": 0}}}, "kd temperature must be a finite number > 0, got 0"),
        ({"method_args": {"kd": {"temperature": -2.0}}}, "got -2.0"),
        (
            {"method_args": {"geometry": {"weight": -1}}},
            "geometry weight must be a finite number >= 0, got -1",
        ),
        (
            {"method_args": {"feature": {"beta": float("nan")}}},
            "feature beta must be a finite number >= 0, got nan",
        ),
        ({"method_args": {"rkd": {"angle_weight": float("inf")}}}, "rkd angle_weight must be a finite"),
        ({"method_args": {"geometry": {"momentum": 1.0}}}, "geometry momentum must be in [0, 1), got 1.0"),
        ({"momentum": 1.5}, "momentum must be in [0, 1), got 1.5"),
        ({"momentum": -0.1}, "momentum must be in [0, 1), got -0.1"),
        ({"lr": 0}, "lr must be a finite number > 0, got 0"),
        ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"val_fraction": 0}, "val_fraction must be in (0, 1)"),
        (
            {"method_args": {"kd": {"tau": 4}}},
            "method 'kd' has no argument tau; accepted: temperature, alpha",
        ),
        ({"method_args": {"fitnet": {}}}, "unknown method 'fitnet'"),
        ({"method_args": {"kd": 5}}, "the arguments of 'kd' must be a mapping of name to value"),
        ({"method_args": {"kd": [1]}}, "got [1]"),
        ({"nesterov": "maybe"}, "nesterov must be true or false, got 'maybe' (with papermill -p, write True"),
        ({"download": "false"}, "download must be true or false, got 'false'"),
        ({"compile": 1}, "compile must be true or false, got 1"),
        ({"use_sweep_best": "yes"}, "use_sweep_best must be true or false"),
        # torch refuses Nesterov without momentum, but only when the optimiser is built
        ({"momentum": 0}, "nesterov needs a momentum above 0, got momentum 0; set nesterov: false"),
        ({"device": 3}, "device must be one of auto, cpu, cuda, cuda:N or mps; got 3"),
        ({"device": "cuda:abc"}, "unknown device 'cuda:abc'; valid devices: auto, cpu, cuda"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"data_root": 5}, "data_root must be a folder path, got 5"),
        ({"figures_dir": ["a", "b"]}, "figures_dir must be a folder path, got ('a', 'b')"),
    ],
)
def test_bad_profile_values_are_refused_before_training(override, fragment, tmp_path):
    with pytest.raises((ConfigError, ValueError, UnknownNameError)) as error:
        config.resolve("demo", runs_dir=str(tmp_path / "runs"), **override)
    assert fragment in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_unknown_profile_and_parameter(tmp_path):
    with pytest.raises(
        ConfigError,
        match="unknown profile 'papr'; valid profiles: cifar10-compare, cifar10-cpu, demo, full, paper",
    ):
        config.resolve("papr")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: digits\nepocs: 3\n")
    with pytest.raises(ConfigError, match="unknown parameter epocs; valid parameters: profile, dataset"):
        config.resolve(bad)


def test_model_that_does_not_fit_the_dataset_is_refused():
    data = load_dataset("digits")
    with pytest.raises(
        ValueError, match="the student has 100 classes and 1 input channels, but digits has 10"
    ):
        train.check_model_fits(build_model("resnet8", 100, 1), data, "student")
    with pytest.raises(
        ValueError,
        match="the teacher has 10 classes and 3 input channels, but digits has 10 classes and 1 channels",
    ):
        train.check_model_fits(build_model("resnet8", 10, 3), data, "teacher")


def test_teacher_trained_on_another_dataset_is_refused(small_teacher, image_folder):
    cfg = small_teacher.replace(dataset="imagefolder", data_root=str(image_folder[0]), val_fraction=0.25)
    # The student refuses before loading any data: the teacher's recorded parameters differ.
    with pytest.raises(
        RunExistsError, match=r"teacher on disk does not match.*differing: dataset, val_fraction"
    ):
        train.train_student(cfg, "kd", seed=0, progress=False)
    # Loading the checkpoint against other data names both sides.
    data = train.load_data(cfg)
    with pytest.raises(
        ValueError,
        match="was trained on digits .*10 classes, 1 channels.*imagefolder "
        r"\(3 classes, 3 channels\)",
    ):
        train.load_teacher(cfg, data, torch.device("cpu"))


def test_unwritable_output_folder_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match=f"cannot write to the output folder {blocker / 'runs'}"):
        ensure_writable(blocker / "runs")
    cfg = config.resolve("demo", runs_dir=str(blocker / "runs"))
    with pytest.raises(PermissionError, match="cannot write to the output folder"):
        pipeline.run_pipeline(cfg, echo=lambda line: None)
    assert pipeline.main(["--profile", "demo", "--out", str(blocker / "runs")]) == 2


class Explodes(Method):
    """explodes: a test method whose term turns NaN at the second epoch's third step."""

    needs_teacher = False

    def __init__(self, context):
        super().__init__()
        self.epoch, self.step = 0, 0

    def set_epoch(self, epoch):
        self.epoch, self.step = epoch, 0

    def terms(self, student, teacher, labels):
        self.step += 1
        value = float("nan") if (self.epoch, self.step) == (1, 3) else 0.0
        return {"explodes": student.embedding.sum() * 0 + value}


@pytest.fixture
def exploding_method():
    METHODS.register("explodes")(Explodes)
    yield
    del METHODS._items["explodes"]


def test_non_finite_loss_stops_with_the_last_good_checkpoint(small_teacher, exploding_method, tmp_path):
    cfg = small_teacher.replace(runs_dir=str(tmp_path / "runs"), epochs=3)
    import shutil

    shutil.copytree(small_teacher.teacher_dir, cfg.teacher_dir)
    with pytest.raises(FloatingPointError) as error:
        train.train_student(cfg, "explodes", seed=0, progress=False)
    message = str(error.value)
    assert "non-finite loss at epoch 2, step 3/20" in message
    assert "explodes = nan" in message and "ce = " in message
    folder = cfg.student_dir("explodes", 0)
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1
    assert len(metrics(folder)) == 1 and not (folder / "summary.json").exists()


def test_results_are_not_overwritten_without_force(small_teacher, tmp_path):
    cfg = small_teacher.replace(runs_dir=str(tmp_path / "runs"))
    first = train.train_teacher(cfg, progress=False)
    changed = cfg.replace(teacher_epochs=3)
    with pytest.raises(RunExistsError, match="other parameters \\(differing: epochs\\).*--force"):
        train.train_teacher(changed, progress=False)
    assert json.loads((cfg.teacher_dir / "summary.json").read_text()) == first
    with pytest.raises(RunExistsError, match="differing: epochs"):
        pipeline.run_pipeline(changed, echo=lambda line: None)  # refused before any step runs
    forced = train.train_teacher(changed, force=True, progress=False)
    assert forced["epochs"] == 3 and len(metrics(cfg.teacher_dir)) == 3


def test_missing_teacher_centroids_are_computed_again(small_teacher, tmp_path):
    import shutil

    cfg = small_teacher.replace(runs_dir=str(tmp_path / "runs"))
    shutil.copytree(small_teacher.teacher_dir, cfg.teacher_dir)
    original = torch.load(cfg.teacher_dir / "centroids.pt", weights_only=True)["centroids"]
    (cfg.teacher_dir / "centroids.pt").unlink()
    train.train_teacher(cfg, progress=False)
    assert torch.allclose(
        torch.load(cfg.teacher_dir / "centroids.pt", weights_only=True)["centroids"], original
    )
    assert len(metrics(cfg.teacher_dir)) == 2  # not retrained


def test_exponent_numbers_written_without_a_dot_are_numbers(tmp_path):
    # PyYAML reads 5e-4 (no dot) as the string "5e-4"; a researcher means the number.
    profile = tmp_path / "exp.yaml"
    profile.write_text(
        "dataset: digits\nweight_decay: 5e-4\nlr: 1e-1\nmethod_args: {geometry: {weight: 3e1}}\n"
        "sweep_weights: [0, 1e2]\n"
    )
    cfg = config.resolve(profile)
    assert (cfg.weight_decay, cfg.lr, cfg.sweep_weights) == (5e-4, 0.1, (0, 100.0))
    assert cfg.method_args == {"geometry": {"weight": 30.0}}
    with pytest.raises(ConfigError, match="lr must be a finite number > 0, got 'fast'"):
        config.resolve(profile, lr="fast")


# ----------------------------------------------------------------------------- found by a newcomer


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"seeds": 3}, "seeds must be a list, for example [0, 1, 2]; got 3"),
        ({"methods": "kd"}, "methods must be a list, for example [baseline, kd]; got 'kd'"),
        ({"sweep_weights": 10}, "sweep_weights must be a list"),
        ({"seeds": [0, 0]}, "seeds lists a value twice: [0, 0]"),
        ({"methods": ["kd", "kd"]}, "methods lists the same arm twice: 'kd' and 'kd'"),
        ({"methods": ["kd+geometry", "geometry+kd"]}, "the same arm twice: 'kd+geometry' and 'geometry+kd'"),
        ({"methods": ["baseline+geometry"]}, "baseline adds no term"),
        ({"methods": ["geometry+"]}, "has an empty name"),
        (
            {"sweep_weights": [0], "use_sweep_best": True},
            "use_sweep_best needs a lambda sweep with a weight above 0",
        ),
    ],
)
def test_malformed_lists_and_names_are_refused(override, fragment):
    with pytest.raises((ConfigError, ValueError)) as error:
        config.resolve("demo", **override)
    assert fragment in str(error.value)


def test_a_profile_name_that_is_a_path_is_refused(tmp_path):
    # The name becomes runs/<profile> and figures/<profile>; '..' would write outside them.
    profile = tmp_path / "mine.yaml"
    profile.write_text("profile: ../escaped\ndataset: digits\n")
    with pytest.raises(ConfigError, match="profile name '../escaped' names folders"):
        config.resolve(profile)
    with pytest.raises(ConfigError, match="profile name 'a/b' names folders"):
        config.resolve("demo").replace(profile="a/b")
    spaced = tmp_path / "my study.yaml"
    spaced.write_text("dataset: digits\n")
    with pytest.raises(ConfigError, match="profile name 'my study' names folders"):
        config.resolve(spaced)


def test_whitespace_in_a_method_spec_names_one_arm():
    cfg = config.resolve("demo", methods=[" kd + geometry", "baseline"])
    assert cfg.methods == ("kd+geometry", "baseline")
    run = train.student_run(cfg, "kd+geometry", 0)
    assert run.folder.name == "seed0" and run.folder.parent.name == "kd+geometry"


def test_invalid_yaml_profile_names_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("methods: [kd\nepochs: 2\n")
    with pytest.raises(ConfigError, match=f"profile {broken} is not valid YAML"):
        config.resolve(broken)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        (
            {"train_subset": 100000},
            "train_subset must be a whole number from 10 (one image per class) to 1427",
        ),
        ({"test_subset": 3}, "test_subset must be a whole number from 10"),
        ({"train_subset": 0}, "got 0"),
        ({"train_subset": 40, "val_fraction": 0.1}, "gives 4 validation and 36 training images"),
    ],
)
def test_subsets_too_small_or_large_name_the_parameter(kwargs, fragment):
    with pytest.raises(ValueError) as error:
        load_dataset("digits", **kwargs)
    assert fragment in str(error.value)


def test_sweep_best_weight_is_never_zero():
    import pandas as pd

    from gkd_lib.sweep import best_weight

    table = pd.DataFrame(
        {
            "weight": [0.0, 3.0, 30.0],
            "centroids": ["running"] * 3,
            "val_top1": [50.0, 48.0, 47.0],
            "test_top1": [49.0, 47.0, 45.0],
        }
    )
    assert best_weight(table)["weight"] == 3.0  # weight 0 has the best accuracy, but is the reference
    with pytest.raises(ValueError, match="no finished run with a weight above 0"):
        best_weight(table[table["weight"] == 0])


def test_student_refuses_a_teacher_made_with_other_parameters(small_teacher):
    other = small_teacher.replace(teacher_epochs=5)  # the teacher on disk has 2 epochs
    with pytest.raises(
        RunExistsError, match="the teacher on disk does not match this profile.*differing: epochs"
    ):
        train.train_student(other, "kd", seed=0, progress=False)


def test_untrained_teacher_is_named(tmp_path):
    cfg = config.resolve("demo", runs_dir=str(tmp_path / "runs"))
    with pytest.raises(FileNotFoundError, match="has not finished training; train it first"):
        train.train_student(cfg, "kd", seed=0, progress=False)


def test_results_are_readable_by_others(small_teacher):
    for name in ("summary.json", "config.json", "best.pt", "last.pt"):
        assert (small_teacher.teacher_dir / name).stat().st_mode & 0o777 == 0o644, name


def test_image_data_prints_a_summary():
    assert repr(load_dataset("digits")) == (
        "ImageData(digits: 1437 train, 0 validation, 360 test images of 1x8x8, 10 classes)"
    )


def test_momentum_zero_is_accepted_without_nesterov():
    cfg = config.resolve("demo", momentum=0, nesterov=False, device="cuda:1")
    assert (cfg.momentum, cfg.nesterov, cfg.device) == (0, False, "cuda:1")


def test_force_given_as_text_is_refused_before_anything_is_cleared(small_teacher):
    # papermill's `-p force false` arrives as the text 'false', which Python takes as true.
    with pytest.raises(ConfigError, match="force must be true or false, got 'false' \\(with papermill"):
        config.from_notebook({"profile": "demo", "force": "false"})
    summary = (small_teacher.teacher_dir / "summary.json").read_text()
    with pytest.raises(ConfigError, match="force must be true or false, got 'false'"):
        train.train_teacher(small_teacher, force="false", progress=False)
    assert (small_teacher.teacher_dir / "summary.json").read_text() == summary
    assert len(metrics(small_teacher.teacher_dir)) == 2


def test_a_run_that_never_finished_an_epoch_does_not_block_its_corrected_rerun(small_teacher, tmp_path):
    cfg = small_teacher.replace(runs_dir=str(tmp_path / "runs"), lr=1.0)
    run = train.teacher_run(cfg)
    run.folder.mkdir(parents=True)
    (run.folder / "config.json").write_text(json.dumps({"run": {**run.params, "lr": 2.0}}))
    assert train.run_state(run) == "new"  # nothing trained there: no result to protect
    summary = train.train_teacher(cfg, progress=False)
    assert summary["epochs"] == 2
    assert json.loads((run.folder / "config.json").read_text())["run"]["lr"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"seed": "abc"}, "seed must be a whole number >= 0, got 'abc'"),
        ({"seed": -1}, "seed must be a whole number >= 0, got -1"),
        ({"seed": 0, "run_name": "../../escape"}, "run_name '../../escape' names folders"),
        ({"seed": 0, "run_name": "a/b"}, "run_name 'a/b' names folders"),
    ],
)
def test_student_seed_and_run_name_are_checked(small_teacher, kwargs, fragment):
    with pytest.raises(ConfigError) as error:
        train.train_student(small_teacher, "kd", progress=False, **kwargs)
    assert fragment in str(error.value)
    assert not (small_teacher.profile_dir.parent / "escape").exists()


def test_the_sweep_run_names_are_valid_folder_names():
    from gkd_lib.sweep import point_name

    for name in (point_name("running", 0), point_name("batch", 0.5), point_name("running", 1e6)):
        assert config.check_folder_name("run_name", name, "runs") == name


def test_command_line_null_unsets_a_profile_value_and_download_is_a_flag():
    args = pipeline.build_parser().parse_args(["--profile", "cifar10-cpu", "--set", "train_subset=null"])
    assert config.resolve("cifar10-cpu").train_subset == 10000
    assert pipeline.config_from_args(args).train_subset is None
    args = pipeline.build_parser().parse_args(["--profile", "paper", "--download"])
    assert pipeline.config_from_args(args).download is True
    assert pipeline.main(["--profile", "demo", "--set", "epochs=null", "--dry-run"]) == 2
