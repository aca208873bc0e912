"""Bad input: one clear line, a non-zero exit, and nothing half-written, exactly as a user sees it."""

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, scaffold
from typer.testing import CliRunner

from generator.cli import app


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
    (["--model", "missing-file.pt"], "model file not found: .*/missing-file.pt"),
    (["--model", "resnet18", "--input", "x=1xx3"], "positive integers"),
    ([], r"\[model\].source: required"),
])
def test_bad_new(tmp_path, args, fragment):
    code, line = invoke("new", "app", "--output", tmp_path / "app", *args)  # in-process: no Python start per case
    assert code == 1 and re.search(fragment, line), line
    assert leftovers(tmp_path) == []  # neither the project nor a scratch directory is left behind


def test_bad_new_as_a_subprocess(tmp_path):
    """One of the above exactly as a user sees it: a process, its stderr, its exit code."""
    proc = scaffold("new", "app", "--output", tmp_path / "app", "--model", "resnet81", check=False)
    assert proc.returncode == 1 and "did you mean resnet18" in error_line(proc)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("name", ["1app", "my app", "test", "a" * 70])
def test_bad_project_name(tmp_path, name):
    code, line = invoke("new", name, "--model", "resnet18", "--output", tmp_path / "out")
    assert code == 1 and ("is not usable" in line or "reserved" in line), line
    assert leftovers(tmp_path) == []


def test_non_empty_output_needs_force(tmp_path):
    dest = tmp_path / "app"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    code, line = invoke("new", "app", "--model", "examples.models.cell:Cell", "--output", dest)
    assert code == 1 and "exists and is not empty: pass --force" in line
    assert leftovers(dest) == ["keep.txt"]


def old_project(dest: Path) -> Path:
    """What --force replaces: a directory scaffold made (scaffold.toml and model/manifest.json)."""
    (dest / "model").mkdir(parents=True)
    (dest / "scaffold.toml").write_text("# old\n")
    (dest / "model" / "manifest.json").write_text("{}")
    return dest


def test_force_replaces_only_that_directory(tmp_path):
    dest = old_project(tmp_path / "app")
    (dest / "stale.txt").write_text("old")
    (tmp_path / "sibling.txt").write_text("untouched")
    result = CliRunner().invoke(app, ["new", "app", "--model", "examples.models.cell:Cell", "--output", str(dest),
                                      "--force"])
    assert result.exit_code == 0, result.output
    assert not (dest / "stale.txt").exists() and (dest / "model" / "model.pt").is_file()
    assert leftovers(tmp_path) == ["app", "sibling.txt"]


def test_failed_force_keeps_the_old_project(tmp_path):
    dest = old_project(tmp_path / "app")
    (dest / "precious.txt").write_text("old")
    code, line = invoke("new", "app", "--model", "tests.models.faulty:Raises", "--input", "x=2", "--output", dest,
                        "--force")
    assert code == 1 and "forward raised ValueError" in line
    assert leftovers(dest) == ["model", "precious.txt", "scaffold.toml"] and leftovers(tmp_path) == ["app"]


def test_force_refuses_the_current_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    code, line = invoke("new", "app", "--model", REPO / "no.pt", "--output", ".", "--force", cwd=tmp_path)
    assert code == 1 and "is the current directory" in line
    assert leftovers(tmp_path) == ["mine.txt"]


def test_toml_syntax_error(tmp_path):
    spec = tmp_path / "scaffold.toml"
    spec.write_text('[project]\nname = "app"\n\n[model]\nsource = resnet18\n')
    code, line = invoke("new", "--spec", spec, "--output", tmp_path / "app")
    assert code == 1 and "TOML syntax error" in line and "line 5" in line


def test_spec_wrong_type(tmp_path):
    spec = tmp_path / "scaffold.toml"
    spec.write_text('[project]\nname = "app"\n[model]\nsource = "resnet18"\n[runtime]\nwarmup = "ten"\n')
    code, line = invoke("new", "--spec", spec, "--output", tmp_path / "app")
    assert code == 1 and "[runtime].warmup: expected an integer, got a string 'ten'" in line


def test_build_needs_a_project(tmp_path):
    code, line = invoke("build", tmp_path)
    assert code == 1 and "is not a scaffold project" in line


@pytest.fixture(scope="module")
def cell_project(tmp_path_factory) -> Path:
    """A generated, unbuilt project (in-process), shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("cell") / "app"
    result = CliRunner().invoke(app, ["new", "app", "--model", "examples.models.cell:Cell", "--output", str(root)])
    assert result.exit_code == 0, result.output
    return root


def test_run_before_build(cell_project):
    code, line = invoke("run", cell_project)
    assert code == 1 and "is not built yet: run `scaffold build" in line


def test_build_without_a_compiler(cell_project, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    code, line = invoke("build", cell_project)
    assert code == 1 and "no C++ compiler found (CXX=/nonexistent/c++ is not on PATH)" in line
    assert not (cell_project / "build").exists()


def test_build_without_cmake(tmp_path):
    """The base interpreter (not the venv, whose bin/ holds PyPI's cmake) with an empty PATH: no cmake anywhere."""
    base = Path(getattr(sys, "_base_executable", sys.executable))
    if (base.parent / "cmake").exists():
        pytest.skip(f"{base.parent} holds a cmake, so it cannot be hidden from scaffold")
    root = tmp_path / "app"
    scaffold("new", "app", "--model", "examples.models.cell:Cell", "--output", root)
    env = {**os.environ, "PATH": str(tmp_path / "empty"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *site.getsitepackages()])}
    proc = subprocess.run([str(base), "-m", "generator", "build", str(root)], capture_output=True, text=True,
                          env=env, cwd=REPO, check=False)
    assert "cmake not found: pip install cmake" in error_line(proc)


def test_help_and_version():
    for args in (["--help"], ["new", "--help"], ["build", "--help"], ["run", "--help"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.stdout
    assert scaffold("--version").stdout.startswith("scaffold ")  # the console entry point itself


# --------------------------------------------------------------------------------------------- issue 8, items 15-17
# In-process (typer's CliRunner): the same command line, without a Python start per case.

CELL = "examples.models.cell:Cell"


def invoke(*args: object, cwd: Path = REPO):
    """`scaffold ARGS` in this process; returns (exit code, the one `error:` line)."""
    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return result.exit_code, errors[0]


def write_project(root: Path, manifest: str, spec: str = '[project]\nname = "app"\n[model]\nsource = "x"\n') -> Path:
    """A hand-made project directory (no export needed) with the given manifest and scaffold.toml text."""
    (root / "model").mkdir(parents=True)
    (root / "scaffold.toml").write_text(spec)
    (root / "model" / "manifest.json").write_text(manifest)
    return root


GOOD_MANIFEST = ('{"artifact": "model.pt", "backend": "torchscript", "torch": {"version": "2.14.1", "cuda": null, '
                 '"cxx11_abi": true, "cxx_standard": 20}}')


@pytest.mark.parametrize("output, fragment", [
    ("/proc/x", "cannot write in /proc"),
    ("/proc", "is a mount point"),
    ("", "is the current directory"),
    (".", "is the current directory"),
    ("..", "holds the current directory"),
    ("FILE/app", "is a file, not a directory"),
])
def test_output_that_cannot_be_written(tmp_path, output, fragment):
    (tmp_path / "FILE").write_text("a file")
    work = tmp_path / "work"
    work.mkdir()
    out = output.replace("FILE", str(tmp_path / "FILE"))
    code, line = invoke("new", "app", "--model", CELL, "--output", out, cwd=work)
    assert code == 1 and fragment in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE", "work"] and not any(work.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--input", "x=100000x100000x100"], "elements is more than"),
    (["--input", "x=1x3:uint8:-5..300"], r"does not fit uint8"),
    (["--input", "x=1x99999999999999999999999"], "must be positive integers"),
    (["--input", "x\n=1x3"], r"must be an identifier"),
    (["--model", "m\nfile(TOUCH PWNED)\n#.pt"], r"\[model\].source: control characters"),
    (["--model", "tests.models.exits:ExitsInInit"], r"constructing .* called sys.exit\(0\)"),
    (["--model", "tests.models.exits:ExitsInForward"], r"forward called sys.exit\(3\)"),
    (["--model", "tests.models.exits_at_import:Net"], r"importing 'tests.models.exits_at_import' called sys.exit\(5\)"),
])
def test_bad_new_in_process(tmp_path, args, fragment):
    code, line = invoke("new", "app", "--output", tmp_path / "app", *args)
    assert code == 1 and re.search(fragment, line), line
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("text, fragment", [
    (b'[project]\nname = "app"\n[model]\nsource = "caf\xe9"\n', "not UTF-8 text"),
    (b'[project]\nname = "app"\n[model]\nsource = "resnet18"\n[verify]\natol = nan\n',
     r"\[verify\].atol: expected a finite"),
    (b'[project]\nname = "app"\n[model]\nsource = "resnet18"\n[runtime]\niters = 1099511627776\n',
     r"\[runtime\].iters: expected an integer from 1 to 1000000000"),
    (b'[project]\nname = "abc\\n"\n[model]\nsource = "resnet18"\n', r"\[project\].name: control characters"),
    (b'[project]\nname = "Testing"\n[model]\nsource = "resnet18"\n', "reserved"),
    (b'x = ' + b'[' * 5000 + b']' * 5000 + b'\n', "nested too deeply|unknown key"),
    (b'[project]\nname = "app"\n[model]\nsource = "resnet18"\n' + b'[[inputs]]\nname = "x"\nshape = [1]\n' * 1025,
     "at most 1024"),
])
def test_bad_spec_file(tmp_path, text, fragment):
    spec = tmp_path / "scaffold.toml"
    spec.write_bytes(text)
    code, line = invoke("new", "--spec", spec, "--output", tmp_path / "app")
    assert code == 1 and re.search(fragment, line), line
    assert leftovers(tmp_path) == ["scaffold.toml"]


@pytest.mark.parametrize("manifest, spec, fragment", [
    ("[]", None, "the top level: expected a JSON object"),
    ('{"artifact": "../../etc/passwd", "backend": "torchscript", "torch": {}}', None, "artifact: expected"),
    ('{"artifact": "model.pt", "backend": "tensorflow", "torch": {}}', None, "backend: expected one of"),
    ('{"artifact": "model.pt", "backend": "torchscript", "torch": "2.14"}', None, "torch: expected an object"),
    ('{"artifact": "model.pt", "backend": "torchscript", "torch": {"cxx_standard": "20"}}', None,
     "torch.cxx_standard: expected int"),
    ("{", None, "is not valid JSON"),
    (GOOD_MANIFEST, "project = 5\n", "[project]: expected a table"),
])
def test_bad_project_at_build_doctor_bench(tmp_path, manifest, spec, fragment):
    root = write_project(tmp_path / "app", manifest, *([spec] if spec else []))
    for command in ("build", "bench"):
        code, line = invoke(command, root)
        assert code == 1 and fragment in line, (command, line)
    result = CliRunner().invoke(app, ["doctor", str(root)])  # a table with the failing project row, exit 1
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "point scaffold at a directory made by scaffold new" in " ".join(result.stdout.split())


def test_bad_golden_at_bench(tmp_path):
    """weights_only=True: a golden.pt that would run code when unpickled is refused, in one line."""
    root = write_project(tmp_path / "app", GOOD_MANIFEST)
    evil = tmp_path / "evil.pt"
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"inputs": [Evil()]}, evil)
    for content, fragment in ((evil.read_bytes(), "not a readable golden file"), (b"garbage", "not a readable"),
                              (None, "is missing")):
        golden = root / "model" / "golden.pt"
        if content is None:
            golden.unlink()
        else:
            golden.write_bytes(content)
        code, line = invoke("bench", root)
        assert code == 1 and fragment in line, line
    torch.save({"inputs": "not tensors"}, root / "model" / "golden.pt")
    code, line = invoke("bench", root)
    assert "'inputs' is not a list of tensors" in line
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a read-only bind mount")
def test_read_only_output_and_project(tmp_path):
    """Read-only for root too: a read-only bind mount in a private mount namespace."""
    ro = tmp_path / "ro"
    project = tmp_path / "ro" / "app"
    scaffold("new", "app", "--model", CELL, "--output", project)
    script = f"""
        mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}
        {sys.executable} -m generator new other --model {CELL} --output {ro / 'other'} || echo "new exit $?"
        {sys.executable} -m generator build {project} || echo "build exit $?"
    """
    proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=600,
                          env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
    if "mount:" in proc.stderr and "exit" not in proc.stdout:
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()}")
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "new exit 1" in proc.stdout and "build exit 1" in proc.stdout, proc.stdout + proc.stderr
    assert len(errors) == 2 and "Read-only file system" in errors[0] and "cannot write" in errors[1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in ro.iterdir()) == ["app"]
