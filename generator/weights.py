"""Trained weights: read a state_dict from a file and load it into the resolved module, strictly by default.

A weights file is a `torch.save`d state_dict (`.pt`/`.pth`, read with `weights_only=True`: no code runs), a
checkpoint dict that holds one under `state_dict`, `model_state_dict` or `model`, or a `.safetensors` file
(when the safetensors package is installed). Keys saved from `nn.DataParallel` / DDP (every key prefixed
`module.`) lose that prefix. torchvision weights enum names (`DEFAULT`) are handled in `generator.models`.
"""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from generator.errors import ScaffoldError
from generator.export.common import one_line, sha256

# Checked in this order: training scripts save {"model": ..., "optimizer": ..., "epoch": ...} and the like.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")
DATA_PARALLEL_PREFIX = "module."
SHOWN = 3  # keys named per category in an error or a warning; the count says how many more there are


@dataclass
class LoadedWeights:
    """What was loaded, for the manifest (`weights`) and the warnings `scaffold new` prints."""

    path: str
    sha256: str
    form: str  # "state_dict", "checkpoint['model']", "safetensors", "torchvision ResNet18_Weights.IMAGENET1K_V1"
    strict: bool
    loaded: int
    total: int
    notes: list[str] = field(default_factory=list)

    def manifest(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "form": self.form, "strict": self.strict,
                "loaded_tensors": self.loaded, "model_tensors": self.total}


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """The state_dict in a weights file, the form it was found in, and notes (a stripped prefix)."""
    if not path.is_file():
        raise ScaffoldError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        state, form = _read_safetensors(path), "safetensors"
    else:
        state, form = _unwrap(_torch_load(path), path)
    notes = []
    if state and all(k.startswith(DATA_PARALLEL_PREFIX) for k in state):
        state = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in state.items()}
        notes.append(f"weights: every key in {path.name} starts with '{DATA_PARALLEL_PREFIX}' (saved from "
                     "DataParallel/DDP); loaded without that prefix")
    return state, form, notes


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ScaffoldError(f"{path.name}: reading .safetensors needs the safetensors package (pip install "
                            "safetensors), or save the state_dict with torch.save as .pt") from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as e:  # safetensors raises its own SafetensorError for a bad header
        raise ScaffoldError(f"{path} is not a readable .safetensors file: {one_line(e)}") from None


def _torch_load(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # the TorchScript case is an error below, not a warning
            warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not a pickle at all, or a broken one
            raise ScaffoldError(f"{path} is not a file torch.load reads: {one_line(e)}") from None
        # weights_only refuses anything that would run code on load, such as a whole pickled nn.Module.
        raise ScaffoldError(
            f"{path} holds Python objects that torch.load(weights_only=True) refuses to unpickle (a whole "
            "nn.Module saved with torch.save(model), or a custom class); save model.state_dict() instead"
        ) from None
    except RuntimeError as e:
        if "TorchScript" in str(e):
            raise ScaffoldError(f"{path} is a TorchScript archive, not a state_dict: pass it as --model, or save "
                                "its state_dict() for --weights") from None
        raise ScaffoldError(f"{path} is not a file torch.load reads: {one_line(e)}") from None
    except Exception as e:  # a truncated or foreign file fails with KeyError, EOFError, ValueError ...
        raise ScaffoldError(f"{path} is not a file torch.load reads ({type(e).__name__}: {one_line(e)})") from None


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _unwrap(value: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A state_dict as it is, or the one inside a checkpoint dict."""
    if _is_state_dict(value):
        return dict(value), "state_dict"
    if isinstance(value, dict):
        for key in CHECKPOINT_KEYS:
            if _is_state_dict(value.get(key)):
                return dict(value[key]), f"checkpoint['{key}']"
        keys = ", ".join(repr(k) for k in list(value)[:8])
        raise ScaffoldError(f"{path} is a dict but not a state_dict (names to tensors) and holds none under "
                            f"{', '.join(CHECKPOINT_KEYS)}; its keys: {keys}")
    raise ScaffoldError(f"{path} holds a {type(value).__name__}, not a state_dict (a dict of names to tensors)")


def load_weights(module: torch.nn.Module, path: Path, *, strict: bool, description: str) -> LoadedWeights:
    """Load the file into module (in place). Strict: every key present, none extra, every shape equal."""
    state, form, notes = read_state_dict(path)
    expected = module.state_dict()
    if not expected:
        raise ScaffoldError(f"{description} has no parameters or buffers to load weights into (a frozen "
                            "TorchScript file? export the unfrozen module, or pass the Python model)")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    problems = _describe(missing, unexpected, mismatched, state, expected)
    fits = {k: v for k, v in state.items() if k in expected and k not in mismatched}
    if problems and strict:
        raise ScaffoldError(f"weights {path.name} do not fit {description}: {problems}; fix the file, or pass "
                            "--no-weights-strict (weights_strict = false) to load what fits")
    if not fits:
        raise ScaffoldError(f"none of the {len(state)} tensors in {path.name} fit {description}: {problems}")
    try:
        # strict=False: the filtered dict lacks what does not fit, which the check above reported.
        module.load_state_dict(fits, strict=False)
    except Exception as e:  # a dtype that cannot be copied, for example
        raise ScaffoldError(f"loading {path.name} into {description} failed: {one_line(e)}") from None
    if problems:
        notes.append(f"weights: loaded {len(fits)} of {len(expected)} model tensors from {path.name} (not strict); "
                     f"{problems}; what was not loaded keeps its initial values")
    return LoadedWeights(path=str(path), sha256=sha256(path), form=form, strict=strict, loaded=len(fits),
                         total=len(expected), notes=notes)


def _describe(missing: list[str], unexpected: list[str], mismatched: list[str], state: dict[str, torch.Tensor],
              expected: dict[str, torch.Tensor]) -> str:
    """One clause per kind of problem, naming the first few keys: 'missing keys (3): a, b, c'."""
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_first(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_first(unexpected)}")
    if mismatched:
        shapes = [f"{k} {list(state[k].shape)} in the file, {list(expected[k].shape)} in the model"
                  for k in mismatched]
        parts.append(f"shape mismatches ({len(mismatched)}): {_first(shapes)}")
    return "; ".join(parts)


def _first(items: list[str]) -> str:
    more = f", ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more
