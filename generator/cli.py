"""The `scaffold` command line: a thin layer over spec, pipeline and build that prints."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from generator import __version__
from generator.errors import Interrupted, ScaffoldError, is_interrupt, user_code_failure
from generator.progress import Stages, Verbosity
from generator.textsafe import CONTROL_RE

T = TypeVar("T")


# The choices --help lists (typer shows an Enum's values); the spec validates the same names (spec.METHODS, ...).
class Method(StrEnum):
    trace = "trace"
    script = "script"


class Backend(StrEnum):
    torchscript = "torchscript"
    aoti = "aoti"


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


class CiProvider(StrEnum):
    github = "github"


def _value(choice: Enum | None) -> Any:
    return choice.value if choice is not None else None


class _Group(TyperGroup):
    """The one place a ScaffoldError (or a bad flag) becomes one `error:` line and an exit status."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and not getattr(command, "_scaffold_help", False):
            _plain_flags(command)
        return command

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ScaffoldError as e:
            fail(e)
        except _UsageError as e:  # a bad flag or value: the same one line, exit 2 as click has it
            fail(e.format_message(), code=e.exit_code, hint=_help_hint(e))


# click's UsageError (a bad value, an unknown option), whichever click typer uses (newer typers vendor their own).
_UsageError: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _help_hint(e: Exception) -> str | None:
    ctx = getattr(e, "ctx", None)
    return f"({ctx.command_path} --help lists the options)" if ctx is not None else None


def _plain_flags(command: Any) -> None:
    """A flag takes no value, so --help shows no type for it (typer prints `<bool>` there otherwise)."""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    make_help = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    command._scaffold_help = True


app = typer.Typer(
    name="scaffold",
    help="Turn a PyTorch model into a complete, verified, fast C++ (libtorch) deployment project.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)
out = Console()
err = Console(stderr=True)

QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output (errors and warnings only).")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="One line per stage, on a terminal too.")]


def _verbosity(quiet: bool, verbose: bool) -> Verbosity:
    if quiet and verbose:
        raise ScaffoldError("--quiet and --verbose contradict each other: pass one")
    return Verbosity.quiet if quiet else Verbosity.verbose if verbose else Verbosity.normal


def _one_line(message: str) -> str:
    # One line whatever the message quotes (a path with a newline in it): control characters are shown escaped.
    return CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)


def fail(error: str | ScaffoldError, code: int = 1, hint: str | None = None) -> None:
    """One `error:` line (the first problem), an `also:` line per further problem (a spec with several), exit."""
    messages = list(getattr(error, "messages", None) or [str(error)])
    err.print(f"[bold red]error:[/] {escape(_one_line(messages[0]))}", highlight=False, soft_wrap=True)
    for more in messages[1:]:
        err.print(f"  also: {escape(_one_line(more))}", highlight=False, soft_wrap=True)
    if hint:
        err.print(escape(hint), style="dim", highlight=False)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        out.print(f"scaffold {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Turn a PyTorch model into a complete, verified, fast C++ (libtorch) deployment project."""


@app.command()
def new(
    name: Annotated[str | None, typer.Argument(help="Project name: the directory, CMake target and binary name.",
                                               show_default=False)] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="torchvision model name (resnet18), package.module:attr (an nn.Module class or "
        "factory; imported from the current directory too), or a TorchScript .pt file.")] = None,
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", "-i", help="NAME=SHAPE[:DTYPE[:LOW..HIGH]], one per forward argument in order, e.g. "
        "x=1x3x224x224, ids=1x16:int64:0..30522. torchvision classifiers default to x=1x3x224x224.")] = None,
    dynamic: Annotated[list[str] | None, typer.Option(
        "--dynamic", help="NAME:DIM[,DIM]: dims of an input that may change at run time, e.g. x:0 for the batch "
        "(compiled symbolic by --backend aoti; checked on other sizes for a trace).")] = None,
    method: Annotated[Method | None, typer.Option(
        "--method", help="trace (default) or script; script keeps data-dependent control flow.",
        show_default=False)] = None,
    backend: Annotated[Backend | None, typer.Option(
        "--backend", show_default=False, help="torchscript (default) or aoti (torch.export + AOTInductor: "
        "compiled ahead of time, usually the fastest on CPU; needs a C++ compiler at export time).")] = None,
    freeze: Annotated[bool | None, typer.Option(
        "--freeze/--no-freeze", help="torch.jit.freeze the TorchScript module (default: freeze).",
        show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="Trained weights loaded before export: a state_dict .pt/.pth (or a checkpoint dict "
        "holding one), a .safetensors file, or for a torchvision model a weights name (DEFAULT, IMAGENET1K_V1).",
        show_default=False)] = None,
    weights_strict: Annotated[bool | None, typer.Option(
        "--weights-strict/--no-weights-strict", help="Every model tensor must come from the weights file, shapes "
        "equal (default); --no-weights-strict loads what fits and warns.", show_default=False)] = None,
    precision: Annotated[Precision | None, typer.Option(
        "--precision", help="fp32 (default), bf16 or int8 (--backend aoti): heavy ops in reduced precision, "
        "inputs and outputs keep their dtypes.", show_default=False)] = None,
    calibration: Annotated[str | None, typer.Option(
        "--calibration", help="int8: calibration inputs, a torch.save list of input tuples or dicts (without "
        "it: random inputs, for speed tests only).", show_default=False)] = None,
    force_precision: Annotated[bool | None, typer.Option(
        "--force-precision", help="Export bf16/int8 even when this CPU has no fast instructions for it.",
        show_default=False)] = None,
    model_config: Annotated[list[str] | None, typer.Option(
        "--model-config", help="KEY=VALUE set on the model's config before export (a transformers model), e.g. "
        "use_cache=false; [model.config] in scaffold.toml.", show_default=False)] = None,
    spec_file: Annotated[Path | None, typer.Option(
        "--spec", help="A scaffold.toml holding all of the above; flags override it.", dir_okay=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write (default: ./NAME).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the output directory if scaffold made it (never "
                                        "$HOME, the current directory or a mount point).")] = False,
    build: Annotated[bool, typer.Option("--build", help="Run `scaffold build` on the new project.")] = False,
    bazel: Annotated[bool, typer.Option("--bazel", help="Also generate Bazel rules (MODULE.bazel, WORKSPACE, "
                                        "BUILD.bazel) beside CMake.")] = False,
    ci: Annotated[list[CiProvider] | None, typer.Option("--ci", help="Generate a CI build matrix: github.",
                                                        show_default=False)] = None,
    docker: Annotated[bool | None, typer.Option("--docker/--no-docker", help="Generate a multi-stage Dockerfile.",
                                                show_default=False)] = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Export a model, check the artifact against eager PyTorch, and write a C++ project around it."""
    from generator.spec import (
        anchor_paths,
        merge_flags,
        parse_config_flag,
        parse_dynamic_flag,
        parse_input_flag,
        read_toml,
        spec_from_mapping,
    )

    stages = Stages(err, _verbosity(quiet, verbose))
    with stages.running("checking the spec, the output directory and the model source"):
        # A spec file's relative paths are relative to its directory; a flag's to the current one.
        data = anchor_paths(read_toml(spec_file), spec_file.parent) if spec_file else {}
        if weights:
            weights = anchor_paths({"model": {"weights": weights}}, Path.cwd())["model"]["weights"]
        if model:  # a .pt file: absolute here, written relative to the project into its scaffold.toml
            model = anchor_paths({"model": {"source": model}}, Path.cwd())["model"]["source"]
        if calibration:
            calibration = anchor_paths({"model": {"calibration": calibration}}, Path.cwd())["model"]["calibration"]
        parsed_inputs = [parse_input_flag(text) for text in inputs or []]
        dynamic_dims = dict(parse_dynamic_flag(text) for text in dynamic or [])
        spec = spec_from_mapping(merge_flags(data, name=name, model=model, method=_value(method),
                                             backend=_value(backend), inputs=parsed_inputs, freeze=freeze,
                                             bazel=bazel, ci=[c.value for c in ci] if ci else None,
                                             docker=docker, weights=weights, weights_strict=weights_strict,
                                             precision=_value(precision), calibration=calibration,
                                             force_precision=force_precision,
                                             config=dict(parse_config_flag(t) for t in model_config or [])),
                                 str(spec_file or "flags"))
        dest = output or Path(spec.name)
        # Fail fast: everything knowable without torch, torchvision or a compiler is checked before them.
        from generator.render import check_destination
        from generator.sources import check_source

        check_destination(dest, force)
        check_source(spec.model.source, spec.model.weights)
        stages("checking torch and the C++ toolchain")
        _preflight(bazel="bazel" in spec.build_systems, building=build)
        from generator.pipeline import create_project

        result = _user_code(stages, lambda: create_project(spec, dest, force=force, dynamic=dynamic_dims,
                                                           progress=stages))
    stages.report()
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    out.print(f"[green]created[/] {result.root} ({len(result.files)} files) for "
              f"{', '.join(f'{i.name}={i.shape_str}:{i.dtype}' for i in result.spec.inputs)}", highlight=False)
    if build:
        _build(result.root)
    else:
        out.print(f"next: scaffold build {result.root}", highlight=False)


def _user_code(stages: Stages, work: Callable[[], T]) -> T:
    """Run work(); a SystemExit from the model's code (new, update) becomes one error line that names the stage
    it happened in, instead of ending scaffold silently."""
    try:
        return work()
    except BaseException as e:
        if isinstance(e, Exception) or is_interrupt(e):
            raise
        raise user_code_failure(e, f"the model's code, while {stages.current or 'starting'},") from None


def _build(directory: Path) -> None:
    from generator.build import configure_build_test, open_project

    project = open_project(directory)
    configure_build_test(project, echo=lambda line: err.print(escape(line), style="dim", highlight=False))
    binary = project.binary()
    out.print(f"[green]built and tested[/] {binary}", highlight=False)


@app.command()
def build(
    directory: Annotated[Path, typer.Argument(help="A project made by `scaffold new`.")] = Path("."),
    bazel: Annotated[bool, typer.Option("--bazel", help="Build and test with Bazel instead (bazel build //..., "
                                        "bazel test //...); the project needs `scaffold new --bazel`.")] = False,
    docker: Annotated[bool, typer.Option("--docker", help="Build the project's image with docker (else podman), "
                                         "run the parity check in a container, print the tag and size; the project "
                                         "needs `scaffold new --docker`.")] = False,
    libtorch: Annotated[str | None, typer.Option(
        "--libtorch", help="With --docker: build against this libtorch instead of downloading the official "
        "archive (an unpacked archive, or `python`: this Python's CPU torch).", show_default=False)] = None,
) -> None:
    """Configure (preset 'dev', this machine's libtorch), build (Release, ninja when available), run ctest."""
    if libtorch is not None and not docker:
        raise ScaffoldError("--libtorch goes with --docker (a local build uses this Python's torch)")
    if docker:
        from generator import docker as containers
        from generator.build import open_project

        project = open_project(directory)
        report = containers.build_and_check(
            project.root, project.name, str(project.manifest["torch"].get("version") or ""), libtorch=libtorch,
            echo=lambda line: err.print(escape(line), style="dim", highlight=False))
        size = f"{report.size_bytes / 1e6:.0f} MB" if report.size_bytes >= 0 else "size unknown"
        out.print(f"[green]built and checked[/] image {escape(report.tag)} ({size})", highlight=False)
        return
    _preflight(project=directory, bazel_required=bazel)
    if not bazel:
        _build(directory)
        return
    from generator.bazel import build_and_test

    binary = build_and_test(directory, echo=lambda line: err.print(line, style="dim", highlight=False))
    out.print(f"[green]built and tested[/] {binary}", highlight=False)


@app.command()
def update(
    directory: Annotated[Path, typer.Argument(help="A project made by `scaffold new`.")] = Path("."),
    model: Annotated[str | None, typer.Option("--model", "-m", help="A new model source (as for `new`).",
                                              show_default=False)] = None,
    inputs: Annotated[list[str] | None, typer.Option(
        "--input", "-i", help="NAME=SHAPE[:DTYPE[:LOW..HIGH]], one per forward argument (replaces the spec's).",
        show_default=False)] = None,
    dynamic: Annotated[list[str] | None, typer.Option("--dynamic", help="NAME:DIM[,DIM], as for `new`.",
                                                      show_default=False)] = None,
    method: Annotated[Method | None, typer.Option("--method", help="trace or script.", show_default=False)] = None,
    backend: Annotated[Backend | None, typer.Option("--backend", help="torchscript or aoti.",
                                                    show_default=False)] = None,
    freeze: Annotated[bool | None, typer.Option("--freeze/--no-freeze", help="torch.jit.freeze (TorchScript).",
                                                show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="Trained weights to load before export (a file, or a torchvision weights name), as for "
        "`new`: the weekly retrain.", show_default=False)] = None,
    weights_strict: Annotated[bool | None, typer.Option(
        "--weights-strict/--no-weights-strict", help="Every model tensor must come from the weights file.",
        show_default=False)] = None,
    precision: Annotated[Precision | None, typer.Option(
        "--precision", help="fp32, bf16 or int8 (--backend aoti), as for `new`.", show_default=False)] = None,
    calibration: Annotated[str | None, typer.Option(
        "--calibration", help="int8 calibration inputs, as for `new`.", show_default=False)] = None,
    force_precision: Annotated[bool | None, typer.Option(
        "--force-precision", help="Export bf16/int8 without this CPU's fast instructions.",
        show_default=False)] = None,
    model_config: Annotated[list[str] | None, typer.Option(
        "--model-config", help="KEY=VALUE set on the model's config before export, merged into [model.config] "
        "(as for `new`).", show_default=False)] = None,
    bazel: Annotated[bool, typer.Option("--bazel", help="Add Bazel rules.")] = False,
    ci: Annotated[list[CiProvider] | None, typer.Option("--ci", help="Add a CI build matrix: github.",
                                                        show_default=False)] = None,
    docker: Annotated[bool | None, typer.Option("--docker/--no-docker", help="Add (or drop) the Dockerfile.",
                                                show_default=False)] = None,
    model_only: Annotated[bool, typer.Option("--model-only", help="Re-export model/ and touch nothing else (the "
                                             "spec too, when flags change it); refused if the signature "
                                             "changes.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")] = False,
    allow_dirty: Annotated[bool, typer.Option("--allow-dirty", help="Run even when git shows uncommitted changes "
                                              "in the project.")] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Re-export the model and re-render the project with this scaffold, keeping your edits (three-way merge).

    Flags change the spec as for `new` and are saved in scaffold.toml.

    Exit status: 0 done; 1 error, the project left as it was; 3 done, with conflicts to resolve (listed).
    """
    from generator.spec import anchor_paths, parse_config_flag, parse_dynamic_flag, parse_input_flag
    from generator.update import CONFLICT_EXIT, check_before_torch, update_project

    stages = Stages(err, _verbosity(quiet, verbose))
    with stages.running("checking the flags, the spec and the model source"):
        if weights:  # relative to where the user stands, as for `new`
            weights = anchor_paths({"model": {"weights": weights}}, Path.cwd())["model"]["weights"]
        if model:
            model = anchor_paths({"model": {"source": model}}, Path.cwd())["model"]["source"]
        if calibration:
            calibration = anchor_paths({"model": {"calibration": calibration}}, Path.cwd())["model"]["calibration"]
        flags = {"model": model, "method": _value(method), "backend": _value(backend), "freeze": freeze,
                 "weights": weights, "weights_strict": weights_strict, "bazel": bazel or None,
                 "precision": _value(precision), "calibration": calibration, "force_precision": force_precision,
                 "ci": [c.value for c in ci] if ci else None, "docker": docker,
                 "inputs": [parse_input_flag(text) for text in inputs or []],
                 "config": dict(parse_config_flag(t) for t in model_config or [])}
        dynamic_dims = dict(parse_dynamic_flag(text) for text in dynamic or [])
        # Fail fast, as `new` does: a bad flag, spec or model source is refused before torch is imported.
        check_before_torch(directory, flags)
        stages("checking torch and the C++ toolchain")
        _preflight(building=False)
        result = _user_code(stages, lambda: update_project(
            directory, flags=flags, dynamic=dynamic_dims, model_only=model_only, dry_run=dry_run,
            allow_dirty=allow_dirty, progress=stages))
    stages.report()
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    would = "would be " if dry_run else ""
    out.print(f"model/ {would}re-exported: {escape(result.model_note)}", highlight=False)
    if result.signature_change:
        fields = f"fields {result.field_change}" if result.field_change else "same fields, other shapes or dtypes"
        out.print(f"[yellow]signature changed:[/] {escape(result.signature_change)}: the typed Inputs/Outputs in "
                  f"include/{result.spec.name}/model.h follow it ({escape(fields)}), so code that fills Inputs or "
                  "reads Outputs may need editing", highlight=False, soft_wrap=True)
    for change in result.changes:
        if change.action != "unchanged":
            note = f"  ({escape(change.note)})" if change.note else ""
            out.print(f"  {would}{change.action:<11} {escape(change.path)}{note}", highlight=False, soft_wrap=True)
    counts = ", ".join(f"{result.count(a)} {a}" for a in ("updated", "merged", "conflicted", "unchanged", "kept",
                                                          "added", "removed"))
    out.print(f"{'dry run, nothing written' if dry_run else 'updated'} {escape(str(result.root))}: model "
              f"{would}re-exported, {counts}", highlight=False)
    if result.conflicts:
        err.print(f"[yellow]warning:[/] {len(result.conflicts)} file(s) {'would need' if dry_run else 'need'} your "
                  f"attention: {', '.join(c.path for c in result.conflicts)}", highlight=False, soft_wrap=True)
        raise typer.Exit(CONFLICT_EXIT)
    if not dry_run:
        out.print(f"next: scaffold build {escape(str(result.root))}", highlight=False)


def _preflight(*, project: Path | None = None, bazel: bool = False, bazel_required: bool = False,
               building: bool = True) -> None:
    """`scaffold doctor`'s checks before new and build: warnings print, failures stop here with the same words."""
    from generator.doctor import preflight

    report = preflight(project=project, bazel=bazel, bazel_required=bazel_required, building=building)
    for check in report.warnings:
        err.print(f"[yellow]warning:[/] {escape(check.message)}", highlight=False, soft_wrap=True)
    if report.failures:  # one error line, as for every other failure; the rest follow it
        first, *rest = report.failures
        err.print(f"[bold red]error:[/] {escape(first.message)}", highlight=False, soft_wrap=True)
        for check in rest:
            err.print(f"  also: {escape(check.message)}", highlight=False, soft_wrap=True)
        err.print("(scaffold doctor shows every check)", style="dim", highlight=False)
        raise typer.Exit(1)


@app.command()
def doctor(
    directory: Annotated[Path | None, typer.Argument(
        help="A project made by `scaffold new`: also check its export against the libtorch it builds with.",
        show_default=False)] = None,
    bazel: Annotated[bool, typer.Option("--bazel", help="Also require Bazel (a project made with --bazel is "
                                        "checked for it, as a warning).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the checks as one JSON object.")] = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Check torch, the C++ toolchain, CUDA and (given DIR) a project's export; exit 1 when something is missing."""
    from generator.doctor import DOCTOR_FIRST_STAGE, diagnose, render_table

    stages = Stages(err, _verbosity(quiet, verbose))
    with stages.running(DOCTOR_FIRST_STAGE):
        report = diagnose(directory, bazel_required=bazel, progress=stages)
    stages.report()
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        render_table(report, out)
    raise typer.Exit(1 if report.failures else 0)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    directory: Annotated[Path, typer.Argument(help="A built project.")] = Path("."),
) -> None:
    """Run the built binary; arguments after `--` go to it (e.g. scaffold run my-app -- --iters 50 --json)."""
    from generator.build import open_project, run_binary

    code = run_binary(open_project(directory), list(ctx.args))
    raise typer.Exit(code)


@app.command()
def bench(
    directory: Annotated[Path, typer.Argument(help="A built project.")] = Path("."),
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds (each variant once per round).")] = 5,
    iters: Annotated[int, typer.Option(min=1, help="Timed calls per variant per round.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls per variant per round.")] = 5,
    threads: Annotated[int, typer.Option(min=0, help="Intra-op threads for every variant (0: physical cores).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
    peers: Annotated[bool, typer.Option("--peers", help="Also ONNX Runtime (fp32) and OpenVINO (f32, bf16) in the "
                                        "same rounds, when installed (the peers extra: pip install onnxruntime "
                                        "openvino onnx onnxscript).")] = False,
) -> None:
    """Python eager vs the exported artifact in Python vs the C++ binary: p50/p90 and ratio to eager."""
    from rich.table import Table

    from generator.bench import bench as run_bench
    from generator.build import open_project

    project = open_project(directory)
    with err.status("benchmarking", spinner="dots") as status:
        result = run_bench(project, rounds=rounds, iters=iters, warmup=warmup, threads=threads, peers=peers,
                           progress=lambda msg: status.update(msg))
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{result['project']}: {result['rounds']} rounds x {result['iters']} iters, "
                        f"{result['threads']} thread(s), torch {result['torch']}")
    table.add_column("variant")
    table.add_column("p50 ms", justify="right")
    table.add_column("p90 ms", justify="right")
    table.add_column("p50 / eager", justify="right")
    if peers:  # what each peer cost to produce, and how far its outputs are from eager's
        table.add_column("export s", justify="right")
        table.add_column("max |diff| vs eager", justify="right")
    for v in result["variants"]:
        extra = ([f"{v['export_s']:.1f}", f"{v['max_abs_diff']:.3g}"] if "export_s" in v else ["", ""]) if peers else []
        table.add_row(v["name"], f"{v['p50_ms']:.3f}", f"{v['p90_ms']:.3f}", f"{v['ratio_p50']:.2f}", *extra)
    out.print(table)
    for note in result.get("peer_notes", []):
        err.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    out.print(f"C++ first call (load-time optimisation, excluded above): {result['cpp_first_call_ms']:.1f} ms",
              highlight=False)


def _on_signal(signum: int, _frame: object) -> None:
    """SIGINT, SIGTERM, SIGHUP: unwind like an exception, so staging directories, temporary files and child
    processes are cleaned up on the way out; further signals wait for that cleanup."""
    for other in _SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    from generator.toolchain import stop_descendants

    stop_descendants()  # now, while grandchildren (a compiler's cc1plus) still hang below this process
    raise Interrupted(signum)


_SIGNALS = [getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)]


def main() -> None:
    """The console script: exit 128+N on signal N (130 Ctrl-C, 143 SIGTERM) after one line, `interrupted`."""
    for signum in _SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup'd runs keep ignoring SIGHUP
            signal.signal(signum, _on_signal)
    try:
        app()
    except (Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        for other in _SIGNALS:
            signal.signal(other, signal.SIG_IGN)
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
        sys.exit(128 + signum)
