"""Small models and stacked regression tasks that the core's tests share."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TanhMLP(nn.Module):
    """A float64 2-``hidden``-1 tanh network, initialised from ``seed``."""

    def __init__(self, hidden: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BatchNormNet(nn.Module):
    """Linear, BatchNorm (``width`` features), ReLU, Linear: state beyond the parameters."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Linear(3, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class StackedTasks(list):
    """Squared-error regression tasks with stacked data, usable by both engines: the batch is a
    ``BatchedTasks`` and its items are ``Task`` views of one row each. A subclass builds the
    data and calls :meth:`stack`."""

    def stack(self, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor) -> None:
        self.xs, self.ys, self.xq, self.yq = xs, ys, xq, yq
        self[:] = [StackedTask(self, b) for b in range(len(xs))]

    def support_losses(self, forward, step):
        return ((forward(self.xs) - self.ys) ** 2).mean(dim=(1, 2))

    def query_losses(self, forward):
        return ((forward(self.xq) - self.yq) ** 2).mean(dim=(1, 2))


class StackedTask:
    def __init__(self, batch: StackedTasks, index: int) -> None:
        self.batch, self.index = batch, index

    def support_loss(self, model):
        b, i = self.batch, self.index
        return ((model(b.xs[i]) - b.ys[i]) ** 2).mean()

    def query_loss(self, model):
        b, i = self.batch, self.index
        return ((model(b.xq[i]) - b.yq[i]) ** 2).mean()


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """stderr of ``metaopt ARGV``, which must exit with status 2 in one line, without a traceback
    (the house rule for a user's error on the command line)."""
    from metaopt.cli import main

    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("metaopt: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err.strip()
