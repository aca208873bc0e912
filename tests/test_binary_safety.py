"""The generated binary against hostile files and flags: it never crashes, hangs or leaks; it says what is wrong.

Byte-flipped artifacts (refused by their sha256 before any of their code runs), fuzzed golden data, FIFOs and
unreadable files, absurd thread counts, and the temporary directory the AOTInductor loader unpacks into.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import generated, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

# The same arguments as tests/test_e2e.py's projects of these names, so that one build serves both modules.
GATE = ("--model", "examples.models.control_flow:make_gate", "--method", "script", "--input", "x=4x8")
CELL_AOTI = ("--model", "examples.models.cell:Cell", "--backend", "aoti", "--dynamic", "x:0", "--dynamic", "h:0")

# Byte flips per backend (each a run of the binary, about half a second). Every one must be refused by the
# checksum before the artifact is read, so more add little; the AOTI package is the one whose flips crashed the
# unchecked binary (its shared object runs at load).
FLIPS = {"torchscript": 25, "aoti": 50}


@pytest.fixture(scope="module")
def ts(projects) -> Path:
    return generated(projects, "gate-app", *GATE)


@pytest.fixture(scope="module")
def aoti(projects) -> Path:
    return generated(projects, "cell-aoti", *CELL_AOTI)


@pytest.fixture(scope="module")
def built(ts, aoti) -> dict[str, Path]:
    return {"torchscript": ts, "aoti": aoti}


def binary(root: Path) -> Path:
    path = root / "build" / root.name
    assert path.is_file(), f"{path} was not built"
    return path


def artifact(root: Path) -> Path:
    return root / "model" / json.loads((root / "model" / "manifest.json").read_text())["artifact"]


def launch(args: Sequence[object], timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a binary; stderr is decoded leniently (a damaged file's bytes may end up in a message)."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def one_error(proc: subprocess.CompletedProcess, codes: Sequence[int] = (1,)) -> str:
    """No signal death, an expected exit code, and exactly one line on stderr: `error: ...`. Returns it."""
    if proc.returncode < 0:
        pytest.fail(f"{' '.join(proc.args)} was killed by {signal.Signals(-proc.returncode).name}\n{proc.stderr}")
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode in codes, (proc.args, proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), (proc.args, proc.stderr)
    return lines[0]


def copy_model(root: Path, dest: Path, data: bytes | None = None, sidecar: bool = True) -> Path:
    """The project's artifact (or `data` under its name) in dest, with the project's checksum file beside it."""
    source = artifact(root)
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / source.name
    target.write_bytes(source.read_bytes() if data is None else data)
    if sidecar:
        shutil.copy(source.with_name(source.name + ".sha256"), dest / (source.name + ".sha256"))
    return target


# ------------------------------------------------------------------------------------------ the checksum


def test_export_writes_a_checksum_file(built):
    for root in built.values():
        model = artifact(root)
        sidecar = model.with_name(model.name + ".sha256").read_text()
        assert sidecar == f"{hashlib.sha256(model.read_bytes()).hexdigest()}  {model.name}\n"
        # `sha256sum -c` reads it as it is, from the model directory.
        if shutil.which("sha256sum"):
            run(["sha256sum", "--quiet", "-c", model.name + ".sha256"], cwd=model.parent)


@pytest.mark.parametrize("portable", [False, True], ids=["sha-ni-if-present", "portable"])
def test_sha256_matches_hashlib(ts, tmp_path, portable):
    """The project's own SHA-256 (src/sha256.cpp), compiled alone, against hashlib on block-boundary sizes."""
    compiler = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    header = (ts / "src" / "sha256.h").read_text()
    namespace = re.search(r"^namespace ([\w:]+) \{", header, re.M).group(1)
    driver = tmp_path / "driver.cpp"
    driver.write_text('#include "sha256.h"\n#include <iostream>\nint main(int argc, char** argv) {\n'
                      f"  for (int i = 1; i < argc; ++i) std::cout << {namespace}::sha256_file(argv[i]) << '\\n';\n"
                      "}\n")
    exe = tmp_path / "sha256"
    run([compiler, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", *(["-DSCAFFOLD_NO_SHA_NI"] * portable),
         f"-I{ts / 'src'}", ts / "src" / "sha256.cpp", driver, "-o", exe])
    rng = random.Random(0)
    sizes = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, (1 << 20) - 1, 1 << 20,
             (1 << 20) + 1, 3 * (1 << 20) + 17]
    files = []
    for size in sizes:
        path = tmp_path / f"f{size}"
        path.write_bytes(rng.randbytes(size))
        files.append(path)
    digests = run([exe, *files]).stdout.split()
    assert digests == [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]


@pytest.mark.parametrize("backend", ["torchscript", "aoti"])
def test_byte_flipped_artifacts_are_refused(built, backend, tmp_path):
    """Every flipped byte is caught by the sha256 before the artifact loads: one line, exit 1, never a signal."""
    root = built[backend]
    data = artifact(root).read_bytes()
    rng = random.Random(backend)
    cases = []
    for n in range(FLIPS[backend]):
        flipped = bytearray(data)
        flipped[rng.randrange(len(flipped))] ^= rng.randrange(1, 256)
        cases.append(copy_model(root, tmp_path / str(n), bytes(flipped)))

    def attempt(model: Path) -> subprocess.CompletedProcess:
        return launch([binary(root), "--model", model, "--iters", "1", "--warmup", "0"])

    with ThreadPoolExecutor(2) as pool:
        for model, proc in zip(cases, pool.map(attempt, cases), strict=True):
            line = one_error(proc)
            assert line.startswith(f"error: cannot load {model}: its sha256 "), line
            assert "differs from" in line and "--no-verify" in line, line


@pytest.mark.parametrize("backend", ["torchscript", "aoti"])
def test_damaged_or_missing_checksum(built, backend, tmp_path):
    root = built[backend]
    exe = binary(root)
    name = artifact(root).name
    data = artifact(root).read_bytes()
    cases = {
        "truncated": (data[: len(data) // 2], "its sha256 "),
        "empty": (b"", "its sha256 "),
        "appended": (data + b"\0" * 100, "its sha256 "),
        "an LFS pointer": (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 9\n",
                           "it is a Git LFS pointer, not the model: fetch it with `git lfs pull`"),
    }
    for label, (content, fragment) in cases.items():
        model = copy_model(root, tmp_path / label, content)
        line = one_error(launch([exe, "--model", model, "--iters", "1"]))
        assert line.startswith(f"error: cannot load {model}: {fragment}"), (label, line)

    model = copy_model(root, tmp_path / "no-sidecar", sidecar=False)
    line = one_error(launch([exe, "--model", model, "--iters", "1"]))
    assert f"no checksum file {name}.sha256 beside it" in line and "--no-verify" in line, line
    proc = launch([exe, "--model", model, "--no-verify", "--iters", "1", "--warmup", "0"])
    assert proc.returncode == 0, proc.stderr  # an intact model loads unchecked when asked

    sidecar = model.with_name(name + ".sha256")
    for label, make in {
        "not hex": lambda: sidecar.write_text("z" * 64 + f"  {name}\n"),
        "too short": lambda: sidecar.write_text("abc123  model\n"),
        "empty": lambda: sidecar.write_text(""),
        "a directory": lambda: sidecar.mkdir(),
        "a FIFO": lambda: os.mkfifo(sidecar),
    }.items():
        make()
        line = one_error(launch([exe, "--model", model, "--iters", "1"], timeout=30))
        assert line.startswith(f"error: cannot load {model}: "), (label, line)
        assert "checksum" in line or "sha256" in line, (label, line)
        shutil.rmtree(sidecar) if sidecar.is_dir() else sidecar.unlink()


# ---------------------------------------------------------------------------------- FIFOs, permissions


@pytest.mark.parametrize("backend", ["torchscript", "aoti"])
def test_fifo_as_golden_or_model_does_not_hang(built, backend, tmp_path):
    exe = binary(built[backend])
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    for args in (["--golden", fifo], ["--golden", fifo, "--check"], ["--model", fifo],
                 ["--model", fifo, "--no-verify"]):
        line = one_error(launch([exe, *args, "--iters", "1"], timeout=30))
        assert str(fifo) in line and "not a regular file" in line, (args, line)


@pytest.mark.parametrize("backend", ["torchscript", "aoti"])
def test_directory_as_golden_or_model(built, backend, tmp_path):
    exe = binary(built[backend])
    for flag in ("--golden", "--model"):
        line = one_error(launch([exe, flag, tmp_path, "--iters", "1"]))
        assert str(tmp_path) in line and "not a regular file" in line, (flag, line)


def test_unreadable_golden_is_not_reported_missing(ts, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading the file")
    golden = tmp_path / "golden.pt"
    shutil.copy(ts / "model" / "golden.pt", golden)
    golden.chmod(0)
    try:
        line = one_error(launch([binary(ts), "--golden", golden, "--iters", "1"]))
    finally:
        golden.chmod(0o600)
    assert "cannot be read" in line and "not found" not in line, line


# ------------------------------------------------------------------------------------------- --threads


@pytest.mark.parametrize("value", ["100000", "2147483647", "2147483648", "-1", "1e9"])
def test_absurd_thread_counts_are_refused(ts, value):
    line = one_error(launch([binary(ts), "--threads", value, "--iters", "1"], timeout=60), codes=(2,))
    assert line.startswith("error: --threads "), line


# ------------------------------------------------------------------------------- golden.pt fuzzing

KEYS = ("input_names", "inputs", "output_names", "outputs", "rtol", "atol")
NAME_KEYS = {"inputs": "input_names", "outputs": "output_names"}

tensors = st.builds(lambda dtype, shape: torch.zeros(shape, dtype=dtype),
                    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]),
                    st.lists(st.integers(0, 3), max_size=3))
# Values of the wrong type for every key: never a list of strings, never a list of tensors, never a number.
junk = st.one_of(st.none(), st.text(max_size=8), st.binary(max_size=8), tensors,
                 st.lists(st.integers(), min_size=1, max_size=3), st.lists(st.none(), min_size=1, max_size=2),
                 st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                 st.tuples(st.text(max_size=3), tensors))


def unchanged(golden: dict, base: dict) -> bool:
    """The same keys and values as `base`: the same tensor objects, equal strings and numbers."""
    def same(a: object, b: object) -> bool:
        return a is b or (type(a) is type(b) and isinstance(a, (str, int, float)) and a == b)

    return golden.keys() == base.keys() and all(
        same(v, base[k]) or (isinstance(v, list) and isinstance(base[k], list) and len(v) == len(base[k])
                             and all(map(same, v, base[k])))
        for k, v in golden.items())


@st.composite
def broken_goldens(draw, base: dict) -> object:
    """The project's real golden data with at least one thing wrong: a key missing or of the wrong type, names
    that disagree with their tensors, an element of the wrong type; or not a dict at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(junk, st.lists(tensors, max_size=3), st.integers(), st.floats()))
    golden = {k: (list(v) if isinstance(v, list) else v) for k, v in base.items()}
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):  # mostly one thing wrong: it must still be found
        key = draw(st.sampled_from(KEYS))
        kind = draw(st.sampled_from(["drop", "retype", "length", "length", "element"]))
        if kind == "drop":
            golden.pop(key, None)
        elif kind == "retype" or not isinstance(golden.get(key), list):
            golden[key] = draw(junk)
        elif kind == "length":
            names = NAME_KEYS.get(key, key if key.endswith("names") else "input_names")
            if isinstance(golden.get(names), list):
                golden[names] = golden[names][:-1] if golden[names] and draw(st.booleans()) else [*golden[names],
                                                                                                  "extra"]
            else:
                golden[names] = ["extra"] * draw(st.integers(0, 3))
        elif golden[key]:
            index = draw(st.integers(0, len(golden[key]) - 1))
            golden[key][index] = draw(st.one_of(st.integers(), st.none(), tensors if key.endswith("names")
                                                else st.text(max_size=4)))
        else:
            golden[key] = [draw(junk)]
    if unchanged(golden, base):  # two changes can cancel (a name added, then the last one dropped)
        golden.pop(draw(st.sampled_from(KEYS)), None)
    for _ in range(draw(st.integers(0, 2))):  # unknown keys: never an error on their own
        golden[draw(st.text(min_size=1, max_size=6))] = draw(junk)
    return golden


def fuzz_settings(examples: int):
    # Each example starts the binary (about half a second): these bound the fuzzing to about a minute in all.
    return settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@fuzz_settings(20)
@given(data=st.data())
def test_fuzz_golden_random_bytes(built, fuzz_dir, data):
    """Random bytes, and the real golden.pt truncated or with bytes flipped."""
    backend = data.draw(st.sampled_from(sorted(built)))
    root = built[backend]
    real = (root / "model" / "golden.pt").read_bytes()
    kind = data.draw(st.sampled_from(["random", "truncated", "flipped"]))
    if kind == "random":
        content = data.draw(st.binary(max_size=4096))
    elif kind == "truncated":
        content = real[: data.draw(st.integers(0, len(real) - 1))]
    else:
        flipped = bytearray(real)
        for _ in range(data.draw(st.integers(1, 8))):
            flipped[data.draw(st.integers(0, len(real) - 1))] ^= data.draw(st.integers(1, 255))
        content = bytes(flipped)
    golden = fuzz_dir / f"bytes-{kind}.pt"
    golden.write_bytes(content)
    check = ["--check"] if data.draw(st.booleans()) else []
    args = [binary(root), "--golden", golden, "--iters", "1", "--warmup", "0", *check]
    proc = launch(args, timeout=60)
    if kind == "flipped" and proc.returncode in (0, 3):
        return  # a flip in tensor data leaves a well-formed file: it runs (and --check may find a mismatch)
    one_error(proc, codes=(1, 2))


@fuzz_settings(45)
@given(data=st.data())
def test_fuzz_golden_structures(built, fuzz_dir, data):
    """Pickled structures shaped almost like golden.pt: one `error:` line, exit 1 or 2, for --check and plain runs."""
    backend = data.draw(st.sampled_from(sorted(built)))
    root = built[backend]
    base = torch.load(root / "model" / "golden.pt", weights_only=True)
    golden = fuzz_dir / "structure.pt"
    torch.save(data.draw(broken_goldens(base)), golden)
    check = ["--check"] if data.draw(st.booleans()) else []
    args = [binary(root), "--golden", golden, "--iters", "1", "--warmup", "0", *check]
    one_error(launch(args, timeout=60), codes=(1, 2))


# --------------------------------------------------------------- AOTInductor: the unpacked package


def unpacked(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.iterdir())


def test_aoti_leaves_no_temporary_directories(aoti, tmp_path):
    """The loader unpacks into $TMPDIR; the runner owns that directory: nothing is left by a run, a failed load,
    and a killed run's directory is removed by the next run (never one that is still in use)."""
    exe = binary(aoti)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}

    proc = launch([exe, "--iters", "2", "--warmup", "0"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert unpacked(tmpdir) == []

    # A failed load after unpacking: a package whose shared object is not one (with a matching checksum).
    bad = tmp_path / "bad" / "model.pt2"
    bad.parent.mkdir()
    with zipfile.ZipFile(artifact(aoti)) as source, zipfile.ZipFile(bad, "w") as target:
        for info in source.infolist():
            target.writestr(info, b"not an ELF file" if info.filename.endswith(".so") else source.read(info))
    bad.with_name("model.pt2.sha256").write_text(f"{hashlib.sha256(bad.read_bytes()).hexdigest()}  model.pt2\n")
    line = one_error(launch([exe, "--model", bad, "--iters", "1"], env=env))
    assert line.startswith(f"error: cannot load {bad}: "), line
    assert unpacked(tmpdir) == []

    # Killed while running: its directory stays (nothing runs at SIGKILL) until the next run removes it, and a
    # run meanwhile leaves alone the directory of one that is still running.
    def start() -> subprocess.Popen:
        return subprocess.Popen([exe, "--iters", "100000000", "--warmup", "0"], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_loaded(before: set[str]) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for name in set(unpacked(tmpdir)) - before:
                if any(p.suffix == ".so" for p in (tmpdir / name).rglob("*.so")):
                    return name
            time.sleep(0.1)
        pytest.fail(f"the binary never unpacked its package into {tmpdir}: {unpacked(tmpdir)}")

    killed = start()
    killed_dir = wait_loaded(set())
    assert killed_dir.startswith("scaffold-aoti-")
    killed.kill()
    killed.wait()
    assert unpacked(tmpdir) == [killed_dir]

    running = start()
    try:
        running_dir = wait_loaded({killed_dir})
        proc = launch([exe, "--iters", "1", "--warmup", "0"], env=env)
        assert proc.returncode == 0, proc.stderr
        assert unpacked(tmpdir) == [running_dir]  # the killed run's is gone, the running one's is kept
    finally:
        running.terminate()
        running.wait()
    proc = launch([exe, "--iters", "1", "--warmup", "0"], env=env)
    assert proc.returncode == 0 and unpacked(tmpdir) == []


def test_aoti_package_cannot_write_outside_its_directory(aoti, tmp_path):
    """A package is unpacked by the runner: a file named ../../x (zip slip) is refused, even with --no-verify."""
    tmpdir = tmp_path / "deep" / "tmp"
    tmpdir.mkdir(parents=True)
    package = tmp_path / "slip.pt2"
    with zipfile.ZipFile(artifact(aoti)) as source, zipfile.ZipFile(package, "w") as target:
        prefix = source.namelist()[0].split("/")[0]
        for info in source.infolist():
            target.writestr(info, source.read(info))
        target.writestr(f"{prefix}/../../../escaped.txt", b"outside")
    line = one_error(launch([binary(aoti), "--model", package, "--no-verify", "--iters", "1"],
                            env={"TMPDIR": str(tmpdir)}))
    assert line == f"error: cannot load {package}: the package holds a file whose name leads outside it", line
    assert not list(tmp_path.rglob("escaped.txt")) and unpacked(tmpdir) == []

