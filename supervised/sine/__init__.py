"""Sine-wave regression, the toy problem of MAML and Reptile: ``metaopt train sine``.

* `supervised.sine.tasks`: the task distribution, the presets' sampling, the 10-point protocol;
* `supervised.sine.family`: ``metaopt train sine``;
* `supervised.sine.plots`: the Reptile demo's figure of a run.
"""
