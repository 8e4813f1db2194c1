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
from metaopt.rules.linsolve import minres, solve


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
    # Peak bytes of one meta-iteration (benchmarks/imaml_memory.py on a smaller model): MAML keeps
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
    # The solve of issue 31 (a tolerance no step reaches: every step taken) keeps none either.
    solved = {**imaml, "inner_tol": 1e-30, "power_iterations": 3, "curvature": "gauss-newton"}
    assert peak(metaopt.IMAML, 16, **solved) <= 1.05 * peak(metaopt.IMAML, 2, **solved)


# -- the inner problem solved to a tolerance (issue 31) ------------------------------------------

#: The inner solve of issue 31: a curvature-tied step and a tolerance instead of a step count.
TOLERANT = {"inner_lr": 10.0, "inner_steps": 2000, "power_iterations": 5, "cg_tol": 1e-12}


@pytest.mark.parametrize("engine", ["loop", "vmap"])
@pytest.mark.parametrize(("adapt", "momentum"), [(None, False), (["bias"], False), (None, True)])
def test_closed_form_with_the_inner_tolerance(engine: str, adapt, momentum: bool) -> None:
    theta, tasks = _setup()
    model = mt.LinearModel(theta, split=2)
    algo = metaopt.IMAML(
        model, **TOLERANT, reg=1.5, inner_tol=1e-12, cg_steps=50, engine=engine, adapt=adapt,
        inner_momentum=momentum,
    )  # fmt: skip
    mt.check_meta_gradient(algo, tasks, method="closed_form", rtol=1e-8, atol=1e-12)
    assert algo.last_engine == engine


def _tanh_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)
    ).double()


def _unrolled(model: torch.nn.Module, tasks, reg: float, lr: float, steps: int) -> torch.Tensor:
    """The unrolled (second-order MAML) meta-gradient of the regularised inner problem: ``steps``
    differentiable steps of gradient descent on L(φ) + λ/2‖φ − θ‖² from θ, then the query loss."""
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    total = [torch.zeros_like(t) for t in theta]
    for task in tasks:
        phi = list(theta)
        for _ in range(steps):
            loss = task.support_loss(_at(model, names, phi))
            grads = torch.autograd.grad(loss, phi, create_graph=True)
            phi = [p - lr * (g + reg * (p - t)) for p, g, t in zip(phi, grads, theta, strict=True)]
        query = task.query_loss(_at(model, names, phi))
        for acc, g in zip(total, torch.autograd.grad(query, theta), strict=True):
            acc += g / len(tasks)
    return torch.cat([t.reshape(-1) for t in total])


def _at(model: torch.nn.Module, names: list[str], values: list[torch.Tensor]):
    class At(torch.nn.Module):
        def forward(self, x):
            params = dict(zip(names, values, strict=True))
            return torch.func.functional_call(model, params, (x,))

    return At()


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_the_implicit_gradient_is_the_unrolled_one_once_the_inner_problem_is_solved(
    engine: str,
) -> None:
    # With φ* reached (the stationarity residual below inner_tol), iMAML's implicit gradient is
    # the limit of differentiating through the inner loop itself: the unrolled gradient of the
    # same regularised problem after many steps (independent code: plain autograd here).
    from test_engine import RegressionBatch

    tasks = RegressionBatch(2, torch.float64)
    reg = 2.0
    reference = _unrolled(_tanh_net(), list(tasks), reg, lr=0.05, steps=600)
    for tol in (1e-3, 1e-6):
        algo = metaopt.IMAML(
            _tanh_net(), **TOLERANT, reg=reg, inner_tol=tol, cg_steps=100, engine=engine
        )
        metrics = algo.meta_backward(tasks)
        grad = torch.cat([p.grad.reshape(-1) for p in algo.model.parameters()])
        assert metrics.extra["inner_residual"] <= tol
        error = float((grad - reference).norm() / reference.norm())
        assert error <= 10 * tol, (tol, error)


def test_the_inner_solve_stops_at_the_tolerance_and_reports() -> None:
    from test_engine import RegressionBatch

    tasks = RegressionBatch(3, torch.float64)
    loose, tight = (
        metaopt.IMAML(_tanh_net(), **TOLERANT, reg=2.0, inner_tol=tol, cg_steps=100)
        for tol in (1e-2, 1e-8)
    )
    used = {}
    for algo in (loose, tight):
        metrics = algo.meta_backward(tasks)
        row = metrics.means()
        assert row["inner_residual"] <= algo.inner_tol
        assert row["solve_residual"] <= algo.cg_tol and row["solve_iterations"] >= 1
        assert row["solve_damping"] == 0 and row["solve_failed"] == 0
        used[algo.inner_tol] = row["inner_steps_used"]
    assert 1 <= used[1e-2] < used[1e-8] < TOLERANT["inner_steps"]


def test_the_step_is_tied_to_the_curvature() -> None:
    # A quadratic support loss ½(φ − c)ᵀA(φ − c) per task, A's spectrum known: with enough power
    # iterations each task's step is 1/(λ + its largest eigenvalue), whatever the larger lr, so
    # one step from θ lands where that closed-form step does.
    from metaopt.rules.proximal import proximal_path

    spectra = torch.stack([torch.linspace(0.5, 4.0, 5), torch.linspace(-1.0, 9.0, 5)])
    objective, a, c, theta = _quadratic_tasks(spectra, seed=0)
    reg = 1.5
    path = proximal_path(objective, (theta,), reg, lr=100.0, steps=1, tol=0.0, power_iterations=200)
    *_, state = path
    top = torch.linalg.eigvalsh(a).abs().amax(dim=1)
    step = 1 / (reg + top)
    expected = theta - step[:, None] * torch.einsum("bij,bj->bi", a, theta - c)
    assert torch.allclose(state.params[0], expected, rtol=1e-10, atol=1e-12)
    assert state.steps == 1


def _quadratic_tasks(spectra: torch.Tensor, seed: int):
    """Tasks with quadratic support losses ½(φ − c)ᵀA(φ − c), each A with the spectrum given (a
    row per task): the per-task objective, A, c and θ."""
    tasks, dim = spectra.shape
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(tasks, dim, dim, dtype=torch.float64, generator=gen))
    a = q @ torch.diag_embed(spectra.double()) @ q.transpose(1, 2)
    c = torch.randn(tasks, dim, dtype=torch.float64, generator=gen)
    theta = torch.randn(tasks, dim, dtype=torch.float64, generator=gen)

    def objective(phi):
        (p,) = phi
        d = p - c
        return 0.5 * torch.einsum("bi,bij,bj->b", d, a, d)

    return objective, a, c, theta


def test_momentum_reaches_the_same_point_in_fewer_steps() -> None:
    # κ = (λ + L)/λ is 51 and 101 here: plain steps shrink the error by about 1 − 1/κ each,
    # Nesterov's by about 1 − 1/√κ, so momentum needs several times fewer steps to the same
    # tolerance, and both end at the closed-form φ*.
    from metaopt.rules.proximal import proximal_path

    reg, tol = 0.2, 1e-7  # (the monotone test resolves the loss to about 1e-14 of its value)
    spectra = torch.stack([torch.linspace(0.0, 10.0, 8), torch.linspace(-0.1, 20.0, 8)])
    objective, a, c, theta = _quadratic_tasks(spectra, seed=1)
    system = a + reg * torch.eye(8, dtype=torch.float64)  # φ* = (A + λI)⁻¹(Ac + λθ)
    solution = torch.linalg.solve(system, torch.einsum("bij,bj->bi", a, c) + reg * theta)
    start = torch.func.grad(lambda t: objective((t,)).sum())(theta).norm(dim=1)  # ‖∇L(θ)‖
    strong = torch.tensor([0.0, -0.1], dtype=torch.float64) + reg  # smallest eigenvalue of A + λI
    used = {}
    for momentum in (False, True):
        path = proximal_path(
            objective, (theta,), reg, lr=100.0, steps=5000, tol=tol, power_iterations=100,
            momentum=momentum,
        )  # fmt: skip
        *_, state = path
        assert bool((state.residual <= tol).all())
        # ‖φ − φ*‖ ≤ ‖∇F(φ)‖/μ for a μ-strongly convex F, and ‖∇F(φ)‖ = residual·‖∇L(θ)‖
        # (equality along the slowest eigenvector, where the last error lies; with roundoff).
        error = (state.params[0] - solution).norm(dim=1)
        bound = state.residual * start / strong
        assert bool((error <= (1 + 1e-6) * bound + 1e-12).all()), (error, bound)
        used[momentum] = state.steps
    assert used[True] < used[False] / 3, used


def test_inner_residuals_are_the_ones_the_solve_reports() -> None:
    # The worst task's residual after the last step is what meta_backward records as
    # inner_residual; the first row is 1 (the residual at θ is the scale itself).
    from test_engine import RegressionBatch

    tasks = RegressionBatch(3, torch.float64)
    algo = metaopt.IMAML(_tanh_net(), reg=2.0, inner_steps=7, power_iterations=3, inner_tol=1e-30)
    residuals = algo.inner_residuals(tasks, 7)
    assert residuals.shape == (8, 3) and bool((residuals[0] == 1).all())
    assert bool((residuals[-1] < residuals[0]).all())
    assert algo.meta_backward(tasks).extra["inner_residual"] == float(residuals[-1].max())
    with pytest.raises(TypeError, match="needs a BatchedTasks"):
        algo.inner_residuals(list(tasks), 7)


def test_momentum_never_raises_the_regularised_loss() -> None:
    # A non-convex support loss (cosines) that λ does not make convex: momentum overshoots, so
    # steps are undone and restarted, and every accepted point is at or below the one before.
    from metaopt.rules.proximal import proximal_path

    gen = torch.Generator().manual_seed(2)
    scale = 4 * torch.rand(3, 6, dtype=torch.float64, generator=gen)
    theta = torch.randn(3, 6, dtype=torch.float64, generator=gen)
    reg = 0.5

    def objective(phi):
        (p,) = phi
        return (scale * torch.cos(2 * p)).sum(1) + 0.1 * p.pow(2).sum(1)

    def value(p):
        return objective((p,)) + reg / 2 * (p - theta).pow(2).sum(1)

    path = proximal_path(
        objective, (theta,), reg, lr=1.0, steps=200, tol=0.0, power_iterations=3, momentum=True
    )
    values = torch.stack([value(state.params[0]) for state in path])
    assert bool((values[1:] == values[:-1]).any())  # some steps were undone
    assert bool((values[1:] <= values[:-1] + 1e-12 * values[:-1].abs()).all())
    assert bool((values[-1] < values[0]).all())


def test_on_solve_failure_stop_refuses_an_indefinite_system() -> None:
    algo = _saddle_learner("stop")
    with pytest.raises(RuntimeError, match="conjugate gradient did not converge"):
        algo.meta_backward([_Saddle()])
    assert all(p.grad is None for p in algo.model.parameters())


def _saddle_learner(policy: str, **kwargs) -> metaopt.IMAML:
    model = mt.LinearModel(np.array([0.3, -0.2, 0.5, 0.1]))
    return metaopt.IMAML(
        model,
        inner_lr=0.01,
        inner_steps=3,
        reg=1.0,
        cg_steps=20,
        cg_tol=1e-10,
        on_solve_failure=policy,
        **kwargs,
    )


def test_on_solve_failure_skip_leaves_the_gradient_and_asks_for_no_step() -> None:
    algo = _saddle_learner("skip")
    earlier = [torch.full_like(p, 0.5) for p in algo.model.parameters()]
    for p, g in zip(algo.model.parameters(), earlier, strict=True):
        p.grad = g.clone()
    metrics = algo.meta_backward([_Saddle()])
    assert metrics.dropped and metrics.extra["solve_failed"] == 1
    for p, g in zip(algo.model.parameters(), earlier, strict=True):
        assert torch.equal(p.grad, g)
    theta, tasks = _setup(dim=4)
    healthy = metaopt.IMAML(mt.LinearModel(theta), reg=1.0, cg_steps=30, on_solve_failure="skip")
    assert not healthy.meta_backward(tasks).dropped


def test_on_solve_failure_damp_solves_with_the_smallest_mu_that_converges() -> None:
    from metaopt.rules.linsolve import DAMPING

    algo = _saddle_learner("damp")
    metrics = algo.meta_backward([_Saddle()])
    mu = metrics.extra["solve_damping"]
    assert mu in DAMPING and not metrics.dropped
    grad = torch.cat([p.grad for p in algo.model.parameters()])
    matrix = torch.eye(4, dtype=torch.float64) + torch.diag(_Saddle.h)  # I + H/λ, λ = 1
    for smaller in (m for m in DAMPING if m < mu):  # each smaller μ left CG short of cg_tol
        x = torch.linalg.solve(matrix + smaller * torch.eye(4, dtype=torch.float64), _Saddle.c)
        assert not torch.allclose(grad, x, rtol=1e-8)
    reference = torch.linalg.solve(matrix + mu * torch.eye(4, dtype=torch.float64), _Saddle.c)
    assert (grad - reference).norm() <= 1e-8 * reference.norm(), (mu, grad, reference)


def test_on_solve_failure_damp_stops_when_no_mu_converges() -> None:
    algo = _saddle_learner("damp", solver="cg")
    algo.cg_steps = 1  # one CG step cannot solve a 4-dimensional system, damped or not
    with pytest.raises(RuntimeError, match="and with every μ"):
        algo.meta_backward([_Saddle()])
    assert all(p.grad is None for p in algo.model.parameters())


@pytest.mark.slow  # the dense reference: 3,000 float64 steps and Jacobians, about 6 s
@pytest.mark.parametrize("engine", ["vmap", "loop"])
def test_gauss_newton_against_an_explicit_jacobian_matrix(engine: str) -> None:
    # (I + G/λ)⁻¹∇L_q(φ*) with G = Jᵀ ∇²ℓ J built densely in float64 from the network's
    # Jacobian J at φ* and the Hessian of the loss ℓ in the outputs, task by task.
    from test_engine import RegressionBatch

    tasks = RegressionBatch(2, torch.float64)
    reg = 2.0
    algo = metaopt.IMAML(
        _tanh_net(),
        **TOLERANT,
        reg=reg,
        inner_tol=1e-13,
        cg_steps=200,
        engine=engine,
        curvature="gauss-newton",
    )
    algo.meta_backward(tasks)
    grad = torch.cat([p.grad.reshape(-1) for p in algo.model.parameters()])

    model = _tanh_net()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(names, torch.split(v, [s.numel() for s in shapes]), strict=True))

    def out(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        params = {n: t.reshape(s) for (n, t), s in zip(unflat(v).items(), shapes, strict=True)}
        return torch.func.functional_call(model, params, (x,))

    expected = torch.zeros_like(theta)
    for b in range(len(tasks)):
        x, y = tasks.xs[b], tasks.ys[b]

        def support(v: torch.Tensor, x=x, y=y) -> torch.Tensor:
            return ((out(v, x) - y) ** 2).mean()

        phi = theta.clone()  # φ*: gradient descent on the regularised problem to float64
        for _ in range(3000):
            phi = phi - 0.2 * (torch.func.grad(support)(phi) + reg * (phi - theta))
        jac = torch.autograd.functional.jacobian(lambda v, x=x: out(v, x).reshape(-1), phi)
        loss_hessian = torch.autograd.functional.hessian(
            lambda o, y=y: ((o - y.reshape(-1)) ** 2).mean(), out(phi, x).reshape(-1)
        )
        gauss_newton = jac.T @ loss_hessian @ jac
        query = torch.func.grad(lambda v, b=b: ((out(v, tasks.xq[b]) - tasks.yq[b]) ** 2).mean())(
            phi
        )
        system = torch.eye(len(theta), dtype=torch.float64) + gauss_newton / reg
        expected += torch.linalg.solve(system, query) / len(tasks)
    assert (grad - expected).norm() <= 1e-8 * expected.norm()


def test_gauss_newton_is_the_same_on_both_engines() -> None:
    # The loop engine hands each task's support_loss the linearised network; the vectorised
    # engine linearises its batched forward. Same tasks, same θ: the same meta-gradient, and it
    # is not the Hessian's (else the test could not tell the curvatures apart).
    from test_engine import RegressionBatch

    tasks = RegressionBatch(3, torch.float64, seed=1)
    grads = {}
    for engine, curvature in [
        ("vmap", "gauss-newton"),
        ("loop", "gauss-newton"),
        ("loop", "hessian"),
    ]:
        algo = metaopt.IMAML(
            _tanh_net(), reg=2.0, inner_steps=30, inner_tol=1e-6, power_iterations=3,
            cg_steps=50, cg_tol=1e-10, engine=engine, curvature=curvature,
        )  # fmt: skip
        metrics = algo.meta_backward(tasks)
        assert metrics.extra["solve_failed"] == 0
        grads[engine, curvature] = torch.cat([p.grad.reshape(-1) for p in algo.model.parameters()])
    vmap, loop, hessian = grads.values()
    assert (loop - vmap).norm() <= 1e-10 * vmap.norm()
    assert (hessian - vmap).norm() > 1e-4 * vmap.norm()


class _AsksForAMethod:
    """A task whose support loss calls a method of the model, not the model itself."""

    def __init__(self) -> None:
        self.x = torch.randn(4, 3, dtype=torch.float64)

    def support_loss(self, model: torch.nn.Module) -> torch.Tensor:
        return model.forward_features(self.x).pow(2).mean()  # type: ignore[operator]

    def query_loss(self, model: torch.nn.Module) -> torch.Tensor:
        return model(self.x).pow(2).mean()


def test_gauss_newton_on_the_loop_engine_refuses_a_task_that_does_more_than_call() -> None:
    class Net(torch.nn.Sequential):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self[0](x)

    torch.manual_seed(0)
    net = Net(torch.nn.Linear(3, 2), torch.nn.Tanh(), torch.nn.Linear(2, 1)).double()
    # The inner loop runs on the real network; only the solve's linearised copy refuses.
    algo = metaopt.IMAML(net, reg=2.0, inner_steps=2, engine="loop", curvature="gauss-newton")
    with pytest.raises(TypeError, match=r"can only be called.*model\.forward_features"):
        algo.meta_backward([_AsksForAMethod()])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inner_tol": -1.0}, "inner_tol"),
        ({"power_iterations": -1}, "power_iterations"),
        ({"on_solve_failure": "retry"}, "on_solve_failure must be one of stop, skip, damp"),
        ({"curvature": "fisher"}, "curvature must be one of hessian, gauss-newton"),
        ({"inner_tol": 1e-3, "inner_optimizer": "adam"}, "inner_optimizer='sgd'"),
    ],
)
def test_bad_solve_settings_are_named(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        metaopt.IMAML(TanhMLP(), **kwargs)
