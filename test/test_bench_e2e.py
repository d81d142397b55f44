"""bench/e2e.py's summary: speedups are medians of per-round ratios (runs of one round pair up)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
e2e = pytest.importorskip("e2e")


def run(contestant, width, rate, round_):
    return {"contestant": contestant, "width": width, "frames_per_s": rate, "round": round_,
            "timed_frames": 100}  # fmt: skip


def test_speedup_is_the_median_of_each_rounds_own_ratio():
    # The machine slows down in round 1: sb3 and ours both drop, their ratio does not.
    training = [
        run("sb3", 256, 60.0, 0), run("ours", 256, 78.0, 0), run("ours_compiled", 256, 90.0, 0),
        run("ours", 256, 52.0, 1), run("sb3", 256, 40.0, 1), run("ours_compiled", 256, 58.0, 1),
        run("sb3", 256, 50.0, 2), run("ours", 256, 70.0, 2), run("ours_compiled", 256, 80.0, 2),
    ]  # fmt: skip
    summary = e2e.summarise(training, None, None)
    assert summary["e2e_speedup_vs_sb3_w256"] == pytest.approx(1.3)  # 1.3, 1.3, 1.4
    assert summary["e2e_speedup_best_vs_sb3_w256"] == pytest.approx(1.5)  # 1.5, 1.45, 1.6
    rows = {row[1]: row for row in e2e.training_rows(training)}
    assert rows["ours, fp32 eager"][6] == "1.300, 1.300, 1.400"  # ratios in round order
    assert rows["ours, fp32 eager"][7] == "1.300"


def test_a_dump_without_rounds_reads_as_one_round():
    training = [run("sb3", 2048, 4.0, 0), run("ours", 2048, 5.0, 0)]
    for r in training:
        del r["round"]
    assert e2e.summarise(training, None, None)["e2e_speedup_vs_sb3_w2048"] == pytest.approx(1.25)


def dump(contestant, rate, commit="abc1234", device="cuda"):
    """A one-run dump as bench/gpu.sh writes them (one contestant per e2e.py call)."""
    return {
        "info": {"commit": commit, "command": f"e2e.py --contestants {contestant}"},
        "settings": {"device": device, "threads": 4, "hyperparameters": {}, "rounds": 1,
                     "budgets": {"2048": {"warmup_frames": 200}}},
        "training": [run(contestant, 2048, rate, 0)],
        "eval": None,
        "collect": None,
    }  # fmt: skip


def test_dumps_of_runs_made_apart_combine_into_one_section():
    combined = e2e.combine_dumps(
        [dump("ours_cudagraphs", 300.0), dump("sb3", 100.0), dump("ours", 150.0)]
    )
    summary = combined["summary"]
    assert summary["e2e_speedup_vs_sb3_w2048"] == pytest.approx(1.5)
    assert summary["e2e_speedup_best_vs_sb3_w2048"] == pytest.approx(3.0)
    assert summary["e2e_best_frames_per_s_w2048"] == pytest.approx(300.0)
    # On CUDA the target is frames/s, not the 2-core CPU speedups.
    assert [t["metric"] for t in combined["targets"]] == ["e2e_best_frames_per_s_w2048"]
    assert not combined["targets"][0]["met"]
    assert combined["info"]["command"].count("e2e.py") == 3


def test_dumps_from_other_commits_or_with_a_run_twice_do_not_combine():
    with pytest.raises(SystemExit, match="the dumps' commit differ"):
        e2e.combine_dumps([dump("ours", 150.0), dump("sb3", 100.0, commit="def5678")])
    with pytest.raises(SystemExit, match=r"run \(2048, 'ours', 0\) in more than one dump"):
        e2e.combine_dumps([dump("ours", 150.0), dump("ours", 151.0)])
