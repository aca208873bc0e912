"""Check a model source before anything expensive runs: no torch, no torchvision import, no compiler.

`scaffold new` calls check_source() right after the spec parses, so a typo in a model name, a missing .pt file
or a module that is not there fails in well under a second instead of after torch (~2 s), torchvision (~2 s more)
and the C++ header probe. The checks use the words models.resolve() would use, and say nothing about what they
cannot decide cheaply: that stays resolve()'s job.

A torchvision name is checked against torchvision's own registry of builders, read from its source files: every
builder list_models() returns is a function decorated `@register_model()` (or `@register_model(name="...")`)
under torchvision/models/. Scanning those files (a few ms) finds the same names without importing torchvision;
when the scan finds nothing (a torchvision that registers models differently), the check is left to resolve().
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import sys
from pathlib import Path

from generator.errors import ScaffoldError
from generator.spec import ARTIFACT_SUFFIXES, is_weights_enum

# `@register_model()` or `@register_model(name="quantized_resnet18")`, then (after other decorators) `def NAME(`.
_REGISTER_RE = re.compile(r"^@register_model\((?:\s*name\s*=\s*[\"']([A-Za-z0-9_]+)[\"']\s*)?\)\s*\n"
                          r"(?:[ \t]*@.*\n|[ \t]+.*\n|[ \t]*\)\s*\n)*?def\s+([A-Za-z0-9_]+)\s*\(", re.MULTILINE)


def torchvision_models_dir() -> Path | None:
    """torchvision/models/ of the torchvision importable here, found without importing it."""
    try:
        spec = importlib.util.find_spec("torchvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        models = Path(location) / "models"
        if models.is_dir():
            return models
    return None


def torchvision_names(models_dir: Path) -> set[str]:
    """The names torchvision.models.list_models() would return, from the @register_model decorators."""
    names: set[str] = set()
    for source in sorted(models_dir.rglob("*.py")):
        try:
            text = source.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if "@register_model" not in text:
            continue
        for m in _REGISTER_RE.finditer(text):
            names.add(m.group(1) or m.group(2))
    return names


def unknown_torchvision_name(name: str, available: set[str] | list[str]) -> ScaffoldError:
    """The one line for a name that is neither a torchvision model, a file, nor package.module:attr."""
    close = difflib.get_close_matches(name, sorted(available), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
    return ScaffoldError(f"unknown model '{name}': not a torchvision model, a file, or package.module:attr{hint}")


def check_source(source: str, weights: str | None = None, *, also_search: list[Path] | None = None) -> None:
    """Raise the ScaffoldError resolve() would raise later, where it can be known without importing torch.

    Mirrors resolve()'s dispatch: an artifact suffix or an existing path is a file, `a:b` an import, anything
    else a torchvision name. A module is looked for on sys.path, in the current directory, and in also_search
    (`update` imports from the directory above the project too).
    """
    path = Path(source)
    if path.suffix.lower() in ARTIFACT_SUFFIXES or path.exists():
        if not path.is_file():
            raise ScaffoldError(f"model file not found: {path}")
    elif ":" in source:
        module_name, _, attr = source.partition(":")
        if not module_name or not attr:
            raise ScaffoldError(f"model source '{source}': expected package.module:attr, e.g. mypkg.nets:Net")
        top = module_name.split(".")[0]
        # Only the top-level package: finding a submodule would import (run) its parents.
        extra = [d for d in dict.fromkeys([str(Path.cwd()), *(str(p) for p in also_search or [])])
                 if d not in sys.path]
        sys.path[:0] = extra
        try:
            found = importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = True  # odd, but resolve() says what is wrong in its own words
        finally:
            for d in extra:
                sys.path.remove(d)
        if not found:
            raise ScaffoldError(f"cannot import '{module_name}' (from --model {source}): No module named '{top}'")
    else:
        models_dir = torchvision_models_dir()
        available = torchvision_names(models_dir) if models_dir else set()
        if available and source not in available:
            raise unknown_torchvision_name(source, available)
    if weights and not is_weights_enum(weights) and not Path(weights).is_file():
        raise ScaffoldError(f"weights file not found: {weights}")
