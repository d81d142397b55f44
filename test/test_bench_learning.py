"""bench/learning.py: our script's settings, and dumps of runs made apart combined in one section."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
learning = pytest.importorskip("learning")


def test_each_setting_is_our_command_plus_its_overrides(tmp_path):
    task = learning.TASKS["hopper"]
    base = learning.ours_command(task, 3, tmp_path, "cpu")
    assert learning.OURS["ours"] == []
    assert learning.OURS["ours_compile"] == ["compile=true"]
    assert learning.OURS["ours_bf16_compile"] == ["precision=bf16", "compile=true"]
    for impl in learning.OURS:
        assert impl in learning.IMPLS and impl in learning.LABELS
        overridden = {o.split("=")[0] for o in learning.OURS[impl]}
        assert not overridden & {o.split("=")[0] for o in base}  # added, never a second value
    assert len(learning.COLORS) == len(learning.IMPLS)  # the plot drops no implementation


def fake_dump(impl_finals: dict[str, list[float]], commit: str) -> dict:
    runs = [
        {"task": "hopper", "impl": impl, "seed": seed, "wall_s": 10.0,
         "rows": [{"frames": 2500, "return_mean": 0.0}, {"frames": 5000, "return_mean": final}]}
        for impl, finals in impl_finals.items()
        for seed, final in enumerate(finals)
    ]  # fmt: skip
    info = {"date": "d", "commit": commit, "command": f"cmd {commit}", "loadavg_start": "0",
            "loadavg_end": "0"}  # fmt: skip
    return {
        "info": info,
        "tasks": {"hopper": {"frames": 5000}},
        "hyperparameters": dict(learning.HYPERPARAMETERS),
        "runs": runs,
    }


def test_compiled_runs_join_an_earlier_dump_with_their_own_verdicts():
    earlier = fake_dump({"ours": [10.0, 20.0, 30.0], "sb3": [5.0, 15.0, 25.0]}, "aaa")
    later = fake_dump({"ours_compile": [12.0, 22.0, 32.0]}, "bbb")
    combined = learning.combine_dumps([earlier, later])
    assert [part["commit"] for part in combined["info"]["parts"]] == ["aaa", "bbb"]
    summary = learning.aggregate(combined["runs"], ["hopper"])
    assert list(summary["hopper"]) == ["ours", "sb3", "ours_compile"]
    assert summary["hopper"]["ours_compile"]["final"][0] == pytest.approx(22.0)
    lines = learning.summary_lines(summary)
    assert any(line.startswith("ours_compile_vs_sb3_hopper: within one std") for line in lines)
    assert any(line.startswith("ours_compile_vs_sb3_ci_hopper: final not below") for line in lines)


def test_the_same_run_in_two_dumps_is_refused():
    earlier = fake_dump({"ours_compile": [1.0]}, "aaa")
    with pytest.raises(SystemExit, match="more than one dump"):
        learning.combine_dumps([earlier, fake_dump({"ours_compile": [2.0]}, "bbb")])


def test_meta_world_hyperparameters_are_the_embodied_presets():
    # sb3-contrib gets these on Meta-World; the temperature's lr once went unmatched.
    from test_train_script import compose_config

    cfg = compose_config(["experiment=embodied"])
    algo, mw = cfg.algorithm, learning.META_WORLD_HYPERPARAMETERS
    assert mw["alpha_lr"] == algo.entropy_tuning.optim.lr
    assert mw["gamma"] == algo.gamma
    assert mw["initial_alpha"] == algo.entropy_tuning.initial_alpha
    assert mw["target_entropy"] == algo.entropy_tuning.target_entropy
    assert [mw["actor_width"]] * 2 == list(cfg.network.actor_hidden_sizes)
