"""Fault injection: `kill -9` synthgen train / build at random moments, resume, compare with an uninterrupted run.

    python bench/fault_injection.py --runs 20 --target train|build|both [--seed S] [--work DIR] [--keep]

Each target first runs once uninterrupted (the reference: its outputs, its duration, and the write events it
makes: renames, fsyncs, deletions, temp files, torch.save, Parquet and tar appends). Then every run starts the
same command in a fresh folder and SIGKILLs it, alternating two ways:
  time   from outside, at a moment drawn uniformly over the reference's duration, counted from when the CLI
         starts (after Python, torch and pyarrow have loaded: nothing is written before); a run that finishes
         first (the machine got faster) is redone with a draw over its own duration;
  point  from inside (bench/fault_child.py), just before or just after one of its write events, drawn
         uniformly from the reference's, so checkpoint writes, shard writes, markers, the manifest are hit.
It reruns the plain command until it exits 0 and checks: the installed pipeline has the same weights as the
reference (sha256 of every safetensors file, configs, tokenizer, sample grids, the logged losses), the build
has the same samples (every Parquet row and WebDataset member, `created_at` aside), and no temp file is left.
Prints a table, where the kills landed, and `train: N/N resumed runs identical; build: N/N`; exit 1 on a difference.
Runs with SYNTHGEN_THREADS=1 on the CPU (a tiny preset at 32 px, a few steps, checkpoint_every 2, 3 shards).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PROMPTS = {
    "polyp": ["colonoscopy phantom showing a {size} polyp"],
    "normal": ["colonoscopy phantom showing normal mucosa"],
}
TRAIN_RECIPE = {
    "name": "fault-train",
    "model": {
        "train": {
            "preset": "tiny",
            "data": {"type": "demo", "classes": ["polyp", "normal"], "per_class": 3, "resolution": 32},
            "resolution": 32,
            "vae_steps": 4,
            "unet_steps": 6,
            "batch_size": 3,
            "validation_split": 0.2,
            "checkpoint_every": 2,
        }
    },
    "classes": {
        "polyp": {"count": 1, "prompts": PROMPTS["polyp"], "variables": {"size": ["small", "large"]}},
        "normal": {"count": 1, "prompts": PROMPTS["normal"]},
    },
    "audit": {"threshold": 0.99},
}
BUILD_RECIPE = {
    "name": "fault-build",
    "classes": {
        "polyp": {"count": 3, "prompts": PROMPTS["polyp"], "variables": {"size": ["small", "large"]}},
        "normal": {"count": 3, "prompts": PROMPTS["normal"]},
    },
    "sampling": {"steps": 3, "batch_size": 2, "seed": 7},
    "audit": {
        "data": {"type": "demo", "classes": ["polyp", "normal"], "per_class": 4, "resolution": 32},
        "embedder": "pixel",
        "threshold": 0.99,
    },
    "output": {"dir": "out", "shard_size": 2},
}
# Names that synthgen's interrupted writes leave: atomic.py's `.NAME.XXXXXXXX.tmp`, checkpoint staging
# `.PHASE-step-N.XXXXXXXX`, the training install's `.staging-XXXXXXXX`, model export's `.model.*.tmp`.
TEMP_NAME = re.compile(r"^\..+\.tmp$|^\.staging-|^\.[a-z_]+-step-\d+\.|\.partial$")
# Files of a pipeline folder that hold times (seconds, dates) by design; compared field by field instead.
TIMED_FILES = {"training_log.jsonl", "synthgen_model.json", "README.md"}
TIMEOUT = 900
CHILD = Path(__file__).resolve().with_name("fault_child.py")  # the CLI with its writes hooked


# ---------------------------------------------------------------- what must come out the same


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(*folders: Path) -> list[str]:
    """Temp files and folders an interrupted write left behind."""
    found = []
    for folder in folders:
        if folder.is_dir():
            found += [str(p.relative_to(folder)) for p in folder.rglob("*") if TEMP_NAME.search(p.name)]
    return sorted(found)


def train_fingerprint(model: Path) -> dict[str, object]:
    """Every pipeline file's sha256 (weights, configs, tokenizer, grids), the model info without its times, and
    each logged step's loss, validation loss and learning rate."""
    result: dict[str, object] = {}
    for path in sorted(model.rglob("*")):
        rel = path.relative_to(model).as_posix()
        temp = any(TEMP_NAME.search(part) for part in path.relative_to(model).parts)
        if path.is_file() and not rel.startswith(".checkpoints/") and rel not in TIMED_FILES and not temp:
            result[rel] = _sha(path.read_bytes())
    info = json.loads((model / "synthgen_model.json").read_text())
    result["synthgen_model.json"] = {k: v for k, v in info.items() if k not in ("seconds", "versions")}
    steps = [json.loads(line) for line in (model / "training_log.jsonl").read_text().splitlines()]
    result["training_log.jsonl"] = [
        [r["phase"], r["step"], r["loss"], r["val_loss"], r["lr"]] for r in steps if "event" not in r
    ]
    result["data cache dropped"] = not (model / ".checkpoints" / "data").exists()
    return result


def build_fingerprint(out: Path) -> dict[str, object]:
    """Every sample as published: Parquet rows and WebDataset members (`created_at` aside), counts, audit."""
    import pyarrow.parquet as pq

    result: dict[str, object] = {}
    for path in sorted((out / "data").glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row.pop("created_at")
            row["image"] = _sha(row["image"]["bytes"]) + " " + row["image"]["path"]
            result[f"{path.name}:{row['key']}"] = row
    for path in sorted((out / "webdataset").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if member.name.endswith(".json"):
                    meta = json.loads(data)
                    meta.pop("created_at")
                    data = json.dumps(meta, sort_keys=True).encode()
                result[f"{path.name}:{member.name}"] = _sha(data)
    manifest = json.loads((out / "manifest.json").read_text())
    result["manifest"] = {
        "shards": [(s["path"], s["num_samples"]) for s in manifest["shards"]],
        "class_counts": manifest["class_counts"],
        "num_samples": manifest["totals"]["num_samples"],
    }
    summary = json.loads((out / "audit" / "summary.json").read_text())
    result["audit"] = {k: summary[k] for k in ("n_candidates", "n_flagged", "n_dropped")}
    result["done"] = (out / ".synthgen" / "done").is_file()
    return result


# ---------------------------------------------------------------- one target: reference, kills, resumes


@dataclass
class Target:
    name: str
    recipe: dict
    output: str  # the folder the command writes, inside a run folder

    @classmethod
    def train(cls) -> Target:
        return cls("train", TRAIN_RECIPE, "model")

    @classmethod
    def build(cls, model: Path, **classes_count: int) -> Target:
        """The build of `model` (a pipeline folder); `polyp=4` etc. change a class's count."""
        recipe = json.loads(json.dumps({**BUILD_RECIPE, "model": {"pretrained": str(model)}}))
        for name, count in classes_count.items():
            recipe["classes"][name]["count"] = count
        return cls("build", recipe, "out")

    def args(self, run: Path) -> list[str]:
        return [self.name, str(run / "recipe.yaml"), "--out", str(run / self.output)]

    def fingerprint(self, run: Path) -> dict[str, object]:
        out = run / self.output
        return train_fingerprint(out) if self.name == "train" else build_fingerprint(out)

    def finished(self, run: Path, rc: int, text: str) -> bool:
        """Exit 0; or a rerun of a finished training, which synthgen refuses (exit 2) by design."""
        if rc == 0:
            return True
        done = (run / self.output / "model_index.json").is_file()
        return self.name == "train" and rc == 2 and done and "already holds this model" in text


@dataclass
class Run:
    index: int
    mode: str
    planned: str = ""
    killed: bool = False
    phase: str = ""
    resumes: int = 0
    identical: bool = False
    differences: list[str] = field(default_factory=list)
    temps: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _env(run: Path) -> dict[str, str]:
    extra = {"SYNTHGEN_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return {**os.environ, **extra, "SYNTHGEN_CACHE": str(run / "cache"), "PYTHONHASHSEED": "0"}


def prepare(target: Target, run: Path) -> None:
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(json.dumps(target.recipe, indent=1))  # JSON is YAML


def start(target: Target, run: Path, kill: str = "0", when: str = "before") -> subprocess.Popen:
    """The CLI under the write hooks (kill "0": log only; see fault_child.py), stderr into run/stderr-N.txt."""
    command = [sys.executable, str(CHILD), str(run / "events.jsonl"), kill, when, str(run.resolve())]
    command += ["--", "--progress-every", "0.2", *target.args(run)]
    stderr = open(run / f"stderr-{len(list(run.glob('stderr-*')))}.txt", "w")  # noqa: SIM115
    return subprocess.Popen(command, env=_env(run), stdout=subprocess.DEVNULL, stderr=stderr)


def reference(target: Target, work: Path) -> tuple[Path, float, list[dict], dict]:
    """The uninterrupted run: (its folder, seconds from its CLI's start to its end, its write events, fingerprint)."""
    run = work / f"{target.name}-reference"
    prepare(target, run)
    process = start(target, run)
    while process.poll() is None and not (run / "events.jsonl").is_file():
        time.sleep(0.01)
    began = time.monotonic()
    if process.wait(TIMEOUT) != 0:
        raise RuntimeError(f"{target.name} reference failed: {(run / 'stderr-0.txt').read_text()[-2000:]}")
    seconds = time.monotonic() - began
    return run, seconds, _events(run), target.fingerprint(run)


def phase_of(target: str, path: str) -> str:
    """Where a write event belongs, by the path it touches."""
    rules = [
        ("vae-step", "vae checkpoint"), ("unet-step", "unet checkpoint"), (".checkpoints/data", "data cache"),
        (".checkpoints/.tokenizer", "tokenizer"), (".checkpoints/tokenizer", "tokenizer"),
        ("samples/", "sample grid"), ("loss.png", "loss plot"), ("training_log", "log"),
        ("run.json", "claim"), (".staging", "install"), ("cache/", "audit index cache"),
        (".synthgen/shards", "shard marker"), (".synthgen/audit", "audit state"), ("data/", "shard files"),
        ("webdataset/", "shard files"), ("audit/", "audit report"), ("manifest.json", "manifest"),
        ("README.md", "card"), ("preview.png", "preview"), (".synthgen/done", "done marker"),
        ("build.json", "claim"), ("recipe.yaml", "claim"),
    ]  # fmt: skip
    for needle, phase in rules:
        if needle in path:
            return phase
    return "install" if target == "train" and path.startswith("model/") else "other"


def _stage(run: Path) -> str:
    """The killed process's last progress stage from its stderr ('setup' before any)."""
    lines = (run / "stderr-0.txt").read_text(errors="replace").splitlines()
    for line in reversed(lines):
        match = re.match(r"^\S+ \S+ (.+?)(?: started| done| ended|:)", line)
        if match and "using" not in match[1] and "model:" not in line:
            return match[1].strip()
    return "setup"


def kill_once(target: Target, run: Path, item: Run, rng: random.Random, duration: float, events: list) -> None:
    if item.mode == "point":
        event, when = rng.choice(events), rng.choice(["before", "after"])
        item.planned = f"{when} #{event['n']} {event['event']}"
        item.killed = start(target, run, str(event["n"]), when).wait(TIMEOUT) == -signal.SIGKILL
        item.phase = phase_of(target.name, event["path"]) if item.killed else "finished first"
        return
    for _ in range(3):  # a run that beat its kill (the machine got faster) is redone with a draw over its own time
        delay = rng.uniform(0, duration)
        item.planned = f"{delay:.1f}s"
        item.killed, duration = _kill_after(target, run, delay)
        if item.killed:
            break
        prepare(target, run)
    last = _events(run)
    where = phase_of(target.name, last[-1]["path"]) if last else "-"
    item.phase = f"{_stage(run)} / {where}" if item.killed else "finished first"


def _kill_after(target: Target, run: Path, delay: float) -> tuple[bool, float]:
    """SIGKILL the command `delay` seconds after its CLI starts; (killed, seconds it ran from there)."""
    process = start(target, run)
    while process.poll() is None and not (run / "events.jsonl").is_file():
        time.sleep(0.01)  # until the hooks are in (Python, torch and pyarrow loaded): nothing is written before
    began = time.monotonic()
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    return process.wait() == -signal.SIGKILL, time.monotonic() - began


def kill_chain(target: Target, run: Path, points: list[tuple[str, str]]) -> list[str]:
    """Start the command once per (kill spec, before|after) in the same folder, each start resuming the last
    killed one; returns the path of the event each start was killed at ('' when it was not killed)."""
    where = []
    for kill, when in points:
        killed = start(target, run, kill, when).wait(TIMEOUT) == -signal.SIGKILL
        last = _events(run)
        where.append(last[-1]["path"] if killed and last else "")
    return where


def _events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def resume(target: Target, run: Path, tries: int = 3) -> tuple[int, str]:
    """Rerun the plain command until it finishes; (reruns it took or 0 when it never did, its last output)."""
    for attempt in range(1, tries + 1):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "synthgen"), *target.args(run)],
            env=_env(run), capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        if target.finished(run, done.returncode, done.stdout + done.stderr):
            return attempt, done.stdout + done.stderr
    return 0, done.stdout + done.stderr


def compare(expected: dict, got: dict) -> list[str]:
    keys = sorted(set(expected) | set(got))
    return [k for k in keys if expected.get(k) != got.get(k)]


def run_target(target: Target, work: Path, runs: int, rng: random.Random, keep: bool) -> list[Run]:
    ref, duration, events, expected = reference(target, work)
    assert not leftovers(ref / target.output), leftovers(ref / target.output)
    print(f"{target.name}: reference {duration:.1f}s from the CLI's start, {len(events)} write events", flush=True)
    results = []
    for index in range(runs):
        item, run = Run(index, "time" if index % 2 == 0 else "point"), work / f"{target.name}-{index:02d}"
        prepare(target, run)
        began = time.monotonic()
        kill_once(target, run, item, rng, duration, events)
        item.resumes, output = resume(target, run)
        if item.resumes:
            item.differences = compare(expected, target.fingerprint(run))
        else:
            item.differences = ["rerun failed: " + output[-300:]]
        item.temps = leftovers(run / target.output)
        item.identical = not item.differences and not item.temps
        item.seconds = time.monotonic() - began
        results.append(item)
        print(row(target.name, item), flush=True)
        if item.identical and not keep:
            shutil.rmtree(run, ignore_errors=True)
    return results


def row(name: str, r: Run) -> str:
    verdict = "identical" if r.identical else "DIFFERS " + ", ".join(r.differences[:4] + r.temps[:4])
    killed = "killed" if r.killed else "not killed"
    return (
        f"{name:5} {r.index:3} {r.mode:5} {r.planned:32.32} {killed:10} {r.phase:40.40} {r.resumes:2}  "
        f"{verdict}  ({r.seconds:.0f}s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--target", choices=["train", "build", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="Folder for the runs (default: a new temp folder).")
    parser.add_argument("--keep", action="store_true", help="Keep every run's folder (default: only differing ones).")
    args = parser.parse_args()
    import tempfile

    work = (args.work or Path(tempfile.mkdtemp(prefix="synthgen-faults-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    print(f"work folder: {work}", flush=True)
    print(f"{'':5} {'run':>3} {'mode':5} {'kill':32} {'':10} {'phase (stage / last write)':40} re  result")
    train = Target.train()
    results: dict[str, list[Run]] = {}
    if args.target in ("train", "both"):
        results["train"] = run_target(train, work, args.runs, rng, args.keep)
    if args.target in ("build", "both"):
        model = work / "train-reference" / "model"
        if not (model / "model_index.json").is_file():
            reference(train, work)
        results["build"] = run_target(Target.build(model), work, args.runs, rng, args.keep)
    for name, items in results.items():
        phases = collections.Counter(r.phase.split(" / ")[-1] if r.mode == "time" else r.phase for r in items)
        print(f"{name} kills by phase: " + ", ".join(f"{p} {n}" for p, n in sorted(phases.items())))
    summary = "; ".join(
        f"{name}: {sum(r.identical for r in items)}/{len(items)}"
        + (" resumed runs identical" if i == 0 else "")
        + f" ({sum(r.killed for r in items)} killed)"
        for i, (name, items) in enumerate(results.items())
    )
    print(summary)
    sys.exit(0 if all(r.identical for items in results.values() for r in items) else 1)


if __name__ == "__main__":
    main()
