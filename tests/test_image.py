"""The whole real-data path on one resnet18 build: trained weights in (`scaffold new --weights`), tensors in from
files (`--input-file`, `--inputs-file`), outputs out (`--save-outputs`, read back by torch.load), and images
(`--image` JPEG/PNG, `--topk`) preprocessed in C++ as torchvision does in Python."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.models import ResNet18_Weights

pytestmark = pytest.mark.e2e

WEIGHTS = ResNet18_Weights.DEFAULT
# C++ (libjpeg-turbo / libpng + ATen's antialiased resize) against torchvision.io.decode_image + transforms():
# the same operations on the same pixels, measured bit-identical; 1e-6 leaves room for another libjpeg build.
TENSOR_PATH_ATOL = 1e-6
# Against PIL's resize (transforms() on a PIL image): at most one uint8 level, 1 / 255 / min(std) = 0.0171.
PIL_PATH_ATOL = 0.02


def synthetic_picture(height: int = 375, width: int = 500) -> Image.Image:
    """A deterministic RGB picture with smooth gradients, stripes and a flat block (JPEG's hard cases)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([127 + 120 * np.sin(x / 23.0) * np.cos(y / 31.0),
                    255 * (x / width) * (y / height),
                    127 + 100 * np.sin((x + y) / 17.0)], axis=-1)
    rgb[100:200, 150:300] = [250, 30, 30]
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def cls(resnet18_app: dict) -> dict:
    """resnet18 with trained weights (conftest's resnet18_app, shared with test_e2e), plus a JPEG and a PNG."""
    picture = synthetic_picture()
    picture.save(resnet18_app["data"] / "photo.jpg", quality=90)
    picture.save(resnet18_app["data"] / "photo.png")
    return resnet18_app


def eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def image_support(binary: Path) -> str:
    help_text = run([binary, "--help"]).stdout
    return next((ln for ln in help_text.splitlines() if "--image" in ln), "")


def test_project_records_weights_preprocessing_and_lfs(cls: dict) -> None:
    manifest = json.loads((cls["root"] / "model" / "manifest.json").read_text())
    weights = manifest["weights"]
    assert weights["path"] == str(cls["data"] / "resnet18-trained.pt") and weights["strict"] is True
    import hashlib

    assert weights["sha256"] == hashlib.sha256((cls["data"] / "resnet18-trained.pt").read_bytes()).hexdigest()
    pre = manifest["preprocess"]
    preset = WEIGHTS.transforms()
    assert (pre["resize"], pre["crop"], pre["mean"], pre["std"], pre["interpolation"], pre["antialias"]) == (
        preset.resize_size, preset.crop_size * 2, preset.mean, preset.std, "bilinear", True)
    assert pre["categories"] == WEIGHTS.meta["categories"]
    attributes = (cls["root"] / ".gitattributes").read_text()
    assert "model/*.pt filter=lfs diff=lfs merge=lfs -text" in attributes
    assert "*.pth filter=lfs" in attributes and "*.pt2 filter=lfs" in attributes


def test_input_file_and_save_outputs_match_eager_with_the_same_weights(cls: dict, tmp_path: Path) -> None:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    run([cls["binary"], "--input-file", f"x={tmp_path / 'x.pt'}", "--save-outputs", tmp_path / "out.pt",
         "--warmup", "0", "--iters", "1"])
    outputs = torch.load(tmp_path / "out.pt")  # the default weights_only mode reads it
    assert list(outputs) == ["out"]
    assert torch.allclose(outputs["out"], eager(cls["model"], x), rtol=1e-3, atol=1e-4)

    # All inputs at once from a dict; the same outputs.
    torch.save({"x": x}, tmp_path / "inputs.pt")
    run([cls["binary"], "--inputs-file", tmp_path / "inputs.pt", "--save-outputs", tmp_path / "out2.pt",
         "--warmup", "0", "--iters", "1"])
    assert torch.equal(torch.load(tmp_path / "out2.pt")["out"], outputs["out"])


@pytest.mark.parametrize("picture", ["photo.jpg", "photo.png"])
def test_image_top5_and_preprocessing_match_torchvision(cls: dict, tmp_path: Path, picture: str) -> None:
    if "without" in image_support(cls["binary"]):
        pytest.skip(f"built without image support: {image_support(cls['binary'])}")
    path = cls["data"] / picture
    proc = run([cls["binary"], "--image", path, "--topk", "5", "--save-inputs", tmp_path / "in.pt",
                "--save-outputs", tmp_path / "out.pt", "--warmup", "0", "--iters", "1"])

    # Python: torchvision decodes the same file and applies the weights' own transforms().
    expected = WEIGHTS.transforms()(decode_image(str(path), mode=ImageReadMode.RGB)).unsqueeze(0)
    via_pil = WEIGHTS.transforms()(Image.open(path).convert("RGB")).unsqueeze(0)
    cpp = torch.load(tmp_path / "in.pt")["x"]
    assert cpp.shape == expected.shape == (1, 3, 224, 224) and cpp.dtype == torch.float32
    assert (cpp - expected).abs().max().item() <= TENSOR_PATH_ATOL
    assert (cpp - via_pil).abs().max().item() <= PIL_PATH_ATOL

    logits = eager(cls["model"], expected)
    top5 = [WEIGHTS.meta["categories"][i] for i in logits[0].topk(5).indices.tolist()]
    # "  1. 0.012345  great white shark (class 2)"
    printed = re.findall(r"^\s+\d+\. +\S+ +(.*) \(class \d+\)$", proc.stdout, re.MULTILINE)
    assert printed == top5, proc.stdout
    assert torch.allclose(torch.load(tmp_path / "out.pt")["out"], logits, rtol=1e-3, atol=1e-4)


def test_json_carries_topk(cls: dict) -> None:
    if "without" in image_support(cls["binary"]):
        pytest.skip("built without image support")
    proc = run([cls["binary"], "--json", "--image", cls["data"] / "photo.png", "--topk", "3", "--warmup", "0",
                "--iters", "1"])
    report = json.loads(proc.stdout)
    assert [p["rank"] for p in report["topk"]] == [1, 2, 3]
    first = report["topk"][0]
    assert first["name"] == WEIGHTS.meta["categories"][first["index"]] and 0 < first["probability"] <= 1
    assert report["topk"][0]["probability"] >= report["topk"][1]["probability"]


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--input-file", "x={bad_shape}"], 1, "input 'x' takes Float 1x3x224x224"),
    (["--input-file", "x={as_double}"], 1, "is Double 1x3x224x224, input 'x' takes Float"),
    (["--input-file", "y={bad_shape}"], 2, "the model has no input 'y' (inputs: x)"),
    (["--input-file", "x={npy}"], 1, "is a NumPy .npy file, which is not read here"),
    (["--inputs-file", "{bad_shape}"], 1, "holds a Tensor, not a dict of named tensors"),
    (["--input-file", "x={missing}"], 1, "not found"),
    (["--image", "{npy}"], 1, "is neither a JPEG nor a PNG file"),
    (["--image", "{jpg}", "--check"], 2, "--check compares against the golden inputs"),
    (["--topk", "0"], 2, "--topk expects an integer"),
])
def test_bad_data_files_fail_in_one_line(cls: dict, tmp_path: Path, args: list[str], code: int,
                                         message: str) -> None:
    torch.save(torch.zeros(1, 3, 32, 32), tmp_path / "bad_shape.pt")
    torch.save(torch.zeros(1, 3, 224, 224, dtype=torch.float64), tmp_path / "as_double.pt")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 224, 224), dtype=np.float32))
    files = {"bad_shape": tmp_path / "bad_shape.pt", "as_double": tmp_path / "as_double.pt",
             "npy": tmp_path / "x.npy", "missing": tmp_path / "nothing.pt", "jpg": cls["data"] / "photo.jpg"}
    proc = run([cls["binary"], *(a.format(**files) for a in args), "--warmup", "0", "--iters", "1"], check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]


DECODE_MAIN = r"""
#include <cstdio>
#include <exception>
#include "image_decode.h"
int main(int, char** argv) {
  try {
    const auto image = resnet18_app::detail::decode_image(argv[1], 3);
    std::fwrite(image.pixels.data(), 1, image.pixels.size(), stdout);
    std::fprintf(stderr, "%lld %lld %lld\n", static_cast<long long>(image.height), static_cast<long long>(image.width),
                 static_cast<long long>(image.channels));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
"""


def test_decoder_builds_without_the_libraries_and_matches_torchvision_with_them(cls: dict, tmp_path: Path) -> None:
    """src/image_decode.cpp is plain C++: compiled alone, without libjpeg/libpng it says so; with them its pixels
    are torchvision's decode_image pixels, byte for byte."""
    import shutil
    import subprocess

    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    (tmp_path / "main.cpp").write_text(DECODE_MAIN)
    sources = [tmp_path / "main.cpp", cls["root"] / "src" / "image_decode.cpp", f"-I{cls['root'] / 'src'}"]
    flags = ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-O1"]
    run([compiler, *flags, *sources, "-o", tmp_path / "bare"])
    proc = run([tmp_path / "bare", cls["data"] / "photo.jpg"], check=False)
    assert proc.returncode == 1 and "built without JPEG support" in proc.stderr

    if "without" in image_support(cls["binary"]):
        pytest.skip("libjpeg / libpng are not installed (bash .ci/setup --tests installs them)")
    run([compiler, *flags, "-DSCAFFOLD_HAVE_JPEG=1", "-DSCAFFOLD_HAVE_PNG=1", *sources, "-ljpeg", "-lpng",
         "-o", tmp_path / "full"])
    for picture in ("photo.jpg", "photo.png"):
        path = cls["data"] / picture
        out = subprocess.run([tmp_path / "full", path], capture_output=True, check=True).stdout
        expected = decode_image(str(path), mode=ImageReadMode.RGB).permute(1, 2, 0).contiguous()
        assert out == expected.numpy().tobytes(), picture
