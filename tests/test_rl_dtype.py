"""RL task batches follow the policy's dtype (issue 27): a float64 policy's meta-gradient runs on
the batches the families build (float32 tasks and noise) and agrees with the float32 policy's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metaopt
from rl.continuous import GaussianMLPPolicy
from rl.nav2d.task import Nav2DTaskBatch
from rl.policy import CategoricalMLPPolicy
from rl.tabular.mdp import sample_mdps
from rl.tabular.task import MDPTaskBatch
from rl.task import A2CSettings

GOALS = np.array([[0.3, -0.2], [-0.05, 0.04], [0.4, 0.4]])


def meta_gradient(family: str, dtype: torch.dtype, engine: str, estimator: str) -> torch.Tensor:
    """MAML's meta-gradient (2 inner steps) of a policy cast to ``dtype``, on a batch built as
    the family builds it (its tensors in float32)."""
    torch.manual_seed(0)
    if family == "mdp":
        policy: torch.nn.Module = CategoricalMLPPolicy(5, 3, (16,))
        settings = A2CSettings(trajectories=6, horizon=5, meta_gradient=estimator)
        mdps = sample_mdps(np.random.default_rng(3), 4, 5, 3)
        batch = MDPTaskBatch(mdps, settings, torch.Generator().manual_seed(3))
    else:
        policy = GaussianMLPPolicy(2, 2, (8,))
        settings = A2CSettings(trajectories=3, horizon=8, meta_gradient=estimator)
        batch = Nav2DTaskBatch(GOALS, settings, torch.Generator().manual_seed(0), baseline="linear")
    policy = policy.to(dtype)
    metaopt.MAML(policy, 0.3, inner_steps=2, engine=engine).meta_backward(batch)
    grads = [p.grad for p in policy.parameters()]
    assert all(g is not None and g.dtype == dtype for g in grads)
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("family", ["mdp", "nav2d"])
@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("estimator", ["seed", "dice"])
def test_a_float64_policy_has_the_float32_meta_gradient(
    family: str, engine: str, estimator: str
) -> None:
    single = meta_gradient(family, torch.float32, engine, estimator)
    double = meta_gradient(family, torch.float64, engine, estimator)
    assert single.abs().sum() > 0
    torch.testing.assert_close(double.float(), single, rtol=1e-4, atol=1e-5 * single.abs().max())
