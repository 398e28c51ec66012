"""How much of a build's wall time the audit costs: the demo built with the audit on and with it off, in one run.

    python bench/bench_audit_wait.py [--images 96] [--threads 2] [--repeats 2] [--recipe recipes/demo.yaml]

Both builds use the same cached model (the recipe's `model.train`: trained once if the cache lacks it, before
any timing), the same images (`audit.action: flag`, so no flagged image is regenerated: the same jobs, seeds
and bytes either way), the same `--threads` and a fresh output folder each; the recipe's `eval:` block is
left out, and the class counts are scaled to `--images`. One untimed build with the audit on comes first: it
fits and calibrates the audit index into the cache (`audit-index`, a one-time cost a user's second build does not
pay either), so the timed builds load it. Then `--repeats` rounds of (audit off, audit on), alternating, each in a
fresh `synthgen` process. Printed (medians over the rounds):

- build wall with the audit on and off, and the marginal wall share of the audit, (on - off) / on (the issue's
  target: <= 10% on 2 cores);
- the CPU seconds of each build process (user + system), and their difference per image: the audit's CPU per image
  in a build (the check on the finishing thread, the index load, the report and the final privacy-metrics pass);
- the denoiser's wait on the finishing thread (decode, encode, audit) as the build logs it ("generation:
  denoiser waited X s of Y s ...") when it does, with its share of the generation's wall time;
- audited images/s: images checked per second of the audit-on build, and per second of its marginal wall.

A shared machine moves absolute times by 2x from one minute to the next: read the ratios of one run, and for the
definitive numbers run on a quiet machine (e.g. `--images 768 --repeats 3 --threads 2`). The model cache is
$SYNTHGEN_CACHE (default ~/.cache/synthgen), so a demo model trained before is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
WAIT_LINE = re.compile(r"denoiser waited ([0-9.]+) s of ([0-9.]+) s")


@dataclass
class Build:
    """One timed `synthgen build`."""

    audit: bool
    wall: float
    cpu: float  # user + system seconds of the build process (and its children)
    images: int  # samples published
    audited: int  # candidates checked (audit on)
    waited: float | None  # the denoiser's wait on the finishing thread, when the build reports it
    generation: float | None  # the generation's wall time that wait is a part of


def bench_recipe(recipe: Path, images: int, audit: bool, out: Path) -> dict:
    """The recipe, scaled to `images`, without `eval:`, audit on (flag only) or off, writing to `out`."""
    data = yaml.safe_load(recipe.read_text())
    data.pop("eval", None)
    classes = data["classes"]
    per_class, extra = divmod(images, len(classes))
    for i, config in enumerate(classes.values()):
        config["count"] = per_class + (i < extra)
    data.setdefault("audit", {})
    data["audit"]["enabled"] = audit
    if audit:
        data["audit"]["action"] = "flag"  # same images both ways: nothing is regenerated
    data.setdefault("output", {})["dir"] = str(out)
    model = data.get("model", {}).get("train")
    if model and isinstance(model.get("data"), dict) and "path" in model["data"]:  # relative to the recipe
        model["data"]["path"] = str((recipe.parent / model["data"]["path"]).resolve())
    return data


def find_key(value: object, key: str) -> object:
    """The first value of `key` anywhere in a JSON document, or None."""
    if isinstance(value, dict):
        if key in value:
            return value[key]
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            found = find_key(item, key)
            if found is not None:
                return found
    return None


def run_build(recipe: Path, images: int, audit: bool, threads: int, work: Path, name: str) -> Build:
    out = work / name
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(bench_recipe(recipe, images, audit, out), sort_keys=False))
    command = [sys.executable, "-m", "synthgen.cli", "--threads", str(threads), "build", str(path), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNTHGEN_PROGRESS_EVERY": "3600"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"build failed ({name}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    manifest = json.loads((out / "manifest.json").read_text())
    summary_path = out / "audit" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    waited = generation = None
    match = WAIT_LINE.search(done.stdout + done.stderr)
    if match:
        waited, generation = float(match.group(1)), float(match.group(2))
    else:  # the same number kept in the manifest, where the build records it
        value, total = find_key(manifest, "denoiser_waited_s"), find_key(manifest, "generation_s")
        if isinstance(value, (int, float)) and isinstance(total, (int, float)):
            waited, generation = float(value), float(total)
    published = manifest.get("totals", {}).get("num_samples", images)
    return Build(audit, wall, cpu, int(published), int(summary.get("n_candidates", 0)), waited, generation)


def median(values: list[float]) -> float:
    return float(np.median(values))


def report(builds: list[Build], images: int, threads: int) -> None:
    on = [b for b in builds if b.audit]
    off = [b for b in builds if not b.audit]
    wall_on, wall_off = median([b.wall for b in on]), median([b.wall for b in off])
    cpu_on, cpu_off = median([b.cpu for b in on]), median([b.cpu for b in off])
    audited = on[0].audited or images
    rounds = ", ".join(f"{a.wall:.1f}/{b.wall:.1f}" for a, b in zip(off, on, strict=False))
    print(f"\n{images} images, --threads {threads}, {len(on)} round(s) (medians; each round: off, then on)")
    print(f"{'':<28}{'audit off':>12}{'audit on':>12}")
    print(f"{'build wall s':<28}{wall_off:>12.1f}{wall_on:>12.1f}   (rounds, off/on: {rounds})")
    print(f"{'build CPU s':<28}{cpu_off:>12.1f}{cpu_on:>12.1f}")
    for label, group in (("audit off", off), ("audit on", on)):
        waits = [(b.waited, b.generation) for b in group if b.waited is not None and b.generation]
        if waits:
            waited, total = median([w for w, _ in waits]), median([t for _, t in waits])
            print(f"denoiser waited ({label}): {waited:.1f} s of {total:.1f} s generation = {waited / total:.1%}")
        else:
            print(f"denoiser waited ({label}): not reported by this build")
    share = (wall_on - wall_off) / wall_on
    per_round = ", ".join(f"{(b.wall - a.wall) / b.wall:.1%}" for a, b in zip(off, on, strict=False))
    print(f"marginal wall share of the audit (on - off) / on: {share:.1%} (rounds: {per_round}; target <= 10%)")
    extra_cpu = cpu_on - cpu_off
    print(
        f"audit CPU per image (on - off): {1000 * extra_cpu / audited:.0f} ms ({extra_cpu / cpu_on:.1%} of the build)"
    )
    marginal = wall_on - wall_off
    rate = f"{audited / marginal:.1f}" if marginal > 0 else "n/a"
    print(f"audited images/s: {audited / wall_on:.2f} over the audit-on build, {rate} over its marginal wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.yaml")
    parser.add_argument("--images", type=int, default=96, help="images per build (the recipe's classes, scaled)")
    parser.add_argument("--threads", type=int, default=2, help="synthgen --threads of every build")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (audit off, audit on)")
    args = parser.parse_args()
    recipe = args.recipe.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-audit-wait-") as folder:
        work = Path(folder)
        started = time.perf_counter()
        prime = run_build(recipe, min(args.images, 6), True, args.threads, work, "prime")  # model + audit index
        primed = time.perf_counter() - started
        print(f"prime build (model and audit index into the cache): {primed:.1f} s, {prime.images} images")
        builds = []
        for repeat in range(args.repeats):
            for audit in (False, True):
                name = f"r{repeat}-{'on' if audit else 'off'}"
                build = run_build(recipe, args.images, audit, args.threads, work, name)
                builds.append(build)
                checked = f", {build.audited} audited" if audit else ""
                print(
                    f"round {repeat + 1}: audit {'on ' if audit else 'off'} {build.wall:6.1f} s wall, "
                    f"{build.cpu:6.1f} s CPU, {build.images} images{checked}",
                    flush=True,
                )
        report(builds, args.images, args.threads)


if __name__ == "__main__":
    main()
