"""Fuzzing the spec reader and validator (issue 8): random bytes, random TOML text, random structures shaped like
scaffold.toml, random flags. Whatever comes in, the only exception that leaves is ScaffoldError, and its message
is one line. In-process and bounded (100 examples per property, no deadline, no example database)."""

from __future__ import annotations

import json
import math
import os
import re
import tempfile

# Hypothesis keeps caches in ./.hypothesis unless told otherwise: not in the repository.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "scaffold-hypothesis"))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from generator.cli import app  # noqa: E402
from generator.errors import ScaffoldError  # noqa: E402
from generator.spec import (  # noqa: E402
    merge_flags,
    parse_dynamic_flag,
    parse_input_flag,
    parse_toml,
    spec_from_mapping,
    spec_to_toml,
)

FUZZ = settings(max_examples=100, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# What TOML can hold, and a bit more (ints beyond int64, which only a caller, not tomllib, can produce).
scalars = st.one_of(
    st.text(max_size=24), st.sampled_from(["app", "resnet18", "x", "cpu", "cuda:0", "trace", "script", "aoti",
                                           "float32", "uint8", "bool", "cmake", "bazel", "github", "", "Testing"]),
    st.integers(min_value=-(2**70), max_value=2**70), st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.datetimes(), st.dates(), st.times(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                             max_size=5),
                      max_leaves=24)

KNOWN = {
    "project": ["name"],
    "model": ["source", "method", "backend", "freeze", "channels_last", "weights", "weights_strict"],
    "build": ["systems", "ci", "docker"],
    "runtime": ["device", "threads", "warmup", "iters"],
    "verify": ["rtol", "atol"],
    "preprocess": ["input", "resize", "crop", "mean", "std", "interpolation", "antialias", "labels"],
}
INPUT_KEYS = ["name", "shape", "dtype", "range", "dynamic"]


def table_of(keys: list[str]) -> st.SearchStrategy:
    """A table with some of the known keys (random values), now and then an unknown one."""
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), values | st.lists(st.integers(-2, 2**33),
                                                                                         max_size=20), max_size=6)


spec_shaped = st.fixed_dictionaries(
    {"project": st.fixed_dictionaries({"name": st.sampled_from(["app", "my-app"]) | values})},
    optional={
        **{section: table_of(keys) for section, keys in KNOWN.items() if section != "project"},
        "model": st.fixed_dictionaries({"source": st.sampled_from(["resnet18", "m.pt", "a:b"]) | values},
                                       optional={k: values for k in KNOWN["model"][1:]}),
        "inputs": st.lists(table_of(INPUT_KEYS) | values, max_size=6),
        "extra": values,
    },
)


def to_toml(value: object) -> str:
    """A value as TOML inline syntax (random structures become random but parseable TOML text)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {to_toml(v)}" for k, v in value.items()) + "}"
    return value.isoformat()  # datetimes, dates, times


def only_scaffold_errors(fn, *args) -> None:
    try:
        fn(*args)
    except ScaffoldError as e:
        assert "\n" not in str(e) and "\r" not in str(e), repr(str(e))


def validate_bytes(raw: bytes) -> None:
    spec = spec_from_mapping(parse_toml(raw, "fuzz.toml"), "fuzz.toml")
    assert spec_from_mapping(parse_toml(spec_to_toml(spec).encode(), "again")) == spec  # a valid spec round-trips


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(raw):
    only_scaffold_errors(validate_bytes, raw)


@FUZZ
@given(st.lists(st.sampled_from([b"[project]\n", b'name = "app"\n', b"[model]\n", b'source = "resnet18"\n',
                                 b"[[inputs]]\n", b'name = "x"\n', b"shape = [1, 3]\n", b'dtype = "uint8"\n',
                                 b"range = [-5, 300]\n", b"[runtime]\n", b"iters = 1099511627776\n", b"threads = 0\n",
                                 b"[verify]\n", b"atol = nan\n", b"rtol = 1e-3\n", b"= \n", b"\xff", b"\n", b"[",
                                 b'"\\u2028"', b"x = [[[[1]]]]\n"]), max_size=30))
def test_random_toml_lines(lines):
    only_scaffold_errors(validate_bytes, b"".join(lines))


@FUZZ
@given(spec_shaped)
def test_random_structures_as_toml_text(data):
    text = "\n".join(f"{json.dumps(k)} = {to_toml(v)}" for k, v in data.items())
    only_scaffold_errors(validate_bytes, text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(spec_shaped | st.dictionaries(st.text(max_size=8), values, max_size=6) | values)
def test_random_structures(data):
    only_scaffold_errors(spec_from_mapping, data)


@FUZZ
@given(st.dictionaries(st.sampled_from(list(KNOWN)), values, max_size=4),
       st.one_of(st.none(), st.text(max_size=12)), st.one_of(st.none(), st.text(max_size=12)),
       st.lists(st.text(max_size=20), max_size=3), st.lists(st.text(max_size=12), max_size=2))
def test_random_flags(data, name, model, inputs, dynamic):
    def run() -> None:
        parsed = [parse_input_flag(text) for text in inputs]
        for text in dynamic:
            parse_dynamic_flag(text)
        spec_from_mapping(merge_flags(data, name=name, model=model, inputs=parsed))

    only_scaffold_errors(run)


@settings(max_examples=6, deadline=None, database=None, derandomize=True)
@given(st.binary(min_size=1, max_size=200))
def test_cli_with_random_spec_files(tmp_path_factory, raw):
    """As a user meets it: one `error:` line and exit 1 (nothing is written: the spec fails before export)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    spec = tmp / "scaffold.toml"
    spec.write_bytes(raw)
    result = CliRunner().invoke(app, ["new", "--spec", str(spec), "--output", str(tmp / "app")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp.iterdir()) == ["scaffold.toml"]


def test_cli_bad_flags_exit_2():
    for args in (["new", "--frobnicate"], ["new", "app", "--force=maybe"], ["bench", ".", "--rounds", "zero"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
        assert "Traceback" not in result.output and re.search(r"No such option|does not take|not a valid integer|"
                                                             r"Invalid value", result.output), result.output
