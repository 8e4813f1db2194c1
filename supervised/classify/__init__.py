"""Binary classification with a random linear boundary per task: ``metaopt train classify``.

* `supervised.classify.tasks`: the task distribution;
* `supervised.classify.family`: ``metaopt train classify``.
"""
