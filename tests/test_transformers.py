"""transformers models: ModelOutput field names and key/value caches as named outputs, end to end.

GPT-2 (tests.models.outputs:tiny_gpt2, 2 layers built from a config, default use_cache=True) is generated with the
TorchScript backend (trace), built with real cmake and checked by ctest; its outputs keep their names in the
manifest, golden.pt, the typed C++ API and the binary's --json output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import run, scaffold

from generator.errors import ScaffoldError
from generator.export.common import flatten, plain_outputs

CTEST = Path(sys.executable).parent / "ctest"


def _cache_field() -> str:
    """GPT-2's cache field as the installed transformers names it: `past_key_values` until 5.23, `cache` from 5.24.
    scaffold keeps whatever name the ModelOutput has; the tests follow it rather than pin one."""
    import dataclasses

    from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions
    names = [f.name for f in dataclasses.fields(CausalLMOutputWithCrossAttentions)]
    return next(n for n in ("cache", "past_key_values") if n in names)


def gpt2_outputs() -> list[str]:
    field = _cache_field()
    return ["out['logits']"] + [f"out['{field}.{layer}.{part}']" for layer in (0, 1) for part in ("key", "value")]


class _Layer:
    def __init__(self, n: int) -> None:
        self.keys = torch.full((1, 2), float(n))
        self.values = torch.full((1, 2), -float(n))


class DynamicCache:  # the shape of transformers' DynamicCache: .layers with .keys / .values
    def __init__(self) -> None:
        self.layers = [_Layer(1), _Layer(2)]


class QuantizedCache:  # a cache scaffold does not know how to read
    pass


def test_a_cache_outside_a_model_output_becomes_key_value_pairs_per_layer():
    names = [n for n, _ in flatten((torch.zeros(1), DynamicCache()))]
    assert names == ["out[0]", "out[1][0][0]", "out[1][0][1]", "out[1][1][0]", "out[1][1][1]"]
    # What the traced wrapper returns is plain all the way down (TorchScript cannot type a cache object).
    plain = plain_outputs((torch.zeros(1), DynamicCache()))
    assert torch.equal(plain[1][1][0], torch.full((1, 2), 2.0)) and torch.equal(plain[1][1][1], -plain[1][1][0])
    assert plain_outputs(torch.ones(1)).item() == 1  # anything else passes through


def test_an_unknown_cache_says_what_works():
    with pytest.raises(ScaffoldError, match=r"output 'out\[1\]' is a QuantizedCache: .*DynamicCache.*"
                                            r"use_cache = false in \[model.config\]"):
        flatten((torch.zeros(1), QuantizedCache()))


# --------------------------------------------------------------------------------------------- e2e


@pytest.fixture(scope="session")
def gpt2_app(projects):
    """tiny GPT-2 with its default cache, generated and built once; (root, stderr of scaffold new)."""
    pytest.importorskip("transformers")
    root = projects / "gpt2-app"
    proc = scaffold("new", "gpt2-app", "--model", "tests.models.outputs:tiny_gpt2", "--output", root)
    scaffold("build", root)
    return root, proc.stderr


@pytest.mark.e2e
def test_gpt2_with_its_default_cache_builds_and_passes_ctest(gpt2_app):
    root, stderr = gpt2_app
    GPT2_OUTPUTS = gpt2_outputs()
    proc = run([CTEST, "--test-dir", root / "build", "--output-on-failure"])
    assert "tests passed" in proc.stdout
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    assert [o["name"] for o in manifest["signature"]["outputs"]] == GPT2_OUTPUTS
    assert manifest["signature"]["outputs"][0]["shape"] == [1, 8, 100]
    assert set(manifest["verify"]["outputs"]) == set(GPT2_OUTPUTS)
    assert torch.load(root / "model" / "golden.pt", weights_only=True)["output_names"] == GPT2_OUTPUTS
    header = (root / "include" / "gpt2-app" / "model.h").read_text()
    assert "out_logits" in header and f"out_{_cache_field()}_0_key" in header
    # Tracer warnings name transformers' lines, not torch's.
    tracing = [line for line in stderr.splitlines() if line.startswith("warning: tracing:")]
    assert tracing and not any(name in line for line in tracing for name in ("_tensor.py", "functional.py"))


@pytest.mark.e2e
def test_gpt2_binary_names_its_outputs_in_json(gpt2_app):
    root, _ = gpt2_app
    GPT2_OUTPUTS = gpt2_outputs()
    stats = json.loads(run([root / "build" / "gpt2-app", "--check", "--json", "--iters", "1"]).stdout)
    assert stats["parity"] is True
    assert [o["name"] for o in stats["outputs"]] == GPT2_OUTPUTS
    assert stats["outputs"][0] == {"name": "out['logits']", "shape": [1, 8, 100], "dtype": "Float"}


@pytest.mark.e2e
def test_gpt2_without_the_cache_from_model_config(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "scaffold.toml").write_text('[project]\nname = "nocache"\n[model]\n'
                                            'source = "tests.models.outputs:tiny_gpt2"\n'
                                            '[model.config]\nuse_cache = false\n')
    scaffold("new", "--spec", tmp_path / "scaffold.toml", "--output", tmp_path / "nocache")
    manifest = json.loads((tmp_path / "nocache" / "model" / "manifest.json").read_text())
    assert [o["name"] for o in manifest["signature"]["outputs"]] == ["out['logits']"]
    assert "[model.config]\nuse_cache = false" in (tmp_path / "nocache" / "scaffold.toml").read_text()
    proc = scaffold("new", "typo", "--model", "tests.models.outputs:tiny_gpt2", "--model-config", "use_cach=false",
                    "--output", tmp_path / "typo", check=False)
    assert proc.returncode == 1 and "did you mean 'use_cache'?" in proc.stderr and not (tmp_path / "typo").exists()


@pytest.mark.e2e
def test_bert_encoder_keeps_its_field_names(tmp_path):
    pytest.importorskip("transformers")
    scaffold("new", "bert", "--model", "tests.models.outputs:tiny_bert", "--output", tmp_path / "bert")
    manifest = json.loads((tmp_path / "bert" / "model" / "manifest.json").read_text())
    assert [o["name"] for o in manifest["signature"]["outputs"]] == ["out['last_hidden_state']",
                                                                       "out['pooler_output']"]


@pytest.mark.e2e
def test_update_drops_the_cache_with_model_config(gpt2_app, tmp_path):
    """`scaffold update --model-config use_cache=false` re-exports without the cache outputs and keeps the setting
    in scaffold.toml (a copy of the built GPT-2 project; its build/ is left behind)."""
    import shutil

    root = tmp_path / "gpt2-app"
    shutil.copytree(gpt2_app[0], root, ignore=shutil.ignore_patterns("build"))
    scaffold("update", root, "--allow-dirty", "--model-config", "use_cache=false")
    manifest = json.loads((root / "model" / "manifest.json").read_text())
    assert [o["name"] for o in manifest["signature"]["outputs"]] == ["out['logits']"]
    assert "[model.config]\nuse_cache = false" in (root / "scaffold.toml").read_text()
    assert "out_logits" in (root / "include" / "gpt2-app" / "model.h").read_text()
