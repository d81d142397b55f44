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
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)

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


def truncate_csv_logs(log_dir: str | Path, frames: int) -> None:
    """Drops CSV-logger rows logged after ``frames``, so a resumed run does not log steps twice.

    TorchRL's ``CSVLogger`` writes ``<log_dir>/<exp>/scalars/<name>.csv`` with ``step,value`` rows.
    """
    for path in Path(log_dir).rglob("scalars/**/*.csv"):
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line and int(float(line.split(",", 1)[0])) <= frames]
        if len(kept) != len(lines):
            path.write_text("".join(f"{line}\n" for line in kept))
