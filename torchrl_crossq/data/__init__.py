"""Data components: the replay buffer with a sliding window over the newest trajectories."""

from torchrl_crossq.data.replay import (
    WINDOW_UNITS,
    CachedStorage,
    SlidingWindowSampler,
    WindowReplayBuffer,
    make_replay_buffer,
)

__all__ = [
    "WINDOW_UNITS",
    "CachedStorage",
    "SlidingWindowSampler",
    "WindowReplayBuffer",
    "make_replay_buffer",
]
