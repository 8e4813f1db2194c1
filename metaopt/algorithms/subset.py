"""Which parameters the inner loop adapts: the ``adapt=`` option of every algorithm (ANIL).

Raghu et al. (2020), "Rapid Learning or Feature Reuse? Towards Understanding the Effectiveness
of MAML" (ANIL): adapting only the head in the inner loop keeps most of MAML's accuracy. With a
subset $A$ of the parameters adapted, the inner update is

$$
\\theta'_A = \\theta_A - \\alpha\\nabla_{\\theta_A}\\mathcal{L}^s(\\theta_A, \\theta_{\\bar A}),
\\qquad \\theta'_{\\bar A} = \\theta_{\\bar A},
$$

and the meta-gradient still reaches $\\theta_{\\bar A}$ (it is meta-learned, not adapted).
Both engines implement it by handing the inner update ``None`` as the gradient of a parameter
outside $A$, exactly as for a frozen one, so no update touches it and the inner backward
never runs through the part of the network only it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from torch import nn

__all__ = ["Adapt", "adapt_mask", "anil_heads", "head_prefix", "resolve_adapt"]

#: What ``adapt=`` accepts: ``None`` (every parameter), a name or a list of names as
#: ``model.named_parameters()`` gives them (a name may also be a submodule's prefix: ``"head"``
#: selects ``head.weight`` and ``head.bias``; any collection, a set too), or a predicate ``(name, parameter) -> bool``.
Adapt = str | Collection[str] | Callable[[str, nn.Parameter], bool] | None


def resolve_adapt(model: nn.Module, adapt: Adapt) -> frozenset[str] | None:
    """The names of the trainable parameters the inner loop adapts; ``None`` for all of them
    (also when ``adapt`` selects every trainable parameter, which is the full algorithm).

    Raises:
        TypeError: ``adapt`` is not one of the accepted forms.
        ValueError: a name matches no parameter or submodule, or no trainable parameter is
            selected.
    """
    if adapt is None:
        return None
    named = dict(model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    if callable(adapt):
        chosen = {n for n, p in named.items() if adapt(n, p)}
    else:
        entries = [adapt] if isinstance(adapt, str) else list(adapt)
        if not entries or not all(isinstance(e, str) and e for e in entries):
            raise TypeError(
                "adapt must be None, a parameter name or submodule prefix, a non-empty list of "
                f"them, or a predicate (name, parameter) -> bool; got {adapt!r}"
            )
        chosen = set()
        for entry in entries:
            found = {n for n in named if n == entry or n.startswith(entry + ".")}
            if not found:
                raise ValueError(
                    f"adapt: {entry!r} names no parameter or submodule of the model; its "
                    f"parameters are {', '.join(named)}"
                )
            chosen |= found
    chosen &= trainable
    if not chosen:
        raise ValueError(
            f"adapt={adapt!r} selects no trainable parameter (requires_grad=True): the inner "
            "loop would have nothing to adapt"
        )
    return None if chosen == trainable else frozenset(chosen)


def head_prefix(model: nn.Module) -> str:
    """The name of the last submodule that holds trainable parameters itself: the head that
    ANIL adapts (``"4"`` for an ``nn.Sequential`` ending in ``nn.Linear``)."""
    last = None
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            last = name
    if not last:
        raise ValueError(
            "the model has no submodule holding trainable parameters below its root, so it "
            "has no head to adapt on its own; name the parameters with adapt= instead"
        )
    return last


def anil_heads(model: nn.Module) -> list[str]:
    """What ``--adapt anil`` adapts: the submodules the model names in an ``anil_heads``
    attribute, when it has one (a model with several outputs: a policy's action head, not its
    critic's, which `head_prefix` would find last), else `head_prefix`'s last layer.

    Raises:
        ValueError: a declared name is not a submodule holding trainable parameters.
    """
    declared = getattr(model, "anil_heads", None)
    if declared is None:
        return [head_prefix(model)]
    modules = dict(model.named_modules())
    names = [declared] if isinstance(declared, str) else list(declared)
    for name in names:
        module = modules.get(name) if isinstance(name, str) else None
        if module is None or not any(p.requires_grad for p in module.parameters()):
            raise ValueError(
                f"{type(model).__name__}.anil_heads names {name!r}, which is not a submodule "
                "holding trainable parameters"
            )
    return names


def adapt_mask(model: nn.Module, adapted: frozenset[str] | None) -> list[bool] | None:
    """``adapted`` as one flag per parameter in ``parameters()`` order (``None``: all)."""
    if adapted is None:
        return None
    return [name in adapted for name, _ in model.named_parameters()]
