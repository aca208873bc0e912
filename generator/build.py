"""Configure, build, test and run a generated project: the same commands its README gives."""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from generator.errors import ScaffoldError
from generator.spec import read_toml, spec_from_mapping
from generator.toolchain import TorchInfo, find_tool, require_build_tools, run_process, torch_info

USER_PRESET = "dev"


@dataclass(frozen=True)
class Project:
    """A generated project on disk: where it is, what it is called, what it was exported with."""

    root: Path
    name: str
    manifest: dict

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    def binary(self) -> Path | None:
        """The CMake build's binary, else the Bazel build's (bazel-bin/app, which finds model/ in its runfiles
        wherever it is started)."""
        exe = self.name + (".exe" if platform.system() == "Windows" else "")
        bazel_exe = "app" + (".exe" if platform.system() == "Windows" else "")
        for candidate in (self.build_dir / exe, self.build_dir / "Release" / exe, self.root / "bazel-bin" / bazel_exe):
            if candidate.is_file():
                return candidate
        return None


def open_project(root: Path) -> Project:
    """Read a generated project's scaffold.toml and model/manifest.json, or say why it is not one."""
    if not root.is_dir():
        raise ScaffoldError(f"{root} is not a directory")
    spec_file = root / "scaffold.toml"
    manifest_file = root / "model" / "manifest.json"
    if not spec_file.is_file() or not manifest_file.is_file():
        raise ScaffoldError(f"{root} is not a scaffold project (no scaffold.toml and model/manifest.json)")
    spec = spec_from_mapping(read_toml(spec_file), str(spec_file))
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScaffoldError(f"{manifest_file} is not valid JSON: {e}") from None
    except (OSError, RecursionError) as e:
        raise ScaffoldError(f"cannot read {manifest_file}: {getattr(e, 'strerror', None) or e}") from None
    check_manifest(manifest, manifest_file)
    return Project(root=root.resolve(), name=spec.name, manifest=manifest)


def check_manifest(manifest: object, path: Path) -> None:
    """The keys scaffold reads back (build, bench, doctor), with their types: a hand-edited or truncated
    manifest is one line naming the key, not a KeyError later."""
    from generator.spec import BACKENDS

    def bad(key: str, expected: str) -> ScaffoldError:
        return ScaffoldError(f"{path}: {key}: expected {expected}; regenerate the project with scaffold new")

    if not isinstance(manifest, dict):
        raise bad("the top level", "a JSON object")
    artifact = manifest.get("artifact")
    if not isinstance(artifact, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", artifact) or artifact in (".", ".."):
        raise bad("artifact", "the artifact's file name in model/ (model.pt or model.pt2)")
    if manifest.get("backend") not in BACKENDS:
        raise bad("backend", f"one of {', '.join(BACKENDS)}")
    torch_info_ = manifest.get("torch")
    if not isinstance(torch_info_, dict):
        raise bad("torch", "an object with version, cuda, cxx11_abi, cxx_standard")
    checks = {"version": (str,), "cuda": (str, type(None)), "cxx11_abi": (bool,), "cxx_standard": (int,)}
    for key, kinds in checks.items():
        value = torch_info_.get(key)
        if key in torch_info_ and (not isinstance(value, kinds) or (key == "cxx_standard" and isinstance(value, bool))):
            raise bad(f"torch.{key}", " or ".join("null" if k is type(None) else k.__name__ for k in kinds))


def user_presets(info: TorchInfo, ninja: Path | None) -> dict:
    """CMakeUserPresets.json: this machine's libtorch prefix and CUDA hints (git-ignored, rewritten by build)."""
    cache = {"CMAKE_PREFIX_PATH": str(info.cmake_prefix)}
    if info.cuda:
        cache.update(info.cuda.cache_variables())
    preset: dict = {"name": USER_PRESET, "displayName": f"This machine: torch {info.version} ({info.build})",
                    "inherits": "release", "cacheVariables": cache}
    if ninja:
        preset["generator"] = "Ninja"
        cache["CMAKE_MAKE_PROGRAM"] = str(ninja)
    return {
        "version": 3,
        "configurePresets": [preset],
        "buildPresets": [{"name": USER_PRESET, "configurePreset": USER_PRESET, "configuration": "Release"}],
        "testPresets": [{"name": USER_PRESET, "configurePreset": USER_PRESET, "configuration": "Release",
                         "output": {"outputOnFailure": True}}],
    }


def write_user_presets(root: Path, info: TorchInfo, ninja: Path | None) -> Path:
    path = root / "CMakeUserPresets.json"
    try:
        path.write_text(json.dumps(user_presets(info, ninja), indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise ScaffoldError(f"cannot write {path}: {e.strerror}; the project directory must be writable to "
                            "build in it (copy it somewhere writable)") from None
    return path


def configure_build_test(project: Project, *, test: bool = True, extra_cmake_args: list[str] | None = None,
                         echo=print) -> None:
    """cmake --preset dev, cmake --build --preset dev, ctest --preset dev; a failing step is one line."""
    cmake, ninja, _compiler = require_build_tools()
    info = torch_info()
    if info.cuda and info.cuda.problem:
        raise ScaffoldError(info.cuda.problem)
    write_user_presets(project.root, info, ninja)
    ctest = cmake.parent / ("ctest.exe" if platform.system() == "Windows" else "ctest")
    if not ctest.exists():
        ctest = find_tool("ctest") or ctest
    fresh = ["--fresh"] if stale_torch_dir(project, info) else []
    steps = [("configure", [str(cmake), "--preset", USER_PRESET, *fresh, *(extra_cmake_args or [])]),
             ("build", [str(cmake), "--build", "--preset", USER_PRESET, "--parallel", str(os.cpu_count() or 2)])]
    if test:
        steps.append(("test", [str(ctest), "--preset", USER_PRESET]))
    for step, cmd in steps:
        echo(f"$ {' '.join(cmd)}")
        proc = run_process(cmd, capture=False, log_to_stderr=True, cwd=project.root)  # killed on a signal
        if proc.returncode != 0:
            raise ScaffoldError(f"{step} failed (exit {proc.returncode}) in {project.root}; the output above says why")


def configured_torch_dir(root: Path) -> Path | None:
    """The Torch_DIR a project's build/ was configured with (CMake keeps it across reconfigures)."""
    cache = root / "build" / "CMakeCache.txt"
    if not cache.is_file():
        return None
    m = re.search(r"^Torch_DIR:PATH=(.+)$", cache.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
    return Path(m.group(1).strip()) if m and not m.group(1).endswith("-NOTFOUND") else None


def stale_torch_dir(project: Project, info: TorchInfo) -> bool:
    """CMake caches Torch_DIR: after switching torch, a plain reconfigure would quietly keep the old libtorch."""
    cached = configured_torch_dir(project.root)
    return cached is not None and not cached.resolve().is_relative_to(info.cmake_prefix.resolve())


def run_binary(project: Project, args: list[str]) -> int:
    binary = project.binary()
    if binary is None:
        raise ScaffoldError(f"{project.name} is not built yet: run `scaffold build {project.root}` (or `scaffold "
                            f"build --bazel {project.root}`) first")
    return run_process([str(binary), *args], capture=False).returncode
