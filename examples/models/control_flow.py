"""Data-dependent control flow: tracing records one branch only, so this model needs --method script."""

import torch
from torch import nn


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 8)
        self.down = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.up(x).relu()
        return self.down(x) * 2.0


def make_gate() -> nn.Module:
    """A factory, as `examples.models.control_flow:make_gate` shows scaffold accepts."""
    return Gate()
