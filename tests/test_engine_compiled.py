"""The compiled engine gives the loop engine's meta-gradients and compiles once per shape.

Compiling is slow (dynamo traces the meta-iteration for ~10 s even on a tiny model, inductor
generates code for a minute or more on this machine), so the default suite compiles one learner,
Meta-SGD second order (θ and α, differentiated through the inner gradient), with dynamo's
``eager`` backend: dynamo's trace of the functional meta-gradient, run as traced. The module-scoped
fixture shares it across the tests. The full grid through inductor is ``slow``.
"""

from __future__ import annotations

import copy
import types
import warnings
from collections.abc import Iterator

import pytest
import torch
from test_engine import NAMES, RegressionBatch, build, meta_gradient, mlp
from torch import nn

import metaopt
import metaopt.compiled as compiled
from metaopt.algorithms import NegativeRateWarning
from metaopt.algorithms.maml import lowest_rate

DEFAULT_OPTIONS = compiled.compile_options()


def fast_options() -> dict[str, object]:
    return {**DEFAULT_OPTIONS, "backend": "eager"}


def fresh(*learners: metaopt.MetaLearner) -> None:
    for learner in learners:
        for p in learner.meta_parameters():
            p.grad = None


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def metasgd() -> Iterator[tuple[metaopt.MetaLearner, metaopt.MetaLearner]]:
    """A compiled Meta-SGD learner (compiled by the first test that calls it) and its loop twin."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled, "compile_options", fast_options)
        yield (
            build("metasgd", mlp(torch.float32), "compiled", 2),
            build("metasgd", mlp(torch.float32), "loop", 2),
        )


def test_compiled_metasgd_matches_the_loop_engine(metasgd) -> None:
    algo, loop = metasgd
    tasks = RegressionBatch(5, torch.float32)
    fresh(algo, loop)
    got, metrics = meta_gradient(algo, tasks)
    want, loop_metrics = meta_gradient(loop, tasks)
    assert algo.last_engine == "compiled"
    assert relative(got, want) <= 1e-6
    for field in ("support_before", "support_after", "query"):
        torch.testing.assert_close(
            getattr(metrics, field), getattr(loop_metrics, field), rtol=1e-5, atol=0
        )


def test_a_new_batch_of_the_same_shapes_does_not_recompile(metasgd) -> None:
    algo, loop = metasgd
    for seed in (1, 2):
        tasks = RegressionBatch(5, torch.float32, seed=seed)
        fresh(algo, loop)
        got, _ = meta_gradient(algo, tasks)
        want, _ = meta_gradient(loop, tasks)
        assert relative(got, want) <= 1e-6
    (engine,) = compiled.engine_of(algo)
    assert engine.compiles == 1
    assert engine.compile_seconds is not None and engine.compile_seconds > 0


def test_compiled_engine_accumulates_scales_and_restores(metasgd) -> None:
    from metaopt.testing import assert_state_restored

    algo, _ = metasgd
    tasks = RegressionBatch(5, torch.float32, seed=3)
    fresh(algo)
    once, _ = meta_gradient(algo, tasks)
    # one more call, scaled by 3: .grad holds 1 + 3 = 4 times the meta-gradient
    algo.meta_backward(tasks, scale=3 / len(tasks))
    twice = torch.cat([p.grad.reshape(-1) for p in algo.meta_parameters()])
    torch.testing.assert_close(twice, 4 * once, rtol=1e-5, atol=1e-7)
    # the weight is an input of the compiled function, not a constant of its graph
    assert compiled.engine_of(algo)[0].compiles == 1
    assert_state_restored(algo.model, algo.inner_optimizer, lambda: algo.meta_backward(tasks))


class Scaled(nn.Module):
    """An MLP whose output is multiplied by a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(torch.float32)
        self.register_buffer("scale", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def test_a_frozen_parameter_or_a_replaced_buffer_builds_the_engine_again(monkeypatch) -> None:
    # The compiled function gets detached tensors, so dynamo's guards cannot see a parameter
    # frozen or a buffer replaced after the engine was built: the engine itself must.
    monkeypatch.setattr(compiled, "compile_options", fast_options)
    torch.manual_seed(0)
    model = Scaled().eval()  # in training mode, a module's buffers count as written
    algo = metaopt.MAML(model, inner_lr=0.05, inner_steps=1, engine="compiled")
    twin = metaopt.MAML(copy.deepcopy(model), inner_lr=0.05, inner_steps=1, engine="vmap")
    tasks = RegressionBatch(4, torch.float32)
    algo.meta_backward(tasks)
    for learner in (algo, twin):
        learner.model.net[0].weight.requires_grad_(False)
        learner.model.scale = torch.tensor(2.0)  # a new tensor under the buffer's name
        for p in learner.model.parameters():
            p.grad = None
        learner.meta_backward(tasks)
    assert algo.model.net[0].weight.grad is None
    for got, want in zip(algo.model.parameters(), twin.model.parameters(), strict=True):
        if want.grad is not None:
            assert relative(got.grad, want.grad) <= 1e-6
    assert len(compiled.engine_of(algo)) == 2


#: A global of this (user) module that a model's forward reads; its guard must stay.
OFFSET = 0.0


class Offset(nn.Module):
    """An MLP whose output is scaled by a Python attribute and shifted by a module global."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(torch.float32)
        self.gain = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.gain + OFFSET


def test_the_guards_on_what_the_user_brings_stay(monkeypatch) -> None:
    """The engine drops dynamo's guards on torch's, metaopt's and Python's own globals only: a
    changed attribute of the model or global of the user's module still recompiles, so the
    meta-gradient follows it."""
    monkeypatch.setattr(compiled, "compile_options", fast_options)
    torch.manual_seed(0)
    algo = metaopt.MAML(Offset(), inner_lr=0.05, inner_steps=1, engine="compiled")
    twin = metaopt.MAML(copy.deepcopy(algo.model), inner_lr=0.05, inner_steps=1, engine="vmap")
    tasks = RegressionBatch(4, torch.float32)
    algo.meta_backward(tasks)
    (engine,) = compiled.engine_of(algo)
    monkeypatch.setitem(globals(), "OFFSET", OFFSET)  # restored after the test
    changes = (lambda m: setattr(m, "gain", 2.5), lambda m: globals().update(OFFSET=0.5))
    for compiles, change in enumerate(changes, start=2):
        for learner in (algo, twin):
            change(learner.model)
        fresh(algo, twin)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the recompile warning (said once)
            got, _ = meta_gradient(algo, tasks)
        want, _ = meta_gradient(twin, tasks)
        assert relative(got, want) <= 1e-6
        assert engine.compiles == compiles


def test_the_guard_filter_drops_library_globals_only() -> None:
    def guard(name: str, is_global: bool = True) -> types.SimpleNamespace:
        return types.SimpleNamespace(name=name, is_global=is_global)

    dropped = [
        "G['torch'].nn",
        "G['__import_torch']._functorch",
        "G['__import_torch_dot_nn_dot_modules_dot_linear'].F",
        "G['__import_metaopt_dot_engine'].torch",
        "G['__builtins_dict___2']['len']",
    ]
    kept = [
        "G['torchvision'].ops",
        "G['__import_torchvision_dot_ops']",
        "G['__import_metaopt_extras'].x",
        "G['__import_test_engine_compiled'].OFFSET",
        "G['OFFSET']",
    ]
    guards = [guard(name) for name in dropped + kept] + [guard("L['theta'][0]", False)]
    keep = compiled.library_guards_dropped(guards)
    assert keep == [False] * len(dropped) + [True] * (len(kept) + 1)


def test_a_negative_rate_warns_once_from_the_compiled_graph(monkeypatch) -> None:
    # The compiled graph computes Meta-SGD's lowest rate; the warning is the eager engines'.
    monkeypatch.setattr(compiled, "compile_options", fast_options)
    algo = build("metasgd", mlp(torch.float32), "compiled", 1)
    tasks = RegressionBatch(3, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        algo.meta_backward(tasks)  # all rates positive: silent
    assert lowest_rate(algo) > 0
    with torch.no_grad():
        algo.inner_lrs[3][0] = -0.25  # the second layer's bias
    with pytest.warns(NegativeRateWarning, match=r"rate of 2\.bias .*-0\.25"):
        algo.meta_backward(tasks)
    assert lowest_rate(algo) == -0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        algo.meta_backward(tasks)  # once


def test_equal_directions_get_a_gradient_each() -> None:
    # The compiled function may return one buffer for two parameters whose gradients are the
    # same expression; an in-place step on one .grad must not change the other.
    a, b, c = (nn.Parameter(torch.zeros(3)) for _ in range(3))
    c.grad = torch.ones(3)
    direction = torch.full((3,), 2.0)
    compiled._accumulate([a, b, c], (direction, direction, direction))
    assert a.grad is not b.grad
    a.grad.mul_(0)
    torch.testing.assert_close(b.grad, torch.full((3,), 2.0))
    torch.testing.assert_close(c.grad, torch.full((3,), 3.0))


def test_another_meta_batch_size_recompiles_with_a_warning(metasgd) -> None:
    algo, loop = metasgd
    tasks = RegressionBatch(3, torch.float32, seed=4)
    fresh(algo, loop)
    with pytest.warns(UserWarning, match="compiled its meta-iteration again"):
        got, _ = meta_gradient(algo, tasks)
    want, _ = meta_gradient(loop, tasks)
    assert relative(got, want) <= 1e-6
    assert compiled.engine_of(algo)[0].compiles == 2


def test_compiled_reptile_defers_its_metrics_to_a_second_graph(monkeypatch) -> None:
    """Reptile's direction needs neither the query losses nor the support losses after
    adaptation: the meta-gradient's graph leaves them out, and the metrics' graph computes them
    (the loop engine's values) on first access, once for both."""
    monkeypatch.setattr(compiled, "compile_options", fast_options)
    algo = build("reptile", mlp(torch.float32), "compiled", 2)
    loop = build("reptile", mlp(torch.float32), "loop", 2)
    tasks = RegressionBatch(5, torch.float32)
    got, metrics = meta_gradient(algo, tasks)
    want, loop_metrics = meta_gradient(loop, tasks)
    assert relative(got, want) <= 1e-6
    (engine,) = compiled.engine_of(algo)
    assert (engine.compiles, engine.metric_compiles) == (1, 0)
    for field in ("query", "support_after", "support_before"):
        torch.testing.assert_close(
            getattr(metrics, field), getattr(loop_metrics, field), rtol=1e-5, atol=0
        )
    assert (engine.compiles, engine.metric_compiles) == (1, 1)
    # a second batch of the same shapes, its metrics read under no_grad: no recompile
    other = RegressionBatch(5, torch.float32, seed=1)
    fresh(algo, loop)
    _, metrics = meta_gradient(algo, other)
    _, loop_metrics = meta_gradient(loop, other)
    with torch.no_grad():
        torch.testing.assert_close(metrics.query, loop_metrics.query, rtol=1e-5, atol=0)
    assert (engine.compiles, engine.metric_compiles) == (1, 1)


def test_plain_sgd_is_torchopts_sgd() -> None:
    """The compiled engine's inner SGD (no optree) takes TorchOpt's steps bit for bit."""
    import torchopt

    from metaopt.inner import plain_sgd

    g = torch.Generator().manual_seed(0)
    params = (torch.randn(3, 4, generator=g), torch.randn(5, generator=g))
    ours, theirs = plain_sgd(0.03), torchopt.sgd(0.03)
    mine, reference = params, params
    state, reference_state = ours.init(mine), theirs.init(reference)
    for _ in range(3):
        grads = tuple(torch.randn(p.shape, generator=g) for p in params)
        updates, state = ours.update(grads, state, params=mine, inplace=False)
        expected, reference_state = theirs.update(
            grads, reference_state, params=reference, inplace=False
        )
        mine = tuple(p + u for p, u in zip(mine, updates, strict=True))
        reference = tuple(p + u for p, u in zip(reference, expected, strict=True))
    for a, b in zip(mine, reference, strict=True):
        assert torch.equal(a, b)
    assert ours.update((None,), state)[0] == (None,)


def test_compiled_refuses_lists_and_training_batchnorm() -> None:
    tasks = RegressionBatch(3, torch.float32)
    with pytest.raises(TypeError, match="engine='compiled' cannot run this meta-batch"):
        metaopt.MAML(mlp(torch.float32), engine="compiled").meta_backward(list(tasks))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    with pytest.raises(TypeError, match="buffers change during adaptation"):
        metaopt.MAML(net, engine="compiled").meta_backward(tasks)


@pytest.mark.slow
# the compiled engine refuses ANIL's subsets (test_anil.py checks the refusal)
@pytest.mark.parametrize("name", [name for name in NAMES if not name.endswith("-anil")])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_compiled_engine_agrees_with_the_loop_engine(
    name: str, dtype: torch.dtype, tolerance: float
) -> None:
    """Every algorithm × first order × inner optimiser, through inductor (a compile each)."""
    tasks = RegressionBatch(5, dtype)
    want, loop_metrics = meta_gradient(build(name, mlp(dtype), "loop", 2), tasks)
    algo = build(name, mlp(dtype), "compiled", 2)
    got, metrics = meta_gradient(algo, tasks)
    if name == "maml-adam" and dtype == torch.float32:
        tolerance = 1e-5  # as in test_engine: Adam's second derivative amplifies float32 rounding
    assert algo.last_engine == "compiled"
    assert relative(got, want) <= tolerance
    for field in ("support_before", "support_after", "query"):
        torch.testing.assert_close(
            getattr(metrics, field), getattr(loop_metrics, field), rtol=10 * tolerance, atol=0
        )


@pytest.mark.parametrize(("hits", "misses", "want"), [(2, 0, "warm"), (1, 1, "cold")])
def test_compile_record_says_whether_inductor_generated_code(
    monkeypatch, hits: int, misses: int, want: str
) -> None:
    """Inductor's cache counters around the first call decide: a miss means generated code."""
    monkeypatch.setattr(compiled, "compile_options", fast_options)
    counts = iter([(5, 7), (5 + hits, 7 + misses)])
    monkeypatch.setattr(compiled, "_fx_graph_cache", lambda: next(counts))
    algo = build("reptile", mlp(torch.float32), "compiled", 1)
    assert compiled.compile_record(algo) == {"compile_s": None, "compile_cache": None}
    algo.meta_backward(RegressionBatch(3, torch.float32))
    algo.meta_backward(RegressionBatch(3, torch.float32, seed=1))  # no more counter reads
    record = compiled.compile_record(algo)
    assert record["compile_cache"] == want and record["compile_s"] > 0


def test_inductor_generates_code_with_the_engines_inductor_config(monkeypatch) -> None:
    """The engine's ``inductor_config`` (the C++ wrapper, the matmul-orientation pass) is in force
    while inductor compiles, and only then."""
    import torch._inductor.config as inductor_config

    from metaopt.matmul_orientation import MatmulOrientation

    seen: list[tuple[bool, object]] = []

    def fake_inductor(graph: torch.fx.GraphModule, example_inputs: list[object]) -> object:
        seen.append((inductor_config.cpp_wrapper, inductor_config.post_grad_custom_post_pass))
        return graph.forward

    lookup = torch._dynamo.lookup_backend
    monkeypatch.setattr(
        torch._dynamo,
        "lookup_backend",
        lambda name: fake_inductor if name == "inductor" else lookup(name),
    )
    assert DEFAULT_OPTIONS["backend"] == "inductor"
    assert set(DEFAULT_OPTIONS["inductor_config"]) == {"cpp_wrapper", "post_grad_custom_post_pass"}
    # the engine's own options, whatever a module fixture has patched in for speed
    monkeypatch.setattr(compiled, "compile_options", lambda: dict(DEFAULT_OPTIONS))
    before = (inductor_config.cpp_wrapper, inductor_config.post_grad_custom_post_pass)
    algo = build("maml", mlp(torch.float32), "compiled", 1)
    algo.meta_backward(RegressionBatch(3, torch.float32))
    ((wrapper, orientation),) = seen
    assert wrapper is True and isinstance(orientation, MatmulOrientation)
    assert (inductor_config.cpp_wrapper, inductor_config.post_grad_custom_post_pass) == before


def test_every_product_swapped_by_the_orientation_pass_gives_the_same_meta_gradient(
    monkeypatch,
) -> None:
    """Inductor compiles the second-order meta-iteration with every ``mm``/``bmm`` rewritten to
    its swapped orientation (a timer that always prefers it): same meta-gradient and metrics."""
    from test_matmul_orientation import fixed_timer

    from metaopt.matmul_orientation import MatmulOrientation

    orientation = MatmulOrientation(timer=fixed_timer(direct=2.0, swapped=1.0))
    swap_all = {"cpp_wrapper": True, "post_grad_custom_post_pass": orientation}
    monkeypatch.setattr(
        compiled,
        "compile_options",
        lambda: {**DEFAULT_OPTIONS, "inductor_config": swap_all},
    )
    dtype, tolerance = torch.float64, 1e-12
    tasks = RegressionBatch(4, dtype)
    want, loop_metrics = meta_gradient(build("maml", mlp(dtype), "loop", 2), tasks)
    algo = build("maml", mlp(dtype), "compiled", 2)
    with torch._inductor.config.patch(fx_graph_cache=False):  # the pass runs on every compile
        got, metrics = meta_gradient(algo, tasks)
        after = metrics.support_after
    decisions = compiled.engine_of(algo)[0].matmul_decisions
    assert len(decisions) >= 8 and all(d.swapped for d in decisions)
    assert relative(got, want) <= tolerance
    torch.testing.assert_close(after, loop_metrics.support_after, rtol=10 * tolerance, atol=0)


def test_a_compile_whose_analysis_restarts_counts_once_and_does_not_warn() -> None:
    """Dynamo calls the backend again when its analysis restarts (AOTAutograd's pass that turns
    Python scalars into tensors asks for it on a float64 second-order meta-iteration): one
    compile, counted once and not warned about; a new shape is a second compile, warned about."""
    calls = []

    def restarts_once(graph: torch.fx.GraphModule, example_inputs: list[object]) -> object:
        calls.append(len(example_inputs))
        if len(calls) == 1:
            raise torch._dynamo.exc.TensorifyScalarRestartAnalysis()
        return graph.forward

    function = compiled._Compiled(
        lambda x: (x * 2 + 1).sum(), {**fast_options(), "backend": restarts_once}, "test graph"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert function(torch.ones(3)).item() == 9.0
        assert function(torch.zeros(3)).item() == 3.0  # same shape: no compile
    assert len(calls) == 2  # the backend ran twice for the one compile
    assert function.compiles == 1
    with pytest.warns(UserWarning, match="compiled its test graph again"):
        assert function(torch.ones(4)).item() == 12.0
    assert function.compiles == 2 and len(calls) == 3


_ONE_CALL = """
import json, sys, warnings
sys.path.insert(0, sys.argv[1])
import torch
from test_engine import RegressionBatch, build, mlp
import metaopt.compiled as compiled
algo = build("maml", mlp(torch.float64), "compiled", 1)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    algo.meta_backward(RegressionBatch(5, torch.float64))
(engine,) = compiled.engine_of(algo)
code = engine._gradient._compiled.__wrapped__.__code__  # the engine's own copy
entries = torch._dynamo.eval_frame._debug_get_cache_entry_list(code)
print(json.dumps({
    "compiles": engine.compiles,
    "cache_entries": len(entries),
    "cache": engine.compile_cache,
    "warnings": [str(w.message) for w in caught if "compiled engine" in str(w.message)],
}))
"""


@pytest.mark.slow
def test_one_call_in_a_fresh_process_with_an_empty_cache_is_one_compile(tmp_path) -> None:
    """The case of issue 27: float64 second-order MAML, 1 step, a fresh process and an empty
    inductor cache. Dynamo's own cache of compiled frames (one entry per guard set) is the
    independent count."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    env["OMP_NUM_THREADS"] = "1"
    tests = str(Path(__file__).parent)
    done = subprocess.run(
        [sys.executable, "-c", _ONE_CALL, tests], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"compiles": 1, "cache_entries": 1, "cache": "cold", "warnings": []}
