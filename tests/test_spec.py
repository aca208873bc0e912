"""The spec: flags and scaffold.toml become one validated ProjectSpec; errors name the key."""

import tomllib

import pytest

from generator.errors import ScaffoldError
from generator.spec import (
    InputSpec,
    apply_dynamic,
    merge_flags,
    parse_dynamic_flag,
    parse_input_flag,
    read_toml,
    spec_from_mapping,
    spec_to_toml,
    validate_name,
)


def spec(**tables):
    data = {"project": {"name": "app"}, "model": {"source": "resnet18"}}
    data.update(tables)
    return spec_from_mapping(data)


def test_defaults():
    s = spec()
    assert s.model.method == "trace" and s.model.backend == "torchscript" and s.model.freeze
    assert s.inputs == () and s.build_systems == ("cmake",)
    assert s.runtime.warmup > 0 and s.runtime.iters > 0 and s.verify.rtol > 0


@pytest.mark.parametrize("text, expected", [
    ("x=1x3x224x224", InputSpec("x", (1, 3, 224, 224), "float32")),
    ("ids=1x16:int64", InputSpec("ids", (1, 16), "int64", 0, 10)),
    ("ids=1x16:int64:0..30522", InputSpec("ids", (1, 16), "int64", 0, 30522)),
    ("mask=2x6:bool", InputSpec("mask", (2, 6), "bool", 0, 2)),
    ("t=scalar:float64", InputSpec("t", (), "float64")),
])
def test_input_flag(text, expected):
    assert parse_input_flag(text) == expected


@pytest.mark.parametrize("text, fragment", [
    ("x", "expected NAME=SHAPE"),
    ("x=1x0", "positive integers"),
    ("x=1xa", "positive integers"),
    ("x=1x3:float33", "expected one of float32"),
    ("1x=1x3", "must be an identifier"),
    ("x=1x3:float32:0..5", "only integer inputs take a range"),
    ("ids=1x3:int64:5..5", "low < high"),
    ("ids=1x3:int64:a..b", "LOW..HIGH"),
])
def test_bad_input_flag(text, fragment):
    with pytest.raises(ScaffoldError, match=fragment):
        parse_input_flag(text)


@pytest.mark.parametrize("tables, fragment", [
    ({"model": {"source": "resnet18", "method": "compile"}}, r"\[model\].method: expected one of trace, script"),
    ({"model": {"source": "resnet18", "methd": "trace"}}, r"unknown key 'methd' \(did you mean 'method'\?\)"),
    ({"model": {"source": 18}}, r"\[model\].source: expected a string, got an integer 18"),
    ({"model": {}}, r"\[model\].source: required"),
    ({"runtime": {"iters": "many"}}, r"\[runtime\].iters: expected an integer"),
    ({"runtime": {"threads": True}}, r"\[runtime\].threads: expected an integer, got true or false"),
    ({"runtime": {"iters": 0}}, r"\[runtime\].iters: expected an integer >= 1"),
    ({"runtime": {"device": "gpu"}}, r"\[runtime\].device: expected cpu or cuda"),
    ({"inputs": {"name": "x"}}, r"\[\[inputs\]\]: expected an array of tables"),
    ({"inputs": [{"name": "x", "shape": [1, -3]}]}, r"\[\[inputs\]\] #1.shape: expected an array of positive"),
    ({"inputs": [{"name": "x", "shape": [1]}, {"name": "x", "shape": [2]}]}, "appears more than once"),
    ({"build": {"systems": ["make"]}}, r"\[build\].systems: expected one of cmake, bazel"),
    ({"verify": {"rtol": "tight"}}, r"\[verify\].rtol: expected a number"),
    ({"extra": {}}, "unknown key 'extra'"),
])
def test_bad_spec(tables, fragment):
    with pytest.raises(ScaffoldError, match=fragment):
        spec(**tables)


@pytest.mark.parametrize("name", ["my-app", "App_2", "x"])
def test_good_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name, fragment", [
    ("2app", "start with a letter"), ("my app", "start with a letter"), ("a/b", "start with a letter"),
    ("", "start with a letter"), ("x" * 65, "64 at most"), ("test", "reserved"), ("torch", "reserved"),
    ("ALL", "reserved"),
])
def test_bad_names(name, fragment):
    with pytest.raises(ScaffoldError, match=fragment):
        validate_name(name)


def test_flags_override_file():
    data = {"project": {"name": "from-file"}, "model": {"source": "resnet18", "method": "script"},
            "inputs": [{"name": "x", "shape": [1, 3, 64, 64]}]}
    merged = merge_flags(data, name="from-flag", method="trace", inputs=[parse_input_flag("y=2x2:int32")],
                         bazel=True)
    s = spec_from_mapping(merged)
    assert s.name == "from-flag" and s.model.method == "trace" and s.model.source == "resnet18"
    assert s.inputs == (InputSpec("y", (2, 2), "int32"),)
    assert s.build_systems == ("cmake", "bazel")
    assert data["project"]["name"] == "from-file"  # the file's data is not mutated


def test_toml_round_trip(tmp_path):
    original = spec(inputs=[{"name": "ids", "shape": [1, 16], "dtype": "int64", "range": [0, 30522], "dynamic": [0]},
                            {"name": "mask", "shape": [1, 16], "dtype": "bool"}],
                    runtime={"threads": 4, "warmup": 3, "iters": 7, "device": "cuda:1"},
                    verify={"rtol": 1e-2, "atol": 0})
    path = tmp_path / "scaffold.toml"
    path.write_text(spec_to_toml(original))
    assert spec_from_mapping(read_toml(path)) == original


def test_toml_strings_are_escaped(tmp_path):
    original = spec(model={"source": 'weird "quoted" \\ path.pt'})
    assert tomllib.loads(spec_to_toml(original))["model"]["source"] == 'weird "quoted" \\ path.pt'


def test_toml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "scaffold.toml"
    path.write_text('[project]\nname = "app"\n[model\nsource = "resnet18"\n')
    with pytest.raises(ScaffoldError, match=r"scaffold.toml: TOML syntax error: .*line 3"):
        read_toml(path)


def test_missing_spec_file(tmp_path):
    with pytest.raises(ScaffoldError, match="spec file not found"):
        read_toml(tmp_path / "nope.toml")


def test_dynamic_dims():
    s = spec(inputs=[{"name": "x", "shape": [1, 3, 8, 8], "dynamic": [0, 2]}])
    assert s.inputs[0].dynamic == (0, 2) and s.inputs[0].pattern == "?x3x?x8"
    with pytest.raises(ScaffoldError, match=r"\[\[inputs\]\] #1.dynamic: dim 4 is out of range for a 4-d input"):
        spec(inputs=[{"name": "x", "shape": [1, 3, 8, 8], "dynamic": [4]}])
    with pytest.raises(ScaffoldError, match="listed twice"):
        spec(inputs=[{"name": "x", "shape": [1, 3], "dynamic": [0, 0]}])


def test_dynamic_flags():
    assert parse_dynamic_flag("x:0") == ("x", [0])
    assert parse_dynamic_flag("ids:0,1") == ("ids", [0, 1])
    for bad in ("x", "x:", ":0", "x:a"):
        with pytest.raises(ScaffoldError, match="expected NAME:DIM"):
            parse_dynamic_flag(bad)
    inputs = (InputSpec("x", (1, 16)), InputSpec("h", (1, 4)))
    assert apply_dynamic(inputs, {"h": [0]})[1].dynamic == (0,)
    with pytest.raises(ScaffoldError, match="the model has no input 'y' \\(inputs: x, h\\)"):
        apply_dynamic(inputs, {"y": [0]})
