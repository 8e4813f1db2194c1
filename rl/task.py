"""RL tasks for the meta-learning core: losses computed from freshly sampled episodes.

An `RLTask` implements [`metaopt.task.Task`][metaopt.Task]. ``support_loss(model)`` samples
episodes of its task (an MDP, a goal) with the policy it is handed and returns their A2C loss;
``query_loss(model)`` does the same with the adapted policy (fresh episodes), as in MAML's RL
experiments (Finn et al. 2017, §5.3). The core never knows that data is sampled.

An `RLTaskBatch` is a sequence of such tasks and also implements
[`metaopt.task.BatchedTasks`][metaopt.BatchedTasks], so the core's vectorised engine adapts all its
tasks at once: ``support_losses(forward, step)`` and ``query_losses(forward)`` sample every task
with its own parameters in one call and return one loss per task. A family subclasses it with
its sampler (`rl.tabular.task.MDPTaskBatch`, `rl.nav2d.task.Nav2DTaskBatch`,
`rl.cheetah.family.CheetahTaskBatch`); `A2CSettings` are the settings they share.

Randomness. Every sampling *phase* (the k-th support sample of each task, the k-th query
sample) has its noise drawn once for all tasks (`RLTaskBatch.draw_noise`: the tabular sampler's
`rl.tabular.sampler.SamplingNoise`, the Gaussian policies' `rl.continuous.GaussianNoise`), in the
order in which the phases are first needed; task b's episodes depend only on its slice. The loop engine
(task by task) and the vectorised engine (all at once) therefore sample exactly the same
trajectories, and compute the same losses and meta-gradients.

Speed of the loop engine without changing the distribution: every task's first support call sees
the same parameters θ (the core restores θ between tasks), so the batch simulates the first
support phase of *all* its tasks in one vectorised call, and a task uses its share only if the
parameters it is handed are equal, value for value, to the ones that sampled it. Any other call
samples with the model given.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from rl.estimators import (
    ESTIMATORS,
    Scorer,
    policy_gradient_loss,
    sampling_record,
    sampling_term,
    support_objective,
)
from rl.sampling import PolicyFn, check_horizon, check_size, tasks_of

__all__ = ["A2CSettings", "RLTask", "RLTaskBatch"]


@dataclass(frozen=True)
class A2CSettings:
    """How a task samples and scores trajectories (the MAML-RL example's values by default).

    Attributes:
        trajectories: Episodes per loss evaluation (per task).
        horizon: Steps per episode.
        gamma: Discount γ of the λ-returns.
        gae_lambda: λ of the λ-returns / GAE.
        value_coef: Weight of the squared-advantage (critic) term.
        entropy_coef: Weight of the entropy bonus.
        meta_gradient: The meta-gradient estimator, one of `rl.estimators.ESTIMATORS`
            (``seed``, ``dice``, ``lvc``): which support and query losses the task returns.
        reward_noise: Standard deviation of the Gaussian noise on observed rewards (1 in the
            RL² distribution; 0 gives deterministic rewards, as the exact oracle needs). Tabular
            tasks only.
    """

    trajectories: int = 20
    horizon: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    value_coef: float = 0.5
    entropy_coef: float = 0.0
    meta_gradient: str = "seed"
    reward_noise: float = 1.0

    @classmethod
    def of(cls, config: Any) -> A2CSettings:
        """The settings an `rl.config.A2CConfig` (a run's configuration) gives."""
        return cls(
            trajectories=config.trajectories,
            horizon=config.horizon,
            gamma=config.gamma,
            gae_lambda=config.gae_lambda,
            value_coef=config.value_coef,
            entropy_coef=config.entropy_coef,
            meta_gradient=config.meta_gradient,
        )

    def __post_init__(self) -> None:
        check_size("trajectories", self.trajectories)
        check_horizon(self.horizon)
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        for name in ("value_coef", "entropy_coef", "reward_noise"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.meta_gradient not in ESTIMATORS:
            raise ValueError(
                f"meta_gradient must be one of {', '.join(ESTIMATORS)}, got {self.meta_gradient!r}"
            )


class RLTask:
    """One task of an `RLTaskBatch` (an MDP, a goal); implements
    [`metaopt.task.Task`][metaopt.Task].

    Every sample is recorded as the undiscounted episode returns it produced (``support_returns``
    and ``query_returns``: one ``[N]`` tensor per sample, in order), so a caller can read the
    return before adaptation (the first support sample, at θ) and after it (the query sample).
    """

    def __init__(self, batch: RLTaskBatch, index: int) -> None:
        self.batch = batch
        self.index = index
        self.support_returns: list[torch.Tensor] = []
        self.query_returns: list[torch.Tensor] = []
        # For the dice estimator: every support phase's log-likelihoods and baselines.
        self._records: list[tuple[torch.Tensor, torch.Tensor]] = []

    def support_loss(self, model: nn.Module) -> torch.Tensor:
        """A2C loss of trajectories sampled with ``model`` (the inner loop's objective)."""
        phase = f"support{len(self.support_returns)}"
        trajectories = self.batch.take_presampled(self, model) if phase == "support0" else None
        if trajectories is None:
            trajectories = self.batch.sample(model, phase, self.index)
        self.support_returns.append(trajectories.episode_returns()[0])
        self._record_sampling(model, trajectories, first=phase == "support0")
        return self.batch.support_objective(model, trajectories)

    def query_loss(self, model: nn.Module) -> torch.Tensor:
        """The outer objective on fresh trajectories sampled with the adapted ``model``: the
        A2C loss (``seed``) or an unbiased policy gradient, with DiCE's sampling term for
        ``dice`` (`rl.estimators`)."""
        trajectories = self._query_sample(model)
        records, self._records = self._records, []
        return self.batch.query_objective(model, trajectories, records)

    def _record_sampling(self, model: PolicyFn, trajectories: Any, first: bool) -> None:
        if self.batch.settings.meta_gradient != "dice" or not torch.is_grad_enabled():
            return
        if first:
            self._records = []
        self._records.append(sampling_record(model, trajectories, self.batch.scorer))

    def sample_returns(self, model: PolicyFn) -> torch.Tensor:
        """Episode returns ``[N]`` of a query sample under ``model`` (evaluation; no loss)."""
        return self._query_sample(model).episode_returns()[0]

    def _query_sample(self, model: PolicyFn) -> Any:
        trajectories = self.batch.sample(model, f"query{len(self.query_returns)}", self.index)
        self.query_returns.append(trajectories.episode_returns()[0])
        return trajectories

    @property
    def pre_return(self) -> float:
        """Mean return of the first support sample (before adaptation); NaN if none yet."""
        return self.support_returns[0].mean().item() if self.support_returns else math.nan

    @property
    def post_return(self) -> float:
        """Mean return of the last query sample (after adaptation); NaN if none yet."""
        return self.query_returns[-1].mean().item() if self.query_returns else math.nan

    def __repr__(self) -> str:
        return f"{type(self).__name__}(index={self.index}, of {len(self.batch)})"


class RLTaskBatch(Sequence[RLTask]):
    """A meta-batch of RL tasks sharing one sampler and one random generator; a family
    subclasses it with its tasks' sampling (`draw_noise`, `simulate`,
    `subset`) and its policy's `rl.estimators.Scorer`.

    A sequence of `RLTask` (the core's loop engine) and a
    [`metaopt.task.BatchedTasks`][metaopt.BatchedTasks] (its vectorised engine). Use a batch with
    one engine: sampling phases are counted per task.

    Args:
        num_tasks: T.
        settings: Sampling and loss settings.
        generator: Source of all sampling randomness.
        scorer: How the losses evaluate the policy on its trajectories.
    """

    def __init__(
        self, num_tasks: int, settings: A2CSettings, generator: torch.Generator, scorer: Scorer
    ) -> None:
        self.settings = settings
        self.generator = generator
        self.scorer = scorer
        self.tasks = [RLTask(self, i) for i in range(num_tasks)]
        self._noise: dict[str, Any] = {}
        self._presampled: dict[int, Any] = {}
        self._sampled_with: tuple[type, list[torch.Tensor]] | None = None
        # The vectorised engine's records for the dice estimator (see RLTask).
        self._records: list[tuple[torch.Tensor, torch.Tensor]] = []
        #: Mean entropy (nats) of the policy over states and tasks when the first support sample
        #: of all tasks was drawn at once (a collapse of exploration shows here first).
        self.pre_entropy = math.nan
        #: For a shard made by `select`: the batch it came from and its tasks' positions.
        self._source: tuple[RLTaskBatch, slice] | None = None
        #: The episodes of every phase sampled for all tasks at once, by phase name (what a
        #: trust-region outer step re-scores: `rl.trust_region`).
        self.episodes: dict[str, Any] = {}

    # -- what a family supplies --------------------------------------------------------------

    def draw_noise(self) -> NamedTuple:
        """All the randomness of one sampling phase of every task, drawn from
        `generator`: a NamedTuple of tensors whose axis 1 is the task."""
        raise NotImplementedError

    def simulate(self, policy: PolicyFn, noise: Any, index: int | None = None) -> Any:
        """The trajectories that ``noise`` determines under ``policy``, of every task or (with
        ``index`` and that task's slice of the noise) of one; they have ``episode_returns()``
        ``[T, N]`` and ``rewards`` ``[H, T, N]``."""
        raise NotImplementedError

    def subset(self, indices: slice) -> RLTaskBatch:
        """A fresh batch of the tasks ``indices`` with the same settings and generator."""
        raise NotImplementedError

    def mean_entropy(self, policy: PolicyFn) -> float:
        """The policy's mean entropy before adaptation, for the logs (NaN: not measured)."""
        return math.nan

    # -- sharding ------------------------------------------------------------------------------

    def select(self, indices: slice) -> RLTaskBatch:
        """Tasks ``indices`` as a batch of their own that samples exactly as they would here.

        The shard takes every phase's noise from this batch (drawn for all of its tasks, then
        sliced), so sharding a meta-batch across processes changes no trajectory: each process
        draws the whole batch from the run's seed and keeps its slice (see
        `metaopt.training.distributed`).
        """
        shard = self.subset(indices)
        shard._source = (self, indices)
        return shard

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]  # Sequence's int/slice overload
        return self.tasks[index]

    def __iter__(self) -> Iterator[RLTask]:
        return iter(self.tasks)

    # -- the vectorised engine's protocol (metaopt.task.BatchedTasks) ------------------------

    def support_losses(self, forward: PolicyFn, step: int | None = None) -> torch.Tensor:
        """Support losses ``[T]``: every task sampled at once, with its own parameters.

        ``step`` (the inner step, or ``None`` for the after-adaptation metric) is not needed:
        each call is the next support phase of every task, as in the loop engine.
        """
        phase = f"support{len(self.tasks[0].support_returns)}"
        trajectories = self.sample(forward, phase)
        for task, returns in zip(self.tasks, trajectories.episode_returns(), strict=True):
            task.support_returns.append(returns)
        if self.settings.meta_gradient == "dice" and torch.is_grad_enabled():
            if phase == "support0":
                self._records = []
            self._records.append(sampling_record(forward, trajectories, self.scorer))
        return self.support_objective(forward, trajectories, per_task=True)

    def query_losses(self, forward: PolicyFn) -> torch.Tensor:
        """Query losses ``[T]`` of the adapted parameters, every task sampled at once."""
        records, self._records = self._records, []
        trajectories = self.sample_queries(forward)
        return self.query_objective(forward, trajectories, records, per_task=True)

    def sample_queries(self, forward: PolicyFn) -> Any:
        """The next query sample of every task at once (recorded as its query returns)."""
        trajectories = self.sample(forward, f"query{len(self.tasks[0].query_returns)}")
        for task, returns in zip(self.tasks, trajectories.episode_returns(), strict=True):
            task.query_returns.append(returns)
        return trajectories

    # -- sampling and losses ----------------------------------------------------------------

    def noise(self, phase: str) -> Any:
        """The noise of one sampling phase for every task, drawn the first time it is needed."""
        if self._source is not None:
            parent, indices = self._source
            return tasks_of(parent.noise(phase), indices)
        if phase not in self._noise:
            self._noise[phase] = self.draw_noise()
        return self._noise[phase]

    def sample(self, policy: PolicyFn, phase: str, index: int | None = None) -> Any:
        """Trajectories of task ``index`` (``None``: every task) in ``phase`` under ``policy``."""
        noise = self.noise(phase)
        if index is None:
            if phase == "support0":
                self.pre_entropy = self.mean_entropy(policy)
            self.episodes[phase] = self.simulate(policy, noise)
            return self.episodes[phase]
        return self.simulate(policy, tasks_of(noise, slice(index, index + 1)), index)

    def loss(
        self,
        policy: PolicyFn,
        trajectories: Any,
        *,
        per_task: bool = False,
        estimator: str = "seed",
    ) -> torch.Tensor:
        """The settings' A2C loss of ``policy`` on ``trajectories`` (scalar, or ``[T]``), in the
        form ``estimator``'s inner loss takes (`rl.estimators.support_objective`)."""
        s = self.settings
        return support_objective(
            policy,
            trajectories,
            self.scorer,
            estimator=estimator,
            gamma=s.gamma,
            gae_lambda=s.gae_lambda,
            value_coef=s.value_coef,
            entropy_coef=s.entropy_coef,
            per_task=per_task,
        )

    def support_objective(
        self, policy: PolicyFn, trajectories: Any, *, per_task: bool = False
    ) -> torch.Tensor:
        """The inner loss of the settings' estimator."""
        estimator = self.settings.meta_gradient
        return self.loss(policy, trajectories, per_task=per_task, estimator=estimator)

    def query_objective(
        self,
        policy: PolicyFn,
        trajectories: Any,
        records: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        *,
        per_task: bool = False,
    ) -> torch.Tensor:
        """The outer loss of the settings' estimator (see `rl.estimators`).

        Args:
            policy: The adapted policy.
            trajectories: Its query episodes.
            records: The support phases' `rl.estimators.sampling_record` (dice).
        """
        s = self.settings
        if s.meta_gradient == "seed":
            return self.loss(policy, trajectories, per_task=per_task)
        loss = policy_gradient_loss(
            policy,
            trajectories,
            self.scorer,
            gamma=s.gamma,
            gae_lambda=s.gae_lambda,
            value_coef=s.value_coef,
            per_task=per_task,
        )
        if s.meta_gradient == "dice" and records:
            sampling = sampling_term(records, trajectories.episode_returns(), s.horizon)
            loss = loss + (sampling if per_task else sampling.mean())
        return loss

    def take_presampled(self, task: RLTask, model: nn.Module) -> Any:
        """The task's share of one batched first support sample, drawn with ``model``'s values.

        On a miss (no share yet, or parameters that differ from the ones that drew it), every
        task that has not sampled yet gets a new share drawn with ``model``. Returns ``None`` when
        ``model`` is not an ``nn.Module`` (its parameters cannot be compared).
        """
        if not isinstance(model, nn.Module):
            return None
        if task.index not in self._presampled or not self._same_parameters(model):
            fresh = [t.index for t in self.tasks if not t.support_returns]
            everything = self.sample(model, "support0")
            self._presampled = {i: everything.task(i) for i in fresh}
            self._sampled_with = (type(model), [p.detach().clone() for p in model.parameters()])
        return self._presampled.pop(task.index)

    def _same_parameters(self, model: nn.Module) -> bool:
        if self._sampled_with is None:
            return False
        kind, snapshot = self._sampled_with
        params = list(model.parameters())
        return (
            type(model) is kind
            and len(params) == len(snapshot)
            and all(
                p.shape == q.shape and torch.equal(p.detach(), q)
                for p, q in zip(params, snapshot, strict=True)
            )
        )

    # -- records ----------------------------------------------------------------------------

    def pre_returns(self) -> torch.Tensor:
        """``[T]`` mean return of each task's first support sample (before adaptation)."""
        return torch.tensor([t.pre_return for t in self.tasks])

    def post_returns(self) -> torch.Tensor:
        """``[T]`` mean return of each task's last query sample (after adaptation)."""
        return torch.tensor([t.post_return for t in self.tasks])
