"""What every backend shares: golden inputs, output flattening, comparison, golden file and manifest."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from generator.dtypes import torch_dtypes
from generator.errors import ScaffoldError, is_interrupt, user_code_failure
from generator.spec import FLOAT_DTYPES, Argument, InputSpec, ProjectSpec, input_arguments

TORCH_DTYPES = torch_dtypes()  # the one table: generator/dtypes.py
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


@dataclass(frozen=True)
class CallPlan:
    """How the flat input tensors (golden.pt, --inputs-file, the C++ API's list) become forward's arguments.

    arguments: forward's arguments in order of first appearance (spec.input_arguments); keyword[i]: argument i is
    passed by name, because an optional argument before it was left out and keeps its default.
    """

    arguments: tuple[Argument, ...]
    keyword: tuple[bool, ...]

    @property
    def flat(self) -> bool:
        """Plain tensors, all positional: the flat list is the argument list, as before structured inputs."""
        return all(a.kind == "tensor" for a in self.arguments) and not any(self.keyword)

    @property
    def variable_list(self) -> Argument | None:
        """The one list argument, whose length a scripted artifact may take other than exported; else None."""
        lists = [a for a in self.arguments if a.kind == "list"]
        return lists[0] if len(lists) == 1 else None

    def build(self, tensors: list[Any] | tuple[Any, ...]) -> tuple[list[Any], dict[str, Any]]:
        """(args, kwargs) for forward from the flat tensors (exactly as many as exported)."""
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for arg, keyword in zip(self.arguments, self.keyword, strict=True):
            part = list(tensors[arg.start:arg.start + arg.count])
            value = (part[0] if arg.kind == "tensor" else part if arg.kind == "list"
                     else dict(zip(arg.keys, part, strict=True)))
            if keyword:
                kwargs[arg.name] = value
            else:
                args.append(value)
        return args, kwargs

    def describe(self) -> list[dict[str, Any]]:
        """The manifest's `arguments`: what the C++ runner builds (see pipeline.context)."""
        return [{"name": a.name, "kind": a.kind, "start": a.start, "count": a.count, "keys": list(a.keys),
                 "keyword": k} for a, k in zip(self.arguments, self.keyword, strict=True)]


def call_plan(inputs: tuple[InputSpec, ...], parameters: list[str] | None) -> CallPlan:
    """Group the inputs into arguments and decide which go by keyword.

    parameters: forward's parameter names in order (None or empty: unknown, everything positional). Arguments
    go positionally while their names follow forward's parameters from the first one; once one is out of place
    (a parameter before it was left at its default) it and every later one go by keyword, and must then be named
    like forward's parameters. Names that are not parameters at all, as long as nothing was skipped, stay
    positional labels, as before structured inputs (`--input x=...` for `forward(self, input)`).
    """
    arguments = input_arguments(inputs, "inputs")
    keyword = []
    positional = True
    for k, arg in enumerate(arguments):
        if positional and parameters and arg.name in parameters and parameters.index(arg.name) != k:
            positional = False
        if not positional and parameters and arg.name not in parameters:
            raise ScaffoldError(f"input '{arg.name}' comes after a forward argument that was left at its default, so "
                                f"it is passed by name, but forward has no parameter '{arg.name}' (parameters: "
                                f"{', '.join(parameters)})")
        keyword.append(not positional)
    return CallPlan(arguments=arguments, keyword=tuple(keyword))


class FlatInputs(torch.nn.Module):
    """The model called with the flat input tensors: what trace and torch.export capture for structured inputs,
    so the traced graph and the AOTInductor package take the tensors in the flat order golden.pt stores."""

    def __init__(self, inner: torch.nn.Module, plan: CallPlan) -> None:
        super().__init__()
        self.inner = inner
        self.plan = plan

    def forward(self, *flat: torch.Tensor) -> Any:
        args, kwargs = self.plan.build(flat)
        return self.inner(*args, **kwargs)


def flat_module(module: torch.nn.Module, plan: CallPlan) -> torch.nn.Module:
    """The module itself when its inputs are plain positional tensors; otherwise wrapped in FlatInputs."""
    return module if plan.flat else FlatInputs(module, plan).eval()


def resized(inputs: tuple[InputSpec, ...], size: int) -> tuple[InputSpec, ...]:
    """The inputs with every dynamic dim set to `size`."""
    return tuple(replace(i, shape=tuple(size if k in i.dynamic else d for k, d in enumerate(i.shape)))
                 for i in inputs)


def flatten(value: Any, name: str = "out") -> list[tuple[str, torch.Tensor]]:
    """Flatten a forward's result the way the generated C++ does (src/*_runner.cpp): same names, same order.

    Tuples and lists index as `out[0]`, dicts as `out['key']`, scalars become 0-d tensors, None is dropped.
    A transformers `ModelOutput` or cache is first made plain (see plain_outputs), as the exported artifact is.
    """
    value = plain_outputs(value)
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
    hint = ""
    if "cache" in type(value).__name__.lower():
        hint = ("; scaffold flattens transformers' DynamicCache (and caches with per-layer keys/values); for this "
                "one export without the cache: use_cache = false in [model.config]")
    raise ScaffoldError(f"output '{name}' is a {type(value).__name__}: the C++ side reads tensors, tuples, lists, "
                        f"dicts, plain numbers, transformers ModelOutputs and key/value caches{hint}")


def _is_model_output(value: Any) -> bool:
    """A transformers ModelOutput (an OrderedDict of its non-None fields), recognised without importing it."""
    return isinstance(value, dict) and any(c.__name__ == "ModelOutput" and c.__module__.startswith("transformers")
                                           for c in type(value).__mro__)


def _cache_tensors(cache: Any, prefix: str) -> list[tuple[str, torch.Tensor]] | None:
    """A transformers cache as (`prefix.LAYER.key`, tensor), (`prefix.LAYER.value`, tensor) pairs; None when it is
    not a cache scaffold knows (DynamicCache and the like: `.layers` with `.keys`/`.values`; an encoder-decoder
    cache: its self- and cross-attention caches under `prefix.self` and `prefix.cross`)."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, (list, tuple)) and all(hasattr(layer, "keys") and hasattr(layer, "values")
                                                 for layer in layers):
        out = []
        for i, layer in enumerate(layers):
            for part in ("keys", "values"):
                tensor = getattr(layer, part)
                if isinstance(tensor, torch.Tensor):
                    out.append((f"{prefix}.{i}.{part[:-1]}", tensor))
        return out
    inner = [getattr(cache, a, None) for a in ("self_attention_cache", "cross_attention_cache")]
    if all(c is not None for c in inner):
        parts = [_cache_tensors(c, f"{prefix}.{kind}") for c, kind in zip(inner, ("self", "cross"), strict=True)]
        return None if any(p is None for p in parts) else [item for p in parts for item in p or []]
    return None


def plain_outputs(value: Any) -> Any:
    """Make a transformers result plain for TorchScript, torch.export and the C++ runners' naming.

    A ModelOutput becomes a dict of tensors that keeps its field names (`out['logits']`); whatever a field holds
    besides a tensor (a DynamicCache, a tuple of hidden states) is flattened into dotted keys, the names Hugging
    Face's ONNX export uses: `out['past_key_values.0.key']` (`out['cache.0.key']` from transformers 5.24),
    `out['hidden_states.1']`. A TorchScript dict holds one
    value type, so this keeps every output one flat, named tensor. A cache outside a ModelOutput (return_dict=False)
    becomes ((key, value), ...) per layer. Anything else is returned as it is.
    """
    if _is_model_output(value):
        flat: dict[str, torch.Tensor] = {}
        for key, item in value.items():
            for name, tensor in _dotted(item, str(key)):
                flat[name] = tensor
        return flat
    if isinstance(value, (tuple, list)):  # the traced wrapper returns this: nested caches must be plain too
        return type(value)(plain_outputs(v) for v in value) if type(value) in (tuple, list) else value
    if type(value) is dict:
        return {k: plain_outputs(v) for k, v in value.items()}
    if not isinstance(value, (torch.Tensor, int, float, bool)) and value is not None:
        pairs = _cache_tensors(value, "")
        if pairs is not None:
            it = iter(t for _, t in pairs)
            return tuple(zip(it, it, strict=True))
    return value


def _dotted(value: Any, prefix: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return [(prefix, value)]
    if value is None:
        return []
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in _dotted(v, f"{prefix}.{i}")]
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _dotted(v, f"{prefix}.{k}")]
    if isinstance(value, (bool, int, float)):
        return [(prefix, torch.tensor(value))]
    pairs = _cache_tensors(value, prefix)
    if pairs is None:
        flatten(value, f"out['{prefix}']")  # raises the error that says what works
    return pairs or []


class PlainOutputs(torch.nn.Module):
    """What trace and torch.export capture for a transformers model: its forward with plain_outputs applied."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:  # kwargs: arguments after a skipped one (CallPlan)
        return plain_outputs(self.inner(*inputs, **kwargs))


def plain_module(module: torch.nn.Module) -> torch.nn.Module:
    """The module wrapped in PlainOutputs when it is a transformers model; otherwise the module itself."""
    is_transformers = any(c.__module__.startswith("transformers.") and c.__name__ == "PreTrainedModel"
                          for c in type(module).__mro__)
    return PlainOutputs(module).eval() if is_transformers else module


def _key(k: Any) -> str:
    return f"'{k}'" if isinstance(k, str) else str(k)


# The parity rule, shared by export verification, golden.pt (its `rule` key) and the generated C++ check
# (src/tools.cpp): elementwise |actual - expected| <= rtol * |expected| + atol * scale, where scale is the
# output's largest finite |expected|. atol is relative to each output's own magnitude, so an output of ~1e-10
# (mobilenet_v3_large with random weights) is checked as strictly as one of ~1, and one of ~1e11 (inception_v3)
# is not held to an absolute 1e-4 its float32 rounding cannot meet. An all-zero output (scale 0) must be
# reproduced exactly. Non-finite expected values must be matched exactly (NaN by NaN, inf by the same inf).
PARITY_RULE = "scaled"
PARITY_RULE_TEXT = "|actual - expected| <= rtol * |expected| + atol * scale, scale = max |expected| of each output"


def _is_float(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def output_errors(expected: torch.Tensor, actual: torch.Tensor, rtol: float = 0.0,
                  atol: float = 0.0) -> dict[str, Any]:
    """One floating output against its expected values, in float64 (complex: by magnitude).

    scale: the largest finite |expected| (0 for an all-zero output); max_abs: the largest |actual - expected|;
    max_rel: max_abs / scale (0 when both are 0, inf when only scale is); cosine: the cosine similarity of the
    two, flattened (1 when both are all zeros); ok: whether the parity rule holds with rtol/atol.
    """
    e = expected.detach().cpu().to(torch.complex128 if expected.is_complex() else torch.float64).reshape(-1)
    a = actual.detach().cpu().to(e.dtype).reshape(-1)
    finite = torch.isfinite(e)
    # Non-finite expected values: matched exactly (NaN by NaN, +inf by +inf).
    nonfinite_ok = bool(((a == e) | (torch.isnan(a) & torch.isnan(e)))[~finite].all())
    e0 = torch.where(finite, e, torch.zeros_like(e))
    a0 = torch.where(finite, a, torch.zeros_like(a))
    diff = (a0 - e0).abs()
    scale = float(e0.abs().max()) if e.numel() else 0.0
    max_abs = float(diff.max()) if e.numel() else 0.0  # NaN when the actual side has NaN where expected has none
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    within = diff <= rtol * e0.abs() + atol * scale  # NaN compares False: a NaN where none was expected fails
    ok = nonfinite_ok and bool(within.all())
    norms = float(torch.linalg.vector_norm(a0)) * float(torch.linalg.vector_norm(e0))
    if norms > 0:
        cosine = min(1.0, max(-1.0, float((torch.vdot(e0, a0) if e.is_complex() else torch.dot(a0, e0)).real) / norms))
    else:
        cosine = 1.0 if float(a0.abs().max() if a.numel() else 0) == float(scale) == 0 else 0.0
    return {"scale": scale, "max_abs": max_abs, "max_rel": max_rel, "cosine": cosine, "ok": ok}


def errors(expected: list[tuple[str, torch.Tensor]], actual: list[tuple[str, torch.Tensor]],
           rtol: float = 0.0, atol: float = 0.0) -> dict[str, dict[str, Any]]:
    """Per floating output (by name, same structure assumed): scale, max_abs, max_rel, cosine, ok (see
    output_errors). Integer and bool outputs are compared exactly and have no entry."""
    return {name: output_errors(e, a, rtol, atol) for (name, e), (_, a) in zip(expected, actual, strict=True)
            if _is_float(e) and e.shape == a.shape and e.dtype == a.dtype}


def compare(expected: list[tuple[str, torch.Tensor]], actual: list[tuple[str, torch.Tensor]],
            rtol: float, atol: float) -> str | None:
    """None when the outputs match (names, shapes, dtypes, values by the parity rule); else what differs."""
    if [n for n, _ in expected] != [n for n, _ in actual]:
        return f"outputs differ in structure: expected {[n for n, _ in expected]}, got {[n for n, _ in actual]}"
    for (name, e), (_, a) in zip(expected, actual, strict=True):
        if e.shape != a.shape:
            return f"{name}: shape {list(a.shape)} differs from eager {list(e.shape)}"
        if e.dtype != a.dtype:
            return f"{name}: dtype {a.dtype} differs from eager {e.dtype}"
        if _is_float(e):
            err = output_errors(e, a, rtol, atol)
            if not err["ok"]:
                return (f"{name}: max abs difference {err['max_abs']:.3g} is {err['max_rel']:.3g} of the output's "
                        f"scale {err['scale']:.3g} (cosine {err['cosine']:.6f}); allowed: rtol={rtol:g} x |value| "
                        f"+ atol={atol:g} x scale")
        elif not torch.equal(a, e):
            return f"{name}: values differ from eager"
    return None


def max_abs_diff(expected: list[tuple[str, torch.Tensor]], actual: list[tuple[str, torch.Tensor]]) -> float:
    """The largest absolute difference over floating outputs (0 where there are none), for the manifest."""
    return max((err["max_abs"] for err in errors(expected, actual).values()), default=0.0)


def verify_record(spec: ProjectSpec, expected: list[tuple[str, torch.Tensor]],
                  actual: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
    """The manifest's `verify` section: the rule, the tolerances, and per floating output what was measured."""
    per_output = errors(expected, actual, spec.verify.rtol, spec.verify.atol)
    return {
        "rule": PARITY_RULE,
        "check": PARITY_RULE_TEXT,
        "rtol": spec.verify.rtol,
        "atol": spec.verify.atol,
        "max_abs_diff": max((e["max_abs"] for e in per_output.values()), default=0.0),
        "max_rel_diff": max((e["max_rel"] for e in per_output.values()), default=0.0),
        "outputs": {name: {k: _json_number(v) for k, v in e.items() if k != "ok"} for name, e in per_output.items()},
    }


def _json_number(value: float) -> float | str:
    """JSON has no inf/NaN: those are written as strings ("inf", "nan")."""
    return value if math.isfinite(value) else str(value)


def weak_outputs(outputs: list[tuple[str, torch.Tensor]], atol: float) -> list[str]:
    """Warnings for floating outputs the golden data cannot use to catch a broken artifact: all zeros, one
    constant value, or a scale below atol (the usual cause: random weights whose activations vanish)."""
    zeros, constant, tiny = [], [], []
    for name, t in outputs:
        if not _is_float(t) or t.numel() == 0:
            continue
        values = t.detach().cpu().to(torch.complex128 if t.is_complex() else torch.float64)
        values = values[torch.isfinite(values)]
        if values.numel() == 0:
            continue
        scale = float(values.abs().max())
        if scale == 0:
            zeros.append(name)
        elif values.numel() > 1 and bool((values == values[0]).all()):
            constant.append(f"{name} (every value {complex(values[0]) if t.is_complex() else float(values[0]):.4g})")
        elif scale < atol:
            tiny.append(f"{name} (at most {scale:.3g})")
    fix = ("load trained weights with --weights (or [model].weights), or export with inputs that give the outputs "
           "a spread")
    notes = []
    if zeros:
        notes.append(f"output {_names(zeros)} is all zeros for the example inputs: an artifact that computes "
                     f"anything else up to that output and then zeros passes parity too, so the golden data cannot "
                     f"catch a broken artifact; {fix}")
    if constant:
        notes.append(f"output {_names(constant)} is constant for the example inputs: the golden data cannot tell "
                     f"a broken artifact that gives the same constant from a correct one; {fix}")
    if tiny:
        notes.append(f"output {_names(tiny)} is below atol={atol:g} everywhere: parity is checked relative to each "
                     f"output's own scale, but values this small usually mean random weights whose activations "
                     f"vanish, and the golden data then exercises little of the model; {fix}")
    return notes


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
        # The C++ check reads it; a golden file without it (older scaffold) is checked with plain allclose.
        "rule": PARITY_RULE,
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


def call(module: Any, inputs: list[torch.Tensor], what: str, plan: CallPlan | None = None) -> Any:
    """Run forward under inference mode; a raise becomes one line that says where it happened.

    plan: build forward's structured arguments from the flat inputs (None: pass them as they are).
    """
    args, kwargs = plan.build(inputs) if plan is not None and not plan.flat else (list(inputs), {})
    try:
        with torch.inference_mode():
            return module(*args, **kwargs)
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
