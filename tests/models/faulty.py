"""Models that go wrong in the ways users' models do."""

import torch
from torch import nn


class Raises(nn.Module):
    """forward raises: export must stop with one line and write nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("this model refuses every input")


class FrozenBranch(nn.Module):
    """A data-dependent branch: tracing keeps the branch the example input took."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 100


class HarmlessWarning(nn.Module):
    """Converts a tensor to a Python bool (TracerWarning) but the result holds for every finite input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(torch.isfinite(x).all()):
            return x * 3
        return x


class BakedDevice(nn.Module):
    """`device=x.device` is recorded as a constant by the tracer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(x.shape, device=x.device)


class ReturnsString(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        return x, "label"


def not_a_module() -> int:
    return 3


def needs_arguments(width: int) -> nn.Module:
    return nn.Linear(width, width)
