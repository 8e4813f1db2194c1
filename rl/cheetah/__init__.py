"""HalfCheetah velocity and direction (MuJoCo), the locomotion tasks of meta-RL papers.

* `rl.cheetah.config`: the families' settings (no torch, no MuJoCo: the command line reads them);
* `rl.cheetah.env`: the Gymnasium environments ``HalfCheetahVel-v0`` and ``HalfCheetahDir-v0``;
* `rl.cheetah.sampler`: a whole meta-batch of episodes simulated together;
* `rl.cheetah.family`: ``metaopt train cheetah-vel`` and ``cheetah-dir`` (goal-conditioned
  families, `rl.goal_family.GoalFamily`).

Its ``metaopt bench`` case is `benchmarks.bench_cheetah`.

Everything but the configuration needs the optional extra: ``pip install -e '.[mujoco]'``.
"""
