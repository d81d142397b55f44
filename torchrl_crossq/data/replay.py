"""Replay buffer for CrossQ: uniform sampling over a sliding window of the newest trajectories.

Vocabulary used throughout this module:

- a *transition* is one environment step, one row of the storage;
- a *trajectory* is one contiguous rollout segment of one environment as one collector batch
  delivers it: row ``e`` of a ``[num_envs, T]`` batch is one trajectory of ``T`` transitions
  (the notion of embodied-RL frameworks such as RLinf, where this config block comes from).
  A trajectory may hold the end of one episode and the start of the next;
- an *episode* runs from a reset to a step whose ``("next", "done")`` is ``True``; it may
  span several trajectories of the same environment.

The buffer stores transitions (batches are flattened on ``extend``) in one ring of
``capacity`` transitions, in write order. :class:`SlidingWindowSampler` draws transitions
uniformly from the newest ``sample_window_size`` trajectories (or episodes, or transitions)
in O(batch) per sample; older transitions stay stored until the ring overwrites them.
:class:`CachedStorage` keeps the newest trajectories of a disk storage in memory, so that
window samples do not read the disk. :func:`make_replay_buffer` builds the whole thing from
plain keyword arguments.
"""

from __future__ import annotations

import json
import numbers
import warnings
from pathlib import Path
from typing import Any

import torch
from tensordict import LazyStackedTensorDict, TensorDictBase
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    TensorDictReplayBuffer,
)
from torchrl.data.replay_buffers import Sampler, Storage

__all__ = [
    "WINDOW_UNITS",
    "CachedStorage",
    "SlidingWindowSampler",
    "WindowReplayBuffer",
    "make_replay_buffer",
]

WINDOW_UNITS = ("trajectory", "episode", "transition")
"""What ``sample_window_size`` counts."""
_PLURAL = {"trajectory": "trajectories", "episode": "episodes", "transition": "transitions"}

STORAGE_KINDS = ("memory", "disk")

_TRAJ_IDS_KEY = ("collector", "traj_ids")
_DONE_KEY = ("next", "done")
_LONG = torch.long
_SEARCH_CHUNK = 200  # ATen's grain size for searchsorted: smaller calls stay on one thread


def _check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        hint = " (YAML reads 1e6 as a float: write 1000000)" if isinstance(value, float) else ""
        raise TypeError(f"{name}={value!r} must be an int{hint}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value} must be >= {minimum}")
    return int(value)


def _one_per(name: str, ids: Any, count: int, item: str, default: int) -> torch.Tensor:
    """``ids`` as a flat long tensor of one id per ``item`` (``count`` of them), or defaults."""
    if ids is None:
        return torch.full((count,), default, dtype=_LONG)
    ids = torch.as_tensor(ids).reshape(-1)
    if ids.numel() != count:
        raise ValueError(
            f"{name} has {ids.numel()} ids for {count} {_PLURAL[item]}; expected one per {item}"
        )
    return ids.to(_LONG)


class SlidingWindowSampler(Sampler):
    """Samples transitions uniformly from the newest ``sample_window_size`` trajectories.

    The sampler keeps, for the trajectories (or episodes) that can still be in the window, a
    small record of where they start in the write order and how long they are. At sampling
    time it draws a uniform position among the window's transitions with ``torch.randint`` and
    maps it to a storage index with one ``searchsorted`` over the window's contiguous blocks
    (one block, and no search, when the window is a suffix of the write order, as it is for
    ``window_unit="trajectory"`` and ``"transition"``). The cost is O(batch), independent of
    the capacity of the buffer. Transitions outside the window stay stored: the window only
    restricts what is sampled.

    The sampler assumes round-robin writes (TorchRL's default writer) and must see every write
    since the storage was created or emptied, so that the n-th transition written lives at
    storage index ``n % capacity``; sampling raises if the storage length disagrees.

    Window units (``window_unit``):

    - ``"trajectory"``: the newest ``sample_window_size`` trajectories, a trajectory being
      one env row of a ``[num_envs, T]`` collector batch (see :class:`WindowReplayBuffer` for
      flat batches). When used in a plain TorchRL buffer, each ``extend`` call is one
      trajectory.
    - ``"episode"``: the ``sample_window_size`` most recently *started* episodes, including
      unfinished ones; an episode that continues across batches keeps its place (its start).
      Needs the done flags, so it works through :class:`WindowReplayBuffer` (or
      :meth:`add_trajectories`), not through a plain buffer's ``extend``; which episode a
      trajectory continues comes from the collector's traj ids (see
      :class:`WindowReplayBuffer`).
    - ``"transition"``: the newest ``sample_window_size`` transitions.

    When the storage has overwritten the oldest part of the window, the window is what
    survives of it. A ``sample_window_size <= 0`` samples the whole buffer, like TorchRL's
    :class:`~torchrl.data.RandomSampler`.

    Args:
        sample_window_size (int): how many of the newest trajectories (episodes, transitions:
            see ``window_unit``) samples come from; ``<= 0`` means the whole buffer.
            Embodied config: 6000 trajectories. Defaults to ``0``.

    Keyword Args:
        window_unit (str): what ``sample_window_size`` counts: ``"trajectory"``,
            ``"episode"`` or ``"transition"``. Defaults to ``"trajectory"``.
        seed (int, optional): seed of the sampler's own ``torch.Generator``. ``None`` draws a
            seed from torch's global RNG, so ``torch.manual_seed`` makes runs reproducible.
            The generator state is part of :meth:`state_dict` and :meth:`dumps`. A generator
            given to the replay buffer (``generator=``) takes precedence, as for TorchRL's
            samplers.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> from torchrl_crossq.data import SlidingWindowSampler
        >>> rb = TensorDictReplayBuffer(
        ...     storage=LazyTensorStorage(100),
        ...     sampler=SlidingWindowSampler(2, seed=0),
        ...     batch_size=64,
        ... )
        >>> for step in range(5):  # a plain buffer: each extend call is one trajectory
        ...     _ = rb.extend(TensorDict({"step": torch.full((10,), step)}, [10]))
        >>> rb.sample()["step"].unique().tolist()  # only the newest 2 trajectories
        [3, 4]
    """

    def __init__(
        self,
        sample_window_size: int = 0,
        *,
        window_unit: str = "trajectory",
        seed: int | None = None,
    ) -> None:
        sample_window_size = _check_int("sample_window_size", sample_window_size)
        if window_unit not in WINDOW_UNITS:
            raise ValueError(
                f"window_unit={window_unit!r} is not supported; use one of: "
                + ", ".join(WINDOW_UNITS)
            )
        self.sample_window_size = sample_window_size
        self.window_unit = window_unit
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self._generator = torch.Generator().manual_seed(seed)
        self._empty()

    # ----- bookkeeping -------------------------------------------------------------------

    @property
    def bounded(self) -> bool:
        """Whether samples come from a window rather than the whole buffer."""
        return self.sample_window_size > 0

    @property
    def num_written(self) -> int:
        """Transitions written since the sampler was created or emptied."""
        return self._num_written

    @property
    def num_trajectories(self) -> int:
        """Trajectories written since the sampler was created or emptied."""
        return self._num_trajectories

    def _empty(self) -> None:
        self._num_written = 0
        self._num_trajectories = 0
        # Window units (trajectories or episodes) started so far: the id of the next one.
        self._next_unit = 0
        # One record per contiguous run of transitions of one window unit, in write order,
        # for the units that can still be in the window. Positions count transitions
        # written, so a position p lives at storage index p % capacity.
        self._record_start = torch.empty(0, dtype=_LONG)
        self._record_length = torch.empty(0, dtype=_LONG)
        self._record_unit = torch.empty(0, dtype=_LONG)
        # (stream id, traj id) -> window unit of an unfinished episode (window_unit="episode").
        self._open_episodes: dict[tuple[int, int], int] = {}
        # Cached window blocks, keyed by (transitions written, stored): one attribute so that
        # a reader on another thread never pairs a key with another key's blocks.
        self._window: tuple[tuple[int, int], int, torch.Tensor, torch.Tensor] | None = None

    def add_trajectories(
        self,
        lengths: torch.Tensor,
        *,
        done: torch.Tensor | None = None,
        stream_ids: torch.Tensor | None = None,
        traj_ids: torch.Tensor | None = None,
        capacity: int | None = None,
    ) -> None:
        """Registers trajectories just written to the storage, in write order.

        For ``window_unit="episode"``, the first episode of a trajectory continues the
        unfinished episode that has the same stream id and traj id; every later episode of
        the trajectory is new. See :class:`WindowReplayBuffer` for the ids it passes.

        Args:
            lengths (torch.Tensor): length of each trajectory, in transitions; they were
                written back to back, in this order.

        Keyword Args:
            done (torch.Tensor, optional): ``("next", "done")`` of every written transition,
                flattened in write order. Required for ``window_unit="episode"``.
            stream_ids (torch.Tensor, optional): per trajectory, the id of the env stream it
                continues (its place in the collector batch). Defaults to one stream for all.
            traj_ids (torch.Tensor, optional): ``("collector", "traj_ids")`` of every written
                transition, flattened in write order: an episode id of the collector. A change
                of id starts a new episode, as a done does. Defaults to no id (``-1``): the
                stream id alone says which episode a trajectory continues.
            capacity (int, optional): the storage capacity in transitions; lets the sampler
                forget records the storage has overwritten.
        """
        lengths = torch.as_tensor(lengths, dtype=_LONG).reshape(-1)
        if lengths.numel() == 0:
            return
        if bool((lengths <= 0).any()):
            raise ValueError(f"trajectory lengths must be positive, got {lengths.tolist()}")
        first = self._num_written
        if self.window_unit == "episode":  # validates done and the ids before any change
            starts, pieces, units = self._split_episodes(first, lengths, done, stream_ids, traj_ids)
        elif self.window_unit == "trajectory":
            starts, pieces = first + torch.cumsum(lengths, 0) - lengths, lengths
            units = self._next_unit + torch.arange(lengths.numel())
            self._next_unit += lengths.numel()
        self._num_written += int(lengths.sum())
        self._num_trajectories += lengths.numel()
        self._window = None
        if self.window_unit == "transition":
            self._next_unit = self._num_written
            return
        if not self.bounded:
            return  # the window is the whole buffer: no record needed
        start = torch.cat([self._record_start, starts])
        length = torch.cat([self._record_length, pieces])
        unit = torch.cat([self._record_unit, units])
        keep = unit >= self._next_unit - self.sample_window_size
        if capacity is not None:
            keep &= start + length > self._num_written - capacity
        self._record_start, self._record_length, self._record_unit = (
            start[keep],
            length[keep],
            unit[keep],
        )

    def _split_episodes(
        self,
        first: int,
        lengths: torch.Tensor,
        done: torch.Tensor | None,
        stream_ids: torch.Tensor | None,
        traj_ids: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        num_new = int(lengths.sum())
        if done is None:
            raise ValueError(
                "window_unit='episode' needs the ('next', 'done') flags of the written "
                "transitions; use WindowReplayBuffer (make_replay_buffer), which passes them"
            )
        done = torch.as_tensor(done).reshape(-1).to(torch.bool)
        if done.numel() != num_new:
            raise ValueError(
                f"done has {done.numel()} flags for {num_new} transitions; expected one "
                "per transition"
            )
        stream_ids = _one_per("stream_ids", stream_ids, lengths.numel(), "trajectory", 0)
        traj_ids = _one_per("traj_ids", traj_ids, num_new, "transition", -1)
        trajectory_start = torch.cumsum(lengths, 0) - lengths
        trajectory_of = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        is_start = torch.zeros(num_new, dtype=torch.bool)
        is_start[1:] = done[:-1] | (traj_ids[1:] != traj_ids[:-1])
        is_start[trajectory_start] = True
        piece_start = is_start.nonzero().squeeze(-1)
        piece_length = torch.diff(piece_start, append=torch.tensor([num_new]))
        piece_done = done[piece_start + piece_length - 1]
        piece_stream = stream_ids[trajectory_of[piece_start]]
        piece_traj = traj_ids[piece_start]
        # Only the first piece of a trajectory can continue an episode: the others follow a
        # done or a reset in this trajectory.
        continues = torch.zeros(num_new, dtype=torch.bool)
        continues[trajectory_start] = True
        piece_continues = continues[piece_start]
        # One step per piece of this batch (not per stored transition): a piece continues the
        # unfinished episode of its (stream, traj id) or starts a new one.
        units = []
        for stream, traj, ends, may_continue in zip(
            piece_stream.tolist(),
            piece_traj.tolist(),
            piece_done.tolist(),
            piece_continues.tolist(),
        ):
            unit = self._open_episodes.pop((stream, traj), None) if may_continue else None
            if unit is None:
                unit = self._next_unit
                self._next_unit += 1
            if not ends:
                self._open_episodes[(stream, traj)] = unit
            units.append(unit)
        return first + piece_start, piece_length, torch.tensor(units, dtype=_LONG)

    # ----- Sampler API -------------------------------------------------------------------

    def extend(self, index: torch.Tensor) -> None:
        """Registers one ``extend`` call of a plain TorchRL buffer as one trajectory."""
        index = torch.as_tensor(index)
        if index.ndim > 1:
            raise ValueError(
                f"{type(self).__name__} needs a 1-D storage; got write indices of shape "
                f"{tuple(index.shape)}"
            )
        self.add_trajectories(torch.tensor([index.numel()]))

    def add(self, index: int) -> None:
        """Registers one ``add`` call of a plain TorchRL buffer as a one-transition trajectory."""
        self.add_trajectories(torch.ones(1, dtype=_LONG))

    def _window_blocks(self, storage: Storage) -> tuple[int, torch.Tensor, torch.Tensor]:
        """Returns (transitions in window, block ends, position shift per block)."""
        stored = len(storage)
        key = (self._num_written, stored)
        if self._window is not None and self._window[0] == key:
            return self._window[1:]
        if stored != min(self._num_written, storage.max_size):
            raise RuntimeError(
                f"{type(self).__name__} saw {self._num_written} transitions written but the "
                f"storage holds {stored} (capacity {storage.max_size}); the sampler must see "
                "every write, through a round-robin writer, since the storage was created "
                "or emptied"
            )
        oldest = self._num_written - stored
        if not self.bounded or self.window_unit == "transition":
            width = stored if not self.bounded else min(self.sample_window_size, stored)
            start = torch.tensor([self._num_written - width])
            end = torch.tensor([self._num_written])
        else:
            end = self._record_start + self._record_length
            alive = end > oldest
            start = self._record_start[alive].clamp_min(oldest)
            end = end[alive]
            # Merge runs that touch in write order: a suffix window becomes one block.
            opens = torch.ones_like(start, dtype=torch.bool)
            opens[1:] = start[1:] != end[:-1]
            closes = torch.ones_like(opens)
            closes[:-1] = opens[1:]
            start, end = start[opens], end[closes]
        length = end - start
        block_end = torch.cumsum(length, 0)
        count = int(block_end[-1]) if block_end.numel() else 0
        self._window = (key, count, block_end, start - (block_end - length))
        return self._window[1:]

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        if len(storage) == 0:
            raise RuntimeError("Cannot sample from an empty replay buffer")
        count, block_end, shift = self._window_blocks(storage)
        if count == 0:
            raise RuntimeError(
                f"the window of the newest {self.sample_window_size} "
                f"{_PLURAL[self.window_unit]} holds no stored transition (the storage "
                "overwrote it); increase the capacity"
            )
        generator = self._rng if self._rng is not None else self._generator
        position = torch.randint(count, (batch_size,), generator=generator)
        if shift.numel() == 1:
            position += shift
        else:
            block = torch.empty_like(position)
            # ATen splits searchsorted over threads above 200 queries; waking them costs far
            # more than the search (milliseconds when env workers hold the other cores).
            for queries, out in zip(position.split(_SEARCH_CHUNK), block.split(_SEARCH_CHUNK)):
                torch.searchsorted(block_end, queries, right=True, out=out)
            position += shift[block]
        return position.remainder_(storage.max_size), {}

    def _sampleable_count(self, storage: Storage, batch_size: int) -> int:
        if len(storage) == 0:
            return 0
        return self._window_blocks(storage)[0]

    def window_size(self, storage: Storage) -> int:
        """Number of stored transitions samples are currently drawn from."""
        return self._sampleable_count(storage, 0)

    def state_dict(self) -> dict[str, Any]:
        keys = list(self._open_episodes)
        return {
            "sample_window_size": self.sample_window_size,
            "window_unit": self.window_unit,
            "num_written": self._num_written,
            "num_trajectories": self._num_trajectories,
            "next_unit": self._next_unit,
            "record_start": self._record_start.clone(),
            "record_length": self._record_length.clone(),
            "record_unit": self._record_unit.clone(),
            # (stream id, traj id) of each unfinished episode, shape [n, 2]
            "open_streams": torch.tensor(keys, dtype=_LONG).reshape(-1, 2),
            "open_units": torch.tensor([self._open_episodes[k] for k in keys], dtype=_LONG),
            "generator_state": self._generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name in ("sample_window_size", "window_unit"):
            if state_dict[name] != getattr(self, name):
                raise ValueError(
                    f"the saved sampler has {name}={state_dict[name]!r} but this one has "
                    f"{name}={getattr(self, name)!r}; build the buffer with the saved settings"
                )
        self._num_written = int(state_dict["num_written"])
        self._num_trajectories = int(state_dict["num_trajectories"])
        self._next_unit = int(state_dict["next_unit"])
        self._record_start = state_dict["record_start"].clone()
        self._record_length = state_dict["record_length"].clone()
        self._record_unit = state_dict["record_unit"].clone()
        keys = state_dict["open_streams"]
        if keys.ndim == 1:  # saved before episodes were keyed by traj id: stream ids only
            keys = torch.stack([keys, torch.full_like(keys, -1)], -1)
        self._open_episodes = dict(
            zip(map(tuple, keys.tolist()), state_dict["open_units"].tolist())
        )
        self._generator.set_state(state_dict["generator_state"])
        self._window = None

    def dumps(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / "sampler_state.pt")

    def loads(self, path: str | Path) -> None:
        self.load_state_dict(torch.load(Path(path) / "sampler_state.pt", weights_only=True))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sample_window_size={self.sample_window_size}, "
            f"window_unit={self.window_unit!r}, num_written={self._num_written}, "
            f"num_trajectories={self._num_trajectories})"
        )


class CachedStorage(Storage):
    """A disk storage with an in-memory copy of its newest ``cache_size`` trajectories.

    Every write goes to ``disk`` and, for the newest transitions, to an in-memory ring
    (a :class:`~torchrl.data.LazyTensorStorage`). Reads of cached indices are served from
    memory; only the other indices are read from ``disk``. With ``cache_size`` at least the
    sampling window, window samples never touch the disk.

    The cache is sized in transitions at the first write, as ``cache_size`` times the length
    of the longest trajectory then written (collector batches have a fixed length ``T``),
    capped at the capacity. Later, longer trajectories leave room for fewer of them; that
    changes how often the disk is read, never what is read. Writes must be round robin
    (TorchRL's default writer), as for :class:`SlidingWindowSampler`.

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
        self.cache: LazyTensorStorage | None = None
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
            self.cache = LazyTensorStorage(min(transitions, self.max_size))

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
        return self._locate(torch.as_tensor(index, dtype=_LONG))[0]

    def set(self, cursor: Any, data: Any, *, set_cursor: bool = True) -> None:
        self.disk.set(cursor, data, set_cursor=set_cursor)
        if isinstance(cursor, int):
            index, data = torch.tensor([cursor]), data.unsqueeze(0)
        elif isinstance(cursor, slice):
            index = torch.arange(self.max_size)[cursor]
        else:
            index = torch.as_tensor(cursor, dtype=_LONG).reshape(-1)
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
        index = torch.as_tensor(index, dtype=_LONG)
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
        self.cache = None if capacity is None else LazyTensorStorage(capacity)
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
        lengths = torch.full((num_rows,), length, dtype=_LONG)
        flat = rows.reshape(-1)
        traj_ids = flat.get(_TRAJ_IDS_KEY, None)
        if traj_ids is not None:
            traj_ids = traj_ids.reshape(-1)
        return flat, lengths, torch.arange(num_rows), traj_ids
    traj_ids = data.get(_TRAJ_IDS_KEY, None)
    if traj_ids is None or data.shape[0] == 0:
        return data, torch.tensor([data.shape[0]]), torch.zeros(1, dtype=_LONG), None
    traj_ids = traj_ids.reshape(-1)
    starts = torch.cat(
        [torch.zeros(1, dtype=_LONG), (traj_ids[1:] != traj_ids[:-1]).nonzero()[:, 0] + 1]
    )
    lengths = torch.diff(starts, append=torch.tensor([data.shape[0]]))
    return data, lengths, torch.zeros(lengths.numel(), dtype=_LONG), traj_ids


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

    @property
    def num_trajectories(self) -> int:
        """Trajectories written since the buffer was created or emptied."""
        return self._sampler.num_trajectories

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
        if data is None or data.numel() == 0:
            return torch.zeros((0,), dtype=_LONG)
        flat, lengths, stream_ids, traj_ids = _flatten_trajectories(data)
        capacity = self._storage.max_size
        if flat.shape[0] > capacity:
            raise ValueError(
                f"one extend of {flat.shape[0]} transitions exceeds the capacity of "
                f"{capacity}; collect smaller batches or raise the capacity"
            )
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
        storage (str): ``"memory"`` (:class:`~torchrl.data.LazyTensorStorage`, on ``device``)
            or ``"disk"`` (:class:`~torchrl.data.LazyMemmapStorage` in ``scratch_dir``).
            Defaults to ``"memory"``.
        scratch_dir (str, optional): directory of the disk storage; ``None`` uses a temporary
            directory. Only for ``storage="disk"``.
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
        buffer_storage = LazyTensorStorage(capacity, device=device or "cpu")
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
    )
