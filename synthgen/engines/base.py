"""What every engine is given (`ShardRun`) and returns (`ShardsDone`), and which shards are left to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from synthgen.atomic import write_json
from synthgen.output.folder import OutputFolder
from synthgen.plan import Plan, Shard
from synthgen.recipe import LoadedRecipe
from synthgen.runtime import Reporter

if TYPE_CHECKING:
    from synthgen.output.shard_set import ShardRecord, ShardSet
    from synthgen.shard_builder import ShardBuilder


@dataclass(frozen=True)
class ModelRef:
    """The resolved model as a worker elsewhere loads it: its folder (on a path every worker can read)."""

    path: str
    model_id: str
    sha256: str
    allow_pickle: bool = False


@dataclass
class ShardRun:
    """One build's shards to run: the caller holds `folder`'s lock for as long as the engine runs."""

    loaded: LoadedRecipe
    folder: OutputFolder
    plan: Plan
    shard_set: ShardSet
    # generates in this process (the local engine); its auditor is the build's, fitted once; its `wait` clock is
    # what `build` logs and records under manifest `generation` (the Ray engine merges its workers' clocks into it)
    builder: ShardBuilder
    model: ModelRef
    provenance: dict[str, Any]
    reporter: Reporter = field(default_factory=Reporter)

    def split(self) -> tuple[dict[int, ShardRecord], list[Shard]]:
        """(records of the shards provably complete on disk, the shards to write): a shard counts as done when
        its marker's files still hash as recorded and, with an audit, its audit rows were kept."""
        from synthgen.output.shard_set import load_completed

        on_disk = load_completed(self.folder.path)  # each finished shard's files are hashed once, here
        done: dict[int, ShardRecord] = {}
        todo: list[Shard] = []
        for shard in self.plan.shards:
            previous = on_disk.get(shard.index)
            audited = self.builder.auditor is None or self.folder.audit_state(shard.index).is_file()
            if self.shard_set.is_complete(shard.index, previous) and audited:
                done[shard.index] = previous
            else:
                todo.append(shard)
        return done, todo

    def save_audit(self, index: int, state: dict[str, Any] | None) -> None:
        """Keep shard `index`'s audit rows beside its marker (the final report merges every shard's)."""
        if state is not None:
            write_json(self.folder.audit_state(index), state)


@dataclass
class ShardsDone:
    records: dict[int, ShardRecord]  # every finished shard's record, by index
    written: int
    resumed: int


class Engine(Protocol):
    """Runs the shards a build still needs; returns the records of all of them."""

    name: str

    def run(self, run: ShardRun) -> ShardsDone: ...
