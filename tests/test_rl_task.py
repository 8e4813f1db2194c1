"""MDP tasks under the core's Task protocol: which parameters sample which trajectories."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import metaopt
from rl.tabular.mdp import TabularMDP, TabularMDPBatch
from rl.tabular.task import MDPTaskBatch
from rl.task import A2CSettings

H = 4


class FixedAction(nn.Module):
    """A policy that (almost surely) takes one action everywhere, set by its parameter."""

    def __init__(self, action: int, actions: int = 2) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.full((actions,), -50.0))
        with torch.no_grad():
            self.logits[action] = 50.0

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = obs.sum(-1, keepdim=True) * 0
        return zeros + self.logits, zeros[..., 0]


def action_reveals_itself(num_tasks: int = 3) -> TabularMDPBatch:
    """Rewards identify the action: mean 0 for action 0, mean 100 for action 1 (3 states)."""
    transitions = np.full((3, 2, 3), 1 / 3)
    rewards = np.array([[0.0, 100.0]] * 3)
    return TabularMDPBatch.stack([TabularMDP(transitions, rewards)] * num_tasks)


def make_batch(num_tasks: int = 3, seed: int = 0) -> MDPTaskBatch:
    settings = A2CSettings(trajectories=8, horizon=H)
    return MDPTaskBatch(
        action_reveals_itself(num_tasks), settings, torch.Generator().manual_seed(seed)
    )


def used_action(returns: torch.Tensor) -> int:
    return int(returns.mean().item() > 50 * H)


def test_tasks_implement_the_core_protocol() -> None:
    batch = make_batch()
    assert all(isinstance(task, metaopt.Task) for task in batch)
    assert len(batch) == 3 and batch[1].index == 1 and [t.index for t in batch[1:]] == [1, 2]


def test_first_support_calls_share_one_batched_sample() -> None:
    model = FixedAction(1)
    batch = make_batch()
    batch[0].support_loss(model)
    # One vectorised call drew the first-step trajectories of every task.
    assert sorted(batch._presampled) == [1, 2]
    batch[1].support_loss(model)
    assert sorted(batch._presampled) == [2]
    # Same generator seed, one call for all tasks: the shares are exactly that call's slices.
    everything = make_batch().sample(model, "support0")
    for i in (0, 1):
        torch.testing.assert_close(batch[i].support_returns[0], everything.episode_returns()[i])


def test_shares_are_used_only_with_the_parameters_that_drew_them() -> None:
    model = FixedAction(0)
    batch = make_batch()
    batch[0].support_loss(model)
    assert used_action(batch[0].support_returns[0]) == 0
    with torch.no_grad():  # the outer step changed θ before task 1 was used
        model.logits.copy_(FixedAction(1).logits)
    batch[1].support_loss(model)
    assert used_action(batch[1].support_returns[0]) == 1
    # A different module holding equal values may reuse a share (same policy, same distribution).
    clone = FixedAction(1)
    batch[2].support_loss(clone)
    assert used_action(batch[2].support_returns[0]) == 1


def test_later_calls_sample_afresh_with_the_model_given() -> None:
    model = FixedAction(0)
    batch = make_batch()
    task = batch[0]
    task.support_loss(model)
    task.support_loss(model)  # a second inner step: never a reused share
    assert not torch.equal(task.support_returns[0], task.support_returns[1])
    task.query_loss(FixedAction(1))
    assert used_action(task.query_returns[0]) == 1
    assert task.pre_return < 1 and task.post_return > 50 * H


def test_losses_are_differentiable_and_work_without_grad() -> None:
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3))

    def policy(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(obs)
        return out[..., :2], out[..., 2]

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return policy(obs)

    batch = make_batch()
    loss = batch[0].support_loss(Wrapper())
    assert loss.dim() == 0 and loss.requires_grad
    with torch.no_grad():  # Reptile and the core's metrics call the losses without autograd
        assert not batch[0].query_loss(Wrapper()).requires_grad
    # A plain function is a valid policy too (its parameters cannot be compared: no reuse).
    assert batch[1].support_loss(policy).requires_grad


def test_records_start_empty() -> None:
    batch = make_batch()
    assert math.isnan(batch[0].pre_return) and math.isnan(batch[0].post_return)
    assert torch.isnan(batch.pre_returns()).all()


def test_meta_backward_records_pre_and_post_returns() -> None:
    torch.manual_seed(0)
    model = FixedAction(0)
    algo = metaopt.MAML(model, inner_lr=0.1)
    batch = make_batch()
    metrics = algo.meta_backward(batch)
    assert metrics.query.shape == (3,)
    assert torch.isfinite(batch.pre_returns()).all() and torch.isfinite(batch.post_returns()).all()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("trajectories", 0, "trajectories must be an integer >= 1, got 0"),
        ("horizon", 0, "horizon \\(episode length\\) must be an integer >= 1, got 0"),
        ("gamma", 1.5, "gamma must be in \\[0, 1\\], got 1.5"),
        ("gae_lambda", -0.1, "gae_lambda must be in \\[0, 1\\], got -0.1"),
        ("value_coef", float("nan"), "value_coef must be a finite number >= 0, got nan"),
    ],
)
def test_settings_are_validated(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        A2CSettings(**{field: value})


def engine_pair(algo_name: str, seed: int = 0):
    """The same algorithm twice, on identical copies of one policy: loop and vectorised engine."""
    from rl.policy import CategoricalMLPPolicy

    learners = []
    for engine in ("loop", "vmap"):
        torch.manual_seed(seed)
        model = CategoricalMLPPolicy(5, 3, (16,)).double()
        if algo_name == "metasgd":
            learners.append(metaopt.MetaSGD(model, inner_lr=0.3, inner_steps=2, engine=engine))
        elif algo_name == "reptile":
            learners.append(metaopt.Reptile(model, inner_lr=0.3, inner_steps=2, engine=engine))
        else:
            first_order = algo_name == "fomaml"
            learners.append(
                metaopt.MAML(model, 0.3, inner_steps=2, first_order=first_order, engine=engine)
            )
    return learners


def random_batch(seed: int, num_tasks: int = 4) -> MDPTaskBatch:
    from rl.tabular.mdp import sample_mdps

    mdps = sample_mdps(np.random.default_rng(seed), num_tasks, 5, 3)
    settings = A2CSettings(trajectories=6, horizon=5)
    batch = MDPTaskBatch(mdps, settings, torch.Generator().manual_seed(seed))
    batch.tensors = batch.tensors._replace(reward_means=batch.tensors.reward_means.double())
    return batch


@pytest.mark.parametrize("algo_name", ["maml", "fomaml", "metasgd", "reptile"])
def test_loop_and_vectorised_engines_agree(algo_name: str) -> None:
    """Shared per-phase noise: both engines sample the same episodes, so every number agrees."""
    loop, vmap = engine_pair(algo_name)
    batches = [random_batch(3), random_batch(3)]
    results = [algo.meta_backward(batch) for algo, batch in zip((loop, vmap), batches, strict=True)]
    for name in ("support_before", "query", "support_after"):
        torch.testing.assert_close(getattr(results[0], name), getattr(results[1], name))
    for a, b in zip(loop.meta_parameters(), vmap.meta_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    for a, b in zip(*batches, strict=True):
        torch.testing.assert_close(torch.stack(a.support_returns), torch.stack(b.support_returns))
        torch.testing.assert_close(a.query_returns[-1], b.query_returns[-1])


def test_per_task_losses_equal_each_tasks_own_loss() -> None:
    batch = random_batch(5)
    torch.manual_seed(0)
    from rl.policy import CategoricalMLPPolicy

    models = [CategoricalMLPPolicy(5, 3, (16,)).double() for _ in range(4)]

    def forward(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [model(x) for model, x in zip(models, obs, strict=True)]
        return torch.stack([o[0] for o in outputs]), torch.stack([o[1] for o in outputs])

    losses = batch.support_losses(forward, 0)
    assert losses.shape == (4,)
    for i, model in enumerate(models):
        # Same phase noise, one task at a time: the same episodes, the same loss.
        single = batch.sample(model, "support0", i)
        torch.testing.assert_close(single.episode_returns()[0], batch[i].support_returns[0])
        torch.testing.assert_close(batch.loss(model, single), losses[i])


@pytest.mark.parametrize("algo", ["maml", "metasgd", "reptile"])
def test_shards_of_a_batch_give_the_whole_batch_meta_gradient(algo: str) -> None:
    # What torchrun's sharding relies on: every process draws the whole batch and keeps a slice.
    import numpy as np

    from metaopt.training import build_algorithm
    from metaopt.training.config import resolve_config
    from rl.tabular.family import MDPFamily

    family = MDPFamily()
    config = resolve_config(family, {"algo": algo, "meta_batch": 5})

    def fresh() -> tuple:
        torch.manual_seed(0)
        learner = build_algorithm(config, family.make_model(config))
        return learner, family.sample_tasks(config, np.random.default_rng(3), 5)

    whole, batch = fresh()
    whole.meta_backward(batch)
    sharded, batch = fresh()
    for part in (slice(0, 3), slice(3, 5)):
        sharded.meta_backward(batch.select(part), scale=1 / 5)
    for p, q in zip(whole.meta_parameters(), sharded.meta_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7)
