"""bench/phases.py: the phases of each timed iteration add up to its wall time."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
phases = pytest.importorskip("phases")


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_each_timed_iteration_splits_into_its_phases(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(phases.time, "perf_counter", fake.perf_counter)
    clock = phases.PhaseClock(first_timed_frame=1)

    def batches():
        for _ in range(3):
            fake.now += 0.001  # collect: 1 ms
            yield "batch"

    def extend():
        fake.now += 0.002
        clock.frames += 1

    def update():
        fake.now += 0.010

    write, step = clock.timed("write", extend), clock.timed("update", update)
    for i, _ in enumerate(clock.iterate(batches())):
        write()  # the first iteration (frame 0) is not timed
        if i == 2:  # the second timed iteration updates, the first does not
            step()
        fake.now += 0.0005  # the rest of the loop
    result = clock.result()
    assert result["timed_frames"] == 2
    ms = result["ms_per_frame"]
    assert ms["collect"] == pytest.approx(1.0)
    assert ms["write"] == pytest.approx(2.0)
    assert ms["update"] == pytest.approx(5.0)  # 10 ms and 0 ms
    assert ms["sample"] == pytest.approx(0.0)
    assert ms["other"] == pytest.approx(0.5)
    assert result["total_ms"] == pytest.approx(8.5)
    assert sum(ms.values()) == pytest.approx(result["total_ms"])


def test_a_run_too_short_to_time_says_so():
    with pytest.raises(RuntimeError, match="raise --measured-frames"):
        phases.PhaseClock(first_timed_frame=10).result()


def test_the_script_runs_instrumented(tmp_path):
    # The script's own loop, timed through its replay buffer, collector and updater.
    dump = tmp_path / "phases.json"
    phases.main(["--settings", "fp32", "--widths", "16", "--init-random-frames", "50",
                 "--warmup-frames", "5", "--measured-frames", "10", "--log-interval", "5", "--threads",
                 "1", "--out", str(tmp_path / "runs"), "--json", str(dump)])  # fmt: skip
    (run,) = json.loads(dump.read_text())["runs"]
    assert run["timed_frames"] == 10
    assert all(run["ms_per_frame"][p] > 0 for p in ("collect", "write", "sample", "update"))
    assert sum(run["ms_per_frame"].values()) == pytest.approx(run["total_ms"])
