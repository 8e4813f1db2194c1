"""Sharded meta-training on 2 CPU processes (gloo, loopback) equals one process."""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

import metaopt
from metaopt import distributed
from metaopt import testing as mt

ALGORITHMS = ("maml", "metasgd", "reptile")
META_BATCH = 5  # odd: the two shards are uneven (3 + 2 tasks)


def _build(name: str) -> metaopt.MetaLearner:
    model = mt.LinearModel(np.linspace(-1, 1, 6), split=2)
    if name == "metasgd":
        return metaopt.MetaSGD(model, inner_lr=0.2, inner_steps=2)
    if name == "reptile":
        return metaopt.Reptile(model, inner_lr=0.2, inner_steps=2)
    return metaopt.MAML(model, inner_lr=0.2, inner_steps=2)


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


def _worker(rank: int, port: int, out: str) -> None:
    info = _join(rank, port, timeout_s=60)
    try:
        results = {name: _train(name, info, steps=5) for name in ALGORITHMS}
        shard = torch.arange(3.0) if rank == 0 else torch.arange(2.0) + 10  # 5 tasks: 3 + 2
        gathered = distributed.gather_tasks(torch.stack([shard, -shard]), 5, info)
        torch.save({"results": results, "gathered": gathered}, Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    workers = [
        context.Process(target=_worker, args=(rank, port, str(tmp_path))) for rank in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=180)
        assert w.exitcode == 0, f"rank exited with {w.exitcode}"
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
    finally:
        torch.distributed.destroy_process_group()
    Path(out, f"rank{rank}.txt").write_text(message)


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


def test_metaopt_train_under_torchrun_equals_one_process(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from metaopt.checkpoint import load_checkpoint

    flags = [
        "train",
        "sine",
        "--iterations",
        "5",
        "--meta-batch",
        "5",
        "--eval-tasks",
        "20",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, "-m", "metaopt", *flags, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(_free_port()),
    ]
    sharded = subprocess.run(
        [*launch, "-m", "metaopt", *flags, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert sharded.returncode == 0, sharded.stderr
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")["algorithm"]["model"]
    two = load_checkpoint(tmp_path / "two" / "checkpoint.pt")["algorithm"]["model"]
    for name, value in one.items():
        assert (two[name] - value).norm() <= 1e-6 * value.norm(), name
    rows = [
        [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        for d in ("one", "two")
    ]
    assert len(rows[0]) == len(rows[1]) == 5
    for a, b in zip(*rows, strict=True):
        assert a["query"] == pytest.approx(b["query"], rel=1e-5)
