"""Reduced precision for the AOTI backend: bf16 (autocast at export) and int8 (PT2E static quantization).

fp32 goes through untouched. For bf16 and int8 the exported program is transformed before AOTInductor compiles
it; inputs and outputs keep their declared dtypes, so the generated C++ API does not change. What the reduced
artifact loses against fp32 eager is measured here (max abs / relative error, cosine similarity, and top-1
agreement for classifier-like outputs over many inputs) and recorded in the manifest's `precision` section.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from generator.errors import ScaffoldError
from generator.spec import ProjectSpec

# CPU flags (Linux /proc/cpuinfo names) that make each precision fast: bf16 dot products (AVX512-BF16, AMX-BF16),
# int8 dot products (AVX512-VNNI, AVX-VNNI, AMX-INT8). Without them oneDNN emulates bf16 through fp32 conversions
# or runs int8 through slower paths, so the reduced model is slower than fp32 as well as less accurate.
FAST_FLAGS = {
    "bf16": ("amx_bf16", "avx512_bf16"),
    "int8": ("amx_int8", "avx512_vnni", "avx_vnni"),
}

# Tolerances of the export check against fp32 eager (the scaled rule of export/common.py: |a - e| <= rtol * |e| +
# atol * scale). They catch a broken compile, not rounding: measured here over 1,000 inputs, resnet18 bf16 differs
# from fp32 eager by at most 0.57% of the logits' scale, int8 by 1.8% (BERT-base: 0.56% and 3.2%; the tiny MLP's
# int8 6.6%), so these leave a margin. The C++ parity test uses the normal [verify] tolerances against the reduced
# artifact's own outputs (golden.pt), see README.
TOLERANCES = {"bf16": (0.05, 0.05), "int8": (0.1, 0.15)}

# Inputs measured at export for the accuracy report (each an eager fp32 call and an artifact call), within a time
# budget so a large model does not add minutes to `scaffold new`.
ACCURACY_INPUTS = 64
ACCURACY_MIN_INPUTS = 8
ACCURACY_BUDGET_S = 15.0


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags of this machine (Linux), or of the given /proc/cpuinfo text; empty when unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def support(flags: frozenset[str] | None = None) -> dict[str, str | None]:
    """For bf16 and int8: the first CPU flag that makes it fast, or None."""
    flags = cpu_flags() if flags is None else flags
    return {precision: next((f for f in wanted if f in flags), None) for precision, wanted in FAST_FLAGS.items()}


def check_cpu(spec: ProjectSpec, flags: frozenset[str] | None = None) -> list[str]:
    """Refuse a precision this CPU has no fast instructions for (one line), unless forced: then a warning."""
    precision = spec.model.precision
    if precision == "fp32":
        return []
    if support(flags)[precision] is not None:
        return []
    wanted = " or ".join(FAST_FLAGS[precision])
    text = (f"this CPU has no {wanted} instructions, so {precision} would be slower than fp32 here (oneDNN "
            f"emulates it)")
    if not spec.model.force_precision:
        raise ScaffoldError(f"--precision {precision}: {text}; use fp32, or --force-precision (force_precision = "
                            "true) to export it for another machine anyway")
    return [f"--force-precision: {text}; the artifact is meant for a CPU that has them"]


def tolerances(spec: ProjectSpec) -> tuple[float, float]:
    """rtol, atol for the export check against fp32 eager: the [verify] ones for fp32, wider for bf16/int8."""
    if spec.model.precision == "fp32":
        return spec.verify.rtol, spec.verify.atol
    rtol, atol = TOLERANCES[spec.model.precision]
    return max(rtol, spec.verify.rtol), max(atol, spec.verify.atol)


def candidates(spec: ProjectSpec, configs: list[dict]) -> list[dict]:
    """The AOTInductor configs to compile: int8 needs freezing (Inductor's int8 fusion and weight prepacking
    are freezing passes; without them every quantize/dequantize runs as a separate kernel)."""
    if spec.model.precision == "int8":
        return [{"freezing": True}]
    return configs


@contextlib.contextmanager
def _quiet_torchao() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import logging

        logger = logging.getLogger("torch.utils._pytree")  # torchao registers an Enum as a pytree constant
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


# ------------------------------------------------------------------------------------------------------ bf16


class Autocast(torch.nn.Module):
    """The model under CPU autocast to bf16, its floating outputs cast back to the dtypes eager returns.

    Autocast (not casting the parameters) is used: it runs convolutions, linear layers and matmuls in bf16 and
    keeps what loses most in bf16 (softmax, layer norm, reductions, losses) in fp32, and leaves integer inputs,
    buffers and the input dtypes alone. With freezing, the weight casts are folded into bf16 constants, so on
    resnet18 it is as fast as casting the whole model and equally close to fp32 (see README for the figures).
    """

    def __init__(self, inner: torch.nn.Module, output_dtypes: list[torch.dtype]) -> None:
        super().__init__()
        self.inner = inner
        self.output_dtypes = output_dtypes

    def forward(self, *inputs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.inner(*inputs)
        leaves, tree = torch.utils._pytree.tree_flatten(out)
        leaves = [leaf.to(dtype) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and
                  leaf.dtype != dtype else leaf for leaf, dtype in zip(leaves, self.output_dtypes, strict=True)]
        return torch.utils._pytree.tree_unflatten(leaves, tree)


def bf16_module(module: torch.nn.Module, inputs: list[torch.Tensor]) -> torch.nn.Module:
    with torch.no_grad():
        leaves, _ = torch.utils._pytree.tree_flatten(module(*inputs))
    dtypes = [leaf.dtype if isinstance(leaf, torch.Tensor) else torch.float32 for leaf in leaves]
    return Autocast(module, dtypes).eval()


# ------------------------------------------------------------------------------------------------------ int8


def load_calibration(path: str, spec: ProjectSpec) -> list[list[torch.Tensor]]:
    """A calibration file: torch.save of a list of input sets, each a tuple/list in forward's order or a dict
    name -> tensor (a bare tensor for a one-input model), every tensor of the spec's shape (dynamic dims free)
    and dtype. Read with weights_only (loading runs no code); anything else is one line."""
    where = f"--calibration {path}"
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ScaffoldError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise ScaffoldError(f"{where}: a directory, not a torch.save file") from None
    except Exception as e:  # UnpicklingError, RuntimeError (not a zip), EOFError...
        raise ScaffoldError(f"{where}: not a readable torch.save file ({type(e).__name__}); save a list of input "
                            "tuples or dicts with torch.save") from None
    if not isinstance(data, (list, tuple)) or not data:
        raise ScaffoldError(f"{where}: expected a non-empty list of input sets (tuples or dicts of tensors), got "
                            f"{type(data).__name__}{' (empty)' if isinstance(data, (list, tuple)) else ''}")
    names = [i.name for i in spec.inputs]
    sets = []
    for n, item in enumerate(data):
        at = f"{where}: item {n}"
        if isinstance(item, torch.Tensor) and len(names) == 1:
            item = [item]
        if isinstance(item, dict):
            if sorted(map(str, item)) != sorted(names):
                raise ScaffoldError(f"{at}: keys {sorted(map(str, item))} differ from the inputs {names}")
            item = [item[k] for k in names]
        if not isinstance(item, (list, tuple)) or len(item) != len(names):
            got = f"{type(item).__name__}{f' of {len(item)}' if isinstance(item, (list, tuple)) else ''}"
            raise ScaffoldError(f"{at}: expected {len(names)} tensor(s) ({', '.join(names)}) as a tuple or dict, "
                                f"got {got}")
        for t, i in zip(item, spec.inputs, strict=True):
            if not isinstance(t, torch.Tensor):
                raise ScaffoldError(f"{at}: input '{i.name}' is a {type(t).__name__}, not a tensor")
            if str(t.dtype).removeprefix("torch.") != i.dtype:
                raise ScaffoldError(f"{at}: input '{i.name}' is {str(t.dtype).removeprefix('torch.')}, the spec "
                                    f"says {i.dtype}")
            if t.dim() != len(i.shape) or any(d != s for k, (d, s) in enumerate(zip(t.shape, i.shape, strict=True))
                                              if k not in i.dynamic):
                raise ScaffoldError(f"{at}: input '{i.name}' has shape {'x'.join(map(str, t.shape)) or 'scalar'}, "
                                    f"the spec says {i.pattern}")
        sets.append([t.contiguous() for t in item])
    return sets


def _unique_module_calls(gm: torch.fx.GraphModule) -> None:
    """Give each call of a module a name of its own in the graph's module stacks.

    The x86 quantizer groups nodes into patterns by their innermost module's name; a module called twice (resnet's
    BasicBlock calls `self.relu` twice) would make one group with two outputs, which it rejects ("Input partition
    has more than one output node"). torch.export already tells the calls apart in the stack's key
    (`layer1.0.relu@1`); that suffix is copied into the name.
    """
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key = list(stack)[-1]
        if "@" in key:
            stack = dict(stack)
            fqn, cls = stack[key]
            stack[key] = (f"{fqn}@{key.rsplit('@', 1)[1]}", cls)
            node.meta["nn_module_stack"] = stack


def int8_module(module: torch.nn.Module, spec: ProjectSpec, example: list[torch.Tensor],
                warnings_out: list[str], plan: Any = None) -> torch.nn.Module:
    """The model quantized with PT2E static post-training quantization for x86 Inductor (int8 activations per
    tensor, int8 weights per channel), calibrated on --calibration or, failing that, on generated inputs.
    Captured with the spec's dynamic dims symbolic, as the final export is (aoti.export_arguments)."""
    from generator.export.aoti import export_arguments

    example, shapes = export_arguments(spec, plan) if any(i.dynamic for i in spec.inputs) else (example, None)
    try:
        with _quiet_torchao():
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise ScaffoldError("--precision int8 needs torchao (the PT2E quantizer for x86 Inductor): "
                            "pip install 'scaffold[quant]' (torchao 0.18 with torch 2.14)") from None
    if spec.model.calibration:
        sets = load_calibration(spec.model.calibration, spec)
        warnings_out.append(f"int8 calibrated on {len(sets)} input set(s) from {spec.model.calibration}"
                            + ("; fewer than 16 may give poor activation ranges" if len(sets) < 16 else ""))
    else:
        from generator.export.common import make_inputs

        sets = [make_inputs(spec.inputs, seed=1000 + k) for k in range(32)]
        warnings_out.append("INT8 CALIBRATED ON RANDOM INPUTS: activation ranges come from generated data, so the "
                            "accuracy reported is not what real data gets; this artifact is for speed tests only. "
                            "Pass --calibration FILE (a torch.save list of real input tuples or dicts)")
    from generator.export.common import call, one_line

    with _quiet_torchao(), torch.no_grad():
        try:
            gm = torch.export.export(module, tuple(example), dynamic_shapes=shapes, strict=False).module()
            _unique_module_calls(gm)
            quantizer = xiq.X86InductorQuantizer()
            quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(gm, quantizer)
        except ScaffoldError:
            raise
        except Exception as e:
            raise ScaffoldError(f"int8: the PT2E quantizer could not prepare the model: {one_line(e)[:300]}") from None
        for inputs in sets:
            call(prepared, inputs, "the model's forward on a calibration input")
        return convert_pt2e(prepared)


def prepare(module: torch.nn.Module, spec: ProjectSpec, inputs: list[torch.Tensor],
            warnings_out: list[str], plan: Any = None) -> torch.nn.Module:
    """What torch.export captures for this precision."""
    if spec.model.precision == "bf16":
        return bf16_module(module, inputs)
    if spec.model.precision == "int8":
        return int8_module(module, spec, inputs, warnings_out, plan)
    return module


# -------------------------------------------------------------------------------------------------- accuracy


def accuracy(reference: Callable, artifact: Callable, spec: ProjectSpec,
             count: int = ACCURACY_INPUTS, budget_s: float = ACCURACY_BUDGET_S) -> dict[str, Any]:
    """The reduced artifact against fp32 eager over `count` generated inputs (fewer when past the time budget):
    per floating output, max abs and relative error (to the output's scale), the lowest cosine similarity and, for
    2-D outputs of two or more columns that look like class scores (see _class_scores), top-1 agreement of the
    rows."""
    from generator.export.common import call, errors, flatten, make_inputs

    per: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    used = 0
    with torch.inference_mode():
        for k in range(count):
            if k >= ACCURACY_MIN_INPUTS and time.perf_counter() - start > budget_s:
                break
            inputs = make_inputs(spec.inputs, seed=500 + k)
            expected = flatten(call(reference, inputs, "the model's forward"))
            actual = flatten(call(artifact, inputs, "the exported artifact"))
            used += 1
            errs = errors(expected, actual)
            for (name, e), (_, a) in zip(expected, actual, strict=True):
                if name not in errs:
                    continue
                entry = per.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "min_cosine": 1.0, "agree": 0,
                                              "rows": 0})
                err = errs[name]
                entry["max_abs"] = max(entry["max_abs"], err["max_abs"])
                entry["max_rel"] = max(entry["max_rel"], err["max_rel"])
                entry["min_cosine"] = min(entry["min_cosine"], err["cosine"])
                if e.dim() == 2 and e.shape[1] >= 2 and e.shape[0] >= 1 and _class_scores(name):
                    entry["agree"] += int((e.argmax(1) == a.argmax(1)).sum())
                    entry["rows"] += e.shape[0]
    outputs = {}
    for name, entry in per.items():
        out = {k: _finite(entry[k]) for k in ("max_abs", "max_rel", "min_cosine")}
        if entry["rows"]:
            out["top1_agreement"] = entry["agree"] / entry["rows"]
        outputs[name] = out
    return {"inputs": used, "outputs": outputs}


_SCORE_WORDS = ("logit", "score", "prob", "class", "pred")


def _class_scores(name: str) -> bool:
    """Whether a 2-D output is read as class scores, where top-1 agreement means something: an unnamed output
    (`out`, `out[0]`: a classifier's) or one whose key says so (`out['logits']`, `out['scores']`). A named field
    that is not (BERT's `out['pooler_output']`, an embedding) gets no top-1 line: its argmax is no decision."""
    keys = re.findall(r"\['([^']*)'\]", name)
    if not keys:
        return True
    return any(word in keys[-1].lower() for word in _SCORE_WORDS)


def _finite(value: float) -> float | str:
    return round(value, 8) if math.isfinite(value) else str(value)


def report(spec: ProjectSpec, measured: dict[str, Any], flags: frozenset[str] | None = None) -> tuple[dict, list[str]]:
    """The manifest's `precision` section and the lines printed at export."""
    rtol, atol = tolerances(spec)
    section = {
        "precision": spec.model.precision,
        "cpu_support": support(flags)[spec.model.precision] if spec.model.precision != "fp32" else None,
        "forced": spec.model.force_precision,
        "calibration": (spec.model.calibration or "random") if spec.model.precision == "int8" else None,
        "export_check": {"against": "fp32 eager", "rtol": rtol, "atol": atol},
        "golden": "the reduced-precision artifact's outputs (the C++ parity test checks C++ against them)",
        "vs_fp32_eager": measured,
    }
    notes = []
    for name, out in measured["outputs"].items():
        line = (f"{spec.model.precision}: {name} against fp32 eager over {measured['inputs']} inputs: max abs error "
                f"{_fmt(out['max_abs'])}, {_fmt(out['max_rel'])} of the output's scale, cosine >= "
                f"{_fmt(out['min_cosine'], 6)}")
        if "top1_agreement" in out:
            line += f", top-1 agreement {out['top1_agreement']:.1%}"
        notes.append(line)
    return section, notes


def _fmt(value: float | str, digits: int = 3) -> str:
    return value if isinstance(value, str) else f"{value:.{digits}g}"

