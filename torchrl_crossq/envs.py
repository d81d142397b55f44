"""Environment factories: gymnasium and Meta-World tasks through TorchRL's GymWrapper, ParallelEnv
and SerialEnv, or EnvPool's threaded C++ envs through TorchRL's MultiThreadedEnv."""

from __future__ import annotations

import difflib
import functools
from typing import NamedTuple

import gymnasium as gym
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite
from torchrl.envs import (
    DoubleToFloat,
    EnvBase,
    GymWrapper,
    ParallelEnv,
    RewardSum,
    SerialEnv,
    StepCounter,
    Transform,
    TransformedEnv,
)
from torchrl.envs.gym_like import BaseInfoDictReader
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq.checkpoint import EpisodeRecorder
from torchrl_crossq.envpool_env import SUCCESS_KEY, EnvPoolEnv
from torchrl_crossq.modules.networks import set_training_mode

VECTORIZATIONS = ("parallel", "serial")
ENV_BACKENDS = ("gymnasium", "envpool")
# env.name of the Meta-World single-task group; env.task names the task.
METAWORLD = "Meta-World/MT1"
EMBODIED_INSTALL = "pip install -e '.[embodied]'"


class UnknownEnvError(ValueError):
    """An environment id that the installed simulators do not provide."""


class UnsupportedEnvError(ValueError):
    """An environment whose actions or observations CrossQ cannot take (discrete actions...)."""


class MissingExtraError(ImportError):
    """A simulator that lives in an optional extra that is not installed."""


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{what} needs the {module!r} package of the embodied extra: {EMBODIED_INSTALL}"
        ) from err


def check_env_id(name: str) -> None:
    """Raises :class:`UnknownEnvError` listing close matches when ``name`` is not registered.

    Examples:
        >>> check_env_id("Pendulum-v1")  # doctest: +ELLIPSIS
        >>> check_env_id("HalfCheeta-v5")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        torchrl_crossq.envs.UnknownEnvError: env.name='HalfCheeta-v5' is not a registered gymnasium environment; did you mean: HalfCheetah-v5, ...
    """

    registered = list(gym.envs.registry.keys())
    if name in registered:
        return
    hint = _did_you_mean(name, registered, "see gymnasium.envs.registry.keys()")
    raise UnknownEnvError(f"env.name={name!r} is not a registered gymnasium environment; {hint}")


def _did_you_mean(value: str, known: list[str], otherwise: str) -> str:
    close = difflib.get_close_matches(value, known, n=5, cutoff=0.6)
    return f"did you mean: {', '.join(close)}?" if close else otherwise


def metaworld_tasks() -> list[str]:
    """The Meta-World v3 single-task names (``reach-v3``, ``push-v3``, ...); needs the extra."""
    metaworld = _require("metaworld", f"env.name={METAWORLD}")
    return sorted(metaworld.env_dict.ALL_V3_ENVIRONMENTS)


def envpool_id(name: str, task: str | None = None) -> str:
    """EnvPool's id of a task: MuJoCo ids are shared, Meta-World's are CamelCase.

    Examples:
        >>> envpool_id("HalfCheetah-v5")
        'HalfCheetah-v5'
        >>> envpool_id("Meta-World/MT1", "pick-place-v3")
        'MetaWorld/PickPlace-v3'
    """
    if name != METAWORLD:
        return name
    stem, version = task.rsplit("-", 1)
    return "MetaWorld/" + "".join(part.capitalize() for part in stem.split("-")) + f"-{version}"


def check_env(name: str, task: str | None = None, backend: str = "gymnasium") -> None:
    """Checks that ``name`` (and ``task``) can be built with ``backend``, with a clear error if not.

    Raises :class:`UnknownEnvError` (listing close matches) for an unknown id or
    task, :class:`MissingExtraError` (naming the install command) when the
    backend or Meta-World is not installed, and ``ValueError`` for a bad backend.
    """
    if backend not in ENV_BACKENDS:
        raise ValueError(
            f"env.backend={backend!r} is not supported; use one of: {', '.join(ENV_BACKENDS)}"
        )
    if name == METAWORLD:
        tasks = metaworld_tasks()
        if task not in tasks:
            hint = _did_you_mean(str(task), tasks, f"use one of: {', '.join(tasks)}")
            raise UnknownEnvError(f"env.task={task!r} is not a Meta-World v3 task; {hint}")
    elif task is not None:
        raise UnknownEnvError(
            f"env.task={task!r} is only used with env.name={METAWORLD}; "
            f"for env.name={name!r} set env.task=null"
        )
    if backend == "envpool":
        envpool = _require("envpool", "env.backend=envpool")
        known = envpool.list_all_envs()
        pool_id = envpool_id(name, task)
        if pool_id not in known:
            hint = _did_you_mean(pool_id, known, "see envpool.list_all_envs()")
            raise UnknownEnvError(f"env.name={name!r} is not an EnvPool task ({pool_id}); {hint}")
    elif name != METAWORLD:
        check_env_id(name)


def make_gym_env(
    name: str,
    task: str | None = None,
    max_episode_steps: int | None = None,
    *,
    task_seed: int | None = None,
    **kwargs,
) -> gym.Env:
    """The plain gymnasium env of task ``name`` (Meta-World: ``task``), no TorchRL wrapper.

    ``task_seed`` (Meta-World only) seeds what Meta-World's MT1 draws when the env is built:
    its set of goals and the goal of the first reset, drawn before that reset's seed applies.
    Without it they come from an unseeded generator, and no reset seed makes a run
    reproducible. Other tasks take all their randomness from the reset's seed and ignore
    it. Extra keyword arguments go to ``gymnasium.make`` (e.g. ``render_mode``).
    """
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    if name != METAWORLD:
        try:
            return gym.make(name, **kwargs)
        except gym.error.DependencyNotInstalled as err:  # Box2D, pygame, ...
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MissingExtraError(f"env.name={name!r} cannot be made here: {reason}") from err
    _require("metaworld", f"env.name={METAWORLD}")  # registers the Meta-World/* ids
    env = gym.make(name, env_name=task, disable_env_checker=True, seed=task_seed, **kwargs)
    if max_episode_steps is not None:
        # Meta-World wraps its env in a TimeLimit of its max_path_length (500), and the env
        # truncates there too, under any TimeLimit gym.make adds; EnvPool's Meta-World
        # honours the requested length, and so must this one.
        env.unwrapped.max_path_length = max_episode_steps
        wrapper = env
        while isinstance(wrapper, gym.Wrapper):
            if isinstance(wrapper, gym.wrappers.TimeLimit):
                wrapper._max_episode_steps = max_episode_steps
            wrapper = wrapper.env
    return env


def reset_seeded(env: gym.Env, seed: int):
    """``env.reset(seed=seed)`` with the env's generator seeded first, so that the episode is a
    function of ``seed`` alone.

    Meta-World draws an episode's goal before the reset's seed applies, from whatever state
    the previous episodes left the generator in; other tasks are unaffected.
    """
    env.unwrapped.np_random, _ = gym.utils.seeding.np_random(seed)
    return env.reset(seed=seed)


def _copy_seeds(task_seed: int | None, copies: int) -> list[int | None]:
    """One task seed per env copy: consecutive from ``task_seed`` (``None``: unseeded)."""
    return [None if task_seed is None else task_seed + i for i in range(copies)]


def _make_single_env(
    name: str,
    task: str | None,
    max_episode_steps: int | None,
    device,
    task_seed: int | None = None,
) -> EnvBase:
    gym_env = make_gym_env(name, task, max_episode_steps, task_seed=task_seed)
    for what, space in (
        ("observations", gym_env.observation_space),
        ("actions", gym_env.action_space),
    ):
        if isinstance(space, gym.spaces.Box) and space.shape == ():
            gym_env.close()
            # TorchRL would call them [1]; the env would then be stepped with, and our code
            # read, arrays of another shape than the env's.
            raise UnsupportedEnvError(
                f"env.name={name!r} has {what} of shape () (a 0-d gymnasium Box); CrossQ and "
                "SAC here need vectors: reshape them to (1,) in a wrapper"
            )
    env = GymWrapper(EpisodeRecorder(gym_env), device=device)
    if name == METAWORLD:
        env.set_info_dict_reader(SuccessReader())
    return env


class SuccessReader(BaseInfoDictReader):
    """Reads a gymnasium env's scalar ``info["success"]`` (Meta-World: 0.0/1.0) as a bool ``[1]``.

    TorchRL's ``default_info_dict_reader`` expects numpy values; Meta-World's are floats.
    Reset infos carry no ``success``: it reads as false.
    """

    def __init__(self) -> None:
        self._spec = Composite({SUCCESS_KEY: Categorical(2, (1,), dtype=torch.bool)}, shape=[])

    def __call__(self, info_dict: dict, tensordict: TensorDictBase) -> TensorDictBase:
        value = bool(info_dict.get(SUCCESS_KEY, 0.0) > 0)
        tensordict.set(SUCCESS_KEY, torch.tensor([value], device=tensordict.device))
        return tensordict

    def reset(self) -> None:  # the key and spec are fixed
        pass

    @property
    def info_spec(self) -> Composite:
        return self._spec


class EpisodeSuccess(Transform):
    """Writes ``episode_success``: whether ``success`` was true at any step of the episode so far.

    Success rate, as reported for manipulation tasks, is the fraction of episodes
    whose ``episode_success`` is true when they end.
    """

    def __init__(self, in_key: str = SUCCESS_KEY, out_key: str = "episode_success") -> None:
        super().__init__(in_keys=[in_key], out_keys=[out_key])

    def _reset(
        self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase
    ) -> TensorDictBase:
        out_key = self.out_keys[0]
        shape = (*tensordict_reset.batch_size, 1)
        previous = None if tensordict is None else tensordict.get(out_key, None)
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if previous is None or reset is None:
            value = torch.zeros(shape, dtype=torch.bool, device=tensordict_reset.device)
        else:
            value = previous & ~reset.reshape(shape)
        tensordict_reset.set(out_key, value)
        return tensordict_reset

    def _step(self, tensordict: TensorDictBase, next_tensordict: TensorDictBase) -> TensorDictBase:
        success = next_tensordict.get(self.in_keys[0]).bool()
        previous = tensordict.get(self.out_keys[0], None)
        value = success if previous is None else previous | success.reshape(previous.shape)
        next_tensordict.set(self.out_keys[0], value)
        return next_tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        shape = (*observation_spec.shape, 1)
        observation_spec[self.out_keys[0]] = Categorical(
            2, shape, dtype=torch.bool, device=observation_spec.device
        )
        return observation_spec


def make_env(
    name: str,
    *,
    task: str | None = None,
    backend: str = "gymnasium",
    num_envs: int = 1,
    vectorization: str = "parallel",
    max_episode_steps: int | None = None,
    seed: int | None = None,
    task_seed: int | None = None,
    device: torch.device | str = "cpu",
) -> EnvBase:
    """Builds a float32 TorchRL env of ``num_envs`` copies of task ``name``.

    Transforms: ``DoubleToFloat`` (MuJoCo observations are float64),
    ``StepCounter`` (writes ``step_count``), ``RewardSum`` (writes
    ``episode_reward``) and, for tasks that report ``success`` (Meta-World),
    :class:`EpisodeSuccess` (writes ``episode_success``). Truncation by the
    time limit sets ``truncated`` and ``done`` but not ``terminated``, so the TD
    target keeps bootstrapping.

    Args:
        name: a gymnasium id, e.g. ``"HalfCheetah-v5"``, or ``"Meta-World/MT1"``
            with ``task``.

    Keyword Args:
        task: the Meta-World task (``"reach-v3"``...); only with ``name="Meta-World/MT1"``.
        backend: ``"gymnasium"`` (TorchRL's ``GymEnv`` in ``ParallelEnv``/``SerialEnv``)
            or ``"envpool"`` (EnvPool's C++ envs stepped in threads, through
            TorchRL's ``MultiThreadedEnv``; batch size ``[num_envs]`` even for one env).
        num_envs: copies stepped together; the env's batch size is ``[num_envs]``
            (``[]`` for a single gymnasium env).
        vectorization: gymnasium backend: ``"parallel"`` (``ParallelEnv``, one
            worker process per env) or ``"serial"`` (``SerialEnv``, in process:
            faster when a step is cheaper than the inter-process hop, as MuJoCo's are).
        max_episode_steps: override of the task's time limit.
        seed: seeds the env(s); copies get consecutive seeds.
        task_seed: Meta-World's construction seed (see :func:`make_gym_env`); copies get
            consecutive ones. Defaults to ``seed``. The training script passes the run's seed,
            so a resumed run, whose env seeds move on, keeps the same goals.
        device: where the env's tensors live.

    Examples:
        >>> env = make_env("Pendulum-v1", seed=0)
        >>> td = env.rollout(3)
        >>> td["observation"].dtype, td.batch_size
        (torch.float32, torch.Size([3]))
    """
    check_env(name, task, backend)
    if vectorization not in VECTORIZATIONS:
        raise ValueError(
            f"env.vectorization={vectorization!r} is not supported; use one of: parallel, serial"
        )
    if num_envs < 1:
        raise ValueError(f"env.num_envs={num_envs} must be >= 1")
    if backend == "envpool":
        pool_kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        if seed is not None:
            pool_kwargs["seed"] = int(seed)
        if name == METAWORLD:  # as gymnasium's MT1: the goal is part of the observation
            pool_kwargs["partially_observable"] = False
        base = EnvPoolEnv(num_envs, envpool_id(name, task), create_env_kwargs=pool_kwargs)
        seed = None  # given at construction: EnvPool cannot be reseeded in place
    else:
        create = functools.partial(_make_single_env, name, task, max_episode_steps, "cpu")
        # One function and per-copy arguments: a list of functions would make TorchRL treat
        # the copies as different tasks.
        copies = [
            {"task_seed": copy_seed}
            for copy_seed in _copy_seeds(seed if task_seed is None else task_seed, num_envs)
        ]
        if num_envs == 1:
            base = create(**copies[0])
        elif vectorization == "parallel":
            base = ParallelEnv(num_envs, create, create_env_kwargs=copies, mp_start_method="spawn")
        else:
            base = SerialEnv(num_envs, create, create_env_kwargs=copies)
    try:
        _check_spaces(base, name)
    except UnsupportedEnvError:
        base.close(raise_if_closed=False)  # batched envs start their workers lazily
        raise
    env = TransformedEnv(base, DoubleToFloat())
    env.append_transform(StepCounter())
    env.append_transform(RewardSum())
    if SUCCESS_KEY in base.observation_spec.keys():
        env.append_transform(EpisodeSuccess())
    if seed is not None:
        env.set_seed(seed)
    return env.to(device)


def _check_spaces(env: EnvBase, name: str) -> None:
    """A bounded continuous action vector and an ``observation`` vector, or an error naming them."""
    action = env.action_spec_unbatched
    if not (isinstance(action, Bounded) and action.domain == "continuous" and action.ndim == 1):
        raise UnsupportedEnvError(
            f"env.name={name!r} has {type(action).__name__} actions of shape "
            f"{list(action.shape)}; CrossQ and SAC here need a bounded continuous action "
            "vector (a gymnasium Box with finite bounds)"
        )
    low, high = action.space.low, action.space.high
    if not (torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
        raise UnsupportedEnvError(
            f"env.name={name!r} has action bounds low={low.tolist()}, high={high.tolist()}; "
            "CrossQ and SAC here squash actions into [low, high] and need finite bounds with "
            "high > low in every dimension"
        )
    observation = env.observation_spec_unbatched
    keys = list(observation.keys(True, True))
    if "observation" not in keys or observation["observation"].ndim != 1:
        shape = list(observation["observation"].shape) if "observation" in keys else None
        raise UnsupportedEnvError(
            f"env.name={name!r} has observations {keys if shape is None else shape}; CrossQ "
            "and SAC here need one flat observation vector (a gymnasium Box of one dimension; "
            "flatten a dict or image observation in a wrapper)"
        )


def env_dims(env: EnvBase) -> tuple[int, int]:
    """``(observation size, action size)`` of a flat-observation env."""
    obs_spec = env.observation_spec["observation"]
    return obs_spec.shape[-1], env.action_spec.shape[-1]


class EvalResult(NamedTuple):
    """Deterministic-evaluation summary; ``success_rate`` is ``None`` for tasks without ``success``."""

    return_mean: float
    return_std: float
    success_rate: float | None = None


def evaluate(env: EnvBase, policy, *, episodes: int, max_steps: int) -> EvalResult:
    """Return mean/std and success rate of ``episodes`` deterministic episodes (actor in eval mode).

    Actions are the TanhNormal's deterministic action (``ExplorationType.DETERMINISTIC``);
    each episode runs until ``done`` or ``max_steps``. An episode counts as a
    success when ``success`` was true at any of its steps. ``env`` is one env (batch size
    ``[]`` or ``[1]``); :class:`BatchedEvaluation` steps several episodes together.
    """
    if env.batch_size.numel() > 1:
        raise ValueError(
            f"evaluate runs the episodes of one env, one after the other; got an env of batch "
            f"size {list(env.batch_size)} (its copies' rewards would be summed into one "
            "return, every copy stopped by the first done): use BatchedEvaluation for several "
            "copies, or build the env with num_envs=1"
        )
    returns, successes = [], []
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
            if ("next", SUCCESS_KEY) in rollout.keys(True):
                successes.append(bool(rollout["next", SUCCESS_KEY].any()))
    values = torch.tensor(returns)
    success_rate = sum(successes) / len(successes) if successes else None
    return EvalResult(float(values.mean()), float(values.std(unbiased=False)), success_rate)


class BatchedEvaluation:
    """Deterministic evaluation episodes stepped together, one actor call per step for all.

    ``episodes`` plain gymnasium envs of the task (no TorchRL wrapper: an env
    step costs what gymnasium's does), reset with seeds ``seed, seed + 1, ...``
    (:func:`reset_seeded`: an evaluation depends on its seed, not on the ones before it);
    at every step the observations of the episodes still running go through the
    policy in one batch (deterministic action, policy in eval mode), then each
    env steps. An episode ends at termination, truncation (the task's time
    limit) or ``max_steps``; it succeeds when ``info["success"]`` was true at
    any of its steps (tasks that report it). The same episodes as :func:`evaluate`
    plays, at a fraction of the cost per step; the policy's batched matmuls round
    differently from one observation at a time (about 1e-7 in the actions), which
    chaotic tasks (Humanoid) can carry to a different return.

    Args:
        name: a gymnasium id, or ``"Meta-World/MT1"`` with ``task``.

    Keyword Args:
        episodes: episodes per evaluation.
        max_steps: cap on each episode's length.
        task: the Meta-World task.
        max_episode_steps: override of the task's time limit.
        task_seed: Meta-World's construction seed (see :func:`make_gym_env`); the episodes'
            envs get consecutive ones.
        observation_key: the policy's observation input key.
        action_key: the policy's action output key.

    Examples:
        >>> from torchrl.data import Bounded
        >>> from torchrl_crossq import make_actor
        >>> evaluation = BatchedEvaluation("Pendulum-v1", episodes=3, max_steps=20)
        >>> actor = make_actor(3, Bounded(-2.0, 2.0, shape=(1,)), num_cells=(8,))
        >>> result = evaluation(actor, seed=0)
        >>> result.success_rate is None, evaluation.steps
        (True, 60)
        >>> evaluation.close()
    """

    def __init__(
        self,
        name: str,
        *,
        episodes: int,
        max_steps: int,
        task: str | None = None,
        max_episode_steps: int | None = None,
        task_seed: int | None = None,
        observation_key: str = "observation",
        action_key: str = "action",
    ) -> None:
        if episodes < 1:
            raise ValueError(f"episodes={episodes} must be >= 1")
        check_env(name, task)
        self.envs = [
            make_gym_env(name, task, max_episode_steps, task_seed=copy_seed)
            for copy_seed in _copy_seeds(task_seed, episodes)
        ]
        self.max_steps = max_steps
        self.observation_key = observation_key
        self.action_key = action_key
        self.steps = 0  # env steps of the last evaluation
        self.returns = np.zeros(episodes)  # its per-episode returns

    def __call__(self, policy, *, seed: int) -> EvalResult:
        device = next(iter(policy.parameters()), torch.empty(0)).device
        n = len(self.envs)
        obs = np.stack([reset_seeded(env, seed + i)[0] for i, env in enumerate(self.envs)])
        returns, succeeded = np.zeros(n), np.zeros(n, dtype=bool)
        running, reports_success = np.ones(n, dtype=bool), False
        self.steps = 0
        with (
            torch.no_grad(),
            set_exploration_type(ExplorationType.DETERMINISTIC),
            set_training_mode(policy, False),
        ):
            for _ in range(self.max_steps):
                rows = np.flatnonzero(running)
                observation = torch.as_tensor(obs[rows], dtype=torch.float32, device=device)
                td = TensorDict({self.observation_key: observation}, [len(rows)], device=device)
                actions = policy(td).get(self.action_key).cpu().numpy()
                for action, i in zip(actions, rows, strict=True):
                    obs[i], reward, terminated, truncated, info = self.envs[i].step(action)
                    returns[i] += reward
                    if SUCCESS_KEY in info:
                        reports_success = True
                        succeeded[i] |= info[SUCCESS_KEY] > 0
                    running[i] = not (terminated or truncated)
                self.steps += len(rows)
                if not running.any():
                    break
        self.returns = returns
        success_rate = float(succeeded.mean()) if reports_success else None
        return EvalResult(float(returns.mean()), float(returns.std()), success_rate)

    def close(self) -> None:
        for env in self.envs:
            env.close()
