r"""Continuous actions: a Gaussian policy, a vectorised sampler and the scoring the losses use.

Any family whose actions are real vectors reuses three pieces:

* `GaussianMLPPolicy`: observation -> (mean, log-standard-deviation, value), with a
  learned log-standard-deviation that does not depend on the state (Finn et al. 2017's RL
  policies; Schulman et al. 2015's TRPO);
* `rollout`: every (task, episode) pair stepped at once through a family's
  `Dynamics`, with all randomness drawn up front (`GaussianNoise`), so a sample is
  a deterministic function of policy, tasks and noise, and task b's episodes depend only on its
  slice of the noise (the loop and vectorised engines sample the same episodes);
* `GaussianScorer`: the policy re-evaluated with autograd on the visited observations,
  giving the losses of `rl.estimators` the log-density of the actions taken,

$$
\log\pi(a\mid s) = \sum_i \Big[-\frac{(a_i-\mu_i(s))^2}{2\sigma_i^2}
- \log\sigma_i - \tfrac12\log 2\pi\Big],
$$

instead of a categorical log-probability, and the entropy $\sum_i \log\sigma_i +
\tfrac12\log 2\pi e$. Episodes may end before the horizon (a terminal step): the steps after it
are masked out of every mean, and the λ-returns' discount is 0 on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, Protocol

import torch
from torch import nn

from rl.config import BASELINES
from rl.estimators import Scores, scored_a2c_loss
from rl.losses import lambda_returns
from rl.policy import torsos
from rl.sampling import check_horizon, check_size, episode_returns, task_of

__all__ = [
    "ContinuousTrajectories",
    "Dynamics",
    "GaussianMLPPolicy",
    "GaussianNoise",
    "GaussianPolicyFn",
    "GaussianScorer",
    "gaussian_kl",
    "linear_feature_baseline",
    "rollout",
    "with_time",
]

#: Observations [..., D] -> (action means [..., A], log-standard-deviations [..., A], values [...]).
GaussianPolicyFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
#: Scale of the initial weights of `GaussianMLPPolicy`'s mean head.
MEAN_HEAD_GAIN = 0.01


class GaussianMLPPolicy(nn.Module):
    """Observation -> (action mean, log-std, state value): MLPs, a learned log-std.

    The action is drawn from N(μ(s), diag(σ²)) with log σ a parameter vector (state-independent,
    as in MAML's RL experiments). The critic has its own torso of the same widths unless
    ``shared_torso``. Works on any leading dimensions: ``[..., D] -> ([..., A], [..., A], [...])``.

    Args:
        obs_dim: D.
        action_dim: A.
        hidden_sizes: Hidden-layer widths (MAML's: two of 100).
        init_log_std: Initial log σ of every action dimension.
        shared_torso: One torso for the policy and the value heads.
        critic_time: The critic also sees the time: the observations handed in have one more
            column, the fraction of the episode elapsed (``time_feature`` of `rollout`
            and `GaussianScorer`), which the action mean ignores. Needs its own critic
            torso.
        activation: The torsos' hidden activation (`rl.policy.ACTIVATIONS`).
    """

    #: What ``--adapt anil`` adapts (`metaopt.algorithms.subset.anil_heads`): the last layer of
    #: the policy and of the critic; the torsos and log σ are meta-learned, not adapted.
    anil_heads: ClassVar[tuple[str, ...]] = ("mean_head", "value_head")

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (100, 100),
        init_log_std: float = 0.0,
        shared_torso: bool = False,
        critic_time: bool = False,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if critic_time and shared_torso:
            raise ValueError("critic_time needs the critic's own torso (shared_torso=False)")
        self.critic_time = critic_time
        self.torso, _, width = torsos(obs_dim, hidden_sizes, True, activation)
        self.value_torso = (
            None
            if shared_torso
            else torsos(obs_dim + critic_time, hidden_sizes, True, activation)[0]
        )
        self.mean_head = nn.Linear(width, action_dim)
        # A near-zero initial mean (weights scaled by MEAN_HEAD_GAIN, bias 0; the policy-head
        # initialisation of PPO implementations): with PyTorch's default initialisation the mean is
        # a random constant drift of order 0.1, which with a small σ walks every episode off the
        # plane (returns of −600 in 2-D navigation) before the gradient can turn it round.
        with torch.no_grad():
            self.mean_head.weight.mul_(MEAN_HEAD_GAIN)
            self.mean_head.bias.zero_()
        self.value_head = nn.Linear(width, 1)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        obs = obs.to(self.mean_head.weight.dtype)  # the sampler follows the policy's dtype
        observed = obs[..., :-1] if self.critic_time else obs
        features = self.torso(observed)
        critic = features if self.value_torso is None else self.value_torso(obs)
        mean = self.mean_head(features)
        return mean, self.log_std.expand_as(mean), self.value_head(critic).squeeze(-1)


class Dynamics(Protocol):
    """A batch of T tasks' deterministic dynamics, stepped for N episodes each at once."""

    def reset(self, num_episodes: int) -> torch.Tensor:
        """Start states ``[T, N, ...]``."""
        ...

    def observe(self, states: torch.Tensor) -> torch.Tensor:
        """Observations ``[T, N, D]`` of ``states``."""
        ...

    def step(
        self, states: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(next states, rewards [T, N], terminal [T, N] bool)`` after ``actions [T, N, A]``."""
        ...


class GaussianNoise(NamedTuple):
    """The randomness of one sampling call: ``normal`` ``[H, T, N, A]`` standard normal; the
    action at step t is ``μ + σ · normal[t]``."""

    normal: torch.Tensor

    @classmethod
    def draw(
        cls,
        generator: torch.Generator,
        horizon: int,
        num_tasks: int,
        num_trajectories: int,
        action_dim: int,
        dtype: torch.dtype = torch.float32,
    ) -> GaussianNoise:
        check_horizon(horizon)
        sizes = {
            "num_tasks": num_tasks,
            "num_trajectories": num_trajectories,
            "action_dim": action_dim,
        }
        for name, size in sizes.items():
            check_size(name, size)
        shape = (horizon, num_tasks, num_trajectories, action_dim)
        return cls(torch.randn(shape, generator=generator, dtype=dtype))


class ContinuousTrajectories(NamedTuple):
    """Sampled episodes, time-major.

    Attributes:
        observations: ``[H + 1, T, N, D]``; the last is the observation at the horizon (or, for
            an episode that ended, where it ended).
        actions: ``[H, T, N, A]`` the sampled actions (before any clipping by the dynamics).
        rewards: ``[H, T, N]``, 0 after the episode ended.
        mask: ``[H, T, N]`` 1 on the steps of the episode, 0 after it ended.
        continues: ``[H, T, N]`` 0 on the terminal step, else 1.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor
    continues: torch.Tensor

    episode_returns = episode_returns
    task = task_of


def with_time(obs: torch.Tensor, step: int | torch.Tensor, horizon: int) -> torch.Tensor:
    """``obs`` ``[..., D]`` with the fraction of the episode elapsed, ``step / horizon``, as a
    last column (what a `GaussianMLPPolicy` with ``critic_time`` reads)."""
    fraction = torch.as_tensor(step, dtype=obs.dtype) / horizon
    return torch.cat([obs, fraction.expand(*obs.shape[:-1], 1)], -1)


def rollout(
    policy: GaussianPolicyFn, dynamics: Dynamics, noise: GaussianNoise, time_feature: bool = False
) -> ContinuousTrajectories:
    """Run the episodes that ``noise`` determines in every task at once (no autograd).

    The only Python loop is over the H steps; each evaluates the policy once on the ``[T, N, D]``
    observations. An episode that reaches a terminal step stays where it is, with reward 0 and
    mask 0, until the horizon. A task whose policy outputs are not finite (a diverged inner
    step) is simulated with zero actions and gets NaN rewards, so the divergence shows in its
    returns and losses. With ``time_feature`` the policy is handed `with_time`
    observations (the trajectories keep the plain ones).
    """
    horizon, t, n, _ = noise.normal.shape
    with torch.no_grad():
        states = dynamics.reset(n)
        alive = torch.ones((t, n), dtype=noise.normal.dtype)
        observations, actions, rewards, masks, continues = [], [], [], [], []
        finite = torch.ones(t, dtype=torch.bool)
        for step in range(horizon):
            obs = dynamics.observe(states)
            mean, log_std, _ = policy(with_time(obs, step, horizon) if time_feature else obs)
            if step == 0:  # the episodes follow the policy's dtype (the noise's as drawn)
                states, alive, obs = states.to(mean.dtype), alive.to(mean.dtype), obs.to(mean.dtype)
            ok = torch.isfinite(mean).flatten(1).all(1) & torch.isfinite(log_std).flatten(1).all(1)
            finite = finite & ok
            action = mean + log_std.exp() * noise.normal[step].to(mean.dtype)
            action = torch.where(ok.view(t, 1, 1), action, 0.0)
            following, reward, terminal = dynamics.step(states, action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward * alive)
            masks.append(alive)
            continues.append(1.0 - terminal.to(alive.dtype) * alive)
            states = torch.where(
                alive.bool().view(t, n, *[1] * (states.dim() - 2)), following, states
            )
            alive = alive * (1.0 - terminal.to(alive.dtype))
        observations.append(dynamics.observe(states))
        reward_tensor = torch.stack(rewards)
        reward_tensor = torch.where(finite.view(1, t, 1), reward_tensor, torch.nan)
    return ContinuousTrajectories(
        torch.stack(observations),
        torch.stack(actions),
        reward_tensor,
        torch.stack(masks),
        torch.stack(continues),
    )


def discounted_returns(
    rewards: torch.Tensor, continues: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``[H, T, N]`` discounted sums of the rewards from step t to the end of the episode (no
    bootstrap at the horizon; the discount is 0 after a terminal step): the λ-returns
    (`rl.losses.lambda_returns`) with λ = 1 and nothing to bootstrap."""
    return lambda_returns(rewards, torch.zeros_like(rewards), gamma * continues, 1.0)


def linear_feature_baseline(
    trajectories: ContinuousTrajectories, gamma: float, reg: float = 1e-5
) -> torch.Tensor:
    r"""``[H + 1, T, N]`` a value baseline fitted per task to its own episodes (detached).

    The linear feature baseline of rllab and pytorch-maml-rl (Duan et al. 2016): features
    $\phi(s_t, t) = (s, s^2, \tau, \tau^2, \tau^3, 1)$ with $\tau = t / H$, weights
    $w = (\Phi^\top\Phi + \text{reg}\,I)^{-1}\Phi^\top G$ by ridge least squares per task
    over the steps inside its episodes, G the discounted returns-to-go
    (`discounted_returns`). Entry H, the bootstrap at the horizon, is 0, so with
    λ = 1 the λ-returns are the returns-to-go themselves. Because it is fitted per task on the
    task's episodes it knows what the goal-agnostic critic cannot: where this task's returns are
    high. Solved in float64.
    """
    obs = trajectories.observations[:-1].detach().double()  # [H, T, N, D]
    horizon = obs.shape[0]
    tau = (torch.arange(horizon, dtype=obs.dtype) / horizon).view(horizon, 1, 1, 1)
    tau = tau.expand(*obs.shape[:-1], 1)
    features = torch.cat([obs, obs.pow(2), tau, tau.pow(2), tau.pow(3), torch.ones_like(tau)], -1)
    mask = trajectories.mask.double()
    targets = discounted_returns(trajectories.rewards.double(), trajectories.continues, gamma)
    phi = (features * mask[..., None]).transpose(0, 1).flatten(1, 2)  # [T, H·N, F]
    y = (targets * mask).transpose(0, 1).flatten(1)  # [T, H·N]
    gram = phi.transpose(1, 2) @ phi + reg * torch.eye(phi.shape[-1], dtype=phi.dtype)
    weights = torch.linalg.solve(gram, (phi.transpose(1, 2) @ y[..., None]))  # [T, F, 1]
    fitted = (features @ weights[None]).squeeze(-1)  # [H, T, N]
    horizon_value = torch.zeros_like(fitted[:1])
    return torch.cat([fitted, horizon_value]).to(trajectories.rewards.dtype)


def gaussian_kl(
    mean: torch.Tensor, log_std: torch.Tensor, other_mean: torch.Tensor, other_log_std: torch.Tensor
) -> torch.Tensor:
    r"""``[...]`` KL(N(μ, σ²) ‖ N(μ', σ'²)) of diagonal Gaussians ``[..., A]``:

    $$
    \sum_i \Big[\log\frac{\sigma'_i}{\sigma_i}
    + \frac{\sigma_i^2 + (\mu_i - \mu'_i)^2}{2\sigma_i'^2} - \frac12\Big].
    $$
    """
    variance_ratio = torch.exp(2 * (log_std - other_log_std))
    gap = (mean - other_mean) * torch.exp(-other_log_std)
    return (other_log_std - log_std + 0.5 * (variance_ratio + gap.pow(2)) - 0.5).sum(-1)


class GaussianScorer:
    """Scores of a Gaussian policy on its episodes (`rl.estimators.Scorer`).

    One forward pass per task on all ``(H + 1)·N`` visited observations gives, with gradient,
    the log-density of every action taken (0 after the episode ended) and every value.

    Args:
        normalize_advantages: Standardise the A2C policy term's advantages per task.
        baseline: What the advantages subtract: ``critic`` (the policy's value head) or
            ``linear`` (`linear_feature_baseline`, fitted per task to the episodes
            scored; the critic is still trained).
        gamma: The discount of the linear baseline's targets.
        time_feature: Hand the policy `with_time` observations (``t / H`` at step t).
    """

    def __init__(
        self,
        normalize_advantages: bool = False,
        baseline: str = "critic",
        gamma: float = 0.99,
        time_feature: bool = False,
    ) -> None:
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
        self.normalize_advantages = normalize_advantages
        self.baseline = baseline
        self.gamma = gamma
        self.time_feature = time_feature

    def evaluate(
        self, policy: GaussianPolicyFn, trajectories: ContinuousTrajectories
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The policy on every visited observation, one forward pass per task, time-major: action
        means and log-standard-deviations ``[H, T, N, A]`` (the steps' actions) and values
        ``[H + 1, T, N]``, with gradient."""
        obs = trajectories.observations
        if self.time_feature:
            horizon = obs.shape[0] - 1
            obs = with_time(obs, torch.arange(horizon + 1).view(-1, 1, 1, 1), horizon)
        steps, t, n, d = obs.shape
        flat = obs.transpose(0, 1).reshape(t, steps * n, d)
        mean, log_std, values = policy(flat)

        def time_major(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(t, steps, n, *x.shape[2:]).transpose(0, 1)

        mean, log_std, values = time_major(mean), time_major(log_std), time_major(values)
        return mean[:-1], log_std[:-1], values

    def __call__(self, policy: GaussianPolicyFn, trajectories: ContinuousTrajectories) -> Scores:
        mean, log_std, values = self.evaluate(policy, trajectories)
        z = (trajectories.actions - mean) * torch.exp(-log_std)
        log_probs = (-0.5 * z.pow(2) - log_std - _HALF_LOG_2PI).sum(-1) * trajectories.mask

        def entropy() -> torch.Tensor:
            return (log_std + _HALF_LOG_2PI + 0.5).sum(-1)

        return Scores(
            log_probs,
            values,
            entropy,
            trajectories.mask,
            trajectories.continues,
            self.normalize_advantages,
            linear_feature_baseline(trajectories, self.gamma)
            if self.baseline == "linear"
            else None,
        )

    def a2c_loss(
        self, policy: GaussianPolicyFn, trajectories: ContinuousTrajectories, **settings: Any
    ) -> torch.Tensor:
        """The A2C loss with log-densities (`rl.estimators.scored_a2c_loss`, whose
        keywords ``settings`` are)."""
        return scored_a2c_loss(self(policy, trajectories), trajectories.rewards, **settings)
