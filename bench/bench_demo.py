"""Demo build timings, side by side in one run: `synthgen --help`, a cold build (trains the model) and a warm
build (model cached), each in a fresh output folder and a fresh model cache.

    python bench/bench_demo.py [--recipe recipes/demo.yaml]

Prints seconds per step and the cold/warm ratio. Runs the real CLI in subprocesses, offline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"))
    args = parser.parse_args()
    synthgen = [sys.executable, "-m", "synthgen.cli"]
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNTHGEN_CACHE": str(Path(work) / "cache")}
        help_s = min(timed([*synthgen, "--help"], env) for _ in range(3))
        cold = timed([*synthgen, "build", args.recipe, "--out", str(Path(work) / "cold")], env)
        warm = timed([*synthgen, "build", args.recipe, "--out", str(Path(work) / "warm")], env)
        resume = timed([*synthgen, "build", args.recipe, "--out", str(Path(work) / "warm")], env)
    print(f"{'step':<44}{'seconds':>10}")
    print(f"{'synthgen --help (best of 3)':<44}{help_s:>10.2f}")
    print(f"{'build, cold (trains the model)':<44}{cold:>10.1f}")
    print(f"{'build, warm (model cached, new folder)':<44}{warm:>10.1f}")
    print(f"{'build, complete folder (nothing to do)':<44}{resume:>10.1f}")
    print(f"cold / warm = {cold / warm:.1f}x")


if __name__ == "__main__":
    main()
