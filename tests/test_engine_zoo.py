"""Engine equivalence over a zoo of models, against a reference that uses neither metaopt nor TorchOpt.

For every model × algorithm × first-order × inner optimiser, in float64, both engines
(``loop`` and ``auto``) must give the meta-gradient of :func:`reference`: the inner loop
unrolled by hand on a deep copy of the model whose parameters and buffers are replaced by plain
tensors, ``torch.autograd.grad`` for every derivative, Adam with the textbook bias correction.
Each call must leave the model holding the same ``Parameter`` objects with the same values and
the same buffers, and ``auto`` must pick the vectorised engine exactly for the models it computes
exactly (the rest go to the loop engine, and ``engine="vmap"`` refuses them by name).

The default suite runs every model with MAML (second order, SGD) and a rotating slice of the
other algorithms; ``pytest -m slow`` runs the whole grid.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable

import pytest
import torch
from core_helpers import StackedTasks
from torch import nn

import metaopt

DTYPE = torch.float64
LR = 0.1
ADAM = {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "eps_root": 1e-8}  # metaopt's inner Adam
BatchNorm = nn.modules.batchnorm._BatchNorm


# -- tasks --------------------------------------------------------------------------------------


class ZooBatch(StackedTasks):
    """Regression tasks on inputs of any kind (vectors, token ids, sequences, images)."""

    def __init__(self, kind: str, num_tasks: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        n = 6
        if kind == "ids":  # every task sees token 0 (the padding index) and others
            x = torch.randint(1, 10, (num_tasks, 2, n), generator=g)
            x[:, :, 0] = 0
        else:
            shape = {"vec": (4,), "seq": (3, 4), "img": (1, 6, 6)}[kind]
            x = torch.randn(num_tasks, 2, n, *shape, generator=g, dtype=DTYPE)
        y = torch.randn(num_tasks, 2, n, 2, generator=g, dtype=DTYPE)
        self.stack(x[:, 0], y[:, 0], x[:, 1], y[:, 1])


# -- the zoo --------------------------------------------------------------------------------------


class SharedAttribute(nn.Module):
    """One encoder kept as ``self.enc`` and inside ``self.net``."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.net = nn.Sequential(self.enc, nn.Tanh(), nn.Linear(4, 2))

    def forward(self, x):
        return self.net(x) + 0.1 * self.enc(x)[..., :2]


class Tied(nn.Module):
    """Two Linear layers sharing one weight, each with its own bias."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.tanh(self.b(torch.tanh(self.a(x)))))


class UnusedHead(nn.Module):
    """A parameter neither loss uses (TorchOpt's test model carries one)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.unused = nn.Linear(4, 2), nn.Linear(4, 3)

    def forward(self, x):
        return torch.tanh(self.body(x))


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = cell(4, 3, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class InPlace(nn.Module):
    """A forward made of in-place operations on intermediate tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 5) / 2)
        self.b = nn.Parameter(torch.randn(5) / 4)
        self.out = nn.Parameter(torch.randn(5, 2) / 2)

    def forward(self, x):
        h = x @ self.w
        h.add_(self.b)
        h.mul_(2.0)
        h.sigmoid_()
        return h @ self.out


class NonContiguous(nn.Module):
    """Parameters that are transposed and strided views of their storage."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 4).t())
        self.v = nn.Parameter(torch.randn(2, 12)[:, ::2].t())

    def forward(self, x):
        return torch.tanh(x @ self.w) @ self.v


class Embed(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(10, 4, **kwargs), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.emb(x)))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def conv_bn(training: bool) -> nn.Module:
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)
    )
    with torch.no_grad():  # running statistics that are not the defaults
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.train(training)


def frozen(after: bool) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        net = mlp()
        if not after:
            net[0].weight.requires_grad_(False)
        return net

    make.freeze_after = after  # type: ignore[attr-defined]
    return make


def _shared_sequential() -> nn.Module:
    proj = nn.Linear(4, 4)
    return nn.Sequential(proj, nn.Tanh(), proj, nn.Tanh(), nn.Linear(4, 2))


# name -> (builder, input kind, the engine "auto" must choose)
ZOO: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    "mlp": (mlp, "vec", "vmap"),
    "shared-sequential": (_shared_sequential, "vec", "vmap"),
    "shared-attribute": (SharedAttribute, "vec", "vmap"),
    "tied": (Tied, "vec", "vmap"),
    "unused": (UnusedHead, "vec", "vmap"),
    "frozen-before": (frozen(after=False), "vec", "vmap"),
    "frozen-after": (frozen(after=True), "vec", "vmap"),
    "embedding": (Embed, "ids", "vmap"),
    "embedding-padding": (lambda: Embed(padding_idx=0), "ids", "loop"),
    "embedding-sparse": (lambda: Embed(sparse=True), "ids", "loop"),
    "rnn": (lambda: Recurrent(nn.RNN), "seq", "loop"),
    "gru": (lambda: Recurrent(nn.GRU), "seq", "loop"),
    "lstm": (lambda: Recurrent(nn.LSTM), "seq", "loop"),
    "conv-bn-train": (lambda: conv_bn(True), "img", "vmap"),
    "conv-bn-eval": (lambda: conv_bn(False), "img", "vmap"),
    "dropout-eval": (
        lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)).eval(),
        "vec",
        "vmap",
    ),
    "in-place": (InPlace, "vec", "vmap"),
    "non-contiguous": (NonContiguous, "vec", "vmap"),
}

#: The algorithms, each named "[fo]<kind>[-adam][-anil]" (:func:`spec`): "fo" a first-order
#: MAML or Meta-SGD (Reptile and iMAML are first order by nature), "-adam" the inner optimiser,
#: "-anil" only the model's last trainable parameter adapts (ANIL's adapt=, given as a name), the
#: others held at θ and still meta-learned.
ALGORITHMS = [
    *("maml", "fomaml", "maml-adam", "fomaml-adam", "metasgd", "fo-metasgd"),
    *("reptile", "reptile-adam", "imaml", "imaml-adam"),
    *("maml-anil", "metasgd-anil", "imaml-anil"),
]


def spec(algorithm: str) -> tuple[str, bool, str]:
    """``(kind, first_order, inner optimiser)`` of a name of :data:`ALGORITHMS`."""
    base = algorithm.removesuffix("-anil").removesuffix("-adam")
    kind = base.removeprefix("fo-") if base.startswith("fo-") else base.removeprefix("fo")
    first_order = base != kind or kind in ("reptile", "imaml")
    return kind, first_order, "adam" if algorithm.endswith("-adam") else "sgd"


#: iMAML's λ and a CG budget that solves the zoo's small systems to machine precision.
REG, CG_STEPS = 5.0, 300


def build_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return ZOO[name][0]().to(DTYPE)


def build_algo(
    model: nn.Module, algorithm: str, engine: str, steps: int, batch_norm: str
) -> metaopt.MetaLearner:
    kind, first_order, optimizer = spec(algorithm)
    common = {"inner_lr": LR, "inner_steps": steps, "engine": engine, "batch_norm": batch_norm}
    if algorithm.endswith("-anil"):
        common["adapt"] = [[n for n, p in model.named_parameters() if p.requires_grad][-1]]
    if kind == "imaml":
        solver = {"reg": REG, "cg_steps": CG_STEPS, "cg_tol": 1e-10}
        return metaopt.IMAML(model, inner_optimizer=optimizer, **solver, **common)
    if kind == "reptile":
        return metaopt.Reptile(model, inner_optimizer=optimizer, **common)
    if kind == "metasgd":
        algo = metaopt.MetaSGD(model, first_order=first_order, **common)
        with torch.no_grad():  # rates that differ between entries and parameters
            for i, rate in enumerate(algo.inner_lrs):
                ramp = torch.arange(rate.numel(), dtype=DTYPE).reshape(rate.shape)
                rate.mul_(1.0 + 0.2 * torch.sin(ramp + i))
        return algo
    return metaopt.MAML(model, first_order=first_order, inner_optimizer=optimizer, **common)


# -- the reference ----------------------------------------------------------------------------


class Stateless:
    """A deep copy of a model whose parameters and buffers are replaced by given tensors before
    each call (module dicts written directly: no functional_call, no TorchOpt)."""

    def __init__(self, model: nn.Module, batch_norm: str) -> None:
        self.copy = copy.deepcopy(model)
        ids = {}
        for name, tensor in [*self.copy.named_parameters(), *self.copy.named_buffers()]:
            ids.setdefault(id(tensor), name)
        self.places = []  # (dict holding the tensor, key, canonical name)
        for module in self.copy.modules():
            for store in (module._parameters, module._buffers):
                for key, tensor in store.items():
                    if tensor is not None:
                        self.places.append((store, key, ids[id(tensor)]))
        if batch_norm == "batch":  # no running statistics at all: every call uses its batch's
            for module in self.copy.modules():
                if isinstance(module, BatchNorm):
                    module.running_mean = module.running_var = module.num_batches_tracked = None
            self.places = [(s, k, n) for s, k, n in self.places if s.get(k) is not None]

    def __call__(self, tensors: dict[str, torch.Tensor]) -> nn.Module:
        for store, key, name in self.places:
            if name in tensors:
                store[key] = tensors[name]
        return self.copy


def reference(
    model: nn.Module, algo: metaopt.MetaLearner, tasks: ZooBatch, batch_norm: str
) -> dict[int, torch.Tensor]:
    """The meta-gradient by hand, keyed by ``id`` of each meta-parameter."""
    kind = type(algo).__name__
    first_order = kind in ("Reptile", "IMAML") or algo.first_order
    adam = algo.inner_optimizer_name == "adam"
    named = dict(model.named_parameters())
    trainable = {n: p for n, p in named.items() if p.requires_grad}
    index = {n: i for i, n in enumerate(named)}
    adapted = set(trainable) if algo.adapted is None else algo.adapted
    reg = algo.reg if kind == "IMAML" else 0.0  # iMAML's pull λ(φ − θ) towards θ
    rates = {}
    if kind == "MetaSGD":  # only the adapted parameters have learned rates
        rates = {n: algo.inner_lrs[index[n]] for n in trainable if n in adapted}
    stateless = Stateless(model, batch_norm)
    frozen = {n: p.detach() for n, p in named.items() if not p.requires_grad}
    wrt = list(trainable.values()) + list(rates.values())
    total = [torch.zeros_like(t) for t in wrt]
    for task in tasks:
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # per task, as restored
        theta = dict(trainable)
        m = {n: torch.zeros_like(p) for n, p in theta.items()}
        v = {n: torch.zeros_like(p) for n, p in theta.items()}
        t = dict.fromkeys(theta, 0)
        for _ in range(algo.inner_steps):
            loss = task.support_loss(stateless({**frozen, **buffers, **theta}))
            grads = torch.autograd.grad(
                loss, list(theta.values()), create_graph=not first_order, allow_unused=True
            )
            for (n, p), g in zip(list(theta.items()), grads, strict=True):
                if g is None or n not in adapted:
                    continue
                if reg:
                    g = g + reg * (p - trainable[n]).detach()
                if kind == "MetaSGD":
                    theta[n] = p - rates[n] * g
                elif not adam:
                    theta[n] = p - LR * g
                else:
                    t[n] += 1
                    m[n] = ADAM["b1"] * m[n] + (1 - ADAM["b1"]) * g
                    v[n] = ADAM["b2"] * v[n] + (1 - ADAM["b2"]) * g * g
                    m_hat = m[n] / (1 - ADAM["b1"] ** t[n])
                    v_hat = v[n] / (1 - ADAM["b2"] ** t[n])
                    theta[n] = p - LR * m_hat / (torch.sqrt(v_hat + ADAM["eps_root"]) + ADAM["eps"])
        if kind == "Reptile":
            for i, n in enumerate(trainable):
                total[i] += (trainable[n] - theta[n]).detach() / len(tasks)
            continue
        if kind == "IMAML":
            for i, g in enumerate(
                _implicit(stateless, task, {**frozen, **buffers}, theta, adapted, reg)
            ):
                total[i] += g / len(tasks)
            continue
        query = task.query_loss(stateless({**frozen, **buffers, **theta}))
        grads = torch.autograd.grad(query, wrt, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                total[i] += g.to_dense() / len(tasks)
    return {id(p): g for p, g in zip(wrt, total, strict=True)}


def _implicit(
    stateless: Stateless,
    task: ZooBatch,
    fixed: dict[str, torch.Tensor],
    phi: dict[str, torch.Tensor],
    adapted: set[str],
    reg: float,
) -> list[torch.Tensor]:
    """iMAML's meta-gradient by the implicit function theorem with a dense Hessian, solved
    exactly: φ_A* solves ∇_A L_s(φ_A, θ_B) + λ(φ_A − θ_A) = 0, so with H the support Hessian and
    g the query gradient at (φ_A*, θ_B), dL/dθ_A = λ(H_AA + λI)⁻¹ g_A and
    dL/dθ_B = g_B − H_BA (H_AA + λI)⁻¹ g_A."""
    for module in stateless.copy.modules():  # the same derivatives, laid out densely
        if isinstance(module, nn.Embedding):
            module.sparse = False
    names = list(phi)
    point = torch.cat([phi[n].detach().reshape(-1) for n in names]).requires_grad_(True)
    sizes = [phi[n].numel() for n in names]

    def loss(flat: torch.Tensor, query: bool) -> torch.Tensor:
        parts = dict(zip(names, flat.split(sizes), strict=True))
        tensors = {n: parts[n].reshape(phi[n].shape) for n in names}
        copies = {n: t.clone() for n, t in fixed.items()}  # BatchNorm updates buffers in place
        call = task.query_loss if query else task.support_loss
        return call(stateless({**copies, **tensors}))

    (g,) = torch.autograd.grad(loss(point, True), point)
    hessian = torch.autograd.functional.hessian(lambda f: loss(f, False), point)
    mask = torch.cat([torch.full((k,), n in adapted) for n, k in zip(names, sizes, strict=True)])
    a, b = mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1)
    solved = torch.linalg.solve(hessian[a][:, a] + reg * torch.eye(len(a), dtype=DTYPE), g[a])
    out = torch.empty_like(g)
    out[a] = reg * solved
    out[b] = g[b] - hessian[b][:, a] @ solved
    return [t.reshape(phi[n].shape) for n, t in zip(names, out.split(sizes), strict=True)]


# -- the checks -----------------------------------------------------------------------------


def _snapshot(model: nn.Module) -> tuple[list, list]:
    params = [(name, p, p.detach().clone()) for name, p in model.named_parameters()]
    buffers = [(name, b.clone()) for name, b in model.named_buffers()]
    return params, buffers


def _assert_unchanged(model: nn.Module, before: tuple[list, list]) -> None:
    params, buffers = before
    now = list(model.named_parameters())
    assert [(n, id(p)) for n, p in now] == [(n, id(p)) for n, p, _ in params]
    for (name, _, value), (_, q) in zip(params, now, strict=True):
        assert type(q) is nn.Parameter, name
        assert torch.equal(q.detach(), value), name
    for (name, value), (_, b) in zip(buffers, model.named_buffers(), strict=True):
        assert torch.equal(b, value), name


def check(model_name: str, algorithm: str, steps: int = 2, batch_norm: str = "running") -> None:
    _, kind, expected_engine = ZOO[model_name]
    tasks = ZooBatch(kind)
    if model_name == "embedding-sparse" and (algorithm.endswith("adam") or algorithm == "imaml"):
        # Adam's moments cannot take sparse gradients (not batching), nor iMAML's torch.func
        # (with ANIL the embedding does not adapt, and iMAML's solve takes it)
        expected_engine = "error"
    for engine in ("loop", "auto"):
        model = build_model(model_name)
        algo = build_algo(model, algorithm, engine, steps, batch_norm)
        if getattr(ZOO[model_name][0], "freeze_after", False):
            model[0].weight.requires_grad_(False)
        if expected_engine == "error":
            with pytest.raises(TypeError, match="cannot take sparse gradients"):
                algo.meta_backward(tasks if engine == "auto" else list(tasks))
            return
        before = _snapshot(model)
        want = reference(model, algo, tasks, batch_norm)
        if engine == "auto" and expected_engine == "loop":  # says why, once
            with pytest.warns(UserWarning, match="engine='auto' runs this model on the loop"):
                algo.meta_backward(tasks)
        else:
            algo.meta_backward(tasks if engine == "auto" else list(tasks))
        assert algo.last_engine == ("loop" if engine == "loop" else expected_engine)
        _assert_unchanged(model, before)
        got, ref = [], []
        for p in algo.meta_parameters():
            got.append(torch.zeros_like(p) if p.grad is None else p.grad.to_dense())
            ref.append(want.get(id(p), torch.zeros_like(p)))
        got_flat = torch.cat([g.reshape(-1) for g in got])
        ref_flat = torch.cat([g.reshape(-1) for g in ref])
        error = ((got_flat - ref_flat).norm() / ref_flat.norm()).item()
        assert math.isfinite(error) and error <= 1e-12, (
            f"{model_name} {algorithm} {engine}: relative error {error:.3g}"
        )
        model(tasks.xs[0])  # the model still runs
        for module in model.modules():  # no recurrent module keeps an adapted weight
            if isinstance(module, nn.RNNBase):
                assert all(
                    w is getattr(module, n)
                    for w, n in zip(module._flat_weights, module._flat_weights_names, strict=True)
                )


@pytest.mark.parametrize("model_name", list(ZOO))
def test_maml_matches_the_reference_on_every_model(model_name: str) -> None:
    check(model_name, "maml")


@pytest.mark.parametrize("model_name", list(ZOO))
def test_a_rotating_algorithm_matches_the_reference(model_name: str) -> None:
    # Every algorithm meets every kind of model in the slow grid; here each model meets one.
    others = [a for a in ALGORITHMS if a != "maml"]
    check(model_name, others[list(ZOO).index(model_name) % len(others)])


@pytest.mark.parametrize("model_name", ["conv-bn-train", "conv-bn-eval"])
@pytest.mark.parametrize("algorithm", ["maml", "reptile"])
def test_batch_statistics_mode_matches_the_reference(model_name: str, algorithm: str) -> None:
    check(model_name, algorithm, batch_norm="batch")


GRID = [(m, "running") for m in ZOO] + [(m, "batch") for m in ZOO if "bn" in m]


@pytest.mark.slow
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize(("model_name", "batch_norm"), GRID)
def test_full_grid(model_name: str, batch_norm: str, algorithm: str, steps: int) -> None:
    check(model_name, algorithm, steps=steps, batch_norm=batch_norm)


@pytest.mark.parametrize(
    ("model_name", "module"),
    [
        ("embedding-padding", "emb (Embedding): with padding_idx"),
        ("embedding-sparse", r"emb (Embedding): sparse gradients"),
        ("rnn", "rnn (RNN): recurrent"),
        ("gru", "rnn (GRU): recurrent"),
        ("lstm", "rnn (LSTM): recurrent"),
    ],
)
def test_vmap_refuses_what_it_cannot_compute_exactly_and_names_the_module(
    model_name: str, module: str
) -> None:
    model = build_model(model_name)
    before = _snapshot(model)
    algo = metaopt.MAML(model, inner_lr=LR, engine="vmap")
    expected = re.escape("engine='vmap' cannot run this meta-batch: " + module)
    with pytest.raises(TypeError, match=expected):
        algo.meta_backward(ZooBatch(ZOO[model_name][1]))
    _assert_unchanged(model, before)
    assert all(p.grad is None for p in model.parameters())
