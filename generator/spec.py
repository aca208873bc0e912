"""The project spec: CLI flags and `scaffold.toml` become one validated `ProjectSpec`.

Validation errors name the key (`[model].method`) and say what is expected, in one line.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from generator.errors import ScaffoldError

DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool")
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
METHODS = ("trace", "script")
BACKENDS = ("torchscript", "aoti")
BUILD_SYSTEMS = ("cmake", "bazel")
CI_PROVIDERS = ("github",)
DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")
# CMake reserves these target names (and `torch`/`c10` clash with libtorch's imported targets).
RESERVED_NAMES = {
    "all", "clean", "help", "install", "test", "package", "package_source", "edit_cache", "rebuild_cache",
    "list_install_components", "all_build", "zero_check", "run_tests", "torch", "c10", "caffe2", "model",
    "build", "src", "tests",
}
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    # Traced models with 2-D convolutions get their 4-D float inputs and weights in channels-last layout, which
    # takes libtorch's oneDNN convolution path: resnet18 on 2 threads, 0.77x eager against 0.93x without it.
    channels_last: bool = True


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

    def with_inputs(self, inputs: tuple[InputSpec, ...]) -> ProjectSpec:
        return replace(self, inputs=inputs)


# --------------------------------------------------------------------------------------------- parsing


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _expect_table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise ScaffoldError(f"{where}: expected a table, got {type(value).__name__}")
    return value


def _check_keys(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ScaffoldError(
                f"{where}: unknown key '{key}'{_suggest(key, allowed)}; expected one of: {', '.join(allowed)}"
            )


def _get(table: dict, key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int in Python; a spec that says `threads = true` is a mistake, not 1.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        names = " or ".join(_type_name(k) for k in kinds)
        raise ScaffoldError(f"{where}.{key}: expected {names}, got {_type_name(type(value))} {value!r}")
    return value


def _type_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "an array",
            dict: "a table"}.get(kind, kind.__name__)


def _choice(value: str, choices: tuple[str, ...], where: str) -> str:
    if value not in choices:
        raise ScaffoldError(f"{where}: expected one of {', '.join(choices)}; got '{value}'{_suggest(value, choices)}")
    return value


def validate_name(name: str, where: str = "project name") -> str:
    """A project name becomes a directory, a CMake project and target, and a binary name."""
    if not NAME_RE.match(name):
        raise ScaffoldError(
            f"{where} '{name}' is not usable: start with a letter, then letters, digits, '-' or '_' (64 at most)"
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
        if not part.isdigit() or int(part) <= 0:
            raise ScaffoldError(f"{where}: shape '{text}' must be positive integers joined by 'x', e.g. 1x3x224x224")
        dims.append(int(part))
    return tuple(dims)


def parse_input_flag(text: str) -> InputSpec:
    """`NAME=SHAPE[:DTYPE[:LOW..HIGH]]`, e.g. `x=1x3x224x224`, `ids=1x16:int64:0..30522`."""
    where = f"--input {text!r}"
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
    return bool(re.fullmatch(r"-?\d+", text))


def _input_from_table(table: dict, where: str) -> InputSpec:
    _check_keys(table, ("name", "shape", "dtype", "range", "dynamic"), where)
    name = _get(table, "name", str, where)
    if name is None:
        raise ScaffoldError(f"{where}.name: required (the argument name in forward)")
    if not INPUT_NAME_RE.match(name):
        raise ScaffoldError(f"{where}.name: '{name}' must be an identifier (letters, digits, '_')")
    shape = table.get("shape")
    if isinstance(shape, str):
        shape = list(parse_shape(shape, f"{where}.shape"))
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                              for d in shape):
        raise ScaffoldError(f"{where}.shape: expected an array of positive integers, e.g. [1, 3, 224, 224]")
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
    dynamic = parse_dynamic(table.get("dynamic", []), len(shape), f"{where}.dynamic")
    return InputSpec(name=name, shape=tuple(shape), dtype=dtype, low=low, high=high, dynamic=dynamic)


def parse_dynamic(dims: Any, rank: int, where: str) -> tuple[int, ...]:
    """Dim indices, each within the input's rank, once each."""
    if not isinstance(dims, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
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
        raise ScaffoldError(f"--dynamic {text!r}: expected NAME:DIM[,DIM], e.g. x:0 for the batch dim of x")
    return name, [int(p) for p in parts]


def apply_dynamic(inputs: tuple[InputSpec, ...], flags: dict[str, list[int]]) -> tuple[InputSpec, ...]:
    """Mark dims dynamic from --dynamic flags, once the inputs are known (they may be a model's defaults)."""
    names = [i.name for i in inputs]
    for name in flags:
        if name not in names:
            raise ScaffoldError(f"--dynamic {name}:...: the model has no input '{name}' (inputs: {', '.join(names)})")
    return tuple(replace(i, dynamic=parse_dynamic(flags[i.name], len(i.shape), f"--dynamic {i.name}"))
                 if i.name in flags else i for i in inputs)


def spec_from_mapping(data: dict, where: str = "spec") -> ProjectSpec:
    """Validate a `scaffold.toml`-shaped mapping (after flags were merged in) into a `ProjectSpec`."""
    _check_keys(data, ("project", "model", "inputs", "build", "runtime", "verify"), where)

    project = _expect_table(data.get("project", {}), f"{where}: [project]")
    _check_keys(project, ("name",), "[project]")
    name = _get(project, "name", str, "[project]")
    if not name:
        raise ScaffoldError("[project].name: required: pass NAME on the command line or set it in scaffold.toml")
    validate_name(name, "[project].name")

    model = _expect_table(data.get("model", {}), f"{where}: [model]")
    _check_keys(model, ("source", "method", "backend", "freeze", "channels_last"), "[model]")
    source = _get(model, "source", str, "[model]")
    if not source:
        raise ScaffoldError(
            "[model].source: required: pass --model (a torchvision name, package.module:attr, or a .pt file)"
        )
    model_spec = ModelSpec(
        source=source,
        method=_choice(_get(model, "method", str, "[model]", "trace"), METHODS, "[model].method"),
        backend=_choice(_get(model, "backend", str, "[model]", "torchscript"), BACKENDS, "[model].backend"),
        freeze=_get(model, "freeze", bool, "[model]", True),
        channels_last=_get(model, "channels_last", bool, "[model]", True),
    )

    raw_inputs = data.get("inputs", [])
    if not isinstance(raw_inputs, list):
        raise ScaffoldError("[[inputs]]: expected an array of tables ([[inputs]] name/shape/dtype)")
    inputs = tuple(_input_from_table(_expect_table(t, f"[[inputs]] #{i + 1}"), f"[[inputs]] #{i + 1}")
                   for i, t in enumerate(raw_inputs))
    names = [i.name for i in inputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ScaffoldError(f"[[inputs]]: input name '{duplicates[0]}' appears more than once")

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
    if not DEVICE_RE.match(device):
        raise ScaffoldError(f"[runtime].device: expected cpu or cuda[:N]; got '{device}'")
    runtime_spec = RuntimeSpec(
        device=device,
        threads=_non_negative(runtime, "threads", "[runtime]", 0),
        warmup=_non_negative(runtime, "warmup", "[runtime]", 10),
        iters=_non_negative(runtime, "iters", "[runtime]", 50, minimum=1),
    )

    verify = _expect_table(data.get("verify", {}), f"{where}: [verify]")
    _check_keys(verify, ("rtol", "atol"), "[verify]")
    verify_spec = VerifySpec(
        rtol=float(_get(verify, "rtol", (float, int), "[verify]", 1e-3)),
        atol=float(_get(verify, "atol", (float, int), "[verify]", 1e-4)),
    )
    if verify_spec.rtol < 0 or verify_spec.atol < 0:
        raise ScaffoldError("[verify]: rtol and atol must be >= 0")

    return ProjectSpec(name=name, model=model_spec, inputs=inputs, build_systems=tuple(dict.fromkeys(systems)),
                       ci=tuple(dict.fromkeys(ci)), docker=docker, runtime=runtime_spec, verify=verify_spec)


def _string_list(table: dict, key: str, choices: tuple[str, ...], default: list[str]) -> list[str]:
    values = _get(table, key, list, "[build]", default)
    for v in values:
        if not isinstance(v, str):
            raise ScaffoldError(f"[build].{key}: expected an array of strings, got {v!r}")
        _choice(v, choices, f"[build].{key}")
    return values


def _non_negative(table: dict, key: str, where: str, default: int, minimum: int = 0) -> int:
    value = _get(table, key, int, where, default)
    if value < minimum:
        raise ScaffoldError(f"{where}.{key}: expected an integer >= {minimum}, got {value}")
    return value


def read_toml(path: Path) -> dict:
    """Read a spec file; a syntax error becomes one line that names the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScaffoldError(f"spec file not found: {path}") from None
    except OSError as e:
        raise ScaffoldError(f"cannot read spec file {path}: {e.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScaffoldError(f"{path}: TOML syntax error: {e}") from None


def merge_flags(data: dict, *, name: str | None = None, model: str | None = None, method: str | None = None,
                backend: str | None = None, inputs: list[InputSpec] | None = None, freeze: bool | None = None,
                bazel: bool = False, ci: list[str] | None = None, docker: bool | None = None) -> dict:
    """Flags override the spec file, key by key (a flag's `--input` list replaces the file's inputs)."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    if name is not None:
        merged["project"] = {**_as_dict(merged.get("project", {})), "name": name}
    model_over = {k: v for k, v in (("source", model), ("method", method), ("backend", backend),
                                    ("freeze", freeze)) if v is not None}
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


def spec_to_toml(spec: ProjectSpec) -> str:
    """The spec a project was generated from, written back as `scaffold.toml` (re-readable by `--spec`)."""
    lines = ["# Generated by scaffold: the spec this project was made from. To regenerate, from the directory",
             f"# above this project: scaffold new --spec {spec.name}/scaffold.toml --output {spec.name} --force", ""]

    def table(title: str, values: dict) -> None:
        lines.append(f"[{title}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")

    table("project", {"name": spec.name})
    table("model", {"source": spec.model.source, "method": spec.model.method, "backend": spec.model.backend,
                    "freeze": spec.model.freeze, "channels_last": spec.model.channels_last})
    for i in spec.inputs:
        lines.append("[[inputs]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in _input_to_table(i).items())
        lines.append("")
    table("build", {"systems": list(spec.build_systems), "ci": list(spec.ci), "docker": spec.docker})
    table("runtime", {"device": spec.runtime.device, "threads": spec.runtime.threads,
                      "warmup": spec.runtime.warmup, "iters": spec.runtime.iters})
    table("verify", {"rtol": spec.verify.rtol, "atol": spec.verify.atol})
    return "\n".join(lines)
