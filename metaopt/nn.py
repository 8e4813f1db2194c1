"""The fully connected network every domain builds its models from, and its activations by name.

The supervised families' regressors and classifiers (`mlp` with an output layer) and the RL
policies' torsos (`mlp` without one) are the same stack of ``nn.Linear`` layers, each followed by
the hidden activation. Layers are created in order, input to output, so a network seeded the same
way starts from the same weights whoever builds it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["ACTIVATIONS", "mlp"]

#: Hidden activations by name (the domains' configs list the same names without importing torch).
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int | None = None,
    activation: str = "relu",
) -> nn.Sequential:
    """A fully connected network ``in -> hidden[0] -> ... -> out`` with ``activation`` after every
    hidden layer.

    The MAML sine network is ``mlp(1, [40, 40], 1, "relu")`` (Finn et al., 2017); the Reptile demo's
    is ``mlp(1, [64, 64], 1, "tanh")`` (Nichol et al., 2018, whose demo notes that tanh works
    slightly better than the paper's ReLU). ``hidden=[]`` is a linear (logistic) model.
    ``out_features=None`` ends at the last hidden activation: a torso for heads to read (with
    ``hidden=[]`` too, the identity).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), ACTIVATIONS[activation]()]
        width = size
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)
