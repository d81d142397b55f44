"""Tests for torchrl_crossq.data.replay: the sliding-window replay buffer."""

from __future__ import annotations

import pytest
import torch
from tensordict import LazyStackedTensorDict, TensorDict
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer

from torchrl_crossq.data import (
    CachedStorage,
    SlidingWindowSampler,
    TransitionStorage,
    WindowReplayBuffer,
    make_replay_buffer,
)


class Collector:
    """Fake collector: [num_envs, T] batches whose transitions know where they come from.

    Each transition carries its write position (``position``: the n-th transition written),
    its trajectory (``trajectory``: the n-th env row written) and its episode (``episode``:
    numbered in the order episodes start). ``("next", "observation")`` is the observation
    plus one, to check that nested keys stay aligned. With ``traj_ids=True`` it also writes
    ``("collector", "traj_ids")``, the episode number, as TorchRL's collectors do. Fakes made
    with ``worker_of=`` another are workers of one multi-process collector: they share the
    counts (written transitions, trajectories, episodes), hence the traj id pool.
    """

    def __init__(
        self,
        num_envs: int = 2,
        length: int = 4,
        episode_lengths=None,
        *,
        traj_ids: bool = False,
        worker_of: Collector | None = None,
    ):
        self.num_envs, self.length = num_envs, length
        # Per env, the length of its episodes (cycled); None: episodes never end.
        self.episode_lengths = episode_lengths
        self.traj_ids = traj_ids
        self.counts = (
            worker_of.counts if worker_of else {"written": 0, "trajectories": 0, "episodes": 0}
        )
        self.env_step = [0] * num_envs
        self.env_episode = [None] * num_envs

    @property
    def written(self) -> int:
        return self.counts["written"]

    @property
    def trajectories(self) -> int:
        return self.counts["trajectories"]

    @property
    def episodes(self) -> int:
        return self.counts["episodes"]

    def batch(self) -> TensorDict:
        counts = self.counts
        position = torch.zeros(self.num_envs, self.length, dtype=torch.long)
        trajectory = torch.zeros_like(position)
        episode = torch.zeros_like(position)
        done = torch.zeros(self.num_envs, self.length, 1, dtype=torch.bool)
        for env in range(self.num_envs):  # row-major: the order the buffer writes them in
            for t in range(self.length):
                if self.env_episode[env] is None:
                    self.env_episode[env] = counts["episodes"]
                    counts["episodes"] += 1
                    self.env_step[env] = 0
                position[env, t] = counts["written"]
                trajectory[env, t] = counts["trajectories"]
                episode[env, t] = self.env_episode[env]
                counts["written"] += 1
                self.env_step[env] += 1
                if self.episode_lengths and self.env_step[env] == self.episode_lengths[env]:
                    done[env, t] = True
                    self.env_episode[env] = None
            counts["trajectories"] += 1
        observation = torch.randn(self.num_envs, self.length, 3)
        batch = TensorDict(
            {
                "observation": observation,
                "position": position,
                "trajectory": trajectory,
                "episode": episode,
                "next": {"observation": observation + 1, "done": done},
            },
            [self.num_envs, self.length],
        )
        if self.traj_ids:
            batch["collector", "traj_ids"] = episode.clone()
        return batch


class CountingMemmapStorage(LazyMemmapStorage):
    """A disk storage that counts the indices read from it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.reads = 0

    def get(self, index):
        self.calls += 1
        self.reads += torch.as_tensor(index).numel() if not isinstance(index, slice) else 1
        return super().get(index)


def fill(rb, collector: Collector, num_batches: int) -> list[TensorDict]:
    batches = [collector.batch() for _ in range(num_batches)]
    for batch in batches:
        rb.extend(batch)
    return batches


def sampled_values(rb, key: str, num_samples: int = 20) -> set[int]:
    return set(torch.cat([rb.sample()[key] for _ in range(num_samples)]).tolist())


def assert_same_samples(first, second) -> None:
    assert set(first.keys(True, True)) == set(second.keys(True, True))
    for key in first.keys(True, True):
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)


# ----- the window ----------------------------------------------------------------------------


def test_samples_come_only_from_the_newest_trajectories():
    rb = make_replay_buffer(1000, batch_size=64, sample_window_size=3, seed=0)
    collector = Collector(num_envs=2, length=4)
    fill(rb, collector, num_batches=5)  # trajectories 0..9
    assert sampled_values(rb, "trajectory") <= {7, 8, 9}


def test_samples_stay_in_the_window_after_the_storage_wraps_around():
    # 37 is no multiple of the batch (8 transitions), so wraps cut trajectories in two.
    rb = make_replay_buffer(37, batch_size=64, sample_window_size=3, seed=0)
    collector = Collector(num_envs=2, length=4)
    for _ in range(20):  # 160 transitions written: the storage wraps four times
        fill(rb, collector, num_batches=1)
        newest = set(range(max(0, collector.trajectories - 3), collector.trajectories))
        sample = rb.sample()
        assert set(sample["trajectory"].tolist()) <= newest
        # The transition read back is the one the sampler meant: its trajectory and position agree.
        assert torch.equal(sample["trajectory"], sample["position"] // 4)
    assert rb.window_size() == 12


def test_every_trajectory_in_the_window_is_reachable():
    rb = make_replay_buffer(50, batch_size=256, sample_window_size=5, seed=0)
    collector = Collector(num_envs=3, length=4)
    fill(rb, collector, num_batches=7)  # 84 transitions: wrapped
    window = set(range(collector.trajectories - 5, collector.trajectories))
    assert sampled_values(rb, "trajectory") == window
    assert sampled_values(rb, "position") == set(range(collector.written - 20, collector.written))


def test_sampling_is_uniform_over_the_window_transitions():
    # Trajectories of 2 and 18 transitions: uniform over transitions, not over trajectories.
    rb = make_replay_buffer(100, batch_size=1000, sample_window_size=2, seed=0)
    traj_ids = torch.tensor([0] * 5 + [1] * 2 + [2] * 18)
    rb.extend(TensorDict({"collector": {"traj_ids": traj_ids}, "position": torch.arange(25)}, [25]))
    counts = torch.bincount(torch.cat([rb.sample()["position"] for _ in range(40)]), minlength=25)
    assert counts[:5].sum() == 0
    expected = 40_000 / 20  # per transition; binomial std is about 44
    assert (counts[5:] - expected).abs().max() < 250


def test_window_unit_transition_samples_the_newest_transitions():
    rb = make_replay_buffer(
        40, batch_size=128, sample_window_size=10, window_unit="transition", seed=0
    )
    collector = Collector(num_envs=2, length=4)
    fill(rb, collector, num_batches=9)  # 72 transitions: wrapped
    assert sampled_values(rb, "position") == set(range(62, 72))


def test_window_unit_episode_counts_episodes_that_span_batches():
    # Env 0 runs episodes of 6 steps (they span batches of 4), env 1 episodes of 3 steps.
    rb = make_replay_buffer(
        200, batch_size=256, sample_window_size=3, window_unit="episode", seed=0
    )
    collector = Collector(num_envs=2, length=4, episode_lengths=[6, 3])
    batches = fill(rb, collector, num_batches=6)
    stored = torch.cat([batch.reshape(-1) for batch in batches])
    newest = collector.episodes - 3
    in_window = stored["episode"] >= newest
    assert sampled_values(rb, "position") == set(stored["position"][in_window].tolist())
    assert rb.window_size() == int(in_window.sum())


def test_episode_windows_keep_apart_the_envs_of_multi_async_workers():
    # A multi_async collector of 2 workers x 2 envs: each batch is one worker's [2, T], so
    # row 0 is env 0 of either worker; their traj ids come from one shared pool.
    first = Collector(num_envs=2, length=4, episode_lengths=[6, 3], traj_ids=True)
    second = Collector(num_envs=2, length=4, episode_lengths=[5, 7], traj_ids=True, worker_of=first)
    rb = make_replay_buffer(
        200, batch_size=256, sample_window_size=3, window_unit="episode", seed=0
    )
    batches = [worker.batch() for worker in (first, second, second, first, second, first)]
    for batch in batches:
        rb.extend(batch)
    stored = torch.cat([batch.reshape(-1) for batch in batches])
    in_window = stored["episode"] >= first.episodes - 3
    assert sampled_values(rb, "position") == set(stored["position"][in_window].tolist())
    assert rb.window_size() == int(in_window.sum())


def test_episode_windows_keep_apart_ray_workers_that_reuse_traj_ids():
    # A Ray collector stacks one [T] batch per worker; each worker numbers its episodes from 0.
    rb = make_replay_buffer(
        100, batch_size=256, sample_window_size=2, window_unit="episode", seed=0
    )
    traj_ids = [[[0, 0, 0, 0], [0, 0, 0, 0]], [[0, 0, 1, 1], [0, 0, 0, 0]]]
    done = [[[0, 0, 0, 0], [0, 0, 0, 0]], [[0, 1, 0, 0], [0, 0, 0, 0]]]
    for step in range(2):
        rb.extend(
            TensorDict(
                {
                    "position": torch.arange(8 * step, 8 * step + 8).reshape(2, 4),
                    "collector": {"traj_ids": torch.tensor(traj_ids[step])},
                    "next": {"done": torch.tensor(done[step], dtype=torch.bool)},
                },
                [2, 4],
            )
        )
    # Episodes in start order: worker 0's first, worker 1's, worker 0's second (positions 10-11).
    assert sampled_values(rb, "position") == {4, 5, 6, 7, 10, 11, 12, 13, 14, 15}


def test_a_new_traj_id_without_a_done_starts_a_new_episode():
    # Collectors that reset their envs between batches (reset_at_each_iter) give new traj ids.
    rb = make_replay_buffer(
        100, batch_size=256, sample_window_size=1, window_unit="episode", seed=0
    )
    for step in range(2):
        rb.extend(
            TensorDict(
                {
                    "position": torch.arange(4 * step, 4 * step + 4).reshape(1, 4),
                    "collector": {"traj_ids": torch.full((1, 4), step)},
                    "next": {"done": torch.zeros(1, 4, 1, dtype=torch.bool)},
                },
                [1, 4],
            )
        )
    assert sampled_values(rb, "position") == {4, 5, 6, 7}


def test_end_episodes_keeps_a_new_episode_of_an_old_id_apart():
    # A run resumed without its envs' state starts new episodes; one that gets the id of an
    # episode the checkpoint left open must not continue it (it fell out of the window).
    rb = make_replay_buffer(
        100, batch_size=256, sample_window_size=1, window_unit="episode", seed=0
    )

    def extend(start):
        rb.extend(
            TensorDict(
                {
                    "position": torch.arange(start, start + 4).reshape(1, 4),
                    "collector": {"traj_ids": torch.full((1, 4), 3)},
                    "next": {"done": torch.zeros(1, 4, 1, dtype=torch.bool)},
                },
                [1, 4],
            )
        )

    extend(0)
    rb.end_episodes()
    extend(4)
    assert sampled_values(rb, "position") == {4, 5, 6, 7}


def test_traj_ids_must_have_one_id_per_transition():
    sampler = SlidingWindowSampler(2, window_unit="episode")
    with pytest.raises(ValueError, match="traj_ids has 2 ids for 4 transitions"):
        sampler.add_trajectories(
            torch.tensor([4]), done=torch.zeros(4, dtype=torch.bool), traj_ids=torch.zeros(2)
        )


def test_window_unit_episode_needs_done_flags():
    rb = make_replay_buffer(100, batch_size=8, sample_window_size=2, window_unit="episode")
    with pytest.raises(KeyError, match="done"):
        rb.extend(TensorDict({"observation": torch.zeros(2, 4)}, [2, 4]))


def test_episode_sampler_without_done_flags_raises_and_keeps_its_state():
    sampler = SlidingWindowSampler(2, window_unit="episode")
    sampler.add_trajectories(torch.tensor([4]), done=torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs the \\('next', 'done'\\) flags"):
        sampler.add_trajectories(torch.tensor([4]))
    assert (sampler.num_written, sampler.num_trajectories) == (4, 1)


def test_sampler_reads_only_the_storage_length_and_capacity():
    class LengthOnlyStorage:  # no data: sampling must not look at any
        max_size = 1_000_000

        def __len__(self):
            return self.max_size

    sampler = SlidingWindowSampler(3, seed=0)
    sampler.add_trajectories(torch.full((2_000,), 1_000))  # 2M transitions: wrapped
    index, _ = sampler.sample(LengthOnlyStorage(), 256)
    assert index.shape == (256,)
    assert bool(((index >= 997_000) & (index < 1_000_000)).all())


@pytest.mark.parametrize("window_unit", ["trajectory", "episode"])
def test_sampler_keeps_records_only_for_the_window(window_unit):
    rb = make_replay_buffer(64, batch_size=8, sample_window_size=3, window_unit=window_unit, seed=0)
    fill(rb, Collector(num_envs=2, length=4, episode_lengths=[6, 3]), num_batches=50)
    # A record per window trajectory, or per piece of a window episode.
    assert rb.sampler.state_dict()["record_start"].numel() <= 6


def test_window_size_zero_samples_the_whole_buffer():
    rb = make_replay_buffer(30, batch_size=256, sample_window_size=0, seed=0)
    collector = Collector(num_envs=2, length=4)
    fill(rb, collector, num_batches=6)  # 48 transitions: the newest 30 are stored
    assert sampled_values(rb, "position") == set(range(18, 48))


def test_window_longer_than_the_storage_samples_what_the_storage_holds():
    rb = make_replay_buffer(10, batch_size=256, sample_window_size=3, seed=0)
    collector = Collector(num_envs=1, length=4)
    with pytest.warns(UserWarning, match="exceed the capacity"):
        fill(rb, collector, num_batches=5)  # the 3 newest trajectories are 12 > 10 transitions
    assert rb.window_size() == 10
    assert sampled_values(rb, "position") == set(range(10, 20))


def test_flat_batch_is_split_into_trajectories_on_collector_traj_ids():
    rb = make_replay_buffer(100, batch_size=256, sample_window_size=2, seed=0)
    traj_ids = torch.tensor([4, 4, 4, 7, 7, 9, 9, 9, 9])
    rb.extend(TensorDict({"collector": {"traj_ids": traj_ids}, "position": torch.arange(9)}, [9]))
    assert rb.num_trajectories == 3
    assert sampled_values(rb, "position") == set(range(3, 9))


def test_flat_batch_without_traj_ids_is_one_trajectory():
    rb = make_replay_buffer(100, batch_size=256, sample_window_size=1, seed=0)
    for start in (0, 6):
        rb.extend(TensorDict({"position": torch.arange(start, start + 6)}, [6]))
    assert rb.num_trajectories == 2
    assert sampled_values(rb, "position") == set(range(6, 12))


def test_add_stores_one_transition_as_one_trajectory():
    rb = make_replay_buffer(100, batch_size=32, sample_window_size=2, seed=0)
    for position in range(5):
        assert rb.add(TensorDict({"position": torch.tensor(position)}, [])) == position
    assert rb.num_trajectories == 5
    assert sampled_values(rb, "position") == {3, 4}


def test_extend_returns_storage_indices_in_the_batch_shape():
    rb = make_replay_buffer(10, batch_size=4, seed=0)
    batch = Collector(num_envs=2, length=4).batch()
    rb.extend(batch)
    index = rb.extend(batch.clone())
    assert index.shape == (2, 4)
    assert index.flatten().tolist() == [8, 9, 0, 1, 2, 3, 4, 5]


def test_lazily_stacked_batches_are_stored_row_by_row():
    rows = [TensorDict({"position": torch.arange(3) + 3 * env}, [3]) for env in range(2)]
    rb = make_replay_buffer(100, batch_size=64, sample_window_size=1, seed=0)
    rb.extend(LazyStackedTensorDict.lazy_stack(rows))
    by_time = [TensorDict({"position": torch.tensor([t, 3 + t])}, [2]) for t in range(3)]
    rb.extend(LazyStackedTensorDict.lazy_stack(by_time, dim=1))  # stacked along time
    assert rb.storage[:]["position"].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5]
    assert rb.num_trajectories == 4
    assert sampled_values(rb, "position") == {3, 4, 5}


def test_collector_batches_are_stored_one_trajectory_per_env():
    pytest.importorskip("gymnasium")
    from torchrl.collectors import Collector
    from torchrl.envs import GymEnv, SerialEnv

    env = SerialEnv(2, lambda: GymEnv("Pendulum-v1"))
    env.set_seed(0)
    rb = make_replay_buffer(100, batch_size=32, sample_window_size=2, min_buffer_size=4, seed=0)
    collector = Collector(env, None, frames_per_batch=20, total_frames=40, replay_buffer=rb)
    try:
        for _ in collector:
            pass
    finally:
        collector.shutdown()
    assert len(rb) == 40 and rb.num_trajectories == 4 and rb.ready()
    sample = rb.sample()
    assert sample["next", "observation"].shape == (32, 3)
    assert set(sample["index"].tolist()) <= set(range(20, 40))  # the newest batch


def test_sampled_batches_keep_nested_next_keys_aligned():
    rb = make_replay_buffer(64, batch_size=128, sample_window_size=4, seed=0)
    fill(rb, Collector(num_envs=2, length=4), num_batches=10)
    sample = rb.sample()
    torch.testing.assert_close(sample["next", "observation"], sample["observation"] + 1)
    assert sample["next", "done"].shape == (128, 1)


def test_keys_stores_only_the_named_entries_with_traj_ids_and_done():
    rb = make_replay_buffer(
        64, batch_size=16, sample_window_size=2, window_unit="episode", seed=0,
        keys=["observation", ("next", "observation")],
    )  # fmt: skip
    fake = Collector(num_envs=2, length=4, episode_lengths=[3, 5], traj_ids=True)
    fill(rb, fake, num_batches=3)
    sample = rb.sample()
    stored = set(sample.exclude("index").keys(True, True))
    assert stored == {
        "observation", ("next", "observation"), ("next", "done"), ("collector", "traj_ids"),
    }  # fmt: skip
    torch.testing.assert_close(sample["next", "observation"], sample["observation"] + 1)


def test_keys_give_the_same_samples_as_storing_everything():
    every, some = (
        make_replay_buffer(64, batch_size=32, sample_window_size=3, seed=0, keys=keys)
        for keys in (None, ["observation"])
    )
    fake = Collector(num_envs=2, length=4, traj_ids=True)
    for _ in range(5):
        batch = fake.batch()
        every.extend(batch)
        some.extend(batch)
    full, kept = every.sample(), some.sample()
    assert full["position"].tolist() == kept["index"].tolist()  # the same transitions
    torch.testing.assert_close(full["observation"], kept["observation"])


def test_sampler_in_a_plain_torchrl_buffer_counts_each_extend_as_one_trajectory():
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(25), sampler=SlidingWindowSampler(2, seed=0), batch_size=256
    )
    for start in range(0, 40, 8):
        rb.extend(TensorDict({"position": torch.arange(start, start + 8)}, [8]))
    assert sampled_values(rb, "position") == set(range(24, 40))


def test_sampler_raises_when_it_missed_writes():
    storage = LazyTensorStorage(10)
    rb = TensorDictReplayBuffer(storage=storage, batch_size=4)
    rb.extend(TensorDict({"x": torch.arange(5)}, [5]))
    late = TensorDictReplayBuffer(storage=storage, sampler=SlidingWindowSampler(1), batch_size=4)
    with pytest.raises(RuntimeError, match="must see every write"):
        late.sample()


def test_empty_resets_the_window_and_the_gate():
    rb = make_replay_buffer(100, batch_size=64, sample_window_size=2, min_buffer_size=1, seed=0)
    fill(rb, Collector(num_envs=2, length=4), num_batches=3)
    rb.empty()
    assert not rb.ready()
    rb.extend(TensorDict({"position": torch.full((4,), -1)}, [4]))
    assert rb.ready()
    assert sampled_values(rb, "position") == {-1}


# ----- min_buffer_size gating ------------------------------------------------------------------


def test_ready_waits_for_min_buffer_size_trajectories():
    rb = make_replay_buffer(100, batch_size=8, min_buffer_size=3)
    collector = Collector(num_envs=2, length=4)
    assert not rb.ready()
    fill(rb, collector, num_batches=1)  # 2 trajectories
    assert not rb.ready()
    fill(rb, collector, num_batches=1)  # 4 trajectories
    assert rb.ready()


def test_ready_with_zero_min_buffer_size_needs_one_transition():
    rb = make_replay_buffer(100, batch_size=8, min_buffer_size=0)
    assert not rb.ready()
    rb.extend(TensorDict({"x": torch.zeros(1)}, [1]))
    assert rb.ready()


# ----- the memory cache ------------------------------------------------------------------------


def cached_buffer(tmp_path, *, cache_size: int, sample_window_size: int, seed: int = 0):
    disk = CountingMemmapStorage(64, scratch_dir=tmp_path / "disk")
    rb = WindowReplayBuffer(
        storage=CachedStorage(disk, cache_size),
        sampler=SlidingWindowSampler(sample_window_size, seed=seed),
        batch_size=128,
    )
    return rb, disk


def test_cache_serves_window_samples_without_reading_the_disk(tmp_path):
    rb, disk = cached_buffer(tmp_path, cache_size=3, sample_window_size=3)
    fill(rb, Collector(num_envs=2, length=4), num_batches=12)  # 96 transitions: wrapped
    disk.calls = disk.reads = 0
    positions = sampled_values(rb, "position", num_samples=10)
    assert positions == set(range(84, 96))
    assert disk.calls == 0


def test_cache_misses_read_only_the_uncached_indices_from_disk(tmp_path):
    rb, disk = cached_buffer(tmp_path, cache_size=2, sample_window_size=6)
    fill(rb, Collector(num_envs=2, length=4), num_batches=12)
    disk.reads = 0
    sample = rb.sample()
    uncached = int((sample["position"] < 96 - 8).sum())
    assert 0 < uncached < 128
    assert disk.reads == uncached
    torch.testing.assert_close(sample["next", "observation"], sample["observation"] + 1)
    assert torch.equal(sample["trajectory"], sample["position"] // 4)


def test_cached_and_uncached_disk_storage_give_identical_samples(tmp_path):
    cached, _ = cached_buffer(tmp_path / "a", cache_size=2, sample_window_size=6)
    plain = WindowReplayBuffer(
        storage=LazyMemmapStorage(64, scratch_dir=tmp_path / "b"),
        sampler=SlidingWindowSampler(6, seed=0),
        batch_size=128,
    )
    for batch in [Collector(num_envs=2, length=4).batch() for _ in range(12)]:
        cached.extend(batch.clone())
        plain.extend(batch.clone())
    for _ in range(3):
        assert_same_samples(cached.sample(), plain.sample())


def test_cache_is_sized_from_the_first_trajectories(tmp_path):
    rb, _ = cached_buffer(tmp_path, cache_size=3, sample_window_size=3)
    fill(rb, Collector(num_envs=2, length=5), num_batches=1)
    assert rb.storage.cache_capacity == 15


# ----- save and load ---------------------------------------------------------------------------


BUFFER_KINDS = {
    "memory": {"storage": "memory"},
    "disk-cache": {"storage": "disk", "enable_cache": True, "cache_size": 2},
}


@pytest.mark.parametrize("window_unit", ["trajectory", "episode"])
@pytest.mark.parametrize("kind", list(BUFFER_KINDS))
def test_dumps_loads_resumes_with_identical_samples(tmp_path, kind, window_unit):
    def build(name):
        extra = dict(BUFFER_KINDS[kind])
        if kind != "memory":
            extra["scratch_dir"] = tmp_path / name
        return make_replay_buffer(
            40, batch_size=32, sample_window_size=3, window_unit=window_unit, seed=1, **extra
        )

    collector = Collector(num_envs=2, length=4, episode_lengths=[6, 3], traj_ids=True)
    before, after = [collector.batch() for _ in range(7)], [collector.batch() for _ in range(3)]
    original = build("original")
    for batch in before:
        original.extend(batch.clone())
        original.sample()
    original.dumps(tmp_path / "checkpoint")
    resumed = build("resumed")
    resumed.loads(tmp_path / "checkpoint")
    assert_same_samples(original.sample(), resumed.sample())
    for batch in after:
        original.extend(batch.clone())
        resumed.extend(batch.clone())
        for _ in range(2):
            assert_same_samples(original.sample(), resumed.sample())
    assert resumed.window_size() == original.window_size()


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_a_batch_unlike_the_stored_ones_is_refused_before_anything_is_written(tmp_path, kind):
    # TorchRL wrote part of it: a missing entry's rows stayed uninitialised, and after a
    # dtype error its writer had moved on while the sampler had not (a wrapped buffer then
    # sampled the oldest rows as the newest).
    extra = {"scratch_dir": tmp_path} if kind == "disk" else {}
    buffer = make_replay_buffer(
        10, batch_size=6, storage=kind, sample_window_size=3, window_unit="transition", **extra
    )

    def batch(start, stop, **overrides):
        entries = {"obs": torch.arange(start, stop, dtype=torch.float32).unsqueeze(-1)}
        entries["next"] = {"reward": entries["obs"] + 0.5}
        return TensorDict({**entries, **overrides}, [stop - start])

    buffer.extend(batch(0, 10))
    bad = [
        (
            batch(10, 13, obs=torch.zeros(3, 1, dtype=torch.float64)),
            TypeError,
            "obs is torch.float64",
        ),
        (batch(10, 13, obs=torch.zeros(3, 2)), TypeError, r"obs is .* shape \[2\] .* shape \[1\]"),
        (batch(10, 13, next={}), KeyError, "lacks next.reward"),
    ]
    for data, error, match in bad:
        with pytest.raises(error, match=match):
            buffer.extend(data)
    assert len(buffer) == 10 and buffer._sampler.num_written == 10
    buffer.extend(batch(10, 13))
    assert set(buffer.sample()["obs"].flatten().tolist()) <= {10.0, 11.0, 12.0}
    data = buffer.sample()
    assert torch.equal(data["next", "reward"], data["obs"] + 0.5)


def test_state_dict_round_trip_resumes_with_identical_samples():
    collector = Collector(num_envs=2, length=4)
    original = make_replay_buffer(40, batch_size=32, sample_window_size=3, seed=1)
    fill(original, collector, num_batches=7)
    original.sample()
    resumed = make_replay_buffer(40, batch_size=32, sample_window_size=3, seed=2)
    resumed.load_state_dict(original.state_dict())
    batch = collector.batch()
    original.extend(batch.clone())
    resumed.extend(batch.clone())
    for _ in range(3):
        assert_same_samples(original.sample(), resumed.sample())


def test_episode_state_saved_before_traj_ids_still_loads():
    collector = Collector(num_envs=2, length=4, episode_lengths=[6, 3])
    original = make_replay_buffer(40, batch_size=32, sample_window_size=3, window_unit="episode")
    fill(original, collector, num_batches=2)  # both envs are mid-episode
    state = original.state_dict()
    sampler_state = state["_sampler"]
    sampler_state["open_streams"] = sampler_state["open_streams"][:, 0]  # the old layout
    resumed = make_replay_buffer(40, batch_size=32, sample_window_size=3, window_unit="episode")
    resumed.load_state_dict(state)
    batch = collector.batch()
    original.extend(batch.clone())
    resumed.extend(batch.clone())
    assert resumed.window_size() == original.window_size()


def test_loading_state_saved_with_another_window_raises():
    original = make_replay_buffer(40, batch_size=8, sample_window_size=3)
    original.extend(TensorDict({"x": torch.zeros(2, 4)}, [2, 4]))
    other = make_replay_buffer(40, batch_size=8, sample_window_size=4)
    with pytest.raises(ValueError, match="sample_window_size=3"):
        other.load_state_dict(original.state_dict())


# ----- the memory storage ----------------------------------------------------------------------


def transitions(rows: int, start: int = 0) -> TensorDict:
    """HalfCheetah-shaped transitions (nested keys, float, bool and int entries), numbered."""
    step = torch.arange(start, start + rows)
    return TensorDict(
        {
            "observation": step[:, None] + torch.zeros(rows, 17),
            "action": -step[:, None] + torch.zeros(rows, 6),
            "collector": {"traj_ids": step // 3},
            "next": {
                "observation": step[:, None] + torch.ones(rows, 17),
                "reward": step[:, None].float(),
                "done": (step % 3 == 2)[:, None],
            },
        },
        [rows],
    )


def assert_same_tensordicts(first, second) -> None:
    assert first.batch_size == second.batch_size and first.device == second.device
    assert_same_samples(first, second)
    for key, value in first.items(True):
        if isinstance(value, TensorDict):
            assert value.batch_size == second[key].batch_size


def test_transition_storage_reads_and_writes_what_lazy_tensor_storage_does():
    ours, torchrl = TransitionStorage(20), LazyTensorStorage(20)
    position = 0
    for rows in (1, 4, 1, 7, 5, 9, 1, 13):  # fills, then wraps around twice
        index = torch.arange(position, position + rows) % 20
        data = transitions(rows, position)
        ours.set(index, data.clone())
        torchrl.set(index, data.clone())
        position += rows
        assert len(ours) == len(torchrl) and ours._last_cursor is not None
        assert torch.equal(
            torch.as_tensor(ours._last_cursor), torch.as_tensor(torchrl._last_cursor)
        )
        for read in (torch.randint(len(torchrl), (32,)), torch.tensor([0]), index):
            assert_same_tensordicts(ours.get(read), torchrl.get(read))
    assert_same_tensordicts(
        ours.get(torch.arange(20, dtype=torch.int32)), torchrl.get(torch.arange(20))
    )


def test_transition_storage_reads_and_writes_tensor_by_tensor(monkeypatch):
    storage = TransitionStorage(10)
    storage.set(torch.arange(4), transitions(4))  # the first write initialises: TorchRL's path

    def generic_indexing(*args, **kwargs):
        raise AssertionError("TensorDict indexing used")

    with monkeypatch.context() as patch:
        patch.setattr(TensorDict, "__setitem__", generic_indexing)
        patch.setattr(TensorDict, "__getitem__", generic_indexing)
        storage.set(torch.arange(4, 6), transitions(2, 4))
        sample = storage.get(torch.tensor([5, 0]))
    assert sample["next", "reward"].flatten().tolist() == [5.0, 0.0]


def test_transition_storage_leaves_other_reads_and_writes_to_torchrl():
    ours, torchrl = TransitionStorage(10), LazyTensorStorage(10)
    for storage in (ours, torchrl):
        storage.set(torch.arange(4), transitions(4))
        # A new key: TorchRL's path adds it to the storage.
        extra = transitions(2, 4).set("extra", torch.ones(2, 3))
        storage.set(torch.arange(4, 6), extra)
        storage.set(6, transitions(1, 6)[0].set("extra", torch.ones(3)))  # an int cursor
    assert "extra" in ours._storage.keys()
    for read in (
        torch.tensor([-1, 0, -3]),
        slice(1, 5),
        2,
        torch.tensor([True, False] * 3 + [True]),
    ):
        assert_same_tensordicts(ours.get(read), torchrl.get(read))
    for storage in (ours, torchrl):
        with pytest.raises(IndexError):
            storage.get(torch.tensor([7]))  # past what is stored


def test_transition_storage_checks_each_read_index_once_against_what_is_stored():
    # Reads index whole stored tensors after one bounds check: an index that is empty, past
    # what is stored, or negative gives TorchRL's result, before and after a wrap-around.
    ours, torchrl = TransitionStorage(10), LazyTensorStorage(10)
    for storage in (ours, torchrl):
        storage.set(torch.arange(6), transitions(6))
    for read in (torch.zeros(0, dtype=torch.long), torch.tensor([5, 0, 5]), torch.tensor([-2, 1])):
        assert_same_tensordicts(ours.get(read), torchrl.get(read))
    for read in (torch.tensor([2, 6]), torch.tensor([9], dtype=torch.int32)):
        for storage in (ours, torchrl):
            with pytest.raises(IndexError):
                storage.get(read)  # rows 6-9 exist in memory but hold nothing yet
    for storage in (ours, torchrl):
        storage.set(torch.arange(6, 12) % 10, transitions(6, 6))  # full, wrapped
    for read in (torch.arange(10), torch.tensor([9, 0, 1])):
        assert_same_tensordicts(ours.get(read), torchrl.get(read))
    with pytest.raises(IndexError):
        ours.get(torch.tensor([10]))


def test_transition_storage_reads_non_tensor_entries_through_torchrl():
    ours, torchrl = TransitionStorage(10), LazyTensorStorage(10)
    for storage in (ours, torchrl):
        storage.set(torch.arange(3), transitions(3).set("task", "reach"))
    sample = ours.get(torch.tensor([2, 0]))
    assert sample["task"] == torchrl.get(torch.tensor([2, 0]))["task"] == ["reach", "reach"]


def test_training_from_a_transition_storage_gives_the_losses_of_lazy_tensor_storage(action_spec):
    from helpers import OBS_DIM, make_batch

    from torchrl_crossq import CrossQLoss, CrossQUpdater, make_actor, make_critic, make_optimizers

    metrics = []
    for storage in (TransitionStorage(64), LazyTensorStorage(64)):
        torch.manual_seed(0)
        actor = make_actor(OBS_DIM, action_spec, num_cells=(8,))
        loss = CrossQLoss(actor, make_critic(OBS_DIM, action_spec.shape[-1], num_cells=(8,)))
        update = CrossQUpdater(loss, make_optimizers(loss), policy_delay=2)
        rb = WindowReplayBuffer(
            storage=storage, sampler=SlidingWindowSampler(0, seed=0), batch_size=16
        )
        run = []
        for step in range(6):  # the storage wraps around after 4 writes
            rb.extend(make_batch(16, seed=step))
            run.append(update(rb.sample()))
        metrics.append(run)
    for ours, theirs in zip(*metrics, strict=True):
        assert_same_samples(ours, theirs)


def test_memory_replay_buffer_stores_in_a_transition_storage():
    assert isinstance(make_replay_buffer(10, batch_size=4)._storage, TransitionStorage)


# ----- memory vs disk, prefetch ----------------------------------------------------------------


@pytest.mark.parametrize("enable_cache", [False, True])
def test_memory_and_disk_storage_give_identical_samples_for_a_seed(tmp_path, enable_cache):
    memory = make_replay_buffer(50, batch_size=64, sample_window_size=4, seed=3)
    disk = make_replay_buffer(
        50,
        batch_size=64,
        sample_window_size=4,
        seed=3,
        storage="disk",
        scratch_dir=tmp_path,
        enable_cache=enable_cache,
        cache_size=2,
    )
    for batch in [Collector(num_envs=2, length=4).batch() for _ in range(9)]:
        memory.extend(batch.clone())
        disk.extend(batch.clone())
        assert_same_samples(memory.sample(), disk.sample())


def test_prefetch_gives_the_samples_of_sequential_sampling():
    sequential = make_replay_buffer(100, batch_size=16, sample_window_size=3, seed=4)
    prefetched = make_replay_buffer(100, batch_size=16, sample_window_size=3, seed=4, prefetch=1)
    for batch in [Collector(num_envs=2, length=4).batch() for _ in range(4)]:
        sequential.extend(batch.clone())
        prefetched.extend(batch.clone())
    for _ in range(5):
        assert_same_samples(sequential.sample(), prefetched.sample())


def test_seed_makes_samples_reproducible():
    batches = [Collector(num_envs=2, length=4).batch() for _ in range(4)]
    samples = []
    for _ in range(2):
        rb = make_replay_buffer(100, batch_size=16, sample_window_size=3, seed=5)
        for batch in batches:
            rb.extend(batch.clone())
        samples.append(rb.sample())
    assert_same_samples(*samples)


# ----- bad values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"capacity": 0}, ValueError, "capacity=0"),
        ({"capacity": 10.5}, TypeError, "capacity=10.5"),
        ({"capacity": 1e6}, TypeError, "write 1000000"),
        ({"batch_size": -1}, ValueError, "batch_size=-1"),
        ({"sample_window_size": 101}, ValueError, "sample_window_size=101 .* capacity"),
        ({"window_unit": "step"}, ValueError, "window_unit='step'"),
        ({"storage": "ssd"}, ValueError, "storage='ssd' .* memory, disk"),
        ({"scratch_dir": "/tmp/x"}, ValueError, "scratch_dir=.* storage='disk'"),
        ({"min_buffer_size": -2}, ValueError, "min_buffer_size=-2"),
        ({"min_buffer_size": 101}, ValueError, "min_buffer_size=101"),
        ({"cache_size": -1}, ValueError, "cache_size=-1"),
        ({"prefetch": -1}, ValueError, "prefetch=-1"),
        ({"storage": "disk", "enable_cache": True}, ValueError, "cache_size"),
        (
            {"storage": "disk", "enable_cache": True, "cache_size": 101},
            ValueError,
            "cache_size=101",
        ),
    ],
)
def test_bad_values_raise_clear_errors(kwargs, error, match):
    kwargs = {"capacity": 100, "batch_size": 8} | kwargs
    with pytest.raises(error, match=match):
        make_replay_buffer(kwargs.pop("capacity"), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_pin_memory_without_cuda_raises():
    with pytest.raises(ValueError, match="pin_memory=True needs CUDA"):
        make_replay_buffer(100, batch_size=8, pin_memory=True)


def test_enable_cache_with_memory_storage_warns():
    with pytest.warns(UserWarning, match="no effect with storage='memory'"):
        make_replay_buffer(100, batch_size=8, enable_cache=True, cache_size=4)


def test_extend_larger_than_capacity_raises():
    rb = make_replay_buffer(10, batch_size=8)
    with pytest.raises(ValueError, match="exceeds the capacity of 10"):
        rb.extend(TensorDict({"x": torch.zeros(3, 4)}, [3, 4]))
