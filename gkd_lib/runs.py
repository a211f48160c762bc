"""Run folders: what a run leaves behind, written so that a crash loses little.

A run folder holds `config.json` (the resolved parameters), `environment.json`
(versions, device, git commit), `metrics.jsonl` and `metrics.csv` (one row per
epoch), the checkpoints `last.pt` and `best.pt`, and, once finished,
`summary.json`. Files are written to a temporary name and renamed, so a run
killed mid-write keeps its previous checkpoint intact. A lock file keeps two
processes from writing one folder at the same time.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
import pickle
import platform
import subprocess
import tempfile
import zipfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that belongs to another run."""


class RunLockedError(RuntimeError):
    """Another process holds the lock of a run folder."""


class RunExistsError(FileExistsError):
    """A run folder already holds results that would be overwritten."""


def bars_disabled() -> bool:
    """Whether progress bars are off: TQDM_DISABLE=1, which the pipeline sets in its kernels
    (tqdm's notebook bars ignore that variable when `disable` is passed, so it is read here)."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def ensure_writable(folder: Path, setting: str = "runs_dir, --out") -> Path:
    """Create `folder` if needed and prove that a file can be written there."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise PermissionError(
            f"cannot write to the output folder {folder} ({error.strerror or error}); "
            f"choose a writable folder ({setting}) or fix its permissions"
        ) from None
    return folder


def atomic_write_bytes(path: Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as handle:
        try:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(handle.name, 0o644)  # temporary files are private; results are not
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


def write_json(path: Path, data) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write_bytes(path, lambda handle: handle.write(text.encode()))


def read_json(path: Path):
    with open(path) as handle:
        return json.load(handle)


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True; a damaged file gives a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(error).__name__}: {str(error)[:200]}). "
            f"Delete {path.parent} to restart this run from scratch (or rerun with --force)."
        ) from None


@contextmanager
def locked(folder: Path, what: str = "run"):
    """Hold an exclusive lock on `folder` while the block runs.

    The lock is an flock on `folder/.lock`: the system releases it when the process
    ends, even when it is killed, so a crash never leaves a stale lock behind.
    """
    folder = ensure_writable(folder)
    path = folder / ".lock"
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunLockedError(
            f"{folder} is in use by another {what} (process {holder}); wait for it to finish, "
            "or use another output folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}")
    handle.flush()
    try:
        yield folder
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


class MetricsLog:
    """Per-epoch metrics, appended to metrics.jsonl and rewritten as metrics.csv."""

    def __init__(self, folder: Path):
        self.jsonl = Path(folder) / "metrics.jsonl"
        self.csv = Path(folder) / "metrics.csv"

    def rows(self) -> list[dict]:
        if not self.jsonl.exists():
            return []
        with open(self.jsonl) as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def keep_first(self, epochs: int) -> None:
        """Drop rows of epochs that a resumed run will train again."""
        rows = [row for row in self.rows() if row["epoch"] <= epochs]
        text = "".join(json.dumps(row) + "\n" for row in rows)
        atomic_write_bytes(self.jsonl, lambda handle: handle.write(text.encode()))
        self._write_csv(rows)

    def append(self, row: dict) -> None:
        with open(self.jsonl, "a") as handle:
            handle.write(json.dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._write_csv(self.rows())

    def _write_csv(self, rows: list[dict]) -> None:
        fields = list(dict.fromkeys(key for row in rows for key in row))

        def write(handle):
            import io

            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            handle.write(text.getvalue().encode())

        atomic_write_bytes(self.csv, write)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def environment(device: torch.device) -> dict:
    """Versions, device and commit, for the run folder."""
    packages = {}
    for name in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "umap-learn", "papermill"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "torch_build": torch.__version__,
        "packages": packages,
        "git_commit": git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info
