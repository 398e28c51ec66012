"""Engines run a build's shards: `local` (this process, one shard after another) or `ray` (actors on a cluster).

`build` prepares one `ShardRun` (the folder it holds locked, the plan, the shard writer, the model and the
fitted auditor) and hands it to an engine; the engine returns every shard's record. Whatever the engine, the
process that called `build` alone writes markers, audit state and the manifest, so resuming works the same.
"""

from __future__ import annotations

from synthgen.engines.base import Engine, ModelRef, ShardRun, ShardsDone
from synthgen.errors import SynthgenError

ENGINES = ("local", "ray")


def make_engine(name: str = "local", address: str | None = None) -> Engine:
    """The engine called `name`; `address` (Ray only): the cluster to join (`auto`, `host:port`, `ray://...`).

    A missing Ray is a one-line error here, before any work starts."""
    if name == "local":
        if address is not None:
            raise SynthgenError("--address: only with --engine ray")
        from synthgen.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from synthgen.engines.ray_engine import RayEngine

        return RayEngine(address)
    raise SynthgenError(f"--engine: unknown engine {name!r}; use {' or '.join(ENGINES)}")


__all__ = ["ENGINES", "Engine", "ModelRef", "ShardRun", "ShardsDone", "make_engine"]
