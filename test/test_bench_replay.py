"""bench/replay.py: the per-frame buffer measurement and its rendering."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
replay = pytest.importorskip("replay")


@pytest.fixture
def small_frame_buffers(monkeypatch):
    monkeypatch.setattr(replay, "FRAME_CAPACITY", 2_000)
    monkeypatch.setattr(replay, "FRAME_FILL", 1_000)


def test_both_frame_contestants_store_and_sample_the_same_transitions(small_frame_buffers):
    buffers = replay.frame_buffers()
    assert [len(b) for b in buffers.values()] == [1_000, 1_000]
    samples = [b.sample() for b in buffers.values()]  # one seed, one sampler each
    for key in replay.loss_keys():
        assert samples[0][key].equal(samples[1][key])


def test_frame_measurement_times_both_contestants(small_frame_buffers):
    args = replay.parse_args(["--reps", "2", "--samples", "3"])
    frame = replay.bench_frames(args)
    assert set(frame["ms_per_frame"]) == set(replay.FRAME_CONTESTANTS)
    assert all(ms > 0 for ms in frame["ms_per_frame"].values()) and frame["speedup"] > 0
    lines = replay.summary_lines([], frame)
    assert lines[2].startswith("frame_speedup_vs_lazy_tensor_storage: ")


def test_a_dump_from_before_the_frame_measurement_renders_without_it():
    assert replay.summary_lines([]) == ["within_1.5x: yes"]
