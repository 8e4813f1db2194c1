"""iMAML: the implicit meta-gradient against its exact closed form on least squares, its
convergence in inner steps and CG iterations, its agreement with second-order MAML with many
small steps, and a loud failure (never a silent zero gradient) when CG does not converge."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from core_helpers import TanhMLP

import metaopt
from metaopt import testing as mt
from metaopt.algorithms.linsolve import minres, solve


def _setup(seed: int = 0, tasks: int = 3, dim: int = 6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=dim), mt.random_linear_tasks(tasks, dim, rng)


def _error(algo: metaopt.MetaLearner, tasks, reference: np.ndarray) -> float:
    for p in algo.meta_parameters():
        p.grad = None
    algo.meta_backward(tasks)
    grad = torch.cat([p.grad.reshape(-1) for p in algo.model.parameters()]).numpy()
    return float(np.linalg.norm(grad - reference) / np.linalg.norm(reference))


#: φ* reached (300 steps of 0.3 on the regularised least squares) and CG to 1e-12: iMAML's
#: meta-gradient is then the closed form's to float64's accuracy.
SOLVED = {"inner_lr": 0.3, "inner_steps": 300, "reg": 1.5, "cg_tol": 1e-12}


def _on_both_engines(
    make_model, tasks, **settings
) -> dict[str, tuple[torch.Tensor, metaopt.IMAML]]:
    """iMAML's meta-gradient (and the learner) on the loop and on the vectorised engine, each
    from a fresh ``make_model()``."""
    from test_engine import meta_gradient

    found = {}
    for engine in ("loop", "vmap"):
        algo = metaopt.IMAML(make_model(), **settings, engine=engine)
        found[engine] = (meta_gradient(algo, tasks)[0], algo)
        assert algo.last_engine == engine
    return found


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize("adapt", [None, ["bias"]])
def test_closed_form_with_phi_solved_and_enough_cg(engine: str, adapt) -> None:
    theta, tasks = _setup()
    model = mt.LinearModel(theta, split=2)
    algo = metaopt.IMAML(model, **SOLVED, cg_steps=50, engine=engine, adapt=adapt)
    mt.check_meta_gradient(algo, tasks, method="closed_form", rtol=1e-8, atol=1e-12)
    assert algo.last_engine == engine


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize(("solver", "steps"), [("minres", 50), ("normal_cg", 200)])
def test_every_solver_meets_the_closed_form(engine: str, solver: str, steps: int) -> None:
    # Normal CG squares the condition number: it needs more iterations for the same residual.
    theta, tasks = _setup()
    model = mt.LinearModel(theta)
    algo = metaopt.IMAML(model, **SOLVED, cg_steps=steps, engine=engine, solver=solver)
    mt.check_meta_gradient(algo, tasks, method="closed_form", rtol=1e-8, atol=1e-12)


def test_minres_solves_a_random_indefinite_system_as_a_dense_solve() -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64, generator=gen))
    eigenvalues = torch.linspace(-3.0, 3.0, 40, dtype=torch.float64)
    eigenvalues = eigenvalues + 0.05 * torch.sign(eigenvalues)  # nonsingular, |λ| ≥ 0.05
    matrix = q @ torch.diag(eigenvalues) @ q.T
    b = torch.randn(40, dtype=torch.float64, generator=gen)
    reference = torch.linalg.solve(matrix, b)
    (x,) = minres(lambda v: (matrix @ v[0],), (b,), maxiter=200, rtol=1e-14)
    assert (x - reference).norm() <= 1e-9 * reference.norm()
    (y,) = solve("normal_cg", lambda v: (matrix @ v[0],), (b,), maxiter=400)
    assert (y - reference).norm() <= 1e-8 * reference.norm()


class _Saddle:
    """Support loss ½ Σᵢ hᵢ vᵢ² (Hessian diag(h), two negative entries) and query loss c·v on
    v = (weight, bias): with λ = 1, I + H/λ = diag(1, −1, 2, −0.5), indefinite but nonsingular,
    and cᵀ(I + H/λ)c = 0, so CG's first step divides by zero; the exact meta-gradient is
    (I + H/λ)⁻¹c = (1, −1, 0.5, −4)."""

    h = torch.tensor([0.0, -2.0, 1.0, -1.5], dtype=torch.float64)
    c = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=torch.float64)

    def support_loss(self, model):
        v = torch.cat([model.weight, model.bias])
        return 0.5 * (self.h * v**2).sum()

    def query_loss(self, model):
        return (self.c * torch.cat([model.weight, model.bias])).sum()


def test_an_indefinite_system_cg_fails_on_is_solved_by_minres_and_normal_cg() -> None:
    def algo(solver: str) -> metaopt.IMAML:
        model = mt.LinearModel(np.array([0.3, -0.2, 0.5, 0.1]))
        return metaopt.IMAML(
            model, inner_lr=0.01, inner_steps=3, reg=1.0, cg_steps=20, cg_tol=1e-10, solver=solver
        )

    cg = algo("cg")
    with pytest.raises(RuntimeError, match="conjugate gradient did not converge.*minres"):
        cg.meta_backward([_Saddle()])
    assert all(p.grad is None for p in cg.model.parameters())
    a = torch.eye(4, dtype=torch.float64) + torch.diag(_Saddle.h)  # λ = 1
    reference = torch.linalg.solve(a, _Saddle.c)
    assert torch.allclose(reference, torch.tensor([1.0, -1.0, 0.5, -4.0], dtype=torch.float64))
    for solver in ("minres", "normal_cg"):
        learner = algo(solver)
        learner.meta_backward([_Saddle()])
        grad = torch.cat([p.grad for p in learner.model.parameters()])
        assert (grad - reference).norm() <= 1e-10 * reference.norm(), (solver, grad)


def test_a_solver_that_stops_short_is_refused_on_the_original_system() -> None:
    # Normal CG with one iteration: the residual checked is that of (I + H/λ)x = v, so the solve
    # is refused (and names its solver) rather than judged by the normal equations' residual.
    learner = metaopt.IMAML(
        mt.LinearModel(np.array([0.3, -0.2, 0.5, 0.1])),
        inner_lr=0.01,
        inner_steps=3,
        reg=1.0,
        cg_steps=1,
        cg_tol=1e-6,
        solver="normal_cg",
    )
    with pytest.raises(RuntimeError, match="normal equations did not converge"):
        learner.meta_backward([_Saddle()])


def test_the_error_falls_with_inner_steps_and_cg_iterations() -> None:
    theta, tasks = _setup(dim=10)
    reference = mt.imaml_meta_gradient(tasks, theta, 0.5)

    def error(steps: int, cg: int) -> float:
        algo = metaopt.IMAML(
            mt.LinearModel(theta), inner_lr=0.3, inner_steps=steps, reg=0.5, cg_steps=cg, cg_tol=1.0
        )
        return _error(algo, tasks, reference)

    by_steps = [error(steps, 60) for steps in (2, 8, 32, 128)]
    by_cg = [error(400, cg) for cg in (1, 3, 10, 30)]  # 3 tasks × 10 entries: exact at 30
    assert all(a > b for a, b in itertools.pairwise(by_steps)), by_steps
    assert all(a > b for a, b in itertools.pairwise(by_cg)), by_cg
    assert by_steps[-1] < 1e-6 and by_cg[-1] < 1e-6


def test_converges_to_second_order_maml_with_many_small_steps() -> None:
    # Strongly convex support loss. iMAML's φ* with λ = 1/(n·α) is close to n MAML steps of
    # size α for small α, and both meta-gradients approach (I + nαH)⁻¹-like preconditioning of
    # the query gradient: their distance falls as the steps get smaller.
    theta, tasks = _setup(dim=5)
    distances = []
    for n, alpha in ((10, 0.01), (40, 0.0025), (160, 0.000625)):
        reg = 1.0 / (n * alpha)
        imaml = metaopt.IMAML(
            mt.LinearModel(theta), inner_lr=0.1, inner_steps=300, reg=reg, cg_steps=30, cg_tol=1e-10
        )
        maml = metaopt.MAML(mt.LinearModel(theta), inner_lr=alpha, inner_steps=n)
        for algo in (imaml, maml):
            algo.meta_backward(tasks)
        a, b = (torch.cat([p.grad for p in x.model.parameters()]) for x in (imaml, maml))
        distances.append(float((a - b).norm() / b.norm()))
    assert distances[0] > distances[1] > distances[2]
    assert distances[-1] < 0.02, distances


def test_a_cg_solve_that_does_not_converge_raises_and_leaves_no_gradient() -> None:
    theta, tasks = _setup(dim=10)
    algo = metaopt.IMAML(
        mt.LinearModel(theta), inner_lr=0.3, inner_steps=50, reg=0.05, cg_steps=1, cg_tol=1e-6
    )
    with pytest.raises(RuntimeError, match="conjugate gradient did not converge"):
        algo.meta_backward(tasks)
    assert all(p.grad is None for p in algo.model.parameters())


def test_an_indefinite_system_raises_rather_than_returning_a_wrong_gradient() -> None:
    # A concave support loss (−‖x‖²-like): H = −2I, λ = 1 makes I + H/λ = −I, not positive
    # definite; CG may "converge" to nonsense or stall: either way the residual check speaks.
    class Concave:
        def support_loss(self, model):
            return -(model.weight**2).sum() - (model.bias**2).sum()

        def query_loss(self, model):
            return (model.weight**3).sum() + model.bias.sum()

    model = mt.LinearModel(np.array([0.3, -0.2, 0.5, 0.1]))
    algo = metaopt.IMAML(model, inner_lr=0.01, inner_steps=3, reg=0.5, cg_steps=2, cg_tol=1e-8)
    try:
        algo.meta_backward([Concave()])
    except RuntimeError as error:
        assert "did not converge" in str(error)
    else:  # CG solved (I + H/λ)x = v exactly (x = −v here): the gradient must be that, not 0
        assert all(p.grad.abs().max() > 0 for p in model.parameters())


def test_engines_agree_on_an_mlp_to_the_cg_tolerance() -> None:
    # Not bit for bit: the loop engine runs CG per task, the vectorised engine on the tasks'
    # block-diagonal system at once; both converged, they agree to the solve's accuracy.
    from test_engine import RegressionBatch, mlp

    tasks = RegressionBatch(3, torch.float64)
    settings = {"inner_lr": 0.05, "inner_steps": 5, "reg": 10.0, "cg_steps": 200, "cg_tol": 1e-11}
    found = _on_both_engines(lambda: mlp(torch.float64), tasks, **settings)
    (loop, _), (vmap, _) = found["loop"], found["vmap"]
    assert (loop - vmap).norm() <= 1e-8 * loop.norm()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reg": 0.0}, "reg"),
        ({"cg_steps": 0}, "cg_steps"),
        ({"cg_tol": -1.0}, "cg_tol"),
        ({"engine": "compiled"}, "IMAML has no compiled engine"),
        ({"solver": "gmres"}, "solver must be one of cg, minres, normal_cg; got 'gmres'"),
    ],
)
def test_bad_settings_are_named(kwargs, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        metaopt.IMAML(TanhMLP(), **kwargs)


def test_adapt_restores_the_model_and_reports() -> None:
    from test_core_gradients import RegressionTask

    model = TanhMLP()
    algo = metaopt.IMAML(model, inner_lr=0.1, inner_steps=3, reg=2.0)
    mt.assert_state_restored(
        model, algo.inner_optimizer, lambda: algo.meta_backward([RegressionTask(1)])
    )
    assert algo.name == "imaml" and algo.describe()["reg"] == 2.0 and not algo.exact_meta_gradient


@pytest.mark.parametrize("batch_norm", ["running", "batch"])
def test_batchnorm_in_training_mode_on_both_engines(batch_norm: str) -> None:
    # BatchNorm updates its buffers in place; iMAML's functional losses run on copies of them, and
    # the model's statistics are left as they were.
    from test_engine import RegressionBatch

    def net() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
        ).double()

    settings = {"inner_lr": 0.1, "inner_steps": 3, "reg": 5.0, "cg_steps": 100, "cg_tol": 1e-11}
    tasks = RegressionBatch(3, torch.float64)
    found = _on_both_engines(net, tasks, **settings, batch_norm=batch_norm)
    for _, algo in found.values():
        assert float(algo.model[1].running_mean.abs().max()) == 0
    (loop, _), (vmap, _) = found["loop"], found["vmap"]
    assert (loop - vmap).norm() <= 1e-7 * loop.norm()


@pytest.mark.slow  # the profiler's start-up: about 11 s
def test_memory_does_not_grow_with_the_inner_steps() -> None:
    # Peak bytes of one meta-iteration (docs/imaml_memory.py on a smaller model): MAML keeps
    # every inner step's graph, iMAML none, so only MAML's peak grows with the steps.
    from test_engine import RegressionBatch

    from metaopt.tools.bench import peak_memory_bytes

    tasks = RegressionBatch(4, torch.float32, points=16)

    def peak(cls, steps: int, **kwargs) -> int:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Linear(3, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 1),
        )
        algo = cls(net, inner_lr=0.01, inner_steps=steps, engine="vmap", **kwargs)
        algo.meta_backward(tasks)
        return peak_memory_bytes(lambda: algo.meta_backward(tasks))

    imaml = {"reg": 10.0, "cg_steps": 5, "cg_tol": 0.5}
    assert peak(metaopt.MAML, 16) > 4 * peak(metaopt.MAML, 2)
    assert peak(metaopt.IMAML, 16, **imaml) <= 1.05 * peak(metaopt.IMAML, 2, **imaml)
