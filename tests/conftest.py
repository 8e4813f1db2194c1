"""Settings every test shares."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Run each test on one torch thread, then put the count back.

    Bit-identical comparisons need one thread count on both sides, and meta-learning's tiny models
    run several times slower with two threads on a small machine that other work shares (measured
    here: up to 10x per meta-iteration). ``metaopt train`` defaults to ``--threads 1`` too.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def registered_algorithms() -> Iterator[None]:
    """Forget the algorithms a test registered in-process (the docs' ``register_algorithm``), so
    that every other test sees the installed ones alone."""
    from metaopt.registry import algorithm_names, unregister_algorithm

    before = set(algorithm_names())
    try:
        yield
    finally:
        for name in set(algorithm_names()) - before:
            unregister_algorithm(name)
