"""The data side's share of a meta-iteration of ``metaopt train images`` (docs/performance.md).

For MAML's two image settings, 5-way 1-shot with meta-batch 32 (greyscale 28×28, 5 query images
per class, conv4 with 64 strided filters; colour 84×84, 15 query images per class, conv4 with 32
filters and max-pooling), this times

* the data side: drawing one training meta-batch from the family (`ImagesFamily.sample_tasks`:
  class and image indices, the gather from the decoded uint8 array, conversion to float tensors);
* one meta-iteration of second-order MAML on that meta-batch (1 inner step, built as
  `metaopt train images --engine ENGINE` builds it: forward, adaptation and meta-gradient; the
  loop engine by default, the faster one on conv4 on a CPU (docs/performance.md, Omniglot) and
  so the one against which the data side weighs most),

and prints each one's median time and the data side's share, ``data / (data + meta-iteration)``.
The folder is synthetic (random images written to a temporary folder: only shapes matter here)
and is decoded once, as a run does, into its memory-mapped cache before the timing starts.

    python -m benchmarks.images_data_share --threads 1 --repeats 3

The data side is the median of 10 draws, the meta-iteration the median of ``--repeats``, each
after one warm-up. With ``--engine vmap`` the 84×84 meta-iteration holds more than 15 GB at once
(32 tasks of 80 images), more than a small machine has.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metaopt.training.build import build_algorithm
from metaopt.training.config import resolve_config
from supervised.images.family import ImagesFamily

#: (name, side, colour): the MAML paper's two image settings.
SETTINGS = (("28x28 grey", 28, False), ("84x84 RGB", 84, True))
CLASSES, PER_CLASS = 30, 20


def write_folder(root: Path, side: int, colour: bool) -> Path:
    """``CLASSES`` folders of ``PER_CLASS`` random images (PNG; JPEG for colour)."""
    rng = np.random.default_rng(0)
    shape = (side, side, 3) if colour else (side, side)
    for c in range(CLASSES):
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:02d}.{'jpg' if colour else 'png'}")
    return root


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(side: int, colour: bool, repeats: int, engine: str) -> tuple[float, float]:
    """Median seconds of the data side and of one meta-iteration."""
    family = ImagesFamily()
    with tempfile.TemporaryDirectory(prefix="metaopt-images-share-") as tmp:
        root = write_folder(Path(tmp) / "data", side, colour)
        config = resolve_config(
            family,
            {
                "data_dir": str(root),
                "train_classes": 15,
                "val_classes": 5,
                "inner_steps": 1,
                "engine": engine,
            },
        )
        rng = np.random.default_rng(0)
        data = median_seconds(lambda: family.sample_tasks(config, rng, config.meta_batch), 10)
        batch = family.sample_tasks(config, rng, config.meta_batch)
        algo = build_algorithm(config, family.make_model(config))  # as `metaopt train` does
        params = algo.meta_parameters()

        def iteration() -> None:
            for p in params:
                p.grad = None
            algo.meta_backward(batch)

        step = median_seconds(iteration, repeats)
    return data, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed meta-iterations (default: 3)")
    parser.add_argument("--engine", default="loop", help="engine of the meta-iteration")
    parser.add_argument(
        "--sides",
        default="28,84",
        help="settings to run, by image side: 28 (grey) and/or 84 (RGB) (default: 28,84)",
    )
    args = parser.parse_args()
    sides = {int(side) for side in args.sides.split(",")}
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, meta-batch 32, 5-way 1-shot, MAML 1 inner step, {args.engine}")
    print(f"{'setting':12s} {'data (ms)':>10s} {'meta-iteration (ms)':>20s} {'data share':>11s}")
    for name, side, colour in SETTINGS:
        if side not in sides:
            continue
        data, step = measure(side, colour, args.repeats, args.engine)
        share = data / (data + step)
        print(f"{name:12s} {1e3 * data:10.1f} {1e3 * step:20.1f} {100 * share:10.1f}%")


if __name__ == "__main__":
    main()
