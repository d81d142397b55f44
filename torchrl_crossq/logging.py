"""Logging: TorchRL loggers, the training-metrics window, the progress bar, evaluation
history and the learning-curve plot."""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import tqdm
from tensordict import TensorDictBase
from torchrl.record.loggers import Logger, WandbLogger, get_logger


def _in_logs_dir(run_dir: Path, **_) -> dict:
    return {"logger_name": str(run_dir / "logs")}


def _tensorboard(run_dir: Path, **_) -> dict:
    try:
        import tensorboard  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "backend='tensorboard' needs the tensorboard package: pip install tensorboard"
        ) from err
    return _in_logs_dir(run_dir)


def _wandb(run_dir: Path, *, project_name: str, wandb_mode: str, run_id: str | None) -> dict:
    wandb_kwargs = {
        "offline": wandb_mode == "offline",
        "project": project_name,
        "id": run_id,
        "mode": wandb_mode,
        "resume": "allow" if run_id else None,
        "log_env_packages": False,
    }
    return {"logger_name": str(run_dir), "wandb_kwargs": wandb_kwargs}


# TorchRL's get_logger builds each backend; this table says where it writes and with which
# options. A new backend (mlflow, trackio...) is one entry here.
_LOGGER_OPTIONS = {"wandb": _wandb, "csv": _in_logs_dir, "tensorboard": _tensorboard}
LOGGER_BACKENDS = (*_LOGGER_OPTIONS, "none")


def make_logger(
    backend: str,
    run_dir: str | Path,
    *,
    exp_name: str,
    project_name: str = "torchrl_crossq",
    wandb_mode: str = "offline",
    run_id: str | None = None,
    resumed_at: int = 0,
) -> Logger | None:
    """A TorchRL logger writing under ``run_dir`` (``None`` for ``backend="none"``).

    wandb runs offline by default (no network); ``run_id`` continues a run on resume.
    ``resumed_at``: the frames of the checkpoint a resumed run starts from; TensorBoard then
    drops what the run before logged past them (its ``purge_step``), as the CSV logs are
    truncated, so the steps it logs again appear once. End it with :func:`close_logger`.

    Examples:
        >>> import tempfile
        >>> logger = make_logger("csv", tempfile.mkdtemp(), exp_name="demo")
        >>> logger.log_scalar("train/loss_qvalue", 1.0, step=0)
    """
    if backend == "none":
        return None
    if backend not in _LOGGER_OPTIONS:
        raise ValueError(
            f"backend={backend!r} is not supported; use one of: {', '.join(LOGGER_BACKENDS)}"
        )
    options = _LOGGER_OPTIONS[backend](
        Path(run_dir), project_name=project_name, wandb_mode=wandb_mode, run_id=run_id
    )
    logger = get_logger(backend, experiment_name=exp_name, **options)
    if backend == "tensorboard" and resumed_at > 0:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = logger.experiment.log_dir
        logger.experiment.close()
        logger.experiment = SummaryWriter(log_dir=log_dir, purge_step=resumed_at + 1)
    return logger


def close_logger(logger: Logger | None) -> None:
    """Flushes and ends the logger's run (a wandb run is finished)."""
    if logger is not None:
        logger.close()


def logger_run_id(logger: Logger | None) -> str | None:
    """The id that lets a resumed run continue the same logger run (wandb only)."""
    experiment = getattr(logger, "experiment", None)
    return getattr(experiment, "id", None) if isinstance(logger, WandbLogger) else None


def log_metrics(logger: Logger | None, metrics: Mapping[str, float], step: int) -> None:
    """Logs each scalar of ``metrics`` at ``step`` (nothing without a logger)."""
    if logger is None:
        return
    for name, value in metrics.items():
        logger.log_scalar(name, value, step=step)


def write_text_atomically(path: str | Path, text: str) -> None:
    """Writes ``text`` to a new file renamed over ``path``: a kill mid-write keeps the old file.

    The new file reaches the disk before the rename, and the rename before the return, so a
    crash of the machine (not only of the process) leaves the old text or the new one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    sync_to_disk(tmp)
    os.replace(tmp, path)
    sync_to_disk(path.parent, recursive=False)


def sync_to_disk(path: str | Path, *, recursive: bool = True) -> None:
    """``fsync`` of the file or folder ``path``; a folder's files and sub-folders too (``recursive``).

    A rename is durable only once the renamed data and the folder holding the new name are on
    the disk: without it, a power loss soon after an atomic rename can leave the new name over
    empty files. Folders are synced where the OS allows it (not on Windows).
    """
    path = Path(path)
    if path.is_dir():
        if recursive:
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    sync_to_disk(child)
                elif child.is_file():
                    _fsync(child, os.O_RDONLY)
        _fsync(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    else:
        _fsync(path, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:  # a folder on Windows cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync of a folder
        pass
    finally:
        os.close(fd)


class EvalHistory:
    """Evaluation results ``(frames, return mean, return std, success rate)``, kept in ``eval.csv``.

    Appending writes through, so a crash keeps every finished evaluation and a
    resumed run reads them back. ``success_rate`` is NaN for tasks without success.
    """

    FIELDS = ("frames", "return_mean", "return_std", "success_rate")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []
        if self.path.exists():
            with self.path.open() as f:
                self.rows = [
                    {
                        key: int(float(row[key])) if key == "frames" else _float(row.get(key))
                        for key in self.FIELDS
                    }
                    for row in csv.DictReader(f)
                ]

    def truncate(self, frames: int) -> None:
        """Forgets evaluations after ``frames`` (those a resumed run will redo)."""
        self.rows = [row for row in self.rows if row["frames"] <= frames]
        self._rewrite()

    def _rewrite(self) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.FIELDS)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomically(self.path, text.getvalue())

    def append(
        self,
        frames: int,
        return_mean: float,
        return_std: float,
        success_rate: float | None = None,
    ) -> None:
        self.rows.append(
            {
                "frames": frames,
                "return_mean": return_mean,
                "return_std": return_std,
                "success_rate": math.nan if success_rate is None else success_rate,
            }
        )
        self._rewrite()

    @property
    def last_return(self) -> float:
        return self.rows[-1]["return_mean"] if self.rows else math.nan

    @property
    def last_success_rate(self) -> float:
        return self.rows[-1]["success_rate"] if self.rows else math.nan

    @property
    def has_success(self) -> bool:
        return any(not math.isnan(row["success_rate"]) for row in self.rows)


def _float(text: str | None) -> float:
    return math.nan if text in (None, "") else float(text)


def plot_learning_curve(history: EvalHistory, path: str | Path, title: str) -> Path | None:
    """Saves eval return (mean +- std) against frames as a PNG, and the success rate beside it
    for tasks that report success; ``None`` when there is nothing to plot."""
    if not history.rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [r["frames"] for r in history.rows]
    mean = [r["return_mean"] for r in history.rows]
    std = [r["return_std"] for r in history.rows]
    panels = 2 if history.has_success else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(frames, mean, marker="o", label="eval return")
    ax.fill_between(
        frames, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25
    )
    ax.set_ylabel("eval return")
    if history.has_success:
        success = axes[0, 1]
        success.plot(
            frames, [r["success_rate"] for r in history.rows], marker="o", color="tab:green"
        )
        success.set_ylim(-0.05, 1.05)
        success.set_ylabel("eval success rate")
        success.set_title(f"{title}: success rate")
    for panel in axes[0]:
        panel.set_xlabel("frames")
        panel.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _sum(values: list[torch.Tensor]) -> torch.Tensor:
    """The sum of 0-d tensors, in float64."""
    return torch.stack([v.double() for v in values]).sum()


class TrainingWindow:
    """What happened since the last log: frames, updates, finished episodes, losses.

    :meth:`scalars` reads it as the logged quantities (``perf/frames_per_s``,
    ``train/<metric>``: the mean over the window's updates that computed it, as TorchRL's
    SOTA scripts average an iteration's losses; ``train/return``, ``train/success_rate``)
    and starts a new window. A metric no update of the window computed (an actor term in a
    window shorter than the policy delay) keeps the value of the window before. Update
    metrics stay tensors until then: the update path never waits for the host.
    """

    # Values kept per metric before they are summed into one: bounded memory for any window.
    _CHUNK = 1024

    def __init__(self) -> None:
        self._metrics: dict[str, torch.Tensor] = {}  # the last window's means
        self._start_window()

    def _start_window(self) -> None:
        self._start = time.perf_counter()
        self._frames = self._updates = 0
        self._returns: list[float] = []
        self._successes: list[bool] = []
        self._window_metrics: dict[str, list[torch.Tensor]] = {}  # values, or partial sums
        self._counts: dict[str, int] = {}

    def add_batch(self, data: TensorDictBase) -> None:
        """Counts a collected batch and the episodes that ended in it."""
        self._frames += data.numel()
        done = data["next", "done"].squeeze(-1)
        if not done.any():  # most batches of a one-frame collector
            return
        self._returns += data["next", "episode_reward"].squeeze(-1)[done].tolist()
        if ("next", "episode_success") in data.keys(True):
            self._successes += data["next", "episode_success"].squeeze(-1)[done].tolist()

    def add_update(self, metrics: TensorDictBase) -> None:
        """Counts one update and keeps its metrics (actor terms come every policy delay)."""
        for key, value in metrics.items():
            values = self._window_metrics.setdefault(key, [])
            values.append(value)
            self._counts[key] = self._counts.get(key, 0) + 1
            if len(values) == self._CHUNK:
                values[:] = [_sum(values)]
        self._updates += 1

    def scalars(self) -> dict[str, float]:
        """The window's logged quantities; a new window starts."""
        elapsed = time.perf_counter() - self._start
        scalars = {
            "perf/frames_per_s": self._frames / elapsed,
            "perf/updates_per_s": self._updates / elapsed,
        }
        for key, values in self._window_metrics.items():
            count = self._counts[key]
            self._metrics[key] = values[0] if count == 1 else _sum(values) / count
        scalars.update({f"train/{k}": v.item() for k, v in self._metrics.items()})
        if self._returns:
            scalars["train/return"] = float(np.mean(self._returns))
        if self._successes:
            scalars["train/success_rate"] = float(np.mean(self._successes))
        self._start_window()
        return scalars


def remaining_time(frames: int, total_frames: int, frames_per_s: float) -> str:
    """One line: how long the rest of the run takes at the measured training speed.

    Examples:
        >>> remaining_time(10_000, 1_000_000, 5.5)
        'estimate: 2d 02h left for 990,000 frames at 5.5 frames/s (evaluations not counted); for a run of minutes: experiment=quick'
        >>> remaining_time(1_000, 5_000, 40.0)
        'estimate: 1m 40s left for 4,000 frames at 40.0 frames/s (evaluations not counted)'
    """
    seconds = (total_frames - frames) / max(frames_per_s, 1e-9)
    days, rest = divmod(int(seconds), 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        left = f"{days}d {hours:02d}h"
    elif hours:
        left = f"{hours}h {minutes:02d}m"
    else:
        left = f"{minutes}m {secs:02d}s"
    line = (
        f"estimate: {left} left for {total_frames - frames:,} frames at {frames_per_s:.1f} "
        "frames/s (evaluations not counted)"
    )
    if seconds > 3 * 3_600:
        line += "; for a run of minutes: experiment=quick"
    return line


def log_evaluation(
    logger: Logger | None, history: EvalHistory, frames: int, result
) -> dict[str, float]:
    """Appends an :class:`~torchrl_crossq.envs.EvalResult` to ``history`` and logs it as
    ``eval/return``, ``eval/return_std`` and (for tasks with success) ``eval/success_rate``."""
    history.append(frames, result.return_mean, result.return_std, result.success_rate)
    scalars = {"eval/return": result.return_mean, "eval/return_std": result.return_std}
    if result.success_rate is not None:
        scalars["eval/success_rate"] = result.success_rate
    log_metrics(logger, scalars, frames)
    return scalars


class ProgressBar:
    """A tqdm bar over the run's frames, showing speeds and the last evaluation."""

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True) -> None:
        self._bar = tqdm.tqdm(total=total, initial=initial, disable=not enabled, unit="frames")

    def update(self, frames: int) -> None:
        self._bar.update(frames)

    def show(self, history: EvalHistory, scalars: Mapping[str, float] | None = None) -> None:
        """Shows the speeds of ``scalars`` (when given) and the last evaluation of ``history``."""
        values = {}
        if scalars is not None:
            values["fps"] = f"{scalars['perf/frames_per_s']:.0f}"
            values["ups"] = f"{scalars['perf/updates_per_s']:.1f}"
        values["eval_return"] = f"{history.last_return:.1f}"
        if history.has_success:
            values["eval_success"] = f"{history.last_success_rate:.2f}"
        self._bar.set_postfix(**values)

    def write(self, line: str) -> None:
        """Prints ``line`` above the bar (plainly when the bar is off)."""
        tqdm.tqdm.write(line)

    def close(self) -> None:
        self._bar.close()
