"""Environment factories: gymnasium tasks through TorchRL's GymEnv, ParallelEnv and SerialEnv."""

from __future__ import annotations

import difflib
import functools

import torch
from torchrl.envs import (
    DoubleToFloat,
    EnvBase,
    GymEnv,
    ParallelEnv,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
)
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq.modules.networks import set_training_mode

VECTORIZATIONS = ("parallel", "serial")


class UnknownEnvError(ValueError):
    """An environment id that the installed simulators do not provide."""


def check_env_id(name: str) -> None:
    """Raises :class:`UnknownEnvError` listing close matches when ``name`` is not registered.

    Examples:
        >>> check_env_id("Pendulum-v1")  # doctest: +ELLIPSIS
        >>> check_env_id("HalfCheeta-v5")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrl_crossq.envs.UnknownEnvError: env.name='HalfCheeta-v5' is not a registered gymnasium environment; did you mean: HalfCheetah-v5, ...
    """
    import gymnasium as gym

    registered = list(gym.envs.registry.keys())
    if name in registered:
        return
    close = difflib.get_close_matches(name, registered, n=5, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}?" if close else "see gymnasium.envs.registry.keys()"
    raise UnknownEnvError(f"env.name={name!r} is not a registered gymnasium environment; {hint}")


def _make_single_env(name: str, max_episode_steps: int | None, device) -> EnvBase:
    kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
    return GymEnv(name, device=device, **kwargs)


def make_env(
    name: str,
    *,
    num_envs: int = 1,
    vectorization: str = "parallel",
    max_episode_steps: int | None = None,
    seed: int | None = None,
    device: torch.device | str = "cpu",
) -> EnvBase:
    """Builds a float32 TorchRL env of ``num_envs`` copies of gymnasium task ``name``.

    Transforms: ``DoubleToFloat`` (MuJoCo observations are float64),
    ``StepCounter`` (writes ``step_count``) and ``RewardSum`` (writes
    ``episode_reward``). Truncation by the time limit sets ``truncated`` and
    ``done`` but not ``terminated``, so the TD target keeps bootstrapping.

    Args:
        name: a gymnasium id, e.g. ``"HalfCheetah-v5"``.

    Keyword Args:
        num_envs: copies stepped together; the env's batch size is ``[num_envs]``
            (``[]`` for a single env).
        vectorization: ``"parallel"`` (``ParallelEnv``, one worker process per
            env) or ``"serial"`` (``SerialEnv``, in process: faster when a step
            is cheaper than the inter-process hop, as MuJoCo's are).
        max_episode_steps: override of the task's time limit.
        seed: seeds the env(s); copies get consecutive seeds.
        device: where the env's tensors live.

    Examples:
        >>> env = make_env("Pendulum-v1", seed=0)
        >>> td = env.rollout(3)
        >>> td["observation"].dtype, td.batch_size
        (torch.float32, torch.Size([3]))
    """
    check_env_id(name)
    if vectorization not in VECTORIZATIONS:
        raise ValueError(
            f"env.vectorization={vectorization!r} is not supported; use one of: parallel, serial"
        )
    if num_envs < 1:
        raise ValueError(f"env.num_envs={num_envs} must be >= 1")
    create = functools.partial(_make_single_env, name, max_episode_steps, "cpu")
    if num_envs == 1:
        base = create()
    elif vectorization == "parallel":
        base = ParallelEnv(num_envs, create, mp_start_method="spawn")
    else:
        base = SerialEnv(num_envs, create)
    env = TransformedEnv(base, DoubleToFloat())
    env.append_transform(StepCounter())
    env.append_transform(RewardSum())
    if seed is not None:
        env.set_seed(seed)
    return env.to(device)


def env_dims(env: EnvBase) -> tuple[int, int]:
    """``(observation size, action size)`` of a flat-observation env."""
    obs_spec = env.observation_spec["observation"]
    return obs_spec.shape[-1], env.action_spec.shape[-1]


def evaluate(env: EnvBase, policy, *, episodes: int, max_steps: int) -> tuple[float, float]:
    """Mean and std of the return of ``episodes`` deterministic episodes (actor in eval mode).

    Actions are the TanhNormal's deterministic action (``ExplorationType.DETERMINISTIC``);
    each episode runs until ``done`` or ``max_steps``.
    """
    returns = []
    with (
        torch.no_grad(),
        set_exploration_type(ExplorationType.DETERMINISTIC),
        set_training_mode(policy, False),
    ):
        for _ in range(episodes):
            rollout = env.rollout(
                max_steps, policy, break_when_any_done=True, auto_cast_to_device=True
            )
            returns.append(float(rollout["next", "reward"].sum()))
    values = torch.tensor(returns)
    return float(values.mean()), float(values.std(unbiased=False))
