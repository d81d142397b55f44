"""The replay buffer for CrossQ and its factory: transitions stored in one ring, in write order.

Batches are flattened to transitions on ``extend``; sampling goes through
:class:`~torchrl_crossq.data.sampler.SlidingWindowSampler` (uniform over the newest
trajectories), and a disk storage may keep its newest trajectories in memory
(:class:`~torchrl_crossq.data.storage.CachedStorage`). :func:`make_replay_buffer` builds
the whole thing from plain keyword arguments.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import LazyStackedTensorDict, NestedKey, TensorDictBase
from tensordict.utils import unravel_key_list
from torchrl.data import LazyMemmapStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import Storage

from torchrl_crossq.data.sampler import _DONE_KEY, _PLURAL, SlidingWindowSampler, _check_int
from torchrl_crossq.data.storage import CachedStorage, TransitionStorage

STORAGE_KINDS = ("memory", "disk")

_TRAJ_IDS_KEY = ("collector", "traj_ids")
# Written by TorchRL's MultiStep; the loss's TD target reads it when present (not in in_keys).
_STEPS_KEY = "steps_to_next_obs"


def _identity(data: Any) -> Any:
    return data


def _flatten_trajectories(
    data: TensorDictBase,
) -> tuple[TensorDictBase, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Flattens a batch to transitions.

    Returns them, the trajectory lengths, a stream id per trajectory and the collector's
    traj id per transition (``None`` when the data has none).
    """
    if isinstance(data, LazyStackedTensorDict):
        data = data.contiguous()  # a lazy stack (e.g. along time) does not flatten in place
    if data.ndim == 0:
        data = data.unsqueeze(0)
    if data.ndim >= 2:
        rows = data.reshape(-1, data.shape[-1])
        num_rows, length = rows.shape
        lengths = torch.full((num_rows,), length, dtype=torch.long)
        flat = rows.reshape(-1)
        traj_ids = flat.get(_TRAJ_IDS_KEY, None)
        if traj_ids is not None:
            traj_ids = traj_ids.reshape(-1)
        return flat, lengths, torch.arange(num_rows), traj_ids
    traj_ids = data.get(_TRAJ_IDS_KEY, None)
    if traj_ids is None or data.shape[0] == 0:
        return data, torch.tensor([data.shape[0]]), torch.zeros(1, dtype=torch.long), None
    traj_ids = traj_ids.reshape(-1)
    if data.shape[0] == 1:  # the training script's batches: one frame, one trajectory
        return data, torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), traj_ids
    starts = torch.cat(
        [torch.zeros(1, dtype=torch.long), (traj_ids[1:] != traj_ids[:-1]).nonzero()[:, 0] + 1]
    )
    lengths = torch.diff(starts, append=torch.tensor([data.shape[0]]))
    return data, lengths, torch.zeros(lengths.numel(), dtype=torch.long), traj_ids


def _stored_entries(storage) -> TensorDictBase | None:
    """The TensorDict a (cached) tensor storage writes into; ``None`` before its first write."""
    if isinstance(storage, CachedStorage):
        storage = storage.disk
    stored = getattr(storage, "_storage", None)
    return stored if isinstance(stored, TensorDictBase) else None


def _entry_layout(data: TensorDictBase, skip: Sequence[str] = ()) -> dict:
    """``{key: (dtype, shape of one transition)}`` of ``data``'s tensors (dim 0: transitions)."""
    return {
        key: (value.dtype, value.shape[1:])
        for key, value in data.items(True, True)
        if key not in skip and isinstance(value, torch.Tensor)
    }


def _key_names(keys) -> str:
    return ", ".join(".".join(k) if isinstance(k, tuple) else k for k in keys)


class WindowReplayBuffer(TensorDictReplayBuffer):
    """A :class:`~torchrl.data.TensorDictReplayBuffer` over trajectories, with a training gate.

    It stores transitions and samples them through a :class:`SlidingWindowSampler`; it
    composes with TorchRL collectors (``extend`` takes their batches as they are, or give it
    to a single-process collector as ``replay_buffer=``) and with TorchRL's ``sample``,
    ``dumps``/``loads``, ``state_dict``, prefetch and transforms.

    ``extend`` takes:

    - a ``[num_envs, T]`` batch (any ``[..., T]`` batch; the last dimension is time): each
      env row is one trajectory of ``T`` transitions;
    - a flat ``[N]`` batch: split into trajectories where ``("collector", "traj_ids")``
      changes (flattened collector output therefore also splits at episode resets), or one
      trajectory if that key is absent;
    - a single transition (``add``): a one-transition trajectory.

    Batches are flattened to transitions (row by row) before they are stored; the returned
    index has the batch's shape. The buffer must be extended in the process that samples it:
    a multi-process collector's workers must not write into it directly.

    For ``window_unit="episode"`` an episode ends at ``("next", "done")`` and an env row
    continues the unfinished episode of the previous batches that has the same row and the
    same ``("collector", "traj_ids")``. TorchRL's collectors give each episode of each env a
    new traj id, drawn from one pool that the workers of a multi-process collector share; the
    id tells apart the workers of a ``multi_async`` collector, whose batches each hold one
    worker's ``[num_envs, T]`` (row ``e`` is env ``e`` of whichever worker sent it), and the
    row tells apart the workers of a Ray collector, which stacks batches of workers that
    number their episodes alone. A flat ``[N]`` batch has one row. Data without traj ids
    (made by hand) falls back on the row alone: row ``e`` of a batch continues the
    unfinished episode of row ``e`` of the previous batches, which holds when every batch
    has the same envs in the same rows (a single-process or ``multi_sync`` collector).

    Args:
        storage (Storage): a 1-D storage: :class:`~torchrl.data.LazyTensorStorage`,
            :class:`~torchrl.data.LazyMemmapStorage` or :class:`CachedStorage`.
        sampler (SlidingWindowSampler): the window sampler.
        batch_size (int): transitions per sample.

    Keyword Args:
        min_buffer_size (int): trajectories written before :meth:`ready` turns ``True``,
            between 0 and the capacity. Embodied config: 2. Defaults to ``0``.
        device (torch.device, optional): device sampled batches are moved to, for a storage
            that lives elsewhere (disk storage and GPU training); with ``pin_memory=True`` the
            copy is non-blocking. ``None`` keeps the storage's device. Defaults to ``None``.
        keys (list of NestedKey, optional): the entries stored from each batch, e.g. a loss's
            ``in_keys``; ``("collector", "traj_ids")`` and ``("next", "done")`` are kept too
            when present (trajectory splits and episode windows read them), and so is
            ``steps_to_next_obs`` (TorchRL's ``MultiStep`` writes it; the loss's TD target
            discounts by ``gamma ** steps_to_next_obs``). A collector batch
            also carries the policy's ``loc`` and ``scale``, episode counters and the root's
            done flags that nothing reads back: with the loss's keys a HalfCheetah transition
            keeps 7 of its 18 entries, 174 of 258 bytes (the write itself is about as
            fast: the select costs what the smaller write saves). ``None`` stores every
            entry. Defaults to ``None``.
        **kwargs: forwarded to :class:`~torchrl.data.TensorDictReplayBuffer` (``prefetch``,
            ``pin_memory``, ``transform``, ...). ``delayed_init`` is not supported.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage
        >>> from torchrl_crossq.data import SlidingWindowSampler, WindowReplayBuffer
        >>> rb = WindowReplayBuffer(
        ...     storage=LazyTensorStorage(1000),
        ...     sampler=SlidingWindowSampler(4, seed=0),
        ...     batch_size=256,
        ...     min_buffer_size=8,
        ... )
        >>> batch = TensorDict({"observation": torch.randn(4, 50, 17)}, [4, 50])  # 4 envs, T=50
        >>> rb.extend(batch).shape
        torch.Size([4, 50])
        >>> len(rb), rb.ready()
        (200, False)
        >>> _ = rb.extend(batch)
        >>> rb.ready(), rb.sample()["observation"].shape
        (True, torch.Size([256, 17]))
    """

    def __init__(
        self,
        *,
        storage: Storage,
        sampler: SlidingWindowSampler,
        batch_size: int,
        min_buffer_size: int = 0,
        device: torch.device | str | None = None,
        keys: Sequence[NestedKey] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(sampler, SlidingWindowSampler):
            raise TypeError(f"sampler must be a SlidingWindowSampler; got {type(sampler).__name__}")
        if storage.ndim != 1:
            raise ValueError(f"storage must be 1-D (transitions); got ndim={storage.ndim}")
        batch_size = _check_int("batch_size", batch_size, minimum=1)
        min_buffer_size = _check_int("min_buffer_size", min_buffer_size, minimum=0)
        capacity = storage.max_size
        if min_buffer_size > capacity:
            raise ValueError(
                f"min_buffer_size={min_buffer_size} trajectories can never be held by a "
                f"capacity of {capacity} transitions; use at most the capacity"
            )
        if sampler.sample_window_size > capacity:
            raise ValueError(
                f"sample_window_size={sampler.sample_window_size} {_PLURAL[sampler.window_unit]} "
                f"exceeds the capacity of {capacity} transitions; use at most the capacity, "
                "or <= 0 to sample the whole buffer"
            )
        if kwargs.pop("delayed_init", False):
            raise ValueError("WindowReplayBuffer does not support delayed_init=True")
        kwargs.setdefault("collate_fn", _identity)
        super().__init__(
            storage=storage, sampler=sampler, batch_size=batch_size, delayed_init=False, **kwargs
        )
        self.min_buffer_size = min_buffer_size
        self.device = None if device is None else torch.device(device)
        self._entries_of: TensorDictBase | None = None  # the stored entries _entries describes
        self._entries: dict = {}
        self.keys = None
        if keys is not None:
            extras = [_TRAJ_IDS_KEY, _DONE_KEY, _STEPS_KEY]
            self.keys = list(dict.fromkeys(unravel_key_list([*keys, *extras])))

    @property
    def num_trajectories(self) -> int:
        """Trajectories written since the buffer was created or emptied."""
        return self._sampler.num_trajectories

    def end_episodes(self) -> None:
        """Ends the unfinished episodes (see :meth:`SlidingWindowSampler.end_episodes`)."""
        self._sampler.end_episodes()

    def ready(self) -> bool:
        """Whether ``min_buffer_size`` trajectories were written and a sample can be drawn.

        The training loop asks this before each update phase.
        """
        return len(self) > 0 and self._sampler.num_trajectories >= self.min_buffer_size

    def window_size(self) -> int:
        """Number of stored transitions that samples are currently drawn from."""
        with self._replay_lock:
            return self._sampler.window_size(self._storage)

    def extend(
        self, tensordicts: TensorDictBase, *, update_priority: bool | None = None
    ) -> torch.Tensor:
        """Stores a collector batch; each env row (``[..., T]``) is one trajectory.

        Args:
            tensordicts (TensorDictBase): ``[num_envs, T]``, ``[N]`` or ``[]`` data.

        Keyword Args:
            update_priority (bool, optional): accepted for API compatibility; this buffer has
                no priorities.

        Returns:
            The storage index of every transition, in the shape of ``tensordicts``.
        """
        if not isinstance(tensordicts, TensorDictBase):
            raise TypeError(
                f"{type(self).__name__}.extend takes a TensorDict; got {type(tensordicts).__name__}"
            )
        data = tensordicts
        if self._transform is not None and len(self._transform):
            data = self._transform.inv(data)
        if self.keys is not None and data is not None:
            data = data.select(*self.keys, strict=False)
        if data is None or data.numel() == 0:
            return torch.zeros((0,), dtype=torch.long)
        flat, lengths, stream_ids, traj_ids = _flatten_trajectories(data)
        capacity = self._storage.max_size
        if flat.shape[0] > capacity:
            raise ValueError(
                f"one extend of {flat.shape[0]} transitions exceeds the capacity of "
                f"{capacity}; collect smaller batches or raise the capacity"
            )
        self._check_entries(flat)
        done = None
        if self._sampler.window_unit == "episode":
            done = flat.get(_DONE_KEY, None)
            if done is None:
                raise KeyError(
                    f"window_unit='episode' needs {_DONE_KEY} in the data; found keys "
                    f"{sorted(map(str, flat.keys(True, True)))}"
                )
        with self._replay_lock, self._write_lock:
            if self._sampler.num_written == 0:
                self._size_for(int(lengths.max()))
            index = self._writer.extend(flat)
            self._sampler.add_trajectories(
                lengths, done=done, stream_ids=stream_ids, traj_ids=traj_ids, capacity=capacity
            )
        index = index.reshape(data.batch_size)
        if tensordicts.batch_size == data.batch_size:
            self._set_index_in_td(tensordicts, index)
        return index

    def _check_entries(self, flat: TensorDictBase) -> None:
        """Every stored entry is in ``flat``, of its stored dtype and shape: checked before a
        write, which TorchRL would leave half done (a missing key's rows uninitialised; after
        a dtype error, the writer's cursor moved but the sampler not told)."""
        stored = _stored_entries(self._storage)
        if stored is None or not len(self._storage):  # the first write (or after empty())
            return
        if stored is not self._entries_of:
            self._entries_of = stored
            self._entries = _entry_layout(stored, skip=("index",))
        given = _entry_layout(flat)
        if all(given.get(key) == layout for key, layout in self._entries.items()):
            return
        missing = [key for key in self._entries if key not in given]
        if missing:
            raise KeyError(
                f"{type(self).__name__}.extend: the data lacks {_key_names(missing)}, which the "
                f"buffer stores for every transition (its entries: {_key_names(self._entries)}); "
                "give every entry, or build the buffer with keys= the entries to keep"
            )
        key = next(key for key, layout in self._entries.items() if given[key] != layout)
        (dtype, shape), (given_dtype, given_shape) = self._entries[key], given[key]
        raise TypeError(
            f"{type(self).__name__}.extend: {_key_names([key])} is {given_dtype} of shape "
            f"{list(given_shape)} per transition; the buffer stores {dtype} of shape "
            f"{list(shape)} (nothing was written)"
        )

    def _size_for(self, trajectory_length: int) -> None:
        sampler = self._sampler
        if sampler.window_unit == "trajectory" and sampler.bounded:
            transitions = sampler.sample_window_size * trajectory_length
            if transitions > self._storage.max_size:
                warnings.warn(
                    f"sample_window_size={sampler.sample_window_size} trajectories of "
                    f"{trajectory_length} transitions exceed the capacity of "
                    f"{self._storage.max_size}; samples come from what the storage holds",
                    stacklevel=3,
                )
        if isinstance(self._storage, CachedStorage):
            self._storage.reserve(trajectory_length)

    def add(self, data: TensorDictBase) -> int:
        """Stores one transition as a one-transition trajectory; returns its index."""
        return int(self.extend(data.unsqueeze(0))[0])

    def _sample(self, batch_size: int) -> tuple[Any, dict]:
        data, info = super()._sample(batch_size)
        if self.device is not None and data.device != self.device:
            data = data.to(self.device, non_blocking=self._pin_memory)
        return data, info


def make_replay_buffer(
    capacity: int,
    *,
    batch_size: int,
    storage: str = "memory",
    scratch_dir: str | Path | None = None,
    sample_window_size: int = 0,
    window_unit: str = "trajectory",
    enable_cache: bool = False,
    cache_size: int = 0,
    min_buffer_size: int = 0,
    prefetch: int = 0,
    pin_memory: bool = False,
    device: torch.device | str | None = None,
    seed: int | None = None,
    keys: Sequence[NestedKey] | None = None,
) -> WindowReplayBuffer:
    """Builds CrossQ's replay buffer from plain keyword arguments.

    The defaults give the paper's buffer: uniform over the whole buffer, in memory (Bhatt et
    al., ICLR 2024: 1M transitions, uniform). The embodied config block (RLinf) maps as
    ``enable_cache``, ``cache_size``, ``sample_window_size``, ``min_buffer_size``.

    Args:
        capacity (int): transitions stored; the oldest are overwritten beyond it.
            Paper: 1_000_000.

    Keyword Args:
        batch_size (int): transitions per sample. Paper: 256.
        storage (str): ``"memory"`` (:class:`TransitionStorage`, on ``device``)
            or ``"disk"`` (:class:`~torchrl.data.LazyMemmapStorage` in ``scratch_dir``).
            Defaults to ``"memory"``.
        scratch_dir (str, optional): directory of the disk storage; ``None`` uses a temporary
            directory. Only for ``storage="disk"``. One buffer's: a second buffer given the
            same directory opens the same memmap files (so that a resumed run finds its own).
        sample_window_size (int): sample only from the newest this many trajectories (see
            ``window_unit``), between 1 and ``capacity``; ``<= 0`` samples the whole buffer.
            Embodied config: 6000. Defaults to ``0``.
        window_unit (str): what ``sample_window_size`` counts: ``"trajectory"`` (an env row
            of a collector batch), ``"episode"`` or ``"transition"``; see
            :class:`SlidingWindowSampler`. Defaults to ``"trajectory"``.
        enable_cache (bool): keep the newest ``cache_size`` trajectories of the disk storage
            in memory (:class:`CachedStorage`). With ``storage="memory"`` it has no effect
            (a warning says so). Defaults to ``False``.
        cache_size (int): trajectories cached in memory when ``enable_cache``, between 1 and
            ``capacity``; ignored otherwise. Embodied config: 6000. Defaults to ``0``.
        min_buffer_size (int): trajectories written before ``ready()`` is ``True``, between 0
            and ``capacity``. Embodied config: 2. Defaults to ``0``.
        prefetch (int): batches sampled ahead in background threads (TorchRL ``prefetch``);
            ``0`` disables it. Samples stay reproducible for ``prefetch <= 1``.
            Defaults to ``0``.
        pin_memory (bool): pin sampled batches in host memory so that the copy to a CUDA
            ``device`` is asynchronous; needs CUDA and a storage in host memory.
            Defaults to ``False``.
        device (torch.device, optional): device of sampled batches. A memory storage lives
            there; a disk storage is read to host memory and copied there. ``None``: CPU.
        seed (int, optional): seed of the sampler's generator; ``None`` draws it from torch's
            global RNG.
        keys (list of NestedKey, optional): the entries stored from each batch (see
            :class:`WindowReplayBuffer`); ``None`` stores every entry.

    Returns:
        A :class:`WindowReplayBuffer`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_crossq.data import make_replay_buffer
        >>> rb = make_replay_buffer(
        ...     10_000, batch_size=256, sample_window_size=6, min_buffer_size=2, seed=0
        ... )
        >>> for step in range(4):  # 4 collector batches of 4 envs x 25 steps
        ...     done = torch.zeros(4, 25, 1, dtype=torch.bool)
        ...     batch = TensorDict(
        ...         {"step": torch.full((4, 25), step), "next": {"done": done}}, [4, 25]
        ...     )
        ...     _ = rb.extend(batch)
        >>> rb.ready(), rb.num_trajectories, rb.window_size()
        (True, 16, 150)
        >>> sample = rb.sample()
        >>> sorted(sample["step"].unique().tolist()), sample["next", "done"].shape
        ([2, 3], torch.Size([256, 1]))
    """
    capacity = _check_int("capacity", capacity, minimum=1)
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    cache_size = _check_int("cache_size", cache_size, minimum=0)
    prefetch = _check_int("prefetch", prefetch, minimum=0)
    if storage not in STORAGE_KINDS:
        raise ValueError(
            f"storage={storage!r} is not supported; use one of: " + ", ".join(STORAGE_KINDS)
        )
    device = None if device is None else torch.device(device)
    host_storage = storage == "disk" or device is None or device.type == "cpu"
    if pin_memory and not (host_storage and torch.cuda.is_available()):
        raise ValueError(
            "pin_memory=True needs CUDA and a storage in host memory (storage='disk', or "
            f"storage='memory' on the CPU); got storage={storage!r}, device={device}, "
            f"cuda available={torch.cuda.is_available()}"
        )
    if storage == "memory":
        if scratch_dir is not None:
            raise ValueError(
                f"scratch_dir={str(scratch_dir)!r} only applies to storage='disk'; got "
                "storage='memory'"
            )
        if enable_cache:
            warnings.warn(
                "enable_cache=True has no effect with storage='memory': every transition is "
                "already in memory",
                stacklevel=2,
            )
        buffer_storage = TransitionStorage(capacity, device=device or "cpu")
        sample_device = None
    else:
        # existsok: a resumed run finds the memmap of the process before it in scratch_dir;
        # those files are scratch, the checkpoint holds the data.
        buffer_storage = LazyMemmapStorage(capacity, scratch_dir=scratch_dir, existsok=True)
        if enable_cache:
            if cache_size == 0:
                raise ValueError(
                    "enable_cache=True needs cache_size >= 1 trajectories; got cache_size=0"
                )
            buffer_storage = CachedStorage(buffer_storage, cache_size)
        sample_device = device if device is not None and device.type != "cpu" else None
    sampler = SlidingWindowSampler(sample_window_size, window_unit=window_unit, seed=seed)
    return WindowReplayBuffer(
        storage=buffer_storage,
        sampler=sampler,
        batch_size=batch_size,
        min_buffer_size=min_buffer_size,
        device=sample_device,
        prefetch=prefetch or None,
        pin_memory=pin_memory,
        keys=keys,
    )
