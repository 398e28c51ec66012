"""The generic optimizer loop every synthgen training phase runs (MSDM's VAE and UNet phases, LoRA).

A phase supplies what differs (the module, how a batch is drawn, the per-item loss, validation, what to do
at a checkpoint); the loop owns everything that must be the same for all: AdamW with warmup, gradient
accumulation over micro-batches, mixed precision on GPUs, clipping, EMA, checkpoints every
`checkpoint_every` steps and exact resumption, the log, DP-SGD when a `PrivateTraining` is given, and the time
budget (`max_minutes`): once spent, a phase stops at its next checkpoint, as if its steps were done.

The randomness of a logical batch (indices, noise, timesteps, flips, caption dropout) is drawn once from
the phase's own generator and then cut into micro-batches, so `gradient_accumulation` changes memory use
and float rounding, not what is learnt.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from synthgen.plan import derive_seed
from synthgen.runtime import Progress
from synthgen.training.checkpoints import CheckpointStore, capture_rng, restore_rng, seed_everything
from synthgen.training.ema import EMA
from synthgen.training.training_log import TrainingLog, plot_log

Batch = dict[str, Any]
RECENT = 50  # the final loss reported is the mean of this many last steps
_clock = time.monotonic  # the budget's clock (a module attribute: tests replace it rather than sleep)


@dataclass
class Phase:
    """One stage of training: `module`'s trainable parameters are fit to `loss` for `steps` optimizer steps."""

    name: str
    steps: int
    module: Any
    dataset_size: int
    draw: Callable[[Any, Any], Batch]  # (item indices, torch generator) -> batch tensors, first dim = items
    loss: Callable[[Any, Batch], Any]  # (module to call, micro-batch) -> per-item losses, shape (items,)
    learning_rate: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    clip_grad_norm: float | None = None
    ema_decay: float = 0.0
    validate: Callable[[Any], float] | None = None  # module (EMA weights in place) -> comparable loss
    on_checkpoint: Callable[[int], None] | None = None  # step -> side outputs (sample grid), EMA weights in place
    progress_label: str = ""


@dataclass
class LoopSettings:
    """The recipe's loop settings, resolved for this machine."""

    batch_size: int
    micro_batch_size: int
    checkpoint_every: int
    seed: int
    device: Any
    autocast_dtype: Any = None  # torch.bfloat16 / torch.float16 on GPUs, None: full precision
    grad_scaler: bool = False  # fp16 needs loss scaling
    plot_path: Any = None  # loss.png, redrawn at every checkpoint
    budget: Budget | None = None


@dataclass
class Budget:
    """A time budget over a whole run (`max_minutes`): `seconds` in all, `spent` by the phases before this one.

    Each phase counts its loop's wall-clock time (steps, validation and sample grids; not data loading) in its
    checkpoints (`elapsed`), so the budget spans resumes.
    """

    seconds: float
    spent: float = 0.0

    def spent_by(self, elapsed: float) -> bool:
        return self.spent + elapsed >= self.seconds


@dataclass
class PhaseResult:
    steps: int  # steps done: the planned steps, or fewer when the budget stopped the phase
    loss: float | None
    val_loss: float | None
    resumed_from: int | None
    seconds: float
    planned: int = 0
    stopped: bool = False  # by the time budget, at a checkpoint short of `planned`
    elapsed: float = 0.0  # the phase's wall-clock seconds, across resumes (what the budget counts)


class PrivateTraining(Protocol):
    """DP-SGD hooks (see training/dp_training.py): Poisson batches, per-sample clipping + noise, accounting."""

    def batches(self, phase: str, dataset_size: int, generator: Any) -> Any: ...
    def wrap(self, module: Any, optimizer: Any, phase: str) -> tuple[Any, Any]: ...
    def release(self, module: Any) -> Any: ...
    def check(self, optimizer: Any, items: int) -> None: ...
    def empty_step(self, optimizer: Any) -> None: ...
    def epsilon(self, phase: str, step: int) -> float: ...


class UniformBatches:
    """Non-private sampling: `batch_size` items drawn uniformly with replacement per step."""

    def __init__(self, dataset_size: int, batch_size: int, generator: Any) -> None:
        self.dataset_size, self.batch_size, self.generator = dataset_size, batch_size, generator

    def __iter__(self) -> UniformBatches:
        return self

    def __next__(self) -> Any:
        import torch

        return torch.randint(0, self.dataset_size, (self.batch_size,), generator=self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def resolve_precision(requested: str, device: Any) -> tuple[Any, bool]:
    """(autocast dtype or None, whether a GradScaler is needed); CPU and MPS always train in fp32."""
    import torch

    if device.type != "cuda" or requested == "no":
        return None, False
    if requested == "auto":
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return (torch.bfloat16, False) if requested == "bf16" else (torch.float16, True)


class _PhaseState:
    """What a phase's checkpoint holds besides the module: optimizer, LR schedule, EMA, batch sampler and the
    draw generator (and the fp16 loss scaler). Saved and restored together, so a resumed phase continues exactly."""

    def __init__(self, phase: Phase, settings: LoopSettings, private: PrivateTraining | None) -> None:
        import torch

        module = phase.module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=phase.learning_rate, weight_decay=phase.weight_decay)
        warmup = max(1, phase.warmup_steps)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.ema = EMA(module, phase.ema_decay) if phase.ema_decay > 0 else None
        self.generator = torch.Generator().manual_seed(derive_seed(settings.seed, phase.name, "draw"))
        batch_generator = torch.Generator().manual_seed(derive_seed(settings.seed, phase.name, "batches"))
        if private is not None:
            self.sampler = private.batches(phase.name, phase.dataset_size, batch_generator)
        else:
            self.sampler = UniformBatches(phase.dataset_size, settings.batch_size, batch_generator)
        use_scaler = settings.grad_scaler and private is None
        self.scaler = torch.amp.GradScaler(settings.device.type) if use_scaler else None

    def load(self, module: Any, state: dict[str, Any]) -> None:
        module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def state_dict(self, module: Any, step: int, recent: list[float], seconds: float, elapsed: float) -> dict:
        state = {
            "step": step,
            "module": module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "recent": recent,
            "seconds": seconds,
            "elapsed": elapsed,
            "rng": capture_rng(),  # after validation and samples: the run continues from exactly this state
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state


def run_phase(
    phase: Phase,
    settings: LoopSettings,
    store: CheckpointStore,
    log: TrainingLog,
    progress: Progress | None = None,
    private: PrivateTraining | None = None,
    *,
    final: bool = False,
) -> PhaseResult:
    """Train (or resume, or skip if finished) one phase; on return `phase.module` holds the final (EMA) weights.

    With `settings.budget`, the phase stops at the first checkpoint at which the run's budget is spent (a resume
    point is a checkpoint: a spent budget stops a resumed phase where it is). `final`: a later phase has begun
    on this one's weights, so it takes no more steps.

    Longer than most functions here on purpose: the order of its steps (RNG restore after wrapping, EMA after
    the optimizer step, the log line before the checkpoint) is what makes a resumed run bit-identical, so it
    reads top to bottom in one place.
    """
    seed_everything(derive_seed(settings.seed, phase.name))
    module = phase.module
    loop = _PhaseState(phase, settings, private)
    latest = store.latest(phase.name)
    start, recent, seconds, elapsed, rng = _resume(loop, module, store, latest)
    train_module, train_optimizer = (
        (module, loop.optimizer) if private is None else private.wrap(module, loop.optimizer, phase.name)
    )
    if rng is not None:
        restore_rng(rng)  # after wrapping: the run continues from exactly the checkpoint's random state
    budget = settings.budget
    spent = budget is not None and budget.spent_by(elapsed)
    last = start if latest is not None and (final or spent) else phase.steps

    module.train()
    val_loss, done, label = None, start, phase.progress_label or phase.name
    began, elapsed_before = _clock(), elapsed
    for step in range(start, last):
        step_began = time.perf_counter()
        indices = next(loop.sampler)
        loss_sum = _optimizer_step(
            phase, settings, train_module, train_optimizer, loop.params, loop.scaler, private, indices, loop.generator
        )
        loop.schedule.step()
        if loop.ema is not None:
            loop.ema.update(module)
        done = step + 1
        loss = loss_sum / len(indices) if len(indices) else None
        if loss is not None and private is None:  # under DP a raw loss is a non-private statistic: not kept
            recent = (recent + [loss])[-RECENT:]
        seconds += time.perf_counter() - step_began
        record = {"phase": phase.name, "step": done, "loss": loss if private is None else None, "val_loss": None}
        record["lr"] = loop.schedule.get_last_lr()[0]
        at_checkpoint = done % settings.checkpoint_every == 0 or done == phase.steps
        if at_checkpoint:
            val_loss, epsilon = _evaluate(phase, module, loop.ema, private, done, _autocast(settings, private))
            record.update(val_loss=val_loss, checkpoint=True, **({"epsilon": epsilon} if epsilon is not None else {}))
        log.write({**record, "seconds": round(seconds, 3)})  # before the checkpoint: a resume never lacks it
        if at_checkpoint:
            elapsed = elapsed_before + _clock() - began
            _save_checkpoint(loop, module, store, log, settings, record, recent, seconds, elapsed)
            spent = budget is not None and budget.spent_by(elapsed)
        if progress:
            progress(label, done, phase.steps)
        if at_checkpoint and spent:
            break
    if latest is not None and done == start:
        val_loss = latest.meta().get("val_loss")
    if private is not None:
        private.release(train_module)
    store.keep_only_final(phase.name)
    if loop.ema is not None:
        loop.ema.copy_to(module)
    module.eval()
    resumed = latest.step if latest else None
    return PhaseResult(done, _mean(recent), val_loss, resumed, seconds, phase.steps, done < phase.steps, elapsed)


def _save_checkpoint(loop, module, store, log, settings, record, recent, seconds, elapsed) -> None:
    """A resume point after step `record["step"]` (its log line is already written), and a fresh loss plot."""
    done = record["step"]
    meta = {"val_loss": record["val_loss"], "epsilon": record.get("epsilon"), "loss": _mean(recent), "elapsed": elapsed}
    store.save(record["phase"], done, loop.state_dict(module, done, recent, seconds, elapsed), meta)
    if settings.plot_path is not None:
        plot_log(log, settings.plot_path)


def _resume(loop: _PhaseState, module: Any, store: CheckpointStore, latest: Any) -> tuple:
    """(step, recent losses, step seconds, elapsed seconds, RNG states) of the latest checkpoint, loaded into
    `loop` and `module`; a fresh start without one."""
    if latest is None:
        return 0, [], 0.0, 0.0, None
    state = store.load(latest)
    loop.load(module, state)
    seconds = float(state["seconds"])
    return state["step"], list(state["recent"]), seconds, float(state.get("elapsed", seconds)), state["rng"]


def _evaluate(
    phase: Phase, module: Any, ema: EMA | None, private: PrivateTraining | None, step: int, autocast: Any = None
) -> tuple:
    """(validation loss, epsilon spent so far) at a checkpoint; validation and side outputs use the EMA weights.

    Validation runs under the training steps' `autocast`: a half-precision frozen model (LoRA's UNet on a GPU)
    cannot take fp32 inputs outside it, and the validation loss is then measured at the training precision.
    """
    import torch

    val_loss = None
    module.eval()
    with ema.applied(module) if ema is not None else contextlib.nullcontext(), torch.no_grad():
        if phase.validate is not None:
            with autocast if autocast is not None else contextlib.nullcontext():
                val_loss = phase.validate(module)
        if phase.on_checkpoint is not None:
            phase.on_checkpoint(step)
    module.train()
    return val_loss, private.epsilon(phase.name, step) if private is not None else None


def _optimizer_step(phase, settings, module, optimizer, params, scaler, private, indices, generator) -> float:
    """One logical batch: draw it, run its micro-batches (virtual steps under DP), step; returns the loss sum."""
    import torch

    if len(indices) == 0:  # only Poisson sampling gives empty batches: DP still takes a noise-only step
        private.empty_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return 0.0
    batch = phase.draw(indices, generator)
    n, size = len(indices), settings.micro_batch_size
    parts = [slice(i, i + size) for i in range(0, n, size)]
    total = 0.0
    autocast = _autocast(settings, private)
    for k, part in enumerate(parts):
        micro = {key: value[part] for key, value in batch.items()}
        with autocast if autocast is not None else contextlib.nullcontext():
            per_item = phase.loss(module, micro).float()
        # DP: Opacus's "mean" reduction wants each micro-batch's mean; it divides by the expected batch size.
        loss = per_item.mean() if private is not None else per_item.sum() / n
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += float(per_item.detach().sum())
        if private is not None:
            private.check(optimizer, len(per_item))
        if private is not None and k < len(parts) - 1:
            optimizer.signal_skip_step(do_skip=True)
            optimizer.step()  # clips and accumulates this micro-batch's per-sample gradients; no noise yet
            optimizer.zero_grad(set_to_none=True)
    if private is None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        if phase.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, phase.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _autocast(settings: LoopSettings, private: PrivateTraining | None) -> Any:
    """The steps' autocast context (None: full precision). Under DP only bf16: fp16 needs loss scaling, which
    would act before the per-sample clipping."""
    import torch

    dtype = settings.autocast_dtype
    if dtype is None or (private is not None and dtype != torch.bfloat16):
        return None
    return torch.autocast(settings.device.type, dtype=dtype)


def _mean(values: list[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None
