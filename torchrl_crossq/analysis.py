"""Comparing runs across seeds: IQM, bootstrap confidence intervals, and reading eval curves.

The aggregate statistics follow rliable (Agarwal et al., "Deep Reinforcement Learning at the
Edge of the Statistical Precipice", NeurIPS 2021): the interquartile mean is
``scipy.stats.trim_mean(scores, 0.25)`` over all scores (rliable's ``aggregate_iqm``), and
confidence intervals are percentile intervals of a stratified bootstrap (runs resampled with
replacement within each task). The functions take numpy arrays and return floats, so that
benchmark scripts use them as they are.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

STATISTICS = ("mean", "iqm")


def iqm(scores: ArrayLike) -> float:
    """Interquartile mean: the mean of the middle 50% of all ``scores``.

    rliable's definition (``scipy.stats.trim_mean(scores, 0.25, axis=None)``):
    ``floor(n / 4)`` scores are dropped at each end of the sorted scores, no
    fractional weights.

    Examples:
        >>> iqm([1, 2, 3, 4, 5, 6, 7, 100])  # drops 1, 2 and 7, 100
        4.5
    """
    return float(_iqm(np.sort(np.asarray(scores, dtype=float).ravel())[None])[0])


def _iqm(sorted_rows: np.ndarray) -> np.ndarray:
    """IQM of each row of ``[rows, n]`` scores, each row sorted."""
    n = sorted_rows.shape[-1]
    cut = int(0.25 * n)
    return sorted_rows[:, cut : n - cut].mean(axis=-1)


def bootstrap_ci(
    scores: ArrayLike,
    *,
    statistic: str = "mean",
    confidence: float = 0.95,
    reps: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic`` of ``scores``.

    Args:
        scores: ``[runs]``, or ``[runs, tasks]`` for a stratified bootstrap: each
            resample draws ``runs`` runs with replacement for every task separately
            (rliable's ``StratifiedBootstrap``); the statistic is taken over all of them.

    Keyword Args:
        statistic: ``"mean"`` or ``"iqm"`` (:func:`iqm`).
        confidence: the interval's coverage (0.95: the 2.5th and 97.5th percentiles).
        reps: bootstrap resamples.
        seed: the resampling's random seed (same scores and seed: same interval).

    Returns:
        ``(low, high)``.

    Examples:
        >>> bootstrap_ci([0.0, 1.0])  # resample means 0, 0.5, 1 with probability 1/4, 1/2, 1/4
        (0.0, 1.0)
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r} is not supported; use one of: mean, iqm")
    scores = np.asarray(scores, dtype=float)
    if scores.ndim == 1:
        scores = scores[:, None]
    samples = _resample(scores, reps, seed, stratified=True).reshape(
        reps, -1
    )  # [reps, runs * tasks]
    stats = samples.mean(axis=1) if statistic == "mean" else _iqm(np.sort(samples, axis=1))
    return _percentiles(stats, confidence)


def bootstrap_band(
    scores: ArrayLike, *, confidence: float = 0.95, reps: int = 10_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Point-wise bootstrap confidence band of the mean over runs of ``[runs, points]`` scores.

    Each point's interval is :func:`bootstrap_ci` of that column's mean; the
    resampled runs are the same at every point (whole curves are resampled).

    Returns:
        ``(low, high)``, each ``[points]``.
    """
    scores = np.asarray(scores, dtype=float)
    means = _resample(scores, reps, seed, stratified=False).mean(axis=1)  # [reps, points]
    return _percentiles(means, confidence)


def _resample(scores: np.ndarray, reps: int, seed: int, *, stratified: bool) -> np.ndarray:
    """``[reps, runs, columns]`` with the runs (rows) drawn with replacement: for each column
    separately when ``stratified`` (columns are tasks), else as whole rows (curves)."""
    runs, columns = scores.shape
    rng = np.random.default_rng(seed)
    if not stratified:
        return scores[rng.integers(0, runs, size=(reps, runs))]
    index = rng.integers(0, runs, size=(reps, runs, columns))
    return np.take_along_axis(np.broadcast_to(scores, (reps, runs, columns)), index, axis=1)


def _percentiles(stats: np.ndarray, confidence: float):
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1)")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats, [tail, 100 - tail], axis=0)
    if np.ndim(low) == 0:
        return float(low), float(high)
    return low, high


@dataclass
class EvalCurve:
    """One run's evaluations: ``frames``, ``values`` of one metric, and ``wall_s``
    (training seconds at each evaluation; ``None`` when the run did not record it)."""

    frames: np.ndarray
    values: np.ndarray
    wall_s: np.ndarray | None = None


def read_eval_csv(path: str | Path, *, metric: str = "return_mean") -> EvalCurve:
    """Reads an ``eval.csv`` (the training script's, or ``bench/learning.py``'s for sb3).

    Columns ``frames, return_mean, return_std, success_rate`` and, when present,
    ``wall_s``. ``metric`` is the column read as ``values``.
    """
    with Path(path).open() as f:
        reader = csv.DictReader(f)
        if metric not in (reader.fieldnames or ()):
            raise ValueError(
                f"metric={metric!r} is not a column of {path}; its columns: "
                f"{', '.join(reader.fieldnames or ())}"
            )
        rows = list(reader)
    frames = np.array([float(r["frames"]) for r in rows])
    values = np.array([_float(r[metric]) for r in rows])
    wall = None
    if rows and "wall_s" in rows[0]:
        wall = np.array([_float(r["wall_s"]) for r in rows])
    return EvalCurve(frames, values, wall)


def _float(text: str | None) -> float:
    return math.nan if text in (None, "") else float(text)


def wall_clock_from_logs(log_dir: str | Path) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frames, seconds)``: training time at each log step, from the CSV logger's throughput.

    The training script logs ``perf/frames_per_s`` over each window between two logs (the
    window includes evaluations and checkpoints); the time at log step ``s_i`` is the sum of
    ``(s_j - s_{j-1}) / rate_j`` up to it. Approximate across a resume (the part of a
    window lost in the kill is not counted). ``None`` when there is no such log
    (``logger.backend`` other than csv).
    """
    found = sorted(Path(log_dir).rglob("scalars/perf/frames_per_s.csv"))
    if not found:
        return None
    rows = [line.split(",") for line in found[0].read_text().splitlines() if line]
    steps = np.array([float(step) for step, _ in rows])
    rates = np.array([float(rate) for _, rate in rows])
    if len(steps) == 0:
        return None
    seconds = np.cumsum(np.diff(steps, prepend=0.0) / rates)
    return steps, seconds


def wall_clock_at(frames: ArrayLike, steps: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Training seconds at ``frames``, interpolated in :func:`wall_clock_from_logs`'s output;
    past the last log step, at the last window's rate."""
    frames = np.asarray(frames, dtype=float)
    last_rate = (steps[-1] - (steps[-2] if len(steps) > 1 else 0.0)) / (
        seconds[-1] - (seconds[-2] if len(seconds) > 1 else 0.0)
    )
    inside = np.interp(frames, np.concatenate([[0.0], steps]), np.concatenate([[0.0], seconds]))
    return np.where(frames > steps[-1], seconds[-1] + (frames - steps[-1]) / last_rate, inside)


def read_run(run_dir: str | Path, *, metric: str = "return_mean") -> EvalCurve:
    """A training run's eval curve; ``wall_s`` from ``eval.csv`` or else derived from its CSV logs."""
    run_dir = Path(run_dir)
    curve = read_eval_csv(run_dir / "eval.csv", metric=metric)
    if curve.wall_s is None:
        logged = wall_clock_from_logs(run_dir / "logs")
        if logged is not None:
            curve.wall_s = wall_clock_at(curve.frames, *logged)
    return curve


@dataclass
class Aggregate:
    """Curves of several seeds at their common frames: mean over runs and its bootstrap band."""

    frames: np.ndarray
    values: np.ndarray  # [runs, points]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    wall_s: np.ndarray | None  # mean over runs; None unless every run has it


def aggregate(
    curves: list[EvalCurve], *, confidence: float = 0.95, reps: int = 10_000, seed: int = 0
) -> Aggregate:
    """Aligns ``curves`` on the frames every run evaluated at, then :func:`bootstrap_band`."""
    common = curves[0].frames
    for curve in curves[1:]:
        common = np.intersect1d(common, curve.frames)
    if len(common) == 0:
        raise ValueError("the runs share no evaluation frame; compare runs of the same schedule")
    positions = [np.searchsorted(c.frames, common) for c in curves]
    values = np.stack([c.values[p] for c, p in zip(curves, positions)])
    low, high = bootstrap_band(values, confidence=confidence, reps=reps, seed=seed)
    wall = None
    if all(c.wall_s is not None for c in curves):
        wall = np.stack([c.wall_s[p] for c, p in zip(curves, positions)]).mean(axis=0)
    return Aggregate(common, values, values.mean(axis=0), low, high, wall)
