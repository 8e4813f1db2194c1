"""Algorithms as rules: what each one does, written once for every engine (`metaopt.rules.base`).

[`MetaLearner`][metaopt.MetaLearner] binds a rule to a model and an engine; MAML, Meta-SGD, Reptile
and iMAML are rules with a learner class around each that keeps their constructors.
"""

from metaopt.rules.base import OUTER_RULES, Rule, difference, weighted_query_loss
from metaopt.rules.imaml import IMAMLRule
from metaopt.rules.maml import MAMLRule, MetaSGDRule, NegativeRateWarning
from metaopt.rules.reptile import ReptileRule

__all__ = [
    "OUTER_RULES",
    "IMAMLRule",
    "MAMLRule",
    "MetaSGDRule",
    "NegativeRateWarning",
    "ReptileRule",
    "Rule",
    "difference",
    "weighted_query_loss",
]
