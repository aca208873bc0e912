"""Models whose code calls sys.exit: scaffold must report it as a failure, not exit quietly with its code."""

import sys

import torch


class ExitsInInit(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        sys.exit(0)


class ExitsInForward(torch.nn.Module):
    scaffold_inputs = ["x=2x3"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sys.exit(3)
