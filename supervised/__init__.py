"""Supervised few-shot task families: the pieces they share, and one room per family.

Shared (this folder): `supervised.config` (every family's settings, no torch), `supervised.batch`
(a meta-batch as stacked tensors), `supervised.models` (conv4, seeded construction; the MLPs are
`metaopt.nn.mlp`), `supervised.adaptation` and `supervised.evaluation` (held-out curves against a
pretrained baseline), `supervised.plots`, and `supervised.family` (`SupervisedFamily`).

Rooms, one per family (each imports the shared pieces, never another room): `supervised.sine`,
`supervised.classify`, `supervised.omniglot`.
"""
