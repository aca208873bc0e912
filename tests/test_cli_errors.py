"""Bad input: one clear line, a non-zero exit, and nothing half-written, exactly as a user sees it."""

import os
import re
import site
import sys
from pathlib import Path

import pytest
from conftest import REPO, scaffold


def error_line(proc) -> str:
    """The user sees one `error:` line on stderr and no traceback."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--model", "resnet81"], "unknown model 'resnet81'.*did you mean resnet18"),
    (["--model", "no_such_pkg.nets:Net"], "cannot import 'no_such_pkg.nets'"),
    (["--model", "tests.models.faulty:Missing"], "has no attribute 'Missing'"),
    (["--model", "tests.models.faulty:not_a_module"], "gave a int, not a torch.nn.Module"),
    (["--model", "tests.models.faulty:needs_arguments"], "no arguments"),
    (["--model", "tests.models.faulty:Raises", "--input", "x=2x2"],
     "forward raised ValueError .*this model refuses every input"),
    (["--model", "tests.models.faulty:FrozenBranch", "--input", "x=4x4"],
     "matches eager on the example input but not on another one.*use --method script"),
    (["--model", "tests.models.faulty:ReturnsString", "--input", "x=2"], "output 'out\\[1\\]' is a str"),
    (["--model", "tests.models.faulty:Raises"], "no inputs known .* pass one --input"),
    (["--model", "missing-file.pt"], "model file not found: missing-file.pt"),
    (["--model", "resnet18", "--method", "compile"], "expected one of trace, script"),
    (["--model", "resnet18", "--input", "x=1xx3"], "positive integers"),
    ([], r"\[model\].source: required"),
])
def test_bad_new(tmp_path, args, fragment):
    proc = scaffold("new", "app", "--output", tmp_path / "app", *args, check=False)
    assert proc.returncode == 1
    assert re.search(fragment, error_line(proc)), proc.stderr
    assert leftovers(tmp_path) == []  # neither the project nor a scratch directory is left behind


@pytest.mark.parametrize("name", ["1app", "my app", "test", "a" * 70])
def test_bad_project_name(tmp_path, name):
    proc = scaffold("new", name, "--model", "resnet18", "--output", tmp_path / "out", check=False)
    assert "is not usable" in error_line(proc) or "reserved" in error_line(proc)
    assert leftovers(tmp_path) == []


def test_non_empty_output_needs_force(tmp_path):
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    proc = scaffold("new", "app", "--model", "examples.models.cell:Cell", "--output", dest, check=False)
    assert "exists and is not empty: pass --force" in error_line(proc)
    assert leftovers(dest) == ["keep.txt"]


def test_force_replaces_only_that_directory(tmp_path):
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    (tmp_path / "sibling.txt").write_text("untouched")
    scaffold("new", "app", "--model", "examples.models.cell:Cell", "--output", dest, "--force")
    assert not (dest / "stale.txt").exists() and (dest / "model" / "model.pt").is_file()
    assert leftovers(tmp_path) == ["app", "sibling.txt"]


def test_failed_force_keeps_the_old_project(tmp_path):
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "precious.txt").write_text("old")
    proc = scaffold("new", "app", "--model", "tests.models.faulty:Raises", "--input", "x=2", "--output", dest,
                    "--force", check=False)
    error_line(proc)
    assert leftovers(dest) == ["precious.txt"] and leftovers(tmp_path) == ["app"]


def test_force_refuses_the_current_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    proc = scaffold("new", "app", "--model", str(REPO / "no.pt"), "--output", ".", "--force", cwd=tmp_path,
                    check=False, env={"PYTHONPATH": str(REPO)})
    assert "holds the current directory" in error_line(proc)
    assert leftovers(tmp_path) == ["mine.txt"]


def test_toml_syntax_error(tmp_path):
    spec = tmp_path / "scaffold.toml"
    spec.write_text('[project]\nname = "app"\n\n[model]\nsource = resnet18\n')
    proc = scaffold("new", "--spec", spec, "--output", tmp_path / "app", check=False)
    assert "TOML syntax error" in error_line(proc) and "line 5" in error_line(proc)


def test_spec_wrong_type(tmp_path):
    spec = tmp_path / "scaffold.toml"
    spec.write_text('[project]\nname = "app"\n[model]\nsource = "resnet18"\n[runtime]\nwarmup = "ten"\n')
    proc = scaffold("new", "--spec", spec, "--output", tmp_path / "app", check=False)
    assert "[runtime].warmup: expected an integer, got a string 'ten'" in error_line(proc)


def test_build_needs_a_project(tmp_path):
    proc = scaffold("build", tmp_path, check=False)
    assert "is not a scaffold project" in error_line(proc)


def test_run_before_build(tmp_path):
    root = tmp_path / "app"
    scaffold("new", "app", "--model", "examples.models.cell:Cell", "--output", root)
    proc = scaffold("run", root, check=False)
    assert "is not built yet: run `scaffold build" in error_line(proc)


def test_build_without_a_compiler(tmp_path):
    root = tmp_path / "app"
    scaffold("new", "app", "--model", "examples.models.cell:Cell", "--output", root)
    proc = scaffold("build", root, check=False, env={"CXX": "/nonexistent/c++"})
    assert "no C++ compiler found (CXX=/nonexistent/c++ is not on PATH)" in error_line(proc)
    assert not (root / "build").exists()


def test_build_without_cmake(tmp_path):
    """The base interpreter (not the venv, whose bin/ holds PyPI's cmake) with an empty PATH: no cmake anywhere."""
    base = Path(getattr(sys, "_base_executable", sys.executable))
    if (base.parent / "cmake").exists():
        pytest.skip(f"{base.parent} holds a cmake, so it cannot be hidden from scaffold")
    root = tmp_path / "app"
    scaffold("new", "app", "--model", "examples.models.cell:Cell", "--output", root)
    env = {**os.environ, "PATH": str(tmp_path / "empty"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()])}
    import subprocess

    proc = subprocess.run([str(base), "-m", "generator", "build", str(root)], capture_output=True, text=True,
                          env=env, cwd=REPO, check=False)
    assert "cmake not found: pip install cmake" in error_line(proc)


def test_help_and_version():
    for args in (["--help"], ["new", "--help"], ["build", "--help"], ["run", "--help"]):
        proc = scaffold(*args)
        assert "Usage" in proc.stdout
    assert scaffold("--version").stdout.startswith("scaffold ")
