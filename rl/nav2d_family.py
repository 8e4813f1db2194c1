"""``metaopt train nav2d``: MAML's 2-D navigation (Finn et al. 2017, §5.3) with a Gaussian policy.

The paper's settings: goals uniform on [−0.5, 0.5]², horizon 100, 20 trajectories per gradient
step, 20 tasks per meta-batch, inner learning rate 0.1 (vanilla policy gradient), a policy MLP
with two hidden layers of 100 ReLU units (Finn et al. 2017, §5.3 and appendix A.2, as the issue
quotes them). Its outer optimiser is TRPO, and so is the default here (``--outer-optimizer
auto``: MAML-TRPO, `rl.trust_region`, with pytorch-maml-rl's settings and its linear
feature baseline; Adam, annealed linearly to 0 over the run, for Reptile). The inner loss is the
A2C loss with log-densities (`rl.continuous`), its advantages standardised per task (as
pytorch-maml-rl does), so that the inner step at lr 0.1 does not scale with the returns.

The final evaluation (``eval.json``, the ``mdp`` family's shape) has the return after 0..3 inner
steps on ``eval_tasks`` held-out goals, the paired differences after − before, and two baselines
adapted by plain SGD at ``inner_lr``: a *pretrained* policy (the paper's: trained on the goals
without adaptation, ``pretrain_iterations`` A2C steps of Adam at ``outer_lr``), against which
``meta_minus_baseline`` is paired, and the *random initialisation* the meta-training started
from (``random_baseline``, with its own ``meta_minus_random``). ``nav2d_trajectories.png`` is
the paper's picture: mean-action trajectories before and after 1 and 3 steps, for a few
held-out goals, of the three policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from metaopt.algorithms import MetaLearner
from metaopt.training.distributed import DistInfo, on_main
from metaopt.training.family import EvalRequest, RunResults, TrainConfig
from metaopt.trust_region import TrustRegionSettings
from rl.config import NAV2D, Nav2DConfig
from rl.continuous import GaussianMLPPolicy, GaussianNoise
from rl.evaluation import INTERVAL, curve_summary
from rl.family import A2CFamily, config_as
from rl.nav2d import Nav2DTaskBatch, sample_goals
from rl.trust_region import MetaPolicyRegion

__all__ = ["EVAL_STEPS", "Nav2DConfig", "Nav2DFamily"]

#: Inner-step counts of the final evaluation (plus the trained number of steps).
EVAL_STEPS = (0, 1, 2, 3)
#: Steps drawn in the trajectory picture.
PICTURE_STEPS = (0, 1, 3)

_EVAL_STREAM = 0x2D6E
_SAMPLING_STREAM = 0x2D5A
_PRETRAIN_STREAM = 0x2D97


def _nav(config: TrainConfig) -> Nav2DConfig:
    return config_as(config, Nav2DConfig, "the nav2d family")


class Nav2DFamily(A2CFamily, options=NAV2D):
    """MAML's 2-D navigation: reach a goal in the plane, a Gaussian policy."""

    name = "nav2d"
    metric = "return"
    higher_is_better = True
    eval_steps = EVAL_STEPS

    def __init__(self) -> None:
        self._pretrained: dict[str, dict[str, torch.Tensor]] = {}

    def make_model(self, config: TrainConfig) -> nn.Module:
        config = _nav(config)
        return GaussianMLPPolicy(
            2,
            2,
            config.hidden_sizes,
            config.init_log_std,
            config.shared_torso,
            config.critic_time,
            config.activation,
        )

    def batch(self, config: Nav2DConfig, goals: np.ndarray, seed: int) -> Nav2DTaskBatch:
        generator = torch.Generator().manual_seed(seed)
        settings = config.a2c_settings()
        return Nav2DTaskBatch(
            goals,
            settings,
            generator,
            config.normalize_advantages,
            config.baseline,
            config.critic_time,
        )

    def sample_tasks(
        self, config: TrainConfig, rng: np.random.Generator, num_tasks: int
    ) -> Nav2DTaskBatch:
        config = _nav(config)
        goals = sample_goals(rng, num_tasks)
        return self.batch(config, goals, int(rng.integers(2**62)))

    def test_goals(self, config: Nav2DConfig, num_tasks: int) -> np.ndarray:
        """The first ``num_tasks`` held-out goals of ``config.eval_seed`` (a fixed set)."""
        return sample_goals(np.random.default_rng([_EVAL_STREAM, config.eval_seed]), num_tasks)

    def test_batch(self, config: Nav2DConfig, num_tasks: int) -> Nav2DTaskBatch:
        """Fresh held-out goals, with the same sampling noise at every evaluation."""
        goals = self.test_goals(config, num_tasks)
        return self.batch(config, goals, _SAMPLING_STREAM + config.eval_seed)

    def trust_region(
        self, algo: MetaLearner, config: TrainConfig, tasks: Sequence[Any]
    ) -> tuple[MetaPolicyRegion, TrustRegionSettings]:
        """MAML-TRPO's surrogate and divergence on the meta-batch (`rl.trust_region`)."""
        if not isinstance(tasks, Nav2DTaskBatch):
            raise TypeError(f"nav2d's trust region needs a Nav2DTaskBatch, got {type(tasks)}")
        return MetaPolicyRegion(algo, tasks), _nav(config).trust_region_settings()

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
        rng = np.random.default_rng([_PRETRAIN_STREAM, config.seed])
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
        config, group = _nav(config), request.group
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

    def trajectories(
        self, algo: MetaLearner, config: Nav2DConfig, num_goals: int = 3
    ) -> dict[str, Any]:
        """Mean-action paths ``{policy: {steps: [G, H + 1, 2]}}`` on the first held-out goals
        after 0, 1 and 3 inner steps (each adaptation on that goal's sampled support episodes)."""
        learners = {"meta-learned": algo, **self.baselines(algo, config)}
        names = {"baseline": "pretrained", "random_baseline": "random initialisation"}
        paths: dict[str, Any] = {}
        for key, learner in learners.items():
            by_steps = {}
            for k in PICTURE_STEPS:
                batch = self.test_batch(config, num_goals)
                forward = learner.adapt_batch(batch, k)
                zero = GaussianNoise(torch.zeros(config.horizon, num_goals, 1, 2))
                with torch.no_grad():
                    observed = batch.simulate(forward, zero).observations[:, :, 0]
                by_steps[k] = observed.transpose(0, 1).numpy()
            paths[names.get(key, key)] = by_steps
        return {"goals": self.test_goals(config, num_goals), "paths": paths}

    def plot(
        self, algo: MetaLearner, config: TrainConfig, run_dir: Path, results: RunResults
    ) -> list[Path]:
        from rl.plots import plot_nav2d

        trajectories = self.trajectories(algo, _nav(config))
        return [
            *self.return_plots(config, run_dir, results),
            plot_nav2d(results.path(run_dir, "nav2d_trajectories.png"), trajectories),
        ]

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
