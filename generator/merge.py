"""What scaffold wrote into a project (`.scaffold/`), and the three-way merge `scaffold update` does with it.

`.scaffold/state.json` records scaffold's version, the spec, and the sha256 of every generated file as scaffold
wrote it; `.scaffold/base/PATH.base` keeps that exact text. The text is stored, not re-rendered on demand,
because a three-way merge needs the base, and after an upgrade the scaffold version (and templates) that
wrote it is no longer installed. The `.base` suffix keeps tools from reading the copies as project files
(a `BUILD.bazel` there would be a Bazel package, a `.gitignore` or `.clang-format` would apply below it).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from generator import __version__
from generator.errors import ScaffoldError

STATE_DIR = ".scaffold"
STATE_FILE = f"{STATE_DIR}/state.json"
BASE_DIR = f"{STATE_DIR}/base"
BASE_SUFFIX = ".base"
FORMAT = 1
ABOUT = ("Written by scaffold: what it generated here (file hashes, and in base/ the exact text), so that "
         "`scaffold update` can tell your edits from its own and merge a newer render into them. Commit it.")


@dataclass(frozen=True)
class State:
    """A project's record: which files scaffold generated, with the sha256 of the text it wrote."""

    scaffold_version: str
    files: dict[str, str]
    spec: dict


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def base_path(rel: str) -> str:
    """Where the text scaffold wrote for `rel` is kept, relative to the project."""
    return f"{BASE_DIR}/{rel}{BASE_SUFFIX}"


def state_payload(generated: dict[str, bytes]) -> dict[str, bytes]:
    """The `.scaffold/` files (relative path -> bytes) that record `generated` (relative path -> what was written)."""
    try:
        spec = tomllib.loads(generated["scaffold.toml"].decode("utf-8"))
    except (KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        spec = {}
    state = {"about": ABOUT, "format": FORMAT, "scaffold_version": __version__, "spec": spec,
             "files": {rel: digest(data) for rel, data in sorted(generated.items())}}
    payload = {STATE_FILE: (json.dumps(state, indent=2) + "\n").encode("utf-8")}
    payload.update({base_path(rel): data for rel, data in generated.items()})
    return payload


def write_payload(root: Path, payload: dict[str, bytes]) -> None:
    for rel, data in payload.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def record_state(root: Path, files: list[Path]) -> None:
    """Write `.scaffold/` for the generated files in root, as scaffold just wrote them (the spec from scaffold.toml)."""
    write_payload(root, state_payload({p.as_posix(): (root / p).read_bytes() for p in files}))


def read_state(root: Path) -> State | None:
    """The project's record, or None for a project made before scaffold kept one."""
    path = root / STATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in files.items()):
            raise TypeError("'files' must map paths to sha256 strings")
        return State(scaffold_version=str(data.get("scaffold_version", "?")), files=files,
                     spec=data.get("spec") or {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ScaffoldError(f"{path} is not a valid scaffold record ({e}); restore it from version control") from None


def read_base(root: Path, state: State, rel: str) -> bytes | None:
    """The text scaffold wrote for rel, when it is kept and matches the recorded hash."""
    path = root / base_path(rel)
    if rel not in state.files or not path.is_file():
        return None
    data = path.read_bytes()
    return data if digest(data) == state.files[rel] else None


def merge3(base: bytes, ours: bytes, theirs: bytes, labels: tuple[str, str, str]) -> tuple[bytes, int]:
    """`git merge-file`: the merged text and the number of conflicts (left as <<<<<<< ======= >>>>>>> markers)."""
    git = shutil.which("git")
    if git is None:
        raise ScaffoldError("git is needed to merge your edits with scaffold's new files (git merge-file); "
                            "install git, or undo your edits to the files being updated")
    with tempfile.TemporaryDirectory(prefix="scaffold-merge-") as tmp:
        paths = []
        for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            p = Path(tmp) / name
            p.write_bytes(data)
            paths.append(str(p))
        proc = subprocess.run([git, "merge-file", "-p", "-L", labels[0], "-L", labels[1], "-L", labels[2], *paths],
                              capture_output=True, check=False)
    # Exit status: the number of conflicts (0..127); a negative count (255) is an error such as a binary file.
    if proc.returncode < 0 or proc.returncode > 127:
        message = proc.stderr.decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
        raise ScaffoldError(f"git merge-file failed on {labels[0]}: {message}")
    return proc.stdout, proc.returncode
