"""Logger factory (TorchRL loggers), metric history and the learning-curve plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from torchrl.record.loggers import CSVLogger, Logger, TensorboardLogger, WandbLogger

LOGGER_BACKENDS = ("wandb", "csv", "tensorboard", "none")


def make_logger(
    backend: str,
    run_dir: str | Path,
    *,
    exp_name: str,
    project_name: str = "torchrl_crossq",
    wandb_mode: str = "offline",
    run_id: str | None = None,
) -> Logger | None:
    """A TorchRL logger writing under ``run_dir`` (``None`` for ``backend="none"``).

    wandb runs offline by default (no network); ``run_id`` continues a run on resume.

    Examples:
        >>> import tempfile
        >>> logger = make_logger("csv", tempfile.mkdtemp(), exp_name="demo")
        >>> logger.log_scalar("train/loss_qvalue", 1.0, step=0)
    """
    run_dir = Path(run_dir)
    if backend == "none":
        return None
    if backend == "csv":
        return CSVLogger(exp_name=exp_name, log_dir=str(run_dir / "logs"))
    if backend == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "logger.backend=tensorboard needs the tensorboard package: pip install tensorboard"
            ) from err
        return TensorboardLogger(exp_name=exp_name, log_dir=str(run_dir / "logs"))
    if backend == "wandb":
        return WandbLogger(
            exp_name=exp_name,
            offline=wandb_mode == "offline",
            save_dir=str(run_dir),
            project=project_name,
            id=run_id,
            mode=wandb_mode,
            resume="allow" if run_id else None,
            log_env_packages=False,
        )
    raise ValueError(
        f"logger.backend={backend!r} is not supported; use one of: {', '.join(LOGGER_BACKENDS)}"
    )


def logger_run_id(logger: Logger | None) -> str | None:
    """The id that lets a resumed run continue the same logger run (wandb only)."""
    experiment = getattr(logger, "experiment", None)
    return getattr(experiment, "id", None) if isinstance(logger, WandbLogger) else None


def log_metrics(logger: Logger | None, metrics: Mapping[str, float], step: int) -> None:
    if logger is None:
        return
    for name, value in metrics.items():
        logger.log_scalar(name, value, step=step)


class EvalHistory:
    """Evaluation results ``(frames, return mean, return std)``, kept in ``eval.csv`` of the run.

    Appending writes through, so a crash keeps every finished evaluation and a
    resumed run reads them back.
    """

    FIELDS = ("frames", "return_mean", "return_std")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, float]] = []
        if self.path.exists():
            with self.path.open() as f:
                self.rows = [
                    {k: int(float(v)) if k == "frames" else float(v) for k, v in row.items()}
                    for row in csv.DictReader(f)
                ]

    def truncate(self, frames: int) -> None:
        """Forgets evaluations after ``frames`` (those a resumed run will redo)."""
        self.rows = [row for row in self.rows if row["frames"] <= frames]
        self._rewrite()

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)

    def append(self, frames: int, return_mean: float, return_std: float) -> None:
        self.rows.append({"frames": frames, "return_mean": return_mean, "return_std": return_std})
        self._rewrite()

    @property
    def last_return(self) -> float:
        return self.rows[-1]["return_mean"] if self.rows else math.nan


def plot_learning_curve(history: EvalHistory, path: str | Path, title: str) -> Path | None:
    """Saves eval return (mean +- std) against frames as a PNG; ``None`` when there is nothing to plot."""
    if not history.rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = [r["frames"] for r in history.rows]
    mean = [r["return_mean"] for r in history.rows]
    std = [r["return_std"] for r in history.rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(frames, mean, marker="o", label="eval return")
    ax.fill_between(
        frames, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25
    )
    ax.set_xlabel("frames")
    ax.set_ylabel("eval return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def truncate_csv_logs(log_dir: str | Path, frames: int) -> None:
    """Drops CSV-logger rows logged after ``frames``, so a resumed run does not log steps twice.

    TorchRL's ``CSVLogger`` writes ``<log_dir>/<exp>/scalars/<name>.csv`` with ``step,value`` rows.
    """
    for path in Path(log_dir).rglob("scalars/**/*.csv"):
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line and int(float(line.split(",", 1)[0])) <= frames]
        if len(kept) != len(lines):
            path.write_text("".join(f"{line}\n" for line in kept))
