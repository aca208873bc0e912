"""The build stage's own decisions: presets for this machine, and when a cached configure must start fresh."""

import json

import torch
from packaging.version import Version

from generator.build import Project, stale_torch_dir, user_presets
from generator.toolchain import find_tool, torch_info


def test_user_presets_carry_this_machines_libtorch():
    info = torch_info()
    presets = user_presets(info, find_tool("ninja"))
    dev = presets["configurePresets"][0]
    assert dev["name"] == "dev" and dev["inherits"] == "release"
    assert dev["cacheVariables"]["CMAKE_PREFIX_PATH"] == torch.utils.cmake_prefix_path
    if torch.version.cuda:  # a CUDA wheel: the toolkit and the wheel's nvrtc must be found, not guessed
        assert info.cuda.problem is None, info.cuda.problem
        assert (info.cuda.toolkit_root / "include" / "cuda_runtime.h").is_file()
        assert "libnvrtc" in dev["cacheVariables"]["CUDA_nvrtc_LIBRARY"]
    json.dumps(presets)  # serialisable as written


def test_cxx_standard_is_probed_from_the_headers():
    info = torch_info()
    assert info.cxx_standard_source.startswith("probed")
    assert info.cxx_standard == (20 if Version(torch.__version__) >= Version("2.14") else 17)


def test_stale_torch_dir(tmp_path):
    info = torch_info()
    project = Project(root=tmp_path, name="app", manifest={})
    assert not stale_torch_dir(project, info)  # nothing configured yet
    (tmp_path / "build").mkdir()
    cache = tmp_path / "build" / "CMakeCache.txt"
    cache.write_text(f"Torch_DIR:PATH={info.cmake_prefix / 'Torch'}\n")
    assert not stale_torch_dir(project, info)
    cache.write_text("Torch_DIR:PATH=/opt/other-venv/lib/python3.11/site-packages/torch/share/cmake/Torch\n")
    assert stale_torch_dir(project, info)
