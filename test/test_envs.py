import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from test_embodied import ACTION_DIM as METAWORLD_ACTION_DIM
from test_embodied import Scripted, reach_controller
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq import make_actor
from torchrl_crossq.envs import (
    METAWORLD,
    BatchedEvaluation,
    MissingExtraError,
    UnsupportedEnvError,
    evaluate,
    make_env,
)


def test_batched_evaluation_gives_each_episode_what_it_gets_alone():
    # One actor call for all running episodes equals one call per episode (eval-mode BRN).
    torch.manual_seed(0)
    actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)), num_cells=(8,))
    evaluation = BatchedEvaluation("Pendulum-v1", episodes=3, max_steps=50)
    together = evaluation(actor, seed=7)
    alone = []
    for i in range(3):
        env = gym.make("Pendulum-v1")
        obs, total = env.reset(seed=7 + i)[0], 0.0
        with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
            for _ in range(50):
                td = TensorDict({"observation": torch.as_tensor(obs, dtype=torch.float32)}, [])
                obs, reward, *_ = env.step(actor(td)["action"].numpy())
                total += reward
        alone.append(total)
    assert evaluation.returns.tolist() == pytest.approx(alone, rel=1e-6)
    assert together.return_mean == pytest.approx(float(np.mean(alone)), rel=1e-6)
    assert together.return_std == pytest.approx(float(np.std(alone)), rel=1e-6)
    assert together.success_rate is None
    assert evaluation.steps == 150
    evaluation.close()


def test_batched_evaluation_is_the_same_for_the_same_seed():
    actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)), num_cells=(8,))
    evaluation = BatchedEvaluation("Pendulum-v1", episodes=2, max_steps=20)
    assert evaluation(actor, seed=3) == evaluation(actor, seed=3)
    assert evaluation(actor, seed=3) != evaluation(actor, seed=4)


def test_batched_evaluation_stops_each_episode_at_its_time_limit():
    actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)), num_cells=(8,))
    evaluation = BatchedEvaluation("Pendulum-v1", episodes=2, max_steps=100, max_episode_steps=7)
    evaluation(actor, seed=0)
    assert evaluation.steps == 14


def test_batched_evaluation_success_rate_of_scripted_meta_world_episodes():
    pytest.importorskip("metaworld")
    evaluation = BatchedEvaluation(
        METAWORLD, task="reach-v3", episodes=3, max_steps=100, max_episode_steps=60
    )
    assert evaluation(Scripted(reach_controller), seed=1).success_rate == 1.0

    def still(td):
        td["action"] = torch.zeros(*td["observation"].shape[:-1], METAWORLD_ACTION_DIM)
        return td

    assert evaluation(Scripted(still), seed=1).success_rate == 0.0
    evaluation.close()


@pytest.mark.parametrize("num_envs", [1, 2])
def test_a_discrete_action_env_is_refused_naming_it(num_envs):
    from torchrl_crossq.envs import make_env

    with pytest.raises(UnsupportedEnvError, match=r"env.name='CartPole-v1' has OneHot actions"):
        make_env("CartPole-v1", num_envs=num_envs, vectorization="serial")


class _Boxes(gym.Env):
    """Steps its observation and action spaces, whatever they are."""

    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def _register(name, observation_space, action_space):
    gym.register(name, entry_point=lambda: _Boxes(observation_space, action_space))
    return name


VECTOR = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


@pytest.mark.parametrize(
    "low, high",
    [([0.0, -np.inf], [1.0, 5.0]), ([0.0, -1.0], [1.0, -1.0])],  # (gymnasium refuses low > high)
    ids=["one-infinite-bound", "low-equals-high"],
)
def test_action_bounds_that_cannot_be_squashed_into_are_refused_naming_the_env(low, high):
    # The actor's own check raised a ValueError that did not name env.name, as a traceback.
    bounds = gym.spaces.Box(np.array(low, np.float32), np.array(high, np.float32))
    name = _register(f"Test/BadBounds-{len(gym.registry)}-v0", VECTOR, bounds)
    with pytest.raises(UnsupportedEnvError, match=rf"env.name='{name}' has action bounds low="):
        make_env(name)


@pytest.mark.parametrize("what", ["observations", "actions"])
def test_a_0d_box_is_refused_naming_the_env(what):
    # TorchRL calls a 0-d Box [1]: observations reached the actor as (), actions the env as (1,).
    scalar = gym.spaces.Box(-1.0, 1.0, (), np.float32)
    spaces = (scalar, VECTOR) if what == "observations" else (VECTOR, scalar)
    name = _register(f"Test/Scalar-{len(gym.registry)}-v0", *spaces)
    with pytest.raises(UnsupportedEnvError, match=rf"env.name='{name}' has {what} of shape \(\)"):
        make_env(name)


def test_an_env_missing_its_simulator_package_names_the_env_and_the_install():
    def needs_box2d():
        raise gym.error.DependencyNotInstalled(
            'Box2D is not installed, run `pip install "gymnasium[box2d]"`'
        )

    name = f"Test/NeedsBox2D-{len(gym.registry)}-v0"
    gym.register(name, entry_point=needs_box2d)
    with pytest.raises(MissingExtraError, match=rf"env.name='{name}' cannot be made here: Box2D"):
        make_env(name)


def test_evaluate_refuses_an_env_of_several_copies():
    # It summed the copies' rewards into one return (num_envs times too large), every copy
    # stopped by the first done.
    env = make_env("Pendulum-v1", num_envs=2, vectorization="serial", seed=0)
    actor = make_actor(3, env.action_spec_unbatched, num_cells=(8,))
    with pytest.raises(ValueError, match=r"batch size \[2\].*use BatchedEvaluation"):
        evaluate(env, actor, episodes=1, max_steps=5)
    env.close()
    single = make_env("Pendulum-v1", seed=0)
    assert math.isfinite(evaluate(single, actor, episodes=1, max_steps=5).return_mean)
    single.close()
