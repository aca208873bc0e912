"""The `scaffold` command line: a thin layer over spec, pipeline and build that prints."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from generator import __version__
from generator.errors import Interrupted, ScaffoldError, is_interrupt, user_code_failure
from generator.textsafe import CONTROL_RE

T = TypeVar("T")

app = typer.Typer(
    name="scaffold",
    help="Turn a PyTorch model into a complete, verified, fast C++ (libtorch) deployment project.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    # One line whatever the message quotes (a path with a newline in it): control characters are shown escaped.
    message = CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), message)
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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
    method: Annotated[str | None, typer.Option(
        "--method", help="trace (default) or script; script keeps data-dependent control flow.")] = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", help="torchscript (default) or aoti (torch.export + AOTInductor: compiled ahead of time, "
        "usually the fastest on CPU; needs a C++ compiler at export time).")] = None,
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
    spec_file: Annotated[Path | None, typer.Option(
        "--spec", help="A scaffold.toml holding all of the above; flags override it.", dir_okay=False)] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write (default: ./NAME).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the output directory if scaffold made it (never "
                                        "$HOME, the current directory or a mount point).")] = False,
    build: Annotated[bool, typer.Option("--build", help="Run `scaffold build` on the new project.")] = False,
    bazel: Annotated[bool, typer.Option("--bazel", help="Also generate Bazel rules (MODULE.bazel, WORKSPACE, "
                                        "BUILD.bazel) beside CMake.")] = False,
    ci: Annotated[list[str] | None, typer.Option("--ci", help="Generate a CI build matrix: github.")] = None,
    docker: Annotated[bool | None, typer.Option("--docker/--no-docker", help="Generate a multi-stage Dockerfile.",
                                                show_default=False)] = None,
) -> None:
    """Export a model, check the artifact against eager PyTorch, and write a C++ project around it."""
    from generator.spec import (
        anchor_paths,
        merge_flags,
        parse_dynamic_flag,
        parse_input_flag,
        read_toml,
        spec_from_mapping,
    )

    try:
        # A spec file's relative paths are relative to its directory; a flag's to the current one.
        data = anchor_paths(read_toml(spec_file), spec_file.parent) if spec_file else {}
        if weights:
            weights = anchor_paths({"model": {"weights": weights}}, Path.cwd())["model"]["weights"]
        if model:  # a .pt file: absolute here, written relative to the project into its scaffold.toml
            model = anchor_paths({"model": {"source": model}}, Path.cwd())["model"]["source"]
        parsed_inputs = [parse_input_flag(text) for text in inputs or []]
        dynamic_dims = dict(parse_dynamic_flag(text) for text in dynamic or [])
        spec = spec_from_mapping(merge_flags(data, name=name, model=model, method=method, backend=backend,
                                             inputs=parsed_inputs, freeze=freeze, bazel=bazel, ci=ci,
                                             docker=docker, weights=weights, weights_strict=weights_strict),
                                 str(spec_file or "flags"))
        dest = output or Path(spec.name)
        _preflight(bazel="bazel" in spec.build_systems, building=build)
        from generator.pipeline import create_project

        result = _with_progress(lambda progress: create_project(spec, dest, force=force, dynamic=dynamic_dims,
                                                                progress=progress))
    except ScaffoldError as e:
        fail(str(e))
        return
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    out.print(f"[green]created[/] {result.root} ({len(result.files)} files) for "
              f"{', '.join(f'{i.name}={i.shape_str}:{i.dtype}' for i in result.spec.inputs)}", highlight=False)
    if build:
        _build(result.root)
    else:
        out.print(f"next: scaffold build {result.root}", highlight=False)


def _with_progress(work: Callable[[Callable[[str], None]], T]) -> T:
    """Run work(progress) under a status line; a SystemExit from the model's code (new, update) becomes one
    error line that names the step it happened in, instead of ending scaffold silently."""
    step = "starting"

    def progress(msg: str) -> None:
        nonlocal step
        step = msg
        status.update(msg)

    with err.status("starting", spinner="dots") as status:
        try:
            return work(progress)
        except BaseException as e:
            if isinstance(e, Exception) or is_interrupt(e):
                raise
            raise user_code_failure(e, f"the model's code, while {step},") from None


def _build(directory: Path) -> None:
    from generator.build import configure_build_test, open_project

    try:
        project = open_project(directory)
        configure_build_test(project, echo=lambda line: err.print(escape(line), style="dim", highlight=False))
    except ScaffoldError as e:
        fail(str(e))
        return
    binary = project.binary()
    out.print(f"[green]built and tested[/] {binary}", highlight=False)


@app.command()
def build(
    directory: Annotated[Path, typer.Argument(help="A project made by `scaffold new`.")] = Path("."),
    bazel: Annotated[bool, typer.Option("--bazel", help="Build and test with Bazel instead (bazel build //..., "
                                        "bazel test //...); the project needs `scaffold new --bazel`.")] = False,
) -> None:
    """Configure (preset 'dev', this machine's libtorch), build (Release, ninja when available), run ctest."""
    _preflight(project=directory, bazel_required=bazel)
    if not bazel:
        _build(directory)
        return
    from generator.bazel import build_and_test

    try:
        binary = build_and_test(directory, echo=lambda line: err.print(line, style="dim", highlight=False))
    except ScaffoldError as e:
        fail(str(e))
        return
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
    method: Annotated[str | None, typer.Option("--method", help="trace or script.", show_default=False)] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="torchscript or aoti.", show_default=False)] = None,
    freeze: Annotated[bool | None, typer.Option("--freeze/--no-freeze", help="torch.jit.freeze (TorchScript).",
                                                show_default=False)] = None,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="Trained weights to load before export (a file, or a torchvision weights name), as for "
        "`new`: the weekly retrain.", show_default=False)] = None,
    weights_strict: Annotated[bool | None, typer.Option(
        "--weights-strict/--no-weights-strict", help="Every model tensor must come from the weights file.",
        show_default=False)] = None,
    bazel: Annotated[bool, typer.Option("--bazel", help="Add Bazel rules.")] = False,
    ci: Annotated[list[str] | None, typer.Option("--ci", help="Add a CI build matrix: github.",
                                                 show_default=False)] = None,
    docker: Annotated[bool | None, typer.Option("--docker/--no-docker", help="Add (or drop) the Dockerfile.",
                                                show_default=False)] = None,
    model_only: Annotated[bool, typer.Option("--model-only", help="Re-export model/ and touch nothing else (the "
                                             "spec too, when flags change it); refused if the signature "
                                             "changes.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; write nothing.")] = False,
    allow_dirty: Annotated[bool, typer.Option("--allow-dirty", help="Run even when git shows uncommitted changes "
                                              "in the project.")] = False,
) -> None:
    """Re-export the model and re-render the project with this scaffold, keeping your edits (three-way merge).

    Flags change the spec as for `new` and are saved in scaffold.toml.

    Exit status: 0 done; 1 error, the project left as it was; 3 done, with conflicts to resolve (listed).
    """
    from generator.spec import anchor_paths, parse_dynamic_flag, parse_input_flag
    from generator.update import CONFLICT_EXIT, update_project

    try:
        if weights:  # relative to where the user stands, as for `new`
            weights = anchor_paths({"model": {"weights": weights}}, Path.cwd())["model"]["weights"]
        if model:
            model = anchor_paths({"model": {"source": model}}, Path.cwd())["model"]["source"]
        flags = {"model": model, "method": method, "backend": backend, "freeze": freeze, "weights": weights,
                 "weights_strict": weights_strict, "bazel": bazel or None, "ci": ci, "docker": docker,
                 "inputs": [parse_input_flag(text) for text in inputs or []]}
        dynamic_dims = dict(parse_dynamic_flag(text) for text in dynamic or [])
        _preflight(building=False)
        result = _with_progress(lambda progress: update_project(
            directory, flags=flags, dynamic=dynamic_dims, model_only=model_only, dry_run=dry_run,
            allow_dirty=allow_dirty, progress=progress))
    except ScaffoldError as e:
        fail(str(e))
        return
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
) -> None:
    """Check torch, the C++ toolchain, CUDA and (given DIR) a project's export; exit 1 when something is missing."""
    import json

    from generator.doctor import diagnose, render_table

    report = diagnose(directory, bazel_required=bazel)
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

    try:
        code = run_binary(open_project(directory), list(ctx.args))
    except ScaffoldError as e:
        fail(str(e))
        return
    raise typer.Exit(code)


@app.command()
def bench(
    directory: Annotated[Path, typer.Argument(help="A built project.")] = Path("."),
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds (each variant once per round).")] = 5,
    iters: Annotated[int, typer.Option(min=1, help="Timed calls per variant per round.")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed calls per variant per round.")] = 5,
    threads: Annotated[int, typer.Option(min=0, help="Intra-op threads for every variant (0: physical cores).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Python eager vs the exported artifact in Python vs the C++ binary: p50/p90 and ratio to eager."""
    from rich.table import Table

    from generator.bench import bench as run_bench
    from generator.build import open_project

    try:
        project = open_project(directory)
        with err.status("benchmarking", spinner="dots") as status:
            result = run_bench(project, rounds=rounds, iters=iters, warmup=warmup, threads=threads,
                               progress=lambda msg: status.update(msg))
    except ScaffoldError as e:
        fail(str(e))
        return
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{result['project']}: {result['rounds']} rounds x {result['iters']} iters, "
                        f"{result['threads']} thread(s), torch {result['torch']}")
    table.add_column("variant")
    table.add_column("p50 ms", justify="right")
    table.add_column("p90 ms", justify="right")
    table.add_column("p50 / eager", justify="right")
    for v in result["variants"]:
        table.add_row(v["name"], f"{v['p50_ms']:.3f}", f"{v['p90_ms']:.3f}", f"{v['ratio_p50']:.2f}")
    out.print(table)
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
