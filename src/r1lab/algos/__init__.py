"""The math of RL for reasoning: pure tensor functions, registered by name.

The trainer never branches on an algorithm's name; it looks the pieces up here:
`ADVANTAGES[cfg.algo.advantage]`, `POLICY_LOSSES[cfg.algo.policy_loss]`, `KL_ESTIMATORS[...]`,
and `aggregate(...)` with an explicit mode. The DPO stage looks up `PREFERENCE_LOSSES[cfg.dpo.loss]`.
"""

from r1lab.algos.advantages import ADVANTAGES, get_advantage, register_advantage
from r1lab.algos.corrections import CORRECTIONS, get_correction, register_correction
from r1lab.algos.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    aggregate,
    get_kl_estimator,
    get_policy_loss,
    register_kl_estimator,
    register_policy_loss,
)
from r1lab.algos.preference import PREFERENCE_LOSSES, get_preference_loss, register_preference_loss

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "CORRECTIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "PREFERENCE_LOSSES",
    "aggregate",
    "get_advantage",
    "get_correction",
    "get_kl_estimator",
    "get_policy_loss",
    "get_preference_loss",
    "register_advantage",
    "register_correction",
    "register_kl_estimator",
    "register_policy_loss",
    "register_preference_loss",
]
