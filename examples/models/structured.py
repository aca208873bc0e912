"""Several inputs of several dtypes, and a nested output: a dict of tensors, a list, and a 0-d tensor."""

import torch
from torch import nn


class Tagger(nn.Module):
    scaffold_inputs = ["ids=2x6:int64:0..100", "mask=2x6:bool", "scale=1:float64"]

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.head = nn.Linear(8, 3)

    def forward(
        self, ids: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], torch.Tensor]:
        h = self.embed(ids) * mask.unsqueeze(-1).float()
        logits = self.head(h) * scale.float()
        return {"logits": logits, "pooled": h.mean(dim=1)}, [logits.argmax(-1)], mask.sum()
