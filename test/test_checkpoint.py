"""Checkpoint contents: the state of in-process envs that lets a resumed run continue exactly.

End-to-end resume (the same losses as an uninterrupted run, corrupted checkpoints...) is in
test_reliability.py.
"""

import pytest


def test_collector_state_of_worker_process_envs_is_their_next_trajectory_id():
    import functools

    from torchrl_crossq.checkpoint import collector_state, restore_collector_state
    from torchrl_crossq.collectors import make_collector
    from torchrl_crossq.envs import make_env

    create = functools.partial(make_env, "Pendulum-v1", num_envs=2, vectorization="parallel")
    collector = make_collector(create, None, seed=0, frames_per_batch=4, total_frames=8)
    next(iter(collector))
    state = collector_state(collector)  # ParallelEnv workers: their episodes are not capturable
    assert state == {"next_traj_id": 2}  # but the next trajectory's id is
    again = make_collector(create, None, seed=0, frames_per_batch=4, total_frames=8)
    assert not restore_collector_state(again, state)  # new episodes...
    assert again._traj_pool.state_dict()["traj_id"] == 2  # ...with new ids
    assert not restore_collector_state(collector, None)
    collector.shutdown()
    again.shutdown()


@pytest.mark.parametrize("direct", [True, False])
def test_a_restored_collector_numbers_its_next_episodes_on(direct):
    # A new collector counts trajectories from 0: its next episode took an id already used.
    import functools

    from torchrl_crossq.checkpoint import collector_state, restore_collector_state
    from torchrl_crossq.collectors import make_collector
    from torchrl_crossq.envs import make_env

    create = functools.partial(make_env, "Pendulum-v1", max_episode_steps=5)

    def collector():
        return make_collector(
            create, None, seed=0, frames_per_batch=4, total_frames=40, direct=direct
        )

    first = collector()
    batches = iter(first)
    for _ in range(3):  # 12 frames: episodes 0, 1 and 2 under way
        next(batches)
    state = collector_state(first)
    later = [next(batches)["collector", "traj_ids"].tolist() for _ in range(3)]
    for saved in (state, {k: v for k, v in state.items() if k != "next_traj_id"}):  # older
        resumed = collector()
        assert restore_collector_state(resumed, saved)
        again = iter(resumed)
        assert [next(again)["collector", "traj_ids"].tolist() for _ in range(3)] == later
        resumed.shutdown()
    first.shutdown()


def test_episode_recorder_replays_to_the_same_state():
    import gymnasium as gym
    import numpy as np

    from torchrl_crossq.checkpoint import EpisodeRecorder

    env = EpisodeRecorder(gym.make("HalfCheetah-v5"))
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env.reset()  # an unseeded reset: the env RNG's state before it is what counts
    for _ in range(5):
        env.step(env.action_space.sample())
    state = env.episode_state()
    expected = env.step(np.full(6, 0.3, np.float32))[0]
    other = EpisodeRecorder(gym.make("HalfCheetah-v5"))
    other.reset(seed=123)
    other.restore_episode(state)
    np.testing.assert_array_equal(other.step(np.full(6, 0.3, np.float32))[0], expected)


def test_an_episode_too_long_to_replay_is_not_recorded():
    import gymnasium as gym

    from torchrl_crossq.checkpoint import EpisodeRecorder

    env = EpisodeRecorder(gym.make("Pendulum-v1"))
    env.max_steps = 3
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    assert len(env.episode_state()["actions"]) == 3
    env.step(env.action_space.sample())
    assert env.episode_state() is None
    env.reset()
    assert env.episode_state()["actions"] == []
