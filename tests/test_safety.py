"""No data loss on any input or signal (issue 8, items 1-5 and 19), with real directories, real mounts (in a
user+mount namespace where unprivileged), real signals sent to a real `scaffold new`, and fault injection
(a process killed with os._exit between two steps) for the one window an atomic exchange does not close."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
from conftest import REPO

from generator import fsops
from generator.errors import ScaffoldError
from generator.render import (
    STAGING_MARKER,
    check_destination,
    destination_lock,
    mount_inside,
    replace_directory,
    staged,
)

SLOW = "tests.models.slow:Slow"


def fake_project(path: Path, tag: str = "old") -> Path:
    """What --force may replace: a directory scaffold made (scaffold.toml and model/manifest.json)."""
    (path / "model").mkdir(parents=True)
    (path / "scaffold.toml").write_text(f"# {tag}\n")
    (path / "model" / "manifest.json").write_text("{}")
    (path / "mine.txt").write_text(tag)
    return path


def beside(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def env_for(**extra: object) -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(REPO),
            **{k: str(v) for k, v in extra.items()}}


def start_scaffold(*args: object, **env: object) -> subprocess.Popen:
    # SIGINT at its default in the child: a suite started in the background by a non-interactive shell inherits
    # SIGINT ignored (POSIX job control), and Python then never raises KeyboardInterrupt.
    return subprocess.Popen([sys.executable, "-m", "generator", *map(str, args)], cwd=REPO, env=env_for(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"scaffold exited {proc.returncode} before it was ready:\n{out}\n{err}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{path} never appeared")


# ------------------------------------------------------------------------------------ 1: what --force may touch


def test_force_refuses_home_cwd_root_and_their_ancestors(tmp_path, monkeypatch):
    home = fake_project(tmp_path / "a" / "b" / "home")  # even one that looks like a project
    work = home / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for target in (tmp_path, tmp_path / "a", tmp_path / "a" / "b", home, work, Path("."), Path(""), Path("/"),
                   Path(".."), work / ".." / ".."):
        with (pytest.raises(ScaffoldError, match="home directory|current directory|root directory|cannot create"),
              staged(target, force=True)):
            pytest.fail("staged must refuse before yielding")
    assert (home / "mine.txt").read_text() == "old" and work.is_dir()
    assert beside(tmp_path / "a" / "b") == ["home"]


def test_force_refuses_a_directory_scaffold_did_not_make(tmp_path):
    dest = tmp_path / "docs"
    dest.mkdir()
    (dest / "thesis.tex").write_text("years of work")
    with pytest.raises(ScaffoldError, match="only replaces a project scaffold made"):
        check_destination(dest, force=True)
    with pytest.raises(ScaffoldError, match="exists and is not empty: pass --force"):
        check_destination(dest, force=False)
    link = tmp_path / "link"
    link.symlink_to(fake_project(tmp_path / "real"))
    with pytest.raises(ScaffoldError, match="symbolic link"):
        check_destination(link, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScaffoldError, match="not a directory"):
        check_destination(tmp_path / "file", force=True)


@pytest.mark.e2e  # real `scaffold new` processes: seconds each
def test_cli_force_on_the_parent_of_home(tmp_path):
    """The reported case, as a user runs it: HOME=.../home, --output ... (its parent) --force."""
    home = tmp_path / "users" / "me"
    home.mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "generator", "new", "app", "--model", SLOW, "--output",
                           str(tmp_path / "users"), "--force"], cwd=REPO, env=env_for(HOME=home),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "holds your home directory" in errors[0], proc.stderr
    assert (home / "notes.txt").read_text() == "mine" and beside(tmp_path / "users") == ["me"]


# --------------------------------------------------------------------------------------------- 2: without --force


def test_a_directory_appearing_during_export_is_never_replaced(tmp_path):
    dest = tmp_path / "app"
    with pytest.raises(ScaffoldError, match="appeared"), staged(dest, force=False) as scratch:
        (scratch / "new.txt").write_text("new")
        dest.mkdir()
        (dest / "theirs.txt").write_text("theirs")
    assert beside(dest) == ["theirs.txt"] and beside(tmp_path) == ["app"]


def test_the_final_move_never_replaces(tmp_path):
    """The kernel refuses (renameat2 RENAME_NOREPLACE), even an empty directory that appeared at the last moment."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    with pytest.raises(FileExistsError):
        fsops.rename_noreplace(src, dst)
    assert src.is_dir() and dst.is_dir()


@pytest.mark.e2e  # real `scaffold new` processes: seconds each
def test_cli_directory_appearing_during_export(tmp_path):
    """A real `scaffold new`, whose model's forward creates the output directory, as another program might."""
    dest = tmp_path / "app"
    proc = subprocess.run([sys.executable, "-m", "generator", "new", "app", "--model", SLOW, "--output", str(dest)],
                          cwd=REPO, env=env_for(SCAFFOLD_TEST_MKDIR=dest), capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "appeared" in errors[0], proc.stderr
    assert beside(dest) == ["theirs.txt"] and beside(tmp_path) == ["app"]


# --------------------------------------------------------------------------------------------- 3: mount points


def _namespace_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    proc = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True, check=False)
    return proc.returncode == 0


needs_mounts = pytest.mark.skipif(not _namespace_works(), reason="no user+mount namespaces (unshare -rm) here")


def in_mount_namespace(script: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a shell script in a private mount namespace: its mounts are real, and vanish with it."""
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-euc", script], cwd=REPO,
                          env=env_for(), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.e2e
@needs_mounts
def test_mount_points_are_found_and_refused(tmp_path):
    """A bind mount of the same file system (same st_dev: only the mount table shows it), a tmpfs (another
    st_dev: found by the walk alone, with the mount table hidden), and a target that is itself a mount."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "precious.txt").write_text("keep")
    bind = fake_project(tmp_path / "bind")
    (bind / "sub").mkdir()
    other = fake_project(tmp_path / "other")
    (other / "deep" / "er").mkdir(parents=True)
    itself = tmp_path / "itself"
    itself.mkdir()
    check = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from generator import render
        from generator.errors import ScaffoldError
        def refused(path, fragment):
            try:
                render.check_destination(Path(path), force=True)
            except ScaffoldError as e:
                assert fragment in str(e), str(e)
                return
            sys.exit(f"{{path}} was not refused")
        refused({str(bind)!r}, "holds a mount point ({bind / 'sub'})")
        refused({str(itself)!r}, "is a mount point")
        render._mount_points = lambda: []  # the st_dev walk on its own
        assert render.mount_inside(Path({str(other)!r})) == Path({str(other / 'deep' / 'er')!r})
        print("ok")
    """)
    script = tmp_path / "check.py"
    script.write_text(check)
    proc = in_mount_namespace(f"""
        mount --bind {data} {bind / 'sub'}
        mount -t tmpfs none {other / 'deep' / 'er'}
        echo tmp > {other / 'deep' / 'er' / 'f'}
        mount --bind {data} {itself}
        {sys.executable} {script}
        {sys.executable} -m generator new app --model {SLOW} --output {bind} --force || echo "exit $?"
        test -f {bind / 'sub' / 'precious.txt'}
    """)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stdout + proc.stderr
    assert "exit 1" in proc.stdout and "holds a mount point" in proc.stderr, proc.stdout + proc.stderr
    assert (data / "precious.txt").read_text() == "keep" and (bind / "mine.txt").read_text() == "old"
    assert beside(tmp_path) == ["bind", "check.py", "data", "itself", "other"]


def test_no_mount_in_an_ordinary_tree(tmp_path):
    tree = fake_project(tmp_path / "app")
    (tree / "link").symlink_to("/proc")  # a link to a mount is not walked into
    assert mount_inside(tree) is None


# --------------------------------------------------------------------------------------------- 4: atomic replacement


def test_force_swaps_atomically_and_leaves_nothing_beside(tmp_path):
    dest = fake_project(tmp_path / "app")
    with staged(dest, force=True) as scratch:
        assert (scratch / STAGING_MARKER).is_file()
        fake_project(scratch, "new")
    assert (dest / "mine.txt").read_text() == "new" and not (dest / STAGING_MARKER).exists()
    assert beside(tmp_path) == ["app"]


def test_replace_directory_for_other_commands(tmp_path):
    """The helper `scaffold update` uses: prepared beside dest, swapped in, the old tree removed."""
    dest = fake_project(tmp_path / "app")
    prepared = tmp_path / ".app.prepared"
    fake_project(prepared, "new")
    replace_directory(prepared, dest)
    assert (dest / "mine.txt").read_text() == "new" and beside(tmp_path) == ["app"]
    with pytest.raises(ScaffoldError, match="beside"):
        replace_directory(tmp_path / "elsewhere" / "x", dest)


def killed_while_swapping(tmp_path: Path, inject: str) -> subprocess.CompletedProcess:
    """Replace tmp_path/app under --force in a child that os._exit()s (no cleanup at all, as under SIGKILL)
    at the injected moment."""
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from generator import fsops, render
        {inject}
        with render.staged(Path({str(tmp_path / 'app')!r}), force=True) as scratch:
            (scratch / "scaffold.toml").write_text("new")
            (scratch / "model").mkdir()
            (scratch / "model" / "manifest.json").write_text("{{}}")
            (scratch / "mine.txt").write_text("new")
        raise SystemExit("the injected fault did not happen")
    """)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env_for(), capture_output=True, text=True,
                          timeout=120, check=False)


def test_killed_after_the_exchange(tmp_path):
    """With renameat2(RENAME_EXCHANGE) the destination is never missing: killed right after the swap, the new
    project is in place and the old one waits, marked, beside it; the next run removes it and says so."""
    dest = fake_project(tmp_path / "app")
    proc = killed_while_swapping(tmp_path, "render.remove_tree = lambda path: os._exit(9)")
    assert proc.returncode == 9, proc.stderr
    assert (dest / "mine.txt").read_text() == "new"
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "app" and not p.name.endswith("lock")]
    assert (leftover / STAGING_MARKER).is_file() and (leftover / "mine.txt").read_text() == "old"
    notes: list[str] = []
    with staged(dest, force=True, warn=notes.append) as scratch:
        fake_project(scratch, "third")
    assert any("removed" in n and leftover.name in n for n in notes), notes
    assert beside(tmp_path) == ["app"] and (dest / "mine.txt").read_text() == "third"


def test_killed_between_the_two_renames_without_exchange(tmp_path):
    """Where the kernel has no exchange (fallback: old aside, new in), a kill between the renames leaves the
    destination missing for a moment; the next run puts the old project back and removes the new one."""
    dest = fake_project(tmp_path / "app")
    proc = killed_while_swapping(tmp_path, textwrap.dedent("""
        fsops.exchange = lambda a, b: False
        real_rename = os.rename
        def rename_then_die(src, dst):
            real_rename(src, dst)
            os._exit(9)
        os.rename = rename_then_die
    """).replace("\n", "\n        "))
    assert proc.returncode == 9, proc.stderr
    assert not dest.exists()
    notes: list[str] = []
    # the old project is back, so a run without --force refuses to replace it
    with pytest.raises(ScaffoldError, match="exists and is not empty"), staged(dest, force=False, warn=notes.append):
        pass
    assert (dest / "mine.txt").read_text() == "old" and not (dest / STAGING_MARKER).exists()
    assert any("restored" in n for n in notes) and any("removed" in n for n in notes), notes
    assert beside(tmp_path) == ["app"]


def test_fallback_without_exchange_replaces(tmp_path, monkeypatch):
    monkeypatch.setattr(fsops, "exchange", lambda a, b: False)
    dest = fake_project(tmp_path / "app")
    with staged(dest, force=True) as scratch:
        fake_project(scratch, "new")
    assert (dest / "mine.txt").read_text() == "new" and beside(tmp_path) == ["app"]


def test_leftovers_not_marked_are_reported_and_kept(tmp_path):
    dest = tmp_path / "app"
    unmarked = tmp_path / ".app.abcd1234.scaffold-new"
    unmarked.mkdir()
    (unmarked / "yours.txt").write_text("?")
    marked = tmp_path / ".app.zz99.scaffold-new"
    marked.mkdir()
    (marked / STAGING_MARKER).write_text("")
    other = tmp_path / ".app.notes"
    other.write_text("unrelated")
    notes: list[str] = []
    with staged(dest, force=False, warn=notes.append) as scratch:
        fake_project(scratch, "new")
    assert beside(tmp_path) == [".app.abcd1234.scaffold-new", ".app.notes", "app"]
    assert any("not marked" in n and unmarked.name in n for n in notes), notes


def test_a_failed_run_removes_its_staging_and_parents(tmp_path):
    dest = tmp_path / "x" / "y" / "app"
    with pytest.raises(RuntimeError), staged(dest, force=False) as scratch:
        (scratch / "half.txt").write_text("half")
        raise RuntimeError("export failed")
    assert beside(tmp_path) == []


# --------------------------------------------------------------------------------------------- 19: one writer at a time


def test_the_lock_refuses_a_second_writer(tmp_path):
    dest = tmp_path / "app"
    with (destination_lock(dest), pytest.raises(ScaffoldError, match="another scaffold is writing"),
          staged(dest, force=True)):
        pass
    assert beside(tmp_path) == []  # the lock file goes with the lock


@pytest.mark.e2e  # real `scaffold new` processes: seconds each
def test_two_concurrent_scaffold_new_the_loser_fails(tmp_path):
    dest = tmp_path / "app"
    ready, go = tmp_path / "ready", tmp_path / "go"
    first = start_scaffold("new", "app", "--model", SLOW, "--output", dest, SCAFFOLD_TEST_PAUSE="forward",
                           SCAFFOLD_TEST_READY=ready, SCAFFOLD_TEST_GO=go)
    wait_for(ready, first)
    second = subprocess.run([sys.executable, "-m", "generator", "new", "app", "--model", SLOW, "--output", str(dest),
                             "--force"], cwd=REPO, env=env_for(), capture_output=True, text=True, timeout=600,
                            check=False)
    go.write_text("go")
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 1
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "another scaffold is writing" in errors[0], second.stderr
    assert (dest / "model" / "manifest.json").is_file() and beside(tmp_path) == ["app", "go", "ready"]


# --------------------------------------------------------------------------------------------- 5: signals


@pytest.mark.e2e
@pytest.mark.parametrize("cases", [[
    ("SIGTERM", "import", False), ("SIGTERM", "forward", True), ("SIGINT", "init", True), ("SIGINT", "forward", False),
]])
def test_signals_clean_up_and_say_interrupted(tmp_path, cases):
    """A real signal to a real `scaffold new`, at several moments, with and without a project to replace; the
    runs go in parallel. Nothing is left beside the destination, and an existing project is intact."""
    runs = []
    for n, (name, moment, existing) in enumerate(cases):
        parent = tmp_path / f"run{n}"
        parent.mkdir()
        dest = parent / "app"
        if existing:
            fake_project(dest)
        ready = tmp_path / f"ready{n}"
        proc = start_scaffold("new", "app", "--model", SLOW, "--output", dest, "--force",
                              SCAFFOLD_TEST_PAUSE=moment, SCAFFOLD_TEST_READY=ready)
        runs.append((getattr(signal, name), parent, dest, existing, ready, proc))
    for signum, _parent, _dest, _existing, ready, proc in runs:
        wait_for(ready, proc)
        proc.send_signal(signum)
    for signum, parent, dest, existing, _ready, proc in runs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines[-1] == "interrupted" and lines.count("interrupted") == 1 and "Traceback" not in err, err
        if existing:
            assert beside(parent) == ["app"] and (dest / "mine.txt").read_text() == "old"
        else:
            assert beside(parent) == []


def _group_alive(pgid: int) -> bool:
    """A live (not zombie) process in process group pgid."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.e2e  # real `scaffold new` processes: seconds each
def test_sigterm_during_the_compiler_probe_kills_it_and_removes_its_files(tmp_path):
    """scaffold probes libtorch's headers with the C++ compiler. A compiler that takes its time (the real one,
    behind a wrapper that waits first) is killed with its children, and the probe's temp directory removed."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    ready = tmp_path / "ready"
    wrapper = tmp_path / "slow-c++"
    wrapper.write_text(f'#!/bin/sh\necho "$$ $*" > {ready}\nsleep 120\nexec {compiler} "$@"\n')
    wrapper.chmod(0o755)
    proc = start_scaffold("new", "app", "--model", SLOW, "--output", tmp_path / "app", CXX=wrapper)
    pid, *args = wait_for(ready, proc).split()
    probe = Path(next(a for a in args if a.endswith(".cpp")))
    assert probe.parent.name.startswith("scaffold-probe-") and probe.exists()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "interrupted", err
    assert not probe.parent.exists()
    deadline = time.monotonic() + 10
    while _group_alive(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(int(pid)), "the compiler probe (or its sleep) outlived scaffold"
    assert not (tmp_path / "app").exists()


# --------------------------------------------------------------------------------------------- 6: injection


WEIRD_DIR = 'we"ird $(touch PWNED1) ${PWNED2} ;x #y )file(TOUCH PWNED3) $<1:x>'
WEIRD_FILE = 'm "q" $HOME;#.pt'


@pytest.fixture(scope="module")
def weird_project(tmp_path_factory) -> Path:
    """A TorchScript file whose path holds CMake, shell and C++ syntax, generated with every flavour (in-process)."""
    import torch
    from typer.testing import CliRunner

    from generator.cli import app

    base = tmp_path_factory.mktemp("inject")
    (base / WEIRD_DIR).mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: "torch.jit.trace is deprecated"
        torch.jit.trace(torch.nn.Linear(3, 2), torch.randn(2, 3)).save(str(base / WEIRD_DIR / WEIRD_FILE))
    old = Path.cwd()
    os.chdir(base)  # the source stays relative, as a user would type it
    try:
        result = CliRunner().invoke(app, ["new", "app", "--model", f"{WEIRD_DIR}/{WEIRD_FILE}", "--input", "x=2x3",
                                          "--bazel", "--ci", "github", "--docker"])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    return base / "app"


COMMENTS = {".txt": "#", ".cmake": "#", ".bazel": "#", ".bzl": "#", ".yml": "#", ".bazelrc": "#", "": "#",
            ".cpp": "//", ".h": "//"}


def test_a_model_path_full_of_syntax_stays_text(weird_project):
    """The path reaches generated files only as comments, escaped strings or data (TOML, JSON, Markdown)."""
    import tomllib

    # written relative to the project (here one level down from where the file is), read back unchanged
    assert tomllib.loads((weird_project / "scaffold.toml").read_text())["model"]["source"] == \
        f"../{WEIRD_DIR}/{WEIRD_FILE}"
    for path in weird_project.rglob("*"):
        if not path.is_file() or path.suffix in (".pt", ".json", ".toml", ".md", ".base") or ".scaffold" in path.parts:
            continue
        marker = COMMENTS.get(path.suffix, "#")
        for line in path.read_text(errors="replace").splitlines():
            if "PWNED3" in line:
                assert line.lstrip().startswith(marker), f"{path.name}: {line}"


@pytest.mark.e2e
def test_a_model_path_full_of_syntax_configures_with_cmake(weird_project):
    """Configure for real (no build) the tutorial way: nothing injected runs, the project configures."""
    import torch.utils

    build = weird_project / "build"
    proc = subprocess.run(["cmake", "-S", str(weird_project), "-B", str(build),
                           f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                          cwd=weird_project, capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    injected = [p for p in weird_project.parent.rglob("PWNED*")] + [p for p in Path.cwd().glob("PWNED*")]
    assert injected == [], injected


def _tree(root: int) -> list[int]:
    """root's descendants now, from /proc."""
    from generator.toolchain import _descendants

    return _descendants(root)


@pytest.mark.e2e
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_during_an_aoti_compile_stops_the_whole_tree(tmp_path):
    """torch's inductor runs g++ (itself running cc1plus) without a process group of scaffold's: the signal
    handler stops every descendant, grandchildren included, before anything unwinds."""
    proc = start_scaffold("new", "app", "--model", "examples.models.cell:Cell", "--backend", "aoti", "--output",
                          tmp_path / "app")
    deadline = time.monotonic() + 600
    compilers: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None and not compilers:
        compilers = [pid for pid in _tree(proc.pid) if "torchinductor" in _cmdline(pid)]
        time.sleep(0.05)
    if not compilers:
        proc.kill()
        pytest.skip("the export finished before a compiler was seen")
    tree = _tree(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "interrupted", err
    time.sleep(0.5)
    alive = [pid for pid in tree if Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X", "")]
    assert alive == [], [(pid, _cmdline(pid)[:120]) for pid in alive]
    assert beside(tmp_path) == []


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
