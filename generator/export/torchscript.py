"""TorchScript backend: trace or script, optionally freeze, save, load back, and check against eager."""

from __future__ import annotations

import copy
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import torch

from generator.errors import ScaffoldError
from generator.export.common import (
    CallPlan,
    ExportResult,
    call,
    call_plan,
    compare,
    flat_module,
    flatten,
    make_inputs,
    one_line,
    plain_module,
    resized,
    save_golden,
    sha256,
    signature,
    verify_record,
    weak_outputs,
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
    plan = call_plan(spec.inputs, resolved.argument_names())
    # A traced artifact takes the flat tensors (the trace records the structure); a scripted or loaded one takes
    # forward's own arguments, which the C++ runner builds from the flat tensors (manifest `arguments`).
    structured = resolved.kind == "torchscript" or spec.model.method == "script"
    artifact_plan = plan if structured else None
    eager = flatten(_eager(resolved, spec, call(resolved.module, inputs, "the model's forward", plan)))
    if not eager:
        raise ScaffoldError("the model's forward returned no tensors: there is nothing to deploy or check")
    module, tracer_warnings = _to_torchscript(resolved, spec, inputs, plan)
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

    reloaded = flatten(call(loaded, inputs, "the saved TorchScript model", artifact_plan))
    diff = compare(eager, reloaded, spec.verify.rtol, spec.verify.atol)
    if diff:
        raise ScaffoldError(f"the saved TorchScript model does not reproduce eager outputs: {diff}")

    traced_python = spec.model.method == "trace" and resolved.kind != "torchscript"
    if traced_python:
        _check_other_inputs(resolved, loaded, spec, inputs, tracer_warnings, plan)
        notes.extend(_device_constants(loaded))

    arguments = _artifact_arguments(loaded, plan) if structured and not plan.flat else None
    torchvision_ops = _torchvision_ops(loaded, frozen=spec.model.freeze)
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
        "verify": verify_record(spec, eager, reloaded),
        "rejects_input": _rejected_input(loaded, spec, artifact_plan),
        # How the C++ runner calls forward: None, the flat tensors as they are; else per argument its kind,
        # slice of the flat tensors, dict keys and whether it goes by name (see pipeline.context).
        "arguments": arguments,
        # torchvision C++ operators the artifact calls; the generated runner provides them (TORCHVISION_OPS).
        "torchvision_ops": torchvision_ops,
        # A scripted model takes a List argument of any length: the binary accepts another count there.
        "variable_list": plan.variable_list.name if arguments and plan.variable_list and any(
            a["name"] == plan.variable_list.name and a["kind"] == "list" for a in arguments) else None,
    }
    return ExportResult(artifact=artifact, golden=golden, manifest=manifest,
                        warnings=[*weak_outputs(eager, spec.verify.atol), *notes])


class _ChannelsLast(torch.nn.Module):
    """Moves the chosen inputs to channels-last before the wrapped model sees them (recorded in the trace)."""

    def __init__(self, inner: torch.nn.Module, positions: tuple[int, ...]) -> None:
        super().__init__()
        self.inner = inner
        self.positions = positions

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.inner(*[x.contiguous(memory_format=torch.channels_last) if i in self.positions else x
                            for i, x in enumerate(inputs)])


# torchvision's C++ operators that the generated TorchScript runner implements (src/torchscript_runner.cpp), so a
# scripted detection model runs without torchvision's Python extension.
TORCHVISION_OPS = ("nms", "roi_align")


def _torchvision_ops(module: Any, frozen: bool = True) -> list[str]:
    """The torchvision:: operators the artifact's graph calls; an error for one the C++ runner cannot provide."""
    graph = getattr(module, "inlined_graph", None) or module.graph
    found: set[str] = set()
    stack = [graph.block()]
    while stack:
        for node in stack.pop().nodes():
            if node.kind().startswith("torchvision::"):
                found.add(node.kind().split("::", 1)[1])
            stack.extend(node.blocks())
    missing = sorted(found - set(TORCHVISION_OPS))
    if missing:
        raise ScaffoldError(
            f"the model calls torchvision's C++ operator(s) {', '.join('torchvision::' + m for m in missing)}, which "
            f"libtorch does not have and the generated project does not provide (it provides "
            f"{', '.join('torchvision::' + o for o in TORCHVISION_OPS)}, what torchvision's detection models use)"
            + ("; freezing (freeze = true, the default) removes training-only branches such as those of torchvision's "
               "detection models that call other operators" if not frozen else
               "; use the aoti backend if torch.export can capture it"))
    return sorted(found)


def _artifact_arguments(loaded: Any, plan: CallPlan) -> list[dict[str, Any]]:
    """plan.describe(), with a list argument whose TorchScript type is a Tuple marked `tuple` (a fixed length,
    which the C++ runner builds as a tuple, not a c10::List)."""
    try:
        schema = loaded.forward.schema.arguments[1:]
    except (AttributeError, RuntimeError):
        schema = []
    types = {a.name: str(a.type) for a in schema}
    arguments = plan.describe()
    position = 0
    for arg in arguments:
        if arg["keyword"]:
            type_name = types.get(arg["name"], "")
        else:
            type_name = str(schema[position].type) if position < len(schema) else ""
            position += 1
        if arg["kind"] == "list" and type_name.startswith("Tuple"):
            arg["kind"] = "tuple"
    return arguments


def _eager(resolved: ResolvedModel, spec: ProjectSpec, value: Any) -> Any:
    """The eager result as the artifact returns it (a scripted torchvision detector adds its empty losses)."""
    scripted = spec.model.method == "script" and resolved.kind != "torchscript"
    return resolved.scripted_result(value) if scripted and resolved.scripted_result else value


def channels_last_positions(resolved: ResolvedModel, spec: ProjectSpec) -> tuple[int, ...]:
    """Which inputs go channels-last: 4-D float inputs of a traced Python model that has 2-D convolutions."""
    if not spec.model.channels_last or spec.model.method != "trace" or resolved.kind == "torchscript":
        return ()
    if not any(isinstance(m, torch.nn.Conv2d) for m in resolved.module.modules()):
        return ()
    return tuple(i for i, s in enumerate(spec.inputs) if len(s.shape) == 4 and s.dtype in FLOAT_DTYPES)


def _to_torchscript(resolved: ResolvedModel, spec: ProjectSpec, inputs: list[torch.Tensor],
                    plan: CallPlan) -> tuple[torch.jit.ScriptModule, list[str]]:
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
    module = plain_module(module)  # a transformers model: ModelOutput and cache as named tensors
    module = flat_module(module, plan)  # structured inputs: the trace takes the flat tensors
    positions = channels_last_positions(resolved, spec)
    if positions:
        module = _ChannelsLast(copy.deepcopy(module), positions).to(memory_format=torch.channels_last).eval()
    found: list[str] = []

    def record(message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: Any) -> None:
        # Called synchronously by warnings.warn, so the model's frames are still on the stack. Other warnings
        # raised while tracing are dropped, as before (they are torch's internal notices).
        if issubclass(category, torch.jit.TracerWarning):
            found.append(f"{_model_frame(sys._getframe(1), filename, lineno)}: {one_line(message)}")

    with warnings.catch_warnings():
        warnings.simplefilter("always", torch.jit.TracerWarning)
        warnings.showwarning = record  # restored by catch_warnings
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, tuple(inputs), check_trace=False, strict=False)
        except Exception as e:
            if "cannot infer type" in str(e):
                raise ScaffoldError("tracing failed: TorchScript cannot type the output; return tensors, or tuples, "
                                    "lists and dicts of them (one value type per dict)") from None
            raise ScaffoldError(f"tracing failed: {one_line(e)}; try --method script") from None
    return traced, list(dict.fromkeys(found))


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_GENERATOR_DIR = str(Path(__file__).resolve().parents[1]) + os.sep


def _model_frame(frame: FrameType | None, filename: str, lineno: int) -> str:
    """`file:line` of the innermost frame in the model's code (the user's or a library's such as transformers).

    A tracer warning is attributed to where torch raises it (`_tensor.py:1152`, in `Tensor.__iter__`), which says
    nothing about which line of the model to change; the line that called into torch does. Frames of torch,
    of the warnings machinery and of scaffold's own wrappers are skipped; without a model frame, torch's own.
    """
    while frame is not None:
        path = frame.f_code.co_filename
        if not (path.startswith((_TORCH_DIR, _GENERATOR_DIR)) or path == warnings.__file__
                or path.startswith("<")):
            return f"{Path(path).name}:{frame.f_lineno}"
        frame = frame.f_back
    return f"{Path(filename).name}:{lineno}"


def _freeze(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    try:
        return torch.jit.freeze(module.eval())
    except Exception as e:
        raise ScaffoldError(
            f"torch.jit.freeze failed: {one_line(e)}; export without it (--no-freeze, or freeze = false in [model])"
        ) from None


def _check_other_inputs(resolved: ResolvedModel, loaded: Any, spec: ProjectSpec, example: list[torch.Tensor],
                        tracer_warnings: list[str], plan: CallPlan) -> None:
    """A trace that froze a data-dependent branch still matches on its own example; other inputs tell.

    Two fresh random draws and the example negated (branches on sign are the common case).
    """
    # Declared dynamic dims are probed at another size too: a trace that baked a size in fails there.
    probes = [make_inputs(resized(spec.inputs, 3), seed=1), make_inputs(spec.inputs, seed=2),
              [-t if t.is_floating_point() else t for t in example]]
    for inputs in probes:
        eager = flatten(call(resolved.module, inputs, "the model's forward", plan))
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


def _rejected_input(loaded: Any, spec: ProjectSpec, plan: CallPlan | None) -> str | None:
    """A first-input shape the artifact refuses (every dim + 1), for the generated bad-input test; None if none."""
    first = spec.inputs[0]
    if not first.shape:
        return None
    wrong = replace(first, shape=tuple(d + 1 for d in first.shape))
    inputs = make_inputs((wrong, *spec.inputs[1:]), seed=2)
    try:
        call(loaded, inputs, "the saved model", plan)
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
