"""scaffold doctor, for real: this machine's torch, toolchain and CUDA, a project's export against its libtorch,
and the same checks stopping `scaffold new` and `scaffold build` early."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import generated, scaffold
from packaging.version import Version


def doctor_json(*args, env=None, expect=0) -> dict:
    proc = scaffold("doctor", *args, "--json", env=env, check=False)
    assert proc.returncode == expect, f"doctor exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout)


def rows(report: dict) -> dict[str, dict]:
    return {c["item"]: c for c in report["checks"]}


@pytest.fixture(scope="module")
def cell(projects) -> Path:
    return generated(projects, "doctor-cell", "--model", "examples.models.cell:Cell", build=False)


@pytest.mark.e2e  # probes the real compiler against libtorch's headers (about 7 s a run) as a subprocess
def test_doctor_reports_this_machine():
    proc = scaffold("doctor")
    assert proc.returncode == 0
    for word in ("torch", torch.__version__, "cmake prefix", "C++ ABI", "C++ standard", "cmake", "ninja",
                 "C++ compiler", "ready"):
        assert word in proc.stdout, word

    report = doctor_json()
    assert report["ok"] is True
    checks = rows(report)
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    assert checks["torch"]["found"].startswith(f"{torch.__version__} ({build})")
    assert checks["cmake prefix"]["found"] == torch.utils.cmake_prefix_path
    assert checks["C++ ABI"]["found"] == f"_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    std = 20 if Version(torch.__version__) >= Version("2.14") else 17
    assert checks["C++ standard"]["found"].startswith(f"C++{std} (probed"), checks["C++ standard"]
    assert "up to C++" in checks["C++ compiler"]["found"]
    assert all(c["status"] != "fail" for c in report["checks"])
    if torch.version.cuda:
        toolkit = checks[f"CUDA {torch.version.cuda} toolkit"]
        assert toolkit["status"] == "ok" and Path(toolkit["found"], "bin", "nvcc").is_file()
        assert checks["nvrtc"]["status"] == "ok" and Path(checks["nvrtc"]["found"]).is_file()
        assert "CUDA_TOOLKIT_ROOT_DIR=" in checks["preset hints"]["found"]
        gpu = checks["GPU"]
        assert gpu["status"] == ("ok" if torch.cuda.is_available() else "info")
    else:
        assert "CPU build of torch" in checks["CUDA"]["found"]


@pytest.mark.e2e  # probes the real compiler against libtorch's headers (about 7 s a run) as a subprocess
def test_missing_compiler_fails_doctor_new_and_build(cell, tmp_path):
    """CXX naming a compiler that is not there: doctor exits 1, `new --build` stops before exporting, `build`
    stops before configuring; `new` alone (for CI or Docker) only warns."""
    env = {"CXX": "no-such-c++"}
    report = doctor_json(env=env, expect=1)
    compiler = rows(report)["C++ compiler"]
    assert compiler["status"] == "fail"
    assert compiler["fix"] == "no C++ compiler found (CXX=no-such-c++ is not on PATH): install one (apt-get " \
        "install g++) or set CXX"

    table = scaffold("doctor", env=env, check=False)
    assert table.returncode == 1 and "problem(s)" in table.stdout

    dest = tmp_path / "never"
    proc = scaffold("new", "never", "--model", "examples.models.cell:Cell", "--output", dest, "--build", env=env,
                    check=False)
    assert proc.returncode == 1
    assert f"error: {compiler['fix']}" in proc.stderr
    assert not dest.exists()  # stopped before the export

    proc = scaffold("build", cell, env=env, check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {compiler['fix']}"]  # the doctor's own words
    assert not (cell / "build").exists()  # never configured

    proc = scaffold("new", "later", "--model", "examples.models.cell:Cell", "--output", tmp_path / "later",
                    "--ci", "github", env=env)
    assert f"warning: {compiler['fix']}" in proc.stderr and (tmp_path / "later" / ".github").is_dir()


@pytest.mark.e2e  # probes the real compiler against libtorch's headers (about 7 s a run) as a subprocess
def test_version_skew_fails_before_the_build(cell, tmp_path):
    """A project whose manifest says another torch minor version: doctor DIR and build exit 1 with one line."""
    skewed = tmp_path / "skewed"
    shutil.copytree(cell, skewed)
    manifest_file = skewed / "model" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    other = f"{major}.{minor - 1}.0+cpu"
    manifest["torch"]["version"] = other
    manifest_file.write_text(json.dumps(manifest, indent=2))

    report = doctor_json(skewed, expect=1)
    version = rows(report)["torch version (here)"]
    assert version["status"] == "fail"
    assert (f"model/ was exported with torch {other} but this environment's torch is {torch.__version__}"
            in version["fix"])

    proc = scaffold("build", skewed, check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"exported with torch {other}" in errors[0], proc.stderr
    assert not (skewed / "build").exists()

    # A patch-level difference is a warning, not a stop.
    manifest["torch"]["version"] = f"{major}.{minor}.99"
    manifest_file.write_text(json.dumps(manifest, indent=2))
    report = doctor_json(skewed)
    assert rows(report)["torch version (here)"]["status"] == "warn"


def test_doctor_on_a_matching_project(cell):
    report = doctor_json(cell)
    checks = rows(report)
    assert checks["project"]["status"] == "ok"
    for item in ("torch version (here)", "C++ ABI (here)", "C++ standard (here)"):
        assert checks[item]["status"] == "ok", checks[item]


def test_doctor_on_something_else(tmp_path):
    report = doctor_json(tmp_path, expect=1)
    project = rows(report)["project"]
    assert project["status"] == "fail" and "is not a scaffold project" in project["found"]


@pytest.mark.e2e  # probes the real compiler against libtorch's headers (about 7 s a run) as a subprocess
def test_doctor_bazel_row():
    """--bazel makes Bazel required: found, it is ok; missing (BAZEL pointing nowhere), exit 1 with the fix."""
    found = shutil.which("bazel") or shutil.which("bazelisk")
    bazel = rows(doctor_json("--bazel", expect=0 if found else 1))["bazel"]
    assert bazel["status"] == ("ok" if found else "fail")
    missing = rows(doctor_json("--bazel", env={"BAZEL": "/nonexistent/bazel"}, expect=1))["bazel"]
    assert missing["status"] == "fail" and "BAZEL=/nonexistent/bazel is not an executable" in missing["fix"]
