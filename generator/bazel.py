"""`scaffold build --bazel`: bazel build and bazel test in a project made with `scaffold new --bazel`.

Also the `scaffold` py_binary's entry point in the repository's own BUILD.bazel (`bazel run //:scaffold -- ...`):
`bazel run` starts programs in their runfiles tree, so main() first goes back to the directory it was run from.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from generator.errors import ScaffoldError
from generator.toolchain import run_process

INSTALL_HINT = (
    "bazel not found: install Bazel 7 or later (bazelisk: `npm install -g @bazel/bazelisk`, or "
    "https://bazel.build/install), or on Debian/Ubuntu `apt-get install bazel-bootstrap` (Bazel 4.2); "
    "BAZEL=/path/to/bazel picks a specific one"
)

# The machine's own settings, like CMakeUserPresets.json for CMake: .bazelrc try-imports it, git ignores it.
SCAFFOLD_BAZELRC = "scaffold.bazelrc"
# Commands that fetch repositories, so they all see the same torch (test, run, cquery... inherit build).
_FETCHING_COMMANDS = ("build", "query", "fetch", "sync")


def find_bazel() -> Path | None:
    """$BAZEL, else bazelisk, else bazel on PATH."""
    explicit = os.environ.get("BAZEL")
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise ScaffoldError(f"BAZEL={explicit} is not an executable: point it at bazel or bazelisk, or unset it")
        return Path(found)
    for name in ("bazelisk", "bazel"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def require_bazel() -> Path:
    bazel = find_bazel()
    if bazel is None:
        raise ScaffoldError(INSTALL_HINT)
    return bazel


def check_bazel_project(root: Path) -> None:
    workspace = (root / "WORKSPACE").is_file() or (root / "MODULE.bazel").is_file()
    if not (root / "BUILD.bazel").is_file() or not workspace:
        raise ScaffoldError(f"{root} has no Bazel rules (BUILD.bazel, MODULE.bazel, WORKSPACE): regenerate it with "
                            "`scaffold new ... --bazel` (see its README.md, Regenerate)")


def scaffold_bazelrc(python: str) -> str:
    """Pin @torch to the torch this scaffold runs with: the Python torch_configure asks is this one."""
    flag = shlex.quote(f"--repo_env=PYTHON_BIN_PATH={python}")
    lines = ["# Written by `scaffold build --bazel` (and rewritten by it): @torch is the torch of this Python.",
             "# LIBTORCH or TORCH_DIR in the environment still take precedence (third_party/torch).",
             *(f"{command} {flag}" for command in _FETCHING_COMMANDS)]
    return "\n".join(lines) + "\n"


def write_scaffold_bazelrc(root: Path, python: str | None = None) -> Path:
    path = root / SCAFFOLD_BAZELRC
    text = scaffold_bazelrc(python or sys.executable)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:  # unchanged: no re-fetch of @torch
        path.write_text(text, encoding="utf-8")
    return path


def build_and_test(directory: Path, *, echo: Callable[[str], None] = print) -> Path:
    """bazel build //..., bazel test //...; returns the app binary. A failing step is one line."""
    from generator.build import open_project

    # Export/libtorch skew was checked by the preflight `scaffold build` runs first (generator.doctor).
    project = open_project(directory)
    check_bazel_project(project.root)
    bazel = require_bazel()
    write_scaffold_bazelrc(project.root)
    for step, args in (("build", ["build", "//..."]), ("test", ["test", "//..."])):
        cmd = [str(bazel), *args]
        echo(f"$ {' '.join(cmd)}")
        proc = run_process(cmd, capture=False, log_to_stderr=True, cwd=project.root)  # killed on a signal
        if proc.returncode != 0:
            raise ScaffoldError(f"bazel {step} failed (exit {proc.returncode}) in {project.root}; "
                                "the output above says why")
    info = run_process([str(bazel), "info", "bazel-bin"], cwd=project.root)
    bin_dir = Path(info.stdout.strip()) if info.returncode == 0 and info.stdout.strip() else project.root / "bazel-bin"
    return bin_dir / "app"


def main() -> None:
    """`bazel run //:scaffold -- ARGS`: scaffold's command line, in the directory bazel was run from."""
    workdir = os.environ.get("BUILD_WORKING_DIRECTORY")
    if workdir:
        os.chdir(workdir)
        if workdir not in sys.path:
            sys.path.insert(0, workdir)  # `--model package.module:attr` imports from there, as it does outside Bazel
    from generator.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
