"""`scaffold build DIR --docker` for real, offline: the generated Dockerfile builds with Podman from a Debian base
image made here with debootstrap (no image registry is reachable), its parity check passes in a container, and
the container cannot write outside its own file system.

Skipped, with the reason, where no engine or no debootstrap is installed (`bash .ci/setup-docker` installs them).
The project is exported with the CPU torch 2.13 of .venv-cpu, whose libtorch the image builds against
(`--libtorch python`): the main venv's torch is a CUDA build whose CUDA libraries live in other pip packages.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, run

CPU_PYTHON = REPO / ".venv-cpu" / "bin" / "python"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"  # what the Dockerfile's FROM names


def apt_mirror() -> str:
    """This machine's Debian mirror, from its apt sources (deb822 or one-line format)."""
    texts = [p.read_text(errors="replace") for p in [Path("/etc/apt/sources.list"),
                                                     *Path("/etc/apt/sources.list.d").glob("*.sources"),
                                                     *Path("/etc/apt/sources.list.d").glob("*.list")] if p.is_file()]
    for text in texts:
        m = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.MULTILINE) or \
            re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+/debian)/?\s+bookworm\b", text, re.MULTILINE)
        if m:
            return m.group(1)
    return "http://deb.debian.org/debian"


@pytest.fixture(scope="session")
def podman(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Podman with its storage and settings under this session's own directory, and the base image imported."""
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: run `bash .ci/setup-docker`")
    if not CPU_PYTHON.exists():
        pytest.skip(f"{CPU_PYTHON} is missing: run `bash .ci/setup --tests`")
    home = tmp_path_factory.mktemp("podman")
    # runc: crun refuses this machine's hybrid cgroups; ulimits within the machine's own limits.
    (home / "containers.conf").write_text('[containers]\ndefault_ulimits = ["nofile=20000:20000", '
                                          '"nproc=32768:32768"]\n[engine]\nruntime = "runc"\n')
    (home / "storage.conf").write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{home}/storage"\n'
                                       f'runroot = "{home}/run"\n')
    env = {"CONTAINERS_CONF": str(home / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"),
           "SCAFFOLD_CONTAINER_ENGINE": "podman", "SCAFFOLD_DOCKER_BUILD_ARGS": "--pull=never"}
    full = {**os.environ, **env}
    start = time.monotonic()
    rootfs = home / "rootfs"
    proc = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), apt_mirror()],
                          capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        pytest.skip(f"debootstrap could not make a base image here: {proc.stderr.strip().splitlines()[-1:]}")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["podman", "import", "-", BASE_IMAGE], stdin=tar.stdout, env=full,
                              capture_output=True, text=True, timeout=600, check=False)
    tar.wait()
    if imported.returncode != 0:
        pytest.skip(f"podman cannot run here: {imported.stderr.strip().splitlines()[-1:]}")
    shutil.rmtree(rootfs, ignore_errors=True)
    print(f"\nbase image {BASE_IMAGE} from debootstrap in {time.monotonic() - start:.1f} s")
    yield env
    # The images take about 2 GB; pytest keeps its last three session directories.
    # Only this session's storage: `podman system reset` would also clear the machine's podman networks.
    for cmd in (["podman", "rm", "--all", "--force"], ["podman", "rmi", "--all", "--force"]):
        subprocess.run(cmd, env=full, capture_output=True, timeout=300, check=False)
    subprocess.run(["umount", "--recursive", "--lazy", str(home / "storage" / "overlay")], capture_output=True,
                   timeout=60, check=False)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def image(podman, tmp_path_factory) -> tuple[str, str]:
    """A small project exported with torch 2.13 (CPU), built into an image and parity-checked by scaffold."""
    root = tmp_path_factory.mktemp("docker") / "dk-app"
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", **podman}
    run([CPU_PYTHON, "-m", "generator", "new", "dk-app", "--model", "examples.models.mlp:make_mlp", "--docker",
         "--output", root], cwd=REPO, env=env)
    start = time.monotonic()
    proc = run([CPU_PYTHON, "-m", "generator", "build", root, "--docker", "--libtorch", "python"], cwd=REPO,
               env=env, timeout=1800)
    print(f"\nimage built and checked in {time.monotonic() - start:.1f} s: {proc.stdout.strip()}")
    return "dk-app", proc.stdout


@pytest.mark.e2e
def test_image_builds_offline_and_passes_parity(image, podman):
    tag, out = image
    m = re.search(r"built and checked image (\S+) \(([0-9]+) MB\)", out)
    assert m and m.group(1) == tag, out
    assert len(out.strip().splitlines()) == 1, out  # the engine's build log went to stderr
    assert 100 < int(m.group(2)) < 2000  # libtorch_cpu dominates: ~430 MB
    env = {**os.environ, **podman}
    # The image's own entry point is the parity check, as a non-root user.
    proc = run(["podman", "run", "--rm", tag], env=env)
    assert "parity: OK" in proc.stdout
    uid = run(["podman", "run", "--rm", "--entrypoint", "/usr/bin/id", tag, "-u"], env=env).stdout.strip()
    assert uid == "10001"
    # The runtime component only: the binary, its libraries and the model; no headers or CMake package.
    listing = run(["podman", "run", "--rm", "--entrypoint", "/bin/ls", tag, "/opt/dk-app", "/opt/dk-app/lib"],
                  env=env).stdout
    assert "bin" in listing and "share" in listing and "include" not in listing and "cmake" not in listing, listing


@pytest.mark.e2e
def test_container_cannot_write_outside_its_file_system(image, podman, tmp_path):
    tag, _ = image
    env = {**os.environ, **podman}
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "data.txt").write_text("host\n")
    script = ("echo container > /data/data.txt; echo a > /data/new.txt; echo b > /etc/passwd; "
              "echo c > /opt/dk-app/bin/dk-app; echo d > /tmp/inside.txt && echo tmp-ok")
    proc = run(["podman", "run", "--rm", "-v", f"{shared}:/data:ro", "--entrypoint", "/bin/sh", tag, "-c", script],
               env=env, check=False)
    assert "tmp-ok" in proc.stdout  # its own /tmp is writable...
    assert proc.stderr.count("Read-only file system") == 2, proc.stderr  # ...the host's directory is not
    assert proc.stderr.count("Permission denied") == 2, proc.stderr  # and a non-root user owns nothing else
    assert (shared / "data.txt").read_text() == "host\n" and sorted(p.name for p in shared.iterdir()) == ["data.txt"]
    assert not Path("/tmp/inside.txt").exists()


def test_no_engine_is_one_line(monkeypatch):
    from generator import docker
    from generator.errors import ScaffoldError

    monkeypatch.setenv(docker.ENGINE_ENV, "no-such-engine")
    with pytest.raises(ScaffoldError, match="is not an executable on PATH: install Docker .* or Podman"):
        docker.require_engine()


def test_libtorch_without_docker_and_bad_libtorch(tmp_path):
    from generator import docker
    from generator.errors import ScaffoldError

    with pytest.raises(ScaffoldError, match="no libtorch there"):
        docker.find_libtorch(str(tmp_path))
    assert docker.libtorch_archive("2.7.1") == "libtorch-cxx11-abi-shared-with-deps"
    assert docker.libtorch_archive("2.14.1") == "libtorch-shared-with-deps"
