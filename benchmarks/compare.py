"""Side-by-side latency of Python eager, the exported artifact in Python, and the generated C++ binary.

For each case: time `scaffold new` and the first `scaffold build` (wall clock), then `scaffold bench --json`
(interleaved rounds in one process tree). Prints ratios to Python eager measured in the same run; this
machine is noisy, so only ratios from one run are compared.

    .venv/bin/python benchmarks/compare.py                      # resnet18 + a tiny MLP, both backends
    .venv/bin/python benchmarks/compare.py --cases mlp-ts --rounds 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "resnet18-ts": ["--model", "resnet18"],
    "resnet18-ts-nofreeze": ["--model", "resnet18", "--no-freeze"],
    "resnet18-aoti": ["--model", "resnet18", "--backend", "aoti"],
    "mlp-ts": ["--model", "examples.models.mlp:make_mlp"],
    "mlp-aoti": ["--model", "examples.models.mlp:make_mlp", "--backend", "aoti"],
}


def scaffold(*args: object) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "generator", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"scaffold {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["resnet18-ts", "resnet18-aoti", "mlp-ts", "mlp-aoti"],
                        choices=sorted(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated projects here")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="scaffold-bench-"))
    rows = []
    for case in args.cases:
        root = workdir / case
        new_s = scaffold("new", case, "--output", root, "--force", *CASES[case])
        build_s = scaffold("build", root)
        proc = subprocess.run([sys.executable, "-m", "generator", "bench", str(root), "--json",
                               "--rounds", str(args.rounds), "--iters", str(args.iters),
                               "--threads", str(args.threads)],
                              cwd=REPO, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"bench {case} failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        eager, artifact, native = result["variants"]
        rows.append((case, new_s, build_s, eager["p50_ms"], artifact["ratio_p50"], native["ratio_p50"],
                     native["p50_ms"], result["threads"]))
        print(f"{case}: done", file=sys.stderr)

    print(f"# {dt.date.today()} on {platform.machine()} {platform.processor() or ''}, "
          f"{rows[0][7] if rows else '?'} thread(s); ratios are p50 / Python eager p50 in the same run")
    print("| case | new (s) | first build (s) | eager p50 (ms) | Python artifact | C++ binary | C++ p50 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for case, new_s, build_s, eager_ms, art, cpp, cpp_ms, _ in rows:
        print(f"| {case} | {new_s:.1f} | {build_s:.1f} | {eager_ms:.3f} | {art:.2f} | {cpp:.2f} | {cpp_ms:.3f} |")


if __name__ == "__main__":
    main()
