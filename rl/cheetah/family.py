"""``metaopt train cheetah-vel`` and ``cheetah-dir``: declared, not trainable yet.

The groundwork of issue 30 is in place (the environments `rl.cheetah.env`, the batched sampler
`rl.cheetah.sampler` and its bench case); MAML-TRPO on them is the next piece. Until then the
families refuse in one line when a run is configured (`TaskFamily.validate`, before any run
directory is made), and without MuJoCo the command refuses earlier, naming the extra to install.
"""

from __future__ import annotations

from metaopt.training.family import ConfigError, TaskFamily, TrainConfig
from rl.cheetah.config import CHEETAH_DIR, CHEETAH_VEL

__all__ = ["CheetahDirFamily", "CheetahVelFamily"]


class _CheetahFamily(TaskFamily):
    metric = "return"
    higher_is_better = True

    def validate(self, config: TrainConfig) -> None:
        raise ConfigError(
            f"task family {self.name!r} cannot train yet: its environments and sampler exist "
            "(rl.cheetah), its training loop does not (issue 30)"
        )


class CheetahVelFamily(_CheetahFamily, options=CHEETAH_VEL):
    """HalfCheetah running at a goal velocity."""

    name = "cheetah-vel"


class CheetahDirFamily(_CheetahFamily, options=CHEETAH_DIR):
    """HalfCheetah running forwards or backwards."""

    name = "cheetah-dir"
