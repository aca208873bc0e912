"""What every backend shares: golden inputs, output flattening, comparison, golden file and manifest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from generator.errors import ScaffoldError, is_interrupt, user_code_failure
from generator.spec import FLOAT_DTYPES, InputSpec, ProjectSpec

TORCH_DTYPES = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


@dataclass
class ExportResult:
    """What an export leaves in `model/`, and what it learned on the way."""

    artifact: Path
    golden: Path
    manifest: dict
    warnings: list[str] = field(default_factory=list)


def make_inputs(specs: tuple[InputSpec, ...], seed: int) -> list[torch.Tensor]:
    """Deterministic example inputs: normal floats, integers drawn from each input's [low, high)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        dtype = TORCH_DTYPES[spec.dtype]
        if spec.dtype in FLOAT_DTYPES:
            t = torch.randn(spec.shape, generator=gen, dtype=torch.float32).to(dtype)
        else:
            t = torch.randint(spec.low, spec.high, spec.shape, generator=gen, dtype=torch.int64).to(dtype)
        tensors.append(t)
    return tensors


def resized(inputs: tuple[InputSpec, ...], size: int) -> tuple[InputSpec, ...]:
    """The inputs with every dynamic dim set to `size`."""
    return tuple(replace(i, shape=tuple(size if k in i.dynamic else d for k, d in enumerate(i.shape)))
                 for i in inputs)


def flatten(value: Any, name: str = "out") -> list[tuple[str, torch.Tensor]]:
    """Flatten a forward's result the way the generated C++ does (src/*_runner.cpp): same names, same order.

    Tuples and lists index as `out[0]`, dicts as `out['key']`, scalars become 0-d tensors, None is dropped.
    """
    if isinstance(value, torch.Tensor):
        return [(name, value)]
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in flatten(v, f"{name}[{i}]")]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in flatten(v, f"{name}[{_key(k)}]")]
    if value is None:
        return []
    if isinstance(value, bool):
        return [(name, torch.tensor(value, dtype=torch.bool))]
    if isinstance(value, int):
        return [(name, torch.tensor(value, dtype=torch.int64))]
    if isinstance(value, float):
        return [(name, torch.tensor(value, dtype=torch.float64))]
    raise ScaffoldError(f"output '{name}' is a {type(value).__name__}: the C++ side reads tensors, tuples, "
                        "lists, dicts and plain numbers")


def _key(k: Any) -> str:
    return f"'{k}'" if isinstance(k, str) else str(k)


def compare(expected: list[tuple[str, torch.Tensor]], actual: list[tuple[str, torch.Tensor]],
            rtol: float, atol: float) -> str | None:
    """None when the outputs match (names, shapes, dtypes, values within tolerance); else what differs."""
    if [n for n, _ in expected] != [n for n, _ in actual]:
        return f"outputs differ in structure: expected {[n for n, _ in expected]}, got {[n for n, _ in actual]}"
    for (name, e), (_, a) in zip(expected, actual, strict=True):
        if e.shape != a.shape:
            return f"{name}: shape {list(a.shape)} differs from eager {list(e.shape)}"
        if e.dtype != a.dtype:
            return f"{name}: dtype {a.dtype} differs from eager {e.dtype}"
        if e.is_floating_point() or e.is_complex():
            if not torch.allclose(a, e, rtol=rtol, atol=atol, equal_nan=True):
                diff = (a.double() - e.double()).abs().max().item()
                return f"{name}: max abs difference {diff:.3g} exceeds rtol={rtol:g}, atol={atol:g}"
        elif not torch.equal(a, e):
            return f"{name}: values differ from eager"
    return None


def max_abs_diff(expected: list[tuple[str, torch.Tensor]], actual: list[tuple[str, torch.Tensor]]) -> float:
    """The largest absolute difference over floating outputs (0 where there are none), for the manifest."""
    return max(((a.double() - e.double()).abs().max().item() if e.numel() and e.is_floating_point() else 0.0)
               for (_, e), (_, a) in zip(expected, actual, strict=True))


def save_golden(path: Path, spec: ProjectSpec, inputs: list[torch.Tensor],
                outputs: list[tuple[str, torch.Tensor]]) -> None:
    """The parity data, as a `torch.save` dict that C++ reads with `torch::jit::pickle_load`."""
    golden = {
        "input_names": [i.name for i in spec.inputs],
        "inputs": [t.contiguous() for t in inputs],
        "output_names": [n for n, _ in outputs],
        "outputs": [t.detach().contiguous() for _, t in outputs],
        "rtol": float(spec.verify.rtol),
        "atol": float(spec.verify.atol),
    }
    torch.save(golden, path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def signature(spec: ProjectSpec, outputs: list[tuple[str, torch.Tensor]]) -> dict:
    return {
        "inputs": [{"name": i.name, "shape": list(i.shape), "dtype": i.dtype} for i in spec.inputs],
        "outputs": [{"name": n, "shape": list(t.shape), "dtype": DTYPE_NAMES.get(t.dtype, str(t.dtype))}
                    for n, t in outputs],
    }


def write_manifest(path: Path, manifest: dict) -> None:
    """manifest.json, and beside the artifact its checksum file (`model.pt2.sha256`, `sha256sum` format).

    The generated binary checks the artifact against that file before loading it: a plain text file in the
    format coreutils reads (`sha256sum -c`), so the C++ side needs no JSON parser and a user can check it too.
    """
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    artifact = manifest["artifact"]
    (path.parent / f"{artifact}.sha256").write_text(f"{manifest['sha256']}  {artifact}\n", encoding="utf-8")


def call(module: Any, inputs: list[torch.Tensor], what: str) -> Any:
    """Run forward under inference mode; a raise becomes one line that says where it happened."""
    try:
        with torch.inference_mode():
            return module(*inputs)
    except ScaffoldError:
        raise
    except Exception as e:
        shapes = ", ".join(f"{list(t.shape)}:{DTYPE_NAMES.get(t.dtype, t.dtype)}" for t in inputs)
        raise ScaffoldError(f"{what} raised {type(e).__name__} on inputs ({shapes}): {one_line(e)}") from None
    except BaseException as e:  # sys.exit() in forward: reported, not scaffold's exit
        if is_interrupt(e):
            raise
        raise user_code_failure(e, what) from None


def one_line(e: object) -> str:
    """TorchScript errors end with the line that matters (`RuntimeError: ...`); plain ones start with it."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    for ln in reversed(lines):
        if ln.split(":", 1)[0].endswith(("Error", "Exception")):
            return ln
    return lines[0]


@contextlib.contextmanager
def quiet():
    """Silence torch's logs, warnings and native prints to fd 2 (inductor is chatty); errors still raise."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            os.dup2(devnull.fileno(), 2)
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        logger.setLevel(level)
