"""sota_implementations/plot.py: runs grouped by task and method, one figure and summary per task."""

import csv
import importlib.util
from pathlib import Path

import pytest
from omegaconf import OmegaConf

SCRIPT = Path(__file__).resolve().parents[1] / "sota_implementations" / "plot.py"
HEADER = "frames,return_mean,return_std,success_rate"


def load_plot():
    spec = importlib.util.spec_from_file_location("plot_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_run(path, returns, *, env="Pendulum-v1", task=None, head="crossq", success=None):
    """A run directory as crossq.py leaves it: config.yaml and eval.csv (evals every 100 frames)."""
    path.mkdir(parents=True)
    cfg = {
        "env": {"name": env, "task": task},
        "algorithm": {"q_head_type": head},
        "precision": "fp32",
    }
    OmegaConf.save(OmegaConf.create(cfg), path / "config.yaml")
    success = success or ["nan"] * len(returns)
    rows = [f"{100 * (i + 1)},{r},0.0,{s}" for i, (r, s) in enumerate(zip(returns, success))]
    (path / "eval.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def summary(out, task):
    with (out / f"{task}_summary.csv").open() as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_one_figure_and_summary_per_task(tmp_path):
    runs = [make_run(tmp_path / f"p{s}", [0, s]) for s in range(3)]
    runs += [make_run(tmp_path / f"h{s}", [0, s], env="Hopper-v5") for s in range(2)]
    load_plot().main([*map(str, runs), "--out", str(tmp_path / "out"), "--reps", "200"])
    for task in ("Pendulum-v1", "Hopper-v5"):
        assert (tmp_path / "out" / f"{task}.png").stat().st_size > 0
        assert (tmp_path / "out" / f"{task}_summary.csv").exists()


def test_summary_holds_final_mean_and_iqm_across_seeds(tmp_path):
    # Final returns 1, 2, 3, 10: mean 4; IQM drops one at each end: (2 + 3) / 2.
    runs = [make_run(tmp_path / f"s{i}", [0, final]) for i, final in enumerate([1, 2, 3, 10])]
    load_plot().main([*map(str, runs), "--out", str(tmp_path / "out")])
    row = summary(tmp_path / "out", "Pendulum-v1")["CrossQ"]
    assert (row["metric"], row["runs"], row["final_frames"]) == ("return_mean", "4", "200")
    assert float(row["final_mean"]) == 4.0 and float(row["final_iqm"]) == 2.5
    assert 1.0 <= float(row["final_mean_ci_low"]) < 4.0 < float(row["final_mean_ci_high"]) <= 10.0


def test_methods_are_crossq_and_sac_from_the_critic_head(tmp_path):
    runs = [make_run(tmp_path / "a", [1, 2]), make_run(tmp_path / "b", [1, 2], head="default")]
    load_plot().main([*map(str, runs), "--out", str(tmp_path / "out"), "--reps", "200"])
    assert set(summary(tmp_path / "out", "Pendulum-v1")) == {"CrossQ", "SAC"}


def test_bench_baseline_csvs_are_a_method_named_by_their_folder(tmp_path):
    run = make_run(tmp_path / "ours", [1, 2])
    sb3 = [make_run(tmp_path / "bench" / f"sb3-seed{s}", [1, s]) / "eval.csv" for s in range(2)]
    load_plot().main([str(run), "--baseline", *map(str, sb3), "--out", str(tmp_path / "out")])
    assert summary(tmp_path / "out", "Pendulum-v1")["sb3"]["runs"] == "2"


def test_baseline_names_its_task_when_the_runs_hold_several(tmp_path):
    runs = [make_run(tmp_path / "p", [1, 2]), make_run(tmp_path / "h", [1, 2], env="Hopper-v5")]
    sb3 = make_run(tmp_path / "sb3-seed0", [1, 2]) / "eval.csv"
    args = [*map(str, runs), "--out", str(tmp_path / "out"), "--reps", "200", "--baseline"]
    with pytest.raises(SystemExit, match=r"^error: --baseline .* name its task as TASK="):
        load_plot().main([*args, str(sb3)])
    load_plot().main([*args, f"Hopper-v5={sb3}"])
    assert "sb3" in summary(tmp_path / "out", "Hopper-v5")


def test_meta_world_runs_compare_the_success_rate(tmp_path):
    runs = [
        make_run(tmp_path / f"s{i}", [1, 2], env="Meta-World/MT1", task="reach-v3", success=s)
        for i, s in enumerate([["0.0", "1.0"], ["0.0", "0.5"]])
    ]
    load_plot().main([*map(str, runs), "--out", str(tmp_path / "out"), "--reps", "200"])
    row = summary(tmp_path / "out", "reach-v3")["CrossQ"]
    assert row["metric"] == "success_rate" and float(row["final_mean"]) == 0.75


def test_a_folder_of_runs_stands_for_its_runs(tmp_path):
    for seed in range(2):
        make_run(tmp_path / "sweep" / f"seed{seed}", [1, 2])
    load_plot().main([str(tmp_path / "sweep"), "--out", str(tmp_path / "out"), "--reps", "200"])
    assert summary(tmp_path / "out", "Pendulum-v1")["CrossQ"]["runs"] == "2"


def test_a_folder_without_runs_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .* is not a run directory .* holds none$"):
        load_plot().main([str(tmp_path)])


def test_the_wall_clock_panel_is_drawn_only_when_some_run_has_wall_clock_data(tmp_path):
    import matplotlib.image

    untimed = [make_run(tmp_path / f"u{s}", [0, s]) for s in range(2)]
    timed = tmp_path / "timed"
    timed.mkdir()
    (timed / "eval.csv").write_text(f"{HEADER},wall_s\n100,0.0,0.0,nan,5.0\n200,1.0,0.0,nan,9.0\n")
    widths = {}
    for name, baseline in (("untimed", []), ("timed", ["--baseline", str(timed / "eval.csv")])):
        out = tmp_path / name
        load_plot().main([*map(str, untimed), *baseline, "--out", str(out), "--reps", "50"])
        widths[name] = matplotlib.image.imread(out / "Pendulum-v1.png").shape[1]
    assert widths["untimed"] < widths["timed"]  # one panel (frames) against two


def test_a_run_named_twice_counts_once_and_a_run_without_evaluations_is_left_out(tmp_path, capsys):
    # plot.py runs/* during training: a run still starting had no eval.csv (a traceback),
    # and a sweep given with one of its jobs counted that job twice.
    sweep = tmp_path / "sweep"
    for seed, final in enumerate([1, 3]):
        make_run(sweep / f"job{seed}", [0, final])
    starting = sweep / "job2"
    starting.mkdir()
    OmegaConf.save(OmegaConf.load(sweep / "job0" / "config.yaml"), starting / "config.yaml")
    resumed_from_zero = make_run(tmp_path / "empty", [])
    out = tmp_path / "out"
    load_plot().main([str(sweep), str(sweep / "job0"), str(resumed_from_zero), "--out", str(out)])
    row = summary(out, "Pendulum-v1")["CrossQ"]
    assert (row["runs"], float(row["final_mean"])) == ("2", 2.0)
    err = capsys.readouterr().err
    assert "job2 has no evaluation yet" in err and "empty has no evaluation yet" in err
