"""The generated project travels: a second libtorch (CPU torch 2.13, C++17), `cmake --install` to a prefix that runs
from anywhere, the GitHub Actions matrix (`--ci github`) and the Dockerfile (`--docker`), each checked for real."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, generated, run, run_json, scaffold
from test_component import build_consumer, check_consumer

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
CPU_PYTHON = REPO / ".venv-cpu" / "bin" / "python"
CPU_TORCH = "2.13.0"


def tool(name: str) -> Path:
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{name} is missing from {BIN}: pip install -e '.[test]'")
    return path


def clean_env() -> dict:
    """The environment without LD_LIBRARY_PATH: the installed binary must find its libraries on its own."""
    return {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}


def run_installed(binary: Path, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          timeout=300, check=False)


def runpath(binary: Path) -> list[str]:
    proc = run(["readelf", "-d", binary])
    m = re.search(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", proc.stdout)
    return m.group(1).split(":") if m else []


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def install(root: Path, prefix: Path) -> None:
    run([tool("cmake"), "--install", root / "build", "--prefix", prefix], timeout=600)


# ------------------------------------------------------------------------------------- --device cuda


def test_device_cuda_on_this_machine(resnet18_app, tmp_path):
    """--device cuda[:N]: runs on a GPU where there is one, else says so in one line (exit 1); bad names are usage."""
    root = resnet18_app["root"]
    binary = root / "build" / root.name
    for device in ("cuda", "cuda:0"):
        proc = run_installed(binary, "--device", device, "--check", "--warmup", "1", "--iters", "3", cwd=tmp_path)
        if torch.cuda.is_available():
            assert proc.returncode == 0 and "parity: OK" in proc.stdout, proc.stderr
        else:
            assert proc.returncode == 1
            assert proc.stderr.splitlines() == [
                f"error: --device {device}: CUDA is not available here (a CPU-only libtorch, or no GPU visible)"]
    proc = run_installed(binary, "--device", "tpu", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --device expects cpu or cuda[:N]")


# -------------------------------------------------------------------------------------- cmake --install


def test_install_runs_from_anywhere(resnet18_app, tmp_path):
    """The CUDA (or CPU) torch of this venv: the prefix holds bin/, share/<name>/model/; RPATH $ORIGIN/../lib first."""
    root = resnet18_app["root"]
    prefix = tmp_path / "prefix"
    start = time.monotonic()
    install(root, prefix)
    name = root.name
    binary = prefix / "bin" / name
    assert binary.is_file() and os.access(binary, os.X_OK)
    for rel in ("model.pt", "golden.pt", "manifest.json"):
        assert (prefix / "share" / name / "model" / rel).is_file(), rel
    assert (prefix / "share" / name / "README.md").is_file()
    paths = runpath(binary)
    assert paths[0] == "$ORIGIN/../lib", paths
    own = (f"lib{name}_model.so", "cmake")  # the project's library and CMake package, not libtorch's
    bundled = sorted(p.name for p in (prefix / "lib").glob("*") if not p.name.startswith(own))
    assert (prefix / "lib" / "cmake" / name / f"{name}Config.cmake").is_file()
    assert runpath(next((prefix / "lib").glob(f"lib{name}_model.so.*")))[0] == "$ORIGIN"
    if torch.version.cuda:  # not bundled (GBs): the RPATH also names the libtorch it was built against
        assert bundled == [] and str(Path(torch.__file__).parent / "lib") in paths
    else:
        assert "libtorch_cpu.so" in bundled
    print(f"\ninstall ({'CUDA' if torch.version.cuda else 'CPU'} torch {torch.__version__}): "
          f"{tree_size(prefix) / 1e6:.1f} MB in {time.monotonic() - start:.1f} s")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stats = json.loads(run_installed(binary, "--check", "--json", "--warmup", "1", "--iters", "3",
                                     cwd=elsewhere).stdout)
    assert stats["parity"] is True
    assert Path(stats["model"]).resolve() == (prefix / "share" / name / "model" / "model.pt").resolve()


# --------------------------------------------------------------------------- a second libtorch: CPU torch 2.13


@pytest.fixture(scope="module")
def cpu_project(tmp_path_factory) -> Path:
    """Exported by torch 2.13.0 (CPU) and built against its libtorch, with .venv-cpu's python, like a user would."""
    if not CPU_PYTHON.is_file():
        pytest.skip(f"{CPU_PYTHON} is missing: .ci/setup --tests creates it (torch=={CPU_TORCH}, CPU); "
                    "the build against a second libtorch was not tested")
    version = subprocess.run([str(CPU_PYTHON), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                             text=True, check=False).stdout.strip()
    if not version.startswith(CPU_TORCH):
        pytest.skip(f"{CPU_PYTHON} has torch {version or '(none)'}, not {CPU_TORCH}: rerun .ci/setup --tests")
    root = tmp_path_factory.mktemp("cpu") / "cell213"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    start = time.monotonic()
    for args in (["new", "cell213", "--model", "examples.models.cell:Cell", "--ci", "github", "--docker",
                  "--output", root], ["build", root]):
        proc = subprocess.run([str(CPU_PYTHON), "-m", "generator", *map(str, args)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=1200, check=False)
        if proc.returncode != 0:
            pytest.fail(f"torch {CPU_TORCH}: scaffold {args[0]} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    print(f"\ntorch {CPU_TORCH} (CPU): new + build + ctest in {time.monotonic() - start:.1f} s")
    return root


def test_cpu_torch_213_builds_and_passes_parity(cpu_project):
    manifest = json.loads((cpu_project / "model" / "manifest.json").read_text())
    assert manifest["torch"]["version"].startswith(CPU_TORCH) and manifest["torch"]["cuda"] is None
    assert manifest["torch"]["cxx_standard"] == 17  # probed from 2.13's headers
    assert "cxx_std_17" in (cpu_project / "CMakeLists.txt").read_text()
    presets = json.loads((cpu_project / "CMakeUserPresets.json").read_text())
    prefix = presets["configurePresets"][0]["cacheVariables"]["CMAKE_PREFIX_PATH"]
    assert ".venv-cpu" in prefix and "CUDA_TOOLKIT_ROOT_DIR" not in presets["configurePresets"][0]["cacheVariables"]
    cache = (cpu_project / "build" / "CMakeCache.txt").read_text()
    assert re.search(r"^Torch_DIR:PATH=.*\.venv-cpu/", cache, re.MULTILINE)
    proc = run([tool("ctest"), "--test-dir", cpu_project / "build", "--output-on-failure"])
    assert "100% tests passed" in proc.stdout and "parity" in proc.stdout
    stats = run_json(cpu_project / "build" / "cell213", "--check", "--iters", "3")
    assert stats["parity"] is True


def test_cpu_install_is_bundled_and_relocatable(cpu_project, tmp_path):
    """A CPU libtorch is bundled into <prefix>/lib: the prefix still runs after it moves."""
    prefix = tmp_path / "prefix"
    start = time.monotonic()
    install(cpu_project, prefix)
    seconds = time.monotonic() - start
    libs = sorted(p.name for p in (prefix / "lib").iterdir())
    assert {"libtorch.so", "libtorch_cpu.so", "libc10.so"} <= set(libs), libs
    assert not any(name.startswith(("libc.so", "libstdc++", "libm.so")) for name in libs)  # the system's stay out
    assert runpath(prefix / "bin" / "cell213") == ["$ORIGIN/../lib"]
    print(f"\ninstall (CPU torch {CPU_TORCH}, bundled): {tree_size(prefix) / 1e6:.1f} MB in {seconds:.1f} s: "
          f"{', '.join(libs)}")

    moved = tmp_path / "moved" / "somewhere"
    moved.parent.mkdir()
    prefix.rename(moved)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    binary = moved / "bin" / "cell213"
    proc = run_installed(binary, "--check", "--json", "--iters", "2", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["parity"] is True and stats["model"].startswith(str(moved))
    ldd = run(["ldd", binary], env=clean_env()).stdout
    for lib in ("libtorch_cpu.so", "libc10.so"):
        assert re.search(rf"{re.escape(lib)} => {re.escape(str(moved))}/bin/\.\./lib/{re.escape(lib)}", ldd), ldd

    # A service built against the moved prefix: find_package(cell213 CONFIG) with torch 2.13's CMake package (for
    # the headers), the README's code and threads; the library and its model are the prefix's.
    torch_prefix = run([CPU_PYTHON, "-c", "import torch; print(torch.utils.cmake_prefix_path)"]).stdout.strip()
    build = build_consumer(cpu_project, tmp_path / "consumer", [moved, Path(torch_prefix)])
    check_consumer(build, elsewhere, cpu_project)
    ldd = run(["ldd", build / "service"], env=clean_env()).stdout
    assert re.search(rf"libcell213_model\.so\S* => {re.escape(str(moved))}/lib/", ldd), ldd


def test_doctor_and_build_refuse_the_other_torch(cpu_project):
    """Real skew: a project exported by torch 2.13 (C++17) against this environment's torch."""
    if torch.__version__.startswith(CPU_TORCH):
        pytest.skip("this environment's torch is the same version")
    proc = scaffold("doctor", cpu_project, "--json", check=False)
    assert proc.returncode == 1
    checks = {c["item"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["torch version (here)"]["status"] == "fail"
    assert checks["torch version (build/)"]["status"] == "ok"  # build/ is configured with 2.13's libtorch
    assert checks["build/ libtorch"]["status"] == "warn"
    before = (cpu_project / "build" / "CMakeCache.txt").read_text()
    proc = scaffold("build", cpu_project, check=False)
    assert proc.returncode == 1
    assert f"error: torch version (here): model/ was exported with torch {CPU_TORCH}" in proc.stderr
    assert (cpu_project / "build" / "CMakeCache.txt").read_text() == before  # stopped before configuring


# ------------------------------------------------------------------------------------------- --ci github


def load_workflow(root: Path) -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load((root / ".github" / "workflows" / "ci.yml").read_text())


def step(workflow: dict, name: str) -> dict:
    steps = workflow["jobs"]["build"]["steps"]
    found = [s for s in steps if s.get("name") == name]
    assert len(found) == 1, [s.get("name") for s in steps]
    return found[0]


def pick_archive(workflow: dict, tmp_path: Path, runner_os: str, version: str, variant: str) -> dict[str, str]:
    """Run the workflow's own 'Pick the libtorch archive' script the way a runner would."""
    output = tmp_path / f"out-{runner_os}-{version}-{variant}"
    output.write_text("")
    env = {**os.environ, "RUNNER_OS": runner_os, "RUNNER_TEMP": str(tmp_path), "GITHUB_OUTPUT": str(output),
           "LIBTORCH_VERSION": version, "LIBTORCH_VARIANT": variant}
    run(["bash", "-euo", "pipefail", "-c", step(workflow, "Pick the libtorch archive")["run"]], env=env)
    return dict(line.split("=", 1) for line in output.read_text().splitlines())


@pytest.fixture(scope="module")
def ci_project(projects) -> Path:
    return generated(projects, "travel-ci", "--model", "examples.models.cell:Cell", "--ci", "github", "--docker",
                     build=False)


def test_workflow_is_valid(ci_project, tmp_path):
    workflow_file = ci_project / ".github" / "workflows" / "ci.yml"
    proc = run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", workflow_file])
    assert "ok" in proc.stdout
    workflow = load_workflow(ci_project)
    assert set(workflow["on"]) == {"push", "pull_request", "workflow_dispatch"}
    assert workflow["permissions"] == {"contents": "read"}
    # Every shell step passes shellcheck, as bash (the job's default shell on all three OSes).
    assert workflow["jobs"]["build"]["defaults"]["run"]["shell"] == "bash"
    for i, s in enumerate(workflow["jobs"]["build"]["steps"]):
        if "run" in s:
            assert "${{" not in s["run"], f"{s.get('name')}: pass expressions through env, not into the script"
            script = tmp_path / f"step{i}.sh"
            script.write_text("#!/usr/bin/env bash\n" + s["run"])
            run([tool("shellcheck"), "--shell=bash", script])


def test_workflow_matrix_and_archives(ci_project, tmp_path):
    workflow = load_workflow(ci_project)
    matrix = workflow["jobs"]["build"]["strategy"]["matrix"]
    assert matrix["os"] == ["ubuntu-24.04", "windows-2022", "macos-14"]
    base = torch.__version__.split("+")[0]
    assert matrix["libtorch"] == [base]  # the export's version: parity needs the same torch on both sides
    if torch.version.cuda:
        tag = "cu" + torch.version.cuda.replace(".", "")
        assert matrix["variant"] == ["cpu", tag]
        assert matrix["exclude"] == [{"os": "macos-14", "variant": tag}]  # no CUDA libtorch for macOS
    else:
        assert matrix["variant"] == ["cpu"] and "exclude" not in matrix

    root = "https://download.pytorch.org/libtorch"
    cells = [(o, v) for o in ("Linux", "Windows", "macOS") for v in matrix["variant"] if o != "macOS" or v == "cpu"]
    for runner_os, variant in cells:
        out = pick_archive(workflow, tmp_path, runner_os, base, variant)
        expected = {
            "Linux": f"{root}/{variant}/libtorch-shared-with-deps-{base}%2B{variant}.zip",
            "Windows": f"{root}/{variant}/libtorch-win-shared-with-deps-{base}%2B{variant}.zip",
            "macOS": f"{root}/cpu/libtorch-macos-arm64-{base}.zip",
        }[runner_os]
        assert out["url"] == expected and out["dir"] == f"{tmp_path}/libtorch"
        if variant != "cpu":
            assert out["cuda"] == torch.version.cuda and out["cuda_apt"] == torch.version.cuda.replace(".", "-")
            assert out["cuda_full"].startswith(torch.version.cuda + ".")
    # Before 2.8 the Linux C++11-ABI archive had its own name.
    assert pick_archive(workflow, tmp_path, "Linux", "2.7.1", "cu126")["url"] == \
        f"{root}/cu126/libtorch-cxx11-abi-shared-with-deps-2.7.1%2Bcu126.zip"

    names = [s.get("name") or s.get("uses") for s in workflow["jobs"]["build"]["steps"]]
    for expected in ("Cache libtorch", "Download libtorch", "Configure", "Build", "Parity test", "Install",
                     "Run the installed binary from elsewhere", "actions/upload-artifact@v4"):
        assert expected in names, expected
    assert "ctest --preset" in step(workflow, "Parity test")["run"]
    assert step(workflow, "Download libtorch")["if"] == "steps.cache.outputs.cache-hit != 'true'"


def test_cpu_export_gets_a_cpu_matrix(cpu_project, tmp_path):
    workflow = load_workflow(cpu_project)
    matrix = workflow["jobs"]["build"]["strategy"]["matrix"]
    assert matrix["libtorch"] == [CPU_TORCH] and matrix["variant"] == ["cpu"] and "exclude" not in matrix
    out = pick_archive(workflow, tmp_path, "Linux", CPU_TORCH, "cpu")
    assert out["url"] == f"https://download.pytorch.org/libtorch/cpu/libtorch-shared-with-deps-{CPU_TORCH}%2Bcpu.zip"
    assert f"LIBTORCH_VERSION={CPU_TORCH}" in (cpu_project / "Dockerfile").read_text()


# ------------------------------------------------------------------------------------------------ --docker


def test_dockerfile(ci_project):
    dockerfile = ci_project / "Dockerfile"
    proc = run([tool("hadolint"), "--no-color", dockerfile], check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr
    text = dockerfile.read_text()
    assert text.startswith("# syntax=docker/dockerfile:1\n")
    stages = re.findall(r"^FROM (\S+) AS (\w+)$", text, re.MULTILINE)
    # base (toolchain), libtorch (the download; a --build-context libtorch=DIR replaces it), build, runtime
    assert [s[1] for s in stages] == ["base", "libtorch", "build", "runtime"]
    assert "COPY --from=libtorch /libtorch/ /opt/libtorch/" in text
    base = torch.__version__.split("+")[0]
    assert f"ARG LIBTORCH_VERSION={base}" in text and "ARG LIBTORCH_VARIANT=cpu" in text
    assert "https://download.pytorch.org/libtorch/${LIBTORCH_VARIANT}/libtorch-shared-with-deps-" in text
    build_stage, runtime_stage = text.split("AS runtime")
    assert "ctest" in build_stage and "cmake --install build --prefix /opt/travel-ci" in build_stage
    assert "-DSCAFFOLD_BUNDLE_LIBTORCH=ON" in build_stage
    # The runtime stage: only the installed prefix, a non-root user, the binary as entry point.
    assert re.findall(r"^COPY .*$", runtime_stage, re.MULTILINE) == [
        "COPY --from=build /opt/travel-ci /opt/travel-ci"]
    assert "apt-get" not in runtime_stage and re.search(r"^USER \d+$", runtime_stage, re.MULTILINE)
    assert 'ENTRYPOINT ["/opt/travel-ci/bin/travel-ci"]' in runtime_stage
    ignore = (ci_project / ".dockerignore").read_text().splitlines()
    for entry in ("build/", "CMakeUserPresets.json", ".git/"):
        assert entry in ignore
