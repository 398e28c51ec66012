"""What cutting sampler steps buys and costs: speed and set quality of a trained model, per (scheduler, steps).

    python bench/bench_samplers.py [--recipe recipes/demo.yaml] [--per-class 64] \
        [--variants ddim:25,ddim:12,dpm-solver++:12,dpm-solver++:8] [--threads 2]

Fewer steps, another solver, feature caching and distillation change the sampling itself, so synthgen never
turns them on for you (docs/performance.md); this bench measures what choosing them in a recipe
(`sampling.scheduler`, `sampling.steps`) does, in one run. Each variant is the recipe with its classes scaled to
`--per-class` images, the audit off (not what is measured here), its `eval:` block kept, and only the sampler
changed; every variant is built in a fresh `synthgen build` process on the same cached model (the recipe's
`model.train`: the first build trains it into the cache if it is missing, which the generation time compared
here does not include). Printed per
variant, with ratios to the first variant (the baseline):

- generation wall time as the build logs it, and images/s of the generation;
- the set's quality from the build's eval (eval/eval.json): TSTR balanced accuracy (mean of the eval's seeds,
  with its 95% CI), label fidelity, FD, KID, precision and recall against the real (training) images.

Quality figures are the eval's (docs/evaluation.md); with the demo they are measured against procedural
phantoms, so read them as "did the images change", and on a real recipe (radiology-real) as utility.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_audit_wait import REPO, find_key  # noqa: E402

GENERATION_LINE = re.compile(r"denoiser waited [0-9.]+ s of ([0-9.]+) s")


@dataclass
class Variant:
    """One sampler setting and what its build measured."""

    scheduler: str
    steps: int
    images: int = 0
    wall: float = 0.0  # the whole build process
    generation: float | None = None  # the generation's wall time, as the build logs it
    quality: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.scheduler}:{self.steps}"


def parse_variants(text: str) -> list[Variant]:
    """Variants from "ddim:25,dpm-solver++:12"; a bad item is a one-line error naming --variants."""
    variants = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        scheduler, _, steps = item.rpartition(":")
        if not scheduler or not steps.isdigit() or int(steps) < 1:
            sys.exit(f"--variants: expected scheduler:steps items (e.g. ddim:25), got {item!r}")
        variants.append(Variant(scheduler, int(steps)))
    if not variants:
        sys.exit("--variants: no variant given")
    return variants


def _resolve_paths(block: Any, base: Path) -> None:
    """Make every `path` of a recipe block absolute, relative to the recipe's folder (the recipe is moved)."""
    if isinstance(block, dict):
        for key, value in block.items():
            if key == "path" and isinstance(value, str):
                block[key] = str((base / value).resolve())
            else:
                _resolve_paths(value, base)
    elif isinstance(block, list):
        for value in block:
            _resolve_paths(value, base)


def variant_recipe(recipe: Path, variant: Variant, per_class: int, out: Path) -> dict[str, Any]:
    """The recipe with `per_class` images per class, the audit off, the sampler of `variant`, writing to `out`."""
    data = yaml.safe_load(recipe.read_text())
    for config in data["classes"].values():
        config["count"] = per_class
    data.setdefault("audit", {})["enabled"] = False
    data.setdefault("sampling", {}).update(scheduler=variant.scheduler, steps=variant.steps)
    data.setdefault("output", {})["dir"] = str(out)
    for block in ("model", "eval"):
        _resolve_paths(data.get(block), recipe.parent)
    return data


def run_variant(recipe: Path, variant: Variant, per_class: int, threads: int, work: Path) -> None:
    """Build `variant` in a fresh process and read its generation time and eval."""
    name = variant.name.replace(":", "-").replace("+", "p")
    out, path = work / name, work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(variant_recipe(recipe, variant, per_class, out), sort_keys=False))
    command = [sys.executable, "-m", "synthgen.cli", "--threads", str(threads), "build", str(path), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SYNTHGEN_PROGRESS_EVERY": "3600"}
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    variant.wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"build failed ({variant.name}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    variant.images = int(manifest.get("totals", {}).get("num_samples", 0))
    match = GENERATION_LINE.search(done.stdout + done.stderr)
    generation = float(match.group(1)) if match else find_key(manifest, "generation_s")
    variant.generation = float(generation) if isinstance(generation, (int, float)) else None
    evaluation = out / "eval" / "eval.json"
    variant.quality = quality(json.loads(evaluation.read_text())) if evaluation.exists() else None


def quality(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The eval figures this bench compares (None where the eval did not compute one)."""
    tstr = (evaluation.get("utility") or {}).get("tstr", {}).get("balanced_accuracy", {})
    fidelity = evaluation.get("label_fidelity") or {}
    return {
        "tstr": tstr.get("mean"),
        "tstr_ci": tstr.get("ci"),
        "label_fidelity": fidelity.get("balanced_agreement") if isinstance(fidelity, dict) else None,
        **{key: evaluation.get(key) for key in ("fd", "kid_mean", "precision", "recall")},
    }


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value is not None and base else "n/a"


def _number(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def report(variants: list[Variant]) -> None:
    base = variants[0]
    base_rate = base.images / base.generation if base.generation else None
    print(
        f"\n{'variant':<18}{'gen s':>8}{'img/s':>8}{'speed':>8}{'TSTR':>8}{'95% CI':>16}{'vs base':>9}"
        f"{'label fid':>10}{'FD':>8}{'KID':>9}{'prec':>7}{'recall':>7}"
    )
    for v in variants:
        rate = v.images / v.generation if v.generation else None
        q = v.quality or {}
        ci = q.get("tstr_ci") or [None, None]
        interval = f"[{_number(ci[0])}, {_number(ci[1])}]"
        base_tstr = (base.quality or {}).get("tstr")
        print(
            f"{v.name:<18}{_number(v.generation, 1):>8}{_number(rate, 2):>8}{_ratio(rate, base_rate):>8}"
            f"{_number(q.get('tstr')):>8}{interval:>16}{_ratio(q.get('tstr'), base_tstr):>9}"
            f"{_number(q.get('label_fidelity')):>10}{_number(q.get('fd'), 2):>8}{_number(q.get('kid_mean'), 4):>9}"
            f"{_number(q.get('precision'), 2):>7}{_number(q.get('recall'), 2):>7}"
        )
    print("speed: generation images/s against the first variant; vs base: TSTR against the first variant's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.yaml")
    parser.add_argument("--per-class", type=int, default=64, help="images of each class per build")
    parser.add_argument("--variants", default="ddim:25,ddim:12,dpm-solver++:12,dpm-solver++:8")
    parser.add_argument("--threads", type=int, default=2, help="synthgen --threads of every build")
    args = parser.parse_args()
    variants = parse_variants(args.variants)
    recipe = args.recipe.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-samplers-") as folder:
        work = Path(folder)
        for variant in variants:
            run_variant(recipe, variant, args.per_class, args.threads, work)
            print(f"{variant.name}: {variant.images} images, build {variant.wall:.1f} s", flush=True)
        report(variants)


if __name__ == "__main__":
    main()
