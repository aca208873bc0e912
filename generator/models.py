"""Resolve a model source into a `torch.nn.Module` (or a loaded TorchScript module).

A source is one of: a torchvision model name (`resnet18`), `package.module:attr` where attr is an
`nn.Module` class or a factory returning a module, or a path to an existing TorchScript `.pt` file.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from generator.errors import ScaffoldError
from generator.spec import InputSpec

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")
# torchvision families whose models take one NCHW image batch; 224x224 is what their weights were trained at.
IMAGE_MODULES = ("torchvision.models", "torchvision.models.segmentation")
IMAGE_DEFAULT = (InputSpec(name="x", shape=(1, 3, 224, 224), dtype="float32"),)


@dataclass
class ResolvedModel:
    module: torch.nn.Module
    kind: str  # "torchvision" | "python" | "torchscript"
    default_inputs: tuple[InputSpec, ...] | None
    description: str

    def argument_names(self) -> list[str]:
        """forward's positional argument names, for error messages that say exactly which --input to pass."""
        try:
            if self.kind == "torchscript":
                return [a.name for a in self.module.forward.schema.arguments[1:]]
            params = inspect.signature(self.module.forward).parameters.values()
            return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (AttributeError, TypeError, ValueError, RuntimeError):
            return []


def resolve(source: str, seed: int = 0) -> ResolvedModel:
    """Turn a spec's model source into a module in eval mode, with default inputs where they are known."""
    torch.manual_seed(seed)  # random weights, but the same ones each run
    path = Path(source)
    if path.suffix in TORCHSCRIPT_SUFFIXES or path.exists():
        return _load_torchscript(path)
    if ":" in source:
        return _import_attr(source)
    return _torchvision(source)


def _load_torchscript(path: Path) -> ResolvedModel:
    if not path.is_file():
        raise ScaffoldError(f"model file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: "torch.jit.load is deprecated"
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError or its own types; any failure means "not loadable"
        raise ScaffoldError(f"{path} is not a loadable TorchScript file: {_first_line(e)}") from None
    module.eval()
    return ResolvedModel(module=module, kind="torchscript", default_inputs=None,
                         description=f"TorchScript file {path}")


def _import_attr(source: str) -> ResolvedModel:
    module_name, _, attr = source.partition(":")
    if not module_name or not attr:
        raise ScaffoldError(f"model source '{source}': expected package.module:attr, e.g. mypkg.nets:Net")
    # Users name modules relative to where they stand, as `python -m` would.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        mod = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ScaffoldError(f"cannot import '{module_name}' (from --model {source}): {e}") from None
    except Exception as e:
        raise ScaffoldError(f"importing '{module_name}' failed: {type(e).__name__}: {_first_line(e)}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            hint = difflib.get_close_matches(part, names, n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ScaffoldError(f"module '{module_name}' has no attribute '{attr}'{suggestion}")
        obj = getattr(obj, part)
    try:
        model = obj() if callable(obj) else obj
    except TypeError as e:
        raise ScaffoldError(
            f"'{source}' must be an nn.Module class or a factory callable with no arguments: {e}"
        ) from None
    except Exception as e:
        raise ScaffoldError(f"constructing '{source}' raised {type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, torch.nn.Module):
        raise ScaffoldError(f"'{source}' gave a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    defaults = getattr(model, "scaffold_inputs", None)
    return ResolvedModel(module=model, kind="python", default_inputs=_declared_inputs(defaults, source),
                         description=f"{source} ({type(model).__name__})")


def _declared_inputs(declared: object, source: str) -> tuple[InputSpec, ...] | None:
    """A module may declare `scaffold_inputs = ["x=1x3x32x32", "ids=1x16:int64"]` as its default inputs."""
    if declared is None:
        return None
    from generator.spec import parse_input_flag

    if not isinstance(declared, (list, tuple)) or not all(isinstance(d, str) for d in declared):
        raise ScaffoldError(f"{source}.scaffold_inputs: expected a list of 'NAME=SHAPE[:DTYPE]' strings")
    return tuple(parse_input_flag(d) for d in declared)


def _torchvision(name: str) -> ResolvedModel:
    try:
        import torchvision.models as tvm
    except ImportError as e:
        raise ScaffoldError(
            f"'{name}' looks like a torchvision model name, but torchvision does not import ({_first_line(e)}); "
            "install it (pip install torchvision) or pass --model package.module:attr"
        ) from None
    available = tvm.list_models()
    if name not in available:
        close = difflib.get_close_matches(name, available, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()"
        raise ScaffoldError(f"unknown model '{name}': not a torchvision model, a file, or package.module:attr{hint}")
    try:
        model = tvm.get_model(name, weights=None)
    except Exception as e:
        raise ScaffoldError(f"torchvision could not build '{name}': {_first_line(e)}") from None
    model.eval()
    family = type(model).__module__
    image_like = name in tvm.list_models(module=tvm) or name in tvm.list_models(module=tvm.segmentation)
    return ResolvedModel(module=model, kind="torchvision", default_inputs=IMAGE_DEFAULT if image_like else None,
                         description=f"torchvision {name} ({family}, random weights)")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
