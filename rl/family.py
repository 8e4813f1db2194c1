"""What the actor-critic meta-RL families share: `A2CFamily`, and `config_as`.

Every RL family (``mdp``, ``nav2d``, ``cheetah-vel``, ``cheetah-dir``) trains a policy with an A2C
inner loss on sampled episodes. `A2CFamily` logs the training tasks' returns before and after
adaptation, rebuilds the policy meta-training started from (the baselines' starting point), runs
the periodic evaluation on held-out tasks and writes the head of ``eval.json``; a family supplies
its held-out tasks (`A2CFamily.test_batch`) and the rest of its evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.training.distributed import DistInfo, map_tasks
from metaopt.training.family import EvalRequest, TaskFamily, TrainConfig
from rl.config import A2CConfig
from rl.evaluation import adaptation_returns, curve_summary, flat_summaries, summarize
from rl.task import RLTaskBatch

__all__ = ["A2CFamily", "config_as"]

#: A family's own config class (`config_as`).
C = TypeVar("C", bound=TrainConfig)


class A2CFamily(TaskFamily):
    """What the actor-critic meta-RL families share: the training returns they log, and the
    policy meta-training started from (the baseline's starting point)."""

    def iteration_metrics(self, tasks: Sequence[Any]) -> dict[str, float]:
        if not isinstance(tasks, RLTaskBatch):
            return {}
        return {
            "train_pre_return": tasks.pre_returns().mean().item(),
            "train_post_return": tasks.post_returns().mean().item(),
            "train_pre_entropy": tasks.pre_entropy,
        }

    def progress_text(self, row: Mapping[str, Any]) -> str | None:
        """The training tasks' mean return before and after adaptation, then the losses named
        for what they are: surrogates, a policy-gradient term (−mean(log π(a|s)·advantage) for
        A2C) plus the critic's weighted squared error. Their gradient is what training follows;
        their value, of either sign, says nothing of the return."""
        pre, post = row.get("train_pre_return"), row.get("train_post_return")
        if pre is None or post is None:
            return None

        def number(key: str) -> str:
            value = row.get(key)
            return "not finite" if value is None else f"{value:.4g}"

        return (
            f"return {pre:.4g} -> {post:.4g} (before -> after adaptation); A2C surrogate "
            f"losses (sign not meaningful): query {number('query')}, support "
            f"{number('support_before')} -> {number('support_after')}"
        )

    def initial_model(self, config: TrainConfig) -> nn.Module:
        """The model meta-training started from: the training loop seeds torch with
        ``config.seed`` right before ``make_model``; the same seed under a forked RNG rebuilds it
        without touching the global state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return self.make_model(config)

    def baseline(self, algo: MetaLearner, config: TrainConfig) -> MetaLearner:
        """The policy meta-training started from, adapted like ``algo`` minus anything learned."""
        return algo.untrained_baseline(self.initial_model(config))

    # -- held-out evaluation, shared by the families --------------------------------------------

    #: Inner-step counts of the final evaluation (plus the trained number of steps).
    eval_steps: tuple[int, ...] = ()

    def test_batch(self, config: Any, num_tasks: int) -> RLTaskBatch:
        """The first ``num_tasks`` held-out tasks, fresh, with the same sampling noise at every
        evaluation."""
        raise NotImplementedError

    def returns_curve(
        self,
        learner: MetaLearner,
        config: Any,
        num_tasks: int,
        steps: int,
        group: DistInfo | None = None,
    ) -> torch.Tensor:
        """``[steps + 1, T]`` returns of ``learner`` after 0..``steps`` inner steps on the held-out
        tasks (`rl.evaluation.adaptation_returns`); under torchrun each rank of ``group``
        adapts its share of the tasks (`metaopt.training.distributed.map_tasks`)."""
        batch = self.test_batch(config, num_tasks)
        return map_tasks(lambda part: adaptation_returns(learner, part, steps), batch, group)

    def periodic_eval(
        self, algo: MetaLearner, config: TrainConfig, *, group: DistInfo | None = None
    ) -> dict[str, float]:
        config = _a2c(config)
        curve = self.returns_curve(algo, config, config.test_tasks, config.inner_steps, group)
        pre, post = curve[0], curve[-1]
        named = {
            "test_pre_return": pre,
            "test_post_return": post,
            "test_post_minus_pre": post - pre,
        }
        return flat_summaries({**named, **self.periodic_extras(config, post)})

    def periodic_extras(self, config: Any, post: torch.Tensor) -> dict[str, np.ndarray]:
        """More per-task values of the periodic evaluation, from the returns after adaptation."""
        return {}

    def evaluation_plan(
        self, config: A2CConfig, request: EvalRequest
    ) -> tuple[int, list[int], int]:
        """``(tasks, the step counts reported, the longest adaptation)`` of the final evaluation:
        by default ``eval_tasks`` tasks and `eval_steps` plus the trained step count."""
        trained, steps = config.inner_steps, request.steps
        chosen = sorted((set(self.eval_steps) | {trained}) if steps is None else set(steps))
        return request.tasks(config), chosen, max(*chosen, trained)

    def adaptation_report(
        self, config: A2CConfig, steps: Sequence[int], meta: torch.Tensor
    ) -> dict[str, Any]:
        """The head of ``eval.json``: the meta-learned returns ``meta`` ``[K + 1, T]`` after each
        of ``steps`` inner steps, and their paired gains over no adaptation."""
        trained = config.inner_steps
        return {
            "metric": self.metric,
            "higher_is_better": True,
            "tasks": meta.shape[1],
            "steps": list(steps),
            "trained_steps": trained,
            "by_steps": curve_summary(steps, meta),
            "after_minus_before": curve_summary(steps, meta - meta[0]),
            "post_minus_pre": {"steps": trained, **summarize(meta[trained] - meta[0])},
        }


def config_as(config: TrainConfig, kind: type[C], family: str) -> C:
    """``config`` as the ``kind`` of config the ``family`` needs: the loop hands every family a
    [`TrainConfig`][metaopt.training.TrainConfig], and a family's own fields are only there on its
    own config class."""
    if not isinstance(config, kind):
        raise TypeError(f"{family} needs a {kind.__name__}, got {type(config).__name__}")
    return config


def _a2c(config: TrainConfig) -> A2CConfig:
    return config_as(config, A2CConfig, "an actor-critic family")
