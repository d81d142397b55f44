from torchrl_crossq.objectives.crossq import CrossQLoss, squashed_log_prob
from torchrl_crossq.objectives.entropy import Temperature
from torchrl_crossq.objectives.update import (
    OPTIMISED_LOSSES,
    CrossQUpdater,
    NonFiniteLossError,
    PeriodicSoftUpdate,
    has_native_bf16_matmul,
    make_optimizers,
)

__all__ = [
    "OPTIMISED_LOSSES",
    "CrossQLoss",
    "CrossQUpdater",
    "NonFiniteLossError",
    "PeriodicSoftUpdate",
    "Temperature",
    "has_native_bf16_matmul",
    "make_optimizers",
    "squashed_log_prob",
]
