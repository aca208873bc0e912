"""Issue 14: fail fast, progress, every spec error at once, choices in --help, the probe cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, scaffold
from test_cli_errors import invoke
from typer.testing import CliRunner

from generator import __version__
from generator.cli import app
from generator.sources import check_source, torchvision_models_dir, torchvision_names
from generator.spec import SpecErrors, spec_from_mapping
from generator.toolchain import cache_dir, cache_get, cache_put

ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


def quick(code: str, *, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          env={**ENV, **(env or {})}, timeout=120, check=False)


# ------------------------------------------------------------------------------------------------ fail fast

FAIL_FAST = """
import sys
from generator.cli import app
try:
    app({args!r})
except SystemExit as e:
    code = e.code
print("torch imported:", "torch" in sys.modules, "exit:", code)
"""


@pytest.mark.parametrize("args, fragment", [
    (["--model", "resnt18"], "unknown model 'resnt18'.*did you mean resnet18"),
    (["--model", "no_such_pkg.nets:Net"], "cannot import 'no_such_pkg.nets'"),
    (["--model", "missing.pt"], "model file not found"),
    (["--model", "resnet18", "--weights", "nope.pth"], "weights file not found: .*nope.pth"),
    (["--model", "resnet18", "--input", "x=1xx3"], "positive integers"),
])
def test_fails_before_importing_torch(tmp_path, args, fragment):
    """Everything knowable without torch fails before torch is imported (what makes it fast)."""
    proc = quick(FAIL_FAST.format(args=["new", "app", "--output", str(tmp_path / "app"), *args]))
    assert "torch imported: False exit: 1" in proc.stdout, proc.stdout + proc.stderr
    assert re.search(fragment, proc.stderr), proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_output_fails_before_torch(tmp_path):
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    proc = quick(FAIL_FAST.format(args=["new", "app", "--output", str(dest), "--model", "resnet18"]))
    assert "torch imported: False exit: 1" in proc.stdout, proc.stdout + proc.stderr
    assert "exists and is not empty" in proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["mine.txt"]


def test_known_sources_pass_the_quick_check(tmp_path):
    check_source("resnet18")
    check_source("examples.models.cell:Cell")  # the package is found from the current directory (the repo)
    (tmp_path / "m.pt").write_bytes(b"x")
    check_source(str(tmp_path / "m.pt"), weights="DEFAULT")


@pytest.mark.e2e  # imports torchvision (~4 s)
def test_registry_scan_matches_list_models():
    """The quick check reads the same registry torchvision.models.list_models() does."""
    import torchvision.models as tvm

    assert torchvision_names(torchvision_models_dir()) == set(tvm.list_models())


# ------------------------------------------------------------------------------------------ spec errors at once


def test_every_spec_error_at_once():
    data = {"project": {"name": "app"}, "model": {"source": "resnet18", "methd": "trace"},
            "runtime": {"warmup": "ten"},
            "inputs": [{"name": "x", "shape": [1, 0]}, {"name": "y", "shape": [2], "dtype": "flot"}]}
    with pytest.raises(SpecErrors) as info:
        spec_from_mapping(data)
    messages = info.value.messages
    assert len(messages) == 4, messages
    assert "unknown key 'methd'" in messages[0]
    assert messages[1].startswith("[[inputs]] #1.shape") and messages[2].startswith("[[inputs]] #2.dtype")
    assert messages[3].startswith("[runtime].warmup")


def test_one_spec_error_is_a_plain_error():
    with pytest.raises(Exception) as info:
        spec_from_mapping({"project": {"name": "app"}, "model": {"source": "resnet18", "methd": "x"}})
    assert not isinstance(info.value, SpecErrors) and "methd" in str(info.value)


def test_cli_prints_the_first_as_error_and_the_rest_as_also(tmp_path):
    spec = tmp_path / "scaffold.toml"
    spec.write_text('[project]\nname = "app"\n[model]\nsource = "resnet18"\nmethd = "trace"\n'
                    '[runtime]\nwarmup = "ten"\n')
    result = CliRunner().invoke(app, ["new", "--spec", str(spec), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(("error:", "  also:"))]
    assert len(lines) == 2 and "methd" in lines[0] and lines[1].startswith("  also: [runtime].warmup"), lines


# ----------------------------------------------------------------------------------------------- the CLI


def test_choices_in_help_and_no_bool_on_flags():
    result = CliRunner().invoke(app, ["new", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    assert "trace|script" in result.stdout and "torchscript|aoti" in result.stdout and "github" in result.stdout
    assert "<bool>" not in result.stdout, result.stdout
    for command in ("doctor", "build", "update"):
        assert "<bool>" not in CliRunner().invoke(app, [command, "--help"]).stdout


def test_bad_choice_is_one_error_line(tmp_path):
    code, line = invoke("new", "app", "--output", tmp_path / "app", "--model", "resnet18", "--method", "compile")
    assert code == 2 and "'compile' is not one of 'trace', 'script'" in line, line
    code, line = invoke("new", "app", "--output", tmp_path / "app", "--no-such-flag")
    assert code == 2 and "--no-such-flag" in line, line


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    assert __version__ == version("scaffold")
    assert CliRunner().invoke(app, ["--version"]).stdout.strip() == f"scaffold {__version__}"


def test_quiet_and_verbose_contradict(tmp_path):
    code, line = invoke("new", "app", "--output", tmp_path / "app", "--model", "resnet18", "-q", "-v")
    assert code == 1 and "contradict" in line


# --------------------------------------------------------------------------------------------- the probe cache


def test_probe_cache_ignores_corrupt_and_invalid_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "scaffold"
    assert cache_get("k", lambda v: True) is None  # no file yet
    cache_put("k", [20, "probed: x"])
    assert cache_get("k", lambda v: True) == [20, "probed: x"]
    assert cache_get("k", lambda v: v == "something else") is None  # an entry that does not validate
    assert [p.name for p in cache_dir().iterdir()] == ["probes.json"]  # no temporary file left behind
    (cache_dir() / "probes.json").write_text("{not json")
    assert cache_get("k", lambda v: True) is None
    cache_put("k2", 17)  # a corrupt file is replaced, not appended to
    assert json.loads((cache_dir() / "probes.json").read_text()) == {"k2": 17}
    (cache_dir() / "probes.json").write_text("[1, 2]")
    assert cache_get("k2", lambda v: True) is None


def test_relative_xdg_cache_home_is_ignored(monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")  # the XDG spec: relative values are invalid
    assert cache_dir() == Path.home() / ".cache" / "scaffold"


@pytest.mark.e2e  # probes libtorch's headers with the compiler once (~7 s)
def test_doctor_pays_the_header_probe_once(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    first = scaffold("doctor", "--json", env=env, check=False)
    cached = json.loads((tmp_path / "scaffold" / "probes.json").read_text())
    assert any(isinstance(v, list) and v[1].startswith("probed") for v in cached.values()), cached
    second = scaffold("doctor", "--json", env=env, check=False)
    row = [json.loads(p.stdout)["checks"] for p in (first, second)]
    assert [c for c in row[0] if c["item"] == "C++ standard"] == [c for c in row[1] if c["item"] == "C++ standard"]
    (tmp_path / "scaffold" / "probes.json").write_text("\x00garbage")
    third = scaffold("doctor", "--json", env=env, check=False)
    assert json.loads(third.stdout)["checks"] == row[0]


# ------------------------------------------------------------------------------------------------- progress


def test_progress_plain_lines_and_times_when_not_a_terminal(tmp_path):
    """Not a terminal: one line per stage, then the times; --quiet: neither."""
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert "... importing torch" in result.stderr and "stages:" in result.stderr, result.stderr
    quiet = CliRunner().invoke(app, ["doctor", "--json", "--quiet"])
    assert quiet.stderr.strip() == "", quiet.stderr


# ------------------------------------------------------------------------------ AOTI: dims that share a symbol


@pytest.mark.e2e  # a torch.export of a small model (~6 s here)
def test_shared_dims_come_from_torch_exports_symbols():
    """Cell adds linear(x) to h: export makes both batch dims one symbol; the runner gets them as one group."""
    import torch

    from examples.models.cell import Cell
    from generator.export.aoti import shared_dims
    from generator.spec import InputSpec

    class Spec:
        inputs = (InputSpec("x", (3, 4), "float32", dynamic=(0,)), InputSpec("h", (3, 4), "float32", dynamic=(0,)))

    auto = torch.export.Dim.AUTO
    program = torch.export.export(Cell().eval(), (torch.randn(3, 4), torch.randn(3, 4)),
                                  dynamic_shapes=({0: auto}, {0: auto}), strict=False)
    assert shared_dims(program, Spec) == [["0:0", "1:0"]]


# ------------------------------------------------------------------------------ scaffold run after a Bazel build


def test_run_finds_the_bazel_binary(tmp_path):
    """A project built only with Bazel has bazel-bin/app (a link into Bazel's output base), no build/."""
    from test_cli_errors import GOOD_MANIFEST, write_project

    root = write_project(tmp_path / "app", GOOD_MANIFEST)
    out_base = tmp_path / "output-base" / "bin"  # what the bazel-bin link points to
    out_base.mkdir(parents=True)
    app_binary = out_base / "app"
    app_binary.write_text('#!/bin/sh\necho "bazel app ran with: $*"\nexit 7\n')
    app_binary.chmod(0o755)
    (root / "bazel-bin").symlink_to(out_base)
    proc = scaffold("run", root, "--", "--iters", "1", check=False)
    assert proc.returncode == 7 and "bazel app ran with: --iters 1" in proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------- one dtype table


def test_one_dtype_table_agrees_with_torch():
    import torch

    from generator import cppnames, dtypes, spec
    from generator.export import common

    assert spec.DTYPES == dtypes.DTYPES and cppnames.SCALAR_TYPES is dtypes.SCALAR_TYPES
    assert dtypes.torch_dtypes() == common.TORCH_DTYPES
    for d in dtypes.TABLE:
        torch_dtype = common.TORCH_DTYPES[d.name]
        assert torch_dtype.is_floating_point == d.floating
        if d.int_range and d.name != "bool":
            info = torch.iinfo(torch_dtype)
            assert d.int_range == (info.min, info.max + (d.name != "int64"))  # [low, high): randint's bound


# ----------------------------------------------------------------------------- template decisions in Python


def test_ci_variants_are_decided_in_python():
    from generator.pipeline import libtorch_variants
    from generator.toolchain import CudaHints, TorchInfo

    def info(version: str, cuda: str | None) -> TorchInfo:
        return TorchInfo(version=version, root=Path("/t"), cmake_prefix=Path("/t"), cxx11_abi=True, cxx_standard=20,
                         cxx_standard_source="probed", cuda=CudaHints(torch_cuda=cuda) if cuda else None)

    assert libtorch_variants(info("2.14.1+cpu", None)) == ["cpu"]
    assert libtorch_variants(info("2.14.1+cu130", "13.0")) == ["cpu", "cu130"]
    assert libtorch_variants(info("2.14.1", "12.8")) == ["cpu", "cu128"]  # no local tag: from the CUDA version


def test_files_without_the_j2_suffix_are_copied_byte_for_byte(tmp_path):
    from generator.render import render_tree, template_root

    written = render_tree("bazel", {"name": "app", "bazel_module_name": "app", "bazel_workspace_name": "app",
                                    "scaffold_version": "0", "torch_version": "2", "torch_build": "CPU",
                                    "torch_base_version": "2", "cxx_standard": 20, "runner_source": "x.cpp"},
                          tmp_path)
    plain = [p for p in (template_root() / "bazel").rglob("*") if p.is_file() and p.suffix != ".j2"]
    assert plain, "the bazel templates hold plain files (third_party/torch)"
    for source in plain:
        rel = source.relative_to(template_root() / "bazel")
        assert rel in written and (tmp_path / rel).read_bytes() == source.read_bytes()
    assert (template_root() / "project" / "dot-clang-format").is_file()  # no Jinja in it: a plain file


UPDATE_SPEC = '[project]\nname = "app"\n[model]\nsource = "resnet18"\n'


@pytest.mark.parametrize("args, fragment", [
    (["--model", "resnt18"], "unknown model 'resnt18'.*did you mean resnet18"),
    (["--weights", "nope.pth"], "weights file not found: .*nope.pth"),
    (["--model-config", "use_cache"], "--model-config 'use_cache': expected KEY=VALUE"),
    (["--input", "x=1x0"], "positive integers"),
])
def test_update_fails_before_importing_torch(tmp_path, args, fragment):
    """`update` checks its flags, the project's spec and the model source before torch, as `new` does."""
    project = tmp_path / "app"
    project.mkdir()
    (project / "scaffold.toml").write_text(UPDATE_SPEC)
    proc = quick(FAIL_FAST.format(args=["update", str(project), "--allow-dirty", *args]), cwd=tmp_path)
    assert "torch imported: False exit: 1" in proc.stdout, proc.stdout + proc.stderr
    assert re.search(fragment, proc.stderr), proc.stderr
    assert sorted(p.name for p in project.iterdir()) == ["scaffold.toml"]


def test_update_finds_a_module_beside_the_project(tmp_path, monkeypatch):
    """`update` imports pkg.module:attr from the directory above the project too; the quick check agrees."""
    (tmp_path / "mynets_beside").mkdir()
    (tmp_path / "mynets_beside" / "__init__.py").write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(Exception, match="cannot import 'mynets_beside.nets'"):
        check_source("mynets_beside.nets:Net")
    check_source("mynets_beside.nets:Net", also_search=[tmp_path])
    assert str(tmp_path) not in sys.path


def test_library_noise_is_dropped_unless_verbose(caplog):
    """Known third-party lines that say nothing actionable (torchao's Enum registration, transformers' loss_type)
    are filtered on their own loggers; other lines of the same loggers still show."""
    import logging

    from generator.progress import LIBRARY_NOISE, quiet_library_noise

    quiet_library_noise()
    quiet_library_noise()  # idempotent: one filter per logger
    for name, fragments in LIBRARY_NOISE.items():
        logger = logging.getLogger(name)
        assert sum(type(f).__name__ == "_DropNoise" for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=name):
            caplog.clear()
            logger.warning("x %s y", fragments[0])
            logger.warning("something else went wrong")
        assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
