"""DP-SGD for one training run: `DPTraining` ties the generic loop to `dp_accounting` (the plan, epsilon spent)
and `dp_sgd` (Opacus batches, clipping, noise), and holds the step counts.

The plan (one noise multiplier for all phases, composed ε ≤ target) is made once, before any phase runs,
from the phases' sizes and steps; each phase then swaps uniform sampling for Poisson batches and wraps its
module and optimizer for per-sample clipping and noise. ε is recomputed from the steps done at every
checkpoint, so a resumed run's accounting stays exact (the counts are the checkpointed steps).

What the loop leaves out under DP, because each would be a non-private statistic of the training images
released with the model: the training loss in the log, the validation split, the data-derived latent scale
and per-label counts (see docs/privacy.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen.recipe import PrivacyConfig
from synthgen.training import dp_accounting, dp_sgd


class DPTraining:
    """DP-SGD for the phases of one training run (implements `loop.PrivateTraining`)."""

    def __init__(
        self,
        config: PrivacyConfig,
        recipe: Any,
        data_fingerprint: str,
        base_dir: Path | None,
        dataset_size: int,
        batch_size: int,
        phases: dict[str, int],
        covers: dict[str, tuple[str, ...]],
    ) -> None:
        earlier = []
        if recipe is not None:
            earlier = dp_accounting.check_privacy_sources(recipe, data_fingerprint, base_dir or Path.cwd())
        specs = [
            dp_accounting.PhaseSpec(name, dataset_size, batch_size, steps, covers=covers.get(name, (name,)))
            for name, steps in phases.items()
        ]
        self.plan = dp_accounting.plan_privacy(config, [*earlier, *specs])
        self.order = list(phases)
        self.steps_done = {name: 0 for name in phases}

    def batches(self, phase: str, dataset_size: int, generator: Any) -> Any:
        return dp_sgd.PoissonBatches(dataset_size, self.plan.phases[phase].sample_rate, generator)

    def wrap(self, module: Any, optimizer: Any, phase: str) -> tuple[Any, Any]:
        return dp_sgd.make_private(module, optimizer, self.plan, phase)

    def release(self, module: Any) -> Any:
        """Remove the per-sample-gradient hooks once a phase is over (its module is then used plainly)."""
        return dp_sgd.unwrap(module)

    def check(self, optimizer: Any, items: int) -> None:
        dp_sgd.check_per_sample_gradients(optimizer, items)

    def empty_step(self, optimizer: Any) -> None:
        dp_sgd.step_on_empty_batch(optimizer)

    def epsilon(self, phase: str, step: int) -> float:
        """ε spent after `step` steps of `phase` (earlier phases finished, later ones not started)."""
        position = self.order.index(phase)
        for earlier in self.order[:position]:
            self.steps_done[earlier] = self.plan.phases[earlier].steps
        self.steps_done[phase] = step
        return float(self.report(self.steps_done)["epsilon"])

    def report(self, steps_done: dict[str, int] | None = None) -> dict[str, Any]:
        done = steps_done or {name: self.plan.phases[name].steps for name in self.order}
        return dp_accounting.privacy_report(self.plan, done)

    def write(self, folder: Path) -> None:
        dp_accounting.write_privacy_json(folder, self.report())
