"""``metaopt train mdp``: meta-reinforcement learning on random tabular MDPs.

The setting of TorchOpt's MAML-RL example (after Finn et al. 2017, §5.3, on the task distribution
of Duan et al. 2016, RL²): 10 states, 5 actions, horizon 10, 40 tasks per meta-batch, 20
trajectories per task and loss, GAE(γ = 0.99, λ = 0.95), A2C loss with value coefficient 0.5,
one differentiable SGD inner step at learning rate 0.1, outer Adam at 1e-3, 500 iterations. The
default meta-gradient estimator is ``dice`` (`rl.estimators`), which meta-learns in this
setting; ``--meta-gradient seed`` (or ``--preset seed``) is TorchOpt's example exactly.

Each iteration logs the mean return of the training tasks before adaptation (the first support
trajectories) and after it (the query trajectories). Every ``eval_every`` iterations the same
numbers, with the normalised score ``(return − random) / (optimal − random)``, are measured on
``test_tasks`` held-out tasks drawn from ``eval_seed``. The final evaluation (``eval.json``) adds
returns after several inner-step counts, the exact random and optimal references, and a baseline:
the policy the meta-training started from, adapted by plain SGD at ``inner_lr``.

Presets: ``seed`` (the defaults with the estimator of TorchOpt's MAML-RL example), ``tuned`` (two
inner steps at lr 0.5) and ``tabular`` (no hidden layer, three inner steps at lr 10), the last two
also with the MAML-RL example's estimator they were chosen with, and ``tabular10`` (no hidden layer,
ten inner steps at lr 10, dice); docs/results.md has what each achieves.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.training.family import EvalRequest, RunResults, TrainConfig
from rl.config import MDP, A2CConfig, MDPConfig
from rl.evaluation import INTERVAL, curve_summary, summarize
from rl.family import A2CFamily, config_as
from rl.policy import CategoricalMLPPolicy
from rl.tabular.mdp import (
    TabularMDPBatch,
    normalized_score,
    optimal_return,
    random_policy_return,
    sample_mdps,
)
from rl.tabular.task import MDPTaskBatch
from rl.task import A2CSettings

if TYPE_CHECKING:
    from metaopt.training.family import TruthRequest

__all__ = ["EVAL_STEPS", "A2CConfig", "MDPConfig", "MDPFamily"]

#: Inner-step counts reported by the final evaluation (plus the trained number of steps).
EVAL_STEPS = (0, 1, 2, 3, 5)

#: Mixed into ``eval_seed`` so that held-out tasks never coincide with training tasks, which the
#: training loop draws from ``numpy.random.default_rng(seed)``, even when seed == eval_seed.
_EVAL_STREAM = 0x7E57
_SAMPLING_STREAM = 0x5A3E


def score_curve(curve: torch.Tensor, random: np.ndarray, optimal: np.ndarray) -> np.ndarray:
    """Per-task normalised scores of every row of ``curve``."""
    return normalized_score(curve.double().numpy(), random, optimal)


class MDPFamily(A2CFamily, options=MDP):
    """Random tabular MDPs (RL², Duan et al. 2016) meta-learned with an A2C inner loss."""

    name = "mdp"
    metric = "return"
    higher_is_better = True
    eval_steps = EVAL_STEPS

    def __init__(self) -> None:
        self._references: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}

    # -- the training loop's calls ----------------------------------------------------------

    def make_model(self, config: TrainConfig) -> nn.Module:
        config = _mdp(config)
        return CategoricalMLPPolicy(
            config.num_states, config.num_actions, config.hidden_sizes, config.shared_torso
        )

    def sample_tasks(
        self, config: TrainConfig, rng: np.random.Generator, num_tasks: int
    ) -> MDPTaskBatch:
        config = _mdp(config)
        mdps = sample_mdps(rng, num_tasks, config.num_states, config.num_actions)
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        return MDPTaskBatch(mdps, A2CSettings.of(config), generator)

    def periodic_extras(self, config: Any, post: torch.Tensor) -> dict[str, np.ndarray]:
        """The normalised score ``(return − random) / (optimal − random)`` after adaptation."""
        random, optimal = self.references(config, config.test_tasks)
        return {"test_score": normalized_score(post.double().numpy(), random, optimal)}

    def evaluate(
        self, algo: MetaLearner, config: TrainConfig, run_dir: Path, request: EvalRequest
    ) -> dict[str, Any]:
        config, group = _mdp(config), request.group
        n, steps, longest = self.evaluation_plan(config, request)
        trained = config.inner_steps
        random, optimal = self.references(config, n)
        meta = self.returns_curve(algo, config, n, longest, group)
        base = self.returns_curve(self.baseline(algo, config), config, n, longest, group)
        meta_score = score_curve(meta, random, optimal)
        base_score = score_curve(base, random, optimal)
        post = meta[trained]
        return {
            **self.adaptation_report(config, steps, meta),
            "normalized_score": {
                "description": "normalised score (return − random) / (optimal − random), "
                "0 for the random policy and 1 for the optimal one",
                "steps": trained,
                **summarize(normalized_score(post.double().numpy(), random, optimal)),
                "by_steps": curve_summary(steps, meta_score),
            },
            "random": summarize(random),
            "optimal": summarize(optimal),
            "baseline": {
                "description": "the initial (not meta-trained) policy, adapted by plain SGD at "
                "inner_lr",
                "by_steps": curve_summary(steps, base),
                "after_minus_before": curve_summary(steps, base - base[0]),
                "normalized_score": {"by_steps": curve_summary(steps, base_score)},
            },
            "meta_minus_baseline": curve_summary(steps, meta - base),
            "adaptation": algo.describe(),
            "interval": INTERVAL,
        }

    def plot(
        self, algo: MetaLearner, config: TrainConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        from rl.plots import plot_adaptation, plot_returns

        config = _mdp(config)
        random, optimal = self.references(config, config.test_tasks)
        references = {"random": float(random.mean()), "optimal": float(optimal.mean())}
        return [
            plot_returns(
                results.path(run_dir, "rl_returns.png"),
                results.metrics,
                references,
                config.algo,
                max_entropy=math.log(config.num_actions),
                reference_tasks=config.test_tasks,
            ),
            plot_adaptation(
                results.path(run_dir, "rl_adaptation.png"), results.evaluation, config.algo
            ),
        ]

    def compare_with_truth(
        self, config: TrainConfig, request: TruthRequest
    ) -> dict[str, Any] | None:
        """Each estimator of each method against the exact meta-gradient on a tiny MDP
        (`rl.tabular.truth.compare_with_truth`), at the config's inner learning rate and steps."""
        from rl.tabular.truth import compare_with_truth

        config = _mdp(config)
        return compare_with_truth(
            config.inner_lr,
            config.inner_steps,
            request.methods,
            batches=request.batches,
            progress=request.progress,
        )

    # -- held-out tasks and references ------------------------------------------------------

    def test_mdps(self, config: MDPConfig, num_tasks: int) -> TabularMDPBatch:
        """The first ``num_tasks`` held-out tasks of ``config.eval_seed`` (a fixed set)."""
        rng = np.random.default_rng([_EVAL_STREAM, config.eval_seed])
        return sample_mdps(rng, num_tasks, config.num_states, config.num_actions)

    def test_batch(self, config: MDPConfig, num_tasks: int) -> MDPTaskBatch:
        """Fresh held-out tasks, with sampling noise that is the same at every evaluation."""
        generator = torch.Generator().manual_seed(_SAMPLING_STREAM + config.eval_seed)
        return MDPTaskBatch(self.test_mdps(config, num_tasks), A2CSettings.of(config), generator)

    def references(self, config: MDPConfig, num_tasks: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact returns of the random and optimal policies on each held-out task (cached)."""
        key = (config.num_states, config.num_actions, config.horizon, config.eval_seed, num_tasks)
        if key not in self._references:
            mdps = self.test_mdps(config, num_tasks)
            self._references[key] = (
                random_policy_return(mdps, config.horizon),
                optimal_return(mdps, config.horizon),
            )
        return self._references[key]


def _mdp(config: TrainConfig) -> MDPConfig:
    return config_as(config, MDPConfig, "the mdp family")
