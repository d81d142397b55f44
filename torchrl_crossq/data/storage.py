"""Storages: in memory with direct per-tensor reads and writes, and a disk storage with its newest
trajectories cached in memory (see :mod:`.sampler`'s vocabulary)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyTensorStorage
from torchrl.data.replay_buffers import Storage

from torchrl_crossq.data.sampler import _check_int

_CPU = torch.device("cpu")


class TransitionStorage(LazyTensorStorage):
    """TorchRL's :class:`~torchrl.data.LazyTensorStorage`, reading and writing tensor by tensor.

    A replay buffer writes each collector batch at a 1-D tensor of storage indices and reads
    each sample at one. On 2 CPU cores TensorDict's generic indexing takes about 0.5 ms to
    write one HalfCheetah transition and 0.25 ms to read a batch of 256, together a few
    percent of a training frame at critic width 256. Here, for such an index and data whose
    every entry is a plain tensor (nested TensorDicts of them included), each stored tensor
    is indexed directly: ``stored[index] = value`` for a write, ``stored[:len(self)][index]``
    for a read (on the CPU: one bounds check of the index, then ``index_select`` on each
    whole tensor, the TensorDicts built without per-entry checks), the operations TorchRL's
    path ends in, with the same results: the same values, batch size and device. Anything
    else (integer or slice indices, an empty index or one outside ``[0, len(self))``,
    non-tensor data, another key set, dtype or shape, a ``compilable`` or shared storage,
    several storage dimensions) takes TorchRL's path.

    Takes :class:`~torchrl.data.LazyTensorStorage`'s arguments; :func:`make_replay_buffer`
    builds the memory storage with it.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> storage = TransitionStorage(100)
        >>> batch = TensorDict({"observation": torch.arange(8.0).reshape(4, 2),
        ...                     "next": {"reward": torch.ones(4, 1)}}, [4])
        >>> storage.set(torch.arange(4), batch)
        >>> sample = storage.get(torch.tensor([3, 0]))
        >>> sample["observation"].tolist(), sample["next", "reward"].shape, len(storage)
        ([[6.0, 7.0], [0.0, 1.0]], torch.Size([2, 1]), 4)
    """

    def _indexable(self, index: Any) -> bool:
        """Whether ``index`` and this storage allow the tensor-by-tensor path."""
        return (
            isinstance(index, torch.Tensor)
            and index.ndim == 1
            and index.dtype in (torch.int64, torch.int32)
            and self.ndim == 1
            and not self._compilable
            and self.initialized
            and type(self._storage) is TensorDict
        )

    def set(self, cursor: Any, data: Any, *, set_cursor: bool = True) -> None:
        pairs = None
        if self._indexable(cursor) and self._storage_keys is None and type(data) is TensorDict:
            pairs = _matching_tensors(self._storage, data, cursor.shape[0])
        if pairs is None:
            return super().set(cursor, data, set_cursor=set_cursor)
        # TorchRL's TensorStorage.set, in its order, for a write it would do key by key.
        if set_cursor:
            self._set_last_cursor(cursor)
            self._get_new_len(data, cursor)
        for stored, value in pairs:
            stored[cursor] = value
        self._bump_mutation_revision()

    def get(self, index: Any) -> Any:
        if self._indexable(index):
            length = self._len_along_dim0
            if index.is_cpu and self._storage.device == _CPU:
                # One bounds check on the host, then index_select on whole tensors, not on a
                # view of each. An empty index, or one outside [0, len) (TorchRL's path
                # wraps negative indices and raises past the end), takes TorchRL's path.
                if index.numel() == 0:
                    return super().get(index)
                low, high = torch.aminmax(index)
                if low.item() < 0 or high.item() >= length:
                    return super().get(index)
                length = None
            elif self._is_full:
                length = None
            try:
                sample = _gather(self._storage, index, length)
            except (IndexError, RuntimeError):
                sample = None  # an index out of range: TorchRL's path reads it or raises
            if sample is not None:
                return sample
        return super().get(index)


def _matching_tensors(
    stored: TensorDictBase, data: TensorDictBase, rows: int
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``(stored tensor, written tensor)`` for every entry, or ``None`` where the two differ.

    The same keys at every level, plain tensors of the same dtype, device and row shape,
    ``rows`` rows written: what a per-key ``stored[index] = value`` writes as TensorDict would.
    """
    if data.batch_size != (rows,):
        return None
    values = dict(data.items())
    if len(values) != len(stored.keys()):
        return None
    pairs = []
    for key, target in stored.items():
        value = values.get(key)
        if type(target) is TensorDict and type(value) is TensorDict:
            nested = _matching_tensors(target, value, rows)
            if nested is None:
                return None
            pairs += nested
        elif (
            type(target) is torch.Tensor
            and type(value) is torch.Tensor
            and value.dtype == target.dtype
            and value.device == target.device
            and value.shape[1:] == target.shape[1:]
        ):
            pairs.append((target, value))
        else:
            return None
    return pairs


def _gather(stored: TensorDict, index: torch.Tensor, length: int | None) -> TensorDict | None:
    """``stored[:length][index]`` built tensor by tensor, or ``None`` for non-tensor entries.

    ``length=None`` reads whole tensors: the caller checked the index. On the CPU with
    ``index_select``, about twice as fast as indexing there. The TensorDicts are built
    without TensorDict's per-entry checks: every entry is a row gather of a stored tensor,
    so it has the batch's rows and the storage's device by construction.
    """
    entries = {}
    for key, value in stored.items():
        if type(value) is TensorDict:
            value = _gather(value, index, length)
            if value is None:
                return None
        elif type(value) is torch.Tensor:
            if length is not None:
                value = value.narrow(0, 0, length)
            value = torch.index_select(value, 0, index) if value.is_cpu else value[index]
        else:
            return None
        entries[key] = value
    batch_size = torch.Size([index.shape[0], *stored.batch_size[1:]])
    return TensorDict._new_unsafe(entries, batch_size=batch_size, device=stored.device)


class CachedStorage(Storage):
    """A disk storage with an in-memory copy of its newest ``cache_size`` trajectories.

    Every write goes to ``disk`` and, for the newest transitions, to an in-memory ring
    (a :class:`TransitionStorage`). Reads of cached indices are served from
    memory; only the other indices are read from ``disk``. With ``cache_size`` at least the
    sampling window, window samples never touch the disk.

    The cache is sized in transitions at the first write, as ``cache_size`` times the length
    of the longest trajectory then written (collector batches have a fixed length ``T``),
    capped at the capacity. Later, longer trajectories leave room for fewer of them; that
    changes how often the disk is read, never what is read. Writes must be round robin
    (TorchRL's default writer), as for :class:`SlidingWindowSampler`. In a TorchRL
    replay buffer other than :class:`WindowReplayBuffer`, give ``collate_fn=lambda x: x``
    (reads return TensorDicts already; TorchRL finds no default for a storage it does not
    know).

    Args:
        disk (Storage): the 1-D storage that holds every transition, typically a
            :class:`~torchrl.data.LazyMemmapStorage`.
        cache_size (int): number of trajectories kept in memory, between 1 and the
            capacity. Embodied config: 6000.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyMemmapStorage
        >>> from torchrl_crossq.data import CachedStorage
        >>> with tempfile.TemporaryDirectory() as scratch_dir:
        ...     storage = CachedStorage(LazyMemmapStorage(100, scratch_dir=scratch_dir), 2)
        ...     storage.reserve(10)  # trajectories of 10 transitions: cache 20
        ...     for step in range(5):
        ...         storage.set(torch.arange(10 * step, 10 * step + 10),
        ...                     TensorDict({"step": torch.full((10,), step)}, [10]))
        ...     print(storage.cache_capacity)
        ...     print(storage.is_cached(torch.tensor([0, 29, 30, 49])).tolist())
        20
        [False, False, True, True]
    """

    def __init__(self, disk: Storage, cache_size: int) -> None:
        if disk.ndim != 1:
            raise ValueError(f"CachedStorage needs a 1-D disk storage; got ndim={disk.ndim}")
        cache_size = _check_int("cache_size", cache_size, minimum=1)
        if cache_size > disk.max_size:
            raise ValueError(
                f"cache_size={cache_size} trajectories exceeds the capacity of {disk.max_size} "
                "transitions; use a cache of at most the capacity"
            )
        super().__init__(disk.max_size)
        self.disk = disk
        self.cache_size = cache_size
        self.cache: TransitionStorage | None = None
        self.device = torch.device("cpu")
        self._num_written = 0

    @property
    def cache_capacity(self) -> int | None:
        """Transitions the cache holds once full (``None`` before the first write)."""
        return None if self.cache is None else self.cache.max_size

    def reserve(self, trajectory_length: int) -> None:
        """Sizes the cache for trajectories of ``trajectory_length`` transitions (once)."""
        if self.cache is None:
            transitions = self.cache_size * trajectory_length
            if transitions > self.max_size:
                warnings.warn(
                    f"cache_size={self.cache_size} trajectories of {trajectory_length} "
                    f"transitions exceed the capacity of {self.max_size}; the cache holds the "
                    "whole buffer",
                    stacklevel=3,
                )
            self.cache = TransitionStorage(min(transitions, self.max_size))

    def _locate(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For storage indices: whether each is cached, and its cache slot."""
        newest = self._num_written - 1
        age = (newest - index).remainder(self.max_size)
        cached = age < min(self.cache.max_size, self._num_written)
        return cached, (newest - age).remainder(self.cache.max_size)

    def is_cached(self, index: torch.Tensor) -> torch.Tensor:
        """Whether each storage index is served from memory."""
        if self.cache is None:
            return torch.zeros_like(index, dtype=torch.bool)
        return self._locate(torch.as_tensor(index, dtype=torch.long))[0]

    def set(self, cursor: Any, data: Any, *, set_cursor: bool = True) -> None:
        self.disk.set(cursor, data, set_cursor=set_cursor)
        if isinstance(cursor, int):
            index, data = torch.tensor([cursor]), data.unsqueeze(0)
        elif isinstance(cursor, slice):
            index = torch.arange(self.max_size)[cursor]
        else:
            index = torch.as_tensor(cursor, dtype=torch.long).reshape(-1)
        if set_cursor:
            self._set_last_cursor(cursor)
            self._write_through(index, data)
        elif self.cache is not None and self._num_written:
            cached, slot = self._locate(index)
            if bool(cached.any()):
                self.cache.set(slot[cached], data[cached], set_cursor=False)
        self._bump_mutation_revision()

    def _write_through(self, index: torch.Tensor, data: Any) -> None:
        num_new = index.numel()
        if num_new and int(index[0]) != self._num_written % self.max_size:
            raise RuntimeError(
                f"CachedStorage expects round-robin writes: write at index {int(index[0])}, "
                f"expected {self._num_written % self.max_size}"
            )
        self.reserve(num_new)  # a write of unknown layout counts as one trajectory
        kept = min(num_new, self.cache.max_size)
        position = torch.arange(self._num_written + num_new - kept, self._num_written + num_new)
        self.cache.set(position.remainder(self.cache.max_size), data[num_new - kept :])
        self._num_written += num_new

    def get(self, index: Any) -> Any:
        if self.cache is None or self._num_written == 0 or isinstance(index, slice):
            return self.disk.get(index)
        if isinstance(index, int):
            return self.get(torch.tensor([index]))[0]
        index = torch.as_tensor(index, dtype=torch.long)
        if index.ndim != 1:
            return self.get(index.reshape(-1)).reshape(index.shape)
        cached, slot = self._locate(index)
        if bool(cached.all()):
            return self.cache.get(slot)
        missed = (~cached).nonzero().squeeze(-1)
        if missed.numel() == index.numel():
            return self.disk.get(index)
        # Missed rows of this gather hold unrelated cached data; the disk read overwrites them.
        out = self.cache.get(slot)
        out[missed] = self.disk.get(index[missed])
        return out

    def _refill_cache(self, capacity: int | None) -> None:
        """Rebuilds the cache of ``capacity`` transitions from the disk (after a load)."""
        self.cache = None if capacity is None else TransitionStorage(capacity)
        if self.cache is None:
            return
        num_cached = min(self.cache.max_size, self._num_written, len(self.disk))
        if num_cached:
            position = torch.arange(self._num_written - num_cached, self._num_written)
            data = self.disk.get(position.remainder(self.max_size))
            self.cache.set(position.remainder(self.cache.max_size), data)

    def __len__(self) -> int:
        return len(self.disk)

    def contains(self, item: Any) -> Any:
        return self.disk.contains(item)

    def _empty(self) -> None:
        self.disk._empty()
        if self.cache is not None:
            self.cache._empty()
        self._num_written = 0
        self._bump_mutation_revision()

    def state_dict(self) -> dict[str, Any]:
        return {
            "disk": self.disk.state_dict(),
            "cache_capacity": self.cache_capacity,
            "num_written": self._num_written,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.disk.load_state_dict(state_dict["disk"])
        self._load_cache_metadata(state_dict)

    def dumps(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.disk.dumps(path / "disk")
        metadata = {"cache_capacity": self.cache_capacity, "num_written": self._num_written}
        (path / "cache_metadata.json").write_text(json.dumps(metadata))

    def loads(self, path: str | Path) -> None:
        path = Path(path)
        self.disk.loads(path / "disk")
        self._load_cache_metadata(json.loads((path / "cache_metadata.json").read_text()))

    def _load_cache_metadata(self, metadata: dict[str, Any]) -> None:
        self._num_written = int(metadata["num_written"])
        capacity = metadata["cache_capacity"]
        self._refill_cache(None if capacity is None else int(capacity))
        self._bump_mutation_revision()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(disk={type(self.disk).__name__}(max_size={self.max_size}), "
            f"cache_size={self.cache_size}, cache_capacity={self.cache_capacity}, len={len(self)})"
        )
