"""Where is libtorch, which version, ABI and C++ standard, does it need CUDA, and where are cmake, ninja, c++?

Everything here is probed on the machine it runs on: the C++ standard by preprocessing libtorch's own
headers, the CUDA toolkit by asking nvcc where it lives, nvrtc from the `nvidia-*` wheels beside torch.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from generator.errors import ScaffoldError


@dataclass(frozen=True)
class CudaHints:
    """What CMake needs to configure against a CUDA build of libtorch (even on a machine with no GPU)."""

    torch_cuda: str  # the CUDA version torch was built with, e.g. "13.0"
    toolkit_root: Path | None = None
    nvcc: Path | None = None
    nvcc_version: str | None = None
    nvrtc: Path | None = None
    cudart: Path | None = None
    problem: str | None = None  # one sentence: what is missing and what to install

    def cache_variables(self) -> dict[str, str]:
        """The CMake cache variables the generated presets carry."""
        values: dict[str, str] = {}
        if self.toolkit_root:
            values["CUDA_TOOLKIT_ROOT_DIR"] = str(self.toolkit_root)
            values["CUDAToolkit_ROOT"] = str(self.toolkit_root)
        if self.nvcc:
            values["CMAKE_CUDA_COMPILER"] = str(self.nvcc)
        if self.nvrtc:
            values["CUDA_nvrtc_LIBRARY"] = str(self.nvrtc)
        if self.cudart:
            values["CUDA_CUDART_LIBRARY"] = str(self.cudart)
        return values


@dataclass(frozen=True)
class TorchInfo:
    version: str  # as torch reports it, e.g. "2.14.1+cu130"
    root: Path  # the torch package directory (include/, lib/, share/cmake/)
    cmake_prefix: Path
    cxx11_abi: bool
    cxx_standard: int
    cxx_standard_source: str  # "probed with <compiler>" or why the table was used
    cuda: CudaHints | None = None
    extra: dict = field(default_factory=dict)

    @property
    def base_version(self) -> str:
        return self.version.split("+")[0]

    @property
    def build(self) -> str:
        return f"CUDA {self.cuda.torch_cuda}" if self.cuda else "CPU"


def run_process(cmd: list[str], *, capture: bool = True, timeout: float | None = None,
                cwd: Path | None = None, log_to_stderr: bool = False) -> subprocess.CompletedProcess:
    """subprocess.run, but the child gets its own process group and the whole group is killed when scaffold
    stops for any reason (Ctrl-C, SIGTERM, a timeout): `c++` leaves no `cc1plus`, cmake no ninja behind.
    capture=False lets the child write to the terminal; log_to_stderr sends its stdout to scaffold's stderr too
    (a build log), so scaffold's stdout holds only its own result lines.
    Raises OSError when cmd cannot start and subprocess.TimeoutExpired after killing the group."""
    kwargs: dict = {"process_group": 0} if os.name == "posix" else {}
    if capture:
        kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
    elif log_to_stderr:
        sys.stdout.flush()
        sys.stderr.flush()
        kwargs.update(stdout=2)  # the process's own fd 2, wherever Python's sys.stderr points
    proc = subprocess.Popen(cmd, cwd=cwd, **kwargs)  # noqa: S603  (argument lists, no shell)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen) -> None:
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
    proc.communicate()  # reap it and close the pipes


def _descendants(root: int) -> list[int]:
    """Every process below root now (Linux /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [root]
    while queue:
        for kid in children.get(queue.pop(0), []):
            found.append(kid)
            queue.append(kid)
    return found


def stop_descendants(grace: float = 2.0) -> None:
    """On a signal, before anything unwinds: SIGTERM every process scaffold started, children of children too
    (torch's inductor runs `g++`, whose `cc1plus` would outlive a killed `g++`, and `g++` removes its temp files
    only when it is asked to stop), then SIGKILL what is left after `grace` seconds."""
    if not Path("/proc/self/stat").exists():
        return
    pids = _descendants(os.getpid())
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _running(pid)]
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def find_tool(name: str) -> Path | None:
    """A tool next to this Python first (the venv's cmake/ninja from PyPI), then on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return here
    found = shutil.which(name)
    return Path(found) if found else None


def find_compiler() -> Path | None:
    cxx = os.environ.get("CXX")
    if cxx:
        found = shutil.which(cxx)
        return Path(found) if found else None
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


@functools.cache
def torch_info() -> TorchInfo:
    """Describe the torch importable here (the one whose libtorch the generated project builds against)."""
    import torch
    import torch.utils

    root = Path(torch.__file__).parent
    cuda = torch.version.cuda
    std, source = probe_cxx_standard(root, torch.__version__)
    return TorchInfo(
        version=torch.__version__,
        root=root,
        cmake_prefix=Path(torch.utils.cmake_prefix_path),
        cxx11_abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        cxx_standard=std,
        cxx_standard_source=source,
        cuda=cuda_hints(root, cuda) if cuda else None,
    )


def table_cxx_standard(version: str) -> int:
    """What libtorch's headers are known to need: C++20 from torch 2.14 (ATen/ATen.h #errors on less)."""
    m = re.match(r"(\d+)\.(\d+)", version)
    major, minor = (int(m.group(1)), int(m.group(2))) if m else (2, 14)
    return 20 if (major, minor) >= (2, 14) else 17


def cache_dir() -> Path:
    """scaffold's cache: $XDG_CACHE_HOME/scaffold, else ~/.cache/scaffold (nothing in it is needed: a lost or
    corrupt file only means a probe runs again)."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base and os.path.isabs(base) else Path.home() / ".cache") / "scaffold"


def _identity(path: Path) -> list:
    """What changes when a file is replaced (a torch upgrade, a new compiler): its real path, size and mtime."""
    real = path.resolve()
    st = real.stat()
    return [str(real), st.st_size, st.st_mtime_ns]


def _cache_key(kind: str, *parts: object) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps([kind, *parts], default=str).encode()).hexdigest()


def cache_get(key: str, valid: Callable[[object], bool]) -> object | None:
    """The value stored under key in probes.json, or None when absent, unreadable, corrupt or not `valid`."""
    import json

    try:
        data = json.loads((cache_dir() / "probes.json").read_text(encoding="utf-8"))
        value = data.get(key) if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None
    return value if value is not None and valid(value) else None


def cache_put(key: str, value: object) -> None:
    """Store value under key, atomically (a temporary file renamed over probes.json); failures are ignored."""
    import json

    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads((directory / "probes.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict) or len(data) > 256:  # one entry per torch x compiler: keep it small
            data = {}
        data[key] = value
        fd, tmp = tempfile.mkstemp(prefix=".probes-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f)
            os.replace(tmp, directory / "probes.json")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only home: probe again next time


def _valid_probe(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 2 and value[0] in (17, 20) and isinstance(value[1], str)
            and value[1].startswith("probed"))


@functools.cache
def probe_cxx_standard(root: Path, version: str) -> tuple[int, str]:
    """Preprocess `#include <ATen/ATen.h>` at C++17, then C++20: the first that passes is what the headers need.

    The answer is cached per torch build (its version and ATen.h's identity) and compiler (its real path, size
    and mtime) in cache_dir(), so `new` and `doctor` pay the ~7 s probe once per machine and torch.
    """
    compiler = find_compiler()
    include = root / "include"
    if compiler is None or not (include / "ATen" / "ATen.h").is_file():
        why = "no C++ compiler found" if compiler is None else "libtorch headers not found"
        return table_cxx_standard(version), f"from the torch version ({why} to probe with)"
    try:
        key = _cache_key("cxx-standard", version, _identity(include / "ATen" / "ATen.h"), _identity(compiler))
    except OSError:
        key = None
    cached = cache_get(key, _valid_probe) if key else None
    if cached is not None:
        std, source = cached  # type: ignore[misc]
        return int(std), str(source)
    std, source = _probe_cxx_standard(compiler, include, version)
    if key and source.startswith("probed"):
        cache_put(key, [std, source])
    return std, source


def _probe_cxx_standard(compiler: Path, include: Path, version: str) -> tuple[int, str]:
    with tempfile.TemporaryDirectory(prefix="scaffold-probe-") as tmp:  # removed on any exit, signals included
        src = Path(tmp) / "probe.cpp"
        src.write_text("#include <ATen/ATen.h>\n")
        for std in (17, 20):
            try:
                proc = run_process([str(compiler), f"-std=c++{std}", "-E", "-o", os.devnull, f"-I{include}",
                                    f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}", str(src)], timeout=300)
            except (OSError, subprocess.TimeoutExpired):
                break
            if proc.returncode == 0:
                return std, f"probed: libtorch headers preprocess with {compiler.name} -std=c++{std}"
    return table_cxx_standard(version), "from the torch version (the header probe failed at C++17 and C++20)"


def _nvcc_root(nvcc: Path) -> Path | None:
    """nvcc may be a wrapper script; its --dryrun output says where the real toolkit lives (TOP=...)."""
    try:
        proc = run_process([str(nvcc), "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^#\$ TOP=(.+)$", proc.stderr + proc.stdout, re.MULTILINE)
    return Path(m.group(1).strip()).resolve() if m else None


def _version(tool: Path, pattern: str) -> str | None:
    """The first group of `pattern` in what `TOOL --version` prints, or None when it does not run."""
    try:
        proc = run_process([str(tool), "--version"], timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, proc.stdout)
    return m.group(1) if m else None


def _nvcc_version(nvcc: Path) -> str | None:
    return _version(nvcc, r"release (\d+\.\d+)")


def _is_toolkit(root: Path) -> bool:
    return (root / "include" / "cuda_runtime.h").is_file() and (root / "bin" / "nvcc").is_file()


def _wheel_lib(torch_root: Path, stem: str) -> Path | None:
    """A CUDA library from the `nvidia-*` wheels torch depends on (site-packages/nvidia/<pkg>/lib)."""
    nvidia = torch_root.parent / "nvidia"
    if not nvidia.is_dir():
        return None
    for lib in sorted(nvidia.glob(f"*/lib/{stem}.so*")):
        if ".alt." not in lib.name and "builtins" not in lib.name:
            return lib
    return None


def cuda_hints(torch_root: Path, torch_cuda: str) -> CudaHints:
    """Find the CUDA toolkit pieces a CUDA libtorch's CMake config needs, or say in one sentence what to install."""
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_TOOLKIT_ROOT_DIR"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    nvcc_on_path = shutil.which("nvcc")
    if nvcc_on_path:
        top = _nvcc_root(Path(nvcc_on_path))
        if top:
            candidates.append(top)
    candidates += [Path("/usr/local/cuda"), *sorted(Path("/usr/local").glob("cuda-*"), reverse=True)]
    candidates += sorted((torch_root.parent / "nvidia").glob("cu*"))  # pip's nvidia-cuda-nvcc layout
    root = next((c.resolve() for c in candidates if _is_toolkit(c)), None)

    if root is None:
        return CudaHints(
            torch_cuda=torch_cuda,
            problem=(f"this torch is a CUDA {torch_cuda} build and its CMake config needs the CUDA {torch_cuda} "
                     "toolkit (nvcc and headers) even on a machine without a GPU: install that toolkit and set "
                     "CUDA_HOME, or build against a CPU build of libtorch"),
        )
    nvcc = root / "bin" / "nvcc"
    version = _nvcc_version(nvcc)
    problem = None
    if version and version.split(".")[0] != torch_cuda.split(".")[0]:
        problem = (f"the CUDA toolkit at {root} is {version} but torch was built with CUDA {torch_cuda}: install "
                   f"the CUDA {torch_cuda} toolkit and point CUDA_HOME at it")

    def lib(stem: str) -> Path | None:
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            hits = sorted((root / sub).glob(f"{stem}.so*")) if (root / sub).is_dir() else []
            if hits:
                return hits[0]
        return _wheel_lib(torch_root, stem)

    nvrtc = lib("libnvrtc")
    if nvrtc is None and problem is None:
        problem = f"libnvrtc (CUDA {torch_cuda}) was not found in {root} or the nvidia wheels beside torch: " \
                  f"pip install nvidia-cuda-nvrtc"
    return CudaHints(torch_cuda=torch_cuda, toolkit_root=root, nvcc=nvcc, nvcc_version=version, nvrtc=nvrtc,
                     cudart=lib("libcudart"), problem=problem)


# The CMake the generated project needs: 3.24 for `cmake --fresh` (scaffold build) and the `ci` preset's
# CMAKE_COMPILE_WARNING_AS_ERROR; the templates' cmake_minimum_required and presets come from it (context()).
CMAKE_MINIMUM = (3, 24)
CMAKE_MINIMUM_STR = ".".join(map(str, CMAKE_MINIMUM))

# The words for a missing tool, shared by `scaffold build` (require_build_tools) and `scaffold doctor`.
MISSING_CMAKE = "cmake not found: pip install cmake (or install it with your OS package manager)"


def missing_compiler() -> str:
    hint = f"CXX={os.environ['CXX']} is not on PATH" if os.environ.get("CXX") else "no c++, g++ or clang++ on PATH"
    return f"no C++ compiler found ({hint}): install one (apt-get install g++) or set CXX"


def require_build_tools() -> tuple[Path, Path | None, Path]:
    """cmake, ninja (optional) and a C++ compiler, or one line that says what to install."""
    cmake = find_tool("cmake")
    if cmake is None:
        raise ScaffoldError(MISSING_CMAKE)
    compiler = find_compiler()
    if compiler is None:
        raise ScaffoldError(missing_compiler())
    return cmake, find_tool("ninja"), compiler


def cmake_version(cmake: Path) -> str | None:
    """`cmake --version`'s number, e.g. "3.31.6", or None when it does not run."""
    return _version(cmake, r"version (\d+\.\d+(?:\.\d+)?)")


def tool_version(tool: Path) -> str | None:
    """The first line of `TOOL --version` (ninja, bazel, a compiler), or None when it does not run."""
    try:
        proc = run_process([str(tool), "--version"], timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


@functools.cache
def compiler_max_standard(compiler: Path) -> int | None:
    """The newest C++ standard (23, 20, 17, 14) this compiler compiles a C++ file as, probed with -std=c++NN
    (cached per compiler identity, as the header probe is)."""
    if re.fullmatch(r"cl(\.exe)?", compiler.name, re.IGNORECASE):
        return None  # MSVC spells it /std:c++20; not probed
    try:
        key = _cache_key("compiler-standard", _identity(compiler))
    except OSError:
        key = None
    cached = cache_get(key, lambda v: v in (23, 20, 17, 14)) if key else None
    if cached is not None:
        return int(cached)  # type: ignore[call-overload]
    best = _compiler_max_standard(compiler)
    if key and best is not None:
        cache_put(key, best)
    return best


def _compiler_max_standard(compiler: Path) -> int | None:
    with tempfile.TemporaryDirectory(prefix="scaffold-probe-") as tmp:
        src = Path(tmp) / "std.cpp"
        src.write_text("#include <cstddef>\nint main() { return 0; }\n")
        for std in (23, 20, 17, 14):
            try:
                proc = run_process([str(compiler), f"-std=c++{std}", "-fsyntax-only", str(src)], timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                return None
            if proc.returncode == 0:
                return std
    return None


def _libtorch_cxx11_abi(root: Path) -> bool | None:
    """Whether libc10 uses the C++11 std::string ABI (its symbols mention __cxx11); None off Linux."""
    lib = root / "lib" / "libc10.so"
    if not lib.is_file():
        return None
    return b"__cxx11" in lib.read_bytes()


def libtorch_info(torch_dir: Path) -> TorchInfo | None:
    """Describe the libtorch behind a Torch_DIR (<root>/share/cmake/Torch), a pip torch or an unpacked archive."""
    torch_dir = Path(torch_dir)
    root = torch_dir.parent.parent.parent
    version_file = torch_dir / "TorchConfigVersion.cmake"
    if not version_file.is_file():
        return None
    m = re.search(r'PACKAGE_VERSION "([^"]+)"', version_file.read_text(encoding="utf-8", errors="replace"))
    if not m:
        return None
    version, cuda = m.group(1), None
    version_py = root / "version.py"  # a pip torch
    build_version = root / "build-version"  # an official libtorch archive: "2.14.1+cpu"
    if version_py.is_file():
        text = version_py.read_text(encoding="utf-8", errors="replace")
        v = re.search(r"__version__ = '([^']+)'", text)
        c = re.search(r"^cuda: .*= '([\d.]+)'", text, re.MULTILINE)
        version, cuda = (v.group(1) if v else version), (c.group(1) if c else None)
    elif build_version.is_file():
        version = build_version.read_text(encoding="utf-8").strip() or version
        local = re.search(r"\+cu(\d+)(\d)$", version)
        cuda = f"{local.group(1)}.{local.group(2)}" if local else None
    abi = _libtorch_cxx11_abi(root)
    std, source = probe_cxx_standard(root, version)
    return TorchInfo(version=version, root=root, cmake_prefix=root / "share" / "cmake",
                     cxx11_abi=True if abi is None else abi, cxx_standard=std, cxx_standard_source=source,
                     cuda=cuda_hints(root, cuda) if cuda else None)
