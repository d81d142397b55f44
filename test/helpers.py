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


def sgd_optimizers(loss, lr: float = 1e-2) -> dict:
    """``make_optimizers``' parameter groups, stepped by plain SGD.

    For comparing two computations of one update: SGD moves a parameter in proportion to its
    gradient, so rounding noise stays noise. Adam divides by the gradient's running scale, so
    noise in a gradient that is analytically zero (the bias of a Linear before a Batch
    Renormalization) moves that parameter by about ``lr`` either way, and the critic's step
    within an update changes the actor loss computed after it by about as much.
    """
    from torchrl_crossq import make_optimizers

    return {
        name: torch.optim.SGD(optimizer.param_groups[0]["params"], lr=lr)
        for name, optimizer in make_optimizers(loss).items()
    }


def compare_updaters_state_by_state(reference, other, batches: list, **tolerance) -> None:
    """``other`` computes ``reference``'s update: same metrics, parameters and statistics.

    Before each update, ``other`` takes ``reference``'s whole state (networks, optimisers,
    counters); both then update on the same batch from the same seed, so that differences
    cannot pile up over updates. Give both ``sgd_optimizers`` (its docstring says why), and
    set ``torch._inductor.config.fallback_random`` when ``other`` is compiled, so that both
    draw the same numbers. Used by the CPU test of ``compile`` and the CUDA tests of
    ``compile`` and ``cudagraphs``.
    """
    for step, batch in enumerate(batches):
        other.loss.load_state_dict(reference.loss.state_dict())
        other.load_state_dict(reference.state_dict())
        torch.manual_seed(100 + step)
        got = {k: v.clone() for k, v in other(batch).items()}
        torch.manual_seed(100 + step)
        expected = reference(batch)
        assert got.keys() == expected.keys(), step
        for key in got:
            msg = f"{key} at update {step}"
            torch.testing.assert_close(got[key], expected[key], msg=msg, **tolerance)
        # The parameters after the steps (so the gradients too) and the running statistics
        # and step counters that the loss computations update in place.
        theirs = reference.loss.state_dict()
        for name, value in other.loss.state_dict().items():
            msg = f"{name} after update {step}"
            torch.testing.assert_close(value, theirs[name], msg=msg, **tolerance)
