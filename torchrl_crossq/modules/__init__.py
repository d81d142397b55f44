from torchrl_crossq.modules.batchrenorm import BatchRenorm1d
from torchrl_crossq.modules.networks import (
    EnsembleLinear,
    ExpandedCritic,
    GaussianParams,
    QEnsemble,
    make_actor,
    make_critic,
    set_training_mode,
)

__all__ = [
    "BatchRenorm1d",
    "EnsembleLinear",
    "ExpandedCritic",
    "GaussianParams",
    "QEnsemble",
    "make_actor",
    "make_critic",
    "set_training_mode",
]
