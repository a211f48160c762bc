"""The pipeline: a tiny profile end to end through papermill with a real kernel, skips, dry runs."""

from __future__ import annotations

import json
import math
import re

import nbformat
import pandas as pd
import pytest
import torch
import yaml
from conftest import SHARED_DATA

from gkd_lib import config, pipeline
from gkd_lib.config import FIELDS, ConfigError
from gkd_lib.runs import RunLockedError, locked
from gkd_lib.sweep import sweep_points

TINY = {
    "profile": "tiny",
    "dataset": "digits",
    "teacher": "resnet8",
    "student": "resnet8",
    "student_width": 0.5,
    "methods": ["baseline", "kd+geometry"],
    "seeds": [0, 1],
    "epochs": 2,
    "teacher_epochs": 3,
    "sweep_weights": [0, 30],
    "sweep_centroids": ["running"],
    "umap_points": 200,
    "threads": 1,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny profile, run once through the pipeline; returns (cfg, printed lines)."""
    folder = tmp_path_factory.mktemp("tiny")
    profile = folder / "tiny.yaml"
    profile.write_text(
        yaml.safe_dump({**TINY, "runs_dir": str(folder / "runs"), "figures_dir": str(folder / "figures")})
    )
    cfg = config.resolve(profile)
    lines = []
    pipeline.run_pipeline(cfg, echo=lines.append)
    return cfg, lines


def executed(path):
    notebook = nbformat.read(str(path), as_version=4)
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    return notebook, errors


def test_tiny_profile_end_to_end(tiny):
    cfg, lines = tiny
    names = sorted(p.name for p in (cfg.profile_dir / "notebooks").glob("*.ipynb"))
    assert names == sorted(
        [
            "01_train_teacher.ipynb",
            "03_geometry_analysis.ipynb",
            "04_report.ipynb",
            "05_lambda_sweep.ipynb",
            "02_distill_student-baseline-seed0.ipynb",
            "02_distill_student-baseline-seed1.ipynb",
            "02_distill_student-kd+geometry-seed0.ipynb",
            "02_distill_student-kd+geometry-seed1.ipynb",
            "02_distill_student-sweep-w0-seed0.ipynb",
            "02_distill_student-sweep-running-w30-seed0.ipynb",
        ]
    )
    for path in (cfg.profile_dir / "notebooks").glob("*.ipynb"):
        notebook, errors = executed(path)
        assert not errors, (path.name, errors)
        assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code"), path.name
    ok = [line for line in lines if line.startswith("[  ok]")]
    assert len(ok) == 10 and all(re.search(r" \d+\.\d s   /", line) for line in ok), ok
    assert (cfg.profile_dir / "report.html").stat().st_size > 10_000


def test_tiny_profile_writes_figures(tiny):
    cfg, _ = tiny
    for name in (
        "relation_heatmaps",
        "umap",
        "centroid_correlation",
        "loss_curves",
        "val_accuracy_curves",
        "test_accuracy_curves",
        "accuracy_vs_geometry",
        "lambda_sweep",
    ):
        for extension in ("png", "pdf"):
            path = cfg.figure_dir / f"{name}.{extension}"
            assert path.is_file() and path.stat().st_size > 5_000, path


def test_tiny_profile_results_table_holds_numbers(tiny):
    cfg, _ = tiny
    table = pd.read_csv(cfg.figure_dir / "results.csv")
    assert table["arm"].tolist() == ["teacher", "baseline", "kd+geometry"]
    assert table["seeds"].tolist() == [1, 2, 2]
    for column in ("top1_best_val_mean", "top1_last_mean", "top1_best_test_paper_mean"):
        assert table[column].between(10, 100).all(), column
    students = table[table["arm"] != "teacher"]
    assert students["top1_best_val_std"].notna().all()
    assert students["centroid_pearson"].between(-1, 1).all() and students["cka"].between(0, 1).all()
    assert math.isnan(table.loc[1, "p_vs_baseline"])  # the baseline is not tested against itself
    assert 0 <= table.loc[2, "p_vs_baseline"] <= 1
    # the differences from the baseline follow from the means
    assert table.loc[2, "delta_vs_baseline"] == pytest.approx(
        table.loc[2, "top1_best_val_mean"] - table.loc[1, "top1_best_val_mean"]
    )
    markdown = (cfg.figure_dir / "results.md").read_text()
    assert re.search(r"\| kd\+geometry +\| +2 \| +\d+\.\d\d ± \d+\.\d\d +\|", markdown), markdown
    assert "±" in markdown and "paper-comparable" in markdown


def test_tiny_profile_sweep(tiny):
    cfg, _ = tiny
    sweep = pd.read_csv(cfg.profile_dir / "sweep" / "sweep.csv")
    assert sorted(sweep["weight"].tolist()) == [0, 30]
    assert sweep["centroid_pearson"].notna().all()
    best = json.loads((cfg.profile_dir / "sweep" / "best.json").read_text())
    # weight 0 is the reference, never the best: the only other point is 30
    assert best["weight"] == 30 and best["selected_on"] == "validation accuracy"
    assert best["val_top1"] == pytest.approx(sweep.loc[sweep["weight"] == 30, "val_top1"].max())


def test_second_run_skips_every_step(tiny):
    cfg, _ = tiny
    lines = []
    pipeline.run_pipeline(cfg, echo=lines.append)
    steps = [line for line in lines if line.startswith("[")]
    assert len(steps) == 10 and all(line.startswith("[skip]") for line in steps), steps


def test_a_second_pipeline_on_the_same_folder_is_refused(tiny):
    cfg, _ = tiny
    with locked(cfg.profile_dir, "pipeline"):
        with pytest.raises(RunLockedError, match="in use by another pipeline"):
            pipeline.run_pipeline(cfg, echo=lambda line: None)
        # the holder keeps its lock: a third comer is refused as well
        with pytest.raises(RunLockedError):
            with locked(cfg.profile_dir, "pipeline"):
                pass


def test_unknown_notebook_parameter_is_refused(tmp_path):
    with pytest.raises(ConfigError) as error:
        pipeline.execute(
            pipeline.NOTEBOOKS_DIR / "02_distill_student.ipynb",
            tmp_path / "out.ipynb",
            {"method": "kd", "epocs": 3},
        )
    assert "does not define the parameter(s) epocs" in str(error.value)
    assert "method" in str(error.value) and "epochs" in str(error.value)
    assert not (tmp_path / "out.ipynb").exists()


@pytest.mark.parametrize("name", sorted(pipeline.NOTEBOOKS.values()))
def test_every_notebook_takes_every_profile_parameter(name):
    defined = set(pipeline.notebook_parameters(pipeline.NOTEBOOKS_DIR / name))
    extra = {"method", "seed", "run_name"} if name.startswith("02") else set()
    assert defined == set(FIELDS) | {"force"} | extra


@pytest.mark.parametrize("name", sorted(pipeline.NOTEBOOKS.values()))
def test_committed_notebooks_carry_no_outputs(name):
    notebook = nbformat.read(str(pipeline.NOTEBOOKS_DIR / name), as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("profile", config.profile_names())
def test_dry_run_every_profile(profile, cifar10_jpeg_layout):
    overrides = {}
    if config.load_profile(profile)["dataset"] == "imagefolder":
        real = SHARED_DATA / "cifar10-jpeg"
        overrides["data_root"] = str(real if real.is_dir() else cifar10_jpeg_layout)
    cfg = config.resolve(profile, **overrides)
    before = sorted(cfg.profile_dir.rglob("*")) if cfg.profile_dir.exists() else []
    lines = []
    steps = pipeline.dry_run(cfg, echo=lines.append)
    students = len(cfg.methods) * len(cfg.seeds)
    sweep = len(sweep_points(cfg)) + (1 if cfg.sweep_weights else 0)
    assert len(steps) == 1 + sweep + students + 2
    assert lines[-1].startswith("dry run:") and "nothing was trained" in lines[-1]
    after = sorted(cfg.profile_dir.rglob("*")) if cfg.profile_dir.exists() else []
    assert after == before  # a dry run writes nothing


def test_paper_profile_is_the_papers_setting():
    cfg = config.resolve("paper")
    assert (cfg.dataset, cfg.teacher, cfg.student, cfg.epochs, cfg.batch_size) == (
        "cifar100",
        "resnet50",
        "resnet18",
        30,
        64,
    )
    assert list(cfg.methods) == ["baseline", "kd", "feature", "geometry"]
    full = config.resolve("full")
    assert (full.epochs, full.lr, full.schedule, full.milestones, full.weight_decay, len(full.seeds)) == (
        240,
        0.05,
        "step",
        (150, 180, 210),
        5e-4,
        3,
    )


def test_command_line_errors_name_what_is_accepted(capsys):
    assert pipeline.main(["--profile", "nope"]) == 2
    assert "unknown profile 'nope'; valid profiles: cifar10-compare, cifar10-cpu" in capsys.readouterr().err
    assert pipeline.main(["--profile", "demo", "--set", "epocs=3"]) == 2
    assert "unknown parameter 'epocs'" in capsys.readouterr().err
    assert pipeline.main(["--profile", "demo", "--set", "optimizer=adam", "--dry-run"]) == 2
    assert "valid optimizers: sgd, adamw" in capsys.readouterr().err


def test_sweep_grid_shares_the_weight_zero_run():
    cfg = config.resolve("demo", sweep_weights=[0, 1, 10], sweep_centroids=["running", "batch"])
    names = [name for name, _ in sweep_points(cfg)]
    assert names == ["sweep-w0", "sweep-running-w1", "sweep-running-w10", "sweep-batch-w1", "sweep-batch-w10"]
    arguments = dict(sweep_points(cfg))
    assert arguments["sweep-batch-w10"]["geometry"] == {"weight": 10.0, "centroids": "batch"}
    assert arguments["sweep-w0"]["geometry"]["weight"] == 0.0


def test_out_folder_takes_the_figures_too(tmp_path):
    args = pipeline.build_parser().parse_args(["--profile", "demo", "--out", str(tmp_path / "elsewhere")])
    cfg = pipeline.config_from_args(args)
    assert cfg.figure_dir == tmp_path / "elsewhere" / "figures" / "demo"
    assert cfg.profile_dir == tmp_path / "elsewhere" / "demo"
    args = pipeline.build_parser().parse_args(
        ["--out", str(tmp_path / "x"), "--figures", str(tmp_path / "f")]
    )
    assert pipeline.config_from_args(args).figure_dir == tmp_path / "f" / "demo"
    assert (
        pipeline.config_from_args(pipeline.build_parser().parse_args([])).figure_dir
        == config.REPO_ROOT / "figures" / "demo"
    )


def test_device_errors_before_anything_runs(capsys, tmp_path):
    assert pipeline.main(["--profile", "demo", "--devices", "gpu0", "--out", str(tmp_path)]) == 2
    assert "'gpu0' is not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert pipeline.main(["--profile", "demo", "--devices", "cuda:0", "--out", str(tmp_path)]) == 2
        assert "CUDA is not available on this machine" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "teacher").exists()
    if not torch.cuda.is_available():  # a dry run checks the devices too
        assert pipeline.main(["--profile", "demo", "--dry-run", "--devices", "cuda:7"]) == 2
        assert "CUDA is not available on this machine" in capsys.readouterr().err


def test_missing_data_is_refused_before_a_kernel_starts(tmp_path, capsys):
    arguments = ["--profile", "cifar10-cpu", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path)]
    assert pipeline.main(arguments) == 2
    assert "imagefolder not found: looked at" in capsys.readouterr().err
    assert not (tmp_path / "cifar10-cpu" / "notebooks").exists()  # no notebook was started


def test_dry_run_of_one_stage(capsys):
    assert pipeline.main(["--profile", "demo", "--dry-run", "--only", "teacher"]) == 0
    assert "dry run: 1 steps resolved for profile demo" in capsys.readouterr().out


def test_dry_run_checks_sizes_and_says_when_data_is_missing(tmp_path):
    lines = []
    pipeline.dry_run(config.resolve("paper", data_root=str(tmp_path)), echo=lines.append)
    assert any(line.startswith("warning: no cifar100 files under") for line in lines)
    with pytest.raises(ValueError, match="train_subset must be a whole number from 10"):
        pipeline.dry_run(config.resolve("demo", train_subset=100000), echo=lines.append)
    assert pipeline.main(["--profile", "demo", "--dry-run", "--set", "methods=[kd"]) == 2


def test_removing_an_arm_reruns_the_analysis_and_report(tiny):
    cfg, _ = tiny
    fewer = cfg.replace(methods=("baseline",))
    lines = []
    pipeline.run_pipeline(fewer, echo=lines.append)
    assert any(line.startswith("[  ok] 03 geometry analysis") for line in lines), lines
    assert any(line.startswith("[  ok] 04 report") for line in lines), lines
    assert pd.read_csv(cfg.figure_dir / "results.csv")["arm"].tolist() == ["teacher", "baseline"]
    assert set(pd.read_csv(cfg.profile_dir / "analysis" / "geometry.csv")["arm"]) == {"teacher", "baseline"}


def test_only_a_stage_without_steps_says_so(tiny):
    cfg, _ = tiny
    lines = []
    pipeline.run_pipeline(
        cfg.replace(sweep_weights=(), use_sweep_best=False), only="sweep", echo=lines.append
    )
    assert any("[none] stage 'sweep' has no steps" in line for line in lines), lines
