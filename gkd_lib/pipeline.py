"""The whole study of one profile, headless: the numbered notebooks run by papermill.

    python -m gkd_lib.pipeline --profile demo
    python -m gkd_lib.pipeline --profile cifar10-cpu --data-root ../shared/data/cifar10-jpeg
    python -m gkd_lib.pipeline --profile paper --dry-run

Order: the teacher once (01); the lambda sweep when the profile has one (02 per grid
point, then 05); one student run per method and seed (02); the geometry analysis
(03); the report (04), rendered to HTML at the end. Every executed notebook is kept
under runs/<profile>/notebooks/. A step whose results exist is skipped unless
--force; a failure stops the pipeline and names the executed notebook to open.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gkd_lib import config as config_module
from gkd_lib.config import FIELDS, REPO_ROOT, Config, ConfigError
from gkd_lib.runs import RunExistsError, atomic_write_bytes, ensure_writable, locked

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = {
    "teacher": "01_train_teacher.ipynb",
    "student": "02_distill_student.ipynb",
    "analysis": "03_geometry_analysis.ipynb",
    "report": "04_report.ipynb",
    "sweep": "05_lambda_sweep.ipynb",
}
STAGES = ("teacher", "sweep", "students", "analysis", "report")


class StepFailed(RuntimeError):
    """A notebook failed; the message names the executed notebook to open."""


@dataclass
class Step:
    stage: str
    label: str
    notebook: str
    output: Path
    parameters: dict
    is_done: Callable[[], bool] = field(repr=False)
    run: object | None = None  # the training run of a 01/02 step


def notebook_parameters(notebook: str | Path) -> dict:
    """The parameters a notebook's `parameters` cell defines (name -> papermill's description)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def execute(
    notebook: str | Path,
    output: str | Path,
    parameters: dict,
    *,
    kernel: str = "python3",
    log_output: bool = False,
) -> None:
    """Run one notebook with papermill, refusing parameters that it does not define."""
    import papermill

    defined = notebook_parameters(notebook)
    unknown = sorted(set(parameters) - set(defined))
    if unknown:
        raise ConfigError(
            f"notebook {Path(notebook).name} does not define the parameter(s) "
            f"{', '.join(unknown)}; it defines: {', '.join(defined)}"
        )
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=parameters,
        kernel_name=kernel,
        progress_bar=False,
        log_output=log_output,
        cwd=str(REPO_ROOT),
        # The kernel's own log would clutter the step lines: a start-up warning, and at shutdown
        # "KeyboardInterrupt caught in kernel" (jupyter_client interrupts a kernel before shutting
        # it down), which looks like a failure and is not one. An error in a cell still fails the
        # step, with its traceback in the executed notebook. Progress bars would clutter the
        # executed notebooks: each epoch's summary line says what a bar would.
        extra_arguments=[
            "--IPKernelApp.log_level=CRITICAL",
            "--IPKernelApp.exec_lines=import os; os.environ['TQDM_DISABLE'] = '1'",
        ],
    )


# ----------------------------------------------------------------------------- the plan


def _newer(outputs: list[Path], inputs: list[Path]) -> bool:
    """Whether every output exists and is no older than every existing input."""
    if not all(path.exists() for path in outputs):
        return False
    oldest = min(path.stat().st_mtime for path in outputs)
    return all(path.stat().st_mtime <= oldest for path in inputs if path.exists())


def snapshot_path(cfg: Config) -> Path:
    """The resolved profile that the pipeline hands to every notebook (written when it runs)."""
    return cfg.profile_dir / "profile.yaml"


def _base_parameters(cfg: Config, force: bool) -> dict:
    # Every parameter is passed, so each executed notebook shows them all in its injected cell;
    # `profile` points at the resolved snapshot, so overrides given on the command line hold too.
    parameters = cfg.to_dict()
    parameters["profile"] = str(snapshot_path(cfg))
    parameters["force"] = force
    return parameters


def _training_done(run, force: bool) -> bool:
    from gkd_lib.train import run_state

    return not force and run_state(run) == "done"


def teacher_steps(cfg: Config, force: bool) -> list[Step]:
    from gkd_lib.train import teacher_run

    run = teacher_run(cfg)
    done = lambda: _training_done(run, force) and (run.folder / "centroids.pt").exists()  # noqa: E731
    return [
        Step(
            "teacher",
            f"01 teacher {cfg.teacher}",
            NOTEBOOKS["teacher"],
            cfg.profile_dir / "notebooks" / "01_train_teacher.ipynb",
            _base_parameters(cfg, force),
            done,
            run,
        )
    ]


def student_steps(cfg: Config, force: bool, arms=None) -> list[Step]:
    """One 02 step per (arm, seed); `arms` is a list of (run name, method, method_args)."""
    from gkd_lib.train import student_run

    if arms is None:
        arms = [(spec, spec, cfg.method_args) for spec in cfg.methods]
    steps = []
    for run_name, method, method_args in arms:
        for seed in cfg.seeds if not run_name.startswith("sweep-") else cfg.seeds[:1]:
            run = student_run(cfg, method, seed, run_name, method_args)
            parameters = {
                **_base_parameters(cfg, force),
                "method_args": method_args,
                "method": method,
                "seed": seed,
                "run_name": run_name,
            }
            steps.append(
                Step(
                    "students",
                    f"02 student {run_name} seed {seed}",
                    NOTEBOOKS["student"],
                    cfg.profile_dir / "notebooks" / f"02_distill_student-{run_name}-seed{seed}.ipynb",
                    parameters,
                    lambda run=run: _training_done(run, force),
                    run,
                )
            )
    return steps


def sweep_steps(cfg: Config, force: bool) -> list[Step]:
    """One 02 step per grid point of the lambda sweep."""
    from gkd_lib.sweep import sweep_points

    steps = student_steps(cfg, force, [(name, "geometry", args) for name, args in sweep_points(cfg)])
    for step in steps:
        step.stage = "sweep"
    return steps


def sweep_analysis_steps(cfg: Config, force: bool) -> list[Step]:
    """05, once every grid point has trained."""
    from gkd_lib.sweep import sweep_points

    if not cfg.sweep_weights:
        return []
    summaries = [cfg.student_dir(name, cfg.seeds[0]) / "summary.json" for name, _ in sweep_points(cfg)]
    outputs = [cfg.profile_dir / "sweep" / "sweep.csv", cfg.profile_dir / "sweep" / "best.json"]
    return [
        Step(
            "sweep",
            "05 lambda sweep",
            NOTEBOOKS["sweep"],
            cfg.profile_dir / "notebooks" / "05_lambda_sweep.ipynb",
            _base_parameters(cfg, force),
            lambda: not force and _newer(outputs, summaries),
        )
    ]


def _covers(table: Path, cfg: Config, teacher: bool) -> bool:
    """Whether a results table holds exactly the profile's finished runs (arms removed since count)."""
    import pandas as pd

    from gkd_lib.analysis import student_runs

    runs = student_runs(cfg)
    frame = pd.read_csv(table)
    if teacher:  # geometry.csv: one row per run
        expected = {("teacher", cfg.teacher_seed)} | {(run.arm, run.seed) for run in runs}
        return set(zip(frame["arm"], frame["seed"], strict=True)) == expected
    return list(frame["arm"]) == ["teacher", *dict.fromkeys(run.arm for run in runs)]


def _summaries(cfg: Config) -> list[Path]:
    return [cfg.teacher_dir / "summary.json"] + [
        cfg.student_dir(arm, seed) / "summary.json" for arm in cfg.methods for seed in cfg.seeds
    ]


def analysis_steps(cfg: Config, force: bool) -> list[Step]:
    output = cfg.profile_dir / "analysis" / "geometry.csv"
    return [
        Step(
            "analysis",
            "03 geometry analysis",
            NOTEBOOKS["analysis"],
            cfg.profile_dir / "notebooks" / "03_geometry_analysis.ipynb",
            _base_parameters(cfg, force),
            lambda: not force and _newer([output], _summaries(cfg)) and _covers(output, cfg, teacher=True),
        )
    ]


def report_steps(cfg: Config, force: bool) -> list[Step]:
    outputs = [cfg.figure_dir / "results.md", cfg.figure_dir / "results.csv"]
    inputs = _summaries(cfg) + [
        cfg.profile_dir / "analysis" / "geometry.csv",
        cfg.profile_dir / "sweep" / "sweep.csv",
    ]
    return [
        Step(
            "report",
            "04 report",
            NOTEBOOKS["report"],
            cfg.profile_dir / "notebooks" / "04_report.ipynb",
            _base_parameters(cfg, force),
            lambda: not force and _newer(outputs, inputs) and _covers(outputs[1], cfg, teacher=False),
        )
    ]


def plan(cfg: Config, force: bool = False) -> list[tuple[str, list[Step]]]:
    """Every step of the study as (stage, steps) phases, in order.

    The steps of one phase are independent of each other (they may run at the same time);
    each phase needs the ones before it. Students use the sweep's best weight when asked to.
    """
    from gkd_lib.sweep import best_path, with_best_weight

    students_cfg = cfg
    if cfg.use_sweep_best and best_path(cfg).exists():
        students_cfg = with_best_weight(cfg)
    return [
        ("teacher", teacher_steps(cfg, force)),
        ("sweep", sweep_steps(cfg, force)),
        ("sweep", sweep_analysis_steps(cfg, force)),
        ("students", student_steps(students_cfg, force)),
        ("analysis", analysis_steps(cfg, force)),
        ("report", report_steps(cfg, force)),
    ]


# ----------------------------------------------------------------------------- running


def _run_step(step: Step, kernel: str, log_output: bool, device: str | None = None) -> float:
    parameters = dict(step.parameters)
    if device is not None:
        parameters["device"] = device
    started = time.perf_counter()
    try:
        execute(NOTEBOOKS_DIR / step.notebook, step.output, parameters, kernel=kernel, log_output=log_output)
    except ConfigError:
        raise
    except Exception as error:
        import papermill

        reason = (
            error.ename + ": " + error.evalue
            if isinstance(error, papermill.PapermillExecutionError)
            else f"{type(error).__name__}: {error}"
        )
        raise StepFailed(
            f"{step.label} failed after {time.perf_counter() - started:.1f} s: {reason}\n"
            f"Open the executed notebook to see where: {step.output}"
        ) from None
    return time.perf_counter() - started


def _line(status: str, label: str, seconds: float | None, where: Path) -> str:
    duration = "" if seconds is None else f"{seconds:8.1f} s"
    return f"[{status:>4s}] {label:<44s} {duration:>10s}   {where}"


def run_stage(
    steps: list[Step],
    *,
    kernel: str,
    devices: list[str] | None,
    log_output: bool,
    echo=print,
    tolerate: Callable[[Step], bool] = lambda step: False,
) -> None:
    """Run the steps that are not done; `tolerate(step)` lets a failed step be reported and passed."""
    pending = []
    for step in steps:
        if step.is_done():
            echo(_line("skip", step.label, None, step.output))
        else:
            pending.append(step)
    if not pending:
        return

    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:  # runs on several devices finish at any time: one line at a time
            echo(line)

    def attempt(step: Step, device: str | None, parallel: bool = False) -> None:
        say(_line("run", step.label + (f" on {device}" if parallel else ""), None, step.output))
        try:
            say(_line("ok", step.label, _run_step(step, kernel, log_output, device), step.output))
        except StepFailed as error:
            if not tolerate(step):
                raise
            say(_line("fail", step.label, None, step.output) + f"\n       {str(error).splitlines()[0]}")

    if not devices or len(devices) < 2 or len(pending) < 2:
        for step in pending:
            attempt(step, devices[0] if devices else None)
        return

    # Independent student runs, one per device at a time.
    free: queue.Queue[str] = queue.Queue()
    for device in devices:
        free.put(device)

    def work(step: Step) -> None:
        device = free.get()
        try:
            attempt(step, device, parallel=True)
        finally:
            free.put(device)

    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        futures = [pool.submit(work, step) for step in pending]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:  # the runs not started yet are dropped; those running finish
                future.cancel()
            raise


def render_html(notebook: Path, output: Path) -> Path:
    import nbconvert
    import nbformat

    exporter = nbconvert.HTMLExporter()
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    output.write_text(body)
    return output


def run_pipeline(
    cfg: Config,
    *,
    only: str | None = None,
    force: bool = False,
    kernel: str = "python3",
    devices: list[str] | None = None,
    log_output: bool = False,
    echo=print,
) -> Path | None:
    """Run the study of `cfg`; returns the HTML report (None when the report did not run)."""
    ensure_writable(cfg.profile_dir)
    ensure_writable(cfg.figure_dir, "figures_dir, --figures")
    _check_devices(cfg, devices, echo)
    devices = devices or _cpu_workers(cfg, echo)
    with locked(cfg.profile_dir, "pipeline"):
        started = time.perf_counter()
        _check_existing_runs(cfg, force)
        if not cfg.download and any(not step.is_done() for _, steps in plan(cfg, force) for step in steps):
            from gkd_lib.datasets import check_present

            check_present(cfg.dataset, cfg.resolved_data_root)  # before a kernel starts, not inside 01
        snapshot = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        atomic_write_bytes(snapshot_path(cfg), lambda handle: handle.write(snapshot.encode()))
        stages = [only] if only else list(STAGES)
        planned = 0
        for index, (stage, _) in enumerate(plan(cfg, force)):
            if stage not in stages:
                continue
            # Planned phase by phase: the students may depend on the sweep's result.
            steps = plan(cfg, force)[index][1]
            planned += len(steps)
            # A sweep point that diverges (a weight too large) is a result, not a reason to stop.
            run_stage(
                steps,
                kernel=kernel,
                devices=devices,
                log_output=log_output,
                echo=echo,
                tolerate=lambda step: step.stage == "sweep" and step.notebook == NOTEBOOKS["student"],
            )
        if only and not planned:
            echo(
                f"[none] stage {only!r} has no steps in profile {cfg.profile}"
                + (" (its sweep_weights is empty)" if only == "sweep" else "")
            )
        html = None
        if "report" in stages:
            html = render_html(
                cfg.profile_dir / "notebooks" / "04_report.ipynb", cfg.profile_dir / "report.html"
            )
        echo(
            f"done in {time.perf_counter() - started:.1f} s. Figures and results: {cfg.figure_dir}"
            + (f"; report: {html}" if html else "")
        )
        return html


def _check_devices(cfg: Config, devices: list[str] | None, echo) -> None:
    """Refuse --devices that do not exist here; warn when the profile asks for CUDA on a machine without."""
    import torch

    for device in devices or []:
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ConfigError(
                f"--devices: {device!r} is not a device; use names such as cpu, cuda:0, cuda:1"
            ) from None
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--devices {device}: CUDA is not available on this machine")
        if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
            raise ConfigError(
                f"--devices {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        echo(
            f"warning: the profile asks for device {cfg.device!r}, but CUDA is not available: "
            "every run will train on the CPU"
        )


def _cpu_workers(cfg: Config, echo) -> list[str] | None:
    """On the CPU, a profile that fixes `threads` per run gets as many runs at a time as fit the cores."""
    from gkd_lib.train import select_device

    if not cfg.threads or select_device(cfg.device).type != "cpu":
        return None
    workers = max(1, (os.cpu_count() or 1) // cfg.threads)
    if workers < 2:
        return None
    echo(f"CPU: up to {workers} student runs at a time, {cfg.threads} thread(s) each")
    return ["cpu"] * workers


def _check_existing_runs(cfg: Config, force: bool) -> None:
    """Refuse, before anything runs, training steps whose folders hold runs with other parameters."""
    if force:
        return
    from gkd_lib.train import run_state

    problems = []
    for _, steps in plan(cfg):
        for step in steps:
            if step.run is None:
                continue
            try:
                run_state(step.run)
            except RunExistsError as error:
                problems.append(str(error))
    if problems:
        raise RunExistsError("\n".join(problems))


# ----------------------------------------------------------------------------- dry run


def dry_run(cfg: Config, echo=print, only: str | None = None) -> list[Step]:
    """Resolve every step's parameters and build every model and method, without training.

    A forward pass of two dummy images through each distiller checks the shapes, so a
    profile meant for a GPU box (paper, full) can be checked on any machine.
    """
    import torch

    from gkd_lib.datasets import check_subset, check_validation_split, data_present, describe
    from gkd_lib.distiller import Distiller
    from gkd_lib.methods import MethodContext, build_methods
    from gkd_lib.models import build_model, count_parameters

    num_classes, channels, size, train_images, test_images = describe(cfg.dataset, cfg.resolved_data_root)
    if cfg.train_subset is not None:
        check_subset("train_subset", cfg.train_subset, train_images, num_classes)
        train_images = cfg.train_subset
    if cfg.test_subset is not None:
        check_subset("test_subset", cfg.test_subset, test_images, num_classes)
    check_validation_split(cfg.val_fraction, train_images, num_classes)
    echo(
        f"dataset {cfg.dataset}: {num_classes} classes, {channels}x{size}x{size}, "
        f"{train_images} training images"
    )
    if not data_present(cfg.dataset, cfg.resolved_data_root):
        echo(
            f"warning: no {cfg.dataset} files under {cfg.resolved_data_root}; "
            + (
                "a real run downloads them there (download is on)"
                if cfg.download
                else "a real run needs them there (--data-root, GKD_DATA_ROOT, "
                "or --download where a network exists)"
            )
        )
    teacher = build_model(cfg.teacher, num_classes, channels, cfg.teacher_width).eval()
    echo(f"teacher {cfg.teacher}: {count_parameters(teacher):,} parameters")
    steps = [step for stage, phase in plan(cfg) if only in (None, stage) for step in phase]
    images = torch.randn(2, channels, size, size)
    labels = torch.tensor([0, 1 % num_classes])
    with torch.no_grad():
        teacher_embedding, _ = teacher(images)
    centroids = torch.randn(num_classes, teacher_embedding.shape[1])
    for step in steps:
        defined = notebook_parameters(NOTEBOOKS_DIR / step.notebook)
        unknown = sorted(set(step.parameters) - set(defined))
        if unknown:
            raise ConfigError(f"{step.notebook} does not define the parameter(s) {', '.join(unknown)}")
        if step.stage in ("students", "sweep") and "method" in step.parameters:
            student = build_model(cfg.student, num_classes, channels, cfg.student_width)
            context = MethodContext(num_classes, student.embedding_dim, teacher.embedding_dim, centroids)
            methods = build_methods(step.parameters["method"], step.parameters["method_args"], context)
            distiller = Distiller(student, methods, teacher).train()
            _, terms = distiller(images, labels)
            detail = f"{count_parameters(student):,} parameters, terms: {', '.join(terms)}"
        else:
            detail = "parameters resolved"
        echo(_line("dry", step.label, None, Path(f"{detail}")))
    echo(f"dry run: {len(steps)} steps resolved for profile {cfg.profile}; nothing was trained")
    return steps


# ----------------------------------------------------------------------------- command line


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        if key not in FIELDS:
            raise ConfigError(f"--set: unknown parameter {key!r}; valid parameters: {', '.join(FIELDS)}")
        try:
            overrides[key] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({error})") from None
    return overrides


def config_from_args(args: argparse.Namespace) -> Config:
    """The profile with the command line's overrides; paths given there are relative to the cwd."""
    overrides = _parse_set(args.set)
    if args.data_root:
        overrides["data_root"] = str(Path(args.data_root).resolve())
    if args.out:
        overrides["runs_dir"] = str(Path(args.out).resolve())
        # Runs written elsewhere must not overwrite the repository's committed figures.
        overrides.setdefault("figures_dir", str(Path(args.out).resolve() / "figures"))
    if args.figures:
        overrides["figures_dir"] = str(Path(args.figures).resolve())
    if args.download:
        overrides["download"] = True
    cfg = config_module.resolve(args.profile, **overrides)
    # resolve() reads None as "the profile's value"; --set KEY=null means "not set" (train_subset=null).
    unset = {key: None for key, value in overrides.items() if value is None}
    return cfg.replace(**unset) if unset else cfg


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gkd_lib.pipeline",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--profile",
        default="demo",
        help=f"a profile name ({', '.join(config_module.profile_names())}) or a YAML path",
    )
    parser.add_argument(
        "--data-root", help="folder of the dataset (else the profile's, $GKD_DATA_ROOT, data/)"
    )
    parser.add_argument(
        "--out", help="runs folder (default: runs/ at the repository root); figures then go to OUT/figures"
    )
    parser.add_argument(
        "--figures", help="figures folder (default: figures/ at the repository root, or OUT/figures)"
    )
    parser.add_argument("--only", choices=STAGES, help="run one stage only")
    parser.add_argument(
        "--download",
        action="store_true",
        help="download the dataset where a network exists (CIFAR, Fashion-MNIST)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rerun steps whose results exist (overwrites them)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="resolve every step and build every model; no training"
    )
    parser.add_argument(
        "--devices", help="comma-separated devices for parallel student runs, e.g. cuda:0,cuda:1"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a profile parameter (YAML value), e.g. --set epochs=2",
    )
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel for papermill (default python3)")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        cfg = config_from_args(args)
        devices = [d.strip() for d in args.devices.split(",")] if args.devices else None
        if args.dry_run:
            _check_devices(cfg, devices, print)
            dry_run(cfg, only=args.only)
            return 0
        run_pipeline(
            cfg,
            only=args.only,
            force=args.force,
            kernel=args.kernel,
            devices=devices,
            log_output=args.log_output,
        )
    except StepFailed as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: started again with the same parameters, each run resumes from its last checkpoint",
            file=sys.stderr,
        )
        return 130
    except (
        ConfigError,
        FileNotFoundError,
        PermissionError,
        RunExistsError,
        RuntimeError,
        ValueError,
        KeyError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    sys.exit(main())
