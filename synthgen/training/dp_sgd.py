"""DP-SGD mechanics (Opacus): per-sample gradients, clipping and noise, Poisson-sampled batches, virtual steps.

`make_private` wraps a phase's module and optimizer with the noise multiplier `dp_accounting.plan_privacy` chose;
`PoissonBatches` draws the batches the accountant assumes; `private_step` is one logical step in micro-batches
(the generic loop inlines the same pattern); `unwrap` removes the hooks when the phase is over.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from synthgen.errors import SynthgenError
from synthgen.training.dp_accounting import PrivacyPlan


def _per_sample_position_ids(module: torch.nn.Module) -> list[Any]:
    """Give transformers text encoders position ids of shape (batch, length).

    BERT and CLIP default to a (1, length) buffer broadcast over the batch, so Opacus's hooks see a batch of one
    for the position embedding and its per-sample gradient would be the whole batch's (clipping fails on the
    mismatch). The pooler's output is unused by diffusion conditioning, so it gets no gradient: frozen here
    (what training without DP does to it in effect), else Opacus finds no per-sample gradient for it.
    """
    import inspect

    from transformers import PreTrainedModel

    def fill(model: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        try:
            bound = inspect.signature(model.forward).bind_partial(*args, **kwargs).arguments
        except TypeError:
            return args, kwargs  # the forward call itself will say what is wrong
        ids = bound.get("input_ids")
        if bound.get("position_ids") is None and isinstance(ids, torch.Tensor) and ids.dim() == 2:
            kwargs["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        return args, kwargs

    handles = []
    for sub in module.modules():
        if isinstance(sub, PreTrainedModel) and "position_ids" in inspect.signature(sub.forward).parameters:
            handles.append(sub.register_forward_pre_hook(fill, with_kwargs=True))
            pooler = getattr(sub, "pooler", None)
            if isinstance(pooler, torch.nn.Module):
                pooler.requires_grad_(False)
    return handles


def make_private(module: torch.nn.Module, optimizer: torch.optim.Optimizer, plan: PrivacyPlan, phase: str) -> tuple:
    """Wrap `module` for per-sample gradients (Opacus hooks) and `optimizer` for clipping + noise.

    Returns `(GradSampleModule, DPOptimizer)`. Hooks sit on the layers themselves, so calling the original
    module (or its methods such as `vae.encode`) records per-sample gradients too; the module must be in train
    mode. diffusers UNet2DConditionModel / AutoencoderKL (Conv2d, GroupNorm, Linear attention) and BERT/CLIP text
    encoders (Embedding, LayerNorm, Linear) are all supported by hooks mode; layers with running statistics
    (BatchNorm) are refused: they mix samples, so per-sample clipping would not bound one image's influence.
    """
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    if phase not in plan.phases:
        raise SynthgenError(f"privacy: phase '{phase}' is not in the privacy plan ({', '.join(plan.phases)})")
    errors = ModuleValidator.validate(module, strict=False)
    if errors:
        raise SynthgenError(f"privacy: {type(module).__name__} cannot be trained with DP-SGD: {errors[0]}")
    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)  # benign
    try:
        private = GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=True)
    except NotImplementedError as error:
        raise SynthgenError(f"privacy: {type(module).__name__} cannot be trained with DP-SGD: {error}") from None
    private._synthgen_hooks = _per_sample_position_ids(module)
    settings = plan.phases[phase]
    dp_optimizer = DPOptimizer(
        optimizer,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        expected_batch_size=settings.expected_batch_size,
        loss_reduction="mean",
    )
    return private, dp_optimizer


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind `make_private`'s wrapper, with every hook and per-sample gradient removed."""
    from opacus.grad_sample import GradSampleModule

    if not isinstance(module, GradSampleModule):
        return module
    for handle in getattr(module, "_synthgen_hooks", []):
        handle.remove()
    return module.to_standard_module()


def check_per_sample_gradients(optimizer: Any, batch: int) -> None:
    """Fail clearly when a trainable parameter has no per-sample gradient or one for another batch size."""
    for p in optimizer.params:
        sample = getattr(p, "grad_sample", None)
        size = None if sample is None else sum(map(len, sample)) if isinstance(sample, list) else len(sample)
        if size != batch:
            raise SynthgenError(
                f"privacy: a trainable parameter of shape {tuple(p.shape)} has per-sample gradients for {size} "
                f"items, not {batch}: freeze parameters the loss does not use; give every layer the batch dimension"
            )


def step_on_empty_batch(optimizer: Any) -> None:
    """A noise-only DP step for an empty Poisson batch (a UNet cannot run a forward pass on zero images).

    Skipping it would change the mechanism the accountant counted; Opacus's own loader does the same thing
    (zero per-sample gradients, then noise). The caller still calls `zero_grad` afterwards.
    """
    for p in optimizer.params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
    optimizer.step()


def private_step(
    optimizer: Any, indices: torch.Tensor, micro_batch_size: int, loss: Callable[[torch.Tensor], torch.Tensor]
) -> float | None:
    """One logical DP-SGD step over the Poisson batch `indices`, in micro-batches (virtual steps).

    `loss(chunk)` returns the per-item losses of those items. Each micro-batch's per-sample gradients are
    clipped and added up; noise is added once, at the last. Returns the mean loss (None for an empty batch).
    """
    if len(indices) == 0:
        step_on_empty_batch(optimizer)
        optimizer.zero_grad(set_to_none=True)
        return None
    total, chunks = 0.0, indices.split(max(1, micro_batch_size))
    for k, chunk in enumerate(chunks):
        per_item = loss(chunk)
        per_item.mean().backward()
        total += float(per_item.detach().sum())
        check_per_sample_gradients(optimizer, len(chunk))
        if k < len(chunks) - 1:
            optimizer.signal_skip_step(do_skip=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # keeps the clipped sum while the step is skipped
    return total / len(indices)


class PoissonBatches:
    """Endless Poisson-sampled logical batches over range(dataset_size): each index kept with prob `sample_rate`.

    DP-SGD's accounting assumes exactly this sampling; a batch may be empty (see `step_on_empty_batch`).
    Deterministic in the generator's state; `state_dict` / `load_state_dict` resume the sequence exactly.
    """

    def __init__(self, dataset_size: int, sample_rate: float, generator: torch.Generator) -> None:
        if not 0 < sample_rate <= 1:
            raise SynthgenError(f"privacy: sample rate {sample_rate} must be in (0, 1]")
        self.dataset_size, self.sample_rate, self.generator = dataset_size, sample_rate, generator
        self.drawn = 0

    def __iter__(self) -> PoissonBatches:
        return self

    def __next__(self) -> torch.Tensor:
        keep = torch.rand(self.dataset_size, generator=self.generator) < self.sample_rate
        self.drawn += 1
        return keep.nonzero().flatten()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.drawn = int(state["drawn"])
