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
    reuse_batch: bool = False,
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

    ``reuse_batch`` (``"sync"`` only): every batch is the same TensorDict, overwritten by the
    next one (TorchRL's ``return_same_td``), instead of a fresh copy per batch: for a loop
    that stores or reads each batch before it asks for the next, as the training script's
    does. It saves a copy per batch, about 0.1 ms per frame at one frame per batch.

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
    env_fns = [
        functools.partial(create_env_fn, seed=seed + 1_000_003 * worker)
        for worker in range(1 if backend == "sync" else num_workers)
    ]
    if backend == "sync":
        return Collector(
            env_fns[0](),
            policy,
            auto_register_policy_transforms=False,
            return_same_td=reuse_batch,
            **common,
        )
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
