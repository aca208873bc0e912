"""`scaffold doctor`: is this machine (and a generated project) ready to build and run a libtorch deployment?

Every check is a row: what was looked at, what was found, and for anything short of ok, the one thing to do.
The same checks run before `scaffold new` and `scaffold build`, which stop on a failure with the same words.
Probes come from generator.toolchain (the ones the build itself uses), never from a second guess.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from generator.errors import ScaffoldError
from generator.toolchain import (
    CMAKE_MINIMUM,
    CMAKE_MINIMUM_STR,
    MISSING_CMAKE,
    TorchInfo,
    cmake_version,
    compiler_max_standard,
    find_compiler,
    find_tool,
    libtorch_info,
    missing_compiler,
    tool_version,
    torch_info,
)

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"


@dataclass(frozen=True)
class Check:
    area: str  # torch, tools, cuda, project
    item: str
    status: str  # ok, warn, fail, info
    found: str
    fix: str = ""  # one sentence: what to do (for warn and fail)

    @property
    def message(self) -> str:
        """The line `scaffold new`/`build` print when this check stops them."""
        text = self.fix or self.found
        return text if self.item.lower() in text.lower() else f"{self.item}: {text}"


@dataclass
class Report:
    checks: list[Check]

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == WARN]

    def to_json(self) -> dict:
        return {"ok": not self.failures, "checks": [asdict(c) for c in self.checks]}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _minor(version: str) -> str:
    m = re.match(r"(\d+\.\d+)", version)
    return m.group(1) if m else version


# --- torch -------------------------------------------------------------------------------------------------


def load_torch() -> tuple[TorchInfo | None, list[Check]]:
    """torch_info(), or a failing row that says how to get a torch scaffold can use."""
    try:
        return torch_info(), []
    except ImportError as e:
        return None, [Check("torch", "torch", FAIL, f"not importable ({e})",
                            "install PyTorch in this environment (pip install torch) and run scaffold from it")]


def check_torch(info: TorchInfo) -> list[Check]:
    checks = [Check("torch", "torch", OK, f"{info.version} ({info.build}) at {info.root}")]
    config = info.cmake_prefix / "Torch" / "TorchConfig.cmake"
    if config.is_file():
        checks.append(Check("torch", "cmake prefix", OK, str(info.cmake_prefix)))
    else:
        checks.append(Check("torch", "cmake prefix", FAIL, f"{config} is missing",
                            "this torch ships no libtorch CMake package: reinstall it from PyPI "
                            "(pip install --force-reinstall torch) or point CMAKE_PREFIX_PATH at an unpacked libtorch"))
    checks.append(Check("torch", "C++ ABI", OK, f"_GLIBCXX_USE_CXX11_ABI={int(info.cxx11_abi)}"))
    probed = info.cxx_standard_source.startswith("probed")
    checks.append(Check("torch", "C++ standard", OK if probed else WARN,
                        f"C++{info.cxx_standard} ({info.cxx_standard_source})",
                        "" if probed else "the header probe did not run, so this comes from a version table: "
                        "install a C++ compiler and rerun scaffold doctor"))
    return checks


# --- build tools -------------------------------------------------------------------------------------------


def check_tools(info: TorchInfo | None, *, bazel: bool = False, bazel_required: bool = False) -> list[Check]:
    """cmake, ninja, the compiler; bazel when asked (a failure when the build at hand is a Bazel build)."""
    checks = []
    cmake = find_tool("cmake")
    if cmake is None:
        checks.append(Check("tools", "cmake", FAIL, "not found", MISSING_CMAKE))
    else:
        version = cmake_version(cmake)
        if version is None:
            checks.append(Check("tools", "cmake", FAIL, f"{cmake} does not run",
                                f"reinstall CMake {CMAKE_MINIMUM_STR} or newer: pip install --force-reinstall "
                                "cmake"))
        elif _version_tuple(version) < CMAKE_MINIMUM:
            checks.append(Check("tools", "cmake", FAIL, f"{version} at {cmake}",
                                f"the generated project needs CMake {CMAKE_MINIMUM_STR} or newer (cmake --fresh, "
                                "the ci preset): pip install -U cmake"))
        else:
            checks.append(Check("tools", "cmake", OK, f"{version} at {cmake}"))

    ninja = find_tool("ninja")
    if ninja is None:
        checks.append(Check("tools", "ninja", WARN, "not found",
                            "pip install ninja for faster builds (without it CMake uses its default generator)"))
    else:
        checks.append(Check("tools", "ninja", OK, f"{tool_version(ninja) or 'unknown version'} at {ninja}"))

    compiler = find_compiler()
    if compiler is None:
        # The words of toolchain.require_build_tools, which `scaffold build` would stop with a step later.
        checks.append(Check("tools", "C++ compiler", FAIL, "not found", missing_compiler()))
    else:
        first_line = tool_version(compiler) or "unknown version"
        best = compiler_max_standard(compiler)
        need = info.cxx_standard if info else 17
        if best is None:
            checks.append(Check("tools", "C++ compiler", WARN, f"{first_line} at {compiler}, standard not probed",
                                f"make sure it compiles C++{need} (libtorch's headers need it)"))
        elif best < need:
            checks.append(Check("tools", "C++ compiler", FAIL, f"{first_line} at {compiler}, up to C++{best}",
                                f"libtorch {info.base_version if info else ''} needs C++{need}: install a newer "
                                f"compiler (g++ 11+ or clang++ 14+) and set CXX to it"))
        else:
            checks.append(Check("tools", "C++ compiler", OK,
                                f"{first_line} at {compiler}, up to C++{best} (libtorch needs C++{need})"))

    if bazel or bazel_required:
        from generator.bazel import INSTALL_HINT, find_bazel

        try:
            found, problem = find_bazel(), INSTALL_HINT
        except ScaffoldError as e:  # $BAZEL names something that is not there
            found, problem = None, str(e)
        if found is None:
            checks.append(Check("tools", "bazel", FAIL if bazel_required else WARN, "not found", problem))
        else:
            checks.append(Check("tools", "bazel", OK, f"{tool_version(found) or 'unknown version'} at {found}"))
    return checks


# --- CUDA --------------------------------------------------------------------------------------------------


def gpu_summary() -> tuple[bool, str]:
    """Whether torch sees a GPU here, and which."""
    import torch

    try:
        if not torch.cuda.is_available():
            return False, "none visible"
        count = torch.cuda.device_count()
        return True, f"{count} visible: {torch.cuda.get_device_name(0)}" + (" ..." if count > 1 else "")
    except Exception as e:  # a broken driver install raises here; report it, do not crash the doctor
        return False, f"none usable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"


def check_cuda(info: TorchInfo) -> list[Check]:
    if info.cuda is None:
        return [Check("cuda", "CUDA", INFO, "CPU build of torch: no CUDA toolkit needed; --device cuda is "
                      "unavailable with this libtorch")]
    hints = info.cuda
    checks = []
    if hints.toolkit_root is None:
        checks.append(Check("cuda", f"CUDA {hints.torch_cuda} toolkit", FAIL, "not found", hints.problem or ""))
    else:
        nvcc_ok = not (hints.nvcc_version and hints.nvcc_version.split(".")[0] != hints.torch_cuda.split(".")[0])
        checks.append(Check("cuda", f"CUDA {hints.torch_cuda} toolkit", OK, str(hints.toolkit_root)))
        checks.append(Check("cuda", "nvcc", OK if nvcc_ok else FAIL,
                            f"{hints.nvcc_version or 'unknown version'} at {hints.nvcc}",
                            "" if nvcc_ok else hints.problem or ""))
        checks.append(Check("cuda", "nvrtc", OK if hints.nvrtc else FAIL, str(hints.nvrtc or "not found"),
                            "" if hints.nvrtc else f"pip install nvidia-cuda-nvrtc (CUDA {hints.torch_cuda}) or "
                            "install the toolkit's nvrtc"))
        checks.append(Check("cuda", "cudart", OK if hints.cudart else FAIL, str(hints.cudart or "not found"),
                            "" if hints.cudart else f"install the CUDA {hints.torch_cuda} runtime "
                            f"(cuda-cudart-dev) into {hints.toolkit_root}"))
        variables = hints.cache_variables()
        checks.append(Check("cuda", "preset hints", INFO,
                            "\n".join(f"{k}={v}" for k, v in variables.items()) or "none"))
    visible, summary = gpu_summary()
    checks.append(Check("cuda", "GPU", OK if visible else INFO,
                        summary if visible else f"{summary}: builds and CPU runs work; --device cuda says so "
                        "in one line"))
    return checks


# --- a generated project -----------------------------------------------------------------------------------


def check_precision(flags: frozenset[str] | None = None) -> list[Check]:
    """Which reduced precisions this CPU runs fast (`scaffold new --precision bf16|int8` refuses the others)."""
    from generator.export.precision import FAST_FLAGS, support

    found = support(flags)
    text = ", ".join(f"{p}: {flag or 'no'}" for p, flag in found.items())
    missing = [p for p, flag in found.items() if flag is None]
    fix = (f"--precision {'/'.join(missing)} needs {' or '.join(f for p in missing for f in FAST_FLAGS[p])}; "
           "it is refused here unless --force-precision") if missing else ""
    return [Check("cpu", "bf16 / int8", OK if not missing else INFO, text, fix)]


def compare(manifest_torch: dict, target: TorchInfo, where: str, tag: str) -> list[Check]:
    """The export's torch (manifest) against one libtorch (`where` in a sentence, `tag` in a row name)."""
    checks = []
    exported = manifest_torch.get("version") or "unknown"
    base = exported.split("+")[0]
    if _minor(base) != _minor(target.base_version):
        checks.append(Check("project", f"torch version ({tag})", FAIL,
                            f"exported with {exported}, libtorch is {target.version}",
                            f"model/ was exported with torch {exported} but {where} is {target.version}, and an "
                            f"exported model does not reliably load in another libtorch version: build with torch "
                            f"{base}, or regenerate the project with torch {target.base_version} "
                            "(scaffold new ... --force)"))
    elif base != target.base_version:
        checks.append(Check("project", f"torch version ({tag})", WARN,
                            f"exported with {exported}, libtorch is {target.version}",
                            f"patch versions differ (usually fine): regenerate with torch {target.base_version} "
                            "to be sure"))
    else:
        checks.append(Check("project", f"torch version ({tag})", OK,
                            f"exported with {exported}, libtorch is {target.version}"))

    abi = manifest_torch.get("cxx11_abi")
    if abi is not None and bool(abi) != target.cxx11_abi:
        checks.append(Check("project", f"C++ ABI ({tag})", FAIL,
                            f"export {int(bool(abi))}, libtorch {int(target.cxx11_abi)}",
                            f"the project was made for _GLIBCXX_USE_CXX11_ABI={int(bool(abi))} but {where} is a "
                            f"{int(target.cxx11_abi)} build: use a libtorch with the same ABI, or regenerate with "
                            "the torch you build against"))
    elif abi is not None:
        checks.append(Check("project", f"C++ ABI ({tag})", OK, f"_GLIBCXX_USE_CXX11_ABI={int(target.cxx11_abi)}"))

    std = manifest_torch.get("cxx_standard")
    if std is not None and int(std) < target.cxx_standard:
        checks.append(Check("project", f"C++ standard ({tag})", FAIL,
                            f"project compiles as C++{std}, libtorch {target.base_version} needs "
                            f"C++{target.cxx_standard}",
                            f"CMakeLists.txt asks for C++{std} but {where} ({target.version}) needs "
                            f"C++{target.cxx_standard}: regenerate the project with that torch"))
    elif std is not None:
        checks.append(Check("project", f"C++ standard ({tag})", OK,
                            f"project C++{std}, libtorch needs C++{target.cxx_standard}"))
    return checks


def check_project(root: Path, info: TorchInfo | None) -> list[Check]:
    from generator.build import configured_torch_dir, open_project

    try:
        project = open_project(root)
    except ScaffoldError as e:
        return [Check("project", "project", FAIL, str(e), f"point scaffold at a directory made by scaffold new ({e})")]
    manifest_torch = project.manifest.get("torch") or {}
    checks = [Check("project", "project", OK,
                    f"{project.name} at {project.root}, exported with torch {manifest_torch.get('version', '?')} "
                    f"({'CUDA ' + manifest_torch['cuda'] if manifest_torch.get('cuda') else 'CPU'})")]
    if info is not None:
        checks += compare(manifest_torch, info, "this environment's torch", "here")
    torch_dir = configured_torch_dir(project.root)
    if torch_dir is not None and info is not None and torch_dir.resolve() != (info.cmake_prefix / "Torch").resolve():
        configured = libtorch_info(torch_dir)
        if configured is None:
            checks.append(Check("project", "build/ libtorch", WARN, f"{torch_dir} (unreadable)",
                                f"build/ was configured against a libtorch that is gone: remove {project.build_dir} "
                                "and build again"))
        else:
            checks.append(Check("project", "build/ libtorch", WARN, f"torch {configured.version} at {torch_dir}",
                                "build/ is configured against another libtorch than this environment's torch, and "
                                f"CMake keeps the cached Torch_DIR: remove {project.build_dir} (or cmake --fresh) "
                                "before building with this torch"))
            checks += compare(manifest_torch, configured, "the libtorch build/ is configured with", "build/")
    return checks


def project_build_systems(root: Path) -> tuple[str, ...]:
    from generator.spec import read_toml, spec_from_mapping

    try:
        return tuple(spec_from_mapping(read_toml(root / "scaffold.toml"), "scaffold.toml").build_systems)
    except (ScaffoldError, OSError):
        return ()


# --- everything --------------------------------------------------------------------------------------------


DOCTOR_FIRST_STAGE = "importing torch, probing its C++ headers (cached after the first run)"


def diagnose(project: Path | None = None, *, bazel: bool = False, bazel_required: bool = False,
             tools: bool = True, progress: Callable[[str], None] = lambda _msg: None) -> Report:
    """All checks, in the order the table shows them; progress(stage) is told what runs next."""
    progress(DOCTOR_FIRST_STAGE)
    info, checks = load_torch()
    if info is not None:
        checks += check_torch(info)
    if project is not None and not bazel:
        bazel = "bazel" in project_build_systems(project)
    if tools:
        progress("checking cmake, ninja and the C++ compiler")
        checks += check_tools(info, bazel=bazel, bazel_required=bazel_required)
        if info is not None:
            progress("checking CUDA")
            checks += check_cuda(info)
            checks += check_precision()
    if project is not None:
        progress("checking the project's export")
        checks += check_project(project, info)
    return Report(checks)


def preflight(*, project: Path | None = None, bazel: bool = False, bazel_required: bool = False,
              building: bool = True) -> Report:
    """What `scaffold new` and `scaffold build` check first. Without `building` (new without --build) the build
    tools' failures are only warnings: generating a project for CI or Docker needs no compiler here."""
    report = diagnose(project, bazel=bazel, bazel_required=bazel_required)
    if not building:
        report = Report([Check(c.area, c.item, WARN, c.found, c.fix) if c.status == FAIL and c.area in
                         ("tools", "cuda") else c for c in report.checks])
    return report


def render_table(report: Report, console) -> None:
    """One row per check: what, ok/warn/fail/info, what was found and (below it) the fix."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    styles = {OK: "green", WARN: "yellow", FAIL: "bold red", INFO: "cyan"}
    table = Table(title="scaffold doctor", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("found / fix", overflow="fold")
    last_area = None
    for c in report.checks:
        if c.area != last_area:
            if last_area is not None:
                table.add_section()
            table.add_row(f"[bold]{c.area}[/]", "", "")
            last_area = c.area
        details = escape(c.found)
        if c.fix:
            details += f"\n[{styles[c.status]}]fix:[/] {escape(c.fix)}"
        table.add_row(f"  {escape(c.item)}", f"[{styles[c.status]}]{c.status}[/]", details)
    console.print(table)
    if report.failures:
        console.print(f"[bold red]{len(report.failures)} problem(s)[/]: fix the rows marked fail, then rerun "
                      "scaffold doctor", highlight=False)
    else:
        extra = f" ({len(report.warnings)} warning(s))" if report.warnings else ""
        console.print(f"[green]ready[/]{extra}: nothing needed is missing", highlight=False)
