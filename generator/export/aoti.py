"""AOTInductor backend: torch.export, compile ahead of time into a .pt2 package, load it back, check it."""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from generator.cppnames import SCALAR_TYPES
from generator.errors import ScaffoldError
from generator.export import precision as reduced
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
    quiet,
    resized,
    save_golden,
    sha256,
    signature,
    verify_record,
    weak_outputs,
)
from generator.models import ResolvedModel
from generator.spec import ProjectSpec
from generator.toolchain import find_compiler

ARTIFACT = "model.pt2"
# The C++ runner names its flat outputs from this metadata entry, so parity compares names as TorchScript does.
OUTPUT_NAMES_KEY = "scaffold_output_names"
# A package is compiled for fixed input shapes and dtypes; the runner checks inputs against these before
# calling into it (a wrong shape otherwise fails deep in the generated code, or reads out of bounds).
INPUTS_KEY = "scaffold_inputs"
# Dynamic dims that torch.export found to be one symbol (the batch of `image` and of `meta`): lines of
# "INPUT:DIM INPUT:DIM ..." (input positions). The runner refuses inputs that disagree on them, which the
# compiled code would otherwise read out of step (wrong numbers, a libtorch resize warning at best).
SHARED_DIMS_KEY = "scaffold_shared_dims"


def export(resolved: ResolvedModel, spec: ProjectSpec, model_dir: Path) -> ExportResult:
    """Write model/model.pt2 and model/golden.pt; raise ScaffoldError when the package is not faithful."""
    if resolved.kind == "torchscript":
        raise ScaffoldError("--backend aoti needs the Python model (torch.export cannot read a TorchScript file); "
                            "pass --model package.module:attr or a torchvision name")
    compiler = find_compiler()
    if compiler is None:
        raise ScaffoldError("--backend aoti compiles C++ at export time and no C++ compiler was found: install one "
                            "(apt-get install g++) or set CXX")
    notes = reduced.check_cpu(spec)  # bf16/int8 on a CPU without fast instructions: refused unless forced
    inputs = make_inputs(spec.inputs, seed=0)
    plan = call_plan(spec.inputs, resolved.argument_names())
    eager = flatten(call(resolved.module, inputs, "the model's forward", plan))
    if not eager:
        raise ScaffoldError("the model's forward returned no tensors: there is nothing to deploy or check")

    # transformers: ModelOutput/cache as named tensors. Structured inputs: the program takes the flat tensors
    # (FlatInputs), so the package's inputs are golden.pt's, in that order, whatever pytree order the model's
    # own arguments would flatten to; the C++ runner passes them on as they are.
    try:
        flat = flat_module(plain_module(resolved.module), plan)
        # bf16: the model under autocast; int8: quantized and calibrated (export/precision.py); fp32: as it is.
        program = _export(reduced.prepare(flat, spec, inputs, notes, plan), spec, plan)
    except ExportFailed as e:
        # torchvision's detection models fail in batched NMS (torchvision/ops/boxes.py:103,
        # _batched_nms_coordinate_trick: "Could not guard on data-dependent expression Eq(4*u1, 0)"): the number
        # of boxes left after score filtering is data-dependent.
        hint = ("torchvision's detection models do not export: their box filtering (batched NMS) depends on the "
                "number of boxes found; use the TorchScript backend, which scripts them (--backend torchscript)"
                if resolved.default_method == "script" else
                "data-dependent control flow or unsupported Python; use the TorchScript backend (--backend "
                "torchscript --method script)")
        raise ScaffoldError(f"torch.export could not capture the model ({e}): {hint}") from None

    from torch._inductor import aoti_compile_and_package, aoti_load_package

    artifact = model_dir / ARTIFACT
    metadata = {
        OUTPUT_NAMES_KEY: "\n".join(name for name, _ in eager),
        INPUTS_KEY: "\n".join(f"{i.name} {SCALAR_TYPES[i.dtype]} {i.pattern}" for i in spec.inputs),
        SHARED_DIMS_KEY: "\n".join(" ".join(group) for group in shared_dims(program, spec)),
    }
    # Freezing folds batch norm into convolutions and prepacks weights for oneDNN: resnet18 here runs at 0.55x
    # Python eager with it, 1.13x without. For a tiny MLP the prepacked linear is 3x slower than plain addmm.
    # So both are compiled and the faster, on this machine, is kept (freeze = false compiles only the plain one).
    candidates = [{"freezing": True}, {"freezing": False}] if spec.model.freeze else [{"freezing": False}]
    candidates = reduced.candidates(spec, candidates)
    rtol, atol = reduced.tolerances(spec)  # bf16/int8 are checked against fp32 eager with wider tolerances
    built = []
    for n, configs in enumerate(candidates):
        path = model_dir / f"candidate-{n}.pt2"
        try:
            # Inductor applies freezing only with grad disabled; under grad the package gets plain convolutions.
            with quiet(), torch.no_grad():
                aoti_compile_and_package(program, package_path=str(path),
                                         inductor_configs={**configs, "aot_inductor.metadata": metadata})
                loaded = aoti_load_package(str(path))
        except Exception as e:
            raise ScaffoldError(f"AOTInductor could not compile the exported program: {one_line(e)[:300]}") from None
        reloaded = flatten(call(loaded, inputs, "the AOTInductor package"))
        diff = compare(eager, reloaded, rtol, atol)
        if diff:
            raise ScaffoldError(f"the AOTInductor package does not reproduce eager outputs: {diff}")
        if any(i.dynamic for i in spec.inputs):  # and at another size of the dynamic dims
            other = make_inputs(resized(spec.inputs, 3), seed=1)
            diff = compare(flatten(call(resolved.module, other, "the model's forward", plan)),
                           flatten(call(loaded, other, "the AOTInductor package")), rtol, atol)
            if diff:
                raise ScaffoldError(f"the AOTInductor package does not match eager at another dynamic size: {diff}")
        built.append((configs, path, loaded, reloaded))

    timings = _median_ms([b[2] for b in built], inputs)
    best = min(range(len(built)), key=timings.__getitem__)
    configs, path, loaded, reloaded = built[best]
    path.rename(artifact)
    for _, other_path, _, _ in built:
        other_path.unlink(missing_ok=True)

    golden = model_dir / "golden.pt"
    # Reduced precision: the golden outputs are the reduced artifact's own, so the C++ parity test checks the C++
    # build against what this package computes, with the normal tolerances; the error against fp32 eager is
    # measured here and recorded in the manifest's `precision` section.
    save_golden(golden, spec, inputs, eager if spec.model.precision == "fp32" else reloaded)
    manifest = {
        "backend": "aoti",
        "method": "export",
        "frozen": configs["freezing"],
        "artifact": ARTIFACT,
        "sha256": sha256(artifact),
        "golden": golden.name,
        "signature": signature(spec, eager),
        "verify": verify_record(spec, eager, reloaded),
        "inductor_configs": configs,
        # Python-side median latency of each candidate package, in the order tried (frozen first).
        "candidates_ms": {("frozen" if c["freezing"] else "plain"): round(t, 4)
                          for (c, *_), t in zip(built, timings, strict=True)},
        "compiled_for": "cpu",
        "rejects_input": _rejected_input(spec),
    }
    if spec.model.precision != "fp32":
        manifest["precision"], lines = reduced.report(spec, reduced.accuracy(flat, loaded, spec))
        notes.extend(lines)
    return ExportResult(artifact=artifact, golden=golden, manifest=manifest,
                        warnings=[*notes, *weak_outputs(eager, spec.verify.atol)])


def _median_ms(packages: list, inputs: list[torch.Tensor], rounds: int = 3) -> list[float]:
    """Median call latency of each package, measured in interleaved rounds of about 0.1 s each."""
    if len(packages) == 1:
        return [0.0]
    with torch.inference_mode():
        start = time.perf_counter()
        packages[0](*inputs)
        calls = max(3, min(200, int(0.1 / max(time.perf_counter() - start, 1e-6))))
        samples: list[list[float]] = [[] for _ in packages]
        for _ in range(rounds):
            for package, out in zip(packages, samples, strict=True):
                package(*inputs)
                for _ in range(calls):
                    t = time.perf_counter()
                    package(*inputs)
                    out.append((time.perf_counter() - t) * 1000)
    return [statistics.median(s) for s in samples]


class ExportFailed(Exception):
    """torch.export raised (its one-line reason); export() words the error for the model at hand."""


def export_arguments(spec: ProjectSpec, plan: CallPlan | None = None) -> tuple[list[torch.Tensor], Any]:
    """The example inputs and dynamic_shapes torch.export gets: the spec's dynamic dims symbolic (Dim.AUTO), each
    exported at size >= 2 (a size-1 example would be specialised: 0/1 specialisation)."""
    example = make_inputs(tuple(replace(i, shape=tuple(max(d, 2) if k in i.dynamic else d for k, d in
                                                        enumerate(i.shape))) for i in spec.inputs), seed=0)
    if not any(i.dynamic for i in spec.inputs):
        return example, None
    shapes: Any = tuple({d: torch.export.Dim.AUTO for d in i.dynamic} or None for i in spec.inputs)
    if plan is not None and not plan.flat:
        shapes = (shapes,)  # FlatInputs.forward(*flat): one variadic argument holding them all
    return example, shapes


def _export(module: torch.nn.Module, spec: ProjectSpec, plan: CallPlan) -> torch.export.ExportedProgram:
    """torch.export with the spec's dynamic dims symbolic; a dim export had to fix is an error, not a surprise."""
    example, shapes = export_arguments(spec, plan)
    try:
        with quiet():
            program = torch.export.export(module, tuple(example), dynamic_shapes=shapes, strict=False)
    except Exception as e:
        raise ExportFailed(one_line(e)[:300]) from None
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for spec_input, name in zip(spec.inputs, program.graph_signature.user_inputs, strict=False):
        shape = placeholders[name].meta["val"].shape
        for d in spec_input.dynamic:
            if is_concrete_int(shape[d]):  # export specialised it (a SymInt may still hold a constant)
                raise ScaffoldError(f"dim {d} of input '{spec_input.name}' cannot be dynamic: torch.export found the "
                                    f"model fixes it to {shape[d]}; drop it from --dynamic / [[inputs]].dynamic")
    return program


def shared_dims(program: torch.export.ExportedProgram, spec: ProjectSpec) -> list[list[str]]:
    """Groups of "INPUT:DIM" (input positions) that the exported program holds as one symbol (the keys of its
    range_constraints), for every symbol two or more dynamic dims share: [["0:0", "1:0"]] for a shared batch."""
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    groups: dict[str, list[str]] = {}
    for index, (spec_input, name) in enumerate(zip(spec.inputs, program.graph_signature.user_inputs,
                                                   strict=False)):
        shape = placeholders[name].meta["val"].shape
        for d in spec_input.dynamic:
            symbol = str(shape[d])  # "s0" (or an expression of symbols, which stays its own group)
            groups.setdefault(symbol, []).append(f"{index}:{d}")
    return [members for members in groups.values() if len(members) > 1]


def _rejected_input(spec: ProjectSpec) -> str | None:
    """The C++ runner refuses any shape but the compiled one: every static dim + 1 on the first input shows it."""
    first = spec.inputs[0]
    if len(first.dynamic) == len(first.shape):
        return None
    return f"{first.name}={'x'.join(str(d + (k not in first.dynamic)) for k, d in enumerate(first.shape))}"
