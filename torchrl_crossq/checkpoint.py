"""Checkpoints: atomic writes, the last K kept, corrupted files detected."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

_NAME = re.compile(r"^ckpt_(\d{12})$")


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
        torch.cuda.set_rng_state_all(state["cuda"])


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
    never half of one. ``state`` goes to ``state.pt``; the replay buffer (a
    TorchRL buffer) is dumped to ``replay/``.
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
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name) and (p / "COMPLETE").exists()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


class CheckpointError(RuntimeError):
    """A run has checkpoints, and none of them can be loaded."""


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
