"""A rule written once runs on every engine: a rule the package does not know (MAML++'s learned
per-layer, per-step rates) gives the loop engine's meta-gradient on the vectorised, compiled and
checkpointed engines, and finite differences of its meta-loss; the built-in learners are rules
bound to a model."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from torch import nn

import metaopt
import metaopt.compiled as compiled
from metaopt import testing as mt
from metaopt.rules import MAMLRule, ReptileRule, Rule
from tests.core_helpers import StackedTasks, TanhMLP


class Regression(StackedTasks):
    def __init__(self, num_tasks: int = 3, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
        self.stack(
            rand(num_tasks, 6, 2),
            rand(num_tasks, 6, 1),
            rand(num_tasks, 5, 2),
            rand(num_tasks, 5, 1),
        )


class StepCount(NamedTuple):
    step: int


class PerStepRates(Rule):
    """MAML++'s LSLR: a learned rate for each parameter tensor and each inner step."""

    name, label, color = "lslr-test", "per-step rates", "C6"

    def __init__(self, steps: int = 2) -> None:
        self.steps = steps

    def options(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def learned(self, params, adapts, inner_lr):
        return [
            torch.full((self.steps,), inner_lr, dtype=p.dtype).requires_grad_(p.requires_grad and a)
            for p, a in zip(params, adapts, strict=True)
        ]

    def transform(self, inner_optimizer, inner_lr, learned):
        rates = tuple(learned)

        def init(params: object) -> StepCount:
            return StepCount(0)

        def update(grads, state, *, params=None, inplace=True):
            step = state.step
            updates = tuple(
                None if g is None else -r[step] * g for r, g in zip(rates, grads, strict=True)
            )
            return updates, StepCount(step + 1)

        from torchopt.base import GradientTransformation

        return GradientTransformation(init, update)


def meta_gradient(algo: metaopt.MetaLearner, tasks: Any) -> list[torch.Tensor]:
    for p in algo.meta_parameters():
        p.grad = None
    algo.meta_backward(tasks)
    return [p.grad.detach().clone() for p in algo.meta_parameters()]


def learner(engine: str, **kwargs: Any) -> metaopt.MetaLearner:
    rule = kwargs.pop("rule", None) or PerStepRates(2)
    algo = metaopt.MetaLearner(
        TanhMLP(), rule, inner_lr=0.3, inner_steps=2, engine=engine, **kwargs
    )
    with torch.no_grad():  # rates that differ by layer and step
        for i, rate in enumerate(algo.learned_tensors()):
            rate.copy_(torch.tensor([0.3, 0.1 + 0.05 * i], dtype=rate.dtype))
    return algo


def test_a_new_rule_runs_on_every_engine_with_one_meta_gradient() -> None:
    tasks = Regression()
    want = meta_gradient(learner("loop"), list(tasks))
    for engine, options in (("vmap", {}), ("vmap", {"unroll_checkpoints": 1})):
        got = meta_gradient(learner(engine, **options), tasks)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert len(want) == 4 + 4  # θ and one rate vector per parameter tensor


@pytest.mark.slow
def test_a_new_rule_runs_compiled() -> None:
    tasks = Regression()
    want = meta_gradient(learner("loop"), list(tasks))
    algo = learner("compiled")
    got = meta_gradient(algo, tasks)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert len(compiled.engine_of(algo)) == 1


def test_a_new_rule_matches_finite_differences() -> None:
    algo = learner("auto")
    mt.check_meta_gradient(algo, list(Regression(2, seed=3)), rtol=1e-6, atol=1e-9)
    assert algo.exact_meta_gradient and algo.name == "lslr-test"


def test_the_learned_state_checkpoints_and_restores() -> None:
    algo, other = learner("vmap"), learner("vmap")
    with torch.no_grad():
        algo.learned_tensors()[0].fill_(0.7)
    other.load_learned_state(algo.learned_state())
    torch.testing.assert_close(
        other.learned_tensors()[0], torch.full((2,), 0.7, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("rule", "cls", "kwargs"),
    [
        (MAMLRule(), metaopt.MAML, {}),
        (MAMLRule(first_order=True), metaopt.MAML, {"first_order": True}),
        (ReptileRule(), metaopt.Reptile, {}),
    ],
)
@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_a_learner_is_its_rule_bound_to_a_model(
    rule: Rule, cls: type, kwargs: dict, engine: str
) -> None:
    tasks = Regression()
    tasks = tasks if engine == "vmap" else list(tasks)
    generic = metaopt.MetaLearner(TanhMLP(), rule, inner_lr=0.3, inner_steps=2, engine=engine)
    named = cls(TanhMLP(), 0.3, 2, engine=engine, **kwargs)
    for a, b in zip(meta_gradient(generic, tasks), meta_gradient(named, tasks), strict=True):
        assert torch.equal(a, b)
    assert generic.name == named.name == rule.name


def test_a_learner_needs_a_rule() -> None:
    with pytest.raises(TypeError, match="rule must be a metaopt.rules.Rule, got str"):
        metaopt.MetaLearner(nn.Linear(2, 1), "maml")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "rule",
    [
        MAMLRule(),
        MAMLRule(first_order=True),
        metaopt.rules.MetaSGDRule(),
        ReptileRule(),
        metaopt.rules.IMAMLRule(),
    ],
)
def test_a_built_in_rule_is_named_and_coloured_as_its_registry_entry(rule: Rule) -> None:
    from metaopt.registry import algorithm

    spec = algorithm(rule.name)
    assert (rule.label, rule.color) == (spec.label, spec.color)
    assert spec.outer == rule.outer and spec.exact == rule.exact
