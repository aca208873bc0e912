"""Shared test helpers: run scaffold as a user would (a subprocess), and build each project flavour once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def scaffold(*args: object, cwd: Path | None = None, check: bool = True, env: dict | None = None,
             timeout: float = 1200) -> subprocess.CompletedProcess:
    """`python -m generator ARGS` from the repository root (so examples.models.* import), output captured."""
    full_env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "generator", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, env=full_env, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"scaffold {' '.join(map(str, args))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def run(cmd: list[object], cwd: Path | None = None, check: bool = True, timeout: float = 600,
        env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
                    f"--- stderr\n{proc.stderr}")
    return proc


def run_json(binary: Path, *args: object) -> dict:
    """Run a generated binary with --json and parse the one object it prints."""
    proc = run([binary, "--json", *args])
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, f"--json printed more than one line:\n{proc.stdout}"
    return json.loads(lines[0])


@pytest.fixture(scope="session")
def projects(tmp_path_factory) -> Path:
    """One directory for every project the session generates."""
    return tmp_path_factory.mktemp("projects")


_GENERATED: dict[str, tuple[Path, tuple[str, ...]]] = {}
_BUILT: set[str] = set()
_OWNER: dict[str, str] = {}  # project name -> the group (group_of) whose worker builds it
NEW_OUTPUT: dict[str, subprocess.CompletedProcess] = {}  # what `scaffold new` printed, per project name


def generated(projects: Path, name: str, *new_args: object, build: bool = True) -> Path:
    """Generate (and by default build) a project once per session; later calls reuse it.

    A project that is built from the start is made by one `scaffold new ... --build` (configure, build, ctest),
    as a user would; one generated with build=False and built later gets `scaffold build`. Asking for the same
    name with other arguments is a mistake in the tests, and fails.
    """
    args = tuple(map(str, new_args))
    _claim(projects, name)
    if name not in _GENERATED:
        root = projects / name
        NEW_OUTPUT[name] = scaffold("new", name, "--output", root, *args, *(["--build"] if build else []))
        _GENERATED[name] = (root, args)
        if build:
            _BUILT.add(name)
    root, first = _GENERATED[name]
    if first != args:
        pytest.fail(f"project {name} was generated with {first}, now asked for with {args}")
    if build and name not in _BUILT:
        scaffold("build", root)
        _BUILT.add(name)
    return root


@pytest.fixture(scope="session")
def resnet18_app(projects: Path, tmp_path_factory) -> dict:
    """`scaffold new resnet18-app --model resnet18 --weights FILE` (weights of a seeded resnet18, standing in for
    a trained one), built once for every file that needs a real classifier (test_e2e, test_image, test_travel):
    root, binary, the data directory holding the weights, and the eager model with those weights."""
    import torch
    import torchvision

    data = tmp_path_factory.mktemp("resnet18-data")
    torch.manual_seed(7)
    trained = torchvision.models.resnet18().eval()
    torch.save(trained.state_dict(), data / "resnet18-trained.pt")
    root = generated(projects, "resnet18-app", "--model", "resnet18", "--weights", data / "resnet18-trained.pt")
    return {"root": root, "binary": root / "build" / "resnet18-app", "data": data, "model": trained}


# ---- two workers (pytest -n 2, the README's test command) -------------------------------------------------
# Each test file is one unit of work for xdist, so a file's session-scoped builds are made once, in one worker.
# Files that share built projects (generated() names, resnet18_app) form one unit; generated() fails when a
# project is asked for from two units, so a new sharing cannot silently build a project twice or race on it.
# (xdist's own --dist loadgroup does not group under pytest 9: it renames node ids through an attribute pytest
# no longer reads. Hence the scheduler below.)
SHARED_BUILDS = frozenset({"test_e2e.py", "test_binary_safety.py", "test_component.py", "test_image.py",
                           "test_travel.py"})
# The units that take longest start first (measured with --durations=0), so both workers finish near together.
SLOW_FIRST = ("shared-builds", "test_docker.py", "test_bazel.py", "test_precision.py", "test_structured.py",
              "test_update.py", "test_transformers.py", "test_parity.py")


def group_of(path: str | Path) -> str:
    name = Path(path).name
    return "shared-builds" if name in SHARED_BUILDS else name


def _claim(projects: Path, name: str) -> None:
    """Record which group builds project `name`; a second group asking for it is a mistake in the tests."""
    current = os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[0]
    if not current:
        return
    group = group_of(current)
    if name not in _OWNER and os.environ.get("PYTEST_XDIST_WORKER"):
        # Once per name in a worker (then _OWNER has it). All workers' claims live beside their own directories.
        owners = projects.parent.parent / "project-owners"
        owners.mkdir(exist_ok=True)
        claim, mine = owners / name, owners / f".{name}.{os.getpid()}"
        mine.write_text(group)
        try:
            os.link(mine, claim)  # appears whole or not at all: another worker never reads it half-written
        except FileExistsError:
            _OWNER.setdefault(name, claim.read_text())
        finally:
            mine.unlink()
    first = _OWNER.setdefault(name, group)
    if first != group:
        pytest.fail(f"project {name} is built by group {first} and asked for by {group}: add both files to "
                    f"conftest.SHARED_BUILDS so one worker builds it once")


@pytest.hookimpl(optionalhook=True)  # an xdist hook: unknown without xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`-n N` (xdist's default --dist load) schedules whole groups (group_of), in collection order."""
    if config.option.dist != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid.split("::", 1)[0])

    config.option.loadscopereorder = False  # keep SLOW_FIRST's order, not "most tests first"
    return GroupScheduling(config, log)


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that runs a real Bazel build is end to end too: `-m "not e2e"` stays the fast lane. An xdist worker
    puts the slow groups first (the order it reports is the order the scheduler hands them out)."""
    for item in items:
        if item.get_closest_marker("bazel") and not item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.e2e)
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the workers collect; the order they report is the schedule
        return
    rank = {group: i for i, group in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(group_of(item.path), len(rank)))  # stable: file order otherwise
