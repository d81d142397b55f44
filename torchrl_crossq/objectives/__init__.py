from torchrl_crossq.objectives.crossq import CrossQLoss, squashed_log_prob
from torchrl_crossq.objectives.entropy import Temperature
from torchrl_crossq.objectives.update import (
    OPTIMISED_LOSSES,
    CrossQUpdater,
    NonFiniteLossError,
    PeriodicSoftUpdate,
    make_optimizers,
)

__all__ = [
    "OPTIMISED_LOSSES",
    "CrossQLoss",
    "CrossQUpdater",
    "NonFiniteLossError",
    "PeriodicSoftUpdate",
    "Temperature",
    "make_optimizers",
    "squashed_log_prob",
]
