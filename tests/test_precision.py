"""--precision bf16 / int8 for the AOTI backend: spec and CLI validation, calibration files, the CPU refusal,
and end to end one bf16 and one int8 project of a small conv net, built with real cmake and ctest parity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import generated, run, scaffold

from generator.doctor import check_precision
from generator.errors import ScaffoldError
from generator.export.precision import check_cpu, cpu_flags, load_calibration, support
from generator.spec import merge_flags, spec_from_mapping, spec_to_toml

MODEL = "tests.models.small_conv:SmallConv"


def spec_of(**model: object):
    data = {"project": {"name": "p"}, "model": {"source": MODEL, "backend": "aoti", **model},
            "inputs": [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]}
    return spec_from_mapping(data)


# ------------------------------------------------------------------------------------------------ spec / CLI


def test_fp32_is_the_default_and_not_written():
    spec = spec_of()
    assert spec.model.precision == "fp32"
    assert "precision" not in spec_to_toml(spec)


def test_precision_round_trips_through_scaffold_toml(tmp_path):
    calib = tmp_path / "calib.pt"
    spec = spec_of(precision="int8", calibration=str(calib))
    text = spec_to_toml(spec, root=tmp_path)
    assert 'precision = "int8"' in text and 'calibration = "calib.pt"' in text


@pytest.mark.parametrize(("model", "message"), [
    ({"precision": "fp16"}, "[model].precision"),
    ({"precision": "bf16", "backend": "torchscript"}, "needs the AOTI backend"),
    ({"precision": "bf16", "calibration": "c.pt"}, "only used with precision"),
    ({"precision": 8}, "[model].precision"),
    ({"force_precision": "yes"}, "[model].force_precision"),
])
def test_bad_precision_specs_are_one_error(model, message):
    with pytest.raises(ScaffoldError, match=message.replace("[", r"\[").replace("]", r"\]")):
        spec_of(**model)


def test_flags_override_the_spec():
    merged = merge_flags({"model": {"source": MODEL}}, precision="bf16", backend="aoti", force_precision=True)
    assert merged["model"]["precision"] == "bf16" and merged["model"]["force_precision"] is True


def test_cli_lists_the_choices_and_refuses_torchscript_bf16():
    assert "bf16" in scaffold("new", "--help").stdout
    proc = scaffold("new", "p", "--model", MODEL, "--precision", "bf16", check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]  # progress lines aside
    assert proc.returncode == 1 and len(lines) == 1 and "needs the AOTI backend" in lines[0], proc.stderr
    proc = scaffold("new", "p", "--model", MODEL, "--precision", "fp8", check=False)
    assert proc.returncode != 0 and "fp8" in proc.stderr


# ------------------------------------------------------------------------------------------- CPU support


CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f {extra}\n"


def test_cpu_flags_and_support():
    flags = cpu_flags(CPUINFO.format(extra="avx512_bf16 avx512_vnni"))
    assert {"avx512_bf16", "avx512_vnni"} <= flags
    assert support(flags) == {"bf16": "avx512_bf16", "int8": "avx512_vnni"}
    assert support(cpu_flags(CPUINFO.format(extra=""))) == {"bf16": None, "int8": None}
    assert support(cpu_flags(CPUINFO.format(extra="amx_bf16 amx_int8")))["int8"] == "amx_int8"


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_cpu_without_the_instructions_is_refused_unless_forced(precision):
    plain = cpu_flags(CPUINFO.format(extra=""))
    with pytest.raises(ScaffoldError, match="--force-precision"):
        check_cpu(spec_of(precision=precision), plain)
    warnings = check_cpu(spec_of(precision=precision, force_precision=True), plain)
    assert len(warnings) == 1 and "--force-precision" in warnings[0]
    assert check_cpu(spec_of(precision="fp32"), plain) == []
    fast = cpu_flags(CPUINFO.format(extra="avx512_bf16 avx512_vnni"))
    assert check_cpu(spec_of(precision=precision), fast) == []


def test_doctor_says_what_the_cpu_supports():
    (check,) = check_precision(cpu_flags(CPUINFO.format(extra="avx512_vnni")))
    assert check.status == "info" and "bf16: no" in check.found and "int8: avx512_vnni" in check.found
    assert "--force-precision" in check.fix
    (check,) = check_precision(cpu_flags(CPUINFO.format(extra="avx512_bf16 avx512_vnni")))
    assert check.status == "ok"


# ---------------------------------------------------------------------------------------- calibration files


def test_calibration_files_are_validated(tmp_path):
    spec = spec_of(precision="int8")
    good = [(torch.randn(1, 3, 32, 32),) for _ in range(3)]

    def saved(obj: object, name: str) -> str:
        path = tmp_path / name
        torch.save(obj, path)
        return str(path)

    assert len(load_calibration(saved(good, "tuples.pt"), spec)) == 3
    assert len(load_calibration(saved([{"x": t} for (t,) in good], "dicts.pt"), spec)) == 3
    assert len(load_calibration(saved([t for (t,) in good], "bare.pt"), spec)) == 3
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    cases = {
        str(tmp_path / "missing.pt"): "no such file",
        str(garbage): "not a readable torch.save file",
        saved([], "empty.pt"): "non-empty list",
        saved({"x": good[0][0]}, "dict.pt"): "list of input sets",
        saved([(torch.randn(1, 3, 16, 16),)], "shape.pt"): "shape 1x3x16x16, the spec says 1x3x32x32",
        saved([(torch.randn(1, 3, 32, 32, dtype=torch.float64),)], "dtype.pt"): "is float64",
        saved([{"y": good[0][0]}], "keys.pt"): "differ from the inputs",
        saved([(good[0][0], good[0][0])], "count.pt"): "expected 1 tensor",
        saved([("text",)], "type.pt"): "not a tensor",
    }
    for path, message in cases.items():
        with pytest.raises(ScaffoldError, match=message) as info:
            load_calibration(path, spec)
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.pt"
    gen = torch.Generator().manual_seed(7)
    torch.save([(torch.randn(1, 3, 32, 32, generator=gen),) for _ in range(16)], path)
    return path


def _project(projects: Path, precision: str, *extra: object) -> Path:
    # `scaffold build` inside generated() runs ctest: the parity check against the reduced golden outputs.
    return generated(projects, f"prec_{precision}", "--model", MODEL, "--backend", "aoti",
                     "--precision", precision, *extra)


@pytest.mark.e2e
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_project_builds_and_passes_parity(projects, calibration, precision):
    # int8 with a dynamic batch: quantized (captured, calibrated) and compiled with the batch symbolic.
    extra = ("--calibration", calibration, "--dynamic", "x:0") if precision == "int8" else ()
    root = _project(projects, precision, *extra)
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    section = manifest["precision"]
    assert section["precision"] == precision
    assert section["calibration"] == (str(calibration) if precision == "int8" else None)
    measured = section["vs_fp32_eager"]
    assert measured["inputs"] >= 8
    out = measured["outputs"]["out"]
    # Reduced, but not broken: within the export check's tolerances, and the logits still rank alike.
    assert 0 < out["max_rel"] < section["export_check"]["atol"]
    assert out["min_cosine"] > 0.99
    assert out["top1_agreement"] >= 0.9
    assert "precision" in (root / "scaffold.toml").read_text()
    # golden.pt holds the reduced artifact's outputs, not fp32 eager's.
    golden = torch.load(root / "model" / "golden.pt", weights_only=True)
    from tests.models.small_conv import SmallConv

    with torch.inference_mode():
        eager = SmallConv()(*golden["inputs"])
    expected = golden["outputs"][0]
    assert not torch.equal(expected, eager)
    assert torch.allclose(expected, eager, atol=0.15 * float(eager.abs().max()))
    # The binary runs (ctest already passed in generated()).
    assert "p50" in run([root / "build" / f"prec_{precision}", "--iters", "3"]).stdout
    if precision == "int8":  # another batch than the exported one, against fp32 eager on the same input
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        torch.save({"x": x}, root / "x3.pt")
        run([root / "build" / "prec_int8", "--inputs-file", root / "x3.pt", "--save-outputs", root / "out3.pt",
             "--iters", "1", "--warmup", "0"])
        got = torch.load(root / "out3.pt", weights_only=True)["out"]
        with torch.inference_mode():
            want = SmallConv()(x)
        assert got.shape == (3, 10) and torch.allclose(got, want, atol=0.15 * float(want.abs().max()))
        assert (got.argmax(1) == want.argmax(1)).float().mean() >= 2 / 3


@pytest.mark.e2e
def test_bench_peers(projects):
    pytest.importorskip("onnxruntime", reason="bench --peers: onnxruntime not installed (pip install "
                        "'scaffold[peers]')")
    pytest.importorskip("openvino", reason="bench --peers: openvino not installed (pip install 'scaffold[peers]')")
    root = _project(projects, "bf16")
    result = json.loads(scaffold("bench", root, "--peers", "--rounds", "1", "--iters", "3", "--warmup", "1",
                                 "--json").stdout)
    names = [v["name"] for v in result["variants"]]
    assert names[:3] == ["Python eager (inference_mode)", "Python aoti bf16 artifact", "C++ aoti bf16 binary"]
    assert {"ONNX Runtime fp32", "OpenVINO f32", "OpenVINO bf16"} <= set(names)
    peers = {v["name"]: v for v in result["variants"][3:]}
    assert peers["ONNX Runtime fp32"]["max_abs_diff"] < 1e-3 and peers["OpenVINO f32"]["max_abs_diff"] < 1e-3
    assert all(v["export_s"] >= 0 and v["p50_ms"] > 0 for v in peers.values())
    assert result["precision"] == "bf16"


def test_top1_only_for_outputs_that_look_like_class_scores():
    """A classifier's logits get a top-1 agreement line; a named 2-D field that is no decision (BERT's pooler) does
    not, though it still gets its error and cosine figures."""
    from generator.export.precision import accuracy

    class TwoHeads(torch.nn.Module):
        def forward(self, x):
            return {"logits": x * 2, "pooler_output": torch.tanh(x)}

    spec = spec_from_mapping({"project": {"name": "app"}, "model": {"source": "resnet18"},
                              "inputs": [{"name": "x", "shape": [3, 5]}]})
    model = TwoHeads().eval()
    measured = accuracy(model, model, spec, count=2)
    assert measured["outputs"]["out['logits']"]["top1_agreement"] == 1.0
    pooler = measured["outputs"]["out['pooler_output']"]
    assert "top1_agreement" not in pooler and pooler["min_cosine"] >= 0.999
