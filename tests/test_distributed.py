"""Sharded meta-training on 2 CPU processes (gloo, loopback) equals one process."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from supervised_helpers import omniglot_dir_fixture  # noqa: F401 - fixtures

import metaopt
from metaopt import testing as mt
from metaopt.training import distributed
from metaopt.training.checkpoint import load_checkpoint

ALGORITHMS = ("maml", "metasgd", "reptile", "imaml", "maml-anil")
META_BATCH = 5  # odd: the two shards are uneven (3 + 2 tasks)


def _build(name: str) -> metaopt.MetaLearner:
    model = mt.LinearModel(np.linspace(-1, 1, 6), split=2)
    if name == "metasgd":
        return metaopt.MetaSGD(model, inner_lr=0.2, inner_steps=2)
    if name == "reptile":
        return metaopt.Reptile(model, inner_lr=0.2, inner_steps=2)
    if name == "imaml":  # least squares: H is positive semi-definite, CG solves to roundoff
        return metaopt.IMAML(model, inner_lr=0.2, inner_steps=2, reg=1.0, cg_steps=20)
    adapt = ["bias"] if name == "maml-anil" else None  # ANIL: only one block adapts
    return metaopt.MAML(model, inner_lr=0.2, inner_steps=2, adapt=adapt)


def _train(
    name: str, info: distributed.DistInfo, steps: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``steps`` outer Adam steps; return the first meta-gradient and the final meta-parameters."""
    algo = _build(name)
    outer = torch.optim.Adam(algo.meta_parameters(), lr=0.05)
    rng = np.random.default_rng(7)
    first = None
    for _ in range(steps):
        tasks = mt.random_linear_tasks(META_BATCH, 6, rng)  # every rank draws the same batch
        outer.zero_grad()
        algo.meta_backward(distributed.shard(tasks, info), scale=1 / len(tasks))
        distributed.all_reduce_gradients(algo.meta_parameters(), info)
        if first is None:
            first = [p.grad.clone() for p in algo.meta_parameters()]
        outer.step()
    return first, [p.detach().clone() for p in algo.meta_parameters()]


def _join(rank: int, port: int, timeout_s: float) -> distributed.DistInfo:
    """Join a 2-process gloo group on loopback, as torchrun's environment would describe it."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    return distributed.setup("gloo", timeout_s=timeout_s)


def _leave() -> None:
    """Leave the group together and exit at once, once a worker's results are in its file.

    Left to the interpreter's finalisation, gloo's threads now and then abort the process
    ("terminate called without an active exception"; pytorch/pytorch#179291), which would turn
    a correct run into a failed exit status.
    """
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    os._exit(0)


def _worker(rank: int, port: int, out: str) -> None:
    info = _join(rank, port, timeout_s=60)
    results = {name: _train(name, info, steps=5) for name in ALGORITHMS}
    shard = torch.arange(3.0) if rank == 0 else torch.arange(2.0) + 10  # 5 tasks: 3 + 2
    gathered = distributed.gather_tasks(torch.stack([shard, -shard]), 5, info)
    torch.save({"results": results, "gathered": gathered}, Path(out) / f"rank{rank}.pt")
    _leave()


def _per_task(tasks) -> torch.Tensor:
    """Per-task values ``[2, 3, len(tasks)]`` of integer tasks (a stand-in for an evaluation)."""
    x = torch.tensor([float(t) for t in tasks], dtype=torch.float64)
    return torch.stack([torch.stack([x, x**2, -x]), torch.stack([x + 1, x * 0, x / 3])])


def _sharded_work(info: distributed.DistInfo) -> dict:
    """What a rank computes, and is asked to compute, when it shares work with ``info``'s group."""
    seen: list[list[int]] = []

    def compute(tasks) -> torch.Tensor:
        seen.append(list(tasks))
        return _per_task(tasks)

    mapped = distributed.map_tasks(compute, list(range(5)), info)
    few = distributed.map_tasks(compute, [7], info)  # fewer tasks than ranks: each rank does all
    made = distributed.on_main(lambda: f"made by rank {info.rank}", info)
    try:
        distributed.on_main(lambda: 1 // 0, info)
        failure = "no error"
    except (RuntimeError, ZeroDivisionError) as error:
        failure = f"{type(error).__name__}: {error}"
    outside = distributed.map_tasks(compute, list(range(5)), None)  # no group: all tasks here
    return {
        "mapped": mapped,
        "few": few,
        "seen": seen,
        "made": made,
        "failure": failure,
        "outside": outside,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    assert _spawn(_worker, tmp_path, timeout=180) == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ALGORITHMS:
        single_grad, single_params = _train(name, distributed.DistInfo(), steps=5)
        for rank in ranks:
            grad, params = rank["results"][name]
            for g, s in zip(grad, single_grad, strict=True):
                assert (g - s).norm() <= 1e-6 * s.norm(), f"{name}: meta-gradient differs"
            for p, s in zip(params, single_params, strict=True):
                torch.testing.assert_close(
                    p, s, rtol=1e-6, atol=1e-9, msg=f"{name}: parameters differ"
                )
        # ... and the ranks hold identical parameters, bit for bit.
        for a, b in zip(ranks[0]["results"][name][1], ranks[1]["results"][name][1], strict=True):
            assert torch.equal(a, b)
    expected = torch.tensor([[0.0, 1.0, 2.0, 10.0, 11.0], [-0.0, -1.0, -2.0, -10.0, -11.0]])
    assert torch.equal(ranks[0]["gathered"], expected) and torch.equal(
        ranks[1]["gathered"], expected
    )


def test_evaluation_work_is_split_across_ranks_and_gathered(tmp_path: Path) -> None:
    """map_tasks gives every rank the whole result, having computed only its share of it."""
    assert _spawn(_sharding_worker, tmp_path) == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    whole = _per_task(range(5))
    for rank, result in enumerate(ranks):
        assert torch.equal(result["mapped"], whole)  # [2, 3, 5], in task order
        assert torch.equal(result["few"], _per_task([7]))
        assert torch.equal(result["outside"], whole)
        assert result["made"] == "made by rank 0"
        share = [[0, 1, 2], [3, 4]][rank]
        assert result["seen"] == [share, [7], list(range(5))]
    assert ranks[0]["failure"].startswith("ZeroDivisionError")
    assert ranks[1]["failure"] == "RuntimeError: rank 0 failed: ZeroDivisionError: " + str(
        _error_of(lambda: 1 // 0)
    )


def _error_of(work) -> Exception:
    try:
        work()
    except Exception as error:
        return error
    raise AssertionError("no error")


def _sharding_worker(rank: int, port: int, out: str) -> None:
    info = _join(rank, port, timeout_s=60)
    torch.save(_sharded_work(info), Path(out) / f"rank{rank}.pt")
    _leave()


@pytest.mark.parametrize(
    ("tasks", "world", "expected"),
    [
        (5, 2, [(0, 3), (3, 5)]),
        (4, 4, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        (7, 3, [(0, 3), (3, 5), (5, 7)]),
    ],
)
def test_shard_bounds_cover_the_batch_once(tasks: int, world: int, expected) -> None:
    assert [distributed.shard_bounds(tasks, r, world) for r in range(world)] == expected


def test_world_larger_than_meta_batch_is_refused() -> None:
    with pytest.raises(
        metaopt.ConfigError, match="--meta-batch 2 is smaller than the world size 3"
    ):
        distributed.shard_bounds(2, 0, 3)


def test_single_process_is_a_no_op() -> None:
    info = distributed.setup()
    assert not info.active and info.is_main
    tasks = [1, 2, 3]
    assert distributed.shard(tasks, info) is tasks


def _mismatch_worker(rank: int, port: int, out: str) -> None:
    info = _join(rank, port, timeout_s=60)
    try:
        distributed.check_same_config(
            {"algo": "maml", "inner_lr": 0.01 if rank == 0 else 0.1, "seed": 0}, info
        )
        message = "no error"
    except metaopt.ConfigError as error:
        message = str(error)
    Path(out, f"rank{rank}.txt").write_text(message)
    _leave()


def _dying_worker(rank: int, port: int, out: str) -> None:
    info = _join(rank, port, timeout_s=20)
    if rank == 1:
        os._exit(3)  # dies without a word, before the collective
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    try:
        distributed.all_reduce_gradients([param], info)
        message = "no error"
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
    Path(out, f"rank{rank}.txt").write_text(message)
    # The group is broken: tearing it down (or letting the interpreter do so at exit) can abort
    # inside gloo's threads. What is tested is that the collective failed instead of hanging.
    os._exit(0)


def _spawn(target, tmp_path: Path, timeout: float = 120) -> list[int | None]:
    """``target(rank, port, tmp_path)`` on 2 spawned processes; their exit codes (None: killed
    after ``timeout`` seconds)."""
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    workers = [
        context.Process(target=target, args=(rank, port, str(tmp_path))) for rank in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=timeout)
    codes = [w.exitcode for w in workers]
    for w in workers:
        if w.is_alive():
            w.kill()
    return codes


class _ToyRegion:
    """A trust-region problem on linear-regression tasks: the surrogate is the tasks' mean squared
    error, the divergence the mean squared change of the predictions from the start's (the KL of
    unit-variance Gaussians, halved twice over), each a mean over the tasks this process holds."""

    def __init__(self, model: torch.nn.Module, tasks) -> None:  # type: ignore[no-untyped-def]
        self.model, self.tasks = model, list(tasks)
        dtype = next(model.parameters()).dtype
        self.inputs = [torch.as_tensor(t.A, dtype=dtype) for t in self.tasks]
        with torch.no_grad():
            self.start = [model(x).clone() for x in self.inputs]

    def _mean(self, values: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(values).mean()

    def divergence(self) -> torch.Tensor:
        return self._mean(
            [
                ((self.model(x) - y0) ** 2).mean()
                for x, y0 in zip(self.inputs, self.start, strict=True)
            ]
        )

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self._mean([t.support_loss(self.model) for t in self.tasks])
        return loss, self.divergence()


def _trust_region_run(info: distributed.DistInfo) -> dict:
    """Three trust-region steps on 5 linear tasks, sharded over ``info``'s ranks (3 + 2)."""
    from metaopt.trust_region import TrustRegionSettings, trust_region_step

    torch.manual_seed(0)
    model = mt.LinearModel(np.linspace(-1, 1, 6), split=2)
    params = list(model.parameters())
    rng = np.random.default_rng(3)
    steps = []
    for _ in range(3):
        tasks = mt.random_linear_tasks(META_BATCH, 6, rng)
        local = distributed.shard(tasks, info)
        region = _ToyRegion(model, local)
        for p in params:
            p.grad = None
        loss = torch.stack([t.support_loss(model) for t in local]).sum() / len(tasks)
        loss.backward()
        distributed.all_reduce_gradients(params, info)
        reduce = distributed.task_weighted_sum(len(local), len(tasks), info)
        settings = TrustRegionSettings(max_kl=50.0, cg_steps=4, ratio=0.5)
        steps.append(trust_region_step(params, region, settings, reduce))
    return {"steps": steps, "params": [p.detach().clone() for p in params]}


def _trust_region_worker(rank: int, port: int, out: str) -> None:
    info = _join(rank, port, timeout_s=60)
    torch.save(_trust_region_run(info), Path(out) / f"rank{rank}.pt")
    _leave()


def test_a_trust_region_step_on_two_ranks_is_one_process_step(tmp_path: Path) -> None:
    """The trust-region step (``--outer-optimizer trpo``) under torchrun: the Hessian-vector
    products and the line search's values summed over the ranks give every rank the direction,
    the candidates, the decisions and the parameters of one process holding every task."""
    assert _spawn(_trust_region_worker, tmp_path) == [0, 0]
    single = _trust_region_run(distributed.DistInfo())
    assert any(step.accepted for step in single["steps"])  # the test moves the parameters
    assert any(step.fraction < 1 for step in single["steps"])  # and backtracks at least once
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        for step, one in zip(result["steps"], single["steps"], strict=True):
            assert (step.accepted, step.fraction, step.backtracks) == (
                one.accepted,
                one.fraction,
                one.backtracks,
            )
            assert step.kl == pytest.approx(one.kl, rel=1e-5, abs=1e-9)
        for p, q in zip(result["params"], single["params"], strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_mismatched_configs_are_refused_on_every_rank(tmp_path: Path) -> None:
    assert _spawn(_mismatch_worker, tmp_path) == [0, 0]
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "rank 1's config differs from rank 0's in inner_lr" in message


def test_a_dead_rank_stops_the_others_instead_of_hanging(tmp_path: Path) -> None:
    codes = _spawn(_dying_worker, tmp_path, timeout=90)
    assert codes[1] == 3
    assert codes[0] == 0, "rank 0 hung (or crashed) instead of reporting the failure"
    message = (tmp_path / "rank0.txt").read_text()
    assert message != "no error" and "Error" in message


def _launch(program: list[str], processes: int) -> str:
    """``python PROGRAM`` in one process, or under torchrun with ``processes`` ranks; its stdout."""
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        launch += ["--master-port", str(_free_port())]
    done = subprocess.run(
        [*launch, *program],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _metaopt(args: list[str], processes: int) -> None:
    """``metaopt ARGS`` in one process, or under torchrun with ``processes`` ranks."""
    _launch(["-m", "metaopt", *args], processes)


def _assert_close_json(a: object, b: object, where: str = "eval.json") -> None:
    """Same structure and strings; numbers equal to 1e-5 relative or 5e-5 absolute.

    Not bit-equal: the trained parameters agree to about 1e-8 (the all-reduce sums the
    meta-gradient in another order), and up to 32 float32 adaptation steps amplify that; measured
    differences reach 8e-6 absolute on MSEs near 3 and on differences of them, far below their
    95% intervals (about 1). A task gathered out of order would change paired differences by far
    more.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_close_json(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close_json(x, y, f"{where}[{k}]")
    elif isinstance(a, float | int) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=1e-5, abs=5e-5, nan_ok=True), where
    else:
        assert a == b, where


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_parameters(
    one: Path, two: Path, rtol: float = 1e-6, exempt: tuple[str, ...] = ()
) -> None:
    """The runs' meta-parameters (and learned rates) agree to ``rtol``, ``exempt`` names aside."""
    first = load_checkpoint(one / "checkpoint.pt")["algorithm"]
    second = load_checkpoint(two / "checkpoint.pt")["algorithm"]
    assert first.keys() == second.keys()
    for part in first:
        if not isinstance(first[part], dict):
            continue
        for name, value in first[part].items():
            if name in exempt:
                continue
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert (second[part][name] - value).norm() <= rtol * value.norm(), name


def test_metaopt_train_and_eval_under_torchrun_equal_one_process(tmp_path: Path) -> None:
    """Training, the periodic and the final evaluation (sharded, with the baseline trained on
    rank 0 alone), and ``metaopt eval`` give the single-process numbers."""
    flags = ["train", "sine", "--iterations", "5", "--meta-batch", "5", "--eval-every", "5"]
    flags += ["--eval-tasks", "21", "--baseline-steps", "20", "--quiet"]
    _metaopt([*flags, "--out", str(tmp_path / "one")], processes=1)
    _metaopt([*flags, "--out", str(tmp_path / "two")], processes=2)
    _assert_same_parameters(tmp_path / "one", tmp_path / "two")
    rows = [_rows(tmp_path / d) for d in ("one", "two")]
    assert len(rows[0]) == len(rows[1]) == 5
    for a, b in zip(*rows, strict=True):
        assert a["query"] == pytest.approx(b["query"], rel=1e-5)
    assert rows[1][-1]["val_mse_after"] == pytest.approx(rows[0][-1]["val_mse_after"], rel=1e-6)
    one, two = (json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two"))
    assert two["tasks"] == 21  # 11 + 10 tasks, gathered
    _assert_close_json(one, two)
    # `metaopt eval` under torchrun: the same numbers again, written once by rank 0.
    (tmp_path / "two" / "eval.json").unlink()
    _metaopt(["eval", str(tmp_path / "two")], processes=2)
    _assert_close_json(one, json.loads((tmp_path / "two" / "eval.json").read_text()))


def test_rl_resumed_under_torchrun_equals_one_uninterrupted_process(tmp_path: Path) -> None:
    """RL on 2 ranks, stopped after 3 iterations and resumed to 6 under torchrun, equals one
    process's 6 iterations: every rank was restored (a rank restarted from scratch would change
    the all-reduced gradient), and the sharded evaluations gather the same returns."""
    flags = ["train", "mdp", "--meta-batch", "5", "--eval-every", "3", "--test-tasks", "5"]
    flags += ["--eval-tasks", "7", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    _metaopt([*flags, "--iterations", "6", "--out", str(one)], processes=1)
    _metaopt([*flags, "--iterations", "3", "--out", str(two)], processes=2)
    _metaopt([*flags, "--iterations", "6", "--resume", str(two)], processes=2)
    _assert_same_parameters(one, two)
    rows = [_rows(one), _rows(two)]
    assert [r["iteration"] for r in rows[1]] == list(range(1, 7))
    for a, b in zip(*rows, strict=True):
        assert b["query"] == pytest.approx(a["query"], rel=1e-5)
        assert b["train_post_return"] == pytest.approx(a["train_post_return"], rel=1e-5)
        if "test_post_return" in a:
            assert b["test_post_return"] == pytest.approx(a["test_post_return"], rel=1e-5)
    assert sum("test_post_return" in r for r in rows[1]) == 2
    _assert_close_json(*(json.loads((d / "eval.json").read_text()) for d in (one, two)))
    saved = json.loads((two / "config.json").read_text())
    assert saved["world_size"] == 2 and saved["resumed"][0]["world_size"] == 2
    assert saved["resumed"][0]["from_iteration"] == 3


def test_two_nodes_rendezvous_through_c10d(tmp_path: Path) -> None:
    """The multi-node launch of docs/distributed.md, with two torchrun agents on loopback standing
    in for two machines (one process each), trains what one process trains."""
    flags = ["-m", "metaopt", "train", "sine", "--iterations", "3", "--meta-batch", "5"]
    flags += ["--eval-tasks", "6", "--baseline-steps", "5", "--quiet"]
    _metaopt([*flags[2:], "--out", str(tmp_path / "one")], processes=1)
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{_free_port()}"]
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                *("-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"),
                *rendezvous,
                *("--rdzv-id", "metaopt-test", *flags, "--out", str(tmp_path / "two")),
            ],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for agent in agents:
        _, stderr = agent.communicate(timeout=300)
        assert agent.returncode == 0, stderr
    _assert_same_parameters(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2


FAMILY_FLAGS = {
    "sine": ["--baseline-steps", "10"],
    "classify": ["--baseline-steps", "10"],
    "omniglot": ["--baseline-steps", "3", "--image-size", "14", "--filters", "8"],
    "mdp": ["--test-tasks", "4"],
    # Adam: the grid checks the sharded meta-gradient to 1e-5, which the trust-region step's
    # solve does not keep (test_nav2d_trust_region_under_torchrun_follows_one_process)
    "nav2d": "--test-tasks 4 --trajectories 3 --horizon 10 --hidden-sizes 8 --outer-optimizer adam".split(),
}


#: iMAML: λ above the support Hessians' most negative eigenvalue, on the loop engine, which
#: solves each task's system alone (the vectorised engine solves a shard's tasks as one block
#: system, whose CG iterates depend on the shard); the RL families refuse iMAML.
IMAML_FLAGS = ["--reg", "50", "--cg-steps", "20", "--engine", "loop", "--curvature", "hessian"]
RL_FAMILIES = ("mdp", "nav2d")
GRID = [
    (family, algo)
    for family in FAMILY_FLAGS
    for algo in ("maml", "fomaml", "metasgd", "reptile", "imaml", "anil")
    if not (family in RL_FAMILIES and algo == "imaml")
]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "algo"), GRID)
def test_every_family_and_algorithm_under_torchrun(
    tmp_path: Path, family: str, algo: str, omniglot_dir: Path
) -> None:
    """`metaopt train` of every family with every algorithm runs unchanged on 2 ranks and ends
    with the single process's parameters and eval.json (about 10 s each: `pytest -m slow`).

    Omniglot's convolution biases are exempt: each feeds a BatchNorm, which cancels it, so its
    meta-gradient is zero up to roundoff, and the outer Adam step turns that roundoff (summed in
    another order on 2 ranks) into a full-size step of arbitrary sign. The network's outputs do
    not depend on them; every other tensor agrees (measured: 1.2e-6 at most, a BatchNorm bias).
    """
    if algo == "anil":  # MAML with only the family's head adapted
        algo_flags = ["--algo", "maml", "--adapt", "anil"]
    else:
        algo_flags = ["--algo", algo, *(IMAML_FLAGS if algo == "imaml" else [])]
    flags = ["train", family, *algo_flags, "--iterations", "3", "--meta-batch", "3"]
    flags += ["--eval-every", "3", "--eval-tasks", "5", "--quiet", *FAMILY_FLAGS[family]]
    if family == "omniglot":
        flags += ["--data-dir", str(omniglot_dir), "--train-classes", "12", "--val-classes", "3"]
    _metaopt([*flags, "--out", str(tmp_path / "one")], processes=1)
    _metaopt([*flags, "--out", str(tmp_path / "two")], processes=2)
    exempt = ("0.bias", "3.bias", "6.bias", "9.bias") if family == "omniglot" else ()
    _assert_same_parameters(tmp_path / "one", tmp_path / "two", rtol=1e-5, exempt=exempt)
    _assert_close_json(
        *(json.loads((tmp_path / d / "eval.json").read_text()) for d in ("one", "two"))
    )


@pytest.mark.slow
def test_nav2d_trust_region_under_torchrun_follows_one_process(tmp_path: Path) -> None:
    """nav2d's MAML-TRPO on 2 ranks, one step, is the single process's: the meta-gradient and
    the metrics before the step to 1e-5 (the sharding), and the step itself (each Fisher-vector
    product and line-search value summed over the ranks): its KL to 1e-4, the parameters to 1e-3
    of their norm (the mean head, which starts near zero, 2e-4 apart).

    The solve is damped (``--cg-damping 0.1``) to make it well conditioned: at the default 1e-5,
    conjugate gradients amplify float32 rounding, so the ranks' steps differ by more than any
    tolerance that would still catch a wrong reduction (the step's KL 10 % apart at the default
    σ₀; 0.3 % at damping 1e-2, 5e-5 at 0.1, 2e-7 at 1): a trust-region run on 2 ranks is another
    float32 trajectory, not the single process's (docs/distributed.md)."""
    flags = ["train", "nav2d", "--algo", "maml", "--iterations", "1", "--meta-batch", "3"]
    flags += ["--eval-every", "0", "--eval-tasks", "5", "--quiet", "--outer-optimizer", "trpo"]
    flags += ["--test-tasks", "4", "--trajectories", "3", "--horizon", "10", "--hidden-sizes", "8"]
    flags += ["--cg-damping", "0.1"]
    _metaopt([*flags, "--out", str(tmp_path / "one")], processes=1)
    _metaopt([*flags, "--out", str(tmp_path / "two")], processes=2)
    (one,), (two,) = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert two["query"] == pytest.approx(one["query"], rel=1e-5)
    assert two["train_post_return"] == pytest.approx(one["train_post_return"], rel=1e-5)
    assert two["trpo_backtracks"] == one["trpo_backtracks"]
    assert two["trpo_kl"] == pytest.approx(one["trpo_kl"], rel=1e-4)
    _assert_same_parameters(tmp_path / "one", tmp_path / "two", rtol=1e-3)


def test_the_evaluation_timing_script_of_the_docs_runs(tmp_path: Path) -> None:
    """benchmarks/evaluate_time.py, which measured the evaluation speed-up in docs/distributed.md."""
    run = tmp_path / "run"
    flags = ["--iterations", "2", "--eval-tasks", "4", "--baseline-steps", "5", "--quiet"]
    _metaopt(["train", "sine", *flags, "--out", str(run)], processes=1)
    script = Path(__file__).parents[1] / "benchmarks" / "evaluate_time.py"
    for processes in (1, 2):
        printed = _launch([str(script), str(run), "--tasks", "6", "--repeats", "2"], processes)
        assert f"sine: evaluate on 6 tasks, {processes} process(es)" in printed
        assert printed.count("median") == 1  # printed by rank 0 alone


@pytest.mark.slow
def test_a_skipped_solve_skips_on_every_rank(tmp_path: Path) -> None:
    """`--on-solve-failure skip` under torchrun: a solve no rank can meet drops every meta-batch
    on both ranks alike (one all-reduce of the flag), counted as in one process, θ unmoved."""
    flags = ["train", "sine", "--algo", "imaml", "--iterations", "2", "--meta-batch", "3"]
    flags += ["--cg-steps", "1", "--cg-tol", "1e-12", "--on-solve-failure", "skip"]
    flags += ["--eval-tasks", "4", "--quiet", *FAMILY_FLAGS["sine"]]
    _metaopt([*flags, "--out", str(tmp_path / "one")], processes=1)
    _metaopt([*flags, "--out", str(tmp_path / "two")], processes=2)
    _assert_same_parameters(tmp_path / "one", tmp_path / "two")
    for run in ("one", "two"):
        assert [row["solve_skipped"] for row in _rows(tmp_path / run)] == [1, 2]
        assert json.loads((tmp_path / run / "eval.json").read_text())["solve_skipped"] == 2


@pytest.mark.slow
def test_the_solve_diagnostics_are_the_worst_over_every_rank(tmp_path: Path) -> None:
    """iMAML's per-iteration solve numbers are each the worst over the meta-batch's tasks; under
    torchrun, the worst over the ranks' worsts (not their mean), as one process logs them."""
    flags = ["train", "sine", "--algo", "imaml", "--iterations", "1", "--meta-batch", "4"]
    flags += ["--eval-tasks", "4", "--quiet", *FAMILY_FLAGS["sine"]]
    _metaopt([*flags, "--out", str(tmp_path / "one")], processes=1)
    _metaopt([*flags, "--out", str(tmp_path / "two")], processes=2)
    # The first iteration's (from the same θ: later ones part by the rounding of a sharded sum)
    for one, two in zip(_rows(tmp_path / "one")[:1], _rows(tmp_path / "two")[:1], strict=True):
        for key in ("inner_residual", "inner_steps_used"):
            assert two[key] == pytest.approx(one[key], rel=1e-5), key
        # CG solves this one to roundoff, where rounding (the batch's shape) can move its
        # stopping point by an iteration: equal at that scale
        assert two["solve_residual"] == pytest.approx(one["solve_residual"], abs=1e-6)
        assert abs(two["solve_iterations"] - one["solve_iterations"]) <= 1
