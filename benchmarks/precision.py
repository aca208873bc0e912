"""fp32 vs bf16 vs int8 AOTI C++ binaries beside OpenVINO and ONNX Runtime, with accuracy against fp32 eager.

For each model: `scaffold new --backend aoti --precision P` and `scaffold build` for P in fp32, bf16, int8; then
interleaved rounds (each C++ binary through its --json timing, OpenVINO bf16/f32 and ONNX Runtime in this
process, same thread count); then top-1 agreement / error against fp32 eager over many random inputs (in Python,
on the same .pt2 artifacts the binaries load). Prints; asserts nothing (a goal script, not a test).

    .venv/bin/python benchmarks/precision.py                        # resnet18, a BERT-base encoder, the tiny MLP
    .venv/bin/python benchmarks/precision.py --models resnet18 --samples 1000 --workdir /tmp/prec

Goal (issue 13): resnet18 batch 1, 2 threads: bf16 binary p50 <= OpenVINO bf16 p50, top-1 agreement >= 99%;
int8 binary p50 <= 0.8x bf16's, top-1 >= 98%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {
    "resnet18": ["--model", "resnet18"],
    # BERT-base sized (12 layers, 768 hidden, 12 heads, 3072 FFN), random weights from a config, sequence 128.
    "bert": ["--model", "benchmarks.precision:make_bert", "--input", "input_ids=1x128:int64:0..30522"],
    "mlp": ["--model", "examples.models.mlp:make_mlp"],
}
PRECISIONS = ("fp32", "bf16", "int8")


def make_bert() -> nn.Module:
    """transformers' BertModel from a default BertConfig (BERT-base), or an nn.TransformerEncoder of that size."""
    torch.manual_seed(0)
    try:
        from transformers import BertConfig, BertModel

        return BertModel(BertConfig(use_cache=False)).eval()
    except ImportError:
        return Encoder().eval()


class Encoder(nn.Module):
    """BERT-base sized without transformers: embeddings and 12 post-norm encoder layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30522, 768)
        layer = nn.TransformerEncoderLayer(768, 12, 3072, batch_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(input_ids))


def scaffold(*args: object) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "generator", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, check=False)
    return time.perf_counter() - start, proc


def last_line(proc: subprocess.CompletedProcess) -> str:
    text = (proc.stderr.strip() or proc.stdout.strip() or f"exit {proc.returncode}").splitlines()
    return text[-1] if text else ""


def accuracy(eager, artifacts: dict, spec, samples: int) -> dict:  # noqa: ANN001
    """Per artifact: top-1 agreement with eager (2-D outputs), worst relative error and lowest cosine of the first
    floating output, over `samples` random inputs (eager runs once per input for all artifacts)."""
    from generator.export.common import errors, flatten, make_inputs

    stats = {name: {"samples": samples, "agree": 0, "rows": 0, "max_rel": 0.0, "min_cosine": 1.0}
             for name in artifacts}
    with torch.inference_mode():
        for k in range(samples):
            inputs = make_inputs(spec.inputs, seed=10_000 + k)
            e = flatten(eager(*inputs))
            for name, artifact in artifacts.items():
                a = flatten(artifact(*inputs))
                errs = errors(e, a)
                out = next(iter(errs))
                st = stats[name]
                st["max_rel"] = max(st["max_rel"], errs[out]["max_rel"])
                st["min_cosine"] = min(st["min_cosine"], errs[out]["cosine"])
                index = [n for n, _ in e].index(out)  # by position: a peer names its outputs its own way
                et, at = e[index][1], a[index][1]
                if et.dim() == 2 and et.shape[1] > 1:
                    st["agree"] += int((et.argmax(1) == at.argmax(1)).sum())
                    st["rows"] += et.shape[0]
    for st in stats.values():
        agree = st.pop("agree")
        st["top1"] = agree / st["rows"] if st["rows"] else None
        st.pop("rows")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=1000, help="random inputs for top-1 agreement (resnet18, "
                        "mlp); the BERT encoder uses a tenth")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated projects here (reused)")
    args = parser.parse_args()

    from generator.bench import make_peers, percentile, time_python
    from generator.export.common import flatten
    from generator.models import resolve
    from generator.spec import read_toml, spec_from_mapping

    torch.set_num_threads(args.threads)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scaffold-precision-"))
    print(f"projects in {workdir}; torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds x "
          f"{args.iters} iters", flush=True)
    summary = {}
    for model in args.models:
        print(f"\n== {model}", flush=True)
        binaries: dict[str, Path] = {}
        roots: dict[str, Path] = {}
        for precision in PRECISIONS:
            root = workdir / f"{model}-{precision}"
            binary = root / "build" / root.name
            if not binary.exists():
                new_s, proc = scaffold("new", root.name, "--output", root, "--force", "--backend", "aoti",
                                       "--precision", precision, *MODELS[model])
                if proc.returncode != 0:
                    print(f"  {precision}: scaffold new failed: {last_line(proc)}", flush=True)
                    continue
                for line in proc.stderr.splitlines():
                    if line.startswith("warning:"):
                        print(f"  {precision}: {line}", flush=True)
                build_s, proc = scaffold("build", root)
                if proc.returncode != 0:
                    print(f"  {precision}: scaffold build failed: {last_line(proc)}", flush=True)
                    continue
                print(f"  {precision}: new {new_s:.1f} s, build {build_s:.1f} s", flush=True)
            binaries[precision] = binary
            roots[precision] = root
        if "fp32" not in roots:
            continue
        spec = spec_from_mapping(read_toml(roots["fp32"] / "scaffold.toml"))
        eager = resolve(spec.model.source).module.eval()
        golden = torch.load(roots["fp32"] / "model" / "golden.pt", weights_only=True)
        inputs = golden["inputs"]
        with torch.inference_mode():
            eager_out = [t for _, t in flatten(eager(*inputs))]
        notes: list[str] = []
        with torch.no_grad():
            peers = make_peers(eager, inputs, eager_out, args.threads, Path(tempfile.mkdtemp()), notes)
        for note in notes:
            print(f"  note: {note}", flush=True)
        p50s: dict[str, list[float]] = {f"C++ aoti {p}": [] for p in binaries}
        p50s.update({peer.variant.name: [] for peer in peers})
        for _ in range(args.rounds):
            for precision, binary in binaries.items():
                proc = subprocess.run([str(binary), "--json", "--threads", str(args.threads), "--warmup", "10",
                                       "--iters", str(args.iters)], capture_output=True, text=True, check=False)
                if proc.returncode == 0:
                    p50s[f"C++ aoti {precision}"].append(json.loads(proc.stdout.strip().splitlines()[-1])["p50_ms"])
            for peer in peers:
                p50s[peer.variant.name].append(percentile(time_python(peer.run, 10, args.iters), 50))
        p50 = {name: statistics.median(v) for name, v in p50s.items() if v}
        samples = args.samples // 10 if model == "bert" else args.samples
        from torch._inductor import aoti_load_package

        print("  p50 ms: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(p50.items(), key=lambda kv: kv[1])),
              flush=True)
        artifacts = {f"C++ aoti {p}": aoti_load_package(str(roots[p] / "model" / "model.pt2"))
                     for p in ("bf16", "int8") if p in roots}
        ov_bf16 = next((p for p in peers if p.variant.name == "OpenVINO bf16"), None)
        if ov_bf16 is not None:
            request = ov_bf16.run.__defaults__[0]  # the infer request bound into make_peers' closure

            def ov_call(*xs, request=request):  # noqa: ANN001, ANN002, ANN202
                result = request.infer([x.numpy() for x in xs])
                outs = [torch.from_numpy(result[o]) for o in request.model_outputs]
                return outs[0] if len(outs) == 1 else tuple(outs)

            artifacts["OpenVINO bf16"] = ov_call
        acc = accuracy(eager, artifacts, spec, samples)
        base = p50.get("C++ aoti fp32")
        print(f"  {'variant':<22} {'p50 ms':>9} {'/ fp32 C++':>10} {'top-1 vs fp32':>14} {'max rel err':>12} "
              f"{'min cosine':>11}")
        for name, value in sorted(p50.items(), key=lambda kv: kv[1]):
            a = acc.get(name, {})
            top1 = f"{a['top1']:.1%}" if a.get("top1") is not None else ""
            print(f"  {name:<22} {value:>9.3f} {value / base if base else float('nan'):>10.2f} {top1:>14} "
                  f"{a.get('max_rel', float('nan')):>12.4g} {a.get('min_cosine', float('nan')):>11.6f}", flush=True)
        if acc:
            print(f"  (accuracy over {samples} random inputs against fp32 eager)")
        summary[model] = {"p50_ms": p50, "accuracy": acc}
        if model == "resnet18" and {"C++ aoti bf16", "C++ aoti int8", "OpenVINO bf16"} <= set(p50):
            bf16, int8, ov = p50["C++ aoti bf16"], p50["C++ aoti int8"], p50["OpenVINO bf16"]
            t_bf16 = acc.get("C++ aoti bf16", {}).get("top1") or 0
            t_int8 = acc.get("C++ aoti int8", {}).get("top1") or 0
            print(f"  goal bf16: p50 {bf16:.3f} <= OpenVINO bf16 {ov:.3f}: {'met' if bf16 <= ov else 'NOT met'}; "
                  f"top-1 {t_bf16:.1%} >= 99%: {'met' if t_bf16 >= 0.99 else 'NOT met'}")
            print(f"  goal int8: p50 {int8:.3f} <= 0.8 x bf16 = {0.8 * bf16:.3f}: "
                  f"{'met' if int8 <= 0.8 * bf16 else 'NOT met'}; top-1 {t_int8:.1%} >= 98%: "
                  f"{'met' if t_int8 >= 0.98 else 'NOT met'}", flush=True)
    print("\n" + json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
