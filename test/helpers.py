"""Shared test data builders."""

import torch
from tensordict import TensorDict

OBS_DIM, ACTION_DIM = 3, 2


def make_batch(batch_size: int = 8, seed: int = 0, terminated_every: int = 3) -> TensorDict:
    """A replay-buffer-like batch of transitions with some terminations."""
    g = torch.Generator().manual_seed(seed)
    terminated = (torch.arange(batch_size) % terminated_every == 0).unsqueeze(-1)
    return TensorDict(
        {
            "observation": torch.randn(batch_size, OBS_DIM, generator=g),
            "action": torch.rand(batch_size, ACTION_DIM, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(batch_size, OBS_DIM, generator=g),
                "reward": torch.randn(batch_size, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [batch_size],
    )
