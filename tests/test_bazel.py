"""`scaffold new --bazel`: the generated Bazel rules build, run and test the project with a real Bazel.

Bazel here is Debian's bazel-bootstrap (4.2.3, reads WORKSPACE); tests/bazel_stubs stand in for the repositories
it would download, so everything runs offline. MODULE.bazel (Bazel 7+) cannot be exercised offline: it is
checked for syntax with buildifier and against WORKSPACE for consistency.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, generated, run, scaffold

STUBS = REPO / "tests" / "bazel_stubs"
STUB_REPOS = ("rules_cc", "rules_java", "rules_python", "remote_coverage_tools")
TORCH_RULE = REPO / "templates" / "bazel" / "third_party" / "torch" / "torch_configure.bzl"
CELL = ("--model", "examples.models.cell:Cell", "--bazel")
VENV_BIN = Path(sys.executable).parent


def find_bazel() -> str | None:
    return shutil.which("bazel-4") or shutil.which("bazel")


def find_buildifier() -> str | None:
    local = REPO / ".venv" / "node" / "node_modules" / ".bin" / "buildifier"
    return str(local) if local.is_file() else shutil.which("buildifier")


def bazel_env(**extra: str) -> dict:
    """The wrapper script honours .bazelversion; USE_BAZEL_VERSION=4 picks Debian's bazel-4. python3 is this venv's."""
    env = {k: v for k, v in os.environ.items() if k not in ("LIBTORCH", "TORCH_DIR", "PYTHON_BIN_PATH",
                                                          "LD_LIBRARY_PATH", "BAZEL")}
    env["USE_BAZEL_VERSION"] = "4"
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def bazel(root: Path, *args: object, check: bool = True, env: dict | None = None,
          timeout: float = 900) -> subprocess.CompletedProcess:
    binary = find_bazel()
    assert binary, "bazel vanished"
    proc = subprocess.run([binary, *map(str, args)], cwd=root, capture_output=True, text=True, timeout=timeout,
                          env=env or bazel_env(), check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"bazel {' '.join(map(str, args))} exited {proc.returncode} in {root}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def offline_flags(disk_cache: Path) -> list[str]:
    return [f"--override_repository={name}={STUBS / name}" for name in STUB_REPOS] + [f"--disk_cache={disk_cache}"]


def starlark_calls(path: Path) -> list[tuple[str, list, dict, str | None]]:
    """Top-level calls in a WORKSPACE, MODULE.bazel or BUILD file (Python syntax).

    Each is (function, args, kwargs, target): target is x in `x = f(...)`.
    """
    calls = []
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        value = node.value if isinstance(node, ast.Expr | ast.Assign) else None
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
            args = [ast.literal_eval(a) for a in value.args]
            kwargs = {}
            for kw in value.keywords:
                try:
                    kwargs[kw.arg] = ast.literal_eval(kw.value)
                except ValueError:
                    kwargs[kw.arg] = None  # an expression (a glob, a variable): not needed here
            target = node.targets[0].id if isinstance(node, ast.Assign) else None
            calls.append((value.func.id, args, kwargs, target))
    return calls


def loaded_repos(build_file: Path) -> set[str]:
    return {args[0][1:].split("//")[0] for fn, args, _, _ in starlark_calls(build_file)
            if fn == "load" and args[0].startswith("@") and not args[0].startswith("@bazel_tools//")}


def module_repos(module_file: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(bazel_dep name -> version, repository name -> the .bzl label of the use_repo_rule that makes it)."""
    calls = starlark_calls(module_file)
    deps = {kw["name"]: kw["version"] for fn, _, kw, _ in calls if fn == "bazel_dep"}
    rules = {target: args[0] for fn, args, _, target in calls if fn == "use_repo_rule"}
    made = {kw["name"]: rules[fn] for fn, _, kw, _ in calls if fn in rules}
    return deps, made


def workspace_repos(workspace_file: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """(http_archive name -> its attributes, repository name -> the .bzl label its rule was loaded from)."""
    calls = starlark_calls(workspace_file)
    archives = {kw["name"]: kw for fn, _, kw, _ in calls if fn == "http_archive"}
    loaded = {}
    for fn, args, _, _ in calls:
        if fn == "load":
            loaded.update({symbol: args[0] for symbol in args[1:]})
    made = {kw["name"]: loaded[fn] for fn, _, kw, _ in calls if fn in loaded and fn != "http_archive" and "name" in kw}
    return archives, made


# ------------------------------------------------------------------ generated files, no Bazel needed


@pytest.fixture(scope="module")
def project(projects) -> Path:
    return generated(projects, "bazel-cell", *CELL, build=False)


def test_new_bazel_writes_the_bazel_files(project):
    for rel in ("MODULE.bazel", "WORKSPACE", "WORKSPACE.bzlmod", "BUILD.bazel", ".bazelrc", ".bazelignore",
                "third_party/torch/BUILD.bazel", "third_party/torch/torch_configure.bzl"):
        assert (project / rel).is_file(), rel
    # One rule, in the repository and in every project: the rendered copy is the template, byte for byte.
    assert (project / "third_party/torch/torch_configure.bzl").read_bytes() == TORCH_RULE.read_bytes()
    build = (project / "BUILD.bazel").read_text()
    # Every source BUILD.bazel names exists; the runner is the one this backend uses; no absolute paths.
    for src in re.findall(r'"(src/[^"]+)"', build):
        assert (project / src).is_file(), src
    assert "src/torchscript_runner.cpp" in build
    for text in (build, (project / "WORKSPACE").read_text(), (project / "MODULE.bazel").read_text()):
        assert str(REPO) not in text and "site-packages" not in text
    # Same flags as CMake: the warnings, the model directory define; the standard comes from @torch.
    assert '"-Wall"' in build and '"-Wextra"' in build and "SCAFFOLD_MODEL_DIR" in build
    for fn, _, kw, _ in starlark_calls(project / "BUILD.bazel"):
        if fn in ("cc_binary", "cc_test", "filegroup"):
            assert kw["name"] in ("app", "parity", "model")


def test_module_and_workspace_provide_the_same_repositories(project):
    needed = loaded_repos(project / "BUILD.bazel")
    assert needed == {"rules_cc", "torch"}
    deps, module_made = module_repos(project / "MODULE.bazel")
    archives, workspace_made = workspace_repos(project / "WORKSPACE")
    assert needed <= set(deps) | set(module_made), "MODULE.bazel misses a repository BUILD.bazel loads"
    assert needed <= set(archives) | set(workspace_made), "WORKSPACE misses a repository BUILD.bazel loads"
    # @torch comes from the same rule file both ways; rules_cc is pinned both ways.
    assert module_made["torch"] == workspace_made["torch"] == "//third_party/torch:torch_configure.bzl"
    assert re.fullmatch(r"\d+\.\d+\.\d+", deps["rules_cc"])
    rules_cc = archives["rules_cc"]
    assert re.fullmatch(r"[0-9a-f]{64}", rules_cc["sha256"])
    version = rules_cc["strip_prefix"].removeprefix("rules_cc-")
    assert all(version in url for url in rules_cc["urls"])
    # Names Bazel accepts: a module name is lower case, a workspace name has no '-'.
    (module,) = [kw for fn, _, kw, _ in starlark_calls(project / "MODULE.bazel") if fn == "module"]
    assert re.fullmatch(r"[a-z]([a-z0-9._-]*[a-z0-9])?", module["name"])
    (workspace,) = [kw for fn, _, kw, _ in starlark_calls(project / "WORKSPACE") if fn == "workspace"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", workspace["name"])
    # Bazel 7+ with Bzlmod reads WORKSPACE.bzlmod instead of WORKSPACE: it must declare nothing.
    assert not starlark_calls(project / "WORKSPACE.bzlmod")


def test_bazelrc_asks_for_the_standard_the_export_probed(project):
    manifest = json.loads((project / "model" / "manifest.json").read_text())
    std = manifest["torch"]["cxx_standard"]
    rc = (project / ".bazelrc").read_text()
    assert "build --compilation_mode=opt" in rc
    assert f"build --cxxopt=-std=c++{std}" in rc
    assert "try-import %workspace%/user.bazelrc" in rc


def test_repository_module_and_workspace_agree():
    needed = loaded_repos(REPO / "BUILD.bazel")
    deps, module_made = module_repos(REPO / "MODULE.bazel")
    archives, workspace_made = workspace_repos(REPO / "WORKSPACE")
    assert needed <= set(deps) | set(module_made)
    assert needed <= set(archives) | set(workspace_made)
    label = "//templates/bazel/third_party/torch:torch_configure.bzl"
    assert module_made["torch"] == workspace_made["torch"] == label
    assert not starlark_calls(REPO / "WORKSPACE.bzlmod")


def test_buildifier_accepts_the_bazel_files(project):
    buildifier = find_buildifier()
    if buildifier is None:
        pytest.skip("buildifier not installed (.ci/setup --tests installs it from npm: @bazel/buildifier)")
    files = [project / rel for rel in ("BUILD.bazel", "MODULE.bazel", "WORKSPACE", "WORKSPACE.bzlmod",
                                       "third_party/torch/BUILD.bazel", "third_party/torch/torch_configure.bzl")]
    files += [REPO / rel for rel in ("BUILD.bazel", "MODULE.bazel", "WORKSPACE", "WORKSPACE.bzlmod")]
    proc = run([buildifier, "--mode=check", "--lint=warn", *files], check=False)
    assert proc.returncode == 0, f"buildifier: {proc.stdout}{proc.stderr}"
    # It does catch a broken file.
    broken = project.parent / "broken-MODULE.bazel"
    broken.write_text((project / "MODULE.bazel").read_text().replace('version = "0.1.0",', 'version = "0.1.0"'))
    assert run([buildifier, "--mode=check", "--type=module", broken], check=False).returncode != 0


def no_bazel_env() -> dict:
    """PATH without any bazel (nor /usr/bin), the compiler still reachable through CXX."""
    return {"PATH": str(VENV_BIN), "BAZEL": "", "CXX": shutil.which("c++") or ""}


def test_new_bazel_needs_no_bazel(tmp_path):
    env = no_bazel_env()
    proc = scaffold("new", "nobazel", "--output", tmp_path / "nobazel", *CELL, env=env)
    assert (tmp_path / "nobazel" / "MODULE.bazel").is_file(), proc.stdout


def test_build_bazel_without_bazel_says_how_to_install(project):
    proc = scaffold("build", "--bazel", project, env=no_bazel_env(), check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "bazel not found" in errors[0] and "apt-get install bazel-bootstrap" in errors[0], proc.stderr


def test_build_bazel_on_a_project_without_bazel_rules(project, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(project / "model", plain / "model")
    shutil.copy(project / "scaffold.toml", plain / "scaffold.toml")
    proc = scaffold("build", "--bazel", plain, check=False)
    assert proc.returncode == 1
    assert "has no Bazel rules" in proc.stderr and "--bazel" in proc.stderr


# ------------------------------------------------------------------ a real Bazel


@pytest.fixture(scope="module")
def disk_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bazel-disk-cache")


@pytest.fixture(scope="module")
def built(project, disk_cache):
    """The Cell project with offline settings in user.bazelrc, built once by `bazel build //:app`; shut down after."""
    if find_bazel() is None:
        pytest.skip("bazel not installed: apt-get install bazel-bootstrap (bash .ci/setup --tests does it)")
    overrides = [f for f in offline_flags(disk_cache) if f.startswith("--override_repository")]
    lines = [f"{cmd} {flag}" for cmd in ("build", "query", "fetch", "sync") for flag in overrides]
    (project / "user.bazelrc").write_text("\n".join([*lines, f"build --disk_cache={disk_cache}"]) + "\n")
    start = time.monotonic()
    bazel(project, "build", "//:app")
    fresh = time.monotonic() - start
    output_base = Path(bazel(project, "info", "output_base").stdout.strip())
    yield {"root": project, "fresh_s": fresh}
    bazel(project, "shutdown", check=False)
    remove_output_base(output_base)


def remove_output_base(output_base: Path) -> None:
    """What `bazel clean --expunge` does, without a server (rm -rf never follows external/torch/include's link).

    In the background: on a loaded machine it can take a minute, and nothing waits for it.
    """
    if output_base.name and (output_base / "execroot").is_dir():
        subprocess.Popen(["rm", "-rf", str(output_base)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)


@pytest.mark.bazel
def test_bazel_build_and_run_without_ld_library_path(built):
    root = built["root"]
    print(f"fresh bazel build //:app: {built['fresh_s']:.1f} s")
    binary = root / "bazel-bin" / "app"
    assert binary.is_file()
    # Started from the project directory (model/ is relative to it) with no LD_LIBRARY_PATH: the rpath finds libtorch.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = subprocess.run([binary, "--json", "--check", "--warmup", "1", "--iters", "3"], cwd=root, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["parity"] is True and result["p50_ms"] > 0

    # A no-op rebuild compiles nothing.
    start = time.monotonic()
    again = bazel(root, "build", "//:app")
    print(f"no-op bazel build //:app: {time.monotonic() - start:.1f} s")
    assert "Compiling" not in again.stderr and "Linking" not in again.stderr


@pytest.mark.bazel
def test_libtorch_is_loaded_from_torch_lib_not_bazels_solib(built):
    """Linked with -rpath to torch/lib: libtorch's own $ORIGIN lookups (libgomp, nvshmem, CUDA) resolve there."""
    import torch

    lib = (Path(torch.__file__).parent / "lib").resolve()
    binary = built["root"] / "bazel-bin" / "app"
    dynamic = run(["readelf", "-d", binary]).stdout
    assert f"[{lib}]" in dynamic and "_solib" not in dynamic
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    ldd = run(["ldd", binary], env=env).stdout
    resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.MULTILINE))
    assert "not found" not in ldd, ldd
    for name in ("libtorch_cpu.so", "libc10.so"):
        assert Path(resolved[name]).parent.resolve() == lib, ldd
    bundled = [p.name for p in lib.glob("libgomp*.so*")] + [p.name for p in lib.glob("libtorch_nvshmem.so")]
    for name in bundled:  # the wheel's own copies, not the system's
        if name in resolved:
            assert Path(resolved[name]).parent.resolve() == lib, ldd
    if torch.version.cuda:
        assert "libtorch_cuda.so" in resolved, "a CUDA build links libtorch_cuda (its kernels register at load)"


@pytest.mark.bazel
def test_bazel_run_finds_the_model_in_the_runfiles(built):
    proc = bazel(built["root"], "run", "//:app", "--", "--json", "--check", "--iters", "2")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout
    result = json.loads(lines[-1])
    assert result["parity"] is True and result["model"] == "model/model.pt"


@pytest.mark.bazel
def test_bazel_test_runs_the_parity_check_and_fails_on_a_mismatch(built):
    import torch

    root = built["root"]
    proc = bazel(root, "test", "//...")
    assert re.search(r"//:parity\s+PASSED", proc.stdout + proc.stderr), proc.stdout

    golden = root / "model" / "golden.pt"
    original = golden.read_bytes()
    try:
        data = torch.load(golden)
        data["outputs"] = [t + 1 for t in data["outputs"]]
        torch.save(data, golden)
        failed = bazel(root, "test", "//:parity", check=False)
        assert failed.returncode == 3, failed.stderr[-3000:]  # 3: a test failed
        assert "parity check failed" in (failed.stdout + failed.stderr)
    finally:
        golden.write_bytes(original)


@pytest.mark.bazel
def test_scaffold_build_bazel(built):
    root = built["root"]
    proc = scaffold("build", "--bazel", root, env={"USE_BAZEL_VERSION": "4", "BAZEL": find_bazel() or ""})
    assert "built and tested" in proc.stdout
    binary = Path(proc.stdout.split("built and tested", 1)[1].split()[0])
    assert binary.is_file() and binary.name == "app"
    rc = (root / "scaffold.bazelrc").read_text()
    assert f"build --repo_env=PYTHON_BIN_PATH={sys.executable}" in rc


def torch_query(root: Path, *flags: str, check: bool = True) -> subprocess.CompletedProcess:
    return bazel(root, "query", *flags, "--output=build", "@torch//:torch", check=check)


def linkopts(proc: subprocess.CompletedProcess) -> list[str]:
    m = re.search(r"^\s*linkopts = (\[.*\]),$", proc.stdout, re.MULTILINE)
    assert m, proc.stdout[:3000]
    return ast.literal_eval(m.group(1))


@pytest.mark.bazel
def test_torch_repository_follows_libtorch_torch_dir_and_python(built, tmp_path):
    import torch

    root = built["root"]
    torch_root = Path(torch.__file__).parent
    # Found through python3 (PYTHON_BIN_PATH from scaffold.bazelrc, or PATH): the wheel's lib/, its ABI and standard.
    proc = torch_query(root)
    opts = linkopts(proc)
    lib = str((torch_root / "lib").resolve())
    assert f"-Wl,-rpath,{lib}" in opts and f"-L{lib}" in opts
    assert ("-ltorch_cuda" in opts) == bool(torch.version.cuda)
    assert f"_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}" in proc.stdout
    output_base = bazel(root, "info", "output_base").stdout.strip()
    defs = (Path(output_base) / "external" / "torch" / "defs.bzl").read_text()
    std = json.loads((root / "model" / "manifest.json").read_text())["torch"]["cxx_standard"]
    assert f'TORCH_COPTS = ["-std=c++{std}"]' in defs
    assert f'TORCH_VERSION = "{torch.__version__}"' in defs

    # LIBTORCH wins over Python: a libtorch root somewhere else.
    fake = tmp_path / "libtorch"
    fake.mkdir()
    for part in ("include", "lib", "share"):
        (fake / part).symlink_to(torch_root / part)
    opts = linkopts(torch_query(root, f"--repo_env=LIBTORCH={fake}"))
    assert f"-Wl,-rpath,{fake}/lib" in opts
    # TORCH_DIR may be CMake's Torch_DIR.
    opts = linkopts(torch_query(root, f"--repo_env=TORCH_DIR={fake}/share/cmake/Torch"))
    assert f"-Wl,-rpath,{fake}/lib" in opts

    # Wrong answers are one clear line each.
    bad = torch_query(root, "--repo_env=LIBTORCH=/no/such/libtorch", check=False)
    assert bad.returncode != 0
    assert "torch_configure: LIBTORCH=/no/such/libtorch is not a libtorch root" in bad.stderr
    no_torch = tmp_path / "python3"
    no_torch.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\nexit 1\n")
    no_torch.chmod(0o755)
    bad = torch_query(root, f"--repo_env=PYTHON_BIN_PATH={no_torch}", check=False)
    assert bad.returncode != 0
    assert "cannot tell where torch is" in bad.stderr and "set LIBTORCH" in bad.stderr


CPU_PYTHON = REPO / ".venv-cpu" / "bin" / "python"


@pytest.mark.bazel
def test_cpu_torch_c17_build_uses_its_own_libgomp(tmp_path, disk_cache):
    """A CPU wheel (torch 2.13, C++17 headers) bundles libgomp: through the rpath the app loads that one."""
    if find_bazel() is None:
        pytest.skip("bazel not installed: apt-get install bazel-bootstrap (bash .ci/setup --tests does it)")
    if not CPU_PYTHON.is_file():
        pytest.skip("no .venv-cpu (a CPU torch 2.13 venv; .ci/setup --tests makes it)")
    root = tmp_path / "cpu-cell"
    run([CPU_PYTHON, "-m", "generator", "new", "cpu-cell", "--output", root, *CELL], cwd=REPO)
    overrides = [f for f in offline_flags(disk_cache) if f.startswith("--override_repository")]
    lines = [*overrides, f"--disk_cache={disk_cache}", f"--repo_env=PYTHON_BIN_PATH={CPU_PYTHON}"]
    (root / "user.bazelrc").write_text("".join(f"build {line}\n" for line in lines))
    output_base = Path(bazel(root, "info", "output_base").stdout.strip())
    try:
        assert "--cxxopt=-std=c++17" in (root / ".bazelrc").read_text()
        proc = bazel(root, "test", "//...")
        assert re.search(r"//:parity\s+PASSED", proc.stdout + proc.stderr), proc.stdout
        lib = Path(run([CPU_PYTHON, "-c", "import torch, os; print(os.path.dirname(torch.__file__))"]).stdout.strip())
        lib = (lib / "lib").resolve()
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
        ldd = run(["ldd", root / "bazel-bin" / "app"], env=env).stdout
        resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.MULTILINE))
        assert "libtorch_cuda.so" not in resolved
        gomp = [name for name in resolved if name.startswith("libgomp")]
        assert gomp and all(Path(resolved[name]).parent.resolve() == lib for name in gomp), ldd
        app = subprocess.run([root / "bazel-bin" / "app", "--check", "--iters", "1"], cwd=root, env=env,
                             capture_output=True, text=True, check=False)
        assert app.returncode == 0 and "parity: OK" in app.stdout, app.stderr
    finally:
        bazel(root, "shutdown", check=False)
        remove_output_base(output_base)


# ------------------------------------------------------------------ the repository's own BUILD.bazel


@pytest.mark.bazel
def test_repository_build_exposes_scaffold_and_the_torch_rule(tmp_path, disk_cache):
    if find_bazel() is None:
        pytest.skip("bazel not installed: apt-get install bazel-bootstrap (bash .ci/setup --tests does it)")
    flags = ["--symlink_prefix=/", *offline_flags(disk_cache)]  # no bazel-* links in the checkout
    try:
        proc = bazel(REPO, "run", *flags, "//:scaffold", "--", "--version")
        assert proc.stdout.strip().startswith("scaffold ")
        # `bazel run` starts it in the runfiles tree; it goes back to where bazel was run (imports, --output).
        out = tmp_path / "from-bazel"
        bazel(REPO, "run", *flags, "//:scaffold", "--", "new", "from-bazel", *CELL, "--output", out)
        assert (out / "BUILD.bazel").is_file() and (out / "model" / "model.pt").is_file()
        assert (out / "third_party/torch/torch_configure.bzl").read_bytes() == TORCH_RULE.read_bytes()
        # The torch rule is loadable from here: @torch in this workspace.
        query = [f for f in flags if f.startswith("--override_repository")]
        opts = linkopts(bazel(REPO, "query", *query, "--output=build", "@torch//:torch"))
        assert any(o.startswith("-Wl,-rpath,") for o in opts)
    finally:
        bazel(REPO, "shutdown", check=False)
