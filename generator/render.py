"""Render templates into a project directory that appears whole, or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from generator import fsops
from generator.errors import ScaffoldError
from generator.textsafe import FILTERS

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

PACKAGE_DIR = Path(__file__).resolve().parent


def template_root() -> Path:
    """Templates ship inside the wheel as generator/templates; a source checkout has them at the top."""
    for candidate in (PACKAGE_DIR / "templates", PACKAGE_DIR.parent / "templates"):
        if (candidate / "project").is_dir():
            return candidate
    raise ScaffoldError(f"scaffold's templates are missing (looked in {PACKAGE_DIR}): reinstall scaffold")


def output_path(template: Path, name: str = "__name__") -> Path:
    """`dot-gitignore.j2` makes `.gitignore`: a template tree holds no dot-files git would act on.
    A `__name__` directory becomes the project's name (`include/__name__/model.h` -> `include/NAME/model.h`)."""
    parts = ["." + p[len("dot-"):] if p.startswith("dot-") else name if p == "__name__" else p
             for p in template.parts]
    out = Path(*parts)
    return out.with_suffix("") if out.suffix == ".j2" else out


def render_tree(flavour: str, context: dict, dest: Path, skip: set[str] | None = None) -> list[Path]:
    """Render every template under templates/<flavour>/ into dest, file for file; return what was written.

    Only `*.j2` files are templates (rendered, the suffix dropped); any other file is copied byte for byte, as
    copier's suffix rule does, so a file with no template logic stays plain C++/Starlark/YAML that formatters,
    compilers and linters read as it is in the repository.
    """
    root = template_root()
    env = Environment(loader=FileSystemLoader(str(root)), undefined=StrictUndefined, keep_trailing_newline=True,
                      autoescape=False)
    env.filters.update(FILTERS)
    written = []
    base = root / flavour
    for template in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = template.relative_to(base)
        out_rel = output_path(rel, context.get("name", "__name__"))
        if skip and out_rel.as_posix() in skip:
            continue
        target = dest / out_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if template.suffix == ".j2":
            text = env.get_template(f"{flavour}/{rel.as_posix()}").render(**context)
            target.write_text(text, encoding="utf-8")
        else:
            shutil.copyfile(template, target)
        written.append(out_rel)
    return written


# --------------------------------------------------------------------------------------------- destinations
#
# What `scaffold new --output DEST [--force]` may touch: DEST itself, and beside it only its own staging
# directories (`.DEST.*.scaffold-new` / `.scaffold-old`, each holding a STAGING_MARKER file) and its lock file
# (`.DEST.scaffold-lock`). --force replaces DEST only when scaffold made it (scaffold.toml and
# model/manifest.json), never when it is or holds the current directory or $HOME, and never across a mount.

STAGING_MARKER = ".scaffold-staging"
_MARKER_TEXT = "scaffold staging directory: an interrupted run left it; scaffold removes it on the next run\n"
_HELD_SIGNALS = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back for a few file-system calls that must not be cut in half; they arrive after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _mount_points() -> list[Path]:
    """Every mount point of this process (Linux: /proc/self/mountinfo), bind mounts of one file system included."""
    try:
        text = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return []
    points = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:  # field 5 is the mount point, with space, tab, newline, backslash as \ooo
            points.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])))
    return points


def mount_inside(path: Path) -> Path | None:
    """The first mount point at or below path, or None. Real checks: os.path.ismount, the mount table (a bind
    mount of a directory on the same file system keeps st_dev), and st_dev of every directory below, walked
    without following symbolic links."""
    real = Path(os.path.realpath(path))
    if os.path.ismount(real):
        return real
    for point in _mount_points():
        if point == real or real in point.parents:
            return point
    try:
        root_dev = os.lstat(real).st_dev
    except OSError:
        return None
    stack = [real]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.stat(follow_symlinks=False).st_dev != root_dev:
                            return Path(entry.path)
                        stack.append(Path(entry.path))
        except OSError:
            continue  # unreadable: nothing scaffold could remove there either
    return None


def is_scaffold_project(path: Path) -> bool:
    """What `scaffold new` writes, whatever the user changed since: the spec and the export's manifest."""
    return (path / "scaffold.toml").is_file() and (path / "model" / "manifest.json").is_file()


def _protected() -> dict[Path, str]:
    """Directories no output may be: the current one, $HOME, and every directory that holds either."""
    cwd = Path.cwd().resolve()
    protected = {p: "a directory that holds the current directory" for p in cwd.parents}
    with contextlib.suppress(RuntimeError, KeyError, OSError):  # no $HOME and no passwd entry
        home = Path.home().resolve()
        protected.update({p: "a directory that holds your home directory" for p in home.parents})
        protected[home] = "your home directory"
    protected[cwd] = "the current directory"
    protected[Path(os.path.abspath(os.sep))] = "the root directory"
    return protected


def check_destination(dest: Path, force: bool) -> None:
    """Refuse to overwrite without --force, and limit what --force may replace (see the notes above)."""
    dest = Path(os.path.abspath(dest))
    resolved = dest.resolve()
    why = _protected().get(resolved)
    if why:
        raise ScaffoldError(f"output {dest} is {why}: scaffold writes a new directory there and will not replace "
                            "it; choose another --output")
    if os.path.islink(dest):
        raise ScaffoldError(f"output {dest} is a symbolic link (to {resolved}): pass the directory itself")
    if not os.path.lexists(dest):
        return
    if not dest.is_dir():
        raise ScaffoldError(f"output {dest} exists and is not a directory")
    if os.path.ismount(dest) or resolved in _mount_points():
        raise ScaffoldError(f"output {dest} is a mount point: scaffold cannot replace it; choose a directory "
                            "inside it")
    try:
        empty = not any(dest.iterdir())
    except OSError as e:
        raise ScaffoldError(f"output {dest} cannot be read: {e.strerror}") from None
    if empty:
        return
    if not force:
        raise ScaffoldError(f"output directory {dest} exists and is not empty: pass --force to replace it")
    if not is_scaffold_project(dest):
        raise ScaffoldError(f"--force only replaces a project scaffold made, and {dest} has no scaffold.toml and "
                            "model/manifest.json: remove it yourself or choose another --output")
    mount = mount_inside(dest)
    if mount is not None:
        raise ScaffoldError(f"--force will not replace {dest}: it holds a mount point ({mount}), and removing the "
                            "old project would empty that file system; unmount it or choose another --output")


def _lock_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.scaffold-lock"


@contextlib.contextmanager
def destination_lock(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on dest for the whole block: a second scaffold writing to dest fails at once.

    The lock is `fcntl.flock` on `.NAME.scaffold-lock` beside dest (the parent must exist), removed on exit.
    Raises ScaffoldError when another process holds it or the parent is not writable.
    """
    dest = Path(os.path.abspath(dest))
    if fcntl is None:  # Windows: no flock; the no-replace rename still refuses a project that appeared
        yield
        return
    path = _lock_path(dest)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise ScaffoldError(f"cannot write in {dest.parent}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ScaffoldError(f"another scaffold is writing {dest} right now (it holds {path.name}); wait for it "
                                "or choose another --output") from None
        # The holder before us unlinks the file as it finishes: a lock on that unlinked file locks nothing.
        mine = os.fstat(fd)
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _new_staging(parent: Path, name: str, kind: str) -> Path:
    """A fresh `.NAME.xxxxxxxx.scaffold-KIND` directory beside the destination, marked as scaffold's."""
    path = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=f".scaffold-{kind}", dir=parent))
    (path / STAGING_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
    return path


def _unmark(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (path / STAGING_MARKER).unlink()


def _free_name(parent: Path, name: str, kind: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=f".scaffold-{kind}", dir=parent))
    path.rmdir()
    return path


def remove_tree(path: Path) -> None:
    """Remove a staging directory or a replaced project; never across a mount (checked again right here)."""
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not path.is_dir():
        path.unlink()
        return
    mount = mount_inside(path)
    if mount is not None:
        raise ScaffoldError(f"{path} holds a mount point ({mount}): left in place; unmount it and remove it yourself")
    shutil.rmtree(path, ignore_errors=True)  # rmtree never follows symbolic links


def _leftovers(parent: Path, name: str) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]+\.scaffold-(new|old)")
    try:
        return sorted(p for p in parent.iterdir() if pattern.fullmatch(p.name))
    except OSError:
        return []


def recover_leftovers(dest: Path, warn: Callable[[str], None]) -> None:
    """Staging directories an interrupted run left beside dest (call with the lock held). Marked ones are
    scaffold's: an old project whose replacement never arrived goes back to dest, the rest is removed.
    Unmarked ones are reported and left alone."""
    dest = Path(os.path.abspath(dest))
    for path in _leftovers(dest.parent, dest.name):
        marked = path.is_dir() and not path.is_symlink() and (path / STAGING_MARKER).is_file()
        if not marked:
            warn(f"{path} looks like a leftover of an interrupted scaffold run but is not marked as one: left alone")
            continue
        if path.name.endswith(".scaffold-old") and not os.path.lexists(dest):
            try:
                with signals_held():
                    _unmark(path)
                    fsops.rename_noreplace(path, dest)
            except OSError as e:
                warn(f"{path} holds the project an interrupted scaffold run set aside, and it could not be put "
                     f"back at {dest} ({e.strerror}): move it back yourself")
                continue
            warn(f"restored {dest} from {path.name}, which an interrupted scaffold run left")
            continue
        try:
            remove_tree(path)
        except ScaffoldError as e:
            warn(str(e))
            continue
        warn(f"removed {path.name}, which an interrupted scaffold run left")


def _swap(prepared: Path, dest: Path) -> Path | None:
    """Put prepared at dest; return where the old dest now is (to be removed), or None if there was none.

    prepared keeps its marker until the rename that makes it the project, so a kill at any point before
    leaves it recognisable; the old project is marked as soon as it is no longer at dest.
    """
    with signals_held():
        try:
            if not os.path.lexists(dest):
                _unmark(prepared)
                fsops.rename_noreplace(prepared, dest)
                return None
            _unmark(prepared)
            if fsops.exchange(prepared, dest):
                # prepared's path now holds the old project: mark it, so a kill during removal is cleaned later
                with contextlib.suppress(OSError):
                    (prepared / STAGING_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
                return prepared
            # No atomic exchange here: the old project is marked and set aside first, so a stop between the two
            # renames leaves it where the next run puts it back (and the marked new one is removed).
            (prepared / STAGING_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
            (dest / STAGING_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
            old = _free_name(dest.parent, dest.name, "old")
            os.rename(dest, old)
            try:
                _unmark(prepared)
                fsops.rename_noreplace(prepared, dest)
            except BaseException:
                os.rename(old, dest)
                _unmark(dest)
                raise
            return old
        except FileExistsError:
            (prepared / STAGING_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
            raise ScaffoldError(f"output {dest} appeared while scaffold was working; it was left as it is and the "
                                "new project discarded") from None
        except OSError as e:
            with contextlib.suppress(OSError):
                (prepared / STAGING_MARKER).write_text(_MARKER_TEXT, encoding="utf-8")
            raise ScaffoldError(f"cannot move the new project to {dest}: {e.strerror}") from None


def replace_directory(prepared: Path, dest: Path, *, locked: bool = False) -> None:
    """Atomically put the fully prepared directory `prepared` at `dest`, then remove the old `dest`.

    `prepared` must be a sibling of `dest` (same parent, so the same file system; e.g. made with
    `tempfile.mkdtemp(dir=dest.parent)`). Where the kernel has renameat2(RENAME_EXCHANGE) the two are swapped
    in one step, so `dest` holds the old tree or the new one at every moment, even under SIGKILL; elsewhere
    the old tree is renamed aside first (and put back by the next run if stopped in between). A missing `dest`
    is created with a no-replace rename. SIGINT/SIGTERM wait until the swap is done.

    The per-destination lock (`destination_lock`) is taken unless `locked=True` says the caller holds it.
    On failure raises ScaffoldError and leaves `dest` as it was; `prepared` is then the caller's to remove.
    """
    dest = Path(os.path.abspath(dest))
    if Path(os.path.abspath(prepared)).parent != dest.parent:
        raise ScaffoldError(f"internal: {prepared} must be beside {dest} to replace it atomically")
    with contextlib.nullcontext() if locked else destination_lock(dest):
        old = _swap(Path(prepared), dest)
        if old is not None:
            try:
                remove_tree(old)
            except ScaffoldError as e:  # a mount appeared since the check: the new project is in place anyway
                raise ScaffoldError(f"the new project is in place at {dest}, but {e}") from None


def _commit(scratch: Path, dest: Path, force: bool) -> None:
    """The final move of `scaffold new`: checked again now, since export takes a while."""
    appeared = (f"output {dest} appeared or changed while scaffold was working; it was left as it is and the "
                "new project discarded")
    try:
        check_destination(dest, force)
    except ScaffoldError as e:
        raise ScaffoldError(f"{appeared} ({e})") from None
    if dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
        try:
            dest.rmdir()  # an empty directory is replaced; if something arrived meanwhile, this refuses
        except OSError:
            raise ScaffoldError(appeared) from None
    elif not force and os.path.lexists(dest):
        raise ScaffoldError(appeared)
    replace_directory(scratch, dest, locked=True)


@contextlib.contextmanager
def staged(dest: Path, force: bool, warn: Callable[[str], None] = lambda _msg: None) -> Iterator[Path]:
    """Yield a scratch directory beside dest; on success it replaces dest atomically, on failure it vanishes.

    The destination's lock is held throughout, so a second `scaffold new` into dest fails instead of
    interleaving; leftovers of interrupted runs are recovered or reported first (through warn).
    """
    dest = Path(os.path.abspath(dest))
    check_destination(dest, force)  # before creating anything
    if dest.name in ("", ".", ".."):
        raise ScaffoldError(f"output {dest} is not a directory scaffold can create; choose another --output")
    parent = dest.parent
    created = [p for p in (parent, *parent.parents) if not os.path.lexists(p)]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (parent, *parent.parents) if os.path.lexists(p) and not p.is_dir()), None)
        if blocker is not None:
            raise ScaffoldError(f"cannot create {dest}: {blocker} is a file, not a directory") from None
        raise ScaffoldError(f"cannot create the output's parent {parent}: {e.strerror}") from None
    try:
        with destination_lock(dest):
            recover_leftovers(dest, warn)
            check_destination(dest, force)
            try:
                scratch = _new_staging(parent, dest.name, "new")
            except OSError as e:
                raise ScaffoldError(f"cannot write in {parent}: {e.strerror}") from None
            umask = os.umask(0)
            os.umask(umask)
            scratch.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the project should look like any mkdir'd one
            try:
                yield scratch
                _commit(scratch, dest, force)
            except BaseException:
                with signals_held(), contextlib.suppress(ScaffoldError, OSError):
                    remove_tree(scratch)  # a second Ctrl-C must not cut this short; never crosses a mount
                raise
    except BaseException:
        with signals_held():
            for p in created:  # innermost first: only directories this call made, and only while empty
                with contextlib.suppress(OSError):
                    p.rmdir()
        raise
