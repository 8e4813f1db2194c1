r"""The trust-region outer step of meta-RL (``--outer-optimizer trpo``): MAML-TRPO.

MAML's RL experiments (Finn et al. 2017, §5.3) and pytorch-maml-rl take the outer step with
TRPO (`metaopt.trust_region.trust_region_step`). Its pieces, on one meta-batch, after
``meta_backward`` has sampled it at θ₀ and put the gradient g of the ``seed`` outer loss (the A2C
loss of the adapted policies on their query episodes) in ``.grad``:

* the adapted policy of task b is a function of θ through the inner steps on the support
  episodes sampled at θ₀, which stay fixed (the same episodes at every θ);
* the divergence is the mean over tasks of the mean over their query steps of
  KL(π_{θ₀,b}' ‖ π_{θ,b}'), the adapted policies' action distributions before (fixed) and after,
  differentiated through the inner steps (second order, as pytorch-maml-rl; first order for
  ``fomaml``), so its Hessian at θ₀ is the Fisher matrix of the adapted policies;
* the surrogate is the ``seed`` outer loss with each log-density replaced by the likelihood
  ratio π_{θ,b}'(a|s) / π_{θ₀,b}'(a|s) on the fixed query episodes: equal to the A2C loss's
  policy term at θ₀ and with the same gradient there, so g is its gradient.

The critic's parameters do not reach the divergence (the advantages are detached), so the
trust region moves the policy's parameters only; the loop's Adam (at ``--outer-lr``) moves the
critic's with their part of g.
"""

from __future__ import annotations

from typing import Any

import torch

from metaopt.algorithms import MetaLearner
from rl.continuous import GaussianScorer, gaussian_kl
from rl.estimators import scored_a2c_loss
from rl.task import RLTaskBatch

__all__ = ["MetaPolicyRegion"]


class _Replay:
    """The meta-batch as [`metaopt.task.BatchedTasks`][metaopt.BatchedTasks] whose inner step ``k``
    scores the support episodes the batch sampled in phase ``support{k}``, whatever the
    parameters."""

    def __init__(self, batch: RLTaskBatch) -> None:
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch)

    def support_losses(self, forward: Any, step: int | None) -> torch.Tensor:
        episodes = self.batch.episodes[f"support{0 if step is None else step}"]
        return self.batch.support_objective(forward, episodes, per_task=True)

    def query_losses(self, forward: Any) -> torch.Tensor:
        raise TypeError("a replayed meta-batch has no query loss: it only re-adapts")


class MetaPolicyRegion:
    """The surrogate and divergence of MAML-TRPO on one meta-batch
    (`metaopt.trust_region.TrustRegionProblem`), at the model's current parameters.

    Args:
        algo: The meta-learner (its inner update adapts the policies).
        batch: The meta-batch ``algo.meta_backward`` has just run on the vectorised engine, with
            the ``seed`` estimator and a Gaussian policy.

    Raises:
        ValueError: a batch that was not sampled for all tasks at once, a non-``seed``
            estimator, or a policy that is not Gaussian.
    """

    def __init__(self, algo: MetaLearner, batch: RLTaskBatch) -> None:
        if batch.settings.meta_gradient != "seed":
            raise ValueError(
                "the trust-region step re-scores the query episodes with the A2C loss: it needs "
                f"the seed estimator, not {batch.settings.meta_gradient!r}"
            )
        if not isinstance(batch.scorer, GaussianScorer):
            raise ValueError("the trust-region step's divergence needs a Gaussian policy")
        phases = [f"support{k}" for k in range(algo.inner_steps)] + ["query0"]
        missing = [phase for phase in phases if phase not in batch.episodes]
        if missing:
            raise ValueError(
                f"the meta-batch has no episodes of {', '.join(missing)} sampled for all tasks at "
                "once: the trust-region step needs meta_backward on the vectorised engine"
            )
        self.algo = algo
        self.batch = batch
        self.scorer: GaussianScorer = batch.scorer
        self.replay = _Replay(batch)
        self.query = batch.episodes["query0"]
        self.second_order = not bool(getattr(algo, "first_order", False))
        with torch.no_grad():
            forward = self._adapted()
            mean, log_std, _ = self.scorer.evaluate(forward, self.query)
            self.old_mean, self.old_log_std = mean, log_std
            self.old_log_probs = self.scorer(forward, self.query).log_probs

    def _adapted(self) -> Any:
        """The policies adapted at the current θ on the fixed support episodes; a function of θ
        (through the inner steps: second order unless first-order MAML) when grad mode is on."""
        graph = torch.is_grad_enabled() and self.second_order
        with torch.enable_grad():  # the inner step differentiates even when no graph is kept
            return self.algo.adapt_batch(self.replay, create_graph=graph)

    def _per_step_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean over tasks of each task's mean over the steps of its query episodes."""
        mask = self.query.mask
        return ((values * mask).sum((0, 2)) / mask.sum((0, 2))).mean()

    def divergence(self) -> torch.Tensor:
        mean, log_std, _ = self.scorer.evaluate(self._adapted(), self.query)
        return self._per_step_mean(gaussian_kl(self.old_mean, self.old_log_std, mean, log_std))

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        forward = self._adapted()
        scores = self.scorer(forward, self.query)
        mean, log_std, _ = self.scorer.evaluate(forward, self.query)
        kl = self._per_step_mean(gaussian_kl(self.old_mean, self.old_log_std, mean, log_std))
        ratio = torch.exp(scores.log_probs - self.old_log_probs)
        s = self.batch.settings
        surrogate = scored_a2c_loss(
            scores._replace(log_probs=ratio),
            self.query.rewards,
            gamma=s.gamma,
            gae_lambda=s.gae_lambda,
            value_coef=s.value_coef,
            entropy_coef=s.entropy_coef,
            per_task=True,
        ).mean()
        return surrogate, kl
