"""The sliding-window sampler: uniform sampling over the newest trajectories of a buffer.

Vocabulary used by the replay buffer's modules:

- a *transition* is one environment step, one row of the storage;
- a *trajectory* is one contiguous rollout segment of one environment as one collector batch
  delivers it: row ``e`` of a ``[num_envs, T]`` batch is one trajectory of ``T`` transitions
  (the notion of embodied-RL frameworks such as RLinf, where this config block comes from).
  A trajectory may hold the end of one episode and the start of the next;
- an *episode* runs from a reset to a step whose ``("next", "done")`` is ``True``; it may
  span several trajectories of the same environment.

:class:`SlidingWindowSampler` draws transitions uniformly from the newest
``sample_window_size`` trajectories (or episodes, or transitions) in O(batch) per sample;
older transitions stay stored until the ring overwrites them.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

import torch
from torchrl.data.replay_buffers import Sampler, Storage

WINDOW_UNITS = ("trajectory", "episode", "transition")
"""What ``sample_window_size`` counts."""
_PLURAL = {"trajectory": "trajectories", "episode": "episodes", "transition": "transitions"}

_DONE_KEY = ("next", "done")
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
        return torch.full((count,), default, dtype=torch.long)
    ids = torch.as_tensor(ids).reshape(-1)
    if ids.numel() != count:
        raise ValueError(
            f"{name} has {ids.numel()} ids for {count} {_PLURAL[item]}; expected one per {item}"
        )
    return ids.to(torch.long)


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
        self._record_start = torch.empty(0, dtype=torch.long)
        self._record_length = torch.empty(0, dtype=torch.long)
        self._record_unit = torch.empty(0, dtype=torch.long)
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
        lengths = torch.as_tensor(lengths, dtype=torch.long).reshape(-1)
        if lengths.numel() == 0:
            return
        if bool((lengths <= 0).any()):
            raise ValueError(f"trajectory lengths must be positive, got {lengths.tolist()}")
        first = self._num_written
        if self.window_unit == "episode":  # validates done and the ids before any change
            starts, pieces, units = self._split_episodes(first, lengths, done, stream_ids, traj_ids)
        elif self.window_unit == "trajectory":
            if self.bounded:  # else no record is kept (below)
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
        return first + piece_start, piece_length, torch.tensor(units, dtype=torch.long)

    def end_episodes(self) -> None:
        """Ends every unfinished episode: the next pieces written start new window units
        (the envs started new episodes, e.g. a run resumed without its envs' state)."""
        self._open_episodes.clear()

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
        self.add_trajectories(torch.ones(1, dtype=torch.long))

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
            "open_streams": torch.tensor(keys, dtype=torch.long).reshape(-1, 2),
            "open_units": torch.tensor([self._open_episodes[k] for k in keys], dtype=torch.long),
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
