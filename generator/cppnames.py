"""C++ names for the generated library: the project's namespace and the typed Inputs/Outputs fields.

Decided here, in Python, so the templates only print identifiers that are known to be valid and unique.
"""

from __future__ import annotations

import re
from typing import Any

from generator.dtypes import SCALAR_TYPES
from generator.spec import InputSpec, input_arguments

# C++20 keywords and alternative tokens, plus names that would shadow what the generated code uses
# (`at`, `c10`, `torch`, `std` namespaces; `detail` and `tools` are nested namespaces of the project's).
CPP_KEYWORDS = frozenset({
    "alignas", "alignof", "and", "and_eq", "asm", "auto", "bitand", "bitor", "bool", "break", "case", "catch",
    "char", "char8_t", "char16_t", "char32_t", "class", "compl", "concept", "const", "consteval", "constexpr",
    "constinit", "const_cast", "continue", "co_await", "co_return", "co_yield", "decltype", "default", "delete",
    "do", "double", "dynamic_cast", "else", "enum", "explicit", "export", "extern", "false", "float", "for",
    "friend", "goto", "if", "inline", "int", "long", "mutable", "namespace", "new", "noexcept", "not", "not_eq",
    "nullptr", "operator", "or", "or_eq", "private", "protected", "public", "register", "reinterpret_cast",
    "requires", "return", "short", "signed", "sizeof", "static", "static_assert", "static_cast", "struct", "switch",
    "template", "this", "thread_local", "throw", "true", "try", "typedef", "typeid", "typename", "union", "unsigned",
    "using", "virtual", "void", "volatile", "wchar_t", "while", "xor", "xor_eq", "final", "override", "import",
    "module",
})
NAMESPACE_CLASHES = frozenset({"std", "at", "c10", "torch", "caffe2", "detail", "tools", "aoti", "jit", "posix"})
# Members the generated structs define themselves.
MEMBER_CLASHES = frozenset({"list", "named", "from", "Inputs", "Outputs"})

# spec dtype -> c10::ScalarType enumerator: generator/dtypes.py's table (imported from here by aoti.py too)


def identifier(text: str, taken: set[str], avoid: frozenset[str] = frozenset()) -> str:
    """A valid, unused C++ identifier close to `text`: `out[0]['logits']` -> `out_0_logits`."""
    ident = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or "value"
    if ident[0].isdigit():
        ident = "v_" + ident
    if ident in CPP_KEYWORDS or ident in avoid:
        ident += "_"
    unique, n = ident, 2
    while unique in taken:
        unique, n = f"{ident}_{n}", n + 1
    taken.add(unique)
    return unique


def namespace(project: str) -> str:
    """The project's C++ namespace: its name with `-` as `_` (a keyword or a clash gets a trailing `_`)."""
    ident = project.replace("-", "_")
    return ident + "_" if ident in CPP_KEYWORDS or ident in NAMESPACE_CLASHES else ident


def input_fields(inputs: tuple[InputSpec, ...]) -> list[dict[str, Any]]:
    """One typed field per forward argument: identifier, dtype, shape (-1 where dynamic), integer range."""
    taken: set[str] = set()
    fields = []
    for spec in inputs:
        fields.append({
            "name": spec.name,
            "field": identifier(spec.name, taken, MEMBER_CLASHES),
            "dtype": spec.dtype,
            "scalar_type": SCALAR_TYPES[spec.dtype],
            "dims": [-1 if k in spec.dynamic else d for k, d in enumerate(spec.shape)],
            "pattern": spec.pattern,
            # Random data for `--input NAME=SHAPE` (bool: 0..1); floats ignore the range.
            "low": 0 if spec.dtype == "bool" else spec.low,
            "high": 2 if spec.dtype == "bool" else spec.high,
        })
    return fields


def input_members(inputs: tuple[InputSpec, ...]) -> list[dict[str, Any]]:
    """The typed Inputs struct's members, in forward's flat order: a tensor argument and each key of a dict
    argument is an `at::Tensor` field (`batch['ids']` -> `batch_ids`); a list argument is one
    `std::vector<at::Tensor>` (`images`). start/count: the member's slice of the flat tensors."""
    taken: set[str] = set()
    members = []
    for arg in input_arguments(inputs, "inputs"):
        if arg.kind == "list":
            entries = inputs[arg.start:arg.start + arg.count]
            first = entries[0]
            members.append({"field": identifier(arg.name, taken, MEMBER_CLASHES), "list": True, "name": arg.name,
                            "start": arg.start, "count": arg.count,
                            "comment": f"{arg.name}[0..{arg.count - 1}] as exported: "
                                       + ", ".join(dict.fromkeys(i.pattern for i in entries)) + f" {first.dtype}"})
            continue
        for k in range(arg.start, arg.start + arg.count):
            spec = inputs[k]
            members.append({"field": identifier(spec.name, taken, MEMBER_CLASHES), "list": False, "name": spec.name,
                            "start": k, "count": 1, "comment": f"{spec.name}: {spec.pattern} {spec.dtype}"})
    return members


def output_fields(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One typed field per flattened output, in the order run() returns them."""
    taken: set[str] = set()
    return [{"name": o["name"], "field": identifier(o["name"], taken, MEMBER_CLASHES), "dtype": o["dtype"],
             "scalar_type": SCALAR_TYPES.get(o["dtype"], "Undefined"), "dims": list(o["shape"]),
             "shape": "x".join(str(d) for d in o["shape"]) or "scalar"} for o in outputs]
