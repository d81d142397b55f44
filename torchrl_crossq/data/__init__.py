"""Data components: the replay buffer with a sliding window over the newest trajectories."""

from torchrl_crossq.data.replay import WindowReplayBuffer, make_replay_buffer
from torchrl_crossq.data.sampler import WINDOW_UNITS, SlidingWindowSampler
from torchrl_crossq.data.storage import CachedStorage, TransitionStorage

__all__ = [
    "WINDOW_UNITS",
    "CachedStorage",
    "SlidingWindowSampler",
    "TransitionStorage",
    "WindowReplayBuffer",
    "make_replay_buffer",
]
