"""A tiny MLP: per-call overhead dominates, which is where C++ beats Python most."""

from torch import nn


def make_mlp() -> nn.Module:
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    model.scaffold_inputs = ["x=1x64"]
    return model
