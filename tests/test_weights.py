"""Trained weights: state_dict files and checkpoint forms, strict and partial loads, torchvision weights names
without a network, no backbone downloads, and the weights' path and sha256 through the spec and the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import REPO, scaffold
from torch import nn

from generator.errors import ScaffoldError
from generator.spec import anchor_paths, merge_flags, spec_from_mapping, spec_to_toml
from generator.weights import load_weights, read_state_dict

MLP = "examples.models.mlp:make_mlp"


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    from examples.models.mlp import make_mlp

    return make_mlp().eval()


def offline_env(tmp_path: Path) -> dict[str, str]:
    """An empty torch cache and every URL sent to a closed local port: a download fails at once."""
    home = tmp_path / "torch-home"
    home.mkdir(exist_ok=True)
    closed = "http://127.0.0.1:9"
    return {"TORCH_HOME": str(home), "http_proxy": closed, "https_proxy": closed, "HTTP_PROXY": closed,
            "HTTPS_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}


# ------------------------------------------------------------------------------------------------- file forms


def test_state_dict_and_checkpoint_forms_load_the_same_tensors(tmp_path: Path) -> None:
    state = mlp(1).state_dict()
    forms = {
        "plain.pt": (state, "state_dict"),
        "ckpt.pth": ({"epoch": 7, "state_dict": state, "lr": 0.1}, "checkpoint['state_dict']"),
        "ckpt2.pt": ({"model_state_dict": state, "optimizer_state_dict": {}}, "checkpoint['model_state_dict']"),
        "ckpt3.pt": ({"model": state, "step": 3}, "checkpoint['model']"),
        "dp.pt": ({f"module.{k}": v for k, v in state.items()}, "state_dict"),
    }
    for name, (value, form) in forms.items():
        torch.save(value, tmp_path / name)
        loaded, found, notes = read_state_dict(tmp_path / name)
        assert found == form, name
        assert list(loaded) == list(state) and all(torch.equal(loaded[k], state[k]) for k in state), name
        assert bool(notes) == (name == "dp.pt"), notes  # the DataParallel prefix is stripped, and said so
    assert "module." in read_state_dict(tmp_path / "dp.pt")[2][0]


def test_safetensors(tmp_path: Path) -> None:
    state = mlp(2).state_dict()
    path = tmp_path / "w.safetensors"
    try:
        from safetensors.torch import save_file
    except ImportError:
        pytest.skip("safetensors is not installed (bash .ci/setup --tests installs it)")
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, form, _ = read_state_dict(path)
    assert form == "safetensors" and all(torch.equal(loaded[k], state[k]) for k in state)


def test_safetensors_without_the_package_says_what_to_install(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if it were not installed: import fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ScaffoldError, match=r"needs the safetensors package \(pip install safetensors\)"):
        read_state_dict(tmp_path / "w.safetensors")


@pytest.mark.parametrize("what", ["missing", "whole-module", "torchscript", "list", "no-state-dict", "junk"])
def test_unreadable_weights_files_say_why(tmp_path: Path, what: str) -> None:
    path = tmp_path / "w.pt"
    expected = {
        "missing": "weights file not found",
        "whole-module": "save model.state_dict() instead",
        "torchscript": "is a TorchScript archive, not a state_dict",
        "list": "holds a list, not a state_dict",
        "no-state-dict": "holds none under state_dict, model_state_dict, model; its keys: 'epoch', 'weights'",
        "junk": "is not a file torch.load reads",
    }[what]
    if what == "whole-module":
        torch.save(nn.Linear(2, 2), path)
    elif what == "torchscript":
        torch.jit.script(nn.Linear(2, 2)).save(str(path))
    elif what == "list":
        torch.save([torch.zeros(1)], path)
    elif what == "no-state-dict":
        torch.save({"epoch": 1, "weights": [1, 2]}, path)
    elif what == "junk":
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(ScaffoldError, match=None) as info:
        read_state_dict(path)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ strict and partial


def bad_state() -> dict[str, torch.Tensor]:
    """The MLP's weights with one tensor missing, one extra and one of the wrong shape."""
    state = mlp(3).state_dict()
    del state["2.bias"]
    state["2.weight"] = torch.zeros(5, 128)
    state["head.scale"] = torch.ones(1)
    return state


def test_strict_load_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    torch.save(bad_state(), tmp_path / "bad.pt")
    model = mlp(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ScaffoldError) as info:
        load_weights(model, tmp_path / "bad.pt", strict=True, description="the MLP")
    message = str(info.value)
    assert "weights bad.pt do not fit the MLP" in message
    assert "missing keys (1): 2.bias" in message
    assert "unexpected keys (1): head.scale" in message
    assert "shape mismatches (1): 2.weight [5, 128] in the file, [10, 128] in the model" in message
    assert "--no-weights-strict" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_non_strict_load_takes_what_fits_and_warns(tmp_path: Path) -> None:
    state = bad_state()
    torch.save(state, tmp_path / "bad.pt")
    model = mlp(4)
    kept = model.state_dict()["2.weight"].clone()
    loaded = load_weights(model, tmp_path / "bad.pt", strict=False, description="the MLP")
    assert (loaded.loaded, loaded.total) == (2, 4)
    assert torch.equal(model.state_dict()["0.weight"], state["0.weight"])
    assert torch.equal(model.state_dict()["2.weight"], kept)  # the mismatched one keeps its initial value
    assert any("loaded 2 of 4 model tensors from bad.pt (not strict)" in n for n in loaded.notes)
    assert loaded.sha256 == hashlib.sha256((tmp_path / "bad.pt").read_bytes()).hexdigest()


def test_nothing_fits_is_an_error_even_when_not_strict(tmp_path: Path) -> None:
    torch.save({"a.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ScaffoldError, match="none of the 1 tensors in other.pt fit the MLP"):
        load_weights(mlp(0), tmp_path / "other.pt", strict=False, description="the MLP")


def test_weights_into_a_torchscript_source(tmp_path: Path) -> None:
    """An unfrozen TorchScript file takes a state_dict like a Python module; a frozen one has nothing to take."""
    from generator.models import resolve

    scripted = torch.jit.script(mlp(5))
    scripted.save(str(tmp_path / "net.pt"))
    state = mlp(6).state_dict()
    torch.save(state, tmp_path / "w.pt")
    resolved = resolve(str(tmp_path / "net.pt"), weights=str(tmp_path / "w.pt"))
    assert torch.equal(resolved.module.state_dict()["0.weight"], state["0.weight"])
    torch.jit.freeze(scripted.eval()).save(str(tmp_path / "frozen.pt"))
    with pytest.raises(ScaffoldError, match="no parameters or buffers to load weights into"):
        resolve(str(tmp_path / "frozen.pt"), weights=str(tmp_path / "w.pt"))


# ---------------------------------------------------------------------------------------------- spec and paths


def test_spec_paths_are_relative_to_the_spec_file_and_written_relative_to_the_project(tmp_path: Path) -> None:
    weights = tmp_path / "weights" / "best.pt"
    data = {"project": {"name": "app"}, "model": {"source": MLP, "weights": "weights/best.pt",
                                                  "weights_strict": False}}
    spec = spec_from_mapping(anchor_paths(data, tmp_path))
    assert spec.model.weights == str(weights) and spec.model.weights_strict is False
    text = spec_to_toml(spec, root=tmp_path / "app")
    assert 'weights = "../weights/best.pt"' in text and "weights_strict = false" in text
    import tomllib

    again = spec_from_mapping(anchor_paths(tomllib.loads(text), tmp_path / "app"))
    assert again.model == spec.model
    # A weights name stays a name; a flag overrides the file's value.
    assert anchor_paths({"model": {"weights": "DEFAULT"}}, tmp_path)["model"]["weights"] == "DEFAULT"
    merged = merge_flags(data, weights="IMAGENET1K_V1", weights_strict=True)
    assert merged["model"]["weights"] == "IMAGENET1K_V1" and merged["model"]["weights_strict"] is True


@pytest.mark.parametrize(("table", "message"), [
    ({"model": {"source": MLP, "weights": 3}}, "[model].weights: expected a string"),
    ({"model": {"source": MLP, "weights_strict": "no"}}, "[model].weights_strict: expected true or false"),
    ({"model": {"source": MLP}, "preprocess": {"crop": [1, 2, 3]}}, "[preprocess].crop: expected a positive"),
    ({"model": {"source": MLP}, "preprocess": {"std": [0.5, 0]}}, "[preprocess].std: every value must be > 0"),
    ({"model": {"source": MLP}, "preprocess": {"interpolation": "bilinaer"}}, "did you mean 'bilinear'"),
    ({"model": {"source": MLP}, "preprocess": {"labels": 7}}, "[preprocess].labels: expected a file name or"),
    ({"model": {"source": MLP}, "preprocess": {"mean": [0.5], "std": [1, 1]}}, "mean and std need the same"),
    ({"model": {"source": MLP}, "preprocess": {"rezise": 256}}, "did you mean 'resize'"),
])
def test_bad_weights_and_preprocess_keys(table: dict, message: str) -> None:
    with pytest.raises(ScaffoldError) as info:
        spec_from_mapping({"project": {"name": "app"}, **table})
    assert message in str(info.value)


# ----------------------------------------------------------------------------- torchvision: names and downloads

OFFLINE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from generator.models import resolve
    from generator.errors import ScaffoldError
    out = {}
    # Detection and segmentation builders default weights_backbone to ImageNet weights: none may be fetched.
    for name in ["deeplabv3_mobilenet_v3_large", "fasterrcnn_mobilenet_v3_large_320_fpn", "lraspp_mobilenet_v3_large"]:
        out[name] = resolve(name).description
    r = resolve("resnet18", weights="DEFAULT")  # from the cache that the test filled
    out["cached"] = [r.weights.manifest(), r.description, r.module.fc.bias[:3].tolist()]
    for weights in ["IMAGENET1K_V9", "ResNet50_Weights.DEFAULT"]:
        try:
            resolve("resnet18", weights=weights)
        except ScaffoldError as e:
            out[weights] = str(e)
    out["files"] = sorted(str(p.relative_to(os.environ["TORCH_HOME"])) for p in
                          __import__("pathlib").Path(os.environ["TORCH_HOME"]).rglob("*") if p.is_file())
    print(json.dumps(out))
""")


@pytest.mark.e2e  # about 10 s: builds three detection/segmentation models
def test_torchvision_names_resolve_offline_and_nothing_is_downloaded(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    torch.manual_seed(11)
    import torchvision

    cached = Path(env["TORCH_HOME"]) / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cached)
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["files"] == ["hub/checkpoints/resnet18-f37072fd.pth"]  # nothing else was fetched or written
    manifest, description, bias = out["cached"]
    assert manifest["form"] == "torchvision ResNet18_Weights.IMAGENET1K_V1" and manifest["path"] == str(cached)
    assert manifest["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert "weights ResNet18_Weights.IMAGENET1K_V1" in description
    assert bias == pytest.approx(state["fc.bias"][:3].tolist())
    assert "has no 'IMAGENET1K_V9' (did you mean 'IMAGENET1K_V1'?)" in out["IMAGENET1K_V9"]
    assert "resnet18's weights are ResNet18_Weights, not ResNet50_Weights" in out["ResNet50_Weights.DEFAULT"]


@pytest.mark.e2e
def test_a_weights_name_that_needs_a_download_fails_in_one_line(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    proc = scaffold("new", "app", "--model", "resnet18", "--weights", "DEFAULT", "--output", tmp_path / "app",
                    check=False, env=env)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("... ")]  # not progress
    assert len(lines) == 1 and lines[0].startswith("error: weights ResNet18_Weights.IMAGENET1K_V1 are not in the "
                                                   "cache and downloading"), proc.stderr
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in lines[0]
    assert str(Path(env["TORCH_HOME"]) / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in lines[0]
    assert "--weights FILE" in lines[0]
    assert not (tmp_path / "app").exists()


# ------------------------------------------------------------------------------------- through scaffold new


@pytest.mark.e2e
def test_module_attr_weights_reach_the_artifact_manifest_and_spec(tmp_path: Path) -> None:
    """scaffold new --weights for a package.module:attr model: the exported artifact computes what the same
    weights compute in eager PyTorch; the manifest has the file's sha256; the project's scaffold.toml finds the
    file again from anywhere (`scaffold new --spec DIR/scaffold.toml`)."""
    trained = mlp(21)
    (tmp_path / "ckpt").mkdir()
    torch.save({"epoch": 9, "model": trained.state_dict()}, tmp_path / "ckpt" / "mlp.pt")
    root = tmp_path / "mlp-app"
    scaffold("new", "mlp-app", "--model", MLP, "--weights", "ckpt/mlp.pt", "--output", root,
             env={"PYTHONPATH": str(REPO)}, cwd=tmp_path)

    manifest = json.loads((root / "model" / "manifest.json").read_text())
    weights = manifest["weights"]
    assert weights["path"] == str(tmp_path / "ckpt" / "mlp.pt") and weights["form"] == "checkpoint['model']"
    assert weights["sha256"] == hashlib.sha256((tmp_path / "ckpt" / "mlp.pt").read_bytes()).hexdigest()
    assert "preprocess" not in manifest  # not an image model, none declared

    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(5))
    artifact = torch.jit.load(str(root / "model" / "model.pt"))
    with torch.no_grad():
        assert torch.allclose(artifact(x), trained(x), rtol=1e-4, atol=1e-5)
    golden = torch.load(root / "model" / "golden.pt")
    with torch.no_grad():
        assert torch.allclose(golden["outputs"][0], trained(golden["inputs"][0]), rtol=1e-5, atol=1e-6)

    toml = (root / "scaffold.toml").read_text()
    assert 'weights = "../ckpt/mlp.pt"' in toml
    again = tmp_path / "elsewhere"
    again.mkdir()
    scaffold("new", "--spec", root / "scaffold.toml", "--output", again / "mlp-app", env={"PYTHONPATH": str(REPO)},
             cwd=again)
    assert json.loads((again / "mlp-app" / "model" / "manifest.json").read_text())["weights"]["sha256"] == \
        weights["sha256"]


@pytest.mark.e2e
def test_scaffold_new_strict_error_and_non_strict_warning(tmp_path: Path) -> None:
    torch.save(bad_state(), tmp_path / "bad.pt")
    proc = scaffold("new", "app", "--model", MLP, "--weights", tmp_path / "bad.pt", "--output", tmp_path / "app",
                    check=False)
    assert proc.returncode == 1 and not (tmp_path / "app").exists()
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("... ")]  # not progress
    assert len(lines) == 1 and lines[0].startswith("error: weights bad.pt do not fit"), proc.stderr
    proc = scaffold("new", "app", "--model", MLP, "--weights", tmp_path / "bad.pt", "--no-weights-strict",
                    "--output", tmp_path / "app")
    assert "warning: weights: loaded 2 of 4 model tensors from bad.pt (not strict)" in proc.stderr
    manifest = json.loads((tmp_path / "app" / "model" / "manifest.json").read_text())
    assert manifest["weights"]["strict"] is False and manifest["weights"]["loaded_tensors"] == 2


# ------------------------------------------------------------------------------ [preprocess] and class names


def preprocess_for(tmp_path: Path, table: dict, shape: str = "1x3x32x32", classes: int = 3,
                   source: str = MLP) -> dict:
    from generator.models import ResolvedModel
    from generator.preprocess import image_preprocess
    from generator.spec import parse_input_flag

    spec = spec_from_mapping(anchor_paths({"project": {"name": "app"}, "model": {"source": source},
                                           "preprocess": table}, tmp_path))
    spec = spec.with_inputs((parse_input_flag(f"x={shape}"),))
    resolved = ResolvedModel(module=nn.Identity(), kind="python", default_inputs=None, description="a model")
    entry, _ = image_preprocess(spec, resolved, [{"name": "out", "shape": [1, classes], "dtype": "float32"}])
    assert entry is not None
    return entry


def test_preprocess_table_for_a_module_attr_model(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n\n")
    entry = preprocess_for(tmp_path, {"resize": 36, "crop": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                      "labels": "classes.txt"})
    assert (entry["resize"], entry["crop"], entry["interpolation"], entry["antialias"]) == ([36], [32, 32],
                                                                                             "bilinear", True)
    assert entry["categories"] == ["cat", "dog", "bird"]
    assert entry["categories_source"] == str(tmp_path / "classes.txt")
    # Nothing but labels: the image is resized to the input's size, mean 0 and std 1.
    bare = preprocess_for(tmp_path, {"labels": ["a", "b", "c"]})
    assert (bare["resize"], bare["crop"], bare["mean"], bare["std"]) == ([32, 32], None, [0.0] * 3, [1.0] * 3)


@pytest.mark.parametrize(("table", "shape", "message"), [
    ({"crop": 28}, "1x3x32x32", "the image comes out 28x28 but input 'x' is 32x32"),
    ({"resize": 40}, "1x3x32x32", "a shorter-side resize alone gives images of varying size"),
    ({"labels": ["a", "b"]}, "1x3x32x32", "[preprocess].labels: 2 names, but the model's first output has 3"),
    ({"labels": "nothere.txt"}, "1x3x32x32", "[preprocess].labels: file not found"),
    ({"mean": [0.5]}, "1x3x32x32", "mean and std need 3 values"),
    ({"input": "y"}, "1x3x32x32", "the model has no input 'y'"),
    ({}, "1x64", "an image input is a 4-d float batch"),
])
def test_preprocess_mistakes_are_named(tmp_path: Path, table: dict, shape: str, message: str) -> None:
    with pytest.raises(ScaffoldError) as info:
        preprocess_for(tmp_path, table, shape)
    assert message in str(info.value)


def test_torchvision_preset_follows_another_input_size() -> None:
    """resnet18 exported at 160x160: its weights' preset (resize 256, crop 224) keeps the ratio, crops 160."""
    from torchvision.models import ResNet18_Weights

    from generator.models import ResolvedModel
    from generator.preprocess import image_preprocess
    from generator.spec import parse_input_flag

    # What resolve("resnet18") gives, less building the network: its DEFAULT weights enum for the metadata.
    resolved = ResolvedModel(module=nn.Identity(), kind="torchvision", default_inputs=None, description="resnet18",
                             weights_enum=ResNet18_Weights.DEFAULT)
    spec = spec_from_mapping({"project": {"name": "app"}, "model": {"source": "resnet18"}})
    spec = spec.with_inputs((parse_input_flag("x=1x3x160x160"),))
    entry, notes = image_preprocess(spec, resolved, [{"name": "out", "shape": [1, 1000], "dtype": "float32"}])
    assert entry is not None and (entry["resize"], entry["crop"]) == ([183], [160, 160])
    assert entry["source"] == "ResNet18_Weights.IMAGENET1K_V1" and len(entry["categories"]) == 1000
    assert "cropping 160x160 instead" in notes[0]
