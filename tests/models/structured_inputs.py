"""Models whose forward takes more than positional tensors: a List[Tensor], a Dict[str, Tensor], optional
arguments left at their defaults. All are scriptable; Mixed combines the three for one shared build."""

from typing import Dict, List, Optional  # noqa: UP035 — TorchScript reads these annotations

import torch
import torchvision
from torch import nn


class ListSum(nn.Module):
    """forward(xs: List[Tensor]): rows of any number of [n, 4] tensors, projected."""

    scaffold_inputs = ["xs[0]=2x4", "xs[1]=3x4"]

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:  # noqa: UP006
        return self.proj(torch.cat(xs, 0))


class DictInput(nn.Module):
    """forward(batch: Dict[str, Tensor]): token ids and a mask, by key."""

    scaffold_inputs = ["batch['ids']=2x5:int64:0..20", "batch['mask']=2x5:bool"]

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 4)

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:  # noqa: UP006
        return (self.embed(batch["ids"]) * batch["mask"].unsqueeze(-1).float()).sum(1)


class Optional_(nn.Module):
    """forward(x, mask=None, scale=None): only x is required."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,  # noqa: UP045
                scale: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045
        y = self.proj(x)
        if mask is not None:
            y = y * mask
        if scale is not None:
            y = y * scale
        return y


class Mixed(nn.Module):
    """A list, a dict, an optional argument left out (bias) and one given after it (scale, passed by name).

    It also calls torchvision's two C++ operators that detection models use (nms, roi_align) on boxes made from
    its inputs, so one build checks the generated runner's implementations of them against torchvision's.
    """

    scaffold_inputs = ["xs[0]=2x4", "xs[1]=3x4", "batch['ids']=5:int64:0..20", "batch['gate']=5x1",
                       "scale=1x3"]

    WITH_OPS = True

    def __init__(self) -> None:
        super().__init__()
        self.with_ops = self.WITH_OPS
        self.proj = nn.Linear(4, 3)
        self.embed = nn.Embedding(20, 3)

    def forward(self, xs: List[torch.Tensor], batch: Dict[str, torch.Tensor],  # noqa: UP006
                bias: Optional[torch.Tensor] = None,  # noqa: UP045
                scale: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:  # noqa: UP006, UP045
        rows = self.proj(torch.cat(xs, 0))
        if bias is not None:
            rows = rows + bias
        if scale is not None:
            rows = rows * scale
        tokens = self.embed(batch["ids"]) * batch["gate"]
        out = {"rows": rows, "tokens": tokens, "pooled": rows.mean(0) + tokens.mean(0)}
        if self.with_ops:
            flat = torch.cat(xs, 0)  # [N, 4]: boxes of corners within 0..16, scores from rows
            corners = flat.sigmoid() * 16
            boxes = torch.cat([torch.minimum(corners[:, :2], corners[:, 2:]),
                               torch.maximum(corners[:, :2], corners[:, 2:]) + 1], 1)
            out["keep"] = torchvision.ops.nms(boxes, rows.sum(1), 0.3).to(torch.float32)
            features = torch.cat([tokens.t().reshape(1, 3, 5, 1).expand(1, 3, 5, 8)] * 2, 2) + feat_grid()
            out["roi"] = torchvision.ops.roi_align(features, [boxes], (3, 2), spatial_scale=0.5, sampling_ratio=-1)
            out["roi_aligned"] = torchvision.ops.roi_align(features, [boxes], 2, spatial_scale=0.25,
                                                           sampling_ratio=2, aligned=True)
        return out


def feat_grid() -> torch.Tensor:
    """A fixed ramp over a 10x8 feature map, so bilinear samples differ from place to place."""
    return torch.arange(80, dtype=torch.float32).reshape(1, 1, 10, 8) / 80


class MixedPlain(Mixed):
    """Mixed without torchvision's operators (an AOTInductor package would need them in C++ too)."""

    WITH_OPS = False
