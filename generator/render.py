"""Render templates into a project directory that appears whole, or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from generator.errors import ScaffoldError
from generator.textsafe import FILTERS

PACKAGE_DIR = Path(__file__).resolve().parent


def template_root() -> Path:
    """Templates ship inside the wheel as generator/templates; a source checkout has them at the top."""
    for candidate in (PACKAGE_DIR / "templates", PACKAGE_DIR.parent / "templates"):
        if (candidate / "project").is_dir():
            return candidate
    raise ScaffoldError(f"scaffold's templates are missing (looked in {PACKAGE_DIR}): reinstall scaffold")


def output_path(template: Path) -> Path:
    """`dot-gitignore.j2` makes `.gitignore`: a template tree holds no dot-files git would act on."""
    parts = ["." + p[len("dot-"):] if p.startswith("dot-") else p for p in template.parts]
    out = Path(*parts)
    return out.with_suffix("") if out.suffix == ".j2" else out


def render_tree(flavour: str, context: dict, dest: Path, skip: set[str] | None = None) -> list[Path]:
    """Render every template under templates/<flavour>/ into dest, file for file; return what was written."""
    root = template_root()
    env = Environment(loader=FileSystemLoader(str(root)), undefined=StrictUndefined, keep_trailing_newline=True,
                      autoescape=False)
    env.filters.update(FILTERS)
    written = []
    base = root / flavour
    for template in sorted(p for p in base.rglob("*") if p.is_file()):
        rel = template.relative_to(base)
        out_rel = output_path(rel)
        if skip and out_rel.as_posix() in skip:
            continue
        text = env.get_template(f"{flavour}/{rel.as_posix()}").render(**context)
        target = dest / out_rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        written.append(out_rel)
    return written


def check_destination(dest: Path, force: bool) -> None:
    """Refuse to overwrite without --force, and never let --force remove anything that holds the caller."""
    if dest.exists() and not dest.is_dir():
        raise ScaffoldError(f"output {dest} exists and is not a directory")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise ScaffoldError(f"output directory {dest} exists and is not empty: pass --force to replace it")
    if force and dest.exists():
        resolved = dest.resolve()
        cwd = Path.cwd().resolve()
        protected = {cwd, *cwd.parents, Path.home().resolve()}
        if resolved in protected:
            raise ScaffoldError(f"--force would replace {resolved}, which holds the current directory or your home; "
                                "run scaffold from outside it or choose another --output")


@contextlib.contextmanager
def staged(dest: Path, force: bool) -> Iterator[Path]:
    """Yield a scratch directory beside dest; on success it replaces dest in one rename, on failure it vanishes."""
    check_destination(dest, force)
    parent = dest.absolute().parent
    created = [p for p in (parent, *parent.parents) if not p.exists()]
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".scaffold-new", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    scratch.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the project should look like any mkdir'd directory
    try:
        yield scratch
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".scaffold-old", dir=parent))
            os.rmdir(old)
            dest.rename(old)
            scratch.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            scratch.rename(dest)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        for p in created:  # innermost first: only directories this call made, and only while empty
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
