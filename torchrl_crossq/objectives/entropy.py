"""Temperature (entropy coefficient) parametrisations for SAC-style losses."""

from __future__ import annotations

import math

import torch
from torch import nn

ALPHA_TYPES = ("exp", "softplus", "fixed_alpha")


class Temperature(nn.Module):
    """The entropy coefficient ``alpha`` of maximum-entropy RL.

    Three parametrisations (the embodied-RL config's ``entropy_tuning.alpha_type``):

    - ``"exp"``: ``alpha = exp(p)``, ``p0 = log(initial_alpha)`` (SAC, CrossQ paper).
    - ``"softplus"``: ``alpha = softplus(p)``, ``p0 = log(exp(initial_alpha) - 1)``.
    - ``"fixed_alpha"``: ``alpha`` is a buffer: never trained, saved in checkpoints.

    ``loss(log_prob, target_entropy)`` is ``-alpha * (log_prob + target_entropy)``
    with the gradient flowing through ``alpha`` itself (``log_prob`` detached),
    so ``alpha`` grows when the policy's entropy is below the target.

    Args:
        alpha_type: one of ``"exp"``, ``"softplus"``, ``"fixed_alpha"``.
        initial_alpha: the starting value of ``alpha`` (> 0; paper: 1.0).

    Examples:
        >>> t = Temperature("softplus", initial_alpha=0.01)
        >>> round(float(t().detach()), 6)
        0.01
        >>> t.loss(torch.tensor([-1.0, -3.0]), target_entropy=-4.0).shape
        torch.Size([2])
    """

    def __init__(self, alpha_type: str = "exp", initial_alpha: float = 1.0) -> None:
        super().__init__()
        if alpha_type not in ALPHA_TYPES:
            raise ValueError(
                f"alpha_type={alpha_type!r} is not supported; use one of: {', '.join(ALPHA_TYPES)}"
            )
        if not (initial_alpha > 0 and math.isfinite(initial_alpha)):
            raise ValueError(f"initial_alpha={initial_alpha} must be a positive finite number")
        self.alpha_type = alpha_type
        if alpha_type == "exp":
            self.log_alpha = nn.Parameter(torch.tensor(math.log(initial_alpha)))
        elif alpha_type == "softplus":
            # Inverse softplus, stable for large initial_alpha.
            raw = initial_alpha + math.log(-math.expm1(-initial_alpha))
            self.alpha_param = nn.Parameter(torch.tensor(raw))
        else:
            self.register_buffer("fixed_alpha", torch.tensor(float(initial_alpha)))

    @property
    def trainable(self) -> bool:
        """Whether ``alpha`` has a parameter an optimiser can step."""
        return self.alpha_type != "fixed_alpha"

    def forward(self) -> torch.Tensor:
        if self.alpha_type == "exp":
            return self.log_alpha.exp()
        if self.alpha_type == "softplus":
            return nn.functional.softplus(self.alpha_param)
        return self.fixed_alpha

    def loss(self, log_prob: torch.Tensor, target_entropy: torch.Tensor | float) -> torch.Tensor:
        """Per-sample temperature loss ``-alpha * (log_prob + target_entropy)``."""
        return -self() * (log_prob.detach() + target_entropy)

    def extra_repr(self) -> str:
        return f"alpha_type={self.alpha_type!r}"
