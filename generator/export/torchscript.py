"""TorchScript backend: trace or script, optionally freeze, save, load back, and check against eager."""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from generator.errors import ScaffoldError
from generator.export.common import (
    ExportResult,
    call,
    compare,
    flatten,
    make_inputs,
    max_abs_diff,
    one_line,
    resized,
    save_golden,
    sha256,
    signature,
)
from generator.models import ResolvedModel
from generator.spec import FLOAT_DTYPES, ProjectSpec

ARTIFACT = "model.pt"
# torch 2.14 marks torch.jit deprecated in favour of torch.export (our aoti backend); TorchScript still works and
# is what libtorch's torch::jit::load reads, so the notice is noise to a user who chose this backend.
warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.* is deprecated")


def export(resolved: ResolvedModel, spec: ProjectSpec, model_dir: Path) -> ExportResult:
    """Write model/model.pt and model/golden.pt; raise ScaffoldError when the artifact is not faithful."""
    inputs = make_inputs(spec.inputs, seed=0)
    eager = flatten(call(resolved.module, inputs, "the model's forward"))
    if not eager:
        raise ScaffoldError("the model's forward returned no tensors: there is nothing to deploy or check")
    module, tracer_warnings = _to_torchscript(resolved, spec, inputs)
    notes = [f"tracing: {w} — the trace records one path only; if forward branches on tensor values, use "
             "--method script" for w in tracer_warnings]
    if spec.model.freeze:
        module = _freeze(module)

    artifact = model_dir / ARTIFACT
    try:
        module.save(str(artifact))
        loaded = torch.jit.load(str(artifact), map_location="cpu")
    except Exception as e:
        raise ScaffoldError(f"the TorchScript artifact does not save and load back: {one_line(e)}") from None
    loaded.eval()

    reloaded = flatten(call(loaded, inputs, "the saved TorchScript model"))
    diff = compare(eager, reloaded, spec.verify.rtol, spec.verify.atol)
    if diff:
        raise ScaffoldError(f"the saved TorchScript model does not reproduce eager outputs: {diff}")

    traced_python = spec.model.method == "trace" and resolved.kind != "torchscript"
    if traced_python:
        _check_other_inputs(resolved, loaded, spec, inputs, tracer_warnings)
        notes.extend(_device_constants(loaded))

    golden = model_dir / "golden.pt"
    save_golden(golden, spec, inputs, eager)
    manifest = {
        "backend": "torchscript",
        "method": "loaded" if resolved.kind == "torchscript" else spec.model.method,
        "frozen": spec.model.freeze,
        "channels_last_inputs": [spec.inputs[i].name for i in channels_last_positions(resolved, spec)],
        "artifact": ARTIFACT,
        "sha256": sha256(artifact),
        "golden": golden.name,
        "signature": signature(spec, eager),
        "verify": {"rtol": spec.verify.rtol, "atol": spec.verify.atol, "max_abs_diff": max_abs_diff(eager, reloaded)},
        "rejects_input": _rejected_input(loaded, spec),
    }
    return ExportResult(artifact=artifact, golden=golden, manifest=manifest, warnings=notes)


class _ChannelsLast(torch.nn.Module):
    """Moves the chosen inputs to channels-last before the wrapped model sees them (recorded in the trace)."""

    def __init__(self, inner: torch.nn.Module, positions: tuple[int, ...]) -> None:
        super().__init__()
        self.inner = inner
        self.positions = positions

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.inner(*[x.contiguous(memory_format=torch.channels_last) if i in self.positions else x
                            for i, x in enumerate(inputs)])


def channels_last_positions(resolved: ResolvedModel, spec: ProjectSpec) -> tuple[int, ...]:
    """Which inputs go channels-last: 4-D float inputs of a traced Python model that has 2-D convolutions."""
    if not spec.model.channels_last or spec.model.method != "trace" or resolved.kind == "torchscript":
        return ()
    if not any(isinstance(m, torch.nn.Conv2d) for m in resolved.module.modules()):
        return ()
    return tuple(i for i, s in enumerate(spec.inputs) if len(s.shape) == 4 and s.dtype in FLOAT_DTYPES)


def _to_torchscript(resolved: ResolvedModel, spec: ProjectSpec,
                    inputs: list[torch.Tensor]) -> tuple[torch.jit.ScriptModule, list[str]]:
    """The TorchScript module, and the tracer's warnings (`file:line: message`, once each)."""
    if resolved.kind == "torchscript":
        return resolved.module, []  # type: ignore[return-value]
    module = resolved.module
    if spec.model.method == "script":
        try:
            return torch.jit.script(module), []
        except Exception as e:
            raise ScaffoldError(
                f"torch.jit.script could not compile the model: {one_line(e)}; "
                "fix the unsupported Python construct or use --method trace"
            ) from None
    positions = channels_last_positions(resolved, spec)
    if positions:
        module = _ChannelsLast(copy.deepcopy(module), positions).to(memory_format=torch.channels_last).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, tuple(inputs), check_trace=False, strict=False)
        except Exception as e:
            if "cannot infer type" in str(e):
                raise ScaffoldError("tracing failed: TorchScript cannot type the output; return tensors, or tuples, "
                                    "lists and dicts of them (one value type per dict)") from None
            raise ScaffoldError(f"tracing failed: {one_line(e)}; try --method script") from None
    found = [f"{Path(w.filename).name}:{w.lineno}: {one_line(w.message)}" for w in caught
             if issubclass(w.category, torch.jit.TracerWarning)]
    return traced, list(dict.fromkeys(found))


def _freeze(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    try:
        return torch.jit.freeze(module.eval())
    except Exception as e:
        raise ScaffoldError(
            f"torch.jit.freeze failed: {one_line(e)}; export without it (--no-freeze, or freeze = false in [model])"
        ) from None


def _check_other_inputs(resolved: ResolvedModel, loaded: Any, spec: ProjectSpec, example: list[torch.Tensor],
                        tracer_warnings: list[str]) -> None:
    """A trace that froze a data-dependent branch still matches on its own example; other inputs tell.

    Two fresh random draws and the example negated (branches on sign are the common case).
    """
    # Declared dynamic dims are probed at another size too: a trace that baked a size in fails there.
    probes = [make_inputs(resized(spec.inputs, 3), seed=1), make_inputs(spec.inputs, seed=2),
              [-t if t.is_floating_point() else t for t in example]]
    for inputs in probes:
        eager = flatten(call(resolved.module, inputs, "the model's forward"))
        try:
            traced = flatten(call(loaded, inputs, "the traced model"))
        except ScaffoldError as e:
            raise ScaffoldError(f"{e}; the trace froze something input-dependent: use --method script") from None
        diff = compare(eager, traced, spec.verify.rtol, spec.verify.atol)
        if diff:
            where = f" (the tracer warned at {tracer_warnings[0]})" if tracer_warnings else ""
            raise ScaffoldError(
                f"the traced model matches eager on the example input but not on another one ({diff}): tracing "
                f"froze data-dependent control flow; use --method script{where}"
            )


def _rejected_input(loaded: Any, spec: ProjectSpec) -> str | None:
    """A first-input shape the artifact refuses (every dim + 1), for the generated bad-input test; None if none."""
    first = spec.inputs[0]
    if not first.shape:
        return None
    wrong = replace(first, shape=tuple(d + 1 for d in first.shape))
    inputs = make_inputs((wrong, *spec.inputs[1:]), seed=2)
    try:
        call(loaded, inputs, "the saved model")
    except ScaffoldError:
        return f"{first.name}={wrong.shape_str}"
    return None


def _device_constants(module: Any) -> list[str]:
    """Devices written into a traced graph (`device=x.device`, `.to('cpu')`) do not follow --device."""
    graph = getattr(module, "inlined_graph", None) or module.graph
    found: set[str] = set()
    stack = [graph.block()] if hasattr(graph, "block") else []
    nodes = list(graph.nodes()) if not stack else []
    while stack:
        block = stack.pop()
        for node in block.nodes():
            nodes.append(node)
            stack.extend(node.blocks())
    for node in nodes:
        if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
            found.add(str(node.output().toIValue()))
    if not found:
        return []
    return [f"the trace baked device {', '.join(sorted(found))} into the graph (a .to(device) or device= in "
            "forward): the C++ binary cannot move it with --device; use --method script to keep it dynamic"]
