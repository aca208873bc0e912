"""A small conv classifier for the precision tests: conv-bn-relu blocks with a residual add and 10 logits,
the patterns the bf16 autocast and the x86 int8 quantizer handle, at a fraction of resnet18's compile time."""

from __future__ import annotations

import torch
from torch import nn


class SmallConv(nn.Module):
    scaffold_inputs = ["x=1x3x32x32"]

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()  # called twice, as in resnet's BasicBlock
        self.head = nn.Linear(16, 10)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = self.relu(self.bn(self.conv(y)) + y)
        y = self.relu(y)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))
