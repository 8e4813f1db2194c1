"""Configuration fields the supervised families share (their checks are :mod:`metaopt.options`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from metaopt.options import check_int, check_real, flag
from metaopt.training.family import TrainConfig, option

__all__ = ["SupervisedConfig", "paper_presets"]


def paper_presets() -> Any:
    """The ``preset`` field of a family whose presets are the two papers' settings."""
    return option("maml", "named preset: maml (Finn et al. 2017) or reptile (Nichol et al. 2018)")


@dataclass
class SupervisedConfig(TrainConfig):
    """Fields of the pretrained baseline that every supervised evaluation compares against.

    The baseline is the comparison Finn et al. (2017) draw for sine regression: the same network
    trained by ordinary supervised learning on tasks pooled together, then fine-tuned on each
    held-out task's support set exactly like the meta-learned model. It is trained when the run is
    evaluated, from ``baseline_seed``, and cached as ``baseline.pt`` in the run directory.
    """

    baseline_steps: int = option(
        2000, "Adam steps of the pretrained baseline (0: the untrained initialisation)"
    )
    baseline_lr: float = option(1e-3, "Adam learning rate of the pretrained baseline")
    baseline_tasks: int = option(25, "tasks pooled into each baseline training step")
    baseline_seed: int = option(0, "seed of the baseline's initialisation and training tasks")

    #: Fields that only say how a trained model is evaluated (or where the data lives): a
    #: family's own fields other than these are part of a cached baseline's key.
    EVALUATION_ONLY: ClassVar[tuple[str, ...]] = ()

    #: The baseline is trained at evaluation time, so its settings may change on ``--resume``.
    RESUMABLE: ClassVar[tuple[str, ...]] = (
        *TrainConfig.RESUMABLE,
        "baseline_steps",
        "baseline_lr",
        "baseline_tasks",
        "baseline_seed",
    )

    def validate(self) -> None:
        super().validate()
        check_int(flag("baseline_steps"), self.baseline_steps, 0)
        check_int(flag("baseline_tasks"), self.baseline_tasks, 1)
        check_int(flag("baseline_seed"), self.baseline_seed, 0)
        check_real(flag("baseline_lr"), self.baseline_lr, low=0, low_open=True)
