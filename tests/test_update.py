"""`scaffold update`: re-export, re-render, three-way merge into the user's edits, atomically.

The fast tests drive the planner and the journaled apply on small trees; the e2e ones generate real projects,
edit them as a user would, retrain (new weights), update, and (once) rebuild with real cmake.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run, scaffold

from generator import merge, update
from generator.errors import ScaffoldError

MLP = "examples.models.mlp:make_mlp"
EDITED = ("src/main.cpp", "CMakeLists.txt", "README.md")


def snapshot(root: Path) -> dict[str, tuple[bytes, int] | str]:
    """Every path under root: file bytes and mode, a link's target, directories by name."""
    tree: dict[str, tuple[bytes, int] | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                tree[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                tree[rel] = "dir"
            else:
                tree[rel] = (path.read_bytes(), path.stat().st_mode)
    return tree


# --------------------------------------------------------------------------------------------- planner (fast)


def _project(root: Path, generated: dict[str, str], on_disk: dict[str, str]) -> merge.State:
    merge.write_payload(root, merge.state_payload({k: v.encode() for k, v in generated.items()}))
    for rel, text in on_disk.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    state = merge.read_state(root)
    assert state is not None
    return state


def test_plan_every_case(tmp_path):
    lines = "".join(f"line {i}\n" for i in range(12))
    old = {"same": "a\n", "untouched": "old\n", "edited_only": lines, "merge": lines, "clash": lines,
           "gone": "x\n", "gone_edited": "x\n", "deleted": "d\n", "deleted_changed": "d\n"}
    disk = {"same": "a\n", "untouched": "old\n", "edited_only": lines + "mine\n",
            "merge": lines.replace("line 11", "line 11 mine"), "clash": lines.replace("line 0", "line 0 mine"),
            "gone": "x\n", "gone_edited": "x mine\n", "users_own": "u\n", "collision": "user made this\n"}
    state = _project(tmp_path, old, disk)
    before = snapshot(tmp_path)
    new = {"same": "a\n", "untouched": "new\n", "edited_only": lines, "merge": lines.replace("line 0", "line zero"),
           "clash": lines.replace("line 0", "line 0 new"), "deleted": "d\n", "deleted_changed": "d2\n",
           "fresh": "f\n", "collision": "scaffold's\n"}
    changes, writes = update.plan_files(tmp_path, state, {k: v.encode() for k, v in new.items()})
    actions = {c.path: c.action for c in changes}
    assert actions == {"same": "unchanged", "untouched": "updated", "edited_only": "kept", "merge": "merged",
                       "clash": "conflicted", "gone": "removed", "gone_edited": "kept", "deleted": "kept",
                       "deleted_changed": "conflicted", "fresh": "added", "collision": "conflicted"}
    assert writes["untouched"] == b"new\n" and writes["fresh"] == b"f\n" and writes["gone"] is None
    assert writes["merge"].decode() == lines.replace("line 0", "line zero").replace("line 11", "line 11 mine")
    clash = writes["clash"].decode()
    assert "<<<<<<< yours: clash" in clash and "line 0 mine" in clash and "line 0 new" in clash
    assert "user made this" in writes["collision"].decode() and "<<<<<<<" in writes["collision"].decode()
    assert writes["deleted_changed"] == b"d2\n"  # restored, and reported
    for untouched in ("same", "edited_only", "gone_edited", "deleted", "users_own"):
        assert untouched not in writes
    assert snapshot(tmp_path) == before  # planning only reads


def test_plan_without_record_merges_against_nothing(tmp_path):
    (tmp_path / "a").write_text("same\n")
    (tmp_path / "b").write_text("mine\n")
    changes, writes = update.plan_files(tmp_path, None, {"a": b"same\n", "b": b"theirs\n"})
    assert {c.path: c.action for c in changes} == {"a": "unchanged", "b": "conflicted"}
    assert b"mine" in writes["b"] and b"theirs" in writes["b"]


def test_spec_file_follows_the_flags(tmp_path):
    """A user's edit to scaffold.toml that a flag overrides must not survive the merge silently."""
    from generator.spec import ModelSpec, ProjectSpec, spec_to_toml

    spec = ProjectSpec(name="app", model=ModelSpec(source="examples.models.mlp:make_mlp"))
    written = spec_to_toml(spec, root=tmp_path)
    assert "freeze = true" in written
    edited = "# our comment\n" + written.replace("freeze = true", "freeze = false")
    state = _project(tmp_path, {"scaffold.toml": written}, {"scaffold.toml": edited})
    # `scaffold update --freeze`: the spec used says freeze = true, which is what scaffold wrote before.
    changes, writes = update.plan_files(tmp_path, state, {"scaffold.toml": written.encode()}, spec)
    assert [(c.path, c.action) for c in changes] == [("scaffold.toml", "conflicted")]
    assert writes == {"scaffold.toml": written.encode(), "scaffold.toml.orig": edited.encode()}
    # Without the flag the spec is the edited one: scaffold writes the same change, the comment stays.
    unfrozen = ProjectSpec(name="app", model=ModelSpec(source=spec.model.source, freeze=False))
    changes, writes = update.plan_files(tmp_path, state, {"scaffold.toml": spec_to_toml(unfrozen).encode()},
                                        unfrozen)
    assert [(c.path, c.action) for c in changes] == [("scaffold.toml", "merged")]
    assert writes == {"scaffold.toml": edited.encode()}


def test_refusals_before_any_work(tmp_path):
    """Not a project; a journal left by a killed update, with --dry-run (which may not roll it back)."""
    with pytest.raises(ScaffoldError, match="is not a directory"):
        update.update_project(tmp_path / "nothing")
    with pytest.raises(ScaffoldError, match="is not a scaffold project"):
        update.update_project(tmp_path)
    root = tmp_path / "app"
    (root / "model").mkdir(parents=True)
    (root / "scaffold.toml").write_text('[project]\nname = "app"\n[model]\nsource = "x:y"\n')
    (root / update.JOURNAL).parent.mkdir()
    (root / update.JOURNAL).write_text('{"created": [], "entries": []}')
    before = snapshot(root)
    with pytest.raises(ScaffoldError, match="an interrupted update left .* without --dry-run"):
        update.update_project(root, dry_run=True)
    assert snapshot(root) == before


def test_describe_signature():
    old = {"inputs": [{"name": "x", "shape": [1, 64], "dtype": "float32"}],
           "outputs": [{"name": "out", "shape": [1, 10], "dtype": "float32"}]}
    new = {**old, "outputs": [{"name": "out", "shape": [1, 5], "dtype": "float32"}]}
    assert update.describe_signature(old, old) is None
    assert update.describe_signature(old, new) == "outputs out 1x10:float32 -> out 1x5:float32"
    assert update.describe_fields(old, new) is None  # same members, other shapes
    renamed = {**old, "outputs": [{"name": "out['logits']", "shape": [1, 5], "dtype": "float32"},
                                  {"name": "out['boxes']", "shape": [1, 4], "dtype": "float32"}]}
    assert update.describe_fields(old, renamed) == "Outputs {out} -> {out_logits, out_boxes}"


# --------------------------------------------------------------------------------------------- apply (fast)


def _tree(root: Path) -> tuple[Path, list[tuple[str, Path | None]]]:
    """A project and a staged update: replace a file, add one in a new directory, remove one, replace model/."""
    for rel, text in {"keep.txt": "user\n", "a.txt": "old a\n", "gone.txt": "bye\n", "model/m.pt": "old model\n",
                      "build/obj.o": "object\n"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    stage = root.parent / "stage"
    for rel, text in {"a.txt": "new a\n", "sub/dir/b.txt": "new b\n", "model/m.pt": "new model\n"}.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)
    ops = [("model", stage / "model"), ("a.txt", stage / "a.txt"), ("sub/dir/b.txt", stage / "sub/dir/b.txt"),
           ("gone.txt", None)]
    return stage, ops


def test_apply_commits(tmp_path):
    root = tmp_path / "p"
    _, ops = _tree(root)
    update.apply(root, ops)
    assert (root / "a.txt").read_text() == "new a\n" and (root / "sub/dir/b.txt").read_text() == "new b\n"
    assert (root / "model/m.pt").read_text() == "new model\n" and not (root / "gone.txt").exists()
    assert (root / "keep.txt").read_text() == "user\n" and (root / "build/obj.o").read_text() == "object\n"
    assert sorted(p.name for p in (root / ".scaffold").iterdir()) == []  # no journal, no backup left


def _fail_at(monkeypatch, step: int, error: BaseException, exchange: bool) -> None:
    """Make the step-th file-system move (os.rename or fsops.exchange) raise; with exchange=False the system
    has no renameat2 exchange (fsops.exchange answers False) and replacements take two renames."""
    from generator import fsops

    real_rename, real_exchange, calls = os.rename, fsops.exchange, [0]

    def tick() -> None:
        calls[0] += 1
        if calls[0] == step:
            raise error

    def rename(src, dst):
        tick()
        real_rename(src, dst)

    def swap(a, b):
        if not exchange:
            return False
        tick()
        return real_exchange(a, b)

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(fsops, "exchange", swap)


@pytest.mark.parametrize("exchange", [True, False])
@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 6])
def test_apply_failure_rolls_back(tmp_path, monkeypatch, step, exchange):
    root = tmp_path / "p"
    _, ops = _tree(root)
    (root / ".scaffold").mkdir()
    before = snapshot(root)
    _fail_at(monkeypatch, step, OSError(28, "No space left on device"), exchange)
    with pytest.raises(ScaffoldError, match="the project was left as it was"):
        update.apply(root, ops)
    assert snapshot(root) == before


class Killed(BaseException):
    """Stands for SIGKILL: the process stops between two moves, and nothing of it runs any more."""


@pytest.mark.parametrize("exchange", [True, False])
@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 6])
def test_killed_apply_is_rolled_back_later(tmp_path, monkeypatch, step, exchange):
    root = tmp_path / "p"
    _, ops = _tree(root)
    (root / ".scaffold").mkdir()
    before = snapshot(root)
    _fail_at(monkeypatch, step, Killed(), exchange)
    monkeypatch.setattr(update, "rollback", lambda _root: None)  # a killed process rolls nothing back
    with pytest.raises(Killed):
        update.apply(root, ops)
    monkeypatch.undo()
    assert (root / update.JOURNAL).is_file()
    update.rollback(root)  # what the next `scaffold update` does first
    assert snapshot(root) == before


# --------------------------------------------------------------------------------------------- e2e


def save_weights(path: Path, seed: int) -> None:
    """A 'retrained' examples.models.mlp: the same architecture, other weights."""
    import torch

    from examples.models.mlp import make_mlp

    torch.manual_seed(seed)
    torch.save(make_mlp().state_dict(), path)


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run(["git", "-C", root, "-c", "user.email=t@example.com", "-c", "user.name=t", *args])


def commit_all(root: Path, message: str) -> None:
    if not (root / ".git").exists():
        git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)


def pretend_older_scaffold_wrote(root: Path, rel: str, text: str) -> None:
    """As if an older scaffold had generated `text` for rel: the project file, the stored base and its hash."""
    (root / rel).write_text(text)
    (root / merge.base_path(rel)).write_text(text)
    state = json.loads((root / merge.STATE_FILE).read_text())
    state["files"][rel] = merge.digest(text.encode())
    (root / merge.STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


@pytest.mark.e2e
def test_update_keeps_edits_and_takes_the_new_model(tmp_path_factory):
    import torch

    from examples.models.mlp import make_mlp

    work = tmp_path_factory.mktemp("update")
    weights = work / "weights.pt"
    save_weights(weights, seed=1)
    root = work / "app"
    scaffold("new", "app", "--output", root, "--model", MLP, "--weights", weights)
    scaffold("build", root)
    old_golden = torch.load(root / "model" / "golden.pt")
    build_tree = snapshot(root / "build")

    # Templates changed between scaffold versions: an older one wrote an extra first line into CMakeLists.txt and
    # src/main.cpp (the new one does not: merges cleanly with the user's edits at the end) and another README
    # title (which the user also changed: a conflict).
    for rel, comment in (("CMakeLists.txt", "# "), ("src/main.cpp", "// ")):
        now = (root / rel).read_text()
        pretend_older_scaffold_wrote(root, rel, f"{comment}written by scaffold 0.0.9\n" + now)
    readme_now = (root / "README.md").read_text()
    old_readme = readme_now.replace("# app\n", "# app (scaffold 0.0.9)\n", 1)
    assert old_readme != readme_now
    pretend_older_scaffold_wrote(root, "README.md", old_readme)
    commit_all(root, "generated")
    # The user's edits, in places the templates do not touch (and one they do, in the README).
    main_edit = "\n// team note: reviewed for the v2 service\n"
    cmake_edit = '\nmessage(STATUS "team: custom CMake line")\n'
    with (root / "src/main.cpp").open("a") as f:
        f.write(main_edit)
    with (root / "CMakeLists.txt").open("a") as f:
        f.write(cmake_edit)
    (root / "README.md").write_text(old_readme.replace("# app (scaffold 0.0.9)\n", "# app: our title\n", 1))
    (root / "NOTES.md").write_text("the user's own file\n")
    commit_all(root, "edits")
    save_weights(weights, seed=2)  # the weekly retrain, same path

    proc = scaffold("update", root, "--no-freeze", check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "outputs changed on the golden inputs" in proc.stdout
    assert "merged      src/main.cpp" in proc.stdout and "merged      CMakeLists.txt" in proc.stdout
    assert "conflicted  README.md" in proc.stdout and "README.md" in proc.stderr
    assert "signature changed" not in proc.stdout
    assert (root / "NOTES.md").read_text() == "the user's own file\n" and snapshot(root / "build") == build_tree

    # Edits kept, scaffold's side taken everywhere else, the conflict marked.
    fresh = work / "fresh"
    scaffold("new", "--spec", root / "scaffold.toml", "--output", fresh)
    assert (root / "src/main.cpp").read_text() == (fresh / "src/main.cpp").read_text() + main_edit
    assert (root / "CMakeLists.txt").read_text() == (fresh / "CMakeLists.txt").read_text() + cmake_edit
    readme = (root / "README.md").read_text()
    assert "<<<<<<< yours: README.md\n# app: our title\n=======\n# app\n>>>>>>> scaffold" in readme
    # Unedited files equal a fresh `new` of the same spec, byte for byte (and so does the record).
    state = json.loads((root / merge.STATE_FILE).read_text())
    assert set(state["files"]) == set(json.loads((fresh / merge.STATE_FILE).read_text())["files"])
    for rel in [*state["files"], merge.STATE_FILE, *(merge.base_path(r) for r in state["files"])]:
        if rel not in EDITED:
            assert (root / rel).read_bytes() == (fresh / rel).read_bytes(), rel
    assert "freeze = false" in (root / "scaffold.toml").read_text()  # the flag is saved
    manifests = [json.loads((p / "model/manifest.json").read_text()) for p in (root, fresh)]
    for m in manifests:  # the time, and the artifact's hash (a TorchScript archive differs on every save)
        m.pop("created"), m.pop("sha256")
    assert manifests[0] == manifests[1] and manifests[0]["frozen"] is False

    # The model is the new one: the goldens are eager outputs of the new weights, and differ from the old.
    golden = torch.load(root / "model" / "golden.pt")
    assert torch.equal(golden["inputs"][0], old_golden["inputs"][0])
    assert not torch.allclose(golden["outputs"][0], old_golden["outputs"][0])
    eager = make_mlp().eval()
    eager.load_state_dict(torch.load(weights))
    with torch.inference_mode():
        assert torch.allclose(eager(golden["inputs"][0]), golden["outputs"][0], atol=1e-6)

    # Resolve the conflict as a user would, rebuild: ctest parity against the new weights passes.
    (root / "README.md").write_text((fresh / "README.md").read_text())
    scaffold("build", root)
    binary = root / "build" / "app"
    stats = json.loads(run([binary, "--check", "--json", "--iters", "1", "--warmup", "0"]).stdout.splitlines()[-1])
    assert stats["parity"] is True

    # Committed, updated again with nothing new: every file unchanged, exit 0.
    commit_all(root, "updated")
    again = scaffold("update", root)
    assert "0 updated, 0 merged, 0 conflicted" in again.stdout


@pytest.fixture
def plain(tmp_path):
    """An unbuilt project (weights from a file) inside a git repository, committed."""
    weights = tmp_path / "weights.pt"
    save_weights(weights, seed=1)
    root = tmp_path / "plain"
    scaffold("new", "plain", "--output", root, "--model", MLP, "--weights", weights)
    commit_all(root, "generated")
    return root, weights


@pytest.mark.e2e
def test_dry_run_model_only_and_dirty_tree(plain):
    root, weights = plain
    save_weights(weights, seed=3)
    with (root / "src/main.cpp").open("a") as f:
        f.write("// local edit\n")
    (root / "model/labels.txt").write_text("cat\ndog\n")  # the user's file in model/
    before = snapshot(root)

    dirty = scaffold("update", root, check=False)
    assert dirty.returncode == 1 and "uncommitted changes" in dirty.stderr and "--allow-dirty" in dirty.stderr
    assert snapshot(root) == before

    dry = scaffold("update", root, "--dry-run")
    assert "would be re-exported" in dry.stdout and "dry run, nothing written" in dry.stdout
    assert snapshot(root) == before

    refused = scaffold("update", root, "--model-only", "--allow-dirty", "--input", "x=2x64", check=False)
    assert refused.returncode == 1 and "signature changed" in refused.stderr
    assert snapshot(root) == before

    only = scaffold("update", root, "--model-only", "--allow-dirty")
    assert "kept your files in model/: labels.txt" in only.stdout
    after = snapshot(root)
    changed = {rel for rel in set(before) | set(after) if before.get(rel) != after.get(rel)}
    assert changed and all(rel.startswith("model/") for rel in changed), changed
    assert after["src/main.cpp"] == before["src/main.cpp"] and after["model/labels.txt"] == before["model/labels.txt"]

    # A full update may change the signature: one line says so, and what follows from it.
    full = scaffold("update", root, "--allow-dirty", "--input", "x=2x64")
    assert "signature changed: inputs x 1x64:float32 -> x 2x64:float32; outputs out 1x10:float32 -> out " \
           "2x10:float32: the typed Inputs/Outputs in include/plain/model.h follow it (same fields" in full.stdout
    assert "kept        src/main.cpp" in full.stdout or "merged      src/main.cpp" in full.stdout
    assert (root / "src/main.cpp").read_text().endswith("// local edit\n")


SLOW_MODEL = '''
import os, time
from pathlib import Path
from torch import nn


class Slow(nn.Module):
    """Sleeps in forward once SLOW_MARKER is set (after touching it): time to interrupt an update."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        marker = os.environ.get("SLOW_MARKER")
        if marker:
            Path(marker).touch()
            time.sleep(300)
        return self.fc(x)


def make():
    m = Slow()
    m.scaffold_inputs = ["x=1x8"]
    return m
'''


def _interrupt(root: Path, marker: Path, signum: int) -> int:
    """`scaffold update .` from inside the project (the model imports from its parent), stopped mid-export."""
    env = {**os.environ, "SLOW_MARKER": str(marker), "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "generator", "update", "."], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, errs = proc.communicate()
            pytest.fail(f"update never reached the export:\n{out.decode()}\n{errs.decode()}")
        time.sleep(0.1)
    proc.send_signal(signum)
    proc.communicate(timeout=60)
    marker.unlink()
    return proc.returncode


@pytest.mark.e2e
def test_interrupted_update_leaves_the_project_as_it_was(tmp_path):
    (tmp_path / "slowmodel.py").write_text(SLOW_MODEL)
    root = tmp_path / "slow"
    scaffold("new", "slow", "--model", "slowmodel:make", cwd=tmp_path)
    with (root / "src/main.cpp").open("a") as f:
        f.write("// local edit\n")
    before = snapshot(root)

    assert _interrupt(root, tmp_path / "marker", signal.SIGTERM) == 128 + signal.SIGTERM
    assert snapshot(root) == before
    assert not list(tmp_path.glob(".slow.*.scaffold-update"))  # SIGTERM cleans up its staging directory

    assert _interrupt(root, tmp_path / "marker", signal.SIGKILL) == -signal.SIGKILL
    assert snapshot(root) == before
    assert list(tmp_path.glob(".slow.*.scaffold-update"))  # SIGKILL cannot; the next update removes it

    done = scaffold("update", ".", cwd=root)
    assert "removed .slow." in done.stderr and "kept        src/main.cpp" in done.stdout
    assert not list(tmp_path.glob(".slow.*.scaffold-update"))
    assert (root / "src/main.cpp").read_text().endswith("// local edit\n")


@pytest.mark.e2e
def test_a_torchscript_file_source_is_found_from_the_project(tmp_path):
    """A .pt given relative to the cwd is written relative to the project, so update and --spec find it anywhere."""
    import torch

    src = tmp_path / "models"
    src.mkdir()
    torch.jit.save(torch.jit.script(torch.nn.Linear(4, 3).eval()), str(src / "m.pt"))
    scaffold("new", "lin", "--model", "m.pt", "--input", "x=2x4", "--output", tmp_path / "work" / "lin", cwd=src)
    root = tmp_path / "work" / "lin"
    assert 'source = "../../models/m.pt"' in (root / "scaffold.toml").read_text()
    proc = scaffold("update", ".", "--allow-dirty", cwd=root, check=False)
    assert proc.returncode == 0, proc.stderr
    regen = scaffold("new", "--spec", root / "scaffold.toml", "--output", tmp_path / "again", cwd=tmp_path / "work")
    assert regen.returncode == 0 and (tmp_path / "again" / "model" / "model.pt").is_file()
