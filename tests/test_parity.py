"""The parity rule: on each output's own scale, the same in Python export, golden.pt, the manifest and C++.

Fast tests check the rule and the export warnings in-process; the e2e ones build one project (tests.models.outputs
:Scales, outputs at ~1e-8, ~1e11 and exactly 0) and feed its binary and ctest a deliberately wrong artifact.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run, scaffold

from generator.errors import ScaffoldError
from generator.export import torchscript
from generator.export.common import compare, errors, flatten, sha256
from generator.models import ResolvedModel, apply_config, resolve
from generator.pipeline import fill_inputs
from generator.spec import merge_flags, parse_config_flag, spec_from_mapping, spec_to_toml

CTEST = Path(sys.executable).parent / "ctest"
RTOL, ATOL = 1e-3, 1e-4


def old_rule(expected: list, actual: list) -> bool:
    """What export and the C++ check did before: torch.allclose with an absolute atol."""
    return all(torch.allclose(a, e, rtol=RTOL, atol=ATOL, equal_nan=True)
               for (_, e), (_, a) in zip(expected, actual, strict=True))


def export_in_process(source: str, out: Path, **model: object):
    spec = spec_from_mapping({"project": {"name": "m"}, "model": {"source": source, **model}})
    resolved = resolve(spec.model.source)
    apply_config(resolved, spec.model.config)
    spec = fill_inputs(spec, resolved)
    out.mkdir(parents=True, exist_ok=True)
    return spec, torchscript.export(resolved, spec, out)


# ----------------------------------------------------------------------------------------- the rule


def test_tiny_output_wrong_by_one_percent_fails_the_new_rule_only():
    torch.manual_seed(0)
    e = [("out", torch.randn(4, 10) * 1e-10)]
    wrong = [("out", e[0][1] * 1.01)]
    assert old_rule(e, wrong)  # the old rule passed anything this small
    message = compare(e, wrong, RTOL, ATOL)
    assert message and message.startswith("out: max abs difference") and "of the output's scale" in message
    assert compare(e, [("out", e[0][1] * (1 + 1e-6))], RTOL, ATOL) is None


def test_huge_output_with_float32_rounding_passes_the_new_rule_only():
    torch.manual_seed(0)
    e = torch.randn(1000, dtype=torch.float64) * 1e11
    e[0] = 1.0  # one small value among huge ones: the old rule held it to ~1e-3 absolute
    a = e + torch.randn(1000, dtype=torch.float64) * 1e11 * 1e-7  # float32-sized rounding at the output's scale
    assert not old_rule([("out", e)], [("out", a)])
    assert compare([("out", e)], [("out", a)], RTOL, ATOL) is None


def test_all_zero_output_must_be_reproduced_exactly():
    e = [("out", torch.zeros(3))]
    assert compare(e, [("out", torch.zeros(3))], RTOL, ATOL) is None
    assert compare(e, [("out", torch.tensor([0.0, -0.0, 0.0]))], RTOL, ATOL) is None
    assert compare(e, [("out", torch.tensor([0.0, 1e-30, 0.0]))], RTOL, ATOL)


def test_non_finite_values_must_match():
    e = [("out", torch.tensor([1.0, float("nan"), float("inf")]))]
    assert compare(e, [("out", torch.tensor([1.0, float("nan"), float("inf")]))], RTOL, ATOL) is None
    assert compare(e, [("out", torch.tensor([1.0, 0.0, float("inf")]))], RTOL, ATOL)
    assert compare(e, [("out", torch.tensor([1.0, float("nan"), -float("inf")]))], RTOL, ATOL)
    assert compare(e, [("out", torch.tensor([float("nan"), float("nan"), float("inf")]))], RTOL, ATOL)


def test_errors_reports_scale_max_abs_relative_and_cosine_per_floating_output():
    e = [("a", torch.tensor([2.0, -4.0])), ("ids", torch.tensor([1, 2])), ("z", torch.zeros(2))]
    a = [("a", torch.tensor([2.0, -3.0])), ("ids", torch.tensor([1, 2])), ("z", torch.zeros(2))]
    got = errors(e, a)
    assert set(got) == {"a", "z"}  # integer outputs are compared exactly, not measured
    assert got["a"]["scale"] == 4.0 and got["a"]["max_abs"] == 1.0 and got["a"]["max_rel"] == 0.25
    assert got["a"]["cosine"] == pytest.approx((4 + 12) / (20**0.5 * 13**0.5))
    assert got["z"] == {"scale": 0.0, "max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0, "ok": True}
    # Looser tolerances (bf16, int8 exports) go through the same call.
    assert not errors(e, a, 1e-3, 1e-4)["a"]["ok"] and errors(e, a, 0.0, 0.3)["a"]["ok"]
    assert compare(e, a, 0.0, 0.3) is None


# ----------------------------------------------------------------------------------- export warnings


def test_zero_and_constant_outputs_warn_at_export(tmp_path):
    _, result = export_in_process("tests.models.outputs:ZeroHead", tmp_path / "model")
    zeros = [w for w in result.warnings if "out[0] is all zeros" in w]
    assert zeros and "cannot catch a broken artifact" in zeros[0] and "--weights" in zeros[0]
    assert any("out[1] (every value 0.3333) is constant" in w for w in result.warnings)


def test_manifest_and_golden_record_the_rule(tmp_path):
    _, result = export_in_process("tests.models.outputs:Scales", tmp_path / "model")
    verify = result.manifest["verify"]
    assert verify["rule"] == "scaled" and verify["rtol"] == RTOL and verify["atol"] == ATOL
    assert set(verify["outputs"]) == {"out['tiny']", "out['huge']", "out['zero']", "out['spectrum']"}
    assert 1e-9 < verify["outputs"]["out['tiny']"]["scale"] < 1e-7
    assert verify["outputs"]["out['huge']"]["scale"] > 1e10
    assert verify["outputs"]["out['zero']"] == {"scale": 0.0, "max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0}
    assert any("out['tiny'] (at most" in w and "below atol=0.0001" in w for w in result.warnings)
    golden = torch.load(result.golden, weights_only=True)
    assert golden["rule"] == "scaled" and golden["rtol"] == RTOL and golden["atol"] == ATOL


def test_a_wrong_artifact_on_a_tiny_output_is_caught_in_python(tmp_path):
    _, result = export_in_process("tests.models.outputs:Scales", tmp_path / "model")
    golden = torch.load(result.golden, weights_only=True)
    expected = list(zip(golden["output_names"], golden["outputs"], strict=True))
    from tests.models.outputs import scales_broken

    with torch.inference_mode():
        actual = flatten(scales_broken()(*golden["inputs"]))
    assert old_rule(expected, actual)
    assert compare(expected, actual, RTOL, ATOL).startswith("out['tiny']: max abs difference")


def test_tracer_warning_names_the_models_line_not_torchs(tmp_path):
    _, result = export_in_process("tests.models.outputs:Iterates", tmp_path / "model")
    source = Path(__file__).parent / "models" / "outputs.py"
    line = next(n for n, text in enumerate(source.read_text().splitlines(), 1) if "rows = [row * 2" in text)
    tracing = [w for w in result.warnings if w.startswith("tracing:")]
    assert tracing and tracing[0].startswith(f"tracing: outputs.py:{line}: Iterating over a tensor"), tracing
    assert not any("_tensor.py" in w for w in result.warnings)


# ------------------------------------------------------------------------------------ [model.config]


def test_model_config_parses_round_trips_and_refuses_bad_values():
    spec = spec_from_mapping({"project": {"name": "a"},
                              "model": {"source": "m:f", "config": {"use_cache": False, "n_layer": 2}}})
    assert spec.model.config == (("use_cache", False), ("n_layer", 2))
    assert "[model.config]\nuse_cache = false\nn_layer = 2\n" in spec_to_toml(spec)
    for bad, message in (({"use cache": 1}, "must be an attribute name"), ({"a": [1]}, "expected true/false"),
                         (3, "expected a table")):
        with pytest.raises(ScaffoldError, match=re.escape(message)):
            spec_from_mapping({"project": {"name": "a"}, "model": {"source": "m:f", "config": bad}})


def test_model_config_flag_merges_into_the_spec():
    data = merge_flags({"model": {"source": "m:f", "config": {"a": 1}}},
                       config=dict(parse_config_flag(t) for t in ("use_cache=false", "name=gpt", "a=0.5")))
    assert spec_from_mapping({"project": {"name": "x"}, **data}).model.config == (
        ("a", 0.5), ("use_cache", False), ("name", "gpt"))
    with pytest.raises(ScaffoldError, match="expected KEY=VALUE"):
        parse_config_flag("use_cache")


def test_apply_config_sets_known_attributes_only():
    module = torch.nn.Linear(1, 1)
    module.config = SimpleNamespace(use_cache=True, dropout=0.1)
    resolved = ResolvedModel(module=module, kind="python", default_inputs=None, description="m")
    apply_config(resolved, (("use_cache", False), ("dropout", 0)))
    assert module.config.use_cache is False and module.config.dropout == 0
    with pytest.raises(ScaffoldError, match=r"\[model.config\].use_cach: .* \(did you mean 'use_cache'\?\)"):
        apply_config(resolved, (("use_cach", False),))
    with pytest.raises(ScaffoldError, match=r"use_cache is a bool"):
        apply_config(resolved, (("use_cache", 3),))
    plain = ResolvedModel(module=torch.nn.Linear(1, 1), kind="python", default_inputs=None, description="Linear")
    with pytest.raises(ScaffoldError, match="has no `config`"):
        apply_config(plain, (("use_cache", False),))


# ------------------------------------------------------------------------------ e2e: the C++ check


@pytest.fixture(scope="session")
def scales_app(projects):
    """tests.models.outputs:Scales generated and built once; (root, stderr of scaffold new)."""
    root = projects / "scales-app"
    proc = scaffold("new", "scales-app", "--model", "tests.models.outputs:Scales", "--output", root)
    scaffold("build", root)
    return root, proc.stderr


@pytest.fixture(scope="session")
def broken_model_dir(scales_app, tmp_path_factory):
    """A model directory like scales-app's, whose model.pt has the tiny path's weights 1% off."""
    root, _ = scales_app
    out = tmp_path_factory.mktemp("broken")
    export_in_process("tests.models.outputs:scales_broken", out / "export")
    shutil.copy(out / "export" / "model.pt", out / "model.pt")
    (out / "model.pt.sha256").write_text(f"{sha256(out / 'model.pt')}  model.pt\n")
    for name in ("golden.pt", "manifest.json"):
        shutil.copy(root / "model" / name, out / name)
    return out


@pytest.mark.e2e
def test_scales_project_passes_ctest_and_warns_at_export(scales_app):
    root, stderr = scales_app
    assert "warning: output out['zero'] is all zeros" in stderr
    assert "warning: output out['tiny'] (at most" in stderr
    proc = run([CTEST, "--test-dir", root / "build", "--output-on-failure"])
    assert "tests passed" in proc.stdout
    stats = json.loads(run([root / "build" / "scales-app", "--check", "--json", "--iters", "1"]).stdout)
    assert stats["parity"] is True
    assert [o["name"] for o in stats["outputs"]] == ["out['tiny']", "out['huge']", "out['zero']",
                                                     "out['spectrum']"]
    assert stats["outputs"][3]["dtype"] == "ComplexFloat"


@pytest.mark.e2e
def test_wrong_artifact_on_a_tiny_output_fails_the_binary_and_ctest(scales_app, broken_model_dir):
    root, _ = scales_app
    proc = run([root / "build" / "scales-app", "--check", "--model", broken_model_dir / "model.pt", "--iters", "1"],
               check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert re.search(r"error: parity check failed: out\['tiny'\]: max abs difference \S+ is \S+ of the output's "
                     r"scale", proc.stderr), proc.stderr
    # ctest's parity test loads the model directory the environment names, as a deployed service would.
    ctest = run([CTEST, "--test-dir", root / "build", "--output-on-failure", "-R", "^parity$"], check=False,
                env={"SCALES_APP_MODEL_DIR": str(broken_model_dir)})
    assert ctest.returncode != 0 and "out['tiny']: max abs difference" in ctest.stdout, ctest.stdout


@pytest.mark.e2e
def test_golden_files_without_a_rule_are_read_the_old_way(scales_app, tmp_path):
    root, _ = scales_app
    golden = torch.load(root / "model" / "golden.pt", weights_only=True)
    del golden["rule"]
    torch.save(golden, tmp_path / "old.pt")
    proc = run([root / "build" / "scales-app", "--check", "--golden", tmp_path / "old.pt", "--iters", "1"])
    assert "parity: OK" in proc.stdout
    golden["rule"] = "cosine"
    torch.save(golden, tmp_path / "other.pt")
    proc = run([root / "build" / "scales-app", "--check", "--golden", tmp_path / "other.pt", "--iters", "1"],
               check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "'rule' should be \"scaled\"" in lines[0], proc.stderr


@pytest.mark.e2e
def test_complex_outputs_are_checked_by_magnitude_in_cpp(scales_app, tmp_path):
    """A complex output is held to the scaled rule (by magnitude) in C++, as in Python: a golden value off by
    1e-5 of itself passes, 1% fails and says by how much (before, C++ demanded bit-equal complex values)."""
    root, _ = scales_app
    golden = torch.load(root / "model" / "golden.pt", weights_only=True)
    index = golden["output_names"].index("out['spectrum']")
    assert golden["outputs"][index].is_complex()
    for factor, passes in ((1 + 1e-5, True), (1.01, False)):
        changed = dict(golden, outputs=list(golden["outputs"]))
        changed["outputs"][index] = golden["outputs"][index] * factor
        torch.save(changed, tmp_path / "golden.pt")
        proc = run([root / "build" / "scales-app", "--check", "--golden", tmp_path / "golden.pt", "--iters", "1"],
                   check=False)
        if passes:
            assert proc.returncode == 0 and "parity: OK" in proc.stdout, proc.stdout + proc.stderr
        else:
            assert proc.returncode == 3, proc.stdout + proc.stderr
            assert "out['spectrum']: max abs difference" in proc.stderr and "of the output's scale" in proc.stderr
