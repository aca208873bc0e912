"""The generated project is a component: another CMake project links NAME::model, through find_package against an
install prefix or through add_subdirectory, and runs the README's own snippet (typed forward and generic run on the
golden inputs, checked against the golden outputs) plus a few threads sharing one Model."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import generated, run

from generator import cppnames
from generator.render import output_path
from generator.spec import InputSpec

BIN = Path(sys.executable).parent
STRUCTURED = ("--model", "examples.models.structured:Tagger", "--method", "script")
AOTI_CELL = ("--model", "examples.models.cell:Cell", "--backend", "aoti", "--dynamic", "x:0", "--dynamic", "h:0")

# Written by the test beside the README's main.cpp: several threads call run() on one shared Model, and forward()
# must refuse a wrong input naming the field.
CHECKS_CPP = """\
#include <{name}/model.h>
#include <{name}/tools.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <thread>
#include <vector>

namespace ns = {namespace};

int main() {{
  const int threads = 4;
  const int calls = 20;
  const auto model = ns::Model::load();
  const auto golden = ns::tools::load_golden(ns::tools::default_golden_path());
  std::atomic<int> failures{{0}};
  auto one = [&] {{
    double diff = 0;
    if (ns::tools::parity(model.run(golden.inputs), golden, diff)) {{
      ++failures;
    }}
  }};
  one();
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < threads * calls; ++i) {{
    one();
  }}
  const double sequential = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::vector<std::thread> pool;
  start = std::chrono::steady_clock::now();
  for (int t = 0; t < threads; ++t) {{
    pool.emplace_back([&] {{
      for (int i = 0; i < calls; ++i) {{
        one();
      }}
    }});
  }}
  for (auto& thread : pool) {{
    thread.join();
  }}
  const double concurrent = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::cout << "threads: " << (failures ? "MISMATCH" : "OK") << " " << model.backend() << " " << threads << "x" << calls
            << " calls: sequential " << sequential << " ms, concurrent " << concurrent << " ms" << std::endl;
  auto bad = golden.inputs;
  bad[0] = bad[0].unsqueeze(0);
  try {{
    model.forward(ns::Inputs::from(bad));
    std::cout << "forward accepted a wrong rank" << std::endl;
  }} catch (const ns::Error& e) {{
    std::cout << "forward refused: " << e.what() << std::endl;
  }}
  return failures ? 1 : 0;
}}
"""


def readme_snippet(root: Path) -> tuple[str, str]:
    """The consumer CMakeLists.txt and main.cpp from the project's README ("Use it from your code")."""
    text = (root / "README.md").read_text()
    section = text.split("## Use it from your code", 1)[1].split("\n## ", 1)[0]
    cmake = re.search(r"```cmake\n(.*?)```", section, re.DOTALL)
    cpp = re.search(r"```cpp\n(.*?)```", section, re.DOTALL)
    assert cmake and cpp, section
    return cmake.group(1), cpp.group(1)


def namespace(root: Path) -> str:
    m = re.search(r"^namespace (\w+) \{", (root / "include" / root.name / "model.h").read_text(), re.MULTILINE)
    assert m
    return m.group(1)


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return {**env, **extra}


def build_consumer(root: Path, where: Path, prefix_path: list[Path], *, subdirectory: bool = False,
                   cmake: Path = BIN / "cmake") -> Path:
    """The README's consumer project (plus checks.cpp), configured and built with warnings as errors."""
    cmake_text, cpp_text = readme_snippet(root)
    if subdirectory:
        line = f"find_package({root.name} CONFIG REQUIRED)"
        assert line in cmake_text
        cmake_text = cmake_text.replace(line, f'add_subdirectory("{root}" {root.name}-build)')
    cmake_text += "add_executable(checks checks.cpp)\ntarget_link_libraries(checks PRIVATE " + root.name + "::model)\n"
    where.mkdir(parents=True)
    (where / "CMakeLists.txt").write_text(cmake_text)
    (where / "main.cpp").write_text(cpp_text)
    (where / "checks.cpp").write_text(CHECKS_CPP.format(name=root.name, namespace=namespace(root)))
    build = where / "build"
    args = [cmake, "-S", where, "-B", build, "-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={BIN / 'ninja'}",
            "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_COMPILE_WARNING_AS_ERROR=ON", "-DCMAKE_CXX_FLAGS=-Wall -Wextra",
            "-DCMAKE_PREFIX_PATH=" + ";".join(map(str, prefix_path))]
    run(args, timeout=300)
    run([cmake, "--build", build], timeout=900)
    return build


def check_consumer(build: Path, cwd: Path, root: Path) -> str:
    """Runs the snippet and the checks from `cwd`, without LD_LIBRARY_PATH; returns the checks' output."""
    service = run([build / "service"], cwd=cwd, env=clean_env()).stdout
    assert "parity: OK" in service, service
    for field in re.findall(r"^\s+at::Tensor (\w+);", (root / "include" / root.name / "model.h").read_text(),
                            re.MULTILINE)[-1:]:
        assert f"{field} [" in service, service
    checks = run([build / "checks"], cwd=cwd, env=clean_env()).stdout
    assert "threads: OK" in checks, checks
    assert re.search(r"forward refused: \w+::Inputs::\w+ is \w+ \[1, ", checks), checks
    print(f"\n{root.name}: {checks.strip()}")
    return checks


@pytest.fixture(scope="module")
def structured(projects) -> Path:
    return generated(projects, "tagger-app", *STRUCTURED)


@pytest.mark.e2e
def test_find_package_from_an_install_prefix(structured, tmp_path):
    """cmake --install, then a separate project: find_package(NAME CONFIG REQUIRED), NAME::model, the README code."""
    prefix = tmp_path / "prefix"
    run([BIN / "cmake", "--install", structured / "build", "--prefix", prefix], timeout=600)
    name = structured.name
    for rel in (f"include/{name}/model.h", f"include/{name}/tools.h", f"lib/cmake/{name}/{name}Config.cmake",
                f"lib/cmake/{name}/{name}ConfigVersion.cmake", f"lib/cmake/{name}/{name}Targets.cmake",
                f"share/{name}/model/model.pt", f"bin/{name}"):
        assert (prefix / rel).is_file(), rel
    assert list(prefix.glob(f"lib/lib{name}_model.so*"))
    build = build_consumer(structured, tmp_path / "consumer", [prefix, torch.utils.cmake_prefix_path])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check_consumer(build, elsewhere, structured)
    # The typed outputs carry valid, documented names for nested dict/list outputs.
    header = (prefix / "include" / name / "model.h").read_text()
    assert re.search(r"at::Tensor out_0_logits;  // out\[0\]\['logits'\]: \d", header), header
    # The library found its model beside itself (the prefix), not in the source tree; the variable overrides it.
    proc = run([build / "service"], cwd=elsewhere, check=False,
               env=clean_env(TAGGER_APP_MODEL_DIR=str(tmp_path / "nowhere")))
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: model file not found: {tmp_path / 'nowhere' / 'model.pt'}"
    moved = structured / "model.away"
    (structured / "model").rename(moved)
    try:
        assert "parity: OK" in run([build / "service"], cwd=elsewhere, env=clean_env()).stdout
    finally:
        moved.rename(structured / "model")


@pytest.mark.e2e
def test_add_subdirectory_aoti(projects, tmp_path):
    """add_subdirectory(NAME): builds the library in the parent's tree; no tests of its own are registered."""
    root = generated(projects, "cell-aoti", *AOTI_CELL)
    build = build_consumer(root, tmp_path / "parent", [torch.utils.cmake_prefix_path], subdirectory=True)
    check_consumer(build, tmp_path, root)
    tests = run([BIN / "ctest", "--test-dir", build, "-N"], check=False).stdout
    assert "Total Tests: 0" in tests, tests
    cache = (build / "CMakeCache.txt").read_text()
    assert f"{root.name}_DEVELOPER_MODE:BOOL=OFF" in cache


@pytest.mark.e2e
def test_layout_and_thin_main(projects):
    """Library sources, public headers, a main.cpp that is only the command line."""
    root = generated(projects, "tagger-app", *STRUCTURED)
    name = root.name
    for rel in (f"include/{name}/model.h", f"include/{name}/tools.h", "src/model.cpp", "src/tools.cpp",
                "src/runner.h", "src/main.cpp", "cmake/install-rules.cmake", "cmake/install-config.cmake"):
        assert (root / rel).is_file(), rel
    main = (root / "src" / "main.cpp").read_text()
    assert "pickle_load" not in main and "/proc/cpuinfo" not in main  # golden loading and core counting moved out
    cmake = (root / "CMakeLists.txt").read_text()
    assert f"add_library({name}::model ALIAS {name}_model)" in cmake
    assert "PROJECT_IS_TOP_LEVEL" in cmake


# ------------------------------------------------------------------ C++ names (fast, no build)


def test_output_fields_are_valid_unique_identifiers():
    names = ["out[0]['logits']", "out[0]['pooled']", "out[1][0]", "out[2]", "out['class']", "out[0]_logits", "out"]
    fields = cppnames.output_fields([{"name": n, "shape": [2, 3], "dtype": "float32"} for n in names])
    idents = [f["field"] for f in fields]
    assert idents == ["out_0_logits", "out_0_pooled", "out_1_0", "out_2", "out_class", "out_0_logits_2", "out"]
    assert fields[0]["shape"] == "2x3" and fields[0]["scalar_type"] == "Float"
    assert cppnames.output_fields([{"name": "out", "shape": [], "dtype": "complex64"}])[0]["scalar_type"] == \
        "Undefined"


def test_input_fields_avoid_keywords_and_members():
    inputs = (InputSpec("new", (2, 3), "int64", 0, 30522, (0,)), InputSpec("list", (1,), "bool"),
              InputSpec("x", ()))
    fields = cppnames.input_fields(inputs)
    assert [f["field"] for f in fields] == ["new_", "list_", "x"]
    assert fields[0]["dims"] == [-1, 3] and (fields[0]["low"], fields[0]["high"]) == (0, 30522)
    assert (fields[1]["low"], fields[1]["high"]) == (0, 2) and fields[1]["scalar_type"] == "Bool"
    assert fields[2]["dims"] == [] and fields[2]["pattern"] == "scalar"


def test_namespace_and_template_paths():
    assert cppnames.namespace("my-app") == "my_app"
    assert cppnames.namespace("at") == "at_" and cppnames.namespace("class") == "class_"
    assert output_path(Path("include/__name__/model.h.j2"), "my-app") == Path("include/my-app/model.h")
    assert output_path(Path("dot-gitignore.j2"), "my-app") == Path(".gitignore")
