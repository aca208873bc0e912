"""Resolve a model source into a `torch.nn.Module` (or a loaded TorchScript module).

A source is one of: a torchvision model name (`resnet18`), `package.module:attr` where attr is an
`nn.Module` class or a factory returning a module, or a path to an existing TorchScript `.pt` file.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from generator.errors import ScaffoldError, is_interrupt, user_code_failure
from generator.spec import InputSpec, is_weights_enum, suggest

TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")
# torchvision families whose models take one NCHW image batch; 224x224 is what their weights were trained at.
IMAGE_MODULES = ("torchvision.models", "torchvision.models.segmentation")
IMAGE_DEFAULT = (InputSpec(name="x", shape=(1, 3, 224, 224), dtype="float32"),)
# torchvision detection models take a list of CHW images of any size (their transform resizes them, to 320 for the
# *_320_* and ssdlite320 models, 800 for the others). The default: a batch of two small 3x320x320 images, height and
# width dynamic (a scripted model takes any image size and any number of images).
DETECTION_DEFAULT = tuple(InputSpec(name=f"images[{i}]", shape=(3, 320, 320), dtype="float32", dynamic=(1, 2))
                          for i in range(2))


@dataclass
class ResolvedModel:
    module: torch.nn.Module
    kind: str  # "torchvision" | "python" | "torchscript"
    default_inputs: tuple[InputSpec, ...] | None
    description: str
    # The trained weights loaded into module (None: its initial, seeded random weights).
    weights: Any = None  # generator.weights.LoadedWeights
    # torchvision: the weights enum member whose transforms() and meta describe this model's preprocessing and
    # classes: the one loaded, else the model's DEFAULT (its metadata needs no download).
    weights_enum: Any = None
    notes: list[str] = field(default_factory=list)  # warnings for the user (a non-strict load, a stripped prefix)
    # The export method this model needs when the spec names none (torchvision detection: script).
    default_method: str | None = None
    # What the scripted model returns for an eager result: torchvision's detection models return their
    # detections in eager mode but (losses, detections) once scripted, so parity compares against ({}, eager).
    scripted_result: Any = None  # Callable[[Any], Any] | None

    def argument_names(self) -> list[str]:
        """forward's positional argument names, for error messages that say exactly which --input to pass."""
        return [name for name, _, _ in self._parameters()]

    def required_arguments(self) -> list[tuple[str, str]]:
        """forward's arguments without a default, each with how its --input is spelt (`x`, `images[0]`,
        `batch['KEY']` from its annotation), for the "no inputs known" hint."""
        return [(name, kind) for name, kind, has_default in self._parameters() if not has_default]

    def _parameters(self) -> list[tuple[str, str, bool]]:
        """(name, input spelling, has a default) per positional parameter of forward; [] when unknown."""
        try:
            if self.kind == "torchscript":
                return [(a.name, _spelling(a.name, str(a.type)), a.has_default_value())
                        for a in self.module.forward.schema.arguments[1:]]
            params = inspect.signature(self.module.forward).parameters.values()
            return [(p.name, _spelling(p.name, str(p.annotation)), p.default is not p.empty) for p in params
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (AttributeError, TypeError, ValueError, RuntimeError):
            return []


def _spelling(name: str, annotation: str) -> str:
    """How one tensor of this argument is named on the command line, from its type annotation."""
    lowered = annotation.lower().replace("typing.", "")
    if lowered.startswith(("list", "tuple", "sequence")):
        return f"{name}[0]"
    if lowered.startswith(("dict", "mapping")):
        return f"{name}['KEY']"
    return name


def resolve(source: str, seed: int = 0, *, weights: str | None = None, weights_strict: bool = True) -> ResolvedModel:
    """Turn a spec's model source into a module in eval mode, with default inputs where they are known.

    weights: a weights file loaded into it (see generator.weights), or for a torchvision model a weights
    enum name (DEFAULT, IMAGENET1K_V1), which torchvision loads from its cache or downloads.
    """
    torch.manual_seed(seed)  # random weights, but the same ones each run
    path = Path(source)
    enum_name = weights if weights and is_weights_enum(weights) and not Path(weights).is_file() else None
    if path.suffix in TORCHSCRIPT_SUFFIXES or path.exists():
        resolved = _load_torchscript(path)
    elif ":" in source:
        resolved = _import_attr(source)
    else:
        return _torchvision(source, weights, weights_strict, enum_name)
    if enum_name:
        raise ScaffoldError(f"--weights {weights}: a weights name works for torchvision models only; for "
                            f"{resolved.description} pass a weights file")
    if weights:
        _load_file(resolved, weights, weights_strict)
    return resolved


def apply_config(resolved: ResolvedModel, overrides: tuple[tuple[str, Any], ...]) -> None:
    """`[model.config]`: set attributes of the model's `config` (a transformers PretrainedConfig) before export,
    e.g. use_cache = false, which a transformers forward reads on every call. Only attributes the config
    already has: a misspelt key is an error, not a silent no-op."""
    if not overrides:
        return
    config = getattr(resolved.module, "config", None)
    if config is None or resolved.kind == "torchscript":
        raise ScaffoldError(f"[model.config]: {resolved.description} has no `config` to set "
                            f"{', '.join(k for k, _ in overrides)} on (a transformers model has one)")
    for key, value in overrides:
        if not hasattr(config, key):
            suggestion = suggest(key, [k for k in dir(config) if not k.startswith("_")])
            raise ScaffoldError(f"[model.config].{key}: {type(config).__name__} has no attribute '{key}'{suggestion}")
        current = getattr(config, key)
        if current is not None and not isinstance(value, type(current)) and not (
                isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool)):
            raise ScaffoldError(f"[model.config].{key}: {type(config).__name__}.{key} is a {type(current).__name__} "
                                f"({current!r}), got {value!r}")
        setattr(config, key, value)
    resolved.description += ", config " + ", ".join(f"{k}={v!r}" for k, v in overrides)


def _load_file(resolved: ResolvedModel, weights: str, strict: bool) -> None:
    from generator.weights import load_weights

    resolved.description = resolved.description.replace(", random weights", "")
    resolved.weights = load_weights(resolved.module, Path(weights), strict=strict, description=resolved.description)
    resolved.module.eval()
    resolved.notes.extend(resolved.weights.notes)
    resolved.description += f", weights {Path(weights).name}"


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
    except BaseException as e:  # sys.exit() at import: a failure to report, not scaffold's own exit
        if is_interrupt(e):
            raise
        raise user_code_failure(e, f"importing '{module_name}'") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            suggestion = suggest(part, [n for n in dir(obj) if not n.startswith("_")])
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
    except BaseException as e:
        if is_interrupt(e):
            raise
        raise user_code_failure(e, f"constructing '{source}'") from None
    if not isinstance(model, torch.nn.Module):
        raise ScaffoldError(f"'{source}' gave a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    defaults = getattr(model, "scaffold_inputs", None)
    resolved = ResolvedModel(module=model, kind="python", default_inputs=_declared_inputs(defaults, source),
                             description=f"{source} ({type(model).__name__})")
    if _is_detection(model):  # a torchvision detector built by the user's own factory (other kwargs, a head)
        _as_detection(resolved)
        resolved.default_inputs = resolved.default_inputs or DETECTION_DEFAULT
    return resolved


# torchvision's detection model classes: eager forward returns detections, scripted (losses, detections).
DETECTION_CLASSES = ("GeneralizedRCNN", "RetinaNet", "FCOS", "SSD")


def _is_detection(model: torch.nn.Module) -> bool:
    return any(c.__name__ in DETECTION_CLASSES and c.__module__.startswith("torchvision.models.detection")
               for c in type(model).__mro__)


def _as_detection(resolved: ResolvedModel) -> None:
    # Tracing cannot record their data-dependent box filtering and list-of-dict output; scripting can.
    resolved.default_method = "script"
    resolved.scripted_result = _losses_and_detections


def _declared_inputs(declared: object, source: str) -> tuple[InputSpec, ...] | None:
    """A module may declare `scaffold_inputs = ["x=1x3x32x32", "ids=1x16:int64"]` as its default inputs."""
    if declared is None:
        return None
    from generator.spec import parse_input_flag

    if not isinstance(declared, (list, tuple)) or not all(isinstance(d, str) for d in declared):
        raise ScaffoldError(f"{source}.scaffold_inputs: expected a list of 'NAME=SHAPE[:DTYPE]' strings")
    return tuple(parse_input_flag(d) for d in declared)


def _torchvision(name: str, weights: str | None, strict: bool, enum_name: str | None) -> ResolvedModel:
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
    enum = _weights_enum(tvm, name, enum_name) if enum_name else None
    # Nothing is downloaded unless asked for: detection and segmentation builders default weights_backbone to
    # ImageNet weights, which they would fetch even with weights=None.
    kwargs: dict[str, Any] = {"weights": enum}
    if "weights_backbone" in inspect.signature(tvm.get_model_builder(name)).parameters:
        kwargs["weights_backbone"] = None
    if enum is not None:
        kwargs["progress"] = False
    try:
        model = tvm.get_model(name, **kwargs)
    except Exception as e:
        if enum is not None:
            raise _download_error(enum, e) from None
        raise ScaffoldError(f"torchvision could not build '{name}': {_first_line(e)}") from None
    model.eval()
    family = type(model).__module__
    image_like = name in tvm.list_models(module=tvm) or name in tvm.list_models(module=tvm.segmentation)
    detection = _is_detection(model)
    meta = enum if enum is not None else _default_enum(tvm, name)
    # Loaded weights fix the input size (vit_h_14's SWAG weights build a 518x518 model); otherwise 224x224, what
    # the builders construct by default, whatever size the DEFAULT weights would have been evaluated at.
    defaults = (_image_default(enum) if enum is not None else IMAGE_DEFAULT) if image_like else None
    resolved = ResolvedModel(module=model, kind="torchvision", default_inputs=DETECTION_DEFAULT if detection else
                             defaults, description=f"torchvision {name} ({family}, random weights)",
                             weights_enum=meta)
    if detection:
        _as_detection(resolved)
    if enum is not None:
        from generator.export.common import sha256
        from generator.weights import LoadedWeights

        cached = _cache_file(enum.url)
        total = len(model.state_dict())
        resolved.weights = LoadedWeights(path=str(cached), sha256=sha256(cached) if cached.is_file() else "",
                                         form=f"torchvision {enum}", strict=True, loaded=total, total=total)
        resolved.description = f"torchvision {name} ({family}, weights {enum})"
    elif weights:
        _load_file(resolved, weights, strict)
    return resolved


def _losses_and_detections(detections: Any) -> Any:
    """A scripted torchvision detection model returns (losses, detections); in eval mode losses is empty."""
    return ({}, detections)


def _weights_enum(tvm: Any, model: str, name: str) -> Any:
    """ResNet18_Weights.IMAGENET1K_V1 for (resnet18, 'IMAGENET1K_V1' | 'DEFAULT' | 'ResNet18_Weights.DEFAULT')."""
    try:
        enum_class = tvm.get_model_weights(model)
    except Exception:
        raise ScaffoldError(f"torchvision has no weights for '{model}'; pass a weights file") from None
    prefix, _, member = name.rpartition(".")
    if prefix and prefix != enum_class.__name__:
        raise ScaffoldError(f"--weights {name}: {model}'s weights are {enum_class.__name__}, not {prefix}")
    members = list(dict.fromkeys([*enum_class.__members__, "DEFAULT"]))  # DEFAULT is often a member already
    if member not in members:
        suggestion = suggest(member, members)
        raise ScaffoldError(f"--weights {name}: {enum_class.__name__} has no '{member}'{suggestion}; "
                            f"choose from {', '.join(members)}, or pass a weights file")
    return enum_class[member]


def _image_default(meta: Any) -> tuple[InputSpec, ...]:
    """One image at the crop size its weights were evaluated at (224 for most, 299 for inception_v3)."""
    crop = getattr(_transforms(meta), "crop_size", None)
    if isinstance(crop, list) and len(crop) == 1 and isinstance(crop[0], int):
        return (InputSpec(name="x", shape=(1, 3, crop[0], crop[0]), dtype="float32"),)
    return IMAGE_DEFAULT


def _transforms(meta: Any) -> Any:
    """The weights' preset transforms (an object holding the sizes, mean, std); None if there are none."""
    try:
        return meta.transforms() if meta is not None else None
    except Exception:  # a preset that needs arguments: no preprocessing to record
        return None


def _default_enum(tvm: Any, model: str) -> Any:
    """The model's DEFAULT weights enum member, for its metadata (transforms, categories); None if it has none."""
    try:
        return tvm.get_model_weights(model).DEFAULT
    except Exception:  # a model without published weights
        return None


def _cache_file(url: str) -> Path:
    """Where torch.hub keeps (or would keep) a downloaded checkpoint: $TORCH_HOME/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _download_error(enum: Any, e: BaseException) -> ScaffoldError:
    """One line: which file torchvision needed, where it looks for it, and what to do without a network."""
    cached = _cache_file(enum.url)
    if cached.is_file():  # it was there: the file itself is the problem
        return ScaffoldError(f"torchvision could not load {enum} from {cached}: {_first_line(e)}")
    return ScaffoldError(
        f"weights {enum} are not in the cache and downloading {enum.url} failed ({_first_line(e)}): put that file "
        f"at {cached} (TORCH_HOME={Path(torch.hub.get_dir()).parent}), or pass it with --weights FILE"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
