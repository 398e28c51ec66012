"""The plan: a recipe's classes expanded into jobs (class, prompt, seed, key), cut into shards.

Pure and deterministic: the same recipe always gives the same jobs in the same order, so shard `i` of a plan
names exactly the same samples on every run (the basis of resumption).
"""

from __future__ import annotations

import hashlib
import itertools
import string
from dataclasses import dataclass

from synthgen.recipe import ClassConfig, Recipe

SEED_BITS = 63


@dataclass(frozen=True)
class Job:
    """One synthetic sample to make. `attempt` > 0 when a dropped copy is being replaced."""

    key: str
    label: str
    prompt: str
    seed: int
    attempt: int = 0

    def retry(self) -> Job:
        """The same slot (key, class, prompt) with a fresh seed, for replacing a sample the audit dropped."""
        attempt = self.attempt + 1
        return Job(self.key, self.label, self.prompt, derive_seed(self.seed, "retry", attempt), attempt)


@dataclass(frozen=True)
class Shard:
    index: int
    jobs: tuple[Job, ...]


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]
    shards: tuple[Shard, ...]

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for job in self.jobs:
            counts[job.label] = counts.get(job.label, 0) + 1
        return counts


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across Python versions and processes, unlike `hash`)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def expand_prompts(config: ClassConfig) -> list[tuple[str, float]]:
    """Every template with every combination of its variables; a template's weight is split evenly."""
    expanded: list[tuple[str, float]] = []
    for template in config.templates():
        slots = sorted({s for _, s, _, _ in string.Formatter().parse(template.template) if s is not None})
        combos = list(itertools.product(*(config.variables[s] for s in slots)))
        for values in combos:
            prompt = template.template.format(**dict(zip(slots, values, strict=True)))
            expanded.append((prompt, template.weight / len(combos)))
    return expanded


def allocate(count: int, weights: list[float]) -> list[int]:
    """Split `count` over `weights` proportionally (largest remainder; ties go to the earlier entry)."""
    total = sum(weights)
    exact = [count * w / total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: count - sum(counts)]:
        counts[i] += 1
    return counts


def _class_prompts(config: ClassConfig) -> list[str]:
    """`count` prompts for one class, interleaved so any prefix covers the prompts in proportion."""
    prompts = expand_prompts(config)
    counts = allocate(config.count, [w for _, w in prompts])
    queues = [[p] * n for (p, _), n in zip(prompts, counts, strict=True)]
    out: list[str] = []
    while len(out) < config.count:
        for queue in queues:
            if queue:
                out.append(queue.pop())
    return out


def make_plan(recipe: Recipe) -> Plan:
    """Jobs interleaved across classes (so every shard is near balanced), then cut into shards."""
    base_seed = recipe.sampling.seed
    per_class = {
        label: [
            Job(f"{label}-{i:06d}", label, prompt, derive_seed(base_seed, label, i))
            for i, prompt in enumerate(_class_prompts(config))
        ]
        for label, config in recipe.classes.items()
    }
    jobs: list[Job] = []
    for row in itertools.zip_longest(*per_class.values()):
        jobs.extend(job for job in row if job is not None)
    seeds = {job.seed for job in jobs}
    if len(seeds) != len(jobs):  # 63-bit hashes: practically impossible, but never silently
        raise RuntimeError("seed collision in plan; change sampling.seed")
    size = recipe.output.shard_size
    shards = tuple(Shard(i // size, tuple(jobs[i : i + size])) for i in range(0, len(jobs), size))
    return Plan(tuple(jobs), shards)
