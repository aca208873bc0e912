"""End to end: generate, build with real cmake + compiler against the real libtorch, run, check the numbers."""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import NEW_OUTPUT, generated, run, run_json, scaffold
from packaging.version import Version

pytestmark = pytest.mark.e2e

CMAKE = Path(sys.executable).parent / "cmake"
CTEST = Path(sys.executable).parent / "ctest"
GATE = ("--model", "examples.models.control_flow:make_gate", "--method", "script", "--input", "x=4x8")


def binary(root: Path) -> Path:
    path = root / "build" / root.name
    assert path.is_file(), f"{path} was not built"
    return path


def ctest_results(build_dir: Path) -> dict[str, bool]:
    proc = run([CTEST, "--test-dir", build_dir, "--output-on-failure"], check=False)
    results = dict(re.findall(r"Test\s+#\d+: (\S+) \.+\s*(Passed|\*\*\*Failed|Failed)", proc.stdout))
    return {name: status == "Passed" for name, status in results.items()}


def check_timing(stats: dict) -> None:
    for key in ("load_ms", "first_call_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"):
        assert stats[key] > 0, key
    assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert stats["throughput_per_s"] == pytest.approx(1000 / stats["mean_ms"], rel=1e-3)


# ----------------------------------------------------------------------------------- resnet18 (trace)


@pytest.fixture(scope="module")
def resnet(resnet18_app):
    return resnet18_app["root"]


def test_resnet_project_layout(resnet):
    for rel in ("CMakeLists.txt", "CMakePresets.json", "CMakeUserPresets.json", "README.md", ".gitignore",
                ".clang-format", "scaffold.toml", "src/main.cpp", "src/runner.h", "src/torchscript_runner.cpp",
                "src/model.cpp", "src/tools.cpp", "include/resnet18-app/model.h", "include/resnet18-app/tools.h",
                "cmake/TorchCudaHints.cmake", "cmake/install-rules.cmake", "cmake/install-config.cmake",
                "model/model.pt", "model/golden.pt", "model/manifest.json"):
        assert (resnet / rel).is_file(), rel
    header = (resnet / "include/resnet18-app/model.h").read_text()
    assert "namespace resnet18_app {" in header and "at::Tensor x;  // x: 1x3x224x224 float32" in header
    assert "/CMakeUserPresets.json" in (resnet / ".gitignore").read_text()
    manifest = json.loads((resnet / "model/manifest.json").read_text())
    assert manifest["torch"]["version"] == torch.__version__
    assert manifest["torch"]["cxx11_abi"] == torch._C._GLIBCXX_USE_CXX11_ABI
    assert manifest["torch"]["cxx_standard"] == (20 if Version(torch.__version__) >= Version("2.14") else 17)
    assert manifest["method"] == "trace" and manifest["frozen"] is True
    assert manifest["signature"]["inputs"] == [{"name": "x", "shape": [1, 3, 224, 224], "dtype": "float32"}]
    assert manifest["signature"]["outputs"] == [{"name": "out", "shape": [1, 1000], "dtype": "float32"}]
    import hashlib

    assert manifest["sha256"] == hashlib.sha256((resnet / "model/model.pt").read_bytes()).hexdigest()


def test_resnet_runs_and_prints_heads_and_latency(resnet):
    proc = run([binary(resnet), "--iters", "5", "--warmup", "2"])
    assert re.search(r"out \[1, 1000\] Float: -?\d", proc.stdout)
    m = re.search(r"p50 ([\d.]+) ms, p90 ([\d.]+) ms, p99 ([\d.]+) ms", proc.stdout)
    assert m and 0 < float(m[1]) <= float(m[2]) <= float(m[3])
    assert re.search(r"first call [\d.]+ ms", proc.stdout)


def test_resnet_matches_python(resnet, resnet18_app):
    """The C++ output equals eager PyTorch's on the golden input (checked here too, not only by the binary)."""
    stats = run_json(binary(resnet), "--check", "--iters", "3", "--warmup", "1", "--threads", "1")
    assert stats["parity"] is True and stats["max_abs_diff"] < 1e-3
    assert stats["threads"] == 1 and stats["iters"] == 3
    check_timing(stats)
    golden = torch.load(resnet / "model" / "golden.pt")
    with torch.inference_mode():
        expected = resnet18_app["model"](golden["inputs"][0])  # eager, with the weights the project was made from
    assert torch.allclose(golden["outputs"][0], expected, rtol=1e-4, atol=1e-5)


def test_resnet_ctest(resnet):
    assert ctest_results(resnet / "build") == {"parity": True, "missing_model": True, "wrong_input_shape": True}


def test_resnet_bad_runtime_input(resnet):
    exe = binary(resnet)
    for args, code, fragment in [
        (["--model", resnet / "nope.pt"], 1, "error: model file not found"),
        (["--input", "x=1x4x224x224", "--iters", "1"], 1,
         "error: forward failed on inputs x=[1, 4, 224, 224]: RuntimeError: "),
        (["--input", "y=1x3"], 2, "error: --input: the model has no input 'y' (inputs: x)"),
        (["--device", "cuda:0"], 1, "error: --device cuda:0: CUDA is not available here"),
        (["--device", "gpu"], 2, "error: --device expects cpu or cuda[:N], got 'gpu'"),
        (["--iters", "0"], 2, "error: --iters expects an integer >= 1, got '0'"),
        (["--threads", "100000"], 2, "error: --threads expects an integer from 0 to "),
        (["--threads", "2147483648"], 2, "error: --threads expects an integer from 0 to "),
        (["--input", "x=100000x100000x100"], 2, "error: --input x: shape 100000x100000x100 has more than 2^30"),
        (["--frobnicate"], 2, "error: unknown option '--frobnicate'"),
        (["--model", resnet / "model" / "golden.pt"], 1, "error: cannot load"),
    ]:
        if args[:2] == ["--device", "cuda:0"] and torch.cuda.is_available():
            continue
        proc = run([exe, *args], check=False)
        assert proc.returncode == code, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(fragment), (args, proc.stderr)


def test_binary_checks_golden_and_model_files(projects, tmp_path):
    """A golden.pt of the wrong structure, a FIFO, a directory: one error line naming what is wrong, never a crash
    or a hang."""
    root = generated(projects, "gate-app", *GATE)
    exe = binary(root)
    golden = torch.load(root / "model" / "golden.pt")
    bad = {
        "no_output_names": (dict(golden, output_names=[]), "'output_names' has 0 name(s) for 1 tensor(s) in 'outputs'"),
        "no_input_names": (dict(golden, input_names=[]), "'input_names' has 0 name(s) for 1 tensor(s) in 'inputs'"),
        "more_names": (dict(golden, input_names=["x", "y"]), "'input_names' has 2 name(s) for 1 tensor(s) in 'inputs'"),
        "renamed": (dict(golden, input_names=["y"]), "input 0 is named 'y', the model's input 0 is 'x'"),
        "no_outputs": ({k: v for k, v in golden.items() if k != "outputs"}, "key 'outputs' is missing"),
        "not_tensors": (dict(golden, outputs=[1.5]), "'outputs' item 0 should be a tensor, got Double"),
        "no_inputs": (dict(golden, inputs=[], input_names=[]), "'inputs' holds 0 tensor(s), the model takes 1"),
        "bad_rtol": (dict(golden, rtol="x"), "'rtol' should be a number >= 0"),
        "a_list": ([1, 2], "expected a dict (written by torch.save), got GenericList"),
    }
    for key, (data, message) in bad.items():
        path = tmp_path / f"{key}.pt"
        torch.save(data, path)
        for extra in (["--check"], ["--input", "x=2x8"]):
            proc = run([exe, "--golden", path, "--iters", "1", *extra], check=False, timeout=60)
            assert proc.returncode == 1, (key, proc.stderr)
            assert proc.stderr.strip() == f"error: golden data {path}: {message}", (key, proc.stderr)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a zip" * 100)
    proc = run([exe, "--golden", garbage], check=False, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith(f"error: golden data {garbage} is not a file torch.save")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for flag, what in (("--golden", "golden data"), ("--model", "model file")):
        for path, kind in ((fifo, "a FIFO"), (tmp_path, "a directory")):
            proc = run([exe, flag, path], check=False, timeout=60)
            assert proc.returncode == 1
            assert proc.stderr.strip() == f"error: {what} {path} is not a regular file ({kind})"
    if os.geteuid() != 0:  # root reads any file
        unreadable = tmp_path / "unreadable.pt"
        unreadable.write_bytes((root / "model" / "golden.pt").read_bytes())
        unreadable.chmod(0)
        proc = run([exe, "--golden", unreadable], check=False, timeout=60)
        assert proc.returncode == 1
        assert proc.stderr.strip() == f"error: golden data {unreadable} cannot be read: Permission denied"


def test_resnet_other_batch_size(resnet):
    proc = run([binary(resnet), "--input", "x=2x3x224x224", "--iters", "1", "--warmup", "0"])
    assert "out [2, 1000]" in proc.stdout


def test_resnet_parity_detects_a_wrong_model(resnet, tmp_path):
    """--check is not a rubber stamp: a different model against the same goldens fails with exit code 3."""
    other = torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                                 torch.nn.Linear(3, 1000)))
    other.save(str(tmp_path / "other.pt"))
    # --no-verify: other.pt has no other.pt.sha256 beside it (the binary refuses an unchecked model by default)
    proc = run([binary(resnet), "--check", "--model", tmp_path / "other.pt", "--no-verify", "--iters", "1"],
               check=False)
    assert proc.returncode == 3
    assert "error: parity check failed: out: max abs difference" in proc.stderr


def test_scaffold_run_passes_arguments(resnet):
    proc = scaffold("run", resnet, "--", "--iters", "2", "--warmup", "0", "--json")
    assert json.loads(proc.stdout.strip().splitlines()[-1])["iters"] == 2


# ----------------------------------------------------------------------------- control flow (script)


def test_script_keeps_control_flow(projects):
    root = generated(projects, "gate-app", *GATE)
    manifest = json.loads((root / "model/manifest.json").read_text())
    assert manifest["method"] == "script"
    assert ctest_results(root / "build")["parity"]
    # Both branches survive in the artifact: positive and negative inputs take different paths.
    module = torch.jit.load(str(root / "model" / "model.pt"))
    eager = __import__("examples.models.control_flow", fromlist=["make_gate"])
    torch.manual_seed(0)
    reference = eager.make_gate().eval()
    for sign in (1.0, -1.0):
        x = sign * torch.rand(4, 8)
        assert torch.allclose(module(x), reference(x), atol=1e-6)


def test_trace_refuses_frozen_control_flow(tmp_path):
    proc = scaffold("new", "gate", "--model", "examples.models.control_flow:make_gate", "--input", "x=4x8",
                    "--output", tmp_path / "gate", check=False)
    assert proc.returncode == 1 and "tracing froze data-dependent control flow; use --method script" in proc.stderr
    assert re.search(r"\(the tracer warned at control_flow.py:\d+: .*Python boolean", proc.stderr)
    assert not (tmp_path / "gate").exists()


def test_tracer_warning_is_surfaced(tmp_path):
    proc = scaffold("new", "warn", "--model", "tests.models.faulty:HarmlessWarning", "--input", "x=3",
                    "--output", tmp_path / "warn")
    assert re.search(r"warning: tracing: faulty.py:\d+: .*--method script", proc.stderr)


def test_baked_device_is_reported(tmp_path):
    proc = scaffold("new", "dev", "--model", "tests.models.faulty:BakedDevice", "--input", "x=2x2", "--no-freeze",
                    "--output", tmp_path / "dev")
    assert "warning: the trace baked device cpu into the graph" in proc.stderr


# ---------------------------------------------------- two inputs, tuple output, the tutorial's cmake path


@pytest.fixture(scope="module")
def cell_tutorial(projects) -> Path:
    """cell-app built the tutorial way, once: cmake -S -B -DCMAKE_PREFIX_PATH=..., no preset and no CUDA hints,
    warnings as errors (-Wall -Wextra). A fixture, so each test using it also runs alone."""
    root = generated(projects, "cell-app", "--model", "examples.models.cell:Cell", build=False)
    build = root / "build"
    if not (build / root.name).is_file():
        run([CMAKE, "-S", root, "-B", build, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
             "-DCMAKE_COMPILE_WARNING_AS_ERROR=ON"], timeout=300)
        run([CMAKE, "--build", build, "--config", "Release"], timeout=900)
    return root


def test_cell_builds_the_tutorial_way(cell_tutorial):
    root, build = cell_tutorial, cell_tutorial / "build"
    assert ctest_results(build) == {"parity": True, "missing_model": True, "wrong_input_shape": True}
    proc = run([binary(root), "--iters", "3"])
    assert "out[0] [3, 4] Float" in proc.stdout and "out[1] [3, 4] Float" in proc.stdout
    stats = run_json(binary(root), "--check")
    assert stats["parity"] is True and stats["max_abs_diff"] == 0
    golden = torch.load(root / "model" / "golden.pt")
    assert golden["input_names"] == ["x", "h"] and golden["output_names"] == ["out[0]", "out[1]"]
    assert torch.equal(golden["outputs"][0], golden["outputs"][1])


def test_presets_configure_with_the_environments_prefix_path(cell_tutorial, tmp_path):
    """The generated README's `release` path: CMAKE_PREFIX_PATH in the environment, the venv's real cmake, the
    presets' minimum version (cmake_minimum_required agrees: both come from toolchain.CMAKE_MINIMUM) and --fresh
    (CMake 3.24, what `scaffold build` passes). Against the CUDA wheel, configure warns once at most (libtorch's
    CMAKE_CUDA_ARCHITECTURES note) and explains it in one line; kineto's warning is gone."""
    source = tmp_path / "src"
    shutil.copytree(cell_tutorial, source, ignore=shutil.ignore_patterns("build", "CMakeUserPresets.json"))
    listed = run([CMAKE, "--list-presets=all"], cwd=source)
    assert all(p in listed.stdout for p in ('"release"', '"debug"', '"ci"'))
    env = {"CMAKE_PREFIX_PATH": torch.utils.cmake_prefix_path}
    proc = run([CMAKE, "--preset", "release", "--fresh"], cwd=source, env=env, timeout=300)
    log = proc.stdout + proc.stderr
    assert "kineto not found" not in log
    if torch.version.cuda:
        assert log.count("CMake Warning") <= 1 and "CMAKE_CUDA_ARCHITECTURES" in log, log
        assert log.count(f"libtorch is a CUDA {torch.version.cuda} build") == 1, log
    else:
        assert "CMake Warning" not in log, log


def test_binary_runs_from_anywhere(cell_tutorial, tmp_path):
    """No LD_LIBRARY_PATH, another working directory: the RPATH finds libtorch, the model path is absolute."""
    root = cell_tutorial
    env = {"LD_LIBRARY_PATH": ""}
    proc = run([binary(root), "--check", "--iters", "1"], cwd=tmp_path, env=env)
    assert "parity: OK" in proc.stdout


# ------------------------------------------------ many dtypes in, nested dict/list/scalar out (general case)


def test_structured_inputs_and_outputs(projects):
    root = generated(projects, "tagger-app", "--model", "examples.models.structured:Tagger", "--method", "script")
    manifest = json.loads((root / "model/manifest.json").read_text())
    names = [o["name"] for o in manifest["signature"]["outputs"]]
    assert names == ["out[0]['logits']", "out[0]['pooled']", "out[1][0]", "out[2]"]
    assert [i["dtype"] for i in manifest["signature"]["inputs"]] == ["int64", "bool", "float64"]
    golden = torch.load(root / "model" / "golden.pt")
    assert int(golden["inputs"][0].max()) < 100  # ids stay inside the embedding table
    stats = run_json(binary(root), "--check", "--iters", "2")
    assert stats["parity"] is True
    proc = run([binary(root), "--iters", "1"])
    for name in names:
        assert name in proc.stdout


def test_regenerate_from_the_project_spec(projects, tmp_path):
    """The scaffold.toml a project carries regenerates the same project (copier-style answers file)."""
    root = generated(projects, "cell-app", "--model", "examples.models.cell:Cell", build=False)
    copy = tmp_path / "again"
    scaffold("new", "--spec", root / "scaffold.toml", "--output", copy)
    assert (copy / "scaffold.toml").read_text() == (root / "scaffold.toml").read_text()
    assert (copy / "src" / "main.cpp").read_text() == (root / "src" / "main.cpp").read_text()
    first = json.loads((root / "model/manifest.json").read_text())
    second = json.loads((copy / "model/manifest.json").read_text())
    assert first["sha256"] == second["sha256"]  # same seed, same weights, same artifact


def test_new_with_build_flag(projects):
    """`scaffold new --build` generates, builds and runs ctest in one command (conftest.generated makes the
    session's built projects so); its stdout holds scaffold's own result lines, the build log goes to stderr."""
    root = generated(projects, "gate-app", *GATE)
    proc = NEW_OUTPUT["gate-app"]
    assert proc.args[-1] == "--build" and (root / "build" / "gate-app").is_file()
    assert [line.split()[0] for line in proc.stdout.splitlines()] == ["created", "built"], proc.stdout
    assert "Build files have been written" in proc.stderr and "tests passed" in proc.stderr


# ------------------------------------------------------------------------ AOTInductor backend, and bench


@pytest.fixture(scope="module")
def aoti(projects):
    return generated(projects, "cell-aoti", "--model", "examples.models.cell:Cell", "--backend", "aoti",
                     "--dynamic", "x:0", "--dynamic", "h:0")


def test_aoti_project(aoti):
    manifest = json.loads((aoti / "model/manifest.json").read_text())
    assert manifest["backend"] == "aoti" and manifest["artifact"] == "model.pt2"
    assert (aoti / "src" / "aoti_runner.cpp").is_file() and not (aoti / "src" / "torchscript_runner.cpp").exists()
    assert ctest_results(aoti / "build") == {"parity": True, "missing_model": True, "wrong_input_shape": True}
    stats = run_json(binary(aoti), "--check", "--iters", "5")
    assert stats["parity"] is True and stats["backend"] == "AOTInductor"
    check_timing(stats)
    proc = run([binary(aoti), "--iters", "1"])
    assert "out[0] [3, 4] Float" in proc.stdout and "out[1] [3, 4] Float" in proc.stdout


def test_aoti_dynamic_batch(aoti):
    """Dims marked --dynamic compile symbolic: another batch size runs, a wrong fixed dim is refused."""
    spec = (aoti / "scaffold.toml").read_text()
    assert spec.count("dynamic = [0]") == 2
    proc = run([binary(aoti), "--input", "x=6x4", "--input", "h=6x4", "--iters", "2"])
    assert "out[0] [6, 4] Float" in proc.stdout
    proc = run([binary(aoti), "--input", "x=3x5", "--iters", "1"], check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: forward failed on inputs x=[3, 5], h=[3, 4]: input x is Float 3x5 but this "
                                   "AOTInductor package was compiled for Float ?x4 (re-export for that shape)")
    # x and h share the batch (torch.export made their dim 0 one symbol): inputs that disagree are refused.
    proc = run([binary(aoti), "--input", "x=6x4", "--input", "h=2x4", "--iters", "1"], check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: forward failed on inputs x=[6, 4], h=[2, 4]: inputs x and h must agree on "
                                   "a dynamic size the model shares (the batch?): x dim 0 is 6, h dim 0 is 2")


def test_dynamic_dim_the_model_fixes_is_refused(tmp_path):
    proc = scaffold("new", "fixed", "--model", "examples.models.cell:Cell", "--backend", "aoti", "--dynamic", "x:1",
                    "--output", tmp_path / "fixed", check=False)
    assert proc.returncode == 1
    assert "dim 1 of input 'x' cannot be dynamic: torch.export found the model fixes it to 4" in proc.stderr
    assert not (tmp_path / "fixed").exists()


def test_aoti_refuses_other_devices(aoti):
    if not torch.cuda.is_available():
        proc = run([binary(aoti), "--device", "cuda"], check=False)
        assert proc.returncode == 1 and proc.stderr.startswith("error: --device cuda: CUDA is not available")


def test_aoti_refuses_data_dependent_control_flow(tmp_path):
    proc = scaffold("new", "gate", "--model", "examples.models.control_flow:make_gate", "--input", "x=4x8",
                    "--backend", "aoti", "--output", tmp_path / "gate", check=False)
    assert proc.returncode == 1
    assert "torch.export could not capture the model" in proc.stderr
    assert "use the TorchScript backend (--backend torchscript --method script)" in proc.stderr
    assert not (tmp_path / "gate").exists()


@pytest.mark.parametrize("which", ["gate-app", "cell-aoti"])
def test_bench_reports_every_variant(projects, which, aoti):
    root = generated(projects, "gate-app", *GATE) if which == "gate-app" else aoti
    proc = scaffold("bench", root, "--rounds", "2", "--iters", "5", "--warmup", "1", "--threads", "1", "--json")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    backend = "aoti" if which == "cell-aoti" else "torchscript"
    assert result["project"] == which
    assert [v["name"] for v in result["variants"]] == ["Python eager (inference_mode)", f"Python {backend} artifact",
                                                       f"C++ {backend} binary"]
    for v in result["variants"]:
        assert 0 < v["p50_ms"] <= v["p90_ms"] and v["ratio_p50"] > 0
    assert result["variants"][0]["ratio_p50"] == 1.0 and result["threads"] == 1 and result["cpp_first_call_ms"] > 0
    table = scaffold("bench", root, "--rounds", "1", "--iters", "3").stdout
    assert "p50 / eager" in table and f"C++ {backend} binary" in table


def test_existing_torchscript_file(tmp_path):
    """A .pt someone already has: loaded, frozen, verified, and its argument names guide the --input error."""
    source = tmp_path / "given.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Linear(5, 2), torch.nn.Sigmoid())).save(str(source))
    proc = scaffold("new", "given", "--model", source, "--output", tmp_path / "no", check=False)
    assert proc.returncode == 1
    assert "pass one --input per required forward argument, in order: --input input=SHAPE" in proc.stderr
    scaffold("new", "given", "--model", source, "--input", "input=4x5", "--output", tmp_path / "given")
    manifest = json.loads((tmp_path / "given/model/manifest.json").read_text())
    assert manifest["method"] == "loaded" and manifest["signature"]["outputs"][0]["shape"] == [4, 2]
    reloaded = torch.jit.load(str(tmp_path / "given/model/model.pt"))
    x = torch.randn(4, 5)
    assert torch.allclose(reloaded(x), torch.jit.load(str(source))(x))
