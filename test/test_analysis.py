"""Aggregate statistics across seeds (rliable's IQM and bootstrap CIs) and reading eval curves."""

import numpy as np
import pytest

from torchrl_crossq.analysis import (
    EvalCurve,
    aggregate,
    bootstrap_band,
    bootstrap_ci,
    iqm,
    read_eval_csv,
    read_run,
    wall_clock_at,
    wall_clock_from_logs,
)


def test_iqm_drops_a_quarter_of_the_scores_at_each_end():
    # 10 scores: floor(2.5) = 2 dropped at each end, the mean of the middle six.
    assert iqm([-100, -50, 1, 2, 3, 4, 5, 6, 50, 100]) == pytest.approx(3.5)


def test_iqm_of_fewer_than_four_scores_is_their_mean():
    assert iqm([1.0, 2.0, 6.0]) == pytest.approx(3.0)


def test_iqm_is_rliables_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    scores = np.random.default_rng(0).normal(size=(7, 3))
    assert iqm(scores) == pytest.approx(stats.trim_mean(scores, 0.25, axis=None))


def test_bootstrap_ci_of_two_scores_spans_both():
    # Resample means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: both tails hold > 2.5%.
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)


def test_bootstrap_ci_follows_the_resampling_distribution():
    # Scores 0, 0, 3: the resample mean is the number of 3s drawn, Binomial(3, 1/3):
    # P(0) = 8/27, P(1) = 12/27, P(2) = 6/27, P(3) = 1/27. The 10th and 90th percentiles
    # are 0 and 2 (P(<=1) = 0.74 < 0.9 < P(<=2) = 0.96); the 97.5th is 3.
    assert bootstrap_ci([0.0, 0.0, 3.0], confidence=0.8) == (0.0, 2.0)
    assert bootstrap_ci([0.0, 0.0, 3.0], confidence=0.95) == (0.0, 3.0)


def test_bootstrap_ci_of_equal_scores_is_that_score():
    assert bootstrap_ci([2.5] * 5, statistic="iqm") == (2.5, 2.5)


def test_bootstrap_ci_is_reproducible_with_its_seed():
    scores = np.random.default_rng(0).normal(size=5)
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    assert bootstrap_ci(scores, seed=3) != bootstrap_ci(scores, seed=4)


def test_stratified_bootstrap_resamples_runs_within_each_task():
    # Each task's runs agree: every stratified resample has the same mean. Pooled, they vary.
    per_task = [[0.0, 10.0], [0.0, 10.0], [0.0, 10.0]]  # [runs, tasks]
    assert bootstrap_ci(per_task) == (5.0, 5.0)
    low, high = bootstrap_ci(np.ravel(per_task))
    assert low < 5.0 < high


def test_bootstrap_ci_rejects_an_unknown_statistic():
    with pytest.raises(ValueError, match="statistic='median' is not supported; use one of"):
        bootstrap_ci([1.0, 2.0], statistic="median")


def test_bootstrap_band_resamples_whole_curves():
    # Curve 0 is 0 then 1, curve 1 is 1 then 0: a resample holding k copies of curve 0 has
    # means (1 - k/2, k/2) at the two points, so each point's band is [0, 1].
    low, high = bootstrap_band([[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_array_equal(low, [0.0, 0.0])
    np.testing.assert_array_equal(high, [1.0, 1.0])


def write_eval(path, rows, header="frames,return_mean,return_std,success_rate"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_read_eval_csv_reads_the_chosen_metric(tmp_path):
    path = write_eval(tmp_path / "eval.csv", ["100,1.5,0.1,nan", "200,2.5,0.2,nan"])
    curve = read_eval_csv(path)
    np.testing.assert_array_equal(curve.frames, [100, 200])
    np.testing.assert_array_equal(curve.values, [1.5, 2.5])
    assert curve.wall_s is None
    assert np.isnan(read_eval_csv(path, metric="success_rate").values).all()


def test_read_eval_csv_reads_a_wall_clock_column(tmp_path):
    header = "frames,return_mean,return_std,success_rate,wall_s"
    path = write_eval(tmp_path / "eval.csv", ["100,1.5,0.1,nan,7.0"], header=header)
    np.testing.assert_array_equal(read_eval_csv(path).wall_s, [7.0])


def test_read_eval_csv_names_the_columns_of_a_missing_metric(tmp_path):
    path = write_eval(tmp_path / "eval.csv", ["100,1.5,0.1,nan"])
    with pytest.raises(ValueError, match=r"metric='wall' is not a column of .*: frames, return"):
        read_eval_csv(path, metric="wall")


def write_throughput(run_dir, rows):
    path = run_dir / "logs" / "run" / "scalars" / "perf" / "frames_per_s.csv"
    path.parent.mkdir(parents=True)
    path.write_text("".join(f"{step},{rate}\n" for step, rate in rows))


def test_wall_clock_sums_each_log_windows_frames_over_its_rate(tmp_path):
    write_throughput(tmp_path, [(100, 50.0), (200, 100.0)])  # 2 s, then 1 s
    steps, seconds = wall_clock_from_logs(tmp_path / "logs")
    np.testing.assert_array_equal(steps, [100, 200])
    np.testing.assert_allclose(seconds, [2.0, 3.0])
    # Between logs: interpolated (from 0 s at frame 0); past the last: at the last rate.
    np.testing.assert_allclose(wall_clock_at([50, 150, 300], steps, seconds), [1.0, 2.5, 4.0])


def test_wall_clock_without_csv_logs_is_none(tmp_path):
    assert wall_clock_from_logs(tmp_path / "logs") is None


def test_read_run_takes_wall_clock_from_the_csv_logs(tmp_path):
    write_eval(tmp_path / "eval.csv", ["100,1.5,0.1,nan", "200,2.5,0.2,nan"])
    write_throughput(tmp_path, [(100, 50.0), (200, 100.0)])
    np.testing.assert_allclose(read_run(tmp_path).wall_s, [2.0, 3.0])


def curve(frames, values, wall=None):
    return EvalCurve(
        np.array(frames, float), np.array(values, float), None if wall is None else np.array(wall)
    )


def test_aggregate_aligns_runs_on_the_frames_all_of_them_evaluated():
    runs = [curve([100, 200, 300], [1, 2, 3]), curve([100, 200], [3, 4])]
    agg = aggregate(runs)
    np.testing.assert_array_equal(agg.frames, [100, 200])
    np.testing.assert_array_equal(agg.mean, [2, 3])
    assert (agg.low <= agg.mean).all() and (agg.mean <= agg.high).all()


def test_aggregate_has_wall_clock_only_when_every_run_has_it():
    timed = curve([100, 200], [1, 2], wall=[10.0, 20.0])
    assert aggregate([timed, curve([100, 200], [3, 4])]).wall_s is None
    both = aggregate([timed, curve([100, 200], [3, 4], wall=[30.0, 40.0])])
    np.testing.assert_array_equal(both.wall_s, [20.0, 30.0])


def test_aggregate_of_runs_without_a_common_frame_is_an_error():
    with pytest.raises(ValueError, match="share no evaluation frame"):
        aggregate([curve([100], [1]), curve([150], [1])])
