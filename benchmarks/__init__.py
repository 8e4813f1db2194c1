"""Measurement code: ``metaopt bench``'s cases and the scripts behind the numbers in docs/.

Installed with metaopt but outside the library and the domains: nothing in ``metaopt``,
``supervised`` or ``rl`` imports it (``tests/test_architecture.py``), and it imports them, never
the command line. Each script runs as ``python -m benchmarks.NAME`` (its docstring has the
flags and the page that quotes it).

``metaopt bench``'s cases (the ``metaopt.benchmarks`` entry points in ``pyproject.toml``):

* `benchmarks.bench_sine`: sine, MAML at 1 and 5 inner steps, Meta-SGD, Reptile, iMAML;
* `benchmarks.bench_omniglot`: Omniglot 5-way 1-shot conv4;
* `benchmarks.bench_images`: conv4 5-way 1-shot at 28×28 and 84×84 (``images-conv4-5w1s``);
* `benchmarks.bench_mdp`: one outer iteration of TorchOpt's MAML-RL example;
* `benchmarks.bench_cheetah`: one HalfCheetah meta-batch's support sampling.

The ``mdp`` family's results and references (docs/results.md, docs/performance.md):
`benchmarks.mdp_results`, `benchmarks.mdp_speed`, `benchmarks.mdp_ceiling`.

The engines (docs/performance.md, docs/algorithms.md, docs/distributed.md, docs/results.md):
`benchmarks.compiled_overhead`, `benchmarks.compiled_reptile`, `benchmarks.compiled_rl`,
`benchmarks.compiled_wrapper`, `benchmarks.matmul_orientation`, `benchmarks.checkpoint_unroll`,
`benchmarks.unroll_memory`, `benchmarks.imaml_memory`, `benchmarks.imaml_spectrum`,
`benchmarks.anil_time`, `benchmarks.evaluate_time`, `benchmarks.cheetah_physics_floor`,
`benchmarks.images_layouts`.
"""
