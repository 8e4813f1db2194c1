"""Meta-gradient estimators against the exact meta-gradient: the part of ``metaopt compare mdp``
that measures against the truth rather than against second-order MAML.

On a tiny MDP where the meta-objective M(θ) = E_τ[J(U(θ, τ))] can be enumerated
(`rl.tabular.oracle.exact_meta_objective`), every algorithm × estimator runs its meta-gradient on
``batches`` independent meta-batches of ``copies`` copies of the MDP, each copy an independent
sample of the estimator. Reported per row, over the policy's parameters (the critic's get the
value regression, an auxiliary objective with no counterpart in ∇M):

* ``cosine`` and ``relative_error`` ‖ĝ − ∇M‖ / ‖∇M‖ of the estimator's mean ĝ, and ``noise``,
  the norm of its standard error relative to ‖∇M‖ (a relative error near it is noise);
* ``max_abs_z``: the largest |ĝᵢ − ∇Mᵢ| / standard error over the coordinates, which separates a
  bias from the Monte-Carlo noise of the mean (an unbiased estimator stays within about 3.5);
* ``variance``: the per-sample variance of the estimator, summed over the coordinates
  (copies × the variance of the batch means), in units of ‖∇M‖².

Second-order and first-order MAML are measured against the same truth, ∇M of the SGD inner step;
Meta-SGD against ∇M of its own update, its learned rates included. Reptile's update does not use
the query loss, so no estimator applies to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

import metaopt
from metaopt.algorithms import MetaLearner
from rl.estimators import ESTIMATORS
from rl.policy import CategoricalMLPPolicy
from rl.tabular.mdp import TabularMDP, TabularMDPBatch
from rl.tabular.oracle import exact_meta_gradient, tiny_mdp
from rl.tabular.sampler import MDPTensors
from rl.tabular.task import MDPTaskBatch
from rl.task import A2CSettings

__all__ = [
    "SETTING",
    "compare_with_truth",
    "estimator_samples",
    "exact_policy_gradient",
    "policy_part",
]

#: The configuration where the meta-objective is enumerable: 2 states, 2 actions, horizon 2, one
#: support episode per inner step, reward means in {0, 1, 2} without noise, a tabular policy.
SETTING = {"num_states": 2, "num_actions": 2, "horizon": 2, "trajectories": 1, "mdp_seed": 3}
METHODS = ("maml", "fomaml", "metasgd")


def _policy(seed: int) -> CategoricalMLPPolicy:
    torch.manual_seed(seed)
    model = CategoricalMLPPolicy(SETTING["num_states"], SETTING["num_actions"], hidden_sizes=())
    model = model.double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def _algorithm(method: str, lr: float, steps: int, seed: int) -> MetaLearner:
    model = _policy(seed)
    if method == "metasgd":
        return metaopt.MetaSGD(model, inner_lr=lr, inner_steps=steps)
    return metaopt.MAML(model, inner_lr=lr, inner_steps=steps, first_order=method == "fomaml")


def _settings(estimator: str) -> A2CSettings:
    return A2CSettings(
        trajectories=SETTING["trajectories"],
        horizon=SETTING["horizon"],
        reward_noise=0.0,
        meta_gradient=estimator,
    )


def policy_part(algo: MetaLearner) -> list[torch.Tensor]:
    """The meta-parameters of a `CategoricalMLPPolicy`'s policy head, and
    Meta-SGD's rates for them: where an estimator is compared with ∇M (the critic's parameters
    get the value regression, an auxiliary objective)."""
    model = algo.model
    assert isinstance(model, CategoricalMLPPolicy)
    head = list(model.policy_head.parameters())
    rates = algo.rate_parameters()
    if rates:
        index = {id(p): i for i, p in enumerate(model.parameters())}
        return head + [rates[index[id(p)]] for p in head]
    return head


def exact_policy_gradient(
    algo: MetaLearner, mdp: TabularMDP, settings: A2CSettings
) -> torch.Tensor:
    """∇M over `policy_part`, flat (`rl.tabular.oracle.exact_meta_gradient`)."""
    grads = dict(
        zip(
            map(id, algo.meta_parameters()),
            exact_meta_gradient(algo, mdp, settings),
            strict=True,
        )
    )
    return torch.cat([grads[id(p)].flatten() for p in policy_part(algo)])


def estimator_samples(
    make: Callable[[], MetaLearner],
    mdp: TabularMDP,
    settings: A2CSettings,
    batches: int,
    copies: int,
    seed: int,
) -> torch.Tensor:
    """``[batches, P]``: each row the mean estimate of ∇M over `policy_part` on a meta-batch
    of ``copies`` copies of ``mdp`` (sampling generator seeded ``seed + row``), from a fresh
    ``make()``. The losses are per step, so ``−H · meta-gradient`` estimates ∇M."""
    repeated = TabularMDPBatch(
        np.repeat(mdp.transitions[None], copies, 0), np.repeat(mdp.reward_means[None], copies, 0)
    )
    means = []
    for k in range(batches):
        algo = make()
        batch = MDPTaskBatch(repeated, settings, torch.Generator().manual_seed(seed + k))
        batch.tensors = MDPTensors.from_mdps(repeated, dtype=torch.float64)
        algo.meta_backward(batch)
        means.append(torch.cat([-settings.horizon * p.grad.flatten() for p in policy_part(algo)]))
    return torch.stack(means)


def compare_with_truth(
    inner_lr: float,
    inner_steps: int,
    methods: Sequence[str] = METHODS,
    *,
    batches: int = 20,
    copies: int = 2000,
    seed: int = 1,
    progress: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Every method × estimator's mean meta-gradient against the exact one (see the module)."""
    if batches < 2:
        raise ValueError(f"batches must be at least 2 (for a standard error), got {batches}")
    mdp = tiny_mdp(SETTING["mdp_seed"], SETTING["num_states"], SETTING["num_actions"])
    rows = []
    for method in [m for m in METHODS if m in methods]:

        def make(method: str = method) -> MetaLearner:
            return _algorithm(method, inner_lr, inner_steps, seed)

        reference = make()
        if getattr(reference, "first_order", False):  # the truth: the second-order objective's
            reference = metaopt.MAML(reference.model, inner_lr=inner_lr, inner_steps=inner_steps)
        truth = exact_policy_gradient(reference, mdp, _settings("seed"))
        scale = float(truth.norm())
        for estimator in ESTIMATORS:
            samples = estimator_samples(make, mdp, _settings(estimator), batches, copies, 0x7C0DE)
            mean = samples.mean(0)
            error = samples.std(0) / math.sqrt(batches)
            z = ((mean - truth) / error.clamp_min(1e-300)).abs()
            rows.append(
                {
                    "method": method,
                    "estimator": estimator,
                    "cosine": float(mean @ truth / (mean.norm() * truth.norm())),
                    "relative_error": float((mean - truth).norm()) / scale,
                    "noise": float(error.norm()) / scale,
                    "max_abs_z": float(z.max()),
                    "variance": float(samples.var(0).sum()) * copies / scale**2,
                }
            )
            if progress is not None:
                progress()
    return {
        "setting": {
            **SETTING,
            "inner_lr": inner_lr,
            "inner_steps": inner_steps,
            "batches": batches,
            "copies": copies,
            "samples": batches * copies,
        },
        "rows": rows,
        "not_applicable": {"reptile": "Reptile's update does not use the query loss"},
    }
