"""The downstream classifiers of `synthgen eval` and their metrics: a small CNN, a linear probe, numpy metrics.

Utility is measured by training one fixed classifier under one fixed budget on different training sets, so
the classifier is deliberately small, fast on CPU and deterministic per seed; what matters is that TRTR,
TSTR and TRTR+S share it exactly. Augmentation is translation + brightness/contrast only: no flips, because
chest X-rays (and many medical images) have laterality that a flip would turn into a different finding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from synthgen.errors import SynthgenError


def _rank_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC as the Mann-Whitney U statistic with mid-ranks, so tied scores count one half."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, n_classes: int | None = None) -> dict[str, Any]:
    """Balanced accuracy, macro F1, macro one-vs-rest AUROC and the confusion matrix (rows: true class).

    Balanced accuracy averages recall over the classes present in `y_true`; macro F1 over the classes present
    or predicted (scikit-learn's convention). A class absent from `y_true` has no AUROC: it is left out of the
    mean and listed in `auroc_left_out`.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = int(n_classes if n_classes is not None else proba.shape[1])
    if proba.ndim != 2 or proba.shape != (len(y_true), n_classes) or len(y_true) == 0:
        raise SynthgenError(f"expected {len(y_true)} x {n_classes} scores, got shape {proba.shape}")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise SynthgenError(f"labels must lie in 0..{n_classes - 1}")
    y_pred = proba.argmax(axis=1)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    support, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(n_classes), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(n_classes), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n_classes), where=precision + recall > 0)
    aurocs, left_out = [], []
    for c in range(n_classes):
        positive = y_true == c
        if positive.all() or not positive.any():
            left_out.append(c)
        else:
            aurocs.append(_rank_auroc(proba[:, c], positive))
    return {
        "balanced_accuracy": float(recall[present].mean()),
        "accuracy": float(hits.sum() / len(y_true)),
        "macro_f1": float(f1[present | (predicted > 0)].mean()),
        "macro_auroc": float(np.mean(aurocs)) if aurocs else None,
        "auroc_left_out": left_out,
        "per_class_recall": [float(r) if p else None for r, p in zip(recall, present, strict=True)],
        "confusion": confusion.tolist(),
    }


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks (stride-2 stem, two max-pools) + global average pooling: ~100k parameters.

    At 64 px one training step of 64 images takes ~0.1 s on one CPU thread.
    """

    name = "smallcnn-4block"

    def __init__(self, in_channels: int, n_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(previous, width, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if 0 < i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            previous = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(previous, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass(frozen=True)
class Budget:
    """The one training budget every regime gets: a fixed number of AdamW steps on balanced batches."""

    steps: int = 150
    batch_size: int = 64
    lr: float = 3e-3  # one-cycle peak; 1e-2 gave the same radiology TRTR mean with twice the spread over seeds
    weight_decay: float = 1e-4
    resolution: int = 64
    max_shift: float = 0.08  # translation, as a share of the side
    jitter: float = 0.15  # brightness and contrast, +- share

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def scaled_to(self, n_images: int, epochs: int = 30, min_steps: int = 30) -> Budget:
        """This budget for a small training set: about `epochs` passes, never more steps than `self.steps`."""
        steps = math.ceil(epochs * n_images / self.batch_size)
        return replace(self, steps=int(min(self.steps, max(min_steps, steps))))


def augment(x: torch.Tensor, budget: Budget, generator: torch.Generator) -> torch.Tensor:
    """Random translation (reflect-padded crop) and brightness/contrast jitter of a float batch in [0, 1]."""
    n, _, h, w = x.shape
    pad = max(1, round(budget.max_shift * h))
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, x.shape[1], h, padded.shape[3])
    cropped = torch.gather(padded, 2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = torch.gather(cropped, 3, cols)
    scale = 1 + budget.jitter * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    shift = budget.jitter * (2 * torch.rand(n, 1, 1, 1, generator=generator) - 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * scale + mean + shift).clamp_(0, 1)


def prepare_pixels(pixels: np.ndarray, channels: int, resolution: int) -> torch.Tensor:
    """uint8 (n, C, H, W) as float [0, 1] at `channels` (gray <-> RGB) and a square `resolution`."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x[:, :1].expand(-1, channels, -1, -1)
    if x.shape[2:] != (resolution, resolution):
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def balanced_batches(labels: np.ndarray, budget: Budget, generator: torch.Generator) -> torch.Tensor:
    """Indices of all `budget.steps` batches, drawn with class-inverse weights (each class equally often)."""
    counts = np.bincount(labels)
    weights = torch.from_numpy(1.0 / counts[labels])
    total = budget.steps * budget.batch_size
    return torch.multinomial(weights, total, replacement=True, generator=generator).view(budget.steps, -1)


def train_cnn(
    x: torch.Tensor,
    labels: np.ndarray,
    n_classes: int,
    budget: Budget,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> SmallCNN:
    """Train `SmallCNN` under `budget` (AdamW, one-cycle LR, balanced batches); same seed, same model on CPU."""
    if len(labels) == 0:
        raise SynthgenError("cannot train a classifier on no images")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SmallCNN(x.shape[1], n_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=budget.lr, total_steps=budget.steps)
    target = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    model.train()
    for step, batch in enumerate(balanced_batches(np.asarray(labels), budget, generator)):
        loss = F.cross_entropy(model(augment(x[batch], budget, generator)), target[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None and (step + 1) % max(1, budget.steps // 3) == 0:
            progress(f"  step {step + 1}/{budget.steps} loss {loss.item():.3f}")
    recalibrate_batchnorm(model, x, balanced_batches(np.asarray(labels), budget, generator)[:8].flatten())
    return model.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: torch.Tensor, rows: torch.Tensor, batch_size: int = 256) -> None:
    """Set BatchNorm statistics to exact averages over un-augmented training images (class-balanced rows).

    The running averages of a short run still remember its first steps; evaluated with them, a model that
    trained well can predict one class for everything.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    for start in range(0, len(rows), batch_size):
        model.features(x[rows[start : start + batch_size]])
    for norm in norms:
        norm.momentum = 0.1


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (n, classes) in eval mode."""
    model.eval()
    parts = [F.softmax(model(x[i : i + batch_size]), dim=1) for i in range(0, len(x), batch_size)]
    return torch.cat(parts).double().numpy() if parts else np.zeros((0, 0))


@dataclass
class LinearProbe:
    """Multinomial logistic regression on standardised features: the cheap utility check on a feature space."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    name = "linear-probe-logreg-l2"

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        z = (torch.from_numpy(np.asarray(features, dtype=np.float64)) - self.mean) / self.std
        return F.softmax(z @ self.weight.T + self.bias, dim=1).numpy()


def train_linear_probe(
    features: np.ndarray, labels: np.ndarray, n_classes: int, l2: float = 1e-3, max_iter: int = 200
) -> LinearProbe:
    """Fit by L-BFGS (float64, full batch) with class-balanced loss weights and an L2 penalty on the weights.

    Deterministic: no random state at all (zero initialisation, convex problem).
    """
    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise SynthgenError(f"linear probe: expected (n, d) features for {len(y)} labels, got {tuple(x.shape)}")
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-8)
    z = (x - mean) / std
    counts = torch.bincount(y, minlength=n_classes).double()
    class_weight = torch.where(counts > 0, len(y) / (n_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y, weight=class_weight) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearProbe(mean, std, weight.detach(), bias.detach())
