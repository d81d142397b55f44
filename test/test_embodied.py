"""Meta-World tasks, the EnvPool backend, success rate and the embodied preset (extra ``embodied``)."""

import builtins
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.data import Bounded

from torchrl_crossq import CrossQLoss, make_actor, make_critic
from torchrl_crossq.data import make_replay_buffer
from torchrl_crossq.envs import (
    METAWORLD,
    BatchedEvaluation,
    MissingExtraError,
    UnknownEnvError,
    envpool_id,
    evaluate,
    make_env,
)

HAS_METAWORLD = importlib.util.find_spec("metaworld") is not None
HAS_ENVPOOL = importlib.util.find_spec("envpool") is not None
needs_metaworld = pytest.mark.skipif(
    not HAS_METAWORLD, reason="Meta-World not installed: pip install -e '.[embodied]'"
)
BACKENDS = [
    pytest.param("gymnasium", marks=needs_metaworld),
    pytest.param(
        "envpool",
        marks=pytest.mark.skipif(
            not (HAS_ENVPOOL and HAS_METAWORLD),
            reason="EnvPool/Meta-World not installed: pip install -e '.[embodied]'",
        ),
    ),
]
TASKS = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3"]
OBS_DIM, ACTION_DIM = 39, 4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("task", TASKS)
def test_each_task_builds_and_steps_with_each_backend(task, backend):
    env = make_env(METAWORLD, task=task, backend=backend, seed=0)
    rollout = env.rollout(3)
    assert rollout["observation"].shape[-1] == OBS_DIM
    assert env.action_spec.shape[-1] == ACTION_DIM
    assert rollout["next", "success"].dtype == torch.bool
    assert rollout["next", "episode_success"].dtype == torch.bool
    assert rollout["observation"].dtype == torch.float32
    assert not rollout["next", "done"].any()
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_episodes_are_truncated_not_terminated(backend):
    env = make_env(METAWORLD, task="reach-v3", backend=backend, num_envs=2,
                   vectorization="serial", max_episode_steps=4, seed=0)  # fmt: skip
    rollout = env.rollout(10, break_when_any_done=False)
    truncated = rollout["next", "truncated"].squeeze(-1)
    # Steps 4 and 8 of each env end an episode by truncation; nothing terminates.
    assert truncated[:, [3, 7]].all() and truncated.sum() == 4
    assert not rollout["next", "terminated"].any()
    assert rollout["next", "step_count"][:, 4].flatten().tolist() == [1, 1]  # new episodes
    env.close()


def reach_controller(td: TensorDict) -> TensorDict:
    """Scripted reach: move the hand (observation[:3]) toward the goal (observation[-3:])."""
    obs = td["observation"]
    action = torch.zeros(*obs.shape[:-1], ACTION_DIM)
    action[..., :3] = ((obs[..., -3:] - obs[..., :3]) * 10).clamp(-1, 1)
    td["action"] = action
    return td


class Scripted(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, td):
        return self.fn(td)


@pytest.mark.parametrize("backend", BACKENDS)
def test_success_rate_of_scripted_episodes(backend):
    env = make_env(METAWORLD, task="reach-v3", backend=backend, max_episode_steps=60, seed=1)
    reach = evaluate(env, Scripted(reach_controller), episodes=3, max_steps=100)
    assert reach.success_rate == 1.0

    def still(td):
        td["action"] = torch.zeros(*td["observation"].shape[:-1], ACTION_DIM)
        return td

    idle = evaluate(env, Scripted(still), episodes=3, max_steps=100)
    assert idle.success_rate == 0.0
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_episode_success_latches_within_an_episode_and_resets_with_it(backend):
    env = make_env(METAWORLD, task="reach-v3", backend=backend, max_episode_steps=70, seed=2)

    def reach_then_leave(td):  # reach the goal, then move away from it
        td = reach_controller(td)
        leave = td["step_count"] >= 50  # [..., 1]
        td["action"] = torch.where(leave, torch.tensor([0.0, -1.0, -1.0, 0.0]), td["action"])
        return td

    rollout = env.rollout(140, Scripted(reach_then_leave), break_when_any_done=False)
    success = rollout["next", "success"].reshape(-1)
    latched = rollout["next", "episode_success"].reshape(-1)
    for start in (0, 70):  # two episodes
        episode_success, episode_latched = success[start : start + 70], latched[start : start + 70]
        first = int(episode_success.float().argmax())
        assert episode_success.any() and not episode_success[-1]  # it left the goal
        assert not episode_latched[:first].any() and episode_latched[first:].all()
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_world_episodes_last_max_episode_steps_above_its_own_500(backend):
    # gymnasium's Meta-World truncated at its max_path_length (500) under a longer TimeLimit,
    # while EnvPool honoured the key: training and evaluation episodes differed in length.
    env = make_env(METAWORLD, task="reach-v3", backend=backend, max_episode_steps=503, seed=0)
    data = env.rollout(506, break_when_any_done=False).reshape(-1)
    assert data["next", "truncated"].squeeze(-1).nonzero().flatten().tolist() == [502]
    env.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_meta_world_transitions_bootstrap(backend):
    env = make_env(METAWORLD, task="reach-v3", backend=backend, max_episode_steps=3, seed=0)
    data = env.rollout(6, break_when_any_done=False).reshape(-1)
    truncated = data["next", "truncated"].squeeze(-1)
    assert truncated.sum() == 2 and not data["next", "terminated"].any()
    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, (ACTION_DIM,)), num_cells=[16])
    critic = make_critic(OBS_DIM, ACTION_DIM, num_cells=[16])
    loss = CrossQLoss(actor, critic, bootstrap_type="standard", alpha_type="fixed_alpha")
    loss.make_value_estimator(gamma=0.8)
    torch.manual_seed(0)
    _, metadata = loss.qvalue_loss(data.select("observation", "action", "next"))
    loss.make_value_estimator(gamma=0.0)
    torch.manual_seed(0)
    _, no_bootstrap = loss.qvalue_loss(data.select("observation", "action", "next"))
    reward = data["next", "reward"].squeeze(-1)
    torch.testing.assert_close(no_bootstrap["target_value"], reward)
    # gamma * V(s') is added on every transition, the truncated ones included.
    assert (metadata["target_value"] - reward)[truncated].abs().min() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_trajectory_is_one_env_segment_of_one_round_with_either_backend(backend):
    env = make_env(METAWORLD, task="reach-v3", backend=backend, num_envs=2,
                   vectorization="serial", seed=0)  # fmt: skip
    buffer = make_replay_buffer(1000, batch_size=4, sample_window_size=3)
    for _ in range(2):  # two collection rounds of 5 steps per env
        buffer.extend(env.rollout(5, break_when_any_done=False))
    assert buffer.num_trajectories == 4 and len(buffer) == 20
    assert buffer.window_size() == 15  # the newest 3 trajectories of 5 transitions
    env.close()


@pytest.mark.skipif(not (HAS_ENVPOOL and HAS_METAWORLD), reason="needs the embodied extra")
def test_envpool_never_auto_resets_so_every_step_is_real():
    env = make_env("HalfCheetah-v5", backend="envpool", num_envs=2, max_episode_steps=3, seed=0)
    rollout = env.rollout(9, break_when_any_done=False)
    # An EnvPool auto-reset step would return reward exactly 0 and ignore the action.
    assert (rollout["next", "reward"] != 0).all()
    first = rollout["observation"][:, 3]  # first observation of the second episode
    assert not torch.equal(first, rollout["next", "observation"][:, 2])
    assert rollout["next", "step_count"][:, 3].flatten().tolist() == [1, 1]
    env.close()


@pytest.mark.skipif(not (HAS_ENVPOOL and HAS_METAWORLD), reason="needs the embodied extra")
def test_envpool_partial_reset_replaces_only_the_requested_rows():
    env = make_env("HalfCheetah-v5", backend="envpool", num_envs=3, seed=0)
    td = env.step(env.rand_action(env.reset()))["next"]
    before = td["observation"].clone()
    td["_reset"] = torch.tensor([[False], [True], [False]])
    after = env.reset(td)
    torch.testing.assert_close(after["observation"][[0, 2]], before[[0, 2]])
    assert not torch.equal(after["observation"][1], before[1])
    assert after["step_count"].flatten().tolist() == [1, 0, 1]
    # EnvPool's own buffer matches: the next step continues rows 0 and 2 from where they were.
    torch.testing.assert_close(env.base_env.obs["observation"], after["observation"])
    env.close()


@pytest.mark.skipif(not (HAS_ENVPOOL and HAS_METAWORLD), reason="needs the embodied extra")
def test_envpool_seeds_reproduce_and_differ():
    def first_obs(seed):
        env = make_env(METAWORLD, task="reach-v3", backend="envpool", num_envs=2, seed=seed)
        obs = env.reset()["observation"]
        env.close()
        return obs

    torch.testing.assert_close(first_obs(3), first_obs(3))
    assert not torch.equal(first_obs(3), first_obs(4))


@needs_metaworld
def test_gymnasium_meta_world_seeds_reproduce_and_differ():
    # Meta-World's MT1 draws its goals when it is built: without a seed there, the same
    # reset seed gave other goals in every env instance (and every process).
    def first_obs(seed):
        env = make_env(METAWORLD, task="reach-v3", num_envs=2, vectorization="serial", seed=seed)
        obs = env.reset()["observation"]
        env.close()
        return obs

    seed_3 = first_obs(3)
    torch.testing.assert_close(first_obs(3), seed_3)
    assert not torch.equal(seed_3, first_obs(4))
    goals = seed_3[:, 36:]  # the last three entries are the goal position
    assert not torch.equal(goals[0], goals[1])  # each copy has its own seed


@needs_metaworld
def test_meta_world_evaluation_is_reproducible_for_a_task_seed():
    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,))

    def returns(task_seed):
        evaluation = BatchedEvaluation(
            METAWORLD, task="reach-v3", episodes=2, max_steps=5, task_seed=task_seed
        )
        evaluation(actor, seed=0)
        evaluation.close()
        return evaluation.returns

    np.testing.assert_array_equal(returns(10), returns(10))
    assert not np.array_equal(returns(10), returns(11))


@needs_metaworld
def test_a_meta_world_evaluation_depends_on_its_seed_not_on_the_evaluations_before():
    # Meta-World draws an episode's goal before the reset's seed applies: evaluate.py, with
    # fresh envs, must still replay the run's last evaluation.
    actor = make_actor(OBS_DIM, Bounded(-1.0, 1.0, shape=(ACTION_DIM,)), num_cells=(8,))
    used = BatchedEvaluation(METAWORLD, task="reach-v3", episodes=2, max_steps=5, task_seed=0)
    fresh = BatchedEvaluation(METAWORLD, task="reach-v3", episodes=2, max_steps=5, task_seed=0)
    used(actor, seed=7)
    assert used(actor, seed=3) == fresh(actor, seed=3)
    used.close()
    fresh.close()


def test_envpool_ids_of_meta_world_tasks():
    assert envpool_id(METAWORLD, "reach-v3") == "MetaWorld/Reach-v3"
    assert envpool_id(METAWORLD, "door-open-v3") == "MetaWorld/DoorOpen-v3"
    assert envpool_id(METAWORLD, "pick-out-of-hole-v3") == "MetaWorld/PickOutOfHole-v3"
    assert envpool_id("Hopper-v5") == "Hopper-v5"


@needs_metaworld
def test_unknown_task_lists_close_matches():
    with pytest.raises(UnknownEnvError, match=r"env.task='reech-v3'.*did you mean: reach-v3"):
        make_env(METAWORLD, task="reech-v3")


def test_task_without_meta_world_is_an_error():
    with pytest.raises(UnknownEnvError, match=r"env\.task='reach-v3' is only used with"):
        make_env("Pendulum-v1", task="reach-v3")


@pytest.fixture
def without(monkeypatch):
    """Makes ``import <name>`` fail, as on a machine without the extra."""

    def hide(*names):
        real_import = builtins.__import__

        def fake_import(name, *args, **kwargs):
            if name.split(".")[0] in names:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake_import)
        for name in names:
            monkeypatch.delitem(__import__("sys").modules, name, raising=False)

    return hide


def test_missing_meta_world_names_the_extra(without):
    without("metaworld")
    with pytest.raises(MissingExtraError, match=r"'metaworld'.*pip install -e '\.\[embodied\]'"):
        make_env(METAWORLD, task="reach-v3")


def test_missing_envpool_names_the_extra(without):
    without("envpool")
    with pytest.raises(MissingExtraError, match=r"'envpool'.*pip install -e '\.\[embodied\]'"):
        make_env("HalfCheetah-v5", backend="envpool")


def test_default_install_envs_work_without_the_extra(without):
    without("metaworld", "envpool")
    env = make_env("Pendulum-v1", seed=0)
    assert "episode_success" not in env.observation_spec.keys()
    assert env.rollout(2).batch_size == (2,)


def test_numpy_float_success_from_envpool_is_read_as_bool():
    from torchrl_crossq.envpool_env import EnvPoolEnv

    class Fake:
        _read_success = True
        batch_size = torch.Size([2])

    out = EnvPoolEnv._observation(Fake(), np.zeros((2, 3)), {"success": np.array([0.0, 1.0])}, None)
    assert out["success"].tolist() == [[False], [True]]


def test_embodied_preset_is_meta_world_reach_on_envpool():
    from test_train_script import compose_config

    cfg = compose_config(["experiment=embodied"])
    assert (cfg.env.name, cfg.env.task, cfg.env.backend) == (METAWORLD, "reach-v3", "envpool")
    # 8 envs x 4 steps = 32 frames per round and the block's 32 updates per round: UTD 1.
    assert cfg.collector.frames_per_batch == cfg.algorithm.update_epoch == 32


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_meta_world_run_logs_success_rates(tmp_path, backend):
    from test_train_script import run

    run(
        [
            "env=metaworld",
            "env.task=reach-v3",
            f"env.backend={backend}",
            "env.num_envs=2",
            "env.vectorization=serial",
            "env.max_episode_steps=8",  # episodes end inside the run: train/success_rate
            "logger.backend=csv",
        ],
        tmp_path,
    )
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    assert rows[0].endswith(",success_rate") and len(rows) == 3
    assert all(0.0 <= float(row.rsplit(",", 1)[1]) <= 1.0 for row in rows[1:])
    scalars = next((tmp_path / "logs").rglob("scalars"))
    logged = {str(p.relative_to(scalars).with_suffix("")) for p in scalars.rglob("*.csv")}
    assert {"eval/success_rate", "train/success_rate"} <= logged
    assert (tmp_path / "curve.png").stat().st_size > 0


@needs_metaworld
def test_a_meta_world_run_is_reproduced_by_its_seed(tmp_path):
    from test_train_script import run

    overrides = [
        "env=metaworld",
        "env.task=reach-v3",
        "env.backend=gymnasium",
        "env.num_envs=2",
        "env.vectorization=serial",
        "env.max_episode_steps=8",
        "logger.backend=csv",
    ]
    run(overrides, tmp_path / "a")
    run(overrides, tmp_path / "b")
    first = (tmp_path / "a" / "eval.csv").read_text()
    assert first == (tmp_path / "b" / "eval.csv").read_text()
    assert len(set(first.splitlines()[1:])) > 1  # evaluations that differ: not a constant


def test_learning_curve_has_a_success_panel_for_success_tasks(tmp_path):
    from torchrl_crossq.logging import EvalHistory, plot_learning_curve

    history = EvalHistory(tmp_path / "eval.csv")
    history.append(10, 1.0, 0.5, 0.2)
    history.append(20, 2.0, 0.5, 0.9)
    import matplotlib.image

    wide = matplotlib.image.imread(plot_learning_curve(history, tmp_path / "a.png", "t"))
    plain = EvalHistory(tmp_path / "plain.csv")
    plain.append(10, 1.0, 0.5)
    narrow = matplotlib.image.imread(plot_learning_curve(plain, tmp_path / "b.png", "t"))
    assert wide.shape[1] == 2 * narrow.shape[1]  # return and success rate side by side
    assert EvalHistory(tmp_path / "eval.csv").rows[-1]["success_rate"] == 0.9  # read back


def test_missing_extra_in_the_script_is_one_clear_line(tmp_path):
    script = Path(__file__).resolve().parent.parent / "sota_implementations" / "crossq.py"
    code = (
        "import sys, runpy; sys.modules['metaworld'] = None; "
        f"sys.argv = ['crossq.py', 'env=metaworld', 'run_dir={tmp_path}/r']; "
        f"runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "needs the 'metaworld' package of the embodied extra" in done.stderr
    assert "pip install -e '.[embodied]'" in done.stderr
