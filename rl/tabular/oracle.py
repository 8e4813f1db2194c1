r"""Exact returns and exact meta-objectives on tabular MDPs: the truth meta-gradients are checked against.

* `expected_return`: J(θ), the expected undiscounted return of a policy over ``horizon``
  steps from state 0, in closed form: the state distribution is propagated step by step,
  ``d₀ = e₀``, ``d_{t+1}(s') = Σ_{s,a} d_t(s) π(a|s) P(s'|s,a)``, and
  ``J = Σ_t Σ_{s,a} d_t(s) π(a|s) R(s,a)``. Differentiable, float64.
* `exact_meta_objective`: on a tiny MDP with deterministic rewards, every support data set
  the inner loop can see is enumerated, so that
  ``M(θ) = Σ_τ p_θ(τ) · J(U(θ, τ))`` is an exact finite sum, where U is the algorithm's own inner
  update (its ``adapt``: the task's A2C loss and the inner optimiser as configured, one or more
  steps, each step on fresh episodes of the policy it has reached). Its gradient by autograd is
  the meta-gradient that an unbiased estimator must match on average.
* `expected_gradient_objective`: ``J(θ + α∇J(θ))``, the meta-objective with the exact
  policy gradient as the inner step (ProMP's formulation I), at any size.

Convention shared with the estimators (`rl.estimators`): the advantage weights inside an A2C
loss are constants of that loss (its critic values are not differentiated), so U's Jacobian is the
one autograd gives through the inner loop, as in every A2C meta-RL implementation.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from rl.estimators import log_likelihood
from rl.sampling import PolicyFn, check_horizon
from rl.tabular.mdp import TabularMDP
from rl.tabular.sampler import Trajectories, policy_table
from rl.tabular.task import MDPTaskBatch
from rl.task import A2CSettings

__all__ = [
    "enumerate_episodes",
    "exact_meta_gradient",
    "exact_meta_objective",
    "expected_gradient_objective",
    "expected_return",
    "expected_return_of_table",
]

#: The largest number of support data sets `exact_meta_objective` enumerates.
MAX_DATA_SETS = 100_000


def expected_return_of_table(
    probabilities: torch.Tensor, mdp: TabularMDP, horizon: int
) -> torch.Tensor:
    """J of a policy given as action probabilities ``[S, A]`` (stationary) or ``[H, S, A]``
    (one table per step, e.g. the optimal policy of a known task), in float64."""
    horizon = check_horizon(horizon)
    transitions = torch.as_tensor(mdp.transitions, dtype=torch.float64)
    rewards = torch.as_tensor(mdp.reward_means, dtype=torch.float64)
    pi = probabilities.to(torch.float64)
    if pi.dim() == 2:
        pi = pi.expand(horizon, *pi.shape)
    if pi.shape != (horizon, mdp.num_states, mdp.num_actions):
        raise ValueError(
            f"probabilities must be [S, A] or [horizon, S, A] = "
            f"{[horizon, mdp.num_states, mdp.num_actions]}, got {list(probabilities.shape)}"
        )
    state = torch.zeros(mdp.num_states, dtype=torch.float64)
    state[0] = 1.0
    total = torch.zeros((), dtype=torch.float64)
    for t in range(horizon):
        joint = state[:, None] * pi[t]  # [S, A]: P(s_t = s, a_t = a)
        total = total + (joint * rewards).sum()
        state = torch.einsum("sa,sap->p", joint, transitions)
    return total


def expected_return(policy: PolicyFn, mdp: TabularMDP, horizon: int) -> torch.Tensor:
    """J(θ) of ``policy`` (observations ``[..., S]`` -> ``(logits [..., A], values)``)."""
    dtype = next(iter(policy.parameters())).dtype if isinstance(policy, nn.Module) else None
    logits, _ = policy_table(policy, 1, mdp.num_states, dtype or torch.float64)
    return expected_return_of_table(torch.softmax(logits[0].double(), dim=-1), mdp, horizon)


def enumerate_episodes(mdp: TabularMDP, horizon: int) -> Iterator[tuple[list[int], list[int]]]:
    """Every (states, actions) episode of ``horizon`` steps from state 0 that the dynamics allow:
    ``states`` has ``horizon + 1`` entries (the last is the state at the horizon)."""
    horizon = check_horizon(horizon)
    s, a = mdp.num_states, mdp.num_actions
    for choices in itertools.product(range(a * s), repeat=horizon):
        states, actions = [0], []
        for choice in choices:
            action, following = divmod(choice, s)
            if mdp.transitions[states[-1], action, following] == 0:
                break
            actions.append(action)
            states.append(following)
        else:
            yield states, actions


def _data_sets(mdp: TabularMDP, settings: A2CSettings) -> list[tuple[Trajectories, float]]:
    """Every support sample of ``settings.trajectories`` episodes, as ``[H, 1, N]`` tensors, with
    the probability of its transitions (the policy's factor is computed where it is used)."""
    episodes = list(enumerate_episodes(mdp, settings.horizon))
    count = len(episodes) ** settings.trajectories
    if count > MAX_DATA_SETS:
        raise ValueError(
            f"{count} support data sets ({len(episodes)} episodes, {settings.trajectories} per "
            f"sample) is too many to enumerate (at most {MAX_DATA_SETS}): use a smaller MDP, "
            "horizon or number of trajectories"
        )
    rewards = torch.as_tensor(mdp.reward_means, dtype=torch.float64)
    sets = []
    dynamics = [
        float(
            np.prod(
                [mdp.transitions[s, a, n] for s, a, n in zip(e[0], e[1], e[0][1:], strict=False)]
            )
        )
        for e in episodes
    ]
    for chosen, weights in zip(
        itertools.product(episodes, repeat=settings.trajectories),
        itertools.product(dynamics, repeat=settings.trajectories),
        strict=True,
    ):
        states = torch.tensor([e[0] for e in chosen]).T  # [H + 1, N]
        actions = torch.tensor([e[1] for e in chosen]).T  # [H, N]
        trajectories = Trajectories(
            states=states[:-1, None],
            actions=actions[:, None],
            rewards=rewards[states[:-1], actions][:, None],
            next_states=states[1:, None],
        )
        sets.append((trajectories, float(np.prod(weights))))
    return sets


class _ReplayTask:
    """A task whose k-th support loss is the settings' loss of the k-th given data set; records
    log p_{θₖ}(data_k) with its graph at the parameters that would have sampled it."""

    def __init__(self, batch: MDPTaskBatch, data: Sequence[Trajectories]) -> None:
        self.batch, self.data = batch, data
        self.log_likelihoods: list[torch.Tensor] = []

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        trajectories = self.data[len(self.log_likelihoods)]
        self.log_likelihoods.append(log_likelihood(model, trajectories, self.batch.scorer)[0])
        return self.batch.support_objective(model, trajectories)

    def query_loss(self, model: nn.Module) -> torch.Tensor:  # pragma: no cover - not used
        raise NotImplementedError


def exact_meta_objective(algo: MetaLearner, mdp: TabularMDP, settings: A2CSettings) -> torch.Tensor:
    """M(θ) = E over the support samples of J(θ after ``algo.inner_steps`` inner steps), exactly.

    Each inner step k uses ``settings.trajectories`` fresh episodes of the policy θₖ it has reached,
    scored by the settings' support loss (``settings.meta_gradient`` picks the MAML-RL example's or
    LVC's form: the same values and first derivatives); the sum runs over every sequence of such
    samples, weighted by its probability under the policies that draw it. Rewards must be
    deterministic (``settings.reward_noise == 0``). Differentiable in the algorithm's
    meta-parameters; second order through the inner steps unless ``algo.first_order``.
    """
    if settings.reward_noise != 0:
        raise ValueError(
            "the exact meta-objective enumerates support data, so rewards must be deterministic: "
            f"settings.reward_noise must be 0, got {settings.reward_noise!r}"
        )
    from rl.tabular.mdp import TabularMDPBatch

    batch = MDPTaskBatch(
        TabularMDPBatch(mdp.transitions[None], mdp.reward_means[None]),
        settings,
        torch.Generator().manual_seed(0),
    )
    sets = _data_sets(mdp, settings)
    steps = algo.inner_steps
    if len(sets) ** steps > MAX_DATA_SETS:
        raise ValueError(
            f"{len(sets)} support samples per step over {steps} steps is too many sequences to "
            f"enumerate (at most {MAX_DATA_SETS})"
        )
    create_graph = not getattr(algo, "first_order", True)
    total = torch.zeros((), dtype=torch.float64)
    for sequence in itertools.product(sets, repeat=steps):
        task = _ReplayTask(batch, [data for data, _ in sequence])
        with algo.adapt(task, create_graph=create_graph) as adapted:
            value = expected_return(adapted, mdp, settings.horizon)
        policy_factor = torch.exp(torch.stack(task.log_likelihoods).sum().double())
        total = total + float(np.prod([p for _, p in sequence])) * policy_factor * value
    return total


def exact_meta_gradient(
    algo: MetaLearner, mdp: TabularMDP, settings: A2CSettings
) -> list[torch.Tensor]:
    """∇M for each of ``algo.meta_parameters()`` (zeros where M does not depend on it)."""
    params = algo.meta_parameters()
    objective = exact_meta_objective(algo, mdp, settings)
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def expected_gradient_objective(
    model: nn.Module, mdp: TabularMDP, horizon: int, lr: float
) -> torch.Tensor:
    """``J(θ + lr · ∇J(θ))`` with the exact policy gradient: differentiable in θ at any size."""
    params = dict(model.named_parameters())

    def policy(values: dict[str, Any]) -> PolicyFn:
        return lambda obs: torch.func.functional_call(model, values, (obs,))

    start = expected_return(policy(params), mdp, horizon)
    names = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(
        start, [params[n] for n in names], create_graph=True, allow_unused=True
    )
    adapted = dict(params)
    for name, grad in zip(names, grads, strict=True):
        if grad is not None:
            adapted[name] = params[name] + lr * grad
    return expected_return(policy(adapted), mdp, horizon)


def tiny_mdp(seed: int = 0, num_states: int = 2, num_actions: int = 2) -> TabularMDP:
    """A small MDP with deterministic rewards for exact checks: Dirichlet(1) transitions, and
    reward means from {0, 1, 2}."""
    rng = np.random.default_rng(seed)
    transitions = rng.dirichlet(np.ones(num_states), size=(num_states, num_actions))
    rewards = rng.integers(0, 3, size=(num_states, num_actions)).astype(np.float64)
    return TabularMDP(transitions, rewards)
