"""`scaffold bench`: Python eager, Python with the exported artifact, and the built C++ binary, side by side.

One process tree, interleaved rounds (eager, artifact, C++, eager, ...), the same inputs and thread count for
all, so a noisy machine shifts every variant alike and the ratios stay honest. With `--peers`, the runtimes a
user would pick instead join the same rounds: ONNX Runtime (fp32) and OpenVINO (f32 and bf16), each when its
package is installed (`pip install 'scaffold[peers]'`).
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from generator.build import Project
from generator.errors import ScaffoldError
from generator.export.common import CallPlan, call, call_plan, one_line, quiet
from generator.toolchain import run_process


@dataclass
class Variant:
    name: str
    p50s: list[float] = field(default_factory=list)  # one per round, ms
    p90s: list[float] = field(default_factory=list)
    export_s: float | None = None  # peers: seconds to export/convert and compile the model for that runtime
    max_abs_diff: float | None = None  # peers: largest |output - eager| on the golden inputs

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


def _bound(model: Callable, plan: CallPlan | None) -> Callable:
    """model called with the flat tensors, or with forward's structured arguments built from them."""
    if plan is None:
        return model

    def structured(*flat: torch.Tensor) -> object:
        args, kwargs = plan.build(list(flat))
        return model(*args, **kwargs)

    return structured


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


PEER_INSTALL = "pip install 'scaffold[peers]'"


@dataclass
class Peer:
    """Another runtime measured beside scaffold's: a callable on the golden inputs, returning numpy arrays."""

    variant: Variant
    run: Callable[[], list]


def _max_abs(expected: list[torch.Tensor], actual: list) -> float:
    import numpy as np

    worst = 0.0
    for e, a in zip(expected, actual, strict=False):
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        e = e.detach().to(torch.float64).reshape(-1).numpy()
        if a.shape == e.shape and a.size:
            worst = max(worst, float(np.abs(a - e).max()))
    return worst


def make_peers(model: torch.nn.Module, inputs: list[torch.Tensor], eager_out: list[torch.Tensor], threads: int,
               workdir: Path, notes: list[str]) -> list[Peer]:
    """ONNX Runtime (fp32) and OpenVINO (f32, bf16), each exported from the eager model now and timed for it.

    A missing package or a model a peer cannot take is a note, not an error: the bench goes on without it."""
    import importlib.util

    peers: list[Peer] = []
    feeds = [t.numpy() for t in inputs]
    names = [f"input_{k}" for k in range(len(inputs))]
    onnx_path = workdir / "model.onnx"
    onnx_ok = False
    if importlib.util.find_spec("onnxruntime") is None:
        notes.append(f"ONNX Runtime: not installed ({PEER_INSTALL}, or pip install onnxruntime onnx onnxscript)")
    else:
        start = time.perf_counter()
        try:
            import onnxruntime as ort

            # torch.onnx prints its progress to stdout, which would break `--json`.
            with quiet(), contextlib.redirect_stdout(io.StringIO()):
                torch.onnx.export(model, tuple(inputs), str(onnx_path), input_names=names, dynamo=True,
                                  external_data=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
            onnx_ok = True
            feed = dict(zip([i.name for i in session.get_inputs()], feeds, strict=True))
            variant = Variant("ONNX Runtime fp32", export_s=time.perf_counter() - start)
            peers.append(Peer(variant, lambda: session.run(None, feed)))
        except Exception as e:
            notes.append(f"ONNX Runtime: could not export or load the model ({one_line(e)[:200]})")
    if importlib.util.find_spec("openvino") is None:
        notes.append(f"OpenVINO: not installed ({PEER_INSTALL}, or pip install openvino)")
    else:
        try:
            import openvino as ov

            core = ov.Core()
            for hint, label in (("f32", "OpenVINO f32"), ("bf16", "OpenVINO bf16")):
                start = time.perf_counter()
                with quiet():
                    # From the ONNX file when there is one (the same graph ONNX Runtime runs), else from PyTorch.
                    ov_model = (core.read_model(str(onnx_path)) if onnx_ok else
                                ov.convert_model(model, example_input=tuple(inputs)))
                compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                "INFERENCE_PRECISION_HINT": hint,
                                                                "PERFORMANCE_HINT": "LATENCY"})
                request = compiled.create_infer_request()
                variant = Variant(label, export_s=time.perf_counter() - start)

                def run_ov(request: object = request) -> list:
                    result = request.infer(feeds)  # type: ignore[attr-defined]
                    return [result[o] for o in request.model_outputs]  # type: ignore[attr-defined]

                peers.append(Peer(variant, run_ov))
        except Exception as e:
            notes.append(f"OpenVINO: could not convert or compile the model ({one_line(e)[:200]})")
    for peer in list(peers):
        try:
            peer.variant.max_abs_diff = _max_abs(eager_out, peer.run())
        except Exception as e:
            notes.append(f"{peer.variant.name}: failed on the golden inputs ({one_line(e)[:200]})")
            peers.remove(peer)
    return peers


def bench(project: Project, *, rounds: int = 5, iters: int = 20, warmup: int = 5, threads: int = 0,
          peers: bool = False, progress: Callable[[str], None] = lambda _m: None) -> dict:
    """Measure every variant in interleaved rounds; return p50/p90 (median over rounds) and ratios to eager."""
    from generator.models import apply_config, resolve
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
    resolved = resolve(spec.model.source, weights=spec.model.weights, weights_strict=spec.model.weights_strict)
    apply_config(resolved, spec.model.config)  # [model.config] (use_cache = false): eager does what was exported
    # Structured inputs (images[0], batch['ids']): eager, and a scripted artifact that kept them, take forward's
    # arguments built from the flat golden tensors; traced and AOTI artifacts take the flat tensors.
    plan = call_plan(spec.inputs, resolved.argument_names())
    eager_plan = None if plan.flat else plan
    artifact_plan = eager_plan if project.manifest.get("arguments") else None
    eager_model = _bound(resolved.module, eager_plan)
    artifact_model = _bound(load_artifact(project), artifact_plan)
    backend = project.manifest["backend"]
    eager = Variant("Python eager (inference_mode)")
    precision = project.manifest.get("precision", {}).get("precision", "fp32")
    label = backend if precision == "fp32" else f"{backend} {precision}"
    exported = Variant(f"Python {label} artifact")
    native = Variant(f"C++ {label} binary")
    first_calls: list[float] = []
    notes: list[str] = []
    peer_list: list[Peer] = []
    workdir = tempfile.TemporaryDirectory(prefix="scaffold-bench-")
    if peers and eager_plan is not None:
        notes.append("--peers: ONNX Runtime and OpenVINO are compared on models with plain tensor inputs only")
    elif peers:
        progress("exporting for ONNX Runtime and OpenVINO")
        with torch.inference_mode():
            eager_out = [t for t in _tensors(call(eager_model, inputs, "the model's forward"))]
        with torch.no_grad():
            peer_list = make_peers(eager_model, inputs, eager_out, threads, Path(workdir.name), notes)

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
        for peer in peer_list:
            samples = time_python(peer.run, warmup, iters)
            peer.variant.p50s.append(percentile(samples, 50))
            peer.variant.p90s.append(percentile(samples, 90))
    workdir.cleanup()

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
        "variants": [{"name": v.name, "p50_ms": v.p50, "p90_ms": v.p90, "ratio_p50": v.p50 / base,
                      **({"export_s": v.export_s, "max_abs_diff": v.max_abs_diff} if v.export_s is not None else {})}
                     for v in (eager, exported, native, *(p.variant for p in peer_list))],
        "precision": precision,
        **({"peer_notes": notes} if peers else {}),
    }


def _tensors(value: object) -> list[torch.Tensor]:
    from generator.export.common import flatten

    return [t for _, t in flatten(value)]


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
