"""torch_configure: the libtorch installed on this machine, as an external repository (@torch).

No absolute path is written into the workspace: the rule looks for torch when Bazel fetches the repository,
first hit wins:

  1. LIBTORCH, then TORCH_DIR: a libtorch root with include/ and lib/ (the pytorch.org libtorch archive, or
     the torch/ directory of a pip install). TORCH_DIR may also be CMake's Torch_DIR (<root>/share/cmake/Torch).
  2. The Python in PYTHON_BIN_PATH, else `python3` on PATH: `import torch` says where torch is, its version,
     its C++ ABI (torch._C._GLIBCXX_USE_CXX11_ABI) and its CUDA version.

The repository it writes holds
  @torch//:torch     a cc_library: the headers, the two include directories, the _GLIBCXX_USE_CXX11_ABI define
                     that matches the build, and link options: -L and -Wl,-rpath to <root>/lib, then libtorch's
                     libraries (libtorch_cuda and libc10_cuda too when it is a CUDA build).
  @torch//:defs.bzl  TORCH_COPTS (the C++ standard libtorch's headers need, read from ATen/ATen.h),
                     TORCH_VERSION, TORCH_CUDA, TORCH_CXX11_ABI, TORCH_ROOT.

libtorch's shared libraries are linked through linkopts, never listed in srcs: Bazel would link them through
symlinks in its _solib directories, and libtorch's own $ORIGIN lookups then resolve there, not in torch/lib
(a CUDA wheel's libtorch_cuda.so no longer finds libtorch_nvshmem.so; a CPU wheel silently loads the
system's libgomp instead of its own). With the rpath the binary runs without LD_LIBRARY_PATH.

Use it from WORKSPACE (Bazel 4 to 6, or 7 with --noenable_bzlmod):
    load("//third_party/torch:torch_configure.bzl", "torch_configure")
    torch_configure(name = "torch")
or from MODULE.bazel (Bazel 7 and later):
    torch_configure = use_repo_rule("//third_party/torch:torch_configure.bzl", "torch_configure")
    torch_configure(name = "torch")

After installing another torch: `bazel sync --configure` (or change one of the variables above).
"""

_ENV = ["LIBTORCH", "TORCH_DIR", "PYTHON_BIN_PATH", "PATH"]

_PROBE = """
import os, sys
try:
    import torch
except Exception as e:
    sys.exit("cannot import torch: %s" % e)
print("root=" + os.path.dirname(os.path.abspath(torch.__file__)))
print("version=" + torch.__version__)
print("abi=%d" % int(torch._C._GLIBCXX_USE_CXX11_ABI))
print("cuda=" + (torch.version.cuda or ""))
"""

# The C++ standard ATen/ATen.h insists on (`#if __cplusplus < 202002L` + `#error`), as -std=c++NN.
_STANDARDS = [("202302", 23), ("202002", 20), ("201703", 17), ("201402", 14)]

def _fail(message):
    fail("torch_configure: " + message)

def _is_libtorch(rctx, root):
    return rctx.path(root + "/include/torch/script.h").exists and rctx.path(root + "/lib").exists

def _from_env(rctx):
    """(root, variable) from LIBTORCH or TORCH_DIR, or None."""
    for var in ["LIBTORCH", "TORCH_DIR"]:
        value = rctx.os.environ.get(var, "").strip()
        if not value:
            continue
        path = str(rctx.path(value))
        candidates = [path]
        if path.rstrip("/").endswith("share/cmake/Torch"):
            candidates.append(str(rctx.path(path).dirname.dirname.dirname))
        for root in candidates:
            if _is_libtorch(rctx, root):
                return root, var
        _fail("%s=%s is not a libtorch root: no include/torch/script.h and lib/ under it " % (var, value) +
              "(point it at the directory holding include/ and lib/, e.g. the torch/ package of a pip install)")
    return None

def _python(rctx):
    explicit = rctx.os.environ.get("PYTHON_BIN_PATH", "").strip()
    if explicit:
        return rctx.path(explicit), "PYTHON_BIN_PATH=" + explicit
    found = rctx.which("python3") or rctx.which("python")
    if found == None:
        _fail("no libtorch found: set LIBTORCH to a libtorch root (with include/ and lib/), or put a python3 " +
              "that can `import torch` on PATH (pip install torch)")
    return found, str(found)

def _from_python(rctx):
    python, where = _python(rctx)
    result = rctx.execute([python, "-c", _PROBE], timeout = 300)
    if result.return_code != 0:
        why = (result.stderr.strip().splitlines() or ["exit %d" % result.return_code])[-1]
        _fail("%s cannot tell where torch is (%s): pip install torch for it, or set LIBTORCH to a libtorch root" %
              (where, why))
    info = {}
    for line in result.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    if not _is_libtorch(rctx, info.get("root", "")):
        _fail("torch at %s (from %s) has no C++ headers and libraries (include/, lib/): " % (info.get("root"), where) +
              "install a torch wheel that ships them, or set LIBTORCH to a libtorch archive")
    return info, where

def _read(rctx, path):
    p = rctx.path(path)
    return rctx.read(p) if p.exists else ""

def _watch(rctx, path):
    # Bazel 7.1+ re-runs the rule when a watched file changes (a torch upgrade in place); older Bazel has no watch.
    if hasattr(rctx, "watch") and rctx.path(path).exists:
        rctx.watch(path)

def _version_of(rctx, root):
    text = _read(rctx, root + "/version.py")  # the torch package of a wheel
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("'\"")
    return _read(rctx, root + "/build-version").strip() or "unknown"  # the libtorch archive

def _cuda_of(rctx, root):
    for line in _read(rctx, root + "/version.py").splitlines():
        if line.startswith("cuda") and "=" in line:
            value = line.split("=", 1)[1].strip().strip("'\"")
            return "" if value == "None" else value
    return "unknown" if _lib(rctx, root, "torch_cuda") else ""

def _abi_of(rctx, root):
    """_GLIBCXX_USE_CXX11_ABI without Python: TorchConfig.cmake says it in older archives, libc10's symbols always."""
    config = _read(rctx, root + "/share/cmake/Torch/TorchConfig.cmake")
    for value in ["0", "1"]:
        if "_GLIBCXX_USE_CXX11_ABI=" + value in config:
            return value
    c10 = _lib(rctx, root, "c10")
    if c10:
        grep = rctx.execute(["grep", "-c", "-a", "__cxx11", c10])
        if grep.return_code in (0, 1):
            return "1" if grep.return_code == 0 else "0"
    return "1"

def _cxx_standard(rctx, root):
    text = _read(rctx, root + "/include/ATen/ATen.h")
    for marker, standard in _STANDARDS:
        if "__cplusplus < " + marker in text:
            return standard
    return 17

def _lib(rctx, root, name):
    for suffix in [".so", ".dylib"]:
        path = "%s/lib/lib%s%s" % (root, name, suffix)
        if rctx.path(path).exists:
            return path
    return None

def _starlark_list(items):
    return "[" + ", ".join(['"%s"' % item for item in items]) + "]"

def _torch_configure_impl(rctx):
    os_name = rctx.os.name.lower()
    if os_name.startswith("windows"):
        _fail("Windows is not supported by this rule (libtorch's .lib import libraries need cc_import); " +
              "build this project with CMake there")
    macos = os_name.startswith("mac")

    found = _from_env(rctx)
    if found:
        root, source = found
        source = "%s=%s" % (source, rctx.os.environ.get(source))
        version = _version_of(rctx, root)
        cuda = _cuda_of(rctx, root)
        abi = _abi_of(rctx, root)
    else:
        info, source = _from_python(rctx)
        root = info["root"]
        version = info.get("version", "unknown")
        cuda = info.get("cuda", "")
        abi = info.get("abi", "1")
    root = str(rctx.path(root).realpath) if hasattr(rctx.path(root), "realpath") else root
    lib = root + "/lib"
    for name in ["torch", "torch_cpu", "c10"]:
        if not _lib(rctx, root, name):
            _fail("%s has no lib%s shared library: a static libtorch is not supported" % (lib, name))
    _watch(rctx, root + "/version.py")
    _watch(rctx, root + "/build-version")

    standard = _cxx_standard(rctx, root)

    # libtorch_cuda registers the CUDA kernels from static initialisers: nothing references it, so it is
    # linked with --no-as-needed (as TorchConfig.cmake does); it is absent from a CPU build.
    gpu = []
    for name in ["torch_cuda", "c10_cuda", "torch_hip", "c10_hip"]:
        if _lib(rctx, root, name):
            gpu.append("-l" + name)
    libs = gpu + ["-ltorch", "-ltorch_cpu", "-lc10"]
    if macos:
        linkopts = ["-L" + lib, "-Wl,-rpath," + lib] + libs
        defines = []
    else:
        linkopts = ["-L" + lib, "-Wl,-rpath," + lib, "-Wl,--no-as-needed"] + libs + ["-Wl,--as-needed"]
        defines = ["_GLIBCXX_USE_CXX11_ABI=" + abi]

    rctx.symlink(root + "/include", "include")
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD.bazel", _BUILD.format(
        source = source,
        root = root,
        version = version,
        build = ("CUDA " + cuda) if cuda else "CPU",
        defines = _starlark_list(defines),
        linkopts = _starlark_list(linkopts),
    ))
    rctx.file("defs.bzl", _DEFS.format(
        source = source,
        copts = _starlark_list(["-std=c++%d" % standard]),
        standard = standard,
        version = version,
        cuda = cuda,
        abi = abi,
        root = root,
    ))

_BUILD = '''# @torch: libtorch {version} ({build}) at {root}
# Found from {source} by //third_party/torch:torch_configure.bzl; `bazel sync --configure` looks again.
load("@rules_cc//cc:defs.bzl", "cc_library")

package(default_visibility = ["//visibility:public"])

cc_library(
    name = "torch",
    hdrs = glob(
        ["include/**/*.h", "include/**/*.hpp", "include/**/*.hxx", "include/**/*.inc", "include/**/*.inl"],
        allow_empty = True,
    ),
    includes = ["include", "include/torch/csrc/api/include"],
    defines = {defines},
    linkopts = {linkopts},
)

exports_files(["defs.bzl"])
'''

_DEFS = '''"""What torch_configure found (from {source}); load it for the flags libtorch's headers need."""

# copts do not propagate through deps, so every target that includes libtorch's headers adds these.
TORCH_COPTS = {copts}
TORCH_CXX_STANDARD = {standard}
TORCH_VERSION = "{version}"
TORCH_CUDA = "{cuda}"  # empty for a CPU build
TORCH_CXX11_ABI = {abi}
TORCH_ROOT = "{root}"
'''

torch_configure = repository_rule(
    implementation = _torch_configure_impl,
    environ = _ENV,
    configure = True,
    doc = "libtorch from LIBTORCH, TORCH_DIR, or the python3 on PATH, as @<name>//:torch and @<name>//:defs.bzl.",
)
