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
