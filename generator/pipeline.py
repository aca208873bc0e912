"""spec -> resolve -> export -> verify -> render -> write: `scaffold new` without the command line."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from generator import __version__, cppnames, docker, preprocess
from generator.build import write_user_presets
from generator.errors import ScaffoldError
from generator.export.common import ExportResult, write_manifest
from generator.merge import record_state
from generator.models import ResolvedModel, apply_config, resolve
from generator.render import render_tree, staged
from generator.spec import ProjectSpec, apply_dynamic, input_arguments, spec_to_toml
from generator.toolchain import CMAKE_MINIMUM, CMAKE_MINIMUM_STR, TorchInfo, find_tool, torch_info

RUNNER_SOURCES = {"torchscript": "torchscript_runner.cpp", "aoti": "aoti_runner.cpp"}


@dataclass
class NewResult:
    root: Path
    spec: ProjectSpec
    files: list[Path]
    warnings: list[str] = field(default_factory=list)


def fill_inputs(spec: ProjectSpec, resolved: ResolvedModel, dynamic: dict[str, list[int]] | None = None) -> ProjectSpec:
    """Inputs from the spec, else the model's known defaults, else one line that says what to pass."""
    if spec.inputs or resolved.default_inputs:
        inputs = apply_dynamic(spec.inputs or resolved.default_inputs, dynamic or {})
        input_arguments(inputs, "inputs")  # the model's declared defaults are checked like the user's
        return spec.with_inputs(inputs)
    required = resolved.required_arguments()
    optional = [n for n in resolved.argument_names() if n not in {name for name, _ in required}]
    example = " ".join(f"--input {spelt}=SHAPE[:DTYPE]" for _, spelt in required) if required else \
        "--input x=1x3x224x224 --input ids=1x16:int64"
    rest = f"; {', '.join(optional)} keep their defaults unless you add an --input for them" if optional else ""
    raise ScaffoldError(
        f"no inputs known for {resolved.description}: pass one --input per required forward argument, in order: "
        f"{example} (or [[inputs]] in scaffold.toml; a list argument takes NAME[0], NAME[1], ..., a dict "
        f"NAME['KEY']){rest}"
    )


def export(resolved: ResolvedModel, spec: ProjectSpec, model_dir: Path) -> ExportResult:
    if spec.model.backend == "torchscript":
        from generator.export import torchscript

        return torchscript.export(resolved, spec, model_dir)
    if spec.model.backend == "aoti":
        from generator.export import aoti

        return aoti.export(resolved, spec, model_dir)
    raise ScaffoldError(f"backend '{spec.model.backend}' is not available")  # spec validation keeps this unreachable


def backend_label(spec: ProjectSpec, result: ExportResult) -> str:
    if spec.model.backend == "aoti":
        frozen = "frozen" if result.manifest["frozen"] else "not frozen (measured faster here)"
        precision = {"bf16": "bf16 (autocast), ", "int8": "int8 (PT2E static quantization), "}.get(
            spec.model.precision, "")
        return f"AOTInductor package, torch.export, {precision}{frozen}, compiled for the CPU"
    return f"TorchScript, {result.manifest['method']}" + (", frozen" if spec.model.freeze else "")


def context(spec: ProjectSpec, result: ExportResult, resolved: ResolvedModel, info: TorchInfo) -> dict:
    """Everything the templates need, decided here: templates only print plain values."""
    return {
        "name": spec.name,
        "scaffold_version": __version__,
        "cmake_minimum": CMAKE_MINIMUM_STR,
        "cmake_minimum_major": CMAKE_MINIMUM[0],
        "cmake_minimum_minor": CMAKE_MINIMUM[1],
        "model_description": resolved.description,
        "torch_version": info.version,
        "torch_base_version": info.base_version,
        "torch_build": info.build,
        "cxx_standard": info.cxx_standard,
        "cxx11_abi": int(info.cxx11_abi),
        "artifact": result.artifact.name,
        "runner_source": RUNNER_SOURCES[spec.model.backend],
        "backend_label": backend_label(spec, result),
        "inputs": spec.inputs,
        "outputs": result.manifest["signature"]["outputs"],
        # The library's C++ names: namespace, typed Inputs/Outputs fields, the model-directory variable.
        "namespace": cppnames.namespace(spec.name),
        "env_model_dir": cppnames.namespace(spec.name).rstrip("_").upper() + "_MODEL_DIR",
        "input_fields": cppnames.input_fields(spec.inputs),
        "input_members": cppnames.input_members(spec.inputs),
        # How the TorchScript runner calls forward (None: the flat tensors as they are); the list argument whose
        # length may differ from the exported one (scripted models), as its slice of the flat tensors.
        "call_arguments": _call_arguments(result),
        "variable_list": _variable_list(spec, result),
        "torchvision_ops": result.manifest.get("torchvision_ops") or [],
        "output_fields": cppnames.output_fields(result.manifest["signature"]["outputs"]),
        "runtime": spec.runtime,
        "image": preprocess.image_context(result.manifest.get("preprocess")),
        "bad_input": result.manifest.get("rejects_input"),
        "precision": spec.model.precision,
        "bazel": "bazel" in spec.build_systems,
        # Bazel's names for the project: MODULE.bazel's module (lower case, ends in a letter or digit) and
        # WORKSPACE's workspace (letters, digits, '_').
        "bazel_module_name": spec.name.lower().rstrip("-_"),
        "bazel_workspace_name": spec.name.lower().replace("-", "_"),
        "ci": list(spec.ci),
        "ci_variants": libtorch_variants(info),
        "docker": spec.docker,
        # The Dockerfile's official libtorch archive name (it changed in 2.8) and image tag (lowercase).
        "libtorch_archive": docker.libtorch_archive(info.base_version),
        "docker_tag": docker.image_tag(spec.name),
    }


def libtorch_variants(info: TorchInfo) -> list[str]:
    """The official libtorch archives a CI matrix builds against: cpu, plus the export's CUDA variant (cu130)
    for a CUDA torch (its local version tag, else its CUDA version)."""
    if info.cuda is None:
        return ["cpu"]
    local = info.version.split("+", 1)[1] if "+" in info.version else ""
    return ["cpu", local if local.startswith("cu") else "cu" + info.cuda.torch_cuda.replace(".", "")]


def _call_arguments(result: ExportResult) -> list[dict] | None:
    """The manifest's `arguments` for the runner, each marked `variable` (the list whose length may differ from
    the exported one) or `shifted` (after it: its start moves by the difference)."""
    arguments = result.manifest.get("arguments")
    if not arguments:
        return None
    name = result.manifest.get("variable_list")
    out, seen = [], False
    for arg in arguments:
        variable = arg["name"] == name and arg["kind"] in ("list", "tuple")
        out.append({**arg, "variable": variable, "shifted": seen})
        seen = seen or variable
    return out


def _variable_list(spec: ProjectSpec, result: ExportResult) -> dict | None:
    """{name, start, count} of the list argument whose length the artifact accepts freely; None if none."""
    name = result.manifest.get("variable_list")
    for arg in input_arguments(spec.inputs, "inputs") if name else ():
        if arg.name == name and arg.kind == "list":
            return {"name": arg.name, "start": arg.start, "count": arg.count}
    return None


def flavours(spec: ProjectSpec) -> list[str]:
    """Template trees to render (templates/<flavour>/ mirrors the files it makes), in order."""
    trees = ["project"]
    if "bazel" in spec.build_systems:
        trees.append("bazel")
    trees += [f"ci-{provider}" for provider in spec.ci]
    if spec.docker:
        trees.append("docker")
    return trees


def export_model(spec: ProjectSpec, model_dir: Path, info: TorchInfo, *, dynamic: dict[str, list[int]] | None = None,
                 progress: Callable[[str], None] = lambda _msg: None,
                 ) -> tuple[ProjectSpec, ResolvedModel, ExportResult]:
    """Resolve, export, verify and write model/ (artifact, golden, manifest); the spec comes back with its inputs."""
    progress(f"resolving {spec.model.source}")
    resolved = resolve(spec.model.source, weights=spec.model.weights, weights_strict=spec.model.weights_strict)
    apply_config(resolved, spec.model.config)  # [model.config], e.g. use_cache = false
    if resolved.default_method and not spec.model.method_given:  # torchvision detection: script
        spec = replace(spec, model=replace(spec.model, method=resolved.default_method, method_given=True))
    spec = fill_inputs(spec, resolved, dynamic)
    model_dir.mkdir()
    progress(f"exporting ({spec.model.backend}, {spec.model.method}) and checking against eager")
    result = export(resolved, spec, model_dir)
    preprocess.record(spec, resolved, result)  # weights file and sha256, image preprocessing, class names
    manifest = {
        "scaffold_version": __version__,
        "project": spec.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": spec.model.source,
        "torch": {"version": info.version, "cuda": info.cuda.torch_cuda if info.cuda else None,
                  "cxx11_abi": info.cxx11_abi, "cxx_standard": info.cxx_standard},
        **result.manifest,
    }
    write_manifest(model_dir / "manifest.json", manifest)
    return spec, resolved, result


def render_project(spec: ProjectSpec, resolved: ResolvedModel, result: ExportResult, info: TorchInfo, out: Path,
                   root: Path) -> list[Path]:
    """Every generated text file (templates and scaffold.toml) into out; `scaffold update` re-renders the same.

    root is where the project lives (out may be a staging directory beside it).
    """
    skip = {f"src/{src}" for b, src in RUNNER_SOURCES.items() if b != spec.model.backend}
    values = context(spec, result, resolved, info)
    files = []
    for flavour in flavours(spec):
        files += render_tree(flavour, values, out, skip=skip)
    (out / "scaffold.toml").write_text(spec_to_toml(spec, root=root), encoding="utf-8")
    return [*files, Path("scaffold.toml")]


def create_project(spec: ProjectSpec, dest: Path, *, force: bool = False, dynamic: dict[str, list[int]] | None = None,
                   progress: Callable[[str], None] = lambda _msg: None) -> NewResult:
    """Generate the whole project at dest, or nothing: every failure leaves the file system as it was."""
    info = torch_info()
    notes: list[str] = []  # leftovers of interrupted runs beside dest, recovered or reported
    with staged(dest, force, warn=notes.append) as scratch:
        spec, resolved, result = export_model(spec, scratch / "model", info, dynamic=dynamic, progress=progress)
        progress("rendering the C++ project")
        files = render_project(spec, resolved, result, info, scratch, dest)
        # What scaffold wrote, kept in .scaffold/ so `scaffold update` can merge a later render into the user's edits.
        record_state(scratch, files)
        write_user_presets(scratch, info, find_tool("ninja"))
        model_files = sorted((scratch / "model").iterdir())
        files += [Path("CMakeUserPresets.json"), *(p.relative_to(scratch) for p in model_files)]
    return NewResult(root=dest, spec=spec, files=files, warnings=[*notes, *result.warnings])
