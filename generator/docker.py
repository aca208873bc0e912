"""`scaffold build DIR --docker`: build the project's image with the container engine there is, check parity in it.

The generated Dockerfile downloads the official libtorch archive in a stage named `libtorch`. Offline, that stage
is replaced by a named build context holding a `libtorch/` directory (`--build-context libtorch=DIR`, which both
Docker's BuildKit and Podman/Buildah understand): `--libtorch PATH` (an unpacked archive) or `--libtorch python`
(this Python's own torch, when it is a CPU build). Nothing here imports torch unless `python` is asked for.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generator.errors import ScaffoldError
from generator.toolchain import run_process

ENGINE_ENV = "SCAFFOLD_CONTAINER_ENGINE"
# Extra arguments for `ENGINE build` (e.g. `--pull=never` offline), split on whitespace.
BUILD_ARGS_ENV = "SCAFFOLD_DOCKER_BUILD_ARGS"
LIBTORCH_PARTS = ("lib", "include", "share")


def libtorch_archive(base_version: str) -> str:
    """The official archive's name: `libtorch-shared-with-deps` from 2.8 on (one ABI), before it the cxx11 one."""
    major, minor = (int(p) for p in re.findall(r"[0-9]+", base_version)[:2])
    return "libtorch-shared-with-deps" if (major, minor) >= (2, 8) else "libtorch-cxx11-abi-shared-with-deps"


def image_tag(name: str) -> str:
    """Image names are lowercase; the project name is already a safe identifier."""
    return name.lower()


def find_engine() -> Path | None:
    """$SCAFFOLD_CONTAINER_ENGINE, else docker, else podman."""
    chosen = os.environ.get(ENGINE_ENV)
    for candidate in ([chosen] if chosen else ["docker", "podman"]):
        found = shutil.which(candidate)
        if found:
            return Path(found)
    return None


def require_engine() -> Path:
    engine = find_engine()
    if engine is None:
        wanted = os.environ.get(ENGINE_ENV)
        raise ScaffoldError(
            (f"{ENGINE_ENV}={wanted} is not an executable on PATH" if wanted else "no container engine found")
            + ": install Docker (https://docs.docker.com/engine/install/) or Podman (apt-get install podman)")
    return engine


@dataclass(frozen=True)
class ImageReport:
    tag: str
    size_bytes: int
    check_output: str


def libtorch_version(root: Path) -> str | None:
    """The version a libtorch directory says it is: `build-version` in an official archive, `version.py` in a
    torch package."""
    archive = root / "build-version"
    if archive.is_file():
        return archive.read_text(encoding="utf-8", errors="replace").strip() or None
    package = root / "version.py"
    if package.is_file():
        m = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", package.read_text(encoding="utf-8",
                                                                                   errors="replace"), re.MULTILINE)
        return m.group(1) if m else None
    return None


def find_libtorch(spec: str) -> Path:
    """A libtorch root (lib/, include/, share/cmake/Torch) from `--libtorch`: `python`, a root, or its parent."""
    if spec == "python":
        import torch

        root = Path(torch.__file__).resolve().parent
        if torch.version.cuda or (root / "lib" / "libtorch_cuda.so").exists():
            raise ScaffoldError(
                f"--libtorch python: this Python's torch {torch.__version__} is a CUDA build whose CUDA libraries "
                "live in other pip packages; give an unpacked libtorch archive (--libtorch DIR) or a CPU torch")
        return root
    path = Path(spec).expanduser()
    for root in (path, path / "libtorch"):
        if (root / "share" / "cmake" / "Torch" / "TorchConfig.cmake").is_file() and (root / "lib").is_dir():
            return root.resolve()
    raise ScaffoldError(f"--libtorch {spec}: no libtorch there (expected lib/ and share/cmake/Torch/TorchConfig.cmake "
                        "in it or in its libtorch/ subdirectory)")


def stage_libtorch(root: Path, into: Path) -> Path:
    """A build context `into` holding `libtorch/{lib,include,share}`: hard links where the file system allows
    (no copy of ~500 MB), else copies. Links, not symlinks: a build context does not follow them out."""
    dest = into / "libtorch"
    for part in LIBTORCH_PARTS:
        source = root / part
        if not source.is_dir():
            continue
        try:
            shutil.copytree(source, dest / part, copy_function=os.link, symlinks=True)
        except OSError:  # another file system, or links refused: copy
            shutil.rmtree(dest / part, ignore_errors=True)
            shutil.copytree(source, dest / part, symlinks=True)
    return into


def check_version(root: Path, project_torch: str) -> None:
    found = libtorch_version(root)
    base = project_torch.split("+")[0]
    if found is not None and base and found.split("+")[0] != base:
        raise ScaffoldError(f"--libtorch {root} is libtorch {found}; the model was exported with torch "
                            f"{project_torch}: use the matching libtorch, or regenerate the project with that torch")


def build_and_check(root: Path, name: str, project_torch: str, *, libtorch: str | None = None,
                    echo: Callable[[str], None] = print) -> ImageReport:
    """Build the image (the Dockerfile's build stage runs ctest), run `--check` in a container, measure it."""
    if not (root / "Dockerfile").is_file():
        raise ScaffoldError(f"{root} has no Dockerfile: add one with `scaffold update {root} --docker`")
    engine = require_engine()
    tag = image_tag(name)
    extra = os.environ.get(BUILD_ARGS_ENV, "").split()
    with tempfile.TemporaryDirectory(prefix="scaffold-libtorch-") as scratch:
        context: list[str] = []
        if libtorch is not None:
            lib_root = find_libtorch(libtorch)
            check_version(lib_root, project_torch)
            echo(f"libtorch from {lib_root}")
            context = ["--build-context", f"libtorch={stage_libtorch(lib_root, Path(scratch))}"]
        # Podman writes OCI images by default, which drop the Dockerfile's SHELL (pipefail); docker format keeps it.
        fmt = ["--format", "docker"] if engine.name.startswith(("podman", "buildah")) else []
        cmd = [str(engine), "build", *fmt, *extra, *context, "-t", tag, str(root)]
        echo(f"$ {' '.join(cmd)}")
        proc = run_process(cmd, capture=False, log_to_stderr=True)
        if proc.returncode != 0:
            raise ScaffoldError(f"{engine.name} build failed (exit {proc.returncode}); the output above says why")
    check = [str(engine), "run", "--rm", tag, "--check", "--warmup", "0", "--iters", "1"]
    echo(f"$ {' '.join(check)}")
    proc = run_process(check)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise ScaffoldError(f"the parity check failed in the image {tag} (exit {proc.returncode})"
                            + (f": {lines[-1]}" if lines else ""))
    size = run_process([str(engine), "image", "inspect", "--format", "{{.Size}}", tag])
    try:
        size_bytes = int(size.stdout.strip())
    except ValueError:
        size_bytes = -1
    return ImageReport(tag=tag, size_bytes=size_bytes, check_output=proc.stdout.strip())
