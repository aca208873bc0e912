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
    ({"runtime": {"iters": 0}}, r"\[runtime\].iters: expected an integer from 1 to"),
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


# --------------------------------------------------------------------------------------------- issue 8, items 6-9, 18


@pytest.mark.parametrize("tables, key", [
    ({"project": {"name": "app\n"}}, "[project].name"),
    ({"model": {"source": "m\nfile(TOUCH PWNED)\n#.pt"}}, "[model].source"),
    ({"model": {"source": "model\u2028.pt"}}, "[model].source"),
    ({"model": {"source": "resnet18", "method": "trace\x7f"}}, "[model].method"),
    ({"inputs": [{"name": "x", "shape": [1]}, {"name": "y\t", "shape": [1]}]}, "[[inputs]] #2.name"),
    ({"inputs": [{"name": "x", "shape": [1], "dtype": "int64\r"}]}, "[[inputs]] #1.dtype"),
    ({"runtime": {"device": "cpu\n"}}, "[runtime].device"),
    ({"build": {"systems": ["cmake", "bazel\u2029"]}}, "[build].systems[1]"),
    ({"model": {"source": "resnet18", "weights": "w\x00.pt"}}, "[model].weights"),
])
def test_control_characters_are_refused_everywhere(tables, key):
    with pytest.raises(ScaffoldError) as info:
        spec(**tables)
    message = str(info.value)
    assert message.startswith(f"{key}: control characters") and "\n" not in message, message


def test_a_key_with_control_characters():
    with pytest.raises(ScaffoldError, match=r"\[model\]: a key holds control characters: 'a\\nb'"):
        spec(model={"source": "resnet18", "a\nb": 1})


@pytest.mark.parametrize("bad", ["abc\n", "abc\r\n", "a" * 64 + "\n"])
def test_names_match_in_full(bad):
    """`re.match` with `$` accepted a trailing newline; full matches do not."""
    with pytest.raises(ScaffoldError):
        validate_name(bad)
    with pytest.raises(ScaffoldError):
        parse_input_flag(f"{bad}=1x3")


@pytest.mark.parametrize("tables, fragment", [
    ({"runtime": {"iters": 1099511627776}}, r"\[runtime\].iters: expected an integer from 1 to 1000000000"),
    ({"runtime": {"warmup": 2**31}}, r"\[runtime\].warmup: expected an integer from 0 to 1000000000"),
    ({"runtime": {"threads": 4097}}, r"\[runtime\].threads: expected an integer from 0 to 4096"),
    ({"runtime": {"threads": -1}}, r"\[runtime\].threads"),
    ({"verify": {"atol": float("nan")}}, r"\[verify\].atol: expected a finite number"),
    ({"verify": {"rtol": float("inf")}}, r"\[verify\].rtol: expected a finite number"),
    ({"verify": {"rtol": 10**400}}, r"\[verify\].rtol: expected a finite number"),
    ({"verify": {"atol": -1e-9}}, r"\[verify\].atol"),
    ({"inputs": [{"name": "x", "shape": [100000, 100000, 100]}]}, "elements is more than"),
    ({"inputs": [{"name": "x", "shape": [2**31]}]}, "dim 2147483648 is larger than"),
    ({"inputs": [{"name": "x", "shape": [1] * 17}]}, "17 dims; at most 16"),
    ({"inputs": [{"name": "x", "shape": [1, 3], "dtype": "uint8", "range": [-5, 300]}]}, "does not fit uint8"),
    ({"inputs": [{"name": "x", "shape": [1], "dtype": "int8", "range": [0, 129]}]}, "does not fit int8"),
    ({"inputs": [{"name": "x", "shape": [1], "dtype": "bool", "range": [0, 3]}]}, "does not fit bool"),
    ({"inputs": [{"name": "x", "shape": [1], "dtype": "int64", "range": [0, 2**64]}]}, "does not fit int64"),
])
def test_numbers_are_bounded(tables, fragment):
    with pytest.raises(ScaffoldError, match=fragment):
        spec(**tables)


def test_bounds_themselves_are_accepted():
    s = spec(runtime={"threads": 4096, "warmup": 10**9, "iters": 10**9}, verify={"rtol": 0, "atol": 1e6},
             inputs=[{"name": "ids", "shape": [1, 8], "dtype": "int64", "range": [-(2**63), 2**63 - 1]},
                     {"name": "px", "shape": [1, 3], "dtype": "uint8", "range": [0, 256]}])
    assert s.runtime.iters == 10**9 and s.inputs[0].low == -(2**63)


@pytest.mark.parametrize("text", ["x=1x\u00b2", "x=1x" + "9" * 5000, "x=1x3:int64:0.." + "9" * 5000, "x=1x\u0663"])
def test_odd_digits_in_flags(text):
    with pytest.raises(ScaffoldError):
        parse_input_flag(text)


@pytest.mark.parametrize("name", ["preinstall", "CMakeFiles", "cmakefiles", "Testing", "TESTING", "install_strip",
                                  "con", "NUL", "com1", "lpt9"])
def test_names_colliding_with_cmake_or_the_build_tree(name):
    with pytest.raises(ScaffoldError, match="is reserved by CMake or libtorch; choose another name"):
        validate_name(name)


def test_inputs_are_capped_and_checked_once_each():
    many = [{"name": f"x{i}", "shape": [1]} for i in range(1024)]
    assert len(spec(inputs=many).inputs) == 1024
    with pytest.raises(ScaffoldError, match=r"\[\[inputs\]\]: 1025 inputs; scaffold supports at most 1024"):
        spec(inputs=[*many, {"name": "y", "shape": [1]}])
    with pytest.raises(ScaffoldError, match="input name 'x5' appears more than once"):
        spec(inputs=[*many[:1000], {"name": "x5", "shape": [1]}])


def test_spec_bytes_that_are_not_a_spec(tmp_path):
    path = tmp_path / "scaffold.toml"
    for raw, fragment in ((b"\xff\xfe[project]", "not UTF-8"), (b"a = " + b"[" * 3000 + b"]" * 3000, "nested too"),
                          (b"[project\n", "TOML syntax error")):
        path.write_bytes(raw)
        with pytest.raises(ScaffoldError, match=fragment):
            read_toml(path)
    with pytest.raises(ScaffoldError, match="is a directory"):
        read_toml(tmp_path)
