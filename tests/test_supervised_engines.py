"""The loop and vectorised engines of the core agree on every supervised family's tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from supervised_helpers import FIXTURE_SPLIT, omniglot_dir_fixture  # noqa: F401 - fixtures

import metaopt
from metaopt.training.config import resolve_config
from metaopt.training.family import TaskFamily
from supervised.families import ClassifyFamily, OmniglotFamily, SineFamily


def _case(name: str, data_dir: Path) -> tuple[TaskFamily, dict[str, object]]:
    if name == "sine":
        return SineFamily(), {}
    if name == "sine-minibatch":
        return SineFamily(), {"preset": "reptile", "shots": 25, "minibatch": 10, "inner_steps": 4}
    if name == "classify":
        return ClassifyFamily(), {}
    return OmniglotFamily(), {"data_dir": str(data_dir), **FIXTURE_SPLIT, "filters": 8, "ways": 3}


def _meta_gradients(family: TaskFamily, config, algo_name: str, engine: str):
    model = family.make_model(config).double()
    if algo_name == "metasgd":
        algo = metaopt.MetaSGD(model, inner_lr=0.05, inner_steps=config.inner_steps, engine=engine)
    elif algo_name == "reptile":
        algo = metaopt.Reptile(model, inner_lr=0.05, inner_steps=config.inner_steps, engine=engine)
    else:
        algo = metaopt.MAML(model, inner_lr=0.05, inner_steps=config.inner_steps, engine=engine)
    batch = family.sample_tasks(config, np.random.default_rng(0), 3)
    for name in ("support_x", "query_x") + (("support_y", "query_y") if batch.loss != "ce" else ()):
        setattr(batch, name, getattr(batch, name).double())
    metrics = algo.meta_backward(batch)
    grads = [p.grad.clone() for p in algo.meta_parameters()]
    return metrics, grads


@pytest.mark.parametrize("case", ["sine", "sine-minibatch", "classify", "omniglot"])
@pytest.mark.parametrize("algo_name", ["maml", "metasgd", "reptile"])
def test_loop_and_vmap_engines_agree(case: str, algo_name: str, omniglot_dir: Path) -> None:
    family, overrides = _case(case, omniglot_dir)
    config = resolve_config(family, {"inner_steps": 2, **overrides})
    loop_metrics, loop_grads = _meta_gradients(family, config, algo_name, "loop")
    vmap_metrics, vmap_grads = _meta_gradients(family, config, algo_name, "vmap")
    for name in ("support_before", "support_after", "query"):
        torch.testing.assert_close(getattr(vmap_metrics, name), getattr(loop_metrics, name))
    for g_loop, g_vmap in zip(loop_grads, vmap_grads, strict=True):
        torch.testing.assert_close(g_vmap, g_loop)
