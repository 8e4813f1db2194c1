"""The loop and vectorised engines of the core agree on every supervised family's tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from supervised_helpers import FIXTURE_SPLIT, omniglot_dir_fixture  # noqa: F401 - fixtures

import metaopt
from metaopt.training.config import resolve_config
from metaopt.training.family import ConfigError, TaskFamily
from supervised.classify.family import ClassifyFamily
from supervised.omniglot.family import OmniglotFamily
from supervised.sine.family import SineFamily


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
    common = {"inner_lr": 0.05, "inner_steps": config.inner_steps, "engine": engine}
    if algo_name.endswith("-anil"):  # ANIL: only the last layer (weight and bias) adapts
        common["adapt"] = [n for n, _ in model.named_parameters()][-2:]
    if algo_name.startswith("metasgd"):
        algo = metaopt.MetaSGD(model, **common)
    elif algo_name == "reptile":
        algo = metaopt.Reptile(model, **common)
    elif algo_name.startswith("imaml"):  # CG to roundoff: the loop's per-task systems and the
        # vectorised engine's block system then have the same solution
        algo = metaopt.IMAML(model, reg=50.0, cg_steps=200, cg_tol=1e-9, **common)
    else:
        algo = metaopt.MAML(model, **common)
    batch = family.sample_tasks(config, np.random.default_rng(0), 3)
    for name in ("support_x", "query_x") + (("support_y", "query_y") if batch.loss != "ce" else ()):
        setattr(batch, name, getattr(batch, name).double())
    metrics = algo.meta_backward(batch)
    grads = [p.grad.clone() for p in algo.meta_parameters()]
    return metrics, grads


@pytest.mark.parametrize("case", ["sine", "sine-minibatch", "classify", "omniglot"])
@pytest.mark.parametrize(
    "algo_name", ["maml", "metasgd", "reptile", "imaml", "maml-anil", "metasgd-anil", "imaml-anil"]
)
def test_loop_and_vmap_engines_agree(case: str, algo_name: str, omniglot_dir: Path) -> None:
    if case == "sine-minibatch" and algo_name.startswith("imaml"):
        pytest.skip("the sine family refuses --algo imaml with --minibatch (tested below)")
    family, overrides = _case(case, omniglot_dir)
    config = resolve_config(family, {"inner_steps": 2, **overrides})
    loop_metrics, loop_grads = _meta_gradients(family, config, algo_name, "loop")
    vmap_metrics, vmap_grads = _meta_gradients(family, config, algo_name, "vmap")
    for name in ("support_before", "support_after", "query"):
        torch.testing.assert_close(getattr(vmap_metrics, name), getattr(loop_metrics, name))
    for g_loop, g_vmap in zip(loop_grads, vmap_grads, strict=True):
        torch.testing.assert_close(g_vmap, g_loop)


def test_imaml_with_minibatches_is_refused() -> None:
    with pytest.raises(ConfigError, match="--minibatch 10 does not apply to --algo imaml"):
        resolve_config(SineFamily(), {"algo": "imaml", "minibatch": 10})
