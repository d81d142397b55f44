"""Collector factory: one process, several worker processes, or Ray workers, behind one key."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torchrl.collectors import BaseCollector, Collector
from torchrl.envs import EnvBase

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
) -> BaseCollector:
    """A TorchRL collector over envs made by ``create_env_fn(seed=...)``, for any backend.

    Each worker's env gets its own seed (``seed``, ``seed + 1_000_003``, ...), given
    when the env is built, so even the first episode is reproducible.

    - ``"sync"``: TorchRL's single-process ``Collector`` (its ``direct`` backend);
      the policy is the very object the learner trains.
    - ``"multi_sync"`` / ``"multi_async"``: ``MultiSyncCollector`` /
      ``MultiAsyncCollector``, ``num_workers`` worker processes each stepping its
      own env; a batch gathers ``frames_per_batch`` frames from all workers
      (sync) or comes from whichever worker is ready (async).
    - ``"ray"``: TorchRL's ``RayCollector`` with ``num_workers`` remote
      collectors; joins the cluster at ``ray_address`` or starts a local one
      (with ``ray_num_cpus`` CPUs). Needs the ``distributed`` extra.

    Worker copies of the policy are refreshed by ``collector.update_policy_weights_()``,
    which the training loop calls after its updates; the loop is the same for every backend.

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
            f"collector.backend={backend!r} is not supported; use one of: "
            f"{', '.join(COLLECTOR_BACKENDS)}"
        )
    if num_workers < 1:
        raise ValueError(f"collector.num_workers={num_workers} must be >= 1")
    common = {
        "frames_per_batch": frames_per_batch,
        "total_frames": total_frames,
        "init_random_frames": init_random_frames,
        "policy_device": policy_device,
        "env_device": "cpu",
        "storing_device": "cpu",
    }
    env_fns = [
        functools.partial(create_env_fn, seed=seed + 1_000_003 * worker)
        for worker in range(1 if backend == "sync" else num_workers)
    ]
    if backend == "sync":
        return Collector(env_fns[0](), policy, auto_register_policy_transforms=False, **common)
    if backend in ("multi_sync", "multi_async"):
        if frames_per_batch % num_workers and backend == "multi_sync":
            raise ValueError(
                f"collector.frames_per_batch={frames_per_batch} must be a multiple of "
                f"collector.num_workers={num_workers} with backend multi_sync"
            )
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
        raise ImportError(
            "collector.backend=ray needs Ray: pip install -e '.[distributed]'"
        ) from err
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


def _in_process_recorders(env: EnvBase) -> list | None:
    """The :class:`~torchrl_crossq.envs.EpisodeRecorder` of each env copy, when all run here."""
    from torchrl.envs import GymWrapper, SerialEnv, TransformedEnv

    from torchrl_crossq.envs import EpisodeRecorder

    base = env.base_env if isinstance(env, TransformedEnv) else env
    if base.is_closed:  # shut down with the collector
        return None
    # (a SerialEnv's __getattr__ forwards unknown names to its envs: read its own dict)
    copies = list(vars(base).get("_envs") or []) if isinstance(base, SerialEnv) else [base]
    if not copies:
        return None
    copies = [c.base_env if isinstance(c, TransformedEnv) else c for c in copies]
    if not all(isinstance(c, GymWrapper) and isinstance(c._env, EpisodeRecorder) for c in copies):
        return None  # worker processes (ParallelEnv), EnvPool threads: not capturable
    return [c._env for c in copies]


def collector_state(collector: BaseCollector) -> dict | None:
    """What a resumed run needs to continue collection exactly where this one is.

    The collector's carrier (the next step's input: observation, step count, episode
    return...) and, for each env copy, how its current episode came about (see
    :class:`~torchrl_crossq.envs.EpisodeRecorder`). ``None`` when the envs are not
    in this process (``ParallelEnv`` workers, EnvPool, multi-process or Ray
    collectors): a run resumed from such a checkpoint starts new episodes.
    """
    carrier = getattr(collector, "_carrier", None)
    env = getattr(collector, "env", None)
    if carrier is None or not isinstance(env, EnvBase):
        return None
    recorders = _in_process_recorders(env)
    if recorders is None:
        return None
    episodes = [r.episode_state() for r in recorders]
    if any(episode is None for episode in episodes):
        return None
    return {"carrier": carrier.clone(), "episodes": episodes}


def restore_collector_state(collector: BaseCollector, state: dict | None) -> bool:
    """Puts a :func:`collector_state` back; ``False`` (nothing changed) when it does not apply."""
    if state is None or getattr(collector, "_carrier", None) is None:
        return False
    recorders = _in_process_recorders(collector.env)
    if recorders is None or len(recorders) != len(state["episodes"]):
        return False
    if state["carrier"].batch_size != collector._carrier.batch_size:
        return False
    for recorder, episode in zip(recorders, state["episodes"], strict=True):
        recorder.restore_episode(episode)
    collector._carrier = state["carrier"].clone()
    return True
