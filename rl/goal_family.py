"""What the goal-conditioned families share (``nav2d``, ``cheetah-vel``, ``cheetah-dir``).

A task is a goal (a point in the plane, a velocity, a direction); a family draws goals, builds a
meta-batch of them (an `rl.task.RLTaskBatch` with its own sampler) and a Gaussian policy
(`rl.continuous.GaussianMLPPolicy`). The rest is the same for every such family, after MAML's
RL experiments (Finn et al. 2017, §5.3) and pytorch-maml-rl:

* the outer step is TRPO by default (`rl.trust_region.MetaPolicyRegion`);
* held-out goals are drawn from ``eval_seed`` alone, and sampled with the same noise at every
  evaluation;
* the final evaluation (``eval.json``, the ``mdp`` family's shape) has the return after 0..3 inner
  steps on ``eval_tasks`` held-out goals, the paired differences after − before, and two
  baselines adapted by plain SGD at ``inner_lr``: a *pretrained* policy (the paper's: trained on
  the goals without adaptation, ``pretrain_iterations`` A2C steps of Adam at ``outer_lr``),
  against which ``meta_minus_baseline`` is paired, and the *random initialisation* the
  meta-training started from (``random_baseline``, with its own ``meta_minus_random``);
* the figures are ``rl_returns.png`` (training) and ``rl_adaptation.png`` (held-out goals).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.training.distributed import DistInfo, on_main
from metaopt.training.family import EvalRequest, RunResults, TrainConfig
from metaopt.trust_region import TrustRegionSettings
from rl.config import Nav2DConfig
from rl.continuous import GaussianMLPPolicy
from rl.evaluation import INTERVAL, curve_summary
from rl.family import A2CFamily, config_as
from rl.task import RLTaskBatch
from rl.trust_region import MetaPolicyRegion

__all__ = ["EVAL_STEPS", "GoalFamily"]

#: Inner-step counts of the final evaluation (plus the trained number of steps).
EVAL_STEPS = (0, 1, 2, 3)


class GoalFamily(A2CFamily):
    """A goal-conditioned family with a Gaussian policy; a subclass says how to draw goals
    (`sample_goals`), the policy's sizes (`obs_dim`, `action_dim`) and how to build a meta-batch
    (`batch`)."""

    metric = "return"
    higher_is_better = True
    eval_steps = EVAL_STEPS

    config_class: ClassVar[type[Nav2DConfig]]
    #: The policy's observation and action sizes.
    obs_dim: ClassVar[int]
    action_dim: ClassVar[int]
    #: The meta-batch type `batch` builds (the trust region checks it is handed one).
    task_batch: ClassVar[type[RLTaskBatch]] = RLTaskBatch
    #: Mixed into ``eval_seed`` for the held-out goals: a family's own stream.
    eval_stream: ClassVar[int] = 0
    #: Mixed into ``eval_seed`` for the held-out goals' sampling noise.
    sampling_stream: ClassVar[int] = 0x2D5A
    #: Mixed into ``seed`` for the goals the pretrained baseline trains on.
    pretrain_stream: ClassVar[int] = 0x2D97

    def __init__(self) -> None:
        self._pretrained: dict[str, dict[str, torch.Tensor]] = {}

    def own_config(self, config: TrainConfig) -> Nav2DConfig:
        """``config`` as this family's config class (`rl.family.config_as`)."""
        return config_as(config, self.config_class, f"the {self.name} family")

    # -- what a family supplies --------------------------------------------------------------

    def sample_goals(self, rng: np.random.Generator, num_tasks: int) -> np.ndarray:
        """``num_tasks`` goals drawn from ``rng``."""
        raise NotImplementedError

    def batch(self, config: Nav2DConfig, goals: np.ndarray, seed: int) -> RLTaskBatch:
        """The meta-batch of ``goals``, its sampling noise drawn from a generator seeded ``seed``."""
        raise NotImplementedError

    # -- the training loop's calls ----------------------------------------------------------

    def make_model(self, config: TrainConfig) -> nn.Module:
        """The Gaussian policy (`rl.continuous.GaussianMLPPolicy`) the config describes."""
        config = self.own_config(config)
        return GaussianMLPPolicy(
            self.obs_dim,
            self.action_dim,
            config.hidden_sizes,
            config.init_log_std,
            config.shared_torso,
            config.critic_time,
            config.activation,
        )

    def sample_tasks(
        self, config: TrainConfig, rng: np.random.Generator, num_tasks: int
    ) -> RLTaskBatch:
        config = self.own_config(config)
        goals = self.sample_goals(rng, num_tasks)
        return self.batch(config, goals, int(rng.integers(2**62)))

    def test_goals(self, config: Nav2DConfig, num_tasks: int) -> np.ndarray:
        """The first ``num_tasks`` held-out goals of ``config.eval_seed`` (a fixed set)."""
        return self.sample_goals(
            np.random.default_rng([self.eval_stream, config.eval_seed]), num_tasks
        )

    def test_batch(self, config: Nav2DConfig, num_tasks: int) -> RLTaskBatch:
        """Fresh held-out goals, with the same sampling noise at every evaluation."""
        goals = self.test_goals(config, num_tasks)
        return self.batch(config, goals, self.sampling_stream + config.eval_seed)

    def trust_region(
        self, algo: MetaLearner, config: TrainConfig, tasks: Sequence[Any]
    ) -> tuple[MetaPolicyRegion, TrustRegionSettings]:
        """MAML-TRPO's surrogate and divergence on the meta-batch (`rl.trust_region`)."""
        if not isinstance(tasks, self.task_batch):
            raise TypeError(
                f"{self.name}'s trust region needs a {self.task_batch.__name__}, got {type(tasks)}"
            )
        return MetaPolicyRegion(algo, tasks), self.own_config(config).trust_region_settings()

    # -- baselines ------------------------------------------------------------------------

    def pretrained_model(self, config: Nav2DConfig, group: DistInfo | None = None) -> nn.Module:
        """The paper's pretrained baseline: the initial policy trained by Adam at ``outer_lr`` on
        the A2C loss of ``pretrain_iterations`` meta-batches of goals, without adaptation (one
        policy for every goal). Computed once per process (rank 0 of ``group`` under torchrun)."""
        key = repr(sorted(config.to_dict().items()))
        if key not in self._pretrained:
            self._pretrained[key] = on_main(lambda: self._pretrain(config), group)
        model = self.initial_model(config)
        model.load_state_dict(self._pretrained[key])
        return model

    def _pretrain(self, config: Nav2DConfig) -> dict[str, torch.Tensor]:
        model = self.initial_model(config)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr)
        rng = np.random.default_rng([self.pretrain_stream, config.seed])
        for _ in range(config.pretrain_iterations):
            batch = self.sample_tasks(config, rng, config.meta_batch)
            loss = batch.loss(model, batch.sample(model, "support0"))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def baselines(
        self, algo: MetaLearner, config: Nav2DConfig, group: DistInfo | None = None
    ) -> dict[str, MetaLearner]:
        """The pretrained and the randomly initialised policy, adapted by ``algo``'s inner
        optimiser at ``inner_lr``."""
        return {
            "baseline": algo.untrained_baseline(self.pretrained_model(config, group)),
            "random_baseline": self.baseline(algo, config),
        }

    # -- evaluation -----------------------------------------------------------------------

    def evaluate(
        self, algo: MetaLearner, config: TrainConfig, run_dir: Path, request: EvalRequest
    ) -> dict[str, Any]:
        config, group = self.own_config(config), request.group
        n, steps, longest = self.evaluation_plan(config, request)
        meta = self.returns_curve(algo, config, n, longest, group)
        result = self.adaptation_report(config, steps, meta)
        descriptions = {
            "baseline": f"a policy pretrained on the goals without adaptation "
            f"({config.pretrain_iterations} A2C steps of Adam), adapted by plain SGD at inner_lr",
            "random_baseline": "the initial (not meta-trained) policy, adapted by plain SGD at "
            "inner_lr",
        }
        for name, learner in self.baselines(algo, config, group).items():
            base = self.returns_curve(learner, config, n, longest, group)
            result[name] = {
                "description": descriptions[name],
                "by_steps": curve_summary(steps, base),
                "after_minus_before": curve_summary(steps, base - base[0]),
            }
            difference = "meta_minus_baseline" if name == "baseline" else "meta_minus_random"
            result[difference] = curve_summary(steps, meta - base)
        result["adaptation"] = algo.describe()
        result["interval"] = INTERVAL
        return result

    # -- pictures -------------------------------------------------------------------------

    def plot(
        self, algo: MetaLearner, config: TrainConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        return [
            *self.return_plots(config, run_dir, results),
            *self.pictures(algo, self.own_config(config), run_dir, results),
        ]

    def mean_action_episodes(
        self,
        algo: MetaLearner,
        config: Nav2DConfig,
        num_goals: int,
        steps: Sequence[int],
        noise: Any,
    ) -> dict[str, dict[int, np.ndarray]]:
        """What the pictures draw: ``{policy: {k: [G, H + 1, D]}}``, the observations of one
        episode on each of the first ``num_goals`` held-out goals, sampled with ``noise`` (the
        family's, zero for the mean action), by the meta-learned, pretrained and randomly
        initialised policies after each ``k`` of ``steps`` inner steps (each adaptation on that
        goal's sampled support episodes)."""
        learners = {"meta-learned": algo, **self.baselines(algo, config)}
        names = {"baseline": "pretrained", "random_baseline": "random initialisation"}
        episodes: dict[str, dict[int, np.ndarray]] = {}
        for key, learner in learners.items():
            by_steps = {}
            for k in steps:
                batch = self.test_batch(config, num_goals)
                forward = learner.adapt_batch(batch, k)
                with torch.no_grad():
                    observed = batch.simulate(forward, noise).observations[:, :, 0]
                by_steps[k] = observed.transpose(0, 1).numpy()
            episodes[names.get(key, key)] = by_steps
        return episodes

    def pictures(
        self, algo: MetaLearner, config: Nav2DConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        """The family's own pictures beside the returns' (nav2d's paths, the cheetah's
        velocities); none by default."""
        return []

    def return_plots(self, config: TrainConfig, run_dir: Path, results: RunResults) -> list[Path]:
        """``rl_returns.png`` (training) and ``rl_adaptation.png`` (held-out goals), the figures
        every goal-conditioned family draws."""
        from rl.plots import plot_adaptation, plot_returns

        return [
            plot_returns(
                results.path(run_dir, "rl_returns.png"),
                results.metrics,
                {},
                config.algo,
                family=self.name,
            ),
            plot_adaptation(
                results.path(run_dir, "rl_adaptation.png"),
                results.evaluation,
                config.algo,
                family=self.name,
            ),
        ]
