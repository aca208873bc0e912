"""Escaping for every language a generated file is written in: a value reaches a file only through one of these.

Control characters are refused at the spec (`generator.spec`); these functions still escape or refuse them, so a
value that did not come through the spec cannot break out of a string literal or a comment either.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from generator.errors import ScaffoldError

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def has_control(text: str) -> bool:
    return bool(CONTROL_RE.search(text))


def cpp_str(value: Any) -> str:
    """A C++ string literal (with quotes) that holds exactly `value`, bytes as UTF-8."""
    out = ['"']
    for byte in str(value).encode("utf-8"):
        ch = chr(byte)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "?":  # no trigraphs (??=) in pre-C++17 compilers
            out.append("\\?")
        elif 0x20 <= byte < 0x7F:
            out.append(ch)
        else:  # octal escapes stop after three digits, unlike \x which swallows following hex digits
            out.append(f"\\{byte:03o}")
    out.append('"')
    return "".join(out)


def cmake_str(value: Any) -> str:
    """A CMake quoted argument (with quotes) that holds exactly `value`: no variable or generator expansion."""
    text = str(value)
    if has_control(text):
        raise ScaffoldError(f"{text!r}: control characters cannot be written into CMake")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace(";", "\\;")
    return f'"{escaped}"'


def comment(value: Any) -> str:
    """Text for a one-line comment (C++ //, CMake #, YAML #, Dockerfile #, Starlark #): no line breaks, and no
    trailing backslash (it would splice the next line into a C++ // comment)."""
    text = CONTROL_RE.sub("?", str(value))
    return text.rstrip("\\")


def json_str(value: Any) -> str:
    """JSON (also a valid YAML flow scalar and a valid Starlark/Python string literal for str)."""
    return json.dumps(value, ensure_ascii=True)


def yaml_str(value: Any) -> str:
    """A double-quoted YAML scalar: JSON's escapes are YAML's."""
    return json.dumps(str(value), ensure_ascii=True)


def sh_quote(value: Any) -> str:
    """One POSIX shell word."""
    text = str(value)
    if has_control(text):
        raise ScaffoldError(f"{text!r}: control characters cannot be written into a shell command")
    return shlex.quote(text)


FILTERS = {"cpp_str": cpp_str, "cmake_str": cmake_str, "comment": comment, "json_str": json_str,
           "yaml_str": yaml_str, "sh_quote": sh_quote}
