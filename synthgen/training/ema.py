"""Exponential moving average of a module's trainable weights (the weights a finished MSDM ships with).

Diffusion models sample visibly better from an EMA of their weights than from the last step's. The decay
warms up as min(decay, (1 + t) / (10 + t)) so short runs are not dominated by the random initial weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class EMA:
    """Shadow copies of `module`'s trainable parameters, updated after every optimizer step."""

    def __init__(self, module: Any, decay: float) -> None:
        import torch

        self.decay = float(decay)
        self.updates = 0
        self._names = [name for name, p in module.named_parameters() if p.requires_grad]
        with torch.no_grad():
            self.shadow = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        """The decay used for the next update (warmed up over the first updates)."""
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self, module: Any) -> None:
        import torch

        decay = self.current_decay()
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name in self._names:
                self.shadow[name].lerp_(params[name].detach(), 1.0 - decay)
        self.updates += 1

    def copy_to(self, module: Any) -> None:
        """Put the EMA weights into `module` (for saving the final model)."""
        import torch

        params = dict(module.named_parameters())
        with torch.no_grad():
            for name in self._names:
                params[name].copy_(self.shadow[name])

    @contextlib.contextmanager
    def applied(self, module: Any) -> Iterator[None]:
        """Temporarily swap the EMA weights in (validation, sample grids); the raw weights come back exactly."""
        import torch

        params = dict(module.named_parameters())
        with torch.no_grad():
            saved = {name: params[name].detach().clone() for name in self._names}
        self.copy_to(module)
        try:
            yield
        finally:
            with torch.no_grad():
                for name in self._names:
                    params[name].copy_(saved[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        self.updates = int(state["updates"])
        with torch.no_grad():
            for name in self._names:
                self.shadow[name].copy_(state["shadow"][name])
