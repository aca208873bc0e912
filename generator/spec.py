"""The project spec: CLI flags and `scaffold.toml` become one validated `ProjectSpec`.

Validation errors name the key (`[model].method`) and say what is expected, in one line.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import reprlib
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from generator.dtypes import DTYPES, FLOAT_DTYPES, INT_RANGES  # noqa: F401  (re-exported: spec.DTYPES is public)
from generator.errors import ScaffoldError
from generator.textsafe import CONTROL_RE, has_control

METHODS = ("trace", "script")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
# A torchvision weights enum member, alone (DEFAULT, IMAGENET1K_V1) or qualified (ResNet18_Weights.IMAGENET1K_V1).
WEIGHTS_ENUM_RE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9_]*_Weights\.)?[A-Z][A-Z0-9_]*$")
BACKENDS = ("torchscript", "aoti")
# Numeric precision of the deployed model (AOTI backend): see generator/export/precision.py.
PRECISIONS = ("fp32", "bf16", "int8")
BUILD_SYSTEMS = ("cmake", "bazel")
CI_PROVIDERS = ("github",)
DEVICE_RE = re.compile(r"cpu|cuda(:[0-9]{1,4})?")  # always re.fullmatch: `$` lets "cpu\n" through
# CMake reserves these target names (and `torch`/`c10` clash with libtorch's imported targets).
RESERVED_NAMES = {
    "all", "clean", "help", "install", "test", "package", "package_source", "edit_cache", "rebuild_cache",
    "list_install_components", "all_build", "zero_check", "run_tests", "torch", "c10", "caffe2", "model",
    "build", "src", "tests",
    # more CMake targets (CMP0037), and directories CMake and CTest make in the build tree beside the binary
    "preinstall", "install_local", "install_strip", "cmakefiles", "testing",
    # file names Windows refuses (the CI matrix builds there)
    "con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10)),
}
# Bounds on every number the spec carries: the C++ side reads them as int, and absurd shapes must fail here,
# before anything is allocated.
MAX_INPUTS = 1024
MAX_RANK = 16
MAX_DIM = 2**31 - 1
MAX_ELEMENTS = 2**31  # per input: 8 GiB of float32
MAX_THREADS = 4096
MAX_COUNT = 10**9  # warmup, iters: fits a C++ int
MAX_TOLERANCE = 1e6
MAX_STRING = 4096
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
INPUT_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# A structured input's name, spelt like the outputs: `images[0]` (an entry of a List[Tensor] argument) or
# `batch['ids']` (a key of a Dict[str, Tensor] argument); one level deep. Keys reach C++ string literals and
# shell command lines, so they are kept to letters, digits, '_', '.' and '-'.
INPUT_PATH_RE = re.compile(r"(?P<arg>[A-Za-z_][A-Za-z0-9_]{0,127})"
                           r"(?:\[(?P<index>0|[1-9][0-9]{0,5})\]|\['(?P<key>[A-Za-z0-9_.-]{1,64})'\])?")


@dataclass(frozen=True)
class InputSpec:
    """One positional input of `forward`: its name, shape and dtype (and value range for integers)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    # Integer inputs are drawn from [low, high): token ids must stay below the vocabulary size.
    low: int = 0
    high: int = 10
    # Dims that may change at run time (e.g. (0,) for the batch); the AOTI backend compiles them symbolic.
    dynamic: tuple[int, ...] = ()

    @property
    def argument(self) -> str:
        """The forward argument this tensor belongs to: `images` for `images[0]`, `x` for `x`."""
        return input_path(self.name)[0]

    @property
    def shape_str(self) -> str:
        return "x".join(str(d) for d in self.shape) if self.shape else "scalar"

    @property
    def pattern(self) -> str:
        """The shape with `?` for dynamic dims, e.g. `?x3x224x224`."""
        dims = ["?" if i in self.dynamic else str(d) for i, d in enumerate(self.shape)]
        return "x".join(dims) if dims else "scalar"


@dataclass(frozen=True)
class ModelSpec:
    source: str
    method: str = "trace"
    backend: str = "torchscript"
    freeze: bool = True
    # Whether the spec named the method: a model with a better default (torchvision detection: script) gets it
    # only when the user chose none. Not part of equality: a spec written back to scaffold.toml names its method.
    method_given: bool = field(default=True, compare=False)
    # Traced models with 2-D convolutions get their 4-D float inputs and weights in channels-last layout, which
    # takes libtorch's oneDNN convolution path: resnet18 on 2 threads, 0.77x eager against 0.93x without it.
    channels_last: bool = True
    # Trained weights loaded before export: a file (absolute once validated: relative paths are anchored to the
    # spec file's directory or the cwd, see anchor_paths) or a torchvision weights enum name such as DEFAULT.
    weights: str | None = None
    weights_strict: bool = True
    # `[model.config]`: attributes set on the model's `config` (a transformers model) before export, e.g.
    # (("use_cache", False),); applied by models.apply_config.
    config: tuple[tuple[str, bool | int | float | str], ...] = ()
    # bf16 / int8 (AOTI only): heavy ops in reduced precision, inputs and outputs keep their dtypes. calibration:
    # int8's calibration inputs (a torch.save list of input tuples or dicts; absolute once anchored).
    # force_precision: export a precision this CPU has no fast instructions for (doctor says which it has).
    precision: str = "fp32"
    calibration: str | None = None
    force_precision: bool = False


@dataclass(frozen=True)
class PreprocessSpec:
    """`[preprocess]`: how an image becomes the model's input; unset keys come from the torchvision weights."""

    input: str | None = None  # which input the image feeds (default: the first)
    resize: tuple[int, ...] | None = None  # (S,): the shorter side to S; (H, W): exactly
    crop: tuple[int, ...] | None = None  # center crop (H, W)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None  # bilinear | bicubic | nearest
    antialias: bool | None = None
    labels: str | tuple[str, ...] | None = None  # a file with one class name per line (absolute), or the names


@dataclass(frozen=True)
class RuntimeSpec:
    device: str = "cpu"
    threads: int = 0  # 0: the physical cores of the machine it runs on
    warmup: int = 10
    iters: int = 50


@dataclass(frozen=True)
class VerifySpec:
    rtol: float = 1e-3
    atol: float = 1e-4


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    model: ModelSpec
    inputs: tuple[InputSpec, ...] = ()
    build_systems: tuple[str, ...] = ("cmake",)
    ci: tuple[str, ...] = ()  # CI workflows to generate for the project ("github")
    docker: bool = False  # generate a multi-stage Dockerfile
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    verify: VerifySpec = field(default_factory=VerifySpec)
    preprocess: PreprocessSpec | None = None

    def with_inputs(self, inputs: tuple[InputSpec, ...]) -> ProjectSpec:
        return replace(self, inputs=inputs)


# --------------------------------------------------------------------------------------------- parsing


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60


def suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: control characters escaped (the message stays one line), long ones cut."""
    text = value if isinstance(value, str) else _REPR.repr(value)
    text = CONTROL_RE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= limit else text[:limit] + "..."


def reject_control(data: Any, where: str = "spec") -> None:
    """Every string of the spec, keys included, at any depth: no control characters (a newline in a path would
    end a CMake comment or string and run what follows), and none absurdly long. Iterative: nesting depth is
    the caller's input."""
    stack: list[tuple[Any, str, int]] = [(data, where, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            if has_control(value):
                raise ScaffoldError(f"{path}: control characters (newline, tab, ...) are not allowed: '{_show(value)}'")
            if len(value) > MAX_STRING:
                raise ScaffoldError(f"{path}: longer than {MAX_STRING} characters")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and has_control(key):
                    raise ScaffoldError(f"{path}: a key holds control characters: '{_show(key)}'")
                if depth == 0:  # name keys the way the TOML file spells them: [model].source, [[inputs]] #2.name
                    stack.append((item, "[[inputs]]" if key == "inputs" else f"[{key}]", 1))
                else:
                    stack.append((item, f"{path}.{key}", depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                stack.append((item, f"{path} #{i + 1}" if path == "[[inputs]]" else f"{path}[{i}]", depth + 1))


def _expect_table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ScaffoldError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def _check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ScaffoldError(
                f"{where}: unknown key '{_show(key)}'{suggest(str(key), allowed)}; expected one of: "
                f"{', '.join(allowed)}"
            )


def _get(table: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a spec that says `threads = true` is a mistake, not 1.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(_type_name(k) for k in kinds)
        shown = _show(repr(value) if isinstance(value, str) else value)
        raise ScaffoldError(f"{where}.{key}: expected {names}, got {_type_name(type(value))} {shown}")
    return value


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array",
            dict: "a table"}.get(kind, kind.__name__)


def _choice(value: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ScaffoldError(f"{where}: expected one of {', '.join(choices)}; got '{_show(value)}'"
                            f"{suggest(value, choices)}")
    return value


def validate_name(name: str, where: str = "project name") -> str:
    """A project name becomes a directory, a CMake project and target, and a binary name."""
    if not NAME_RE.fullmatch(name):
        raise ScaffoldError(
            f"{where} '{_show(name)}' is not usable: start with a letter, then letters, digits, '-' or '_' (64 at most)"
        )
    if name.lower() in RESERVED_NAMES:
        raise ScaffoldError(f"{where} '{name}' is reserved by CMake or libtorch; choose another name")
    return name


def parse_shape(text: str, where: str) -> tuple[int, ...]:
    text = text.strip()
    if text in ("", "scalar"):
        return ()
    dims = []
    for part in text.lower().split("x"):
        # [0-9], not isdigit(): '²' is a digit to Python but not to int(); 10 digits bound the size of int()
        if not re.fullmatch(r"[0-9]{1,10}", part) or int(part) <= 0:
            raise ScaffoldError(f"{where}: shape '{_show(text)}' must be positive integers joined by 'x', "
                                "e.g. 1x3x224x224")
        dims.append(int(part))
    return tuple(dims)


def parse_input_flag(text: str) -> InputSpec:
    """`NAME=SHAPE[:DTYPE[:LOW..HIGH]]`, e.g. `x=1x3x224x224`, `ids=1x16:int64:0..30522`."""
    where = f"--input {_show(repr(text))}"
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise ScaffoldError(f"{where}: expected NAME=SHAPE[:DTYPE], e.g. x=1x3x224x224 or ids=1x16:int64")
    parts = rest.split(":")
    if len(parts) > 3:
        raise ScaffoldError(f"{where}: expected NAME=SHAPE[:DTYPE[:LOW..HIGH]]")
    table: dict[str, Any] = {"name": name, "shape": list(parse_shape(parts[0], where))}
    if len(parts) >= 2 and parts[1]:
        table["dtype"] = parts[1]
    if len(parts) == 3:
        low, dots, high = parts[2].partition("..")
        if not dots or not _is_int(low) or not _is_int(high):
            raise ScaffoldError(f"{where}: value range must be LOW..HIGH with integers, e.g. 0..30522")
        table["range"] = [int(low), int(high)]
    return _input_from_table(table, where)


def _is_int(text: str) -> bool:
    return bool(re.fullmatch(r"-?[0-9]{1,20}", text))


def _input_from_table(table: dict, where: str) -> InputSpec:
    _check_keys(table, ("name", "shape", "dtype", "range", "dynamic"), where)
    name = _get(table, "name", str, where)
    if name is None:
        raise ScaffoldError(f"{where}.name: required (the argument name in forward)")
    check_input_name(name, f"{where}.name")
    shape = table.get("shape")
    if isinstance(shape, str):
        shape = list(parse_shape(shape, f"{where}.shape"))
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                              for d in shape):
        raise ScaffoldError(f"{where}.shape: expected an array of positive integers, e.g. [1, 3, 224, 224]")
    check_shape(shape, f"{where}.shape")
    dtype = _choice(_get(table, "dtype", str, where, "float32"), DTYPES, f"{where}.dtype")
    low, high = 0, (2 if dtype == "bool" else 10)
    if "range" in table:
        rng = table["range"]
        if (not isinstance(rng, list) or len(rng) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in rng) or rng[0] >= rng[1]):
            raise ScaffoldError(f"{where}.range: expected [low, high] integers with low < high")
        if dtype in FLOAT_DTYPES:
            raise ScaffoldError(f"{where}.range: only integer inputs take a range; '{name}' is {dtype}")
        low, high = rng
        lo, hi = INT_RANGES[dtype]
        if low < lo or high > hi:
            raise ScaffoldError(f"{where}.range: [{low}, {high}) does not fit {dtype}, whose values are "
                                f"[{lo}, {hi})")
    dynamic = parse_dynamic(table.get("dynamic", []), len(shape), f"{where}.dynamic")
    return InputSpec(name=name, shape=tuple(shape), dtype=dtype, low=low, high=high, dynamic=dynamic)


def input_path(name: str) -> tuple[str, int | str | None]:
    """`images[0]` -> ('images', 0); `batch['ids']` -> ('batch', 'ids'); `x` -> ('x', None). The name is valid."""
    match = INPUT_PATH_RE.fullmatch(name)
    if match is None:
        return name, None
    if match["index"] is not None:
        return match["arg"], int(match["index"])
    return match["arg"], match["key"]


def check_input_name(name: str, where: str) -> None:
    if not INPUT_PATH_RE.fullmatch(name):
        raise ScaffoldError(
            f"{where}: '{_show(name)}' must be an identifier (letters, digits, '_'; 128 at most), optionally with one "
            "list index or dict key: x, images[0], batch['ids'] (keys: letters, digits, '_', '.', '-'; 64 at most)")


@dataclass(frozen=True)
class Argument:
    """One forward argument and the flat inputs that make it: a tensor (x), a list (images[0], images[1], ...)
    or a dict (batch['ids'], ...). start/count: its slice of the flat input list; keys: a dict's keys in order."""

    name: str
    kind: str  # "tensor" | "list" | "dict"
    start: int
    count: int
    keys: tuple[str, ...] = ()


def input_arguments(inputs: tuple[InputSpec, ...], where: str = "[[inputs]]") -> tuple[Argument, ...]:
    """Group the flat inputs into forward's arguments, in order of first appearance; check that the names form
    whole arguments: one kind per argument, its entries listed together, list indices 0, 1, ... in order."""
    args: list[Argument] = []
    seen: set[str] = set()
    for position, spec in enumerate(inputs):
        arg, member = input_path(spec.name)
        kind = "tensor" if member is None else "list" if isinstance(member, int) else "dict"
        last = args[-1] if args else None
        if last is not None and last.name == arg:
            if kind != last.kind or kind == "tensor":
                what = "a tensor" if kind == "tensor" else f"a {kind}"
                raise ScaffoldError(f"{where}: input '{_show(spec.name)}' makes '{arg}' {what}, but an earlier input "
                                    f"made it a {last.kind}; one kind per forward argument")
            if kind == "list" and member != last.count:
                raise ScaffoldError(f"{where}: input '{_show(spec.name)}': the entries of list '{arg}' must be "
                                    f"{arg}[0], {arg}[1], ... in order; expected {arg}[{last.count}]")
            if kind == "dict" and member in last.keys:
                raise ScaffoldError(f"{where}: input name '{_show(spec.name)}' appears more than once")
            args[-1] = replace(last, count=last.count + 1, keys=(*last.keys, *([member] if kind == "dict" else [])))
            continue
        if arg in seen:
            raise ScaffoldError(f"{where}: the inputs of argument '{arg}' must be listed together (input "
                                f"'{_show(spec.name)}' comes after another argument's)")
        if kind == "list" and member != 0:
            raise ScaffoldError(f"{where}: input '{_show(spec.name)}': list '{arg}' must start at {arg}[0]")
        seen.add(arg)
        args.append(Argument(name=arg, kind=kind, start=position, count=1,
                             keys=(member,) if isinstance(member, str) else ()))
    return tuple(args)


def check_shape(shape: list[int] | tuple[int, ...], where: str) -> None:
    """Bounded rank, dims and element count: `100000x100000x100` is refused here, not by a failed allocation."""
    if len(shape) > MAX_RANK:
        raise ScaffoldError(f"{where}: {len(shape)} dims; at most {MAX_RANK}")
    elements = 1
    for d in shape:
        if d > MAX_DIM:
            raise ScaffoldError(f"{where}: dim {d} is larger than {MAX_DIM}")
        elements *= d
    if elements > MAX_ELEMENTS:
        raise ScaffoldError(f"{where}: {elements} elements is more than {MAX_ELEMENTS} (about 8 GiB as float32); "
                            "use a smaller example shape and mark dims --dynamic")


def parse_dynamic(dims: Any, rank: int, where: str) -> tuple[int, ...]:
    """Dim indices, each within the input's rank, once each."""
    if (not isinstance(dims, list) or len(dims) > MAX_RANK
            or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims)):
        raise ScaffoldError(f"{where}: expected an array of dim indices, e.g. [0] for the batch dim")
    for d in dims:
        if not 0 <= d < rank:
            raise ScaffoldError(f"{where}: dim {d} is out of range for a {rank}-d input")
    if len(set(dims)) != len(dims):
        raise ScaffoldError(f"{where}: a dim is listed twice")
    return tuple(sorted(dims))


def parse_dynamic_flag(text: str) -> tuple[str, list[int]]:
    """`NAME:DIM[,DIM]`, e.g. `x:0`: those dims of input NAME may change at run time."""
    name, sep, dims = text.partition(":")
    parts = dims.split(",") if dims else []
    if not sep or not name or not parts or not all(_is_int(p) for p in parts):
        raise ScaffoldError(f"--dynamic {_show(repr(text))}: expected NAME:DIM[,DIM], e.g. x:0 for the batch dim of x")
    return name, [int(p) for p in parts]


def apply_dynamic(inputs: tuple[InputSpec, ...], flags: dict[str, list[int]]) -> tuple[InputSpec, ...]:
    """Mark dims dynamic from --dynamic flags, once the inputs are known (they may be a model's defaults)."""
    names = [i.name for i in inputs]
    for name in flags:
        if name not in names:
            raise ScaffoldError(f"--dynamic {name}:...: the model has no input '{name}' (inputs: {', '.join(names)})")
    return tuple(replace(i, dynamic=parse_dynamic(flags[i.name], len(i.shape), f"--dynamic {i.name}"))
                 if i.name in flags else i for i in inputs)


class SpecErrors(ScaffoldError):
    """Several problems in one spec: the CLI prints the first as its `error:` line and the rest below it."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


# Stand-ins for a section that failed, so the sections after it are checked too (every one of them parses).
_PLACEHOLDERS: dict[str, Any] = {"project": {"name": "placeholder"}, "model": {"source": "placeholder"}}
_SECTION_RE = re.compile(r"\[\[?([a-z_]+)(?:\]\]? #(\d+))?")
MAX_REPORTED = 20


def spec_from_mapping(data: dict, where: str = "spec") -> ProjectSpec:
    """Validate a `scaffold.toml`-shaped mapping (after flags were merged in) into a `ProjectSpec`.

    Every problem is reported, not just the first (a typo'd key in [model] and a bad [runtime] value in one
    go): a section (or one [[inputs]] entry) that fails is replaced by a stand-in and the spec is checked again,
    so the sections are parsed by the same code whatever other fields they grow. One problem raises a plain
    ScaffoldError, several a SpecErrors holding each.
    """
    messages: list[str] = []
    current = data
    while True:
        try:
            spec = _spec_from_mapping(current, where)
        except ScaffoldError as e:
            if str(e) in messages:  # a stand-in did not help (a message that names a section by accident)
                break
            messages.append(str(e))
            current = _without_failed_part(current, str(e))
            if current is None or len(messages) >= MAX_REPORTED:
                break
            continue
        if not messages:
            return spec
        break
    if len(messages) == 1:
        raise ScaffoldError(messages[0])
    raise SpecErrors(messages)


def _without_failed_part(data: Any, message: str) -> dict | None:
    """data with the section (or [[inputs]] entry) a message names replaced by a stand-in; None when the
    message names no section (a top-level problem: nothing after it can be checked meaningfully)."""
    m = _SECTION_RE.search(message)
    if not isinstance(data, dict) or m is None or m.group(1) not in data:
        return None
    section, entry = m.group(1), m.group(2)
    changed = dict(data)
    if section == "inputs" and entry and isinstance(data["inputs"], list) and 0 < int(entry) <= len(data["inputs"]):
        entries = list(data["inputs"])
        stand_in = {"name": f"_scaffold_placeholder_{entry}", "shape": [1]}  # keeps the others' numbers
        if entries[int(entry) - 1] == stand_in:
            return None
        entries[int(entry) - 1] = stand_in
        changed["inputs"] = entries
    elif section in _PLACEHOLDERS and data[section] != _PLACEHOLDERS[section]:
        changed[section] = _PLACEHOLDERS[section]
    elif section not in _PLACEHOLDERS:
        del changed[section]
    else:
        return None
    return changed


def _spec_from_mapping(data: dict, where: str = "spec") -> ProjectSpec:
    _expect_table(data, where)
    reject_control(data, where)
    _check_keys(data, ("project", "model", "inputs", "build", "runtime", "verify", "preprocess"), where)

    project = _expect_table(data.get("project", {}), f"{where}: [project]")
    _check_keys(project, ("name",), "[project]")
    name = _get(project, "name", str, "[project]")
    if not name:
        raise ScaffoldError("[project].name: required: pass NAME on the command line or set it in scaffold.toml")
    validate_name(name, "[project].name")

    model = _expect_table(data.get("model", {}), f"{where}: [model]")
    _check_keys(model, ("source", "method", "backend", "freeze", "channels_last", "weights", "weights_strict",
                        "config", "precision", "calibration", "force_precision"), "[model]")
    source = _get(model, "source", str, "[model]")
    if not source:
        raise ScaffoldError(
            "[model].source: required: pass --model (a torchvision name, package.module:attr, or a .pt file)"
        )
    model_spec = ModelSpec(
        source=source,
        method=_choice(_get(model, "method", str, "[model]", "trace"), METHODS, "[model].method"),
        method_given="method" in model,
        backend=_choice(_get(model, "backend", str, "[model]", "torchscript"), BACKENDS, "[model].backend"),
        freeze=_get(model, "freeze", bool, "[model]", True),
        channels_last=_get(model, "channels_last", bool, "[model]", True),
        weights=_get(model, "weights", str, "[model]") or None,
        weights_strict=_get(model, "weights_strict", bool, "[model]", True),
        config=_model_config(model.get("config", {})),
        precision=_choice(_get(model, "precision", str, "[model]", "fp32"), PRECISIONS, "[model].precision"),
        calibration=_get(model, "calibration", str, "[model]") or None,
        force_precision=_get(model, "force_precision", bool, "[model]", False),
    )
    if model_spec.precision != "fp32" and model_spec.backend != "aoti":
        raise ScaffoldError(f"[model].precision: {model_spec.precision} needs the AOTI backend (--backend aoti); "
                            "the TorchScript backend exports fp32 only")
    if model_spec.calibration and model_spec.precision != "int8":
        raise ScaffoldError("[model].calibration: calibration inputs are only used with precision = \"int8\"")

    raw_inputs = data.get("inputs", [])
    if not isinstance(raw_inputs, list):
        raise ScaffoldError("[[inputs]]: expected an array of tables ([[inputs]] name/shape/dtype)")
    if len(raw_inputs) > MAX_INPUTS:
        raise ScaffoldError(f"[[inputs]]: {len(raw_inputs)} inputs; scaffold supports at most {MAX_INPUTS}")
    inputs = tuple(_input_from_table(_expect_table(t, f"[[inputs]] #{i + 1}"), f"[[inputs]] #{i + 1}")
                   for i, t in enumerate(raw_inputs))
    seen: set[str] = set()  # linear: a list.count per name was quadratic in the number of inputs
    for i in inputs:
        if i.name in seen:
            raise ScaffoldError(f"[[inputs]]: input name '{i.name}' appears more than once")
        seen.add(i.name)
    input_arguments(inputs)

    build = _expect_table(data.get("build", {}), f"{where}: [build]")
    _check_keys(build, ("systems", "ci", "docker"), "[build]")
    systems = _string_list(build, "systems", BUILD_SYSTEMS, ["cmake"])
    if "cmake" not in systems:
        systems = ["cmake", *systems]
    ci = _string_list(build, "ci", CI_PROVIDERS, [])
    docker = _get(build, "docker", bool, "[build]", False)

    runtime = _expect_table(data.get("runtime", {}), f"{where}: [runtime]")
    _check_keys(runtime, ("device", "threads", "warmup", "iters"), "[runtime]")
    device = _get(runtime, "device", str, "[runtime]", "cpu")
    if not DEVICE_RE.fullmatch(device):
        raise ScaffoldError(f"[runtime].device: expected cpu or cuda[:N]; got '{_show(device)}'")
    runtime_spec = RuntimeSpec(
        device=device,
        threads=_non_negative(runtime, "threads", "[runtime]", 0, maximum=MAX_THREADS),
        warmup=_non_negative(runtime, "warmup", "[runtime]", 10, maximum=MAX_COUNT),
        iters=_non_negative(runtime, "iters", "[runtime]", 50, minimum=1, maximum=MAX_COUNT),
    )

    verify = _expect_table(data.get("verify", {}), f"{where}: [verify]")
    _check_keys(verify, ("rtol", "atol"), "[verify]")
    verify_spec = VerifySpec(rtol=_tolerance(verify, "rtol", 1e-3), atol=_tolerance(verify, "atol", 1e-4))

    preprocess = _preprocess(data["preprocess"], where) if "preprocess" in data else None

    return ProjectSpec(name=name, model=model_spec, inputs=inputs, build_systems=tuple(dict.fromkeys(systems)),
                       ci=tuple(dict.fromkeys(ci)), docker=docker, runtime=runtime_spec, verify=verify_spec,
                       preprocess=preprocess)


MAX_CONFIG_KEYS = 256


def parse_config_flag(text: str) -> tuple[str, bool | int | float | str]:
    """`--model-config KEY=VALUE`: VALUE as TOML reads it (false, 2, 0.1, "text"), else as a plain string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ScaffoldError(f"--model-config {_show(repr(text))}: expected KEY=VALUE, e.g. use_cache=false")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _model_config(value: Any) -> tuple[tuple[str, bool | int | float | str], ...]:
    """`[model.config]`: identifier keys, each a boolean, number or string (what a transformers config holds)."""
    table = _expect_table(value, "[model.config]")
    if len(table) > MAX_CONFIG_KEYS:
        raise ScaffoldError(f"[model.config]: {len(table)} keys; at most {MAX_CONFIG_KEYS}")
    out = []
    for key, item in table.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key):
            raise ScaffoldError(f"[model.config]: key '{_show(key)}' must be an attribute name (letters, digits, '_')")
        if not isinstance(item, (bool, int, float, str)):
            raise ScaffoldError(f"[model.config].{key}: expected true/false, a number or a string, got "
                                f"{_type_name(type(item))}")
        if isinstance(item, float) and not math.isfinite(item):
            raise ScaffoldError(f"[model.config].{key}: expected a finite number")
        out.append((key, item))
    return tuple(out)


PREPROCESS_KEYS = ("input", "resize", "crop", "mean", "std", "interpolation", "antialias", "labels")


def _preprocess(value: Any, where: str) -> PreprocessSpec:
    """`[preprocess]`: each key optional; sizes are an integer or [h, w], mean/std one number per channel."""
    table = _expect_table(value, f"{where}: [preprocess]")
    _check_keys(table, PREPROCESS_KEYS, "[preprocess]")
    name = _get(table, "input", str, "[preprocess]")
    if name is not None and not INPUT_NAME_RE.fullmatch(name):
        raise ScaffoldError(f"[preprocess].input: '{name}' must be the name of one of the model's inputs")

    def size(key: str, allow_short_side: bool) -> tuple[int, ...] | None:
        raw = table.get(key)
        if raw is None:
            return None
        dims = [raw] if isinstance(raw, int) and not isinstance(raw, bool) else raw
        if (not isinstance(dims, list) or len(dims) not in (1, 2)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
            raise ScaffoldError(f"[preprocess].{key}: expected a positive integer or [height, width]")
        if allow_short_side:
            return tuple(dims)
        return (dims[0], dims[-1])

    def floats(key: str) -> tuple[float, ...] | None:
        raw = table.get(key)
        if raw is None:
            return None
        if (not isinstance(raw, list) or not raw
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)):
            raise ScaffoldError(f"[preprocess].{key}: expected an array of numbers, one per channel")
        return tuple(float(v) for v in raw)

    std = floats("std")
    if std is not None and any(v <= 0 for v in std):
        raise ScaffoldError("[preprocess].std: every value must be > 0")
    mean = floats("mean")
    if mean is not None and std is not None and len(mean) != len(std):
        raise ScaffoldError("[preprocess]: mean and std need the same number of values (one per channel)")
    interpolation = _get(table, "interpolation", str, "[preprocess]")
    if interpolation is not None:
        _choice(interpolation, INTERPOLATIONS, "[preprocess].interpolation")
    labels = table.get("labels")
    if labels is not None:
        if isinstance(labels, list):
            if not labels or not all(isinstance(v, str) for v in labels):
                raise ScaffoldError("[preprocess].labels: expected a file name or an array of class names")
            labels = tuple(labels)
        elif not isinstance(labels, str) or not labels:
            raise ScaffoldError("[preprocess].labels: expected a file name or an array of class names")
    return PreprocessSpec(input=name, resize=size("resize", True), crop=size("crop", False),
                          mean=mean, std=std, interpolation=interpolation,
                          antialias=_get(table, "antialias", bool, "[preprocess]"), labels=labels)


def is_weights_enum(value: str) -> bool:
    """A torchvision weights enum name (DEFAULT, IMAGENET1K_V1, ResNet18_Weights.DEFAULT), not a file name."""
    return bool(WEIGHTS_ENUM_RE.match(value))


ARTIFACT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".pt2")


def is_file_source(value: Any) -> bool:
    """A [model].source that names a saved artifact (a path), not a torchvision name or module:attr."""
    return isinstance(value, str) and bool(value) and Path(value).suffix.lower() in ARTIFACT_SUFFIXES


def anchor_paths(data: dict, base: Path) -> dict:
    """Make the spec's relative file paths ([model].source when it is a file, [model].weights,
    [preprocess].labels) absolute against base.

    A scaffold.toml's paths are relative to its own directory (base = the file's parent), a flag's to the
    current directory; a torchvision enum name (DEFAULT) stays as it is, unless a file of that name exists.
    """
    merged = dict(data)
    model = merged.get("model")
    if isinstance(model, dict) and isinstance(model.get("weights"), str) and model["weights"]:
        model = merged["model"] = {**model, "weights": _anchor(model["weights"], base)}
    if isinstance(model, dict) and isinstance(model.get("calibration"), str) and model["calibration"]:
        model = merged["model"] = {**model, "calibration": _anchor(model["calibration"], base, enum_ok=False)}
    if isinstance(model, dict) and is_file_source(model.get("source")):
        merged["model"] = {**model, "source": _anchor(model["source"], base, enum_ok=False)}
    pre = merged.get("preprocess")
    if isinstance(pre, dict) and isinstance(pre.get("labels"), str) and pre["labels"]:
        merged["preprocess"] = {**pre, "labels": _anchor(pre["labels"], base, enum_ok=False)}
    return merged


def _anchor(value: str, base: Path, enum_ok: bool = True) -> str:
    path = Path(value).expanduser()
    if path.is_absolute():
        return os.path.abspath(path)
    if enum_ok and is_weights_enum(value) and not (base / path).is_file():
        return value
    return os.path.abspath(base / path)  # absolute and without `..`, symlinks kept


def _string_list(table: dict, key: str, choices: tuple[str, ...], default: list[str]) -> list[str]:
    values = _get(table, key, list, "[build]", default)
    for v in values:
        if not isinstance(v, str):
            raise ScaffoldError(f"[build].{key}: expected an array of strings, got {_show(v)}")
        _choice(v, choices, f"[build].{key}")
    return values


def _non_negative(table: dict, key: str, where: str, default: int, minimum: int = 0,
                  maximum: int = MAX_COUNT) -> int:
    value = _get(table, key, int, where, default)
    if not minimum <= value <= maximum:
        raise ScaffoldError(f"{where}.{key}: expected an integer from {minimum} to {maximum}, got {_show(str(value))}")
    return value


def _tolerance(table: dict, key: str, default: float) -> float:
    value = _get(table, key, (float, int), "[verify]", default)
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not (math.isfinite(number) and 0 <= number <= MAX_TOLERANCE):
        raise ScaffoldError(f"[verify].{key}: expected a finite number from 0 to {MAX_TOLERANCE:g}, "
                            f"got {_show(repr(value) if isinstance(value, str) else value)}")
    return number


def read_toml(path: Path) -> dict:
    """Read a spec file; a syntax error becomes one line that names the file and the line."""
    try:
        if path.is_dir():
            raise ScaffoldError(f"spec file {path} is a directory")
        if path.exists() and not path.is_file():  # a FIFO or a device would block or never end
            raise ScaffoldError(f"spec file {path} is not a regular file")
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise ScaffoldError(f"spec file not found: {path}") from None
    except OSError as e:
        raise ScaffoldError(f"cannot read spec file {path}: {e.strerror}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise ScaffoldError(f"spec file {path} is larger than {MAX_SPEC_BYTES // 2**20} MiB")
    return parse_toml(raw, str(path))


MAX_SPEC_BYTES = 4 * 2**20


def parse_toml(raw: bytes, where: str) -> dict:
    """Bytes of a scaffold.toml into a mapping; anything wrong with them is one ScaffoldError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScaffoldError(f"{where}: not UTF-8 text (byte {e.start}); TOML files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScaffoldError(f"{where}: TOML syntax error: {_show(str(e), 200)}") from None
    except RecursionError:
        raise ScaffoldError(f"{where}: nested too deeply to read") from None


def merge_flags(data: dict, *, name: str | None = None, model: str | None = None, method: str | None = None,
                backend: str | None = None, inputs: list[InputSpec] | None = None, freeze: bool | None = None,
                bazel: bool = False, ci: list[str] | None = None, docker: bool | None = None,
                weights: str | None = None, weights_strict: bool | None = None, precision: str | None = None,
                calibration: str | None = None, force_precision: bool | None = None,
                config: dict[str, Any] | None = None) -> dict:
    """Flags override the spec file, key by key (a flag's `--input` list replaces the file's inputs)."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if config:  # --model-config KEY=VALUE: merged into [model.config] key by key
        model_table = _as_dict(merged.get("model", {}))
        merged["model"] = {**model_table, "config": {**_as_dict(model_table.get("config", {})), **config}}
    if name is not None:
        merged["project"] = {**_as_dict(merged.get("project", {})), "name": name}
    model_over = {k: v for k, v in (("source", model), ("method", method), ("backend", backend),
                                    ("freeze", freeze), ("weights", weights), ("weights_strict", weights_strict),
                                    ("precision", precision), ("calibration", calibration),
                                    ("force_precision", force_precision))
                  if v is not None}
    if model_over:
        merged["model"] = {**_as_dict(merged.get("model", {})), **model_over}
    build = _as_dict(merged.get("build", {}))
    if bazel:
        systems = build.get("systems", ["cmake"])
        build = {**build, "systems": [*systems, "bazel"] if isinstance(systems, list) else systems}
    if ci:
        build = {**build, "ci": ci}
    if docker is not None:
        build = {**build, "docker": docker}
    if build:
        merged["build"] = build
    if inputs:
        merged["inputs"] = [_input_to_table(i) for i in inputs]
    return merged


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _input_to_table(i: InputSpec) -> dict:
    table: dict[str, Any] = {"name": i.name, "shape": list(i.shape), "dtype": i.dtype}
    if i.dtype not in FLOAT_DTYPES and (i.low, i.high) != ((0, 2) if i.dtype == "bool" else (0, 10)):
        table["range"] = [i.low, i.high]
    if i.dynamic:
        table["dynamic"] = list(i.dynamic)
    return table


# --------------------------------------------------------------------------------------------- writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def spec_to_toml(spec: ProjectSpec, root: Path | None = None) -> str:
    """The spec a project was generated from, written back as `scaffold.toml` (re-readable by `--spec`).

    File paths (a .pt source, weights, labels) are written relative to root, the directory the file goes into, since
    `--spec` reads them relative to the spec file's directory; absolute when root is None.
    """
    lines = ["# Generated by scaffold: the spec this project was made from. To regenerate, from the directory",
             f"# above this project: scaffold new --spec {spec.name}/scaffold.toml --output {spec.name} --force", ""]

    def table(title: str, values: dict) -> None:
        lines.append(f"[{title}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")

    table("project", {"name": spec.name})
    source = _relative_to(spec.model.source, root) if is_file_source(spec.model.source) else spec.model.source
    model: dict[str, Any] = {"source": source, "method": spec.model.method,
                             "backend": spec.model.backend, "freeze": spec.model.freeze,
                             "channels_last": spec.model.channels_last}
    if spec.model.weights:
        model["weights"] = _relative_to(spec.model.weights, root)
        model["weights_strict"] = spec.model.weights_strict
    if spec.model.precision != "fp32":
        model["precision"] = spec.model.precision
    if spec.model.calibration:
        model["calibration"] = _relative_to(spec.model.calibration, root)
    if spec.model.force_precision:
        model["force_precision"] = True
    table("model", model)
    if spec.model.config:
        table("model.config", dict(spec.model.config))
    for i in spec.inputs:
        lines.append("[[inputs]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in _input_to_table(i).items())
        lines.append("")
    table("build", {"systems": list(spec.build_systems), "ci": list(spec.ci), "docker": spec.docker})
    table("runtime", {"device": spec.runtime.device, "threads": spec.runtime.threads,
                      "warmup": spec.runtime.warmup, "iters": spec.runtime.iters})
    table("verify", {"rtol": spec.verify.rtol, "atol": spec.verify.atol})
    if spec.preprocess is not None:
        pre = spec.preprocess
        values = {"input": pre.input, "resize": list(pre.resize) if pre.resize else None,
                  "crop": list(pre.crop) if pre.crop else None, "mean": pre.mean, "std": pre.std,
                  "interpolation": pre.interpolation, "antialias": pre.antialias,
                  "labels": _relative_to(pre.labels, root) if isinstance(pre.labels, str) else pre.labels}
        table("preprocess", {k: v for k, v in values.items() if v is not None})
    return "\n".join(lines)


def _relative_to(value: str, root: Path | None) -> str:
    """An absolute file path relative to root (POSIX separators); enum names and the rest unchanged."""
    path = Path(value)
    if root is None or not path.is_absolute():
        return value
    try:
        return Path(os.path.relpath(path, root.absolute())).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return value
