"""The data side's share of a meta-iteration of ``metaopt train images`` (docs/performance.md).

For MAML's two image settings, 5-way 1-shot with meta-batch 32 (greyscale 28×28, 5 query images
per class, conv4 with 64 strided filters; colour 84×84, 15 query images per class, conv4 with 32
filters and max-pooling), this times

* the data side: drawing one training meta-batch from the family (`ImagesFamily.sample_tasks`:
  class and image indices, the gather from the decoded uint8 array, conversion to float tensors);
* one meta-iteration of second-order MAML on that meta-batch (1 inner step, the engine and settings
  `metaopt train images` builds: forward, adaptation and meta-gradient),

and prints each one's median time and the data side's share, ``data / (data + meta-iteration)``.
The folder is synthetic (random images written to a temporary folder: only shapes matter here)
and is decoded once, as a run does, into its memory-mapped cache before the timing starts.

    python -m benchmarks.images_data_share --threads 1 --repeats 5
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


def measure(side: int, colour: bool, repeats: int) -> tuple[float, float]:
    """Median seconds of the data side and of one meta-iteration."""
    family = ImagesFamily()
    with tempfile.TemporaryDirectory(prefix="metaopt-images-share-") as tmp:
        root = write_folder(Path(tmp) / "data", side, colour)
        config = resolve_config(
            family,
            {"data_dir": str(root), "train_classes": 15, "val_classes": 5, "inner_steps": 1},
        )
        rng = np.random.default_rng(0)
        data = median_seconds(lambda: family.sample_tasks(config, rng, config.meta_batch), repeats)
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
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default: 5)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, meta-batch 32, 5-way 1-shot, MAML 1 inner step")
    print(f"{'setting':12s} {'data (ms)':>10s} {'meta-iteration (ms)':>20s} {'data share':>11s}")
    for name, side, colour in SETTINGS:
        data, step = measure(side, colour, args.repeats)
        share = data / (data + step)
        print(f"{name:12s} {1e3 * data:10.1f} {1e3 * step:20.1f} {100 * share:10.1f}%")


if __name__ == "__main__":
    main()
