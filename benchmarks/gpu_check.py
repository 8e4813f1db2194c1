"""Does metaopt compute on CUDA what it computes on the CPU? ``python -m benchmarks.gpu_check``.

On a machine with CUDA, with the same seeds on both devices:

1. **meta-gradients**: one meta-batch's meta-gradient (second-order MAML) of ``sine``, of
   ``omniglot`` on a synthetic fixture and of ``images`` on the same fixture when that family is
   installed, on the CPU and on ``--device``; relative L2 difference at most `FP32_TOLERANCE`
   (TF32 is switched off for the comparison: with it, cuDNN's convolutions keep 10 significant
   bits and differ by ~1e-3);
2. **bf16**: the same meta-gradient under bf16 autocast on ``--device`` against the CPU's fp32
   one, on the loop engine that ``--precision`` runs on: cosine at least `BF16_COSINE` (the bound
   tests/test_device.py holds the CPU's bf16 to; measured there 0.93 on conv4);
3. **training**: ``metaopt train`` for a few iterations on each device, every iteration's query
   loss within `TRAINING_TOLERANCE` (relative) of the CPU's;
4. **resume and eval across devices**: a run checkpointed on ``--device`` resumed on the CPU, and
   a run trained on the CPU evaluated on ``--device`` with ``metaopt eval``;
5. **bench**: ``metaopt bench --quick --cases omniglot-maml-1step`` on ``--device`` (its own check
   that every implementation computes the same meta-gradient, then times), beside the CPU's.

Prints one line per check and exits 1 if any failed (a check that cannot be set up, say the
``images`` family taking other flags, is reported as skipped). Without CUDA it says so and exits 0 having
checked nothing; ``--device cpu`` runs every check against the CPU itself (a dry run of this
script on any machine: every difference is then 0).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metaopt.tools.bench import run_bench
from metaopt.training import (
    ConfigError,
    autocast,
    build_algorithm,
    evaluate_run,
    resolve_config,
    resume,
    run_device,
    train,
)
from metaopt.training.registry import available_families, get_family
from supervised.omniglot.data import make_fixture

#: Largest relative L2 difference of an fp32 meta-gradient between the CPU and CUDA (different
#: kernels sum in different orders; float32 keeps 24 bits, a conv net's chain loses a few).
FP32_TOLERANCE = 1e-3
#: Smallest cosine of a bf16 meta-gradient on the device with the CPU's fp32 one.
BF16_COSINE = 0.9
#: Largest relative difference of a training loss between the devices, iteration by iteration.
TRAINING_TOLERANCE = 1e-3
#: Iterations of the short training runs.
ITERATIONS = 5
#: The bench case run on both devices.
CASE = "omniglot-maml-1step"

_FIXTURE = {"alphabets": 4, "characters": 5, "drawers": 20}
_SPLIT = {"train_classes": 12, "val_classes": 3}


def _workloads(data: Path) -> dict[str, dict[str, Any]]:
    """Family -> small flags; ``images`` where the family is installed."""
    small = {"eval_tasks": 8, "baseline_steps": 2}
    loads: dict[str, dict[str, Any]] = {
        "sine": {**small, "meta_batch": 4, "protocol_steps": 1},
        "omniglot": {**small, **_SPLIT, "data_dir": str(data), "meta_batch": 4, "filters": 16},
    }
    if "images" in available_families():
        loads["images"] = {**loads["omniglot"]}
    return loads


def meta_gradient(family: str, flags: dict[str, Any], device: str, precision: str) -> Any:
    """The meta-gradient of one meta-batch (drawn from seed 0) at the seeded initialisation."""
    config = resolve_config(get_family(family), {**flags, "device": device, "precision": precision})
    found = get_family(family)
    algo = build_algorithm(config, found.make_model(config))
    tasks = found.sample_tasks(config, np.random.default_rng(0), config.meta_batch)
    with autocast(config, run_device(config)):
        algo.meta_backward(tasks, scale=1 / len(tasks))
    return torch.cat([p.grad.detach().flatten().double().cpu() for p in algo.meta_parameters()])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _losses(run_dir: Path) -> list[float]:
    rows = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(row)["query"] for row in rows]


def _numbers(value: Any) -> list[float]:
    """Every number in an eval.json, in order."""
    if isinstance(value, dict):
        return [x for key in sorted(value) for x in _numbers(value[key])]
    if isinstance(value, list):
        return [x for item in value for x in _numbers(item)]
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return [float(value)] if is_number else []


def _train(family: str, flags: dict[str, Any], out: Path, **more: Any) -> Path:
    config = resolve_config(get_family(family), {**flags, **more, "out": str(out)})
    return train(get_family(family), config, progress=False)


def checks(device: str, work: Path) -> list[tuple[str, Callable[[], str]]]:
    """(name, check) pairs; a check returns its measurement and raises AssertionError on a
    mismatch."""
    loads = _workloads(make_fixture(work / "omniglot", **_FIXTURE))
    found: list[tuple[str, Callable[[], str]]] = []
    for family, flags in loads.items():

        def gradients(family: str = family, flags: dict[str, Any] = flags) -> str:
            cpu = meta_gradient(family, flags, "cpu", "fp32")
            there = meta_gradient(family, flags, device, "fp32")
            difference = _relative(there, cpu)
            assert difference <= FP32_TOLERANCE, f"relative difference {difference:.2e}"
            reduced = meta_gradient(family, flags, device, "bf16")
            cosine = float(torch.nn.functional.cosine_similarity(reduced, cpu, dim=0))
            assert cosine >= BF16_COSINE, f"bf16 cosine {cosine:.4f}"
            return f"fp32 relative difference {difference:.2e}, bf16 cosine {cosine:.4f}"

        def training(family: str = family, flags: dict[str, Any] = flags) -> str:
            base = {**flags, "iterations": ITERATIONS}
            cpu = _losses(_train(family, base, work / f"{family}-cpu", device="cpu"))
            there = _losses(_train(family, base, work / f"{family}-dev", device=device))
            worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(there, cpu, strict=True))
            assert worst <= TRAINING_TOLERANCE, f"query losses differ by {worst:.2e} (relative)"
            return f"{ITERATIONS} iterations, query losses within {worst:.2e} (relative)"

        def across(family: str = family, flags: dict[str, Any] = flags) -> str:
            half = {**flags, "iterations": 2, "checkpoint_every": 1}
            run_dir = _train(family, half, work / f"{family}-across", device=device)
            resume(run_dir, overrides={"iterations": ITERATIONS, "device": "cpu"}, progress=False)
            straight = _losses(work / f"{family}-cpu")
            resumed = _losses(run_dir)
            worst = max(
                abs(a - b) / max(abs(b), 1e-12) for a, b in zip(resumed, straight, strict=True)
            )
            assert worst <= TRAINING_TOLERANCE, f"resumed losses differ by {worst:.2e}"
            trained = work / f"{family}-cpu"
            on_cpu = _numbers(evaluate_run(trained, num_tasks=4, device="cpu"))
            on_device = _numbers(evaluate_run(trained, num_tasks=4, device=device))
            apart = max(
                abs(a - b) / max(abs(b), 1e-6) for a, b in zip(on_device, on_cpu, strict=True)
            )
            assert apart <= TRAINING_TOLERANCE, f"eval on {device} differs by {apart:.2e}"
            return (
                f"resumed on the CPU within {worst:.2e}; eval.json on {device} within {apart:.2e}"
            )

        found += [
            (f"{family}: meta-gradient", gradients),
            (f"{family}: training", training),
            (f"{family}: resume and eval across devices", across),
        ]

    def bench() -> str:
        medians = {}
        for where in ("cpu", device):
            with contextlib.redirect_stdout(io.StringIO()):
                records = run_bench(
                    quick=True,
                    cases=[CASE],
                    memory=False,
                    compiled=False,
                    progress=False,
                    device=where,
                )
            medians[where] = {r["impl"]: r["median_s"] for r in records if r.get("case") == CASE}
        fastest = {where: min(m.values()) * 1e3 for where, m in medians.items()}
        return ", ".join(f"{where}: fastest {ms:.1f} ms" for where, ms in fastest.items())

    found.append((f"bench {CASE}", bench))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu_check: this machine has no CUDA device (torch {torch.__version__}); nothing checked"
        )
        return 0
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(1)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"gpu_check: {args.device} ({name}) against the CPU, torch {torch.__version__}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="metaopt-gpu-check-") as tmp:
        for label, check in checks(args.device, Path(tmp)):
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    measured = check()
                print(f"  ok    {label}: {measured}")
            except ConfigError as error:  # could not be set up here (a family's other flags)
                print(f"  skip  {label}: {error}")
            except Exception as error:
                failed += 1
                detail = str(error).splitlines()[0] if str(error) else type(error).__name__
                print(f"  FAIL  {label}: {detail}")
                traceback.print_exc(limit=3, file=sys.stderr)
    print(f"gpu_check: {'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
