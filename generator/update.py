"""`scaffold update`: re-export the model and re-render the project, merging scaffold's changes into the user's.

Every generated file falls in one of these cases (ours: the file in the project; base: what scaffold wrote
then, from `.scaffold/`; theirs: what this scaffold writes now):
  ours == theirs                     unchanged
  ours == base                       updated (replaced by theirs: the user did not touch it)
  theirs == base                     kept (the user's edits; scaffold has nothing new for it)
  otherwise                          three-way merge (`git merge-file`): merged, or conflicted with markers
  ours missing, base recorded        left deleted if theirs == base, else restored and reported as a conflict
  ours missing, nothing recorded     added (a new template)
  no base, ours differs              merged against an empty base: whatever differs becomes a conflict
  base recorded, no longer rendered  removed if unedited, else kept and reported
Files scaffold never generated are not read or written; model/ is replaced as a whole (files the user added
there are carried over).

Atomicity, and why a journal rather than swapping the whole directory: all the slow and fallible work
(export, verification, render, merges) happens in a staging directory beside the project, so an error or a
signal before the end leaves the project untouched. The result is then applied inside the project by
renames: each replaced path is first moved into `.scaffold/update-backup/`, under a journal
(`.scaffold/update-journal.json`) written before the first rename and removed after the last (the commit
point); SIGINT/SIGTERM/SIGHUP are held during those few milliseconds. Any failure there rolls back at once,
and a SIGKILL mid-way is rolled back by the next `scaffold update`, before anything else (the renames are not
fsynced one by one: a power cut is not covered beyond what the file system's own journal gives).
A directory swap (renameat2 exchange of a hard-linked copy) was the alternative: it would copy or link every
file of build/, .git and bazel-* output trees on each update, fail on files the user cannot hard-link
(fs.protected_hardlinks, other owners, other file systems), and leave a shell or an editor that sits inside
the project (`scaffold update .`) in a deleted directory. Applying in place keeps
the directory itself, its build tree and everything scaffold does not generate exactly where they are.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from generator import __version__, fsops
from generator.errors import ScaffoldError
from generator.merge import (
    BASE_DIR,
    STATE_DIR,
    STATE_FILE,
    State,
    base_path,
    digest,
    merge3,
    read_base,
    read_state,
    state_payload,
    write_payload,
)
from generator.render import STAGING_MARKER, destination_lock, remove_tree, signals_held
from generator.spec import ProjectSpec, anchor_paths, merge_flags, read_toml, spec_from_mapping

if TYPE_CHECKING:
    from generator.build import Project

JOURNAL = f"{STATE_DIR}/update-journal.json"
BACKUP = f"{STATE_DIR}/update-backup"
# What an export writes into model/ (with the old manifest's own "artifact" and "golden"); any other file there
# is the user's and is carried over to the new model/.
EXPORT_FILES = ("model.pt", "model.pt2", "golden.pt", "manifest.json")
CONFLICT_EXIT = 3
ACTIONS = ("updated", "merged", "conflicted", "added", "removed", "kept", "unchanged")


@dataclass
class FileChange:
    path: str
    action: str  # one of ACTIONS
    note: str = ""


@dataclass
class UpdateResult:
    root: Path
    spec: ProjectSpec
    changes: list[FileChange]
    model_note: str
    signature_change: str | None
    field_change: str | None  # the typed Inputs/Outputs members, when their names change
    dry_run: bool
    warnings: list[str] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    @property
    def conflicts(self) -> list[FileChange]:
        return [c for c in self.changes if c.action == "conflicted"]


# --------------------------------------------------------------------------------------------- the command


def update_project(root: Path, *, flags: dict[str, Any] | None = None, dynamic: dict[str, list[int]] | None = None,
                   model_only: bool = False, dry_run: bool = False, allow_dirty: bool = False,
                   progress: Callable[[str], None] = lambda _msg: None) -> UpdateResult:
    """Re-export and re-render the project at root with this scaffold, keeping the user's edits (see the module doc)."""
    from generator.build import open_project

    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise ScaffoldError(f"{root} is not a directory")
    with destination_lock(root):  # a concurrent `scaffold new --force` or update of the same project fails at once
        warnings: list[str] = []
        # First, since a killed update may have moved model/ or scaffold.toml aside: the project is whole again.
        if (root / JOURNAL).exists():
            if dry_run:
                raise ScaffoldError(f"an interrupted update left {root / JOURNAL}: run `scaffold update {root}` "
                                    "without --dry-run to roll it back first")
            rollback(root)
            warnings.append("rolled back an interrupted update (the project is as it was before it)")
        shutil.rmtree(root / BACKUP, ignore_errors=True)  # a committed update that died before cleaning up
        project = open_project(root)
        return _update(project, root, warnings, flags=flags or {}, dynamic=dynamic, model_only=model_only,
                       dry_run=dry_run, allow_dirty=allow_dirty, progress=progress)


def given_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags actually given (an option left out is None, an empty list or dict)."""
    return {k: v for k, v in flags.items() if v is not None and v != [] and v != {}}


def check_before_torch(root: Path, flags: dict[str, Any]) -> None:
    """What `update` can refuse before torch is imported: the spec with the flags applied (every error at once)
    and the model source (a torchvision name that does not exist, a missing file or module). Nothing is
    checked when there is no scaffold.toml to read or an interrupted update is still to be rolled back:
    update_project says what is wrong then."""
    from generator.sources import check_source

    root = Path(os.path.abspath(root))
    if not (root / "scaffold.toml").is_file() or (root / JOURNAL).exists():
        return
    given = given_flags(flags)
    spec = spec_from_mapping(merge_flags(_read_spec(root), **given),
                             "flags" if given else str(root / "scaffold.toml"))
    check_source(spec.model.source, spec.model.weights, also_search=[root.parent])


def _update(project: Project, root: Path, warnings: list[str], *, flags: dict[str, Any],
            dynamic: dict[str, list[int]] | None, model_only: bool, dry_run: bool, allow_dirty: bool,
            progress: Callable[[str], None]) -> UpdateResult:
    from generator.pipeline import export_model, render_project
    from generator.toolchain import torch_info

    if not dry_run and not allow_dirty:
        check_clean(root)

    flags = given_flags(flags)
    data = _read_spec(root)
    old_spec = spec_from_mapping(data, str(root / "scaffold.toml"))
    spec = spec_from_mapping(merge_flags(data, **flags), "flags" if flags else str(root / "scaffold.toml"))
    state = read_state(root)
    if state is None and not model_only:
        warnings.append(f"{root} has no {STATE_FILE} (made before scaffold kept that record): generated files that "
                        "differ from the new ones are treated as edited and merged without a base")

    info = torch_info()
    # Model sources like `pkg.module:attr` import from the current directory, as for `new`; the directory above
    # the project is where `new` usually ran, so it is searched too (after everything else).
    if str(root.parent) not in sys.path:
        sys.path.append(str(root.parent))
    with _staging(root, warnings.append) as stage:
        spec, resolved, result = export_model(spec, stage / "model", info, dynamic=dynamic, progress=progress)
        new_manifest = json.loads((stage / "model" / "manifest.json").read_text(encoding="utf-8"))
        carried = _carry_model_files(root / "model", stage / "model", project.manifest)
        model_note = compare_golden(root / "model" / "golden.pt", stage / "model" / "golden.pt")
        if carried:
            model_note += f"; kept your files in model/: {', '.join(carried)}"
        change = describe_signature(project.manifest.get("signature"), new_manifest.get("signature"))
        fields = describe_fields(project.manifest.get("signature"), new_manifest.get("signature")) if change else None
        if model_only:
            if old_spec.model.backend != spec.model.backend:
                raise ScaffoldError(f"--model-only keeps the C++ sources, but the backend changes from "
                                    f"{old_spec.model.backend} to {spec.model.backend}: run without --model-only")
            if change:
                raise ScaffoldError(f"--model-only keeps the C++ sources, but the model's signature changed "
                                    f"({change}): run `scaffold update` without --model-only")

        progress("rendering the C++ project")
        files = render_project(spec, resolved, result, info, stage / "render", root)
        theirs = {p.as_posix(): (stage / "render" / p).read_bytes() for p in files}
        if model_only:  # only the spec, and only when flags changed it
            theirs = {"scaffold.toml": theirs["scaffold.toml"]} if flags else {}
        changes, writes = plan_files(root, state, theirs, spec, removals=not model_only)

        ops: list[tuple[str, Path | None]] = [("model", stage / "model")]
        for rel, content in writes.items():
            if content is None:
                ops.append((rel, None))
                continue
            staged = stage / "new" / rel
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_bytes(content)
            ops.append((rel, staged))
        ops += _state_ops(root, state, theirs, stage, model_only)
        if not dry_run:
            progress("applying")
            apply(root, ops)
    return UpdateResult(root=root, spec=spec, changes=changes, model_note=model_note, signature_change=change,
                        field_change=fields, dry_run=dry_run, warnings=warnings + result.warnings)


def _read_spec(root: Path) -> dict:
    """The project's scaffold.toml, paths in it taken relative to the project (as `new --spec` reads them)."""
    return anchor_paths(read_toml(root / "scaffold.toml"), root)


def _state_ops(root: Path, state: State | None, theirs: dict[str, bytes], stage: Path,
               model_only: bool) -> list[tuple[str, Path | None]]:
    """Replace .scaffold/ with the record of what this update generated (base = theirs, conflicts or not)."""
    if model_only:
        if state is None or "scaffold.toml" not in theirs:
            return []
        generated = {rel: read_base(root, state, rel) for rel in state.files}
        if any(v is None for v in generated.values()):
            return []  # a damaged record stays as it is; a full update rewrites it
        generated["scaffold.toml"] = theirs["scaffold.toml"]
        payload = state_payload({k: v for k, v in generated.items() if v is not None})
        payload = {k: v for k, v in payload.items() if k in (STATE_FILE, base_path("scaffold.toml"))}
    else:
        payload = state_payload(theirs)
    write_payload(stage / "scaffold", payload)
    if model_only:
        return [(rel, stage / "scaffold" / rel) for rel in payload]
    return [(STATE_FILE, stage / "scaffold" / STATE_FILE), (BASE_DIR, stage / "scaffold" / BASE_DIR)]


def _carry_model_files(old: Path, new: Path, manifest: dict) -> list[str]:
    """Copy files the user put in model/ (not written by an export) into the new model/."""
    exported = {*EXPORT_FILES, str(manifest.get("artifact")), str(manifest.get("golden"))}
    carried = []
    if old.is_dir():
        for p in sorted(old.iterdir()):
            if p.name in exported or os.path.lexists(new / p.name):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.copytree(p, new / p.name, symlinks=True)
            else:
                shutil.copy2(p, new / p.name, follow_symlinks=False)
            carried.append(p.name)
    return carried


@contextlib.contextmanager
def _staging(root: Path, warn: Callable[[str], None]) -> Iterator[Path]:
    """A scratch directory beside the project (same file system, so its files move in by rename), removed after."""
    pattern = re.compile(rf"\.{re.escape(root.name)}\.[a-z0-9_]+\.scaffold-update")
    with contextlib.suppress(OSError):
        for old in root.parent.iterdir():  # a SIGKILLed update leaves its staging directory; nothing else does
            if pattern.fullmatch(old.name) and (old / STAGING_MARKER).is_file():
                with contextlib.suppress(ScaffoldError):
                    remove_tree(old)
                    warn(f"removed {old.name}, which an interrupted scaffold update left")
    stage = None
    with contextlib.suppress(OSError):
        candidate = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".scaffold-update", dir=root.parent))
        if candidate.stat().st_dev == root.stat().st_dev:
            stage = candidate
        else:
            candidate.rmdir()
    if stage is None:  # the parent is read-only, or the project is a mount point of its own
        (root / STATE_DIR).mkdir(exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix="update-", suffix=".staging", dir=root / STATE_DIR))
    try:
        (stage / STAGING_MARKER).write_text("scaffold update's staging directory; scaffold removes it\n",
                                            encoding="utf-8")
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# --------------------------------------------------------------------------------------------- planning


def plan_files(root: Path, state: State | None, theirs: dict[str, bytes], spec: ProjectSpec | None = None, *,
               removals: bool = True) -> tuple[list[FileChange], dict[str, bytes | None]]:
    """What happens to each generated file, and what to write (None: remove). Reads the project, writes nothing."""
    recorded = state.files if state else {}
    old_version = state.scaffold_version if state else "?"
    labels = ("yours", f"scaffold {old_version} (before)", f"scaffold {__version__} (now)")
    changes: list[FileChange] = []
    writes: dict[str, bytes | None] = {}
    for rel, new in sorted(theirs.items()):
        path = root / rel
        if os.path.lexists(path) and not (path.is_file() and not path.is_symlink()):
            changes.append(FileChange(rel, "conflicted", "not a regular file here; left alone, scaffold's version "
                                      f"is in {base_path(rel)}"))
            continue
        ours = path.read_bytes() if path.is_file() else None
        base = read_base(root, state, rel) if state else None
        if ours is None:
            if rel not in recorded:
                writes[rel] = new
                changes.append(FileChange(rel, "added"))
            elif digest(new) == recorded[rel]:
                changes.append(FileChange(rel, "kept", "deleted by you; scaffold's version has not changed"))
            else:
                writes[rel] = new
                changes.append(FileChange(rel, "conflicted", "deleted by you, changed by scaffold: the new version "
                                          "is back; delete it again if you do not want it"))
        elif ours == new:
            changes.append(FileChange(rel, "unchanged"))
        elif rel in recorded and digest(ours) == recorded[rel]:
            writes[rel] = new
            changes.append(FileChange(rel, "updated"))
        elif rel in recorded and digest(new) == recorded[rel]:
            changes.append(FileChange(rel, "kept", "your edits; scaffold's version has not changed"))
            _check_spec_file(rel, ours, ours, root, spec, changes, writes, new)
        else:
            merged, conflicts = merge3(base or b"", ours, new, (f"{labels[0]}: {rel}", labels[1], labels[2]))
            writes[rel] = merged
            if conflicts:
                changes.append(FileChange(rel, "conflicted", f"{conflicts} conflict(s) between your edits and "
                                          "scaffold's: resolve the <<<<<<< markers"
                                          + ("" if base is not None else " (no record of what scaffold wrote)")))
            else:
                changes.append(FileChange(rel, "merged", "your edits and scaffold's changes, together"))
                _check_spec_file(rel, merged, ours, root, spec, changes, writes, new)
    if removals:
        for rel in sorted(set(recorded) - set(theirs)):
            path = root / rel
            if not path.is_file() or path.is_symlink():
                continue
            if digest(path.read_bytes()) == recorded[rel]:
                writes[rel] = None
                changes.append(FileChange(rel, "removed", "scaffold no longer generates it"))
            else:
                changes.append(FileChange(rel, "kept", "scaffold no longer generates it; your edited copy stays"))
    return changes, writes


def _check_spec_file(rel: str, text: bytes, ours: bytes, root: Path, spec: ProjectSpec | None,
                     changes: list[FileChange], writes: dict[str, bytes | None], new: bytes) -> None:
    """scaffold.toml must describe the spec the project was just made from: a merge can keep an edited value that a
    flag overrode. Then the file gets the spec as used, and the user's version is kept beside it, as a conflict."""
    if rel != "scaffold.toml" or spec is None:
        return
    import tomllib

    try:
        same = spec_from_mapping(anchor_paths(tomllib.loads(text.decode("utf-8")), root)) == spec
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ScaffoldError):
        same = False
    if same:
        return
    writes[rel] = new
    writes["scaffold.toml.orig"] = ours
    changes[-1] = FileChange(rel, "conflicted", "your edits disagree with the flags given: it now holds the spec "
                             "used, your version is in scaffold.toml.orig")


def describe_signature(old: dict | None, new: dict | None) -> str | None:
    """One phrase for a changed input/output signature (None when it is the same)."""
    if not old or not new or old == new:
        return None

    def fmt(items: list[dict]) -> str:
        return ", ".join(f"{i['name']} {'x'.join(map(str, i['shape'])) or 'scalar'}:{i['dtype']}" for i in items)

    parts = [f"{what} {fmt(old.get(what, []))} -> {fmt(new.get(what, []))}"
             for what in ("inputs", "outputs") if old.get(what) != new.get(what)]
    return "; ".join(parts) or None


def describe_fields(old: dict | None, new: dict | None) -> str | None:
    """How the typed C++ structs change with the signature: `Outputs {out} -> {logits, boxes}` (None: same fields)."""
    from generator import cppnames
    from generator.spec import InputSpec

    if not old or not new:
        return None

    def inputs(sig: dict) -> list[str]:
        specs = tuple(InputSpec(name=i["name"], shape=tuple(i["shape"]), dtype=i["dtype"]) for i in sig["inputs"])
        return [f["field"] for f in cppnames.input_fields(specs)]

    def outputs(sig: dict) -> list[str]:
        return [f["field"] for f in cppnames.output_fields(sig["outputs"])]

    parts = []
    for struct, fields in (("Inputs", inputs), ("Outputs", outputs)):
        before, after = fields(old), fields(new)
        if before != after:
            parts.append(f"{struct} {{{', '.join(before)}}} -> {{{', '.join(after)}}}")
    return "; ".join(parts) or None


def compare_golden(old: Path, new: Path) -> str:
    """Whether the new model answers the golden inputs as the old one did (the artifact's bytes say nothing:
    a TorchScript archive differs on every save)."""
    import torch

    try:
        a, b = torch.load(old, weights_only=True), torch.load(new, weights_only=True)
        same_inputs = a["input_names"] == b["input_names"] and len(a["inputs"]) == len(b["inputs"]) and all(
            x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a["inputs"], b["inputs"],
                                                                                          strict=True))
        if not same_inputs or a["output_names"] != b["output_names"]:
            return "new golden inputs or outputs (the signature changed)"
        diffs = [(x.double() - y.double()).abs().max().item() if x.numel() else 0.0
                 for x, y in zip(a["outputs"], b["outputs"], strict=True) if x.shape == y.shape]
        if len(diffs) != len(a["outputs"]):
            return "outputs of another shape on the golden inputs"
    except Exception:  # an unreadable old golden: nothing to compare with
        return "no previous golden outputs to compare with"
    worst = max(diffs, default=0.0)
    if worst == 0.0:
        return "same outputs as before on the golden inputs"
    return f"outputs changed on the golden inputs (max abs difference {worst:.3g})"


def check_clean(root: Path) -> None:
    """Refuse a project with uncommitted changes (when git tracks it): the update should be reviewable and undoable."""
    git = shutil.which("git")
    if git is None:
        return
    inside = subprocess.run([git, "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True,
                            text=True, check=False)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return
    # GIT_OPTIONAL_LOCKS=0: a read-only look; git status would otherwise refresh (write) the index.
    status = subprocess.run([git, "-C", str(root), "status", "--porcelain", "--", "."], capture_output=True,
                            text=True, check=False, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    if status.returncode != 0:
        raise ScaffoldError(f"git status failed in {root}: {status.stderr.strip()}")
    dirty = [ln[3:] for ln in status.stdout.splitlines() if ln.strip()]
    if dirty:
        raise ScaffoldError(f"{root} has uncommitted changes ({len(dirty)} path(s), e.g. {dirty[0]}): commit or "
                            "stash them first so the update can be reviewed and undone, or pass --allow-dirty")


# --------------------------------------------------------------------------------------------- applying


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def apply(root: Path, ops: list[tuple[str, Path | None]]) -> None:
    """Put each staged path (None: nothing) at root/rel, all or none: see the module doc for the journal.

    A path that is replaced is swapped with its new version in one renameat2 exchange where the system has it,
    so model/ or a source file is never missing, even for a moment (a service reading model/ while the weekly
    retrain lands sees the old or the new one); the old one then moves to the backup.
    """
    journal, backup = root / JOURNAL, root / BACKUP
    created: list[str] = [] if (root / STATE_DIR).is_dir() else [STATE_DIR]
    for rel, src in ops:
        if src is None:
            continue
        for parent in reversed(Path(rel).parents[:-1]):  # shallowest first, without "."
            if not (root / parent).exists() and parent.as_posix() not in created:
                created.append(parent.as_posix())
    entries = []
    for rel, src in ops:
        old = os.path.lexists(root / rel)
        # The old path's inode tells a rollback which side of an exchange it finds where.
        entries.append({"path": rel, "old": old, "ino": os.lstat(root / rel).st_ino if old else None,
                        "src": None if src is None else str(src)})
    with signals_held():
        (root / STATE_DIR).mkdir(exist_ok=True)
        tmp = journal.with_name(journal.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            json.dump({"created": created, "entries": entries}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, journal)
        try:
            for d in created:
                (root / d).mkdir(exist_ok=True)
            for entry, (rel, src) in zip(entries, ops, strict=True):
                target, saved = root / rel, backup / rel
                if entry["old"]:
                    saved.parent.mkdir(parents=True, exist_ok=True)
                    if src is not None and fsops.exchange(src, target):
                        os.rename(src, saved)  # src now holds the old version
                        continue
                    os.rename(target, saved)
                if src is not None:
                    os.rename(src, target)
        except BaseException as e:
            rollback(root)
            if isinstance(e, OSError):
                raise ScaffoldError(f"could not apply the update ({e}); the project was left as it was") from None
            raise
        journal.unlink()  # the commit point: from here on the update stands
        shutil.rmtree(backup, ignore_errors=True)  # held too: a signal now must not leave it behind in the project


def rollback(root: Path) -> None:
    """Undo a partly applied update from its journal, entry by entry in reverse (safe to run again if interrupted)."""
    journal, backup = root / JOURNAL, root / BACKUP
    try:
        data = json.loads(journal.read_text(encoding="utf-8"))
        entries, created = data["entries"], data["created"]
    except (OSError, ValueError, KeyError) as e:
        raise ScaffoldError(f"cannot read {journal} to roll back an interrupted update: {e}") from None
    for entry in reversed(entries):
        target, saved = root / entry["path"], backup / entry["path"]
        src = Path(entry["src"]) if entry["src"] else None
        if entry["old"]:
            if os.path.lexists(saved):  # moved away: whatever is at target now came from the update
                _remove(target)
                os.rename(saved, target)
            elif src is not None and _inode(target) not in (None, entry["ino"]) and _inode(src) == entry["ino"]:
                _remove(target)  # exchanged, and killed before the old version reached the backup
                os.rename(src, target)
        elif src is not None:
            _remove(target)
    shutil.rmtree(backup, ignore_errors=True)
    journal.unlink()
    for d in reversed(created):
        with contextlib.suppress(OSError):
            (root / d).rmdir()


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None
