"""How long `scaffold new` takes to say no: the wall time of one `error:` line, as a user sees it.

    .venv/bin/python benchmarks/failfast.py [--runs 3]

Each case runs the console script (a fresh process: Python start-up and imports included) --runs times and
prints the median and the worst. Goals (issue 14): a spec error, a bad project name and an existing output
directory in < 1.5 s; an unknown torchvision model name in < 3 s. It prints, it does not assert: a loaded
machine is slower, and the figures say by how much.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCAFFOLD = Path(sys.executable).parent / "scaffold"


def cases(tmp: Path) -> list[tuple[str, float, list[str]]]:
    """(what, goal in seconds, arguments to `scaffold`)."""
    bad_spec = tmp / "bad.toml"
    bad_spec.write_text('[project]\nname = "app"\n[model]\nsource = "resnet18"\nmethd = "trace"\n'
                        '[runtime]\nwarmup = "ten"\n')
    existing = tmp / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    out = str(tmp / "out")
    return [
        ("spec error (2 in one file)", 1.5, ["new", "--spec", str(bad_spec), "--output", out]),
        ("bad project name", 1.5, ["new", "1app", "--model", "resnet18", "--output", out]),
        ("existing output", 1.5, ["new", "app", "--model", "resnet18", "--output", str(existing)]),
        ("unknown torchvision name", 3.0, ["new", "app", "--model", "resnt18", "--output", out]),
        ("missing module", 1.5, ["new", "app", "--model", "no_such_pkg.nets:Net", "--output", out]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    command = [str(SCAFFOLD)] if SCAFFOLD.is_file() else [sys.executable, "-m", "generator"]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    tmp = Path(tempfile.mkdtemp(prefix="scaffold-failfast-"))
    try:
        print(f"{'case':<28} {'median':>8} {'worst':>8} {'goal':>6}  error line")
        for what, goal, argv in cases(tmp):
            times, line = [], ""
            for _ in range(args.runs):
                start = time.perf_counter()
                proc = subprocess.run([*command, *argv], capture_output=True, text=True, env=env, cwd=REPO,
                                      check=False)
                times.append(time.perf_counter() - start)
                line = next((ln for ln in proc.stderr.splitlines() if ln.startswith("error:")), "(no error line!)")
                if proc.returncode == 0:
                    line = "(it succeeded!)"
            median, worst = statistics.median(times), max(times)
            verdict = "ok" if median < goal else "SLOW"
            print(f"{what:<28} {median:7.2f}s {worst:7.2f}s {goal:5.1f}s  {verdict}  {line[:90]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"({args.runs} runs each; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
