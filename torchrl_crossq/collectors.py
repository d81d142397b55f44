"""Collector factory: one process, several worker processes, or Ray workers, behind one key."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import InteractionType
from torchrl.collectors import BaseCollector, Collector
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_crossq.modules.networks import TanhNormalActor

COLLECTOR_BACKENDS = ("sync", "multi_sync", "multi_async", "ray")


def make_collector(
    create_env_fn: Callable[..., EnvBase],
    policy,
    *,
    seed: int,
    backend: str = "sync",
    num_workers: int = 2,
    frames_per_batch: int,
    total_frames: int,
    init_random_frames: int = 0,
    policy_device: torch.device | str | None = None,
    ray_address: str | None = None,
    ray_num_cpus: int | None = None,
    reuse_batch: bool = False,
    direct: bool = False,
) -> BaseCollector:
    """A TorchRL collector over envs made by ``create_env_fn(seed=...)``, for any backend.

    Each worker's env gets its own seed (``seed``, ``seed + 1_000_003``, ...), given
    when the env is built, so even the first episode is reproducible; a worker process
    seeds its torch and numpy generators with it too (its random and sampled actions are
    drawn there), so ``"multi_sync"`` runs of a seed match (``"multi_async"`` batches come
    in the order the workers finish, which no seed fixes).

    - ``"sync"``: TorchRL's single-process ``Collector`` (its ``direct`` backend);
      the policy is the very object the learner trains.
    - ``"multi_sync"`` / ``"multi_async"``: ``MultiSyncCollector`` /
      ``MultiAsyncCollector``, ``num_workers`` worker processes each stepping its
      own env; a batch gathers ``frames_per_batch`` frames from all workers
      (sync) or comes from whichever worker is ready (async).
    - ``"ray"``: TorchRL's ``RayCollector`` with ``num_workers`` remote
      collectors; joins the cluster at ``ray_address`` or starts a local one
      (with ``ray_num_cpus`` CPUs). Needs the ``distributed`` extra.

    ``reuse_batch`` (``"sync"`` only): every batch is the same TensorDict, overwritten by the
    next one (TorchRL's ``return_same_td``), instead of a fresh copy per batch: for a loop
    that stores or reads each batch before it asks for the next, as the training script's
    does. It saves a copy per batch, about 0.1 ms per frame at one frame per batch.

    ``direct`` (``"sync"`` only): when the env is one gymnasium copy as
    :func:`~torchrl_crossq.envs.make_env` builds it, a :class:`GymCollector`, which steps
    it under TorchRL's wrapper and yields the same batches (same values, same random
    draws) at a fraction of the cost per frame; other envs get TorchRL's ``Collector``.

    Worker copies of the policy are refreshed by :class:`PolicyWeightSync` after the
    learner's updates; the training loop is the same for every backend. ``multi_sync`` and
    ``ray`` split a batch evenly over the workers (TorchRL rounds an uneven split up).

    Examples:
        >>> import functools
        >>> from torchrl_crossq.envs import make_env
        >>> collector = make_collector(
        ...     functools.partial(make_env, "Pendulum-v1"), None, seed=0,
        ...     frames_per_batch=8, total_frames=16)
        >>> [data.numel() for data in collector]
        [8, 8]
        >>> collector.shutdown()
    """
    if backend not in COLLECTOR_BACKENDS:
        raise ValueError(
            f"backend={backend!r} is not supported; use one of: {', '.join(COLLECTOR_BACKENDS)}"
        )
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be >= 1")
    common = {
        "frames_per_batch": frames_per_batch,
        "total_frames": total_frames,
        "init_random_frames": init_random_frames,
        "policy_device": policy_device,
        "env_device": "cpu",
        "storing_device": "cpu",
    }
    if backend == "sync":
        env = create_env_fn(seed=seed)
        if direct and direct_env_parts(env) is not None:
            return GymCollector(
                env,
                policy,
                frames_per_batch=frames_per_batch,
                total_frames=total_frames,
                init_random_frames=init_random_frames,
                policy_device=policy_device,
                reuse_batch=reuse_batch,
            )
        return Collector(
            env,
            policy,
            auto_register_policy_transforms=False,
            return_same_td=reuse_batch,
            **common,
        )
    # Each worker's process draws its own actions (random ones, then the policy's samples): it
    # seeds its generators from its env's seed when it builds the env, or it would start from
    # an unseeded state and no two runs of a seed would match.
    env_fns = [
        functools.partial(_seeded_worker_env, create_env_fn, seed + 1_000_003 * worker)
        for worker in range(num_workers)
    ]
    if backend in ("multi_sync", "multi_async"):
        return Collector(
            env_fns,
            policy,
            backend="process",
            num_collectors=num_workers,
            sync=backend == "multi_sync",
            **common,
        )
    try:
        import ray  # noqa: F401
        from torchrl.collectors.distributed import RayCollector
    except ImportError as err:
        raise ImportError("backend='ray' needs Ray: pip install -e '.[distributed]'") from err
    ray_init_config = {"address": ray_address} if ray_address else {"num_cpus": ray_num_cpus}
    return RayCollector(
        env_fns,
        policy,
        num_collectors=num_workers,
        ray_init_config=ray_init_config,
        remote_configs={"num_cpus": 1},
        sync=True,
        **common,
    )


def _seeded_worker_env(create_env_fn: Callable[..., EnvBase], seed: int) -> EnvBase:
    """``create_env_fn(seed=seed)``, in a worker process whose torch and numpy are seeded first."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return create_env_fn(seed=seed)


class PolicyWeightSync:
    """Refreshes the workers' copies of the policy after every ``every``-th round of updates.

    With the ``"sync"`` backend the collector acts with the learner's own policy object:
    there is no copy to refresh.

    Args:
        collector: a collector from :func:`make_collector`.

    Keyword Args:
        backend: the collector's backend.
        every: rounds of updates between refreshes (>= 1).
    """

    def __init__(self, collector: BaseCollector, *, backend: str, every: int = 1) -> None:
        if every < 1:
            raise ValueError(f"every={every} must be >= 1")
        self.collector = collector
        self.has_copies = backend != "sync"
        self.every = every
        self.rounds = 0

    def after_updates(self) -> None:
        """Counts one round of updates; refreshes the copies on every ``every``-th."""
        self.rounds += 1
        if self.has_copies and self.rounds % self.every == 0:
            self.collector.update_policy_weights_()


_RESULT_FLAGS = ("done", "terminated", "truncated")


def direct_env_parts(env: EnvBase):
    """``(gymnasium env, reads success)`` of an env :func:`~torchrl_crossq.envs.make_env`
    built for one gymnasium copy with its standard transforms; ``None`` for any other env.

    Those are the envs :class:`GymCollector` can step without TorchRL's env machinery
    and still yield what TorchRL's ``Collector`` yields.
    """
    import gymnasium as gym
    from torchrl.envs import DoubleToFloat, GymWrapper, RewardSum, StepCounter, TransformedEnv

    from torchrl_crossq.checkpoint import EpisodeRecorder
    from torchrl_crossq.envs import EpisodeSuccess, SuccessReader

    if not isinstance(env, TransformedEnv) or env.batch_size != torch.Size([]):
        return None
    base = env.base_env
    if type(base) is not GymWrapper or not isinstance(base._env, EpisodeRecorder):
        return None
    readers = base.info_dict_reader
    reads_success = len(readers) == 1 and isinstance(readers[0], SuccessReader)
    if readers and not reads_success:
        return None
    expected = [DoubleToFloat, StepCounter, RewardSum] + ([EpisodeSuccess] if reads_success else [])
    if [type(t) for t in env.transform] != expected:
        return None
    step_counter = env.transform[1]
    if step_counter.max_steps is not None:
        return None
    if env.device is not None and env.device.type != "cpu":
        return None
    if not isinstance(base._env.observation_space, gym.spaces.Box):
        return None  # dict observations: TorchRL splits them into several keys
    return base._env, reads_success


def _nested(flat: dict) -> dict:
    """``{("next", "reward"): x}`` as ``{"next": {"reward": x}}``."""
    nested: dict = {}
    for key, value in flat.items():
        *parents, name = (key,) if isinstance(key, str) else key
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return nested


class GymCollector(BaseCollector):
    """TorchRL's single-process ``Collector`` output, stepping one gymnasium env directly.

    ``env`` is a one-copy gymnasium env from :func:`~torchrl_crossq.envs.make_env` (a
    ``GymWrapper`` with ``DoubleToFloat``, ``StepCounter``, ``RewardSum`` and, for
    Meta-World, ``EpisodeSuccess``; see :func:`direct_env_parts`). Per frame, TorchRL's
    ``Collector`` runs the env's TorchRL step (the wrapper, the transforms, the done checks,
    ``step_mdp``) and its own bookkeeping: about 0.6 ms on the 2-core machines of this
    project, against 0.06 ms for the gymnasium step itself. This collector calls the
    policy and steps the gymnasium env under the wrapper itself, and yields the same
    TensorDicts: the same keys, shapes and dtypes, the same values for the same seed, and
    the same random draws in the same order (random frames from the env's action spec, one
    policy call on the first observation when it is built, as TorchRL's does), so a run
    with either collector is the same run. :func:`~torchrl_crossq.make_actor`'s actor is
    called on the observation tensor (``TanhNormalActor.act``: the outputs and draws of its
    call on a TensorDict) unless a forward hook is registered on it; any other policy gets a
    TensorDict. It keeps TorchRL's names where code reads them
    (``env``, ``_carrier``: the checkpoint's :func:`~torchrl_crossq.checkpoint.collector_state`
    works for both).

    Args:
        env: the env, as ``make_env(..., num_envs=1)`` builds it (already seeded).
        policy: a TensorDict policy reading ``observation``, writing ``action``; ``None``
            acts at random throughout.

    Keyword Args:
        frames_per_batch: frames per yielded batch (shape ``[frames_per_batch]``).
        total_frames: frames to collect (rounded up to whole batches); ``-1``: no end.
        init_random_frames: the first frames are drawn from the action spec (whole
            batches, as TorchRL's collector: a batch is random when it starts before them).
        policy_device: where the policy's inputs go; its outputs come back to the CPU.
        reuse_batch: yield the same TensorDict every batch, overwritten by the next (as
            :func:`make_collector`'s ``reuse_batch``); else a copy per batch.

    Examples:
        >>> from torchrl_crossq.envs import make_env
        >>> collector = GymCollector(
        ...     make_env("Pendulum-v1", seed=0), None, frames_per_batch=4, total_frames=8)
        >>> [batch["next", "step_count"].flatten().tolist() for batch in collector]
        [[1, 2, 3, 4], [5, 6, 7, 8]]
        >>> collector.shutdown()
    """

    def __init__(
        self,
        env: EnvBase,
        policy,
        *,
        frames_per_batch: int,
        total_frames: int,
        init_random_frames: int = 0,
        policy_device: torch.device | str | None = None,
        reuse_batch: bool = False,
    ) -> None:
        super().__init__()
        parts = direct_env_parts(env)
        if parts is None:
            raise ValueError(
                "GymCollector steps one gymnasium env built by make_env(..., num_envs=1) with "
                "its standard transforms; use make_collector for other envs"
            )
        if frames_per_batch < 1:
            raise ValueError(f"frames_per_batch={frames_per_batch} must be >= 1")
        self.env = env
        self._gym_env, self._reads_success = parts
        self.policy = policy
        self.policy_device = None if policy_device is None else torch.device(policy_device)
        self.frames_per_batch = self.requested_frames_per_batch = frames_per_batch
        self.total_frames = (
            float("inf") if total_frames is None or total_frames < 0 else total_frames
        )
        self.init_random_frames = max(0, init_random_frames or 0)
        self._frames = 0
        self._next_traj_id = 0
        self._obs_dtype = env.observation_spec["observation"].dtype
        self._reward_dtype = env.reward_spec.dtype
        self.reuse_batch = reuse_batch
        self._batch = None  # the batch's TensorDict, built on the first step
        with torch.no_grad():
            self._state = self._reset_state(self._gym_env.reset()[0])
            # TorchRL's collector calls the policy once on the first observation, to learn
            # its output keys: the same call here, so the random draws stay in step.
            self._policy_input = TensorDict(device=self.policy_device)
            self._policy_keys = self._policy_output_keys()

    # -- state ---------------------------------------------------------------------------
    @property
    def _carrier(self) -> TensorDictBase:
        """The next step's input, in the layout of TorchRL's collector's carrier (the
        checkpoint's :func:`~torchrl_crossq.checkpoint.collector_state` reads it)."""
        return TensorDict(_nested(self._state), batch_size=[])

    @_carrier.setter
    def _carrier(self, carrier: TensorDictBase) -> None:
        # (a carrier saved by TorchRL's collector also holds the last action and its
        # loc/scale: each step overwrites those)
        self._state = dict(carrier.items(True, True))

    def _reset_state(self, observation) -> dict:
        """The first step's input of a new episode: what TorchRL's reset writes."""
        false = torch.zeros(1, dtype=torch.bool)
        state = {
            "observation": torch.as_tensor(observation).to(self._obs_dtype),
            "step_count": torch.zeros(1, dtype=torch.long),
            "episode_reward": torch.zeros(1),
            ("collector", "traj_ids"): torch.tensor(self._next_traj_id),
        }
        state.update((flag, false) for flag in _RESULT_FLAGS)
        if self._reads_success:
            state.update(success=false, episode_success=false)
        self._next_traj_id += 1
        return state

    def _observation(self) -> torch.Tensor:
        observation = self._state["observation"]
        if self.policy_device is not None:
            observation = observation.to(self.policy_device)
        return observation

    def _act(self) -> TensorDictBase:
        return self.policy(self._policy_input.set("observation", self._observation()))

    def _acts_on_tensors(self) -> bool:
        """Whether make_actor's actor acts on the observation tensor this step
        (:meth:`~torchrl_crossq.modules.networks.TanhNormalActor.act`: the values and draws
        of a call on a TensorDict, without the TensorDict): when no hook is to see the call."""
        policy = self.policy
        return (
            self._tensor_actor
            and not (policy._forward_hooks or policy._forward_pre_hooks)
            and policy.acts_fast(InteractionType.RANDOM)
        )

    def _policy_output_keys(self) -> list:
        self._random_extras = {}
        self._tensor_actor = False
        if self.policy is None:  # TorchRL's collector acts with a RandomPolicy: one draw
            self.env.full_action_spec.rand()
            return ["action"]
        with set_exploration_type(ExplorationType.RANDOM):
            out = self._act()
        keys = [key for key in out.keys(True, True) if key != "observation"]
        # make_actor's actor may act on the observation tensor (see _step); not a subclass
        # with a forward of its own, which a call on the tensor would skip.
        self._tensor_actor = (
            isinstance(self.policy, TanhNormalActor)
            and type(self.policy).forward is TanhNormalActor.forward
            and self.policy.in_keys == ["observation"]
            and sorted(map(str, keys)) == sorted(map(str, self.policy.act_keys))
        )
        # Random frames carry the policy's other outputs as zeros, as in TorchRL's batches.
        self._random_extras = {
            key: torch.zeros_like(out.get(key), device="cpu") for key in keys if key != "action"
        }
        return keys

    # -- collection ----------------------------------------------------------------------
    def iterator(self) -> Iterator[TensorDictBase]:
        while self._frames < self.total_frames:
            batch = self.rollout()
            self._frames += batch.numel()
            yield batch

    @torch.no_grad()
    def rollout(self) -> TensorDictBase:
        """One batch of ``frames_per_batch`` transitions (the same TensorDict every time with
        ``reuse_batch``, else a new one)."""
        random = self._frames < self.init_random_frames
        with set_exploration_type(ExplorationType.RANDOM):
            for t in range(self.frames_per_batch):
                step = self._step(random)
                if self._batch is None:
                    self._make_batch(step)
                for key, row in self._rows[t]:
                    row.copy_(step[key])
        return self._batch if self.reuse_batch else self._batch.clone()

    def _make_batch(self, step: dict) -> None:
        """The batch's tensors, laid out after the first step; each step is copied into a row."""
        size = self.frames_per_batch
        flat = {key: value.new_empty((size, *value.shape)) for key, value in step.items()}
        self._batch = TensorDict(_nested(flat), batch_size=[size], device="cpu")
        self._rows = [[(key, buffer[t]) for key, buffer in flat.items()] for t in range(size)]

    def _step(self, random: bool) -> dict:
        """One transition, as a flat dict of tensors: the carrier, the action, ``next``."""
        state = self._state
        if random or self.policy is None:  # TorchRL's rand_action, or its RandomPolicy
            acted = {
                **self._random_extras,
                "action": self.env.full_action_spec.rand().get("action"),
            }
        elif self._acts_on_tensors():
            values = self.policy.act(self._observation(), InteractionType.RANDOM)
            outputs = dict(zip(self.policy.act_keys, values, strict=True))
            acted = {key: outputs[key].cpu() for key in self._policy_keys}
        else:
            out = self._act()
            acted = {key: out.get(key).cpu() for key in self._policy_keys}
        observation, reward, terminated, truncated, info = self._gym_env.step(
            acted["action"].numpy()
        )
        reward = torch.tensor([reward], dtype=self._reward_dtype)
        terminated = torch.tensor([bool(terminated)])
        truncated = torch.tensor([bool(truncated)])
        done = terminated | truncated
        following = {
            "observation": torch.as_tensor(observation).to(self._obs_dtype),
            "done": done,
            "terminated": terminated,
            "truncated": truncated,
            "step_count": state["step_count"] + 1,
            "episode_reward": state["episode_reward"] + reward,
        }
        if self._reads_success:
            success = torch.tensor([bool(info.get("success", 0.0) > 0)])
            following.update(success=success, episode_success=state["episode_success"] | success)
        step = {**state, **acted, ("next", "reward"): reward}
        step.update((("next", key), value) for key, value in following.items())
        if done:
            self._state = self._reset_state(self._gym_env.reset()[0])
        else:
            self._state = {**following, ("collector", "traj_ids"): state["collector", "traj_ids"]}
        return step

    # -- BaseCollector -------------------------------------------------------------------
    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        return self.env.set_seed(seed, static_seed=static_seed)

    def state_dict(self) -> OrderedDict:
        return OrderedDict(frames=self._frames)

    def load_state_dict(self, state_dict: OrderedDict) -> None:
        self._frames = int(state_dict["frames"])

    def shutdown(
        self, timeout: float | None = None, close_env: bool = True, raise_on_error: bool = True
    ) -> None:
        if close_env and not self.env.is_closed:
            self.env.close()
