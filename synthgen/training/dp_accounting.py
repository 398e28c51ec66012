"""Differential privacy accounting for synthgen training: one DP-SGD budget calibrated across every phase that
sees the data, and the privacy record (`privacy.json`) that travels with the model.

The unit of privacy is one training image (add/remove adjacency, Poisson sampling). One noise multiplier sigma is
chosen for all phases (VAE, then UNet + text encoder) so that the *composed* epsilon of the whole training stays
within `privacy.target_epsilon` at `delta`. The loop: `plan_privacy` once, then per phase the Opacus mechanics of
`dp_sgd` (`make_private` + `PoissonBatches`, `private_step` per logical batch or its pattern inline), and at the
end `privacy_report` + `write_privacy_json`. docs/privacy.md explains the guarantee, what it covers and how a
loop must use these functions.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from synthgen.atomic import write_json
from synthgen.errors import SynthgenError
from synthgen.recipe import PrivacyConfig, Recipe

PRIVACY_FILE = "privacy.json"
MIN_NOISE = 0.1  # below this no accountant gives a meaningful epsilon (and PRV takes minutes)
MAX_NOISE = 1e3  # beyond this nothing is learnt: the budget is infeasible
NOT_COVERED = [
    "the memorization audit: it reads the training images after training, so its similarities, flags and report "
    "are not private, and with audit.action: drop which generated images are published depends on them",
    "the number of training images (public: the sample rate is computed from it)",
]
_SEARCH_RATIO = 1.005  # sigma is found to 0.5 % (PRV costs about a second per evaluation)


@dataclass(frozen=True)
class PhaseSpec:
    """One DP-SGD phase as the accountant sees it: `steps` steps, each taking each of `dataset_size` images with
    probability `sample_rate = batch_size / dataset_size`.

    `covers`: the modules this phase trains (default: its name). `noise_multiplier`: sigma of this phase (None
    before planning; fixed for earlier private training on the same data, see `check_privacy_sources`).
    `spent`: done before this training (counted in full by `privacy_report`).
    """

    name: str
    dataset_size: int
    batch_size: int
    steps: int
    covers: tuple[str, ...] = ()
    noise_multiplier: float | None = None
    spent: bool = False

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.dataset_size

    @property
    def expected_batch_size(self) -> int:
        """Opacus divides the noisy sum of clipped gradients by this (`loss_reduction="mean"`)."""
        return self.batch_size


@dataclass
class PrivacyPlan:
    """The calibrated DP-SGD settings: one sigma, per-phase sample rates, and the epsilon they cost."""

    target_epsilon: float
    delta: float
    accountant: str  # the accountant used (rdp when the requested one cannot compose these phases)
    max_grad_norm: float
    noise_multiplier: float
    phases: dict[str, PhaseSpec]  # with noise_multiplier and covers filled in
    expected_epsilon: float
    requested_accountant: str = ""
    note: str | None = None  # why the accountant differs from the requested one
    not_covered: list[str] = field(default_factory=lambda: list(NOT_COVERED))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _history(phases: Sequence[PhaseSpec], sigma: float, steps: dict[str, int] | None = None) -> list:
    """Opacus accountant history [(sigma, q, steps)]; equal (sigma, q) entries merged (exact composition)."""
    merged: dict[tuple[float, float], int] = {}
    for phase in phases:
        n = phase.steps if steps is None or phase.spent else steps.get(phase.name, 0)
        if n > 0:
            key = (phase.noise_multiplier or sigma, phase.sample_rate)
            merged[key] = merged.get(key, 0) + n
    return [(s, q, n) for (s, q), n in merged.items()]


def _epsilon(accountant: str, history: list, delta: float) -> float:
    from opacus.accountants import create_accountant

    if not history:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # order-range and GDP-is-experimental notices
        account = create_accountant(accountant)
        account.history = list(history)
        try:
            value = float(account.get_epsilon(delta))
        except (ValueError, OverflowError, RuntimeError, FloatingPointError):
            return math.inf
    return value if math.isfinite(value) else math.inf


def _smallest_sigma(epsilon: Callable[[float], float], target: float, start: float, factor: float) -> float | None:
    """Smallest sigma with epsilon(sigma) <= target, to `_SEARCH_RATIO` (epsilon falls as sigma grows).

    Brackets from `start` by steps of `factor`, then bisects in log space; None when even MAX_NOISE is not enough.
    """
    high = start
    while epsilon(high) > target:
        if high >= MAX_NOISE:
            return None
        high = min(MAX_NOISE, high * factor)
    low = high / factor
    while epsilon(low) <= target:
        if low <= MIN_NOISE:
            return MIN_NOISE
        high, low = low, max(MIN_NOISE, low / factor)
    while high / low > _SEARCH_RATIO:
        middle = math.sqrt(low * high)
        low, high = (middle, high) if epsilon(middle) > target else (low, middle)
    return high


def plan_privacy(config: PrivacyConfig, phases: Sequence[PhaseSpec]) -> PrivacyPlan:
    """One noise multiplier for all phases such that their composed epsilon is at most `config.target_epsilon`.

    RDP brackets sigma first (fast, an upper bound); PRV then refines it near that value, where it is quick.
    GDP only composes identical phases in Opacus (it reads the last history entry): with phases of different
    sample rates the plan falls back to RDP and says so in `note`. `delta` defaults to 1 / (10 n).
    Raises `SynthgenError` when a sample rate exceeds 1 or no sigma up to 1000 meets the budget.
    """
    if not phases or len({p.name for p in phases}) != len(phases):
        raise SynthgenError(f"privacy: phases must be given once each ({', '.join(p.name for p in phases)})")
    for p in phases:
        if not 0 < p.batch_size <= p.dataset_size or p.steps < 0:
            raise SynthgenError(
                f"privacy: phase '{p.name}': sample rate = batch_size {p.batch_size} / {p.dataset_size} training "
                f"images = {p.batch_size / max(1, p.dataset_size):.3g}, must be in (0, 1]; lower batch_size or "
                "add images"
            )
    if not _history(phases, 1.0):
        raise SynthgenError("privacy: no training steps to make private")
    delta = config.delta if config.delta is not None else 1.0 / (10 * max(p.dataset_size for p in phases))
    accountant, note = config.accountant, None
    if accountant == "gdp" and len(_history(phases, 1.0)) > 1:
        accountant = "rdp"
        note = "gdp composes only phases of equal sample rate in Opacus; the rdp accountant was used instead"

    @functools.cache
    def epsilon(kind: str, sigma: float) -> float:
        return _epsilon(kind, _history(phases, sigma), delta)

    target = config.target_epsilon
    sigma = _smallest_sigma(functools.partial(epsilon, "rdp"), target, 1.0, 2.0)  # RDP: fast, and an upper bound
    if sigma is not None and accountant != "rdp":  # refine near the RDP value, where PRV is quick
        sigma = _smallest_sigma(functools.partial(epsilon, accountant), target, sigma, 1.15)
    if sigma is None:
        raise SynthgenError(
            f"privacy: target_epsilon {target:g} is out of reach at delta {delta:.3g}: even noise multiplier "
            f"{MAX_NOISE:g} spends more; raise target_epsilon, train fewer steps, lower batch_size or add images"
        )
    plans = {
        p.name: replace(p, noise_multiplier=p.noise_multiplier or sigma, covers=p.covers or (p.name,)) for p in phases
    }
    return PrivacyPlan(
        target_epsilon=target, delta=delta, accountant=accountant, max_grad_norm=config.max_grad_norm,
        noise_multiplier=sigma, phases=plans, expected_epsilon=epsilon(accountant, sigma),
        requested_accountant=config.accountant, note=note,
    )  # fmt: skip


def privacy_report(plan: PrivacyPlan, steps_done: dict[str, int], not_covered: Sequence[str] = ()) -> dict:
    """The record written to privacy.json: epsilon recomputed from the steps actually taken (<= the target when
    no phase ran past its planned steps), the settings, and what the guarantee does and does not cover.

    `not_covered` adds the caller's own caveats to the standard ones (`PrivacyPlan.not_covered`).
    """
    import opacus

    unknown = set(steps_done) - set(plan.phases)
    if unknown:
        raise SynthgenError(f"privacy: steps reported for phases not in the plan: {', '.join(sorted(unknown))}")
    phases = list(plan.phases.values())
    done = {p.name: (p.steps if p.spent else int(steps_done.get(p.name, 0))) for p in phases}
    covers: list[str] = []
    for p in phases:
        covers += [name for name in p.covers if done[p.name] > 0 and name not in covers]
    spent = _epsilon(plan.accountant, _history(phases, plan.noise_multiplier, done), plan.delta)
    return {
        "epsilon": math.ceil(spent * 1e4) / 1e4 if math.isfinite(spent) else spent,  # rounded up
        "delta": plan.delta,
        "accountant": plan.accountant,
        "noise_multiplier": plan.noise_multiplier,
        "sample_rate": {p.name: p.sample_rate for p in phases},
        "steps": done,
        "max_grad_norm": plan.max_grad_norm,
        "target_epsilon": plan.target_epsilon,
        "covers": covers,
        "not_covered": [*plan.not_covered, *not_covered],
        "opacus_version": opacus.__version__,
    }


def write_privacy_json(directory: str | Path, report: dict) -> Path:
    """Write `directory/privacy.json` atomically (read back by `synthgen.models.loading.read_model_info`)."""
    path = Path(directory) / PRIVACY_FILE
    write_json(path, report)
    return path


def _synthgen_info(folder: Path) -> tuple[dict[str, Any], Path] | None:
    """synthgen's notes for a model folder or a component folder inside one (`vae/`, `text_encoder/`)."""
    for candidate in (folder, folder.parent):
        info_file = candidate / "synthgen_model.json"
        if info_file.is_file():
            try:
                info = json.loads(info_file.read_text())
            except (OSError, ValueError):
                return None
            if (candidate / PRIVACY_FILE).is_file():
                info["dp"] = json.loads((candidate / PRIVACY_FILE).read_text())
            return info, candidate
    return None


def check_privacy_sources(recipe: Recipe, data_fingerprint: str, base_dir: Path) -> list[PhaseSpec]:
    """Refuse pretrained parts that synthgen trained on these very images without DP; return earlier DP phases.

    A part trained on the same data without DP (model.train.vae, model.train.text_encoder.pretrained,
    model.pretrained under LoRA) carries no guarantee, so the new model's epsilon would be a false statement.
    A part trained with DP on the same data spent budget that composes with this training: its phases come back
    as `PhaseSpec(spent=True)` to pass to `plan_privacy` with the new ones. Public (hub or foreign) models pass.
    """
    if recipe.privacy is None:
        return []
    train = recipe.model.train
    sources = {"model.pretrained": recipe.model.pretrained if recipe.model.lora else None}
    if train is not None:
        sources["model.train.vae"] = train.vae
        sources["model.train.text_encoder.pretrained"] = train.text_encoder.pretrained
    earlier: list[PhaseSpec] = []
    for field_name, value in sources.items():
        if not value:
            continue
        folder = Path(value).expanduser()
        folder = folder if folder.is_absolute() else Path(base_dir) / folder
        found = _synthgen_info(folder) if folder.is_dir() else None
        if found is None or (found[0].get("training_data") or {}).get("sha256") != data_fingerprint:
            continue
        dp = found[0].get("dp")
        if not dp:
            raise SynthgenError(
                f"{field_name}: {value} was trained by synthgen on these same training images without differential "
                "privacy, so the privacy guarantee would not cover it; train it with privacy too, or use a "
                "public model"
            )
        for name, steps in dp.get("steps", {}).items():
            if ":" in name:  # its own earlier phases: sigma unknown here
                raise SynthgenError(f"{field_name}: {value} reused earlier private training itself; not supported")
            rate = dp["sample_rate"][name]
            size = max(1, int(found[0]["training_data"].get("images") or 1))
            earlier.append(
                PhaseSpec(
                    f"{field_name}:{name}", size, max(1, round(rate * size)), int(steps),
                    covers=(f"{field_name} ({name})",), noise_multiplier=dp["noise_multiplier"], spent=True,
                )
            )  # fmt: skip
    return earlier
