"""Image preprocessing and class names, decided at export and recorded in the manifest for the C++ side.

Two sources, merged key by key: a torchvision classification model's weights (the `transforms()` preset of
the loaded weights enum, else of the model's DEFAULT one: its metadata needs no download) and the spec's
`[preprocess]` table, which wins. The C++ `--image` path then does what torchvision's ImageClassification
does: resize (shorter side, or to height x width), center crop, scale to [0, 1], normalize.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from generator.errors import ScaffoldError
from generator.models import ResolvedModel
from generator.spec import FLOAT_DTYPES, ProjectSpec


def image_preprocess(spec: ProjectSpec, resolved: ResolvedModel, outputs: list[dict]) -> tuple[dict | None, list[str]]:
    """The manifest's `preprocess` entry (with `categories` when known), or None; and notes for the user."""
    base, source, categories = _from_weights(resolved)
    if base is None and spec.preprocess is None:
        return None, []
    try:
        return _merge(spec, base, source, categories, outputs)
    except ScaffoldError as e:
        if spec.preprocess is not None:
            raise
        # Only the weights' preset applies and this export's inputs do not fit it: no --image, but no failure.
        return None, [f"preprocess: the weights' image preprocessing does not apply to this export ({e}); "
                      "--image needs a [preprocess] table"]


def _merge(spec: ProjectSpec, base: dict | None, source: str | None, categories: list[str] | None,
           outputs: list[dict]) -> tuple[dict | None, list[str]]:
    declared = spec.preprocess
    notes: list[str] = []
    values: dict[str, Any] = dict(base or {})
    if declared is not None:
        overrides = {"input": declared.input, "resize": list(declared.resize) if declared.resize else None,
                     "crop": list(declared.crop) if declared.crop else None,
                     "mean": list(declared.mean) if declared.mean else None,
                     "std": list(declared.std) if declared.std else None,
                     "interpolation": declared.interpolation, "antialias": declared.antialias}
        values.update({k: v for k, v in overrides.items() if v is not None})
        source = f"{source} and [preprocess]" if source else "[preprocess]"

    names = [i.name for i in spec.inputs]
    name = values.get("input") or names[0]
    if name not in names:
        raise ScaffoldError(f"[preprocess].input: the model has no input '{name}' (inputs: {', '.join(names)})")
    target = spec.inputs[names.index(name)]
    if len(target.shape) != 4 or target.dtype not in FLOAT_DTYPES:
        raise ScaffoldError(f"[preprocess]: input '{name}' is {target.shape_str} {target.dtype}; an image input is "
                            "a 4-d float batch N x C x H x W")
    channels, height, width = target.shape[1:]
    if channels not in (1, 3):
        raise ScaffoldError(f"[preprocess]: input '{name}' has {channels} channels; images give 3 (RGB) or 1 (gray)")
    mean = values.get("mean") or [0.0] * channels
    std = values.get("std") or [1.0] * channels
    if len(mean) != channels or len(std) != channels:
        raise ScaffoldError(f"[preprocess]: mean and std need {channels} values (one per channel of '{name}'), got "
                            f"{len(mean)} and {len(std)}")

    resize, crop = values.get("resize"), values.get("crop")
    fixed = [d for d in (2, 3) if d not in target.dynamic]
    if base is not None and (declared is None or declared.crop is None) and crop and (crop[0], crop[1]) != (
            height, width) and fixed:
        # The weights were evaluated at another size than this export's input: keep their resize-to-crop ratio.
        scale = height / crop[0]
        if resize and len(resize) == 1 and (declared is None or declared.resize is None):
            resize = [round(resize[0] * scale)]
        notes.append(f"preprocess: input '{name}' is {height}x{width}, the weights' preset crops "
                     f"{crop[0]}x{crop[1]}: cropping {height}x{width} instead")
        crop = [height, width]
    if not resize and not crop:
        resize = [height, width]  # nothing declared: the image is resized to the input's size
    final = crop or (resize if resize and len(resize) == 2 else None)
    if final is None:
        raise ScaffoldError("[preprocess]: a shorter-side resize alone gives images of varying size; add crop = "
                            f"[{height}, {width}] (or resize = [{height}, {width}])")
    if fixed and (final[0], final[1]) != (height, width):
        raise ScaffoldError(f"[preprocess]: the image comes out {final[0]}x{final[1]} but input '{name}' is "
                            f"{height}x{width}; set crop = [{height}, {width}]")

    labels, label_source = _labels(declared.labels if declared else None)
    if labels is not None:
        categories, cat_source = labels, label_source
    else:
        cat_source = source
    classes = _classes(outputs)
    if categories is not None and classes != len(categories):
        if labels is not None:
            raise ScaffoldError(f"[preprocess].labels: {len(categories)} names, but the model's first output has "
                                f"{classes if classes is not None else 'no class'} dimension")
        notes.append(f"preprocess: the weights' metadata names {len(categories)} classes but the model outputs "
                     f"{classes}: --topk prints class indices only")
        categories = None
    entry = {"input": name, "resize": resize, "crop": crop, "mean": [float(v) for v in mean],
             "std": [float(v) for v in std], "interpolation": values.get("interpolation", "bilinear"),
             "antialias": bool(values.get("antialias", True)), "channels": channels, "source": source}
    if categories is not None:
        entry["categories"] = list(categories)
        entry["categories_source"] = cat_source
    return entry, notes


def _from_weights(resolved: ResolvedModel) -> tuple[dict | None, str | None, list[str] | None]:
    """torchvision classification weights: their ImageClassification preset and category names."""
    meta = resolved.weights_enum
    if resolved.kind != "torchvision" or meta is None:
        return None, None, None
    from torchvision.transforms._presets import ImageClassification

    try:
        preset = meta.transforms()
    except Exception:  # a preset that needs arguments is not a classification one
        return None, None, None
    if not isinstance(preset, ImageClassification):
        return None, None, None
    base = {"resize": list(preset.resize_size), "crop": [preset.crop_size[0]] * 2, "mean": list(preset.mean),
            "std": list(preset.std), "interpolation": preset.interpolation.value,
            "antialias": bool(preset.antialias)}
    categories = meta.meta.get("categories")
    return base, f"{meta}", list(categories) if categories else None


def _labels(labels: str | tuple[str, ...] | None) -> tuple[list[str] | None, str | None]:
    if labels is None:
        return None, None
    if isinstance(labels, tuple):
        return list(labels), "[preprocess].labels"
    path = Path(labels)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ScaffoldError(f"[preprocess].labels: file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScaffoldError(f"[preprocess].labels: cannot read {path}: {e}") from None
    names = [ln.strip() for ln in lines]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ScaffoldError(f"[preprocess].labels: {path} is empty (one class name per line)")
    return names, str(path)


def _classes(outputs: list[dict]) -> int | None:
    """The class count of a classifier: the last dim of its first output, when that output is N x K."""
    if not outputs:
        return None
    shape = outputs[0]["shape"]
    return shape[-1] if len(shape) == 2 else None


def record(spec: ProjectSpec, resolved: ResolvedModel, result: Any) -> None:
    """Add the weights (path, sha256) and the preprocessing to an export's manifest, their notes to its warnings."""
    if resolved.weights is not None:
        result.manifest["weights"] = resolved.weights.manifest()
    entry, notes = image_preprocess(spec, resolved, result.manifest["signature"]["outputs"])
    if entry is not None:
        result.manifest["preprocess"] = entry
    result.warnings[:0] = [*resolved.notes, *notes]


def image_context(entry: dict | None) -> dict | None:
    """What src/data.cpp compiles in: the preprocessing of the manifest, as plain values for the template."""
    if entry is None:
        return None
    resize = entry.get("resize") or []
    crop = entry.get("crop") or []
    return {
        "input": entry["input"],
        "resize": resize,  # [] none, [S] shorter side, [H, W]
        "crop": crop,  # [] or [H, W]
        "mean": [repr(float(v)) for v in entry["mean"]],
        "std": [repr(float(v)) for v in entry["std"]],
        "interpolation": entry["interpolation"],
        "antialias": entry["antialias"],
        "channels": entry["channels"],
        "categories": entry.get("categories") or [],
        "source": entry.get("source") or "",
    }
