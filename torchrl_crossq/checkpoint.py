"""Checkpoints and resume: what a checkpoint holds, and how a run continues from one.

:class:`RunCheckpoints` is the whole story of a training run's checkpoints: what is saved, what is
put back and what is forgotten on resume. Below it: atomic checkpoint folders of which the newest
``keep`` are kept and a corrupted one is detected (:func:`save_checkpoint`,
:func:`load_latest_checkpoint`), the global random states, and the state of in-process envs
(:class:`EpisodeRecorder`, :func:`collector_state`) that lets a resumed run continue their
episodes exactly.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torchrl.collectors import BaseCollector
from torchrl.envs import EnvBase, GymWrapper, SerialEnv, TransformedEnv
from torchrl.record.loggers import Logger

from torchrl_crossq.logging import (
    EvalHistory,
    logger_run_id,
    sync_to_disk,
    write_text_atomically,
)

_NAME = re.compile(r"^ckpt_(\d{12})$")
# Left by a kill inside save_checkpoint: a checkpoint being written, and one moved aside
# while the checkpoint of the same frame count is written again (see recover_checkpoints).
_TMP = re.compile(r"^\.tmp_ckpt_(\d{12})_\d+$")
_ASIDE = re.compile(r"^\.old_ckpt_(\d{12})_\d+$")


def rng_state() -> dict[str, Any]:
    """The global random states (python, numpy, torch CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # One state per GPU visible when saved; a machine with fewer restores those it has.
        for index, gpu_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(gpu_state, index)


def save_checkpoint(
    directory: str | Path,
    frames: int,
    state: dict[str, Any],
    *,
    replay_buffer=None,
    keep: int = 2,
) -> Path:
    """Writes ``<directory>/ckpt_<frames>/`` atomically and keeps the newest ``keep``.

    Everything is written into a temporary folder first and renamed into place,
    so a kill at any moment leaves either the previous checkpoint or the new one,
    never half of one; the files reach the disk before the rename (``fsync``), so a crash of
    the machine does too. A checkpoint of the same frame count (the end of a run that just
    saved on its interval) is moved aside until the new one is in place; after a kill
    between the two renames, :func:`recover_checkpoints` puts it back. ``state`` goes to
    ``state.pt``; the replay buffer (a TorchRL buffer) is dumped to ``replay/``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt_{frames:012d}"
    tmp = directory / f".tmp_ckpt_{frames:012d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    if replay_buffer is not None:
        replay_buffer.dumps(tmp / "replay")
    torch.save(state, tmp / "state.pt")
    (tmp / "COMPLETE").write_text(str(frames))
    # On the disk before the rename, and the rename before an older checkpoint is deleted: a
    # crash of the machine right after a save leaves this checkpoint or the one before it.
    sync_to_disk(tmp)
    aside = directory / f".old_ckpt_{frames:012d}_{os.getpid()}"
    if final.exists():
        os.replace(final, aside)
    os.replace(tmp, final)
    sync_to_disk(directory, recursive=False)
    shutil.rmtree(aside, ignore_errors=True)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def recover_checkpoints(directory: str | Path) -> None:
    """Cleans up after a kill inside :func:`save_checkpoint`, before a run (re)starts.

    A complete checkpoint that was moved aside and has no replacement is put back; the
    temporary folders of writes that never finished (a partial replay dump can take
    gigabytes) and moved-aside checkpoints that were replaced are removed. Only one
    process may train in a run directory at a time.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in sorted(directory.iterdir()):
        aside, tmp = _ASIDE.match(path.name), _TMP.match(path.name)
        if aside is not None:
            final = directory / f"ckpt_{aside.group(1)}"
            if (path / "COMPLETE").exists() and not (final / "COMPLETE").exists():
                shutil.rmtree(final, ignore_errors=True)
                os.replace(path, final)
                continue
        if aside is not None or tmp is not None:
            shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and (p / "COMPLETE").exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def newest_checkpoint_frames(directory: str | Path) -> int:
    """The frame count of the newest complete checkpoint under ``directory``; 0 if none.

    A complete checkpoint that a kill inside :func:`save_checkpoint` left moved aside counts:
    :func:`recover_checkpoints` puts it back when the run starts.
    """
    directory = Path(directory)
    frames = [int(_NAME.match(p.name).group(1)) for p in list_checkpoints(directory)]
    if directory.is_dir():
        frames += [
            int(match.group(1))
            for p in directory.iterdir()
            if (match := _ASIDE.match(p.name)) and (p / "COMPLETE").exists()
        ]
    return max(frames, default=0)


class CheckpointError(RuntimeError):
    """A run has checkpoints, and none of them can be loaded."""


class EnvMismatchError(CheckpointError):
    """A checkpoint made for other observation/action sizes than the env's."""

    def __init__(self, path: str, saved: tuple[int, int], current: tuple[int, int]) -> None:
        self.saved, self.current = saved, current
        super().__init__(
            f"{path} was made for observation/action sizes {saved}; the env has {current}"
        )


def load_latest_checkpoint(directory: str | Path, *, replay_buffer=None) -> dict[str, Any] | None:
    """Loads the newest readable checkpoint; a corrupted one is reported and the previous one used.

    Returns ``None`` when there is no checkpoint. When there are some and none loads, raises
    :class:`CheckpointError` naming each one's error: starting the run over would silently
    throw away its work.
    """
    errors = []
    for path in reversed(list_checkpoints(directory)):
        try:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
            if replay_buffer is not None and (path / "replay").exists():
                replay_buffer.loads(path / "replay")
        except Exception as err:  # a truncated or corrupted file: fall back to the previous one
            warnings.warn(
                f"checkpoint {path} is unreadable ({err}); trying the previous one", stacklevel=2
            )
            errors.append(f"{path.name}: {err}")
            continue
        state["path"] = str(path)
        return state
    if errors:
        raise CheckpointError(
            f"no checkpoint in {directory} could be loaded ({'; '.join(errors)}); the run is left "
            "as it is"
        )
    return None


class StopOnSignal:
    """Turns SIGINT/SIGTERM into a stop request that the training loop honours between rounds.

    The loop checks :attr:`requested` after each collection round, writes a
    checkpoint and exits, so no signal lands in the middle of an update. A
    second signal raises ``KeyboardInterrupt`` at once (the last checkpoint stays).

    Examples:
        >>> with StopOnSignal() as stop:
        ...     stop.requested is None
        True
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt(f"signal {signum} (second)")
        self.requested = signum

    def __enter__(self) -> StopOnSignal:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunCheckpoints:
    """What a checkpoint of a training run holds, and how the run continues from one.

    ``<run_dir>/checkpoints/ckpt_<frames>/`` holds the loss (networks, temperature,
    BatchRenorm statistics), the updater (optimisers, schedules, counters), the replay
    buffer, the global random states, the frame count, the env's observation/action sizes,
    the logger's run id (wandb) and, when the envs run in this process, the collector's next
    step and how each env's current episode came about (:func:`collector_state`). With all of
    them a resumed run logs the same losses as an uninterrupted one (a log window the
    checkpoint cuts, as a Ctrl-C's does, averages the updates after it); envs in worker
    processes or EnvPool start new episodes instead.

    A resumed run forgets what was logged after its checkpoint (``eval.csv`` and CSV-logger
    rows), since it logs those steps again.

    Args:
        run_dir: the run directory.

    Keyword Args:
        loss: the loss module (its ``state_dict`` holds networks and temperature).
        updater: the :class:`~torchrl_crossq.CrossQUpdater`.
        replay_buffer: the replay buffer, dumped into each checkpoint.
        env_dims: ``(observation size, action size)``; a checkpoint of other sizes is refused.
        keep: checkpoints kept on disk.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        loss: torch.nn.Module,
        updater,
        replay_buffer,
        env_dims: tuple[int, int],
        keep: int = 2,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.directory = self.run_dir / "checkpoints"
        self.loss = loss
        self.updater = updater
        self.replay_buffer = replay_buffer
        self.env_dims = tuple(env_dims)
        self.keep = keep
        self.logger_id: str | None = None
        self._resumed: dict[str, Any] | None = None

    def start(self, *, resume: bool) -> int:
        """The frame count the run starts from: the newest checkpoint's with ``resume``, else 0.

        Loads that checkpoint into the loss, the updater and the replay buffer, and forgets
        what was logged after it. Raises :class:`CheckpointError` when checkpoints exist and
        none loads, :class:`EnvMismatchError` when the newest was made for other env sizes.
        """
        frames, state = 0, None
        recover_checkpoints(self.directory)
        if resume:
            state = load_latest_checkpoint(self.directory, replay_buffer=self.replay_buffer)
        if state is not None:
            saved_dims = tuple(state.get("env_dims", self.env_dims))
            if saved_dims != self.env_dims:
                raise EnvMismatchError(state["path"], saved_dims, self.env_dims)
            self.loss.load_state_dict(state["loss"])
            self.updater.load_state_dict(state["updater"])
            frames, self.logger_id = state["frames"], state.get("logger_id")
            self._resumed = state
            print(f"resumed from {state['path']} at {frames} frames")
        EvalHistory(self.run_dir / "eval.csv").truncate(frames)
        truncate_csv_logs(self.run_dir / "logs", frames)
        return frames

    def restore_collector(self, collector: BaseCollector) -> None:
        """Continues the checkpoint's env episodes in ``collector``, then restores the random
        states (last: building the collector may draw random numbers). Nothing on a new run."""
        if self._resumed is None:
            return
        if not restore_collector_state(collector, self._resumed.get("collector")):
            print("resume: the envs start new episodes (their state was not checkpointed)")
            # The buffer's unfinished episodes end here: a new one must not continue them.
            end_episodes = getattr(self.replay_buffer, "end_episodes", None)
            if end_episodes is not None:
                end_episodes()
        set_rng_state(self._resumed["rng"])
        self._resumed = None

    def save(self, frames: int, *, collector: BaseCollector, logger: Logger | None) -> Path:
        """Writes the checkpoint of ``frames`` (see the class docstring for what it holds)."""
        self.logger_id = logger_run_id(logger) or self.logger_id
        state = {
            "loss": self.loss.state_dict(),
            "updater": self.updater.state_dict(),
            "rng": rng_state(),
            "frames": frames,
            "env_dims": self.env_dims,
            "logger_id": self.logger_id,
            "collector": collector_state(collector),
        }
        return save_checkpoint(
            self.directory, frames, state, replay_buffer=self.replay_buffer, keep=self.keep
        )


def truncate_csv_logs(log_dir: str | Path, frames: int) -> None:
    """Drops CSV-logger rows logged after ``frames``, so a resumed run does not log steps twice.

    TorchRL's ``CSVLogger`` writes ``<log_dir>/<exp>/scalars/<name>.csv`` with ``step,value`` rows.
    """
    for path in Path(log_dir).rglob("scalars/**/*.csv"):
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line and int(float(line.split(",", 1)[0])) <= frames]
        if len(kept) != len(lines):
            write_text_atomically(path, "".join(f"{line}\n" for line in kept))


class EpisodeRecorder(gym.Wrapper):
    """Records how the current episode came about, so that a resumed run can rebuild it exactly.

    A simulator's state (MuJoCo's qpos/qvel/warm start, wrapper counters, RNG) is
    not generally serialisable, but gymnasium tasks are deterministic given the
    reset's seed (or the env RNG's state before the reset) and the actions taken
    since. :meth:`episode_state` returns those; :meth:`restore_episode` replays
    them and leaves the env exactly where it was, time limit counter included.
    Episodes longer than ``max_steps`` (envs without a time limit) stop being
    recorded: :meth:`episode_state` then returns ``None``.
    """

    max_steps = 100_000

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        rng = None if seed is not None else self.unwrapped.np_random.bit_generator.state
        self._episode = {"seed": seed, "options": options, "rng": rng}
        self._actions: list[np.ndarray] | None = []
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if self._actions is not None:
            self._actions.append(np.array(action, copy=True))
            if len(self._actions) > self.max_steps:
                self._actions = None  # too long to replay: not resumable mid-episode
        return self.env.step(action)

    def episode_state(self) -> dict | None:
        if self._actions is None:
            return None
        return {**self._episode, "actions": list(self._actions)}

    def restore_episode(self, state: dict) -> None:
        if state["rng"] is not None:
            self.unwrapped.np_random.bit_generator.state = state["rng"]
        self.reset(seed=state["seed"], options=state["options"])
        for action in state["actions"]:
            self.step(action)


def _in_process_recorders(env: EnvBase) -> list[EpisodeRecorder] | None:
    """The :class:`EpisodeRecorder` of each env copy, when all run in this process."""
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
    return...; TorchRL keeps it in the private ``_carrier``), the id its next trajectory
    gets, and, for each env copy, how its current episode came about (see
    :class:`EpisodeRecorder`). Only the next trajectory id when the envs are not
    in this process (``ParallelEnv`` workers, EnvPool, multi-process collectors; ``None`` for
    Ray's, which keep no id here): a run resumed from such a checkpoint starts new episodes.
    """
    next_traj_id = _next_traj_id(collector)
    ids = None if next_traj_id is None else {"next_traj_id": next_traj_id}
    carrier = getattr(collector, "_carrier", None)
    env = getattr(collector, "env", None)
    if carrier is None or not isinstance(env, EnvBase):
        return ids
    recorders = _in_process_recorders(env)
    if recorders is None:
        return ids
    episodes = [r.episode_state() for r in recorders]
    if any(episode is None for episode in episodes):
        return ids
    return {"carrier": carrier.clone(), "episodes": episodes, "next_traj_id": next_traj_id}


def _next_traj_id(collector: BaseCollector) -> int | None:
    """The id the collector gives its next trajectory (our ``GymCollector`` counts them itself,
    TorchRL's ``Collector`` in its private ``_traj_pool``)."""
    if hasattr(collector, "_next_traj_id"):
        return int(collector._next_traj_id)
    pool = getattr(collector, "_traj_pool", None)
    return None if pool is None else int(pool.state_dict()["traj_id"])


def _set_next_traj_id(collector: BaseCollector, value: int) -> None:
    if hasattr(collector, "_next_traj_id"):
        collector._next_traj_id = value
    elif getattr(collector, "_traj_pool", None) is not None:
        collector._traj_pool.load_state_dict({"traj_id": torch.tensor(value, dtype=torch.int)})


def restore_collector_state(collector: BaseCollector, state: dict | None) -> bool:
    """Puts a :func:`collector_state` back; ``False`` when its episodes cannot be continued
    (the envs start new ones; the next trajectory id is restored even then)."""
    if state is None:
        return False
    if state.get("next_traj_id") is not None:
        _set_next_traj_id(collector, state["next_traj_id"])
    if "carrier" not in state or getattr(collector, "_carrier", None) is None:
        return False
    recorders = _in_process_recorders(collector.env)
    if recorders is None or len(recorders) != len(state["episodes"]):
        return False
    if state["carrier"].batch_size != collector._carrier.batch_size:
        return False
    for recorder, episode in zip(recorders, state["episodes"], strict=True):
        recorder.restore_episode(episode)
    collector._carrier = state["carrier"].clone()
    # The next episodes' ids continue the run's: a new collector counts from 0 again, and two
    # episodes of one id in a batch would be one trajectory to the buffer and the sampler.
    if state.get("next_traj_id") is None:  # a checkpoint made before it was saved (set above)
        next_id = int(collector._carrier.get(("collector", "traj_ids")).max()) + 1
        _set_next_traj_id(collector, next_id)
    return True
