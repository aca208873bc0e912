"""Structured inputs: List[Tensor] / Dict[str, Tensor] arguments named like the outputs (`xs[0]`, `batch['ids']`),
optional arguments left at their defaults, torchvision detection models by name, variable-length lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import generated, run, run_json, scaffold

from generator.errors import ScaffoldError
from generator.export.common import call_plan, flatten, make_inputs
from generator.models import resolve
from generator.pipeline import fill_inputs
from generator.spec import (
    InputSpec,
    apply_dynamic,
    input_arguments,
    input_path,
    parse_dynamic_flag,
    parse_input_flag,
    spec_from_mapping,
    spec_to_toml,
)

MODELS = "tests.models.structured_inputs"
MIXED = ("--model", f"{MODELS}:Mixed", "--method", "script")
DETECTION = ("--model", "ssdlite320_mobilenet_v3_large")


def inputs(*flags: str) -> tuple[InputSpec, ...]:
    return tuple(parse_input_flag(f) for f in flags)


# --- the name grammar (fast) ---

@pytest.mark.parametrize("name, expected", [
    ("x", ("x", None)),
    ("images[0]", ("images", 0)),
    ("images[12]", ("images", 12)),
    ("batch['ids']", ("batch", "ids")),
    ("batch['a.b-c_1']", ("batch", "a.b-c_1")),
])
def test_input_path(name, expected):
    assert input_path(name) == expected
    assert parse_input_flag(f"{name}=2x3").name == name


@pytest.mark.parametrize("name", [
    "images[01]", "images[-1]", "images[]", "images[0][1]", 'batch["ids"]', "batch['a b']", "batch['x;rm']",
    "batch['']", "batch['" + "k" * 65 + "']", "x.y", "1x", "images[0", "batch[ids]", "images[1234567]",
    "batch['$(id)']", "batch['a\\'b']",
])
def test_bad_input_names(name):
    with pytest.raises(ScaffoldError, match="must be an identifier.*images\\[0\\]"):
        parse_input_flag(f"{name}=2x3")
    with pytest.raises(ScaffoldError, match=r"\[\[inputs\]\] #1.name"):
        spec_from_mapping({"project": {"name": "app"}, "model": {"source": "m:M"},
                           "inputs": [{"name": name, "shape": [2]}]})


@pytest.mark.parametrize("flags, fragment", [
    (["xs[1]=2"], r"must start at xs\[0\]"),
    (["xs[0]=2", "xs[2]=2"], r"expected xs\[1\]"),
    (["xs[0]=2", "xs['a']=2"], "one kind per forward argument"),
    (["x=2", "x[0]=2"], "one kind per forward argument"),
    (["xs[0]=2", "y=2", "xs[1]=2"], "must be listed together"),
    (["b['k']=2", "b['k']=3"], "appears more than once"),
])
def test_bad_groupings(flags, fragment):
    with pytest.raises(ScaffoldError, match=fragment):
        input_arguments(inputs(*flags))
    table = [{"name": parse_input_flag(f).name, "shape": [2]} for f in flags]
    with pytest.raises(ScaffoldError, match=fragment if "more than once" not in fragment else "more than once"):
        spec_from_mapping({"project": {"name": "app"}, "model": {"source": "m:M"}, "inputs": table})


def test_groupings_in_order_of_first_appearance():
    args = input_arguments(inputs("xs[0]=2x4", "xs[1]=3x4", "batch['ids']=5:int64", "batch['gate']=5x1", "s=1"))
    assert [(a.name, a.kind, a.start, a.count, a.keys) for a in args] == [
        ("xs", "list", 0, 2, ()), ("batch", "dict", 2, 2, ("ids", "gate")), ("s", "tensor", 4, 1, ())]


def test_structured_names_round_trip_through_toml_and_dynamic(tmp_path):
    spec = spec_from_mapping({"project": {"name": "app"}, "model": {"source": "m:M"},
                              "inputs": [{"name": "images[0]", "shape": [3, 8, 8]},
                                         {"name": "batch['ids']", "shape": [4], "dtype": "int64"}]})
    name, dims = parse_dynamic_flag("images[0]:1,2")
    assert apply_dynamic(spec.inputs, {name: dims})[0].dynamic == (1, 2)
    import tomllib

    again = spec_from_mapping(tomllib.loads(spec_to_toml(spec, root=tmp_path)))
    assert again.inputs == spec.inputs


def test_call_plan_positional_keyword_and_build():
    specs = inputs("xs[0]=2x4", "xs[1]=3x4", "batch['ids']=5:int64", "scale=1x3")
    # bias (third parameter) left out: scale goes by name
    plan = call_plan(specs, ["xs", "batch", "bias", "scale"])
    assert plan.keyword == (False, False, True) and not plan.flat and plan.variable_list.name == "xs"
    tensors = make_inputs(specs, seed=0)
    args, kwargs = plan.build(tensors)
    assert len(args) == 2 and len(args[0]) == 2 and list(args[1]) == ["ids"] and list(kwargs) == ["scale"]
    assert args[0][1] is tensors[1] and kwargs["scale"] is tensors[3]
    # names that are not parameters, nothing skipped: positional labels as before
    assert call_plan(inputs("a=2", "b=2"), ["x", "y"]).flat
    with pytest.raises(ScaffoldError, match="passed by name, but forward has no parameter 'other'"):
        call_plan(inputs("scale=2", "other=2"), ["x", "scale"])


def test_hint_lists_only_required_arguments():
    resolved = resolve(f"{MODELS}:Optional_")
    spec = spec_from_mapping({"project": {"name": "app"}, "model": {"source": f"{MODELS}:Optional_"}})
    with pytest.raises(ScaffoldError) as err:
        fill_inputs(spec, resolved)
    text = str(err.value)
    assert "--input x=SHAPE" in text and "--input mask" not in text and "mask, scale keep their defaults" in text
    listsum = resolve(f"{MODELS}:ListSum")
    listsum.default_inputs = None
    with pytest.raises(ScaffoldError, match=r"--input xs\[0\]=SHAPE"):
        fill_inputs(spec, listsum)


def test_required_arguments_of_a_torchscript_file(tmp_path):
    """A loaded TorchScript file's schema says which arguments have defaults and which are lists."""
    from tests.models.structured_inputs import ListSum, Optional_

    torch.jit.script(Optional_()).save(str(tmp_path / "optional.pt"))
    torch.jit.script(ListSum()).save(str(tmp_path / "list.pt"))
    assert resolve(str(tmp_path / "optional.pt")).required_arguments() == [("x", "x")]
    assert resolve(str(tmp_path / "list.pt")).required_arguments() == [("xs", "xs[0]")]


@pytest.mark.parametrize("model, flags, method", [
    ("ListSum", (), "script"), ("ListSum", (), "trace"),
    ("DictInput", (), "script"), ("DictInput", (), "trace"),
    ("Optional_", ("x=2x4", "scale=2x4"), "script"), ("Optional_", ("x=2x4", "scale=2x4"), "trace"),
])
def test_export_structured_models(tmp_path, model, flags, method):
    """Each kind exports, reloads and matches eager; a scripted artifact records how to build its arguments."""
    from generator.export import torchscript

    spec = spec_from_mapping({"project": {"name": "app"}, "model": {"source": f"{MODELS}:{model}", "method": method},
                              "inputs": [{"name": f.name, "shape": list(f.shape), "dtype": f.dtype}
                                         for f in inputs(*flags)]})
    resolved = resolve(spec.model.source)
    spec = fill_inputs(spec, resolved)
    (tmp_path / "model").mkdir()
    result = torchscript.export(resolved, spec, tmp_path / "model")
    golden = torch.load(result.golden)
    assert golden["input_names"] == [i.name for i in spec.inputs] and len(golden["inputs"]) == len(spec.inputs)
    arguments = result.manifest["arguments"]
    if method == "trace":
        assert arguments is None  # the trace takes the flat tensors
    elif model == "Optional_":
        assert [(a["name"], a["keyword"]) for a in arguments] == [("x", False), ("scale", True)]
    else:
        assert arguments[0]["kind"] == ("list" if model == "ListSum" else "dict")
    assert result.manifest["variable_list"] == ("xs" if model == "ListSum" and method == "script" else None)


# --- end to end: two real cmake builds (Mixed scripted, ssdlite), one AOTI export without a build ---

@pytest.fixture(scope="module")
def mixed(projects: Path) -> Path:
    return generated(projects, "mixed-inputs", *MIXED)


def _binary(root: Path, name: str) -> Path:
    return root / "build" / name


@pytest.mark.e2e
def test_mixed_builds_and_passes_parity(mixed):
    """`scaffold build` ran ctest (parity included); the runner builds a c10::List, a c10::Dict and a kwarg, and
    provides torchvision::nms and torchvision::roi_align (checked against torchvision's by parity: out['keep'],
    out['roi'] with adaptive sampling, out['roi_aligned'])."""
    manifest = json.loads((mixed / "model" / "manifest.json").read_text())
    assert [(a["name"], a["kind"], a["keyword"]) for a in manifest["arguments"]] == [
        ("xs", "list", False), ("batch", "dict", False), ("scale", "tensor", True)]
    assert manifest["torchvision_ops"] == ["nms", "roi_align"]
    assert [o["name"] for o in manifest["signature"]["outputs"]] == [
        "out['rows']", "out['tokens']", "out['pooled']", "out['keep']", "out['roi']", "out['roi_aligned']"]
    header = (mixed / "include" / "mixed-inputs" / "model.h").read_text()
    assert "std::vector<at::Tensor> xs;" in header and "at::Tensor batch_ids;" in header
    run([_binary(mixed, "mixed-inputs"), "--check", "--warmup", "0", "--iters", "1"])


@pytest.mark.e2e
def test_mixed_takes_another_list_length(mixed, tmp_path):
    """A scripted model takes its List argument at any length: --inputs-file's xs[k] replace the list."""
    binary = _binary(mixed, "mixed-inputs")
    xs = [torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, 4)]
    torch.save({f"xs[{k}]": t for k, t in enumerate(xs)}, tmp_path / "three.pt")
    result = run_json(binary, "--inputs-file", tmp_path / "three.pt", "--save-inputs", tmp_path / "in.pt",
                      "--save-outputs", tmp_path / "out.pt", "--warmup", "0", "--iters", "1")
    assert result["outputs"][0]["shape"] == [8, 3]
    saved = torch.load(tmp_path / "in.pt")
    assert list(saved) == ["xs[0]", "xs[1]", "xs[2]", "batch['ids']", "batch['gate']", "scale"]
    import torchvision  # noqa: F401 — registers torchvision::nms for the Python side

    module = torch.jit.load(str(mixed / "model" / "model.pt"))
    expected = module([saved[f"xs[{k}]"] for k in range(3)], {"ids": saved["batch['ids']"],
                                                              "gate": saved["batch['gate']"]}, scale=saved["scale"])
    outputs = torch.load(tmp_path / "out.pt")
    for key, value in expected.items():
        torch.testing.assert_close(outputs[f"out['{key}']"], value)
    torch.save({"xs[0]": xs[0]}, tmp_path / "one.pt")
    run_json(binary, "--inputs-file", tmp_path / "one.pt", "--warmup", "0", "--iters", "1")
    torch.save({"xs[0]": xs[0], "xs[2]": xs[1]}, tmp_path / "gap.pt")
    proc = run([binary, "--inputs-file", tmp_path / "gap.pt"], check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'gap.pt'}: its xs entries must be xs[0], xs[1], ... without gaps; xs[1] is missing"]


@pytest.mark.e2e
def test_mixed_trace_takes_flat_tensors(projects):
    """Traced, the same model takes the flat tensors (the structure is recorded in the trace): no arguments."""
    root = generated(projects, "mixed-traced", "--model", f"{MODELS}:Mixed", "--method", "trace", build=False)
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    assert manifest["arguments"] is None and manifest["variable_list"] is None
    golden = torch.load(root / "model" / "golden.pt")
    outputs = torch.jit.load(str(root / "model" / "model.pt"))(*golden["inputs"])
    torch.testing.assert_close(outputs["rows"], golden["outputs"][0])


@pytest.mark.e2e
def test_mixed_aoti_takes_flat_tensors_in_golden_order(projects):
    """torch.export of the structured model, packaged: its inputs are golden.pt's flat tensors, in that order
    (INPUTS_KEY names them), which is what the C++ runner passes on (loader.run(flat)); no build needed."""
    from torch._inductor import aoti_load_package

    root = generated(projects, "mixed-aoti", "--model", f"{MODELS}:MixedPlain", "--backend", "aoti", build=False)
    golden = torch.load(root / "model" / "golden.pt")
    package = aoti_load_package(str(root / "model" / "model.pt2"))
    metadata = package.get_metadata()
    assert [line.split(" ")[0] for line in metadata["scaffold_inputs"].splitlines()] == golden["input_names"]
    assert golden["output_names"] == ["out['rows']", "out['tokens']", "out['pooled']"]
    got = flatten(package(*golden["inputs"]))
    assert [name for name, _ in got] == golden["output_names"]
    for (_, value), want in zip(got, golden["outputs"], strict=True):
        torch.testing.assert_close(value, want)
    # the same tensors in another order (the dict's keys swapped) give other outputs: the order is the flat one
    swapped = [*golden["inputs"][:2], golden["inputs"][3].to(torch.int64).clamp(0, 19).reshape(5),
               golden["inputs"][2].to(torch.float32).reshape(5, 1), golden["inputs"][4]]
    assert not torch.equal(flatten(package(*swapped))[1][1], golden["outputs"][1])


@pytest.fixture(scope="module")
def detection(projects: Path) -> Path:
    return generated(projects, "ssdlite", *DETECTION)


@pytest.mark.e2e
def test_detection_by_name_scripted_parity(detection):
    """ssdlite320_mobilenet_v3_large by name: scripted by default, two 3x320x320 images, parity in ctest."""
    manifest = json.loads((detection / "model" / "manifest.json").read_text())
    assert manifest["method"] == "script" and manifest["variable_list"] == "images"
    names = [o["name"] for o in manifest["signature"]["outputs"]]
    assert names[:3] == ["out[1][0]['boxes']", "out[1][0]['scores']", "out[1][0]['labels']"]
    assert "method = \"script\"" in (detection / "scaffold.toml").read_text()
    run([_binary(detection, "ssdlite"), "--check", "--warmup", "0", "--iters", "1"])


@pytest.mark.e2e
def test_detection_binary_takes_another_batch(detection, tmp_path):
    """One image of another size instead of the exported two: the scripted model takes it, and the binary's
    detections match the artifact's in Python."""
    import torchvision  # noqa: F401 — registers torchvision::nms for the Python side

    image = torch.rand(3, 240, 300, generator=torch.Generator().manual_seed(3))
    torch.save({"images[0]": image}, tmp_path / "one.pt")
    result = run_json(_binary(detection, "ssdlite"), "--inputs-file", tmp_path / "one.pt", "--warmup", "0",
                      "--iters", "1", "--save-outputs", tmp_path / "out.pt")
    assert [o["name"] for o in result["outputs"]] == ["out[1][0]['boxes']", "out[1][0]['scores']",
                                                       "out[1][0]['labels']"]
    with torch.inference_mode():
        _, detections = torch.jit.load(str(detection / "model" / "model.pt"))([image])
    saved = torch.load(tmp_path / "out.pt")
    for key, value in detections[0].items():
        torch.testing.assert_close(saved[f"out[1][0]['{key}']"], value)


@pytest.mark.e2e
def test_detection_aoti_refused_in_one_line(tmp_path):
    """torch.export cannot capture torchvision detection (data-dependent NMS): one line naming what works."""
    proc = scaffold("new", "det-aoti", "--output", tmp_path / "det", "--model",
                    "fasterrcnn_mobilenet_v3_large_320_fpn", "--backend", "aoti", check=False)
    assert proc.returncode != 0 and not (tmp_path / "det").exists()
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: torch.export could not capture the model") and len(
        [ln for ln in lines if ln.startswith("error:")]) == 1
    assert "data-dependent" in lines[-1] and "--backend torchscript" in lines[-1]
