"""CrossQ (Bhatt et al., ICLR 2024) as composable TorchRL components."""

from torchrl_crossq.modules import (
    BatchRenorm1d,
    ExpandedCritic,
    make_actor,
    make_critic,
    set_training_mode,
)
from torchrl_crossq.objectives import (
    OPTIMISED_LOSSES,
    CrossQLoss,
    CrossQUpdater,
    NonFiniteLossError,
    PeriodicSoftUpdate,
    Temperature,
    has_native_bf16_matmul,
    make_optimizers,
)

__all__ = [
    "OPTIMISED_LOSSES",
    "BatchRenorm1d",
    "CrossQLoss",
    "CrossQUpdater",
    "ExpandedCritic",
    "NonFiniteLossError",
    "PeriodicSoftUpdate",
    "Temperature",
    "has_native_bf16_matmul",
    "make_actor",
    "make_critic",
    "make_optimizers",
    "set_training_mode",
]
