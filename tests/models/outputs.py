"""Models whose outputs test the parity rule, transformers outputs and tracer-warning locations."""

from __future__ import annotations

import torch
from torch import nn


class Scales(nn.Module):
    """Three outputs at very different scales: ~1e-8 (vanishing activations), ~1e11, and exactly zero; and a
    complex one (a spectrum), which parity compares by magnitude in Python and C++ alike.

    Under the old absolute atol=1e-4 any artifact passed on `tiny`, and `huge` was held to an absolute 1e-4 that
    float32 cannot meet; the scaled rule checks both relative to their own magnitude.
    """

    scaffold_inputs = ["x=2x16"]

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.small = nn.Linear(16, 8)
        self.large = nn.Linear(16, 8)
        self.head = nn.Linear(16, 4)
        nn.init.zeros_(self.head.weight)  # a zero-initialised head, like torchvision's vit_b_16
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tiny": self.small(x) * 1e-8, "huge": self.large(x) * 1e11, "zero": self.head(x),
                "spectrum": torch.fft.rfft(self.large(x))}


def scales_broken(scale: float = 1.01) -> Scales:
    """The same model with the tiny path's weights off by 1%: a broken artifact the old rule could not see."""
    model = Scales().eval()
    with torch.no_grad():
        model.small.weight.mul_(scale)
    return model


class ZeroHead(nn.Module):
    """Outputs exactly zero (a zero-initialised classifier) and a constant: export warns about both."""

    scaffold_inputs = ["x=1x8"]

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(torch.relu(self.body(x)))
        return logits, torch.softmax(logits, dim=-1)


class Iterates(nn.Module):
    """Iterating over a tensor: torch warns from inside `Tensor.__iter__` (torch/_tensor.py)."""

    scaffold_inputs = ["x=3x4"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [row * 2 for row in x]  # the line the tracer warning should name
        return torch.stack(rows)


def tiny_gpt2() -> nn.Module:
    """A 2-layer GPT-2 built from a config (no download), with its default use_cache=True: returns a DynamicCache."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    model = GPT2LMHeadModel(config).eval()
    model.scaffold_inputs = ["input_ids=1x8:int64:0..100"]
    return model


def tiny_bert() -> nn.Module:
    """A 2-layer BERT encoder from a config: a BaseModelOutputWithPoolingAndCrossAttentions, no cache."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=32, intermediate_size=64,
                        vocab_size=100, max_position_embeddings=64)
    model = BertModel(config).eval()
    model.scaffold_inputs = ["input_ids=1x8:int64:0..100", "attention_mask=1x8:int64:1..2"]
    return model
