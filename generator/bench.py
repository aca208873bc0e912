"""`scaffold bench`: Python eager, Python with the exported artifact, and the built C++ binary, side by side.

One process tree, interleaved rounds (eager, artifact, C++, eager, ...), the same inputs and thread count for
all, so a noisy machine shifts every variant alike and the ratios stay honest.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from generator.build import Project
from generator.errors import ScaffoldError
from generator.export.common import call, one_line, quiet
from generator.toolchain import run_process


@dataclass
class Variant:
    name: str
    p50s: list[float] = field(default_factory=list)  # one per round, ms
    p90s: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.p50s)

    @property
    def p90(self) -> float:
        return statistics.median(self.p90s)


def percentile(samples: list[float], p: float) -> float:
    """Nearest rank, as the generated C++ computes it."""
    ordered = sorted(samples)
    rank = max(1, int(-(-p * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def time_python(fn: Callable[[], object], warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def load_artifact(project: Project) -> Callable:
    artifact = project.root / "model" / project.manifest["artifact"]
    if project.manifest["backend"] == "aoti":
        from torch._inductor import aoti_load_package

        with quiet():
            return aoti_load_package(str(artifact))
    with quiet():  # torch 2.14: "torch.jit.load is deprecated"
        return torch.jit.load(str(artifact), map_location="cpu").eval()


def load_golden_inputs(path: Path) -> list[torch.Tensor]:
    """golden.pt's example inputs. weights_only: a golden file is data, and unpickling arbitrary objects from
    a file would run code; anything unreadable or of the wrong shape is one line."""
    try:
        golden = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ScaffoldError(f"{path} is missing: regenerate the project (scaffold new ... --force)") from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for a damaged file
        raise ScaffoldError(f"{path} is not a readable golden file ({type(e).__name__}: {one_line(e)[:200]}); "
                            "regenerate the project") from None
    inputs = golden.get("inputs") if isinstance(golden, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ScaffoldError(f"{path}: 'inputs' is not a list of tensors; regenerate the project")
    return inputs


def bench(project: Project, *, rounds: int = 5, iters: int = 20, warmup: int = 5, threads: int = 0,
          progress: Callable[[str], None] = lambda _m: None) -> dict:
    """Measure every variant in interleaved rounds; return p50/p90 (median over rounds) and ratios to eager."""
    from generator.models import resolve
    from generator.spec import anchor_paths, read_toml, spec_from_mapping

    # Paths in scaffold.toml (the weights file) are relative to the project directory.
    spec = spec_from_mapping(anchor_paths(read_toml(project.root / "scaffold.toml"), project.root))
    inputs = load_golden_inputs(project.root / "model" / "golden.pt")
    binary = project.binary()
    if binary is None:
        raise ScaffoldError(f"{project.name} is not built yet: run `scaffold build {project.root}` first")
    threads = threads or _physical_cores()
    torch.set_num_threads(threads)

    progress(f"loading {spec.model.source}")
    # The same trained weights as the artifact (a weights enum may also change the architecture: num_classes).
    eager_model = resolve(spec.model.source, weights=spec.model.weights,
                          weights_strict=spec.model.weights_strict).module
    artifact_model = load_artifact(project)
    backend = project.manifest["backend"]
    eager = Variant("Python eager (inference_mode)")
    exported = Variant(f"Python {backend} artifact")
    native = Variant(f"C++ {backend} binary")
    first_calls: list[float] = []

    def run_python(model: Callable, variant: Variant) -> None:
        with torch.inference_mode():
            call(model, inputs, variant.name)  # one untimed call: one-time work stays out of the samples
            samples = time_python(lambda: model(*inputs), warmup, iters)
        variant.p50s.append(percentile(samples, 50))
        variant.p90s.append(percentile(samples, 90))

    for r in range(rounds):
        progress(f"round {r + 1}/{rounds}")
        run_python(eager_model, eager)
        run_python(artifact_model, exported)
        proc = run_process([str(binary), "--json", "--threads", str(threads), "--warmup", str(warmup),
                            "--iters", str(iters)])
        if proc.returncode != 0:
            detail = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()[-1]
            raise ScaffoldError(f"{binary.name} failed: {detail}")
        try:
            stats = json.loads(proc.stdout.strip().splitlines()[-1])
            float(stats["p50_ms"]), float(stats["p90_ms"]), float(stats["first_call_ms"])
        except (IndexError, ValueError, KeyError, TypeError):
            raise ScaffoldError(f"{binary.name} --json printed no timing object; rebuild it (scaffold build)") from None
        native.p50s.append(stats["p50_ms"])
        native.p90s.append(stats["p90_ms"])
        first_calls.append(stats["first_call_ms"])

    base = eager.p50
    return {
        "project": project.name,
        "backend": backend,
        "threads": threads,
        "rounds": rounds,
        "iters": iters,
        "warmup": warmup,
        "torch": torch.__version__,
        "cpp_first_call_ms": statistics.median(first_calls),
        "variants": [{"name": v.name, "p50_ms": v.p50, "p90_ms": v.p90, "ratio_p50": v.p50 / base}
                     for v in (eager, exported, native)],
    }


def _physical_cores() -> int:
    """The generated binary's default: physical cores this process may use (affinity / threads per core)."""
    import os

    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return logical
    cores = set()
    physical = "0"
    processors = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            processors += 1
        elif key == "physical id":
            physical = value.strip()
        elif key == "core id":
            cores.add((physical, value.strip()))
    if cores and processors > len(cores):
        logical = logical * len(cores) // processors
    return max(1, logical)
