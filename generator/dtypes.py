"""The dtypes scaffold supports, in one table: the spec's names, torch's dtypes, libtorch's ScalarType names.

No torch import here (the spec is validated before torch loads); torch_dtypes() imports it when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DType:
    name: str  # in the spec and on the command line (`ids=1x16:int64`); also torch's attribute name
    scalar_type: str  # c10::ScalarType, as c10::toString prints it and the C++ API names it (at::kFloat)
    floating: bool
    int_range: tuple[int, int] | None = None  # [low, high) that torch.randint can draw, for integer dtypes


TABLE = (
    DType("float32", "Float", True),
    DType("float64", "Double", True),
    DType("float16", "Half", True),
    DType("bfloat16", "BFloat16", True),
    DType("int64", "Long", False, (-(2**63), 2**63 - 1)),
    DType("int32", "Int", False, (-(2**31), 2**31)),
    DType("int16", "Short", False, (-(2**15), 2**15)),
    DType("int8", "Char", False, (-(2**7), 2**7)),
    DType("uint8", "Byte", False, (0, 2**8)),
    DType("bool", "Bool", False, (0, 2)),
)

DTYPES = tuple(d.name for d in TABLE)
FLOAT_DTYPES = tuple(d.name for d in TABLE if d.floating)
SCALAR_TYPES = {d.name: d.scalar_type for d in TABLE}
INT_RANGES = {d.name: d.int_range for d in TABLE if d.int_range is not None}


def torch_dtypes() -> dict[str, Any]:
    """{"float32": torch.float32, ...}: imports torch."""
    import torch

    return {d.name: getattr(torch, d.name) for d in TABLE}
