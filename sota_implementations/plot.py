"""Compares runs across seeds: one figure per task, with the aggregate numbers beside it.

    python sota_implementations/plot.py runs/*                           # our runs, by task
    python sota_implementations/plot.py runs/* --baseline bench/out/learning/pendulum/sb3-seed*/eval.csv
    python sota_implementations/plot.py runs/* --baseline Pendulum-v1=sb3.csv --out plots

Each RUN_DIR is a run directory of crossq.py (or a folder of them, e.g. a multirun's);
runs are grouped by task (``config.yaml``'s env) and by method (CrossQ or SAC, from
``algorithm.q_head_type``, with ``, bf16`` for ``precision=bf16``). ``--baseline`` takes
``eval.csv`` files with the same columns, e.g. those ``bench/learning.py`` writes for
sb3-contrib (``<task>/<impl>-seed<S>/eval.csv``: the method is ``<impl>``); ``TASK=PATH``
names the task, needed when the run dirs hold several.

Per task, ``<out>/<task>.png``: the mean over seeds with a 95% bootstrap confidence band
against frames, and against training wall-clock time on a second panel (from ``eval.csv``'s
``wall_s`` or the CSV logger's ``perf/frames_per_s``; no second panel when no run has either);
``<out>/<task>_summary.csv``: per
method, the final value's mean and IQM across seeds with their 95% stratified-bootstrap CIs
(rliable's definitions, torchrl_crossq/analysis.py). The metric is the success rate for tasks
that report it (Meta-World), else the return; ``--metric`` picks one.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from torchrl_crossq.analysis import EvalCurve, aggregate, bootstrap_ci, iqm, read_eval_csv, read_run
from torchrl_crossq.config import env_label
from torchrl_crossq.logging import EvalHistory

METRICS = ("return_mean", "success_rate")
METRIC_LABELS = {"return_mean": "eval return", "success_rate": "eval success rate"}
SUMMARY_FIELDS = (
    "method",
    "metric",
    "runs",
    "final_frames",
    "final_mean",
    "final_mean_ci_low",
    "final_mean_ci_high",
    "final_iqm",
    "final_iqm_ci_low",
    "final_iqm_ci_high",
)


class PlotError(ValueError):
    """An input that cannot be plotted; the message names it."""


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run directories among ``paths``: each one with a config.yaml, or its subfolders that have one.

    A run named twice (a sweep and one of its jobs) counts once; a run without an evaluation
    yet (still starting) is left out with a note.
    """
    found = []
    for path in paths:
        if (path / "config.yaml").is_file():
            found.append(path)
            continue
        inside = sorted(p.parent for p in path.glob("*/config.yaml"))
        if not inside:
            raise PlotError(f"{path} is not a run directory (no config.yaml) and holds none")
        found += inside
    runs = []
    for run in dict.fromkeys(p.resolve() for p in found):
        if not EvalHistory(run / "eval.csv").rows:  # no file yet, or its header alone
            print(f"note: {run} has no evaluation yet: left out", file=sys.stderr)
            continue
        runs.append(run)
    if not runs:
        raise PlotError("none of the runs has an evaluation yet")
    return runs


def method_of(cfg) -> str:
    """A run's method label: CrossQ or SAC (the critic head), and its precision when not fp32."""
    label = "CrossQ" if cfg.algorithm.q_head_type == "crossq" else "SAC"
    return label if cfg.get("precision", "fp32") == "fp32" else f"{label}, {cfg.precision}"


def baseline_method(path: Path) -> str:
    """``bench/learning.py``'s layout ``<impl>-seed<S>/eval.csv`` gives ``<impl>``."""
    match = re.fullmatch(r"(.+)-seed\d+", path.parent.name)
    return match.group(1) if match else "baseline"


def collect(
    run_dirs: Sequence[Path], baselines: Sequence[str]
) -> dict[str, dict[str, list[tuple[str, Path]]]]:
    """``{task: {method: [(kind, path), ...]}}``; ``kind`` is ``run`` or ``csv``."""
    groups: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run_dir in find_runs(run_dirs):
        cfg = OmegaConf.load(run_dir / "config.yaml")
        groups[env_label(cfg)][method_of(cfg)].append(("run", run_dir))
    tasks = sorted(groups)
    for spec in baselines:
        task, sep, path = spec.rpartition("=")
        path = Path(path)
        if not path.is_file():
            raise PlotError(f"--baseline {spec}: {path} is not a file")
        if not sep:
            if len(tasks) != 1:
                raise PlotError(
                    f"--baseline {spec}: name its task as TASK={path} (the run dirs hold "
                    f"{', '.join(tasks) or 'none'})"
                )
            task = tasks[0]
        groups[task][baseline_method(path)].append(("csv", path))
    return groups


def read_curves(entries: list[tuple[str, Path]], metric: str) -> list[EvalCurve]:
    return [
        read_run(path, metric=metric) if kind == "run" else read_eval_csv(path, metric=metric)
        for kind, path in entries
    ]


def choose_metric(methods: dict[str, list], requested: str | None) -> str:
    """The success rate when every curve of the task reports one, else the return."""
    if requested is not None:
        return requested
    for entries in methods.values():
        for curve in read_curves(entries, "success_rate"):
            if len(curve.values) == 0 or any(v != v for v in curve.values):  # NaN: no success
                return "return_mean"
    return "success_rate"


def summarize(method: str, metric: str, values, frames, reps: int) -> dict:
    """Final value per seed (at the last common frame): mean and IQM with bootstrap CIs."""
    final = values[:, -1]
    mean_low, mean_high = bootstrap_ci(final, statistic="mean", reps=reps)
    iqm_low, iqm_high = bootstrap_ci(final, statistic="iqm", reps=reps)
    return {
        "method": method,
        "metric": metric,
        "runs": len(final),
        "final_frames": int(frames[-1]),
        "final_mean": float(final.mean()),
        "final_mean_ci_low": mean_low,
        "final_mean_ci_high": mean_high,
        "final_iqm": iqm(final),
        "final_iqm_ci_low": iqm_low,
        "final_iqm_ci_high": iqm_high,
    }


def plot_task(
    task: str, methods: dict[str, list], out: Path, *, metric: str | None, reps: int
) -> tuple[Path, Path]:
    """Writes ``<out>/<task>.png`` and ``<out>/<task>_summary.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = choose_metric(methods, metric)
    aggregated = {}
    for method in sorted(methods):
        curves = read_curves(methods[method], metric)
        aggregated[method] = (len(curves), aggregate(curves, reps=reps))
    without_time = [m for m, (_, agg) in aggregated.items() if agg.wall_s is None]
    # The wall-clock panel only when some method has the data (bench/learning.py's runs log none).
    timed = len(without_time) < len(aggregated)
    fig, axes = plt.subplots(
        1, 2 if timed else 1, figsize=(12 if timed else 6.5, 4.5), squeeze=False
    )
    by_frames, by_time = axes[0][0], axes[0][1] if timed else None
    rows = []
    for method, (seeds, agg) in aggregated.items():
        label = f"{method} ({seeds} seed{'s' * (seeds > 1)})"
        (line,) = by_frames.plot(agg.frames, agg.mean, label=label)
        by_frames.fill_between(agg.frames, agg.low, agg.high, alpha=0.2, color=line.get_color())
        if by_time is not None and agg.wall_s is not None:
            by_time.plot(agg.wall_s, agg.mean, label=label, color=line.get_color())
            by_time.fill_between(agg.wall_s, agg.low, agg.high, alpha=0.2, color=line.get_color())
        rows.append(summarize(method, metric, agg.values, agg.frames, reps))
    by_frames.set_xlabel("frames")
    if by_time is not None:
        by_time.set_xlabel("training wall-clock time (s, mean over seeds)")
        if without_time:
            by_time.text(
                0.02,
                0.02,
                f"no wall-clock data: {', '.join(without_time)}",
                transform=by_time.transAxes,
                fontsize=8,
            )
        by_time.legend()
    for ax in axes[0]:
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
    by_frames.set_title(f"{task}: mean and 95% bootstrap CI over seeds")
    by_frames.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    figure, summary = out / f"{task}.png", out / f"{task}_summary.csv"
    fig.savefig(figure, dpi=100)
    plt.close(fig)
    with summary.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return figure, summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, metavar="RUN_DIR")
    parser.add_argument("--baseline", nargs="+", default=[], metavar="[TASK=]CSV")
    parser.add_argument("--metric", choices=METRICS, help="default: success rate if reported")
    parser.add_argument("--out", type=Path, default=Path("plots"))
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    if not args.run_dirs and not args.baseline:
        parser.error("give run directories and/or --baseline CSVs")
    try:
        groups = collect(args.run_dirs, args.baseline)
        for task in sorted(groups):
            figure, summary = plot_task(
                task, groups[task], args.out, metric=args.metric, reps=args.reps
            )
            print(f"{task}: {figure}, {summary}")
    except (PlotError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
