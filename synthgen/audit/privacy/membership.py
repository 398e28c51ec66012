"""Membership inference against a diffusers text-to-image pipeline: can its own outputs tell training images
(members) from fresh images of the same domain (holdout, non-members)?

Two score-based attacks, both "lower score = more likely a member":

- **loss** (Carlini et al. 2023; Matsumoto et al. 2023): the denoising loss ‖ε_θ(x_t, t, c) − ε‖², averaged over a
  fixed set of timesteps with fixed noise (seeded, the same for every image), conditioned on the image's caption.
  A model that memorized an image denoises it unusually well.
- **PIA** (Kong et al. 2024, proximal initialization): ε0 = ε_θ(x_0, 0), x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε0,
  score = ‖ε_θ(x_t, t) − ε0‖ at one t (default 200): deterministic, two UNet calls per image.

The report gives AUC (0.5 = the attack cannot tell members from non-members; 1.0 = it always can) and TPR at 1% FPR
(how many members are exposed when only 1% of non-members are falsely accused), the number that matters for
privacy. With fewer than 100 non-members the 1% point cannot be resolved; the exact FPR achieved is reported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from synthgen.errors import SynthgenError
from synthgen.models.safe_weights import check_pipeline_folder, safe_kwargs
from synthgen.runtime import Progress, pick_device, quiet_libraries, use_cpu_threads
from synthgen.sources.base import Skipped, Source

TARGET_FPR = 0.01
MAX_ROC_POINTS = 200
REQUIRED_PARTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


@dataclass(frozen=True)
class MIAConfig:
    """Attack settings; the defaults follow the papers (small t, where memorization shows most)."""

    loss_timesteps: tuple[int, ...] = (50, 100, 150, 200, 300)
    pia_timestep: int = 200
    pia_norm: float = 2.0
    seed: int = 0
    batch_size: int = 8
    max_images: int | None = None  # per side (members, non-members)
    device: str = "auto"
    allow_pickle: bool = False  # `synthgen audit --allow-pickle`: the model may load from pickled weights


@dataclass
class ScoreSet:
    """Per-image attack scores of one side (members or non-members) and the images that could not be read."""

    keys: list[str] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    pia: list[float] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def load_pipeline(model_dir: str | Path, allow_pickle: bool = False) -> Any:
    """Load a diffusers pipeline folder that has the parts the attacks need, or raise a one-line error.

    Safetensors only unless `allow_pickle` (`synthgen audit --allow-pickle`): pickled weights can run code.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise SynthgenError(f"--model: {model_dir} is not a diffusers pipeline folder (no model_index.json)")
    from diffusers import DiffusionPipeline

    check_pipeline_folder(model_dir, "--model", allow_pickle, opt_in="--allow-pickle")
    quiet_libraries()
    try:
        pipeline = DiffusionPipeline.from_pretrained(model_dir, local_files_only=True, **safe_kwargs(allow_pickle))
    except Exception as error:  # diffusers raises many types for broken folders
        raise SynthgenError(f"--model: cannot load {model_dir}: {type(error).__name__}: {error}") from None
    missing = [part for part in REQUIRED_PARTS if getattr(pipeline, part, None) is None]
    if missing:
        raise SynthgenError(
            f"--model: membership inference needs a StableDiffusionPipeline-like folder; {model_dir} lacks "
            + ", ".join(missing)
        )
    if getattr(pipeline, "text_encoder_2", None) is not None:
        raise SynthgenError(f"--model: {model_dir} has two text encoders (SDXL-style); only SD-style pipelines work")
    if not hasattr(pipeline.scheduler, "alphas_cumprod"):
        raise SynthgenError(f"--model: scheduler {type(pipeline.scheduler).__name__} has no DDPM noise schedule")
    return pipeline


class DiffusionScorer:
    """Computes both attack scores for batches of images with one pipeline (no gradients, fixed noise)."""

    def __init__(self, pipeline: Any, config: MIAConfig) -> None:
        import torch

        self.config = config
        self.device = pick_device(config.device, "MIAConfig.device")
        use_cpu_threads()
        self.vae = pipeline.vae.to(self.device, torch.float32).eval()
        self.unet = pipeline.unet.to(self.device, torch.float32).eval()
        self.text_encoder = pipeline.text_encoder.to(self.device, torch.float32).eval()
        self.tokenizer = pipeline.tokenizer
        scheduler = pipeline.scheduler
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise SynthgenError(f"--model: prediction_type {self.prediction_type} is not supported (epsilon, v)")
        self.alphas = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).to(self.device)
        for t in (*config.loss_timesteps, config.pia_timestep):
            if not 0 <= t < len(self.alphas):
                raise SynthgenError(f"timestep {t} is outside the model's 0..{len(self.alphas) - 1}")
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unet_size = self.unet.config.sample_size
        side = unet_size if isinstance(unet_size, int) else unet_size[0]
        self.resolution = int(side * factor) if side else int(self.vae.config.sample_size)
        self.latent_shape = (self.unet.config.in_channels, self.resolution // factor, self.resolution // factor)
        generator = torch.Generator().manual_seed(config.seed)
        noise = torch.randn((len(config.loss_timesteps), *self.latent_shape), generator=generator)
        self.noise = noise.to(self.device)  # one fixed noise per timestep, shared by every image

    def prepare(self, images: list[Image.Image]) -> Any:
        """Centre-crop and resize to the model's resolution; (n, C, R, R) in [-1, 1], C the VAE's channels
        (a grayscale model sees the images as luma, as it was trained)."""
        import torch

        size = (self.resolution, self.resolution)
        mode = "L" if int(self.vae.config.in_channels) == 1 else "RGB"
        arrays = [
            np.asarray(ImageOps.fit(image.convert(mode), size, Image.Resampling.BICUBIC), dtype=np.float32)
            for image in images
        ]
        stacked = np.stack(arrays)
        stacked = stacked[..., None] if stacked.ndim == 3 else stacked
        return torch.from_numpy(stacked.transpose(0, 3, 1, 2) / 127.5 - 1.0).to(self.device)

    def _eps(self, x_t: Any, t: int, context: Any) -> Any:
        """The model's noise estimate ε̂ at timestep t (converted from v for v-prediction models)."""
        import torch

        steps = torch.full((len(x_t),), t, device=self.device, dtype=torch.long)
        out = self.unet(x_t, steps, encoder_hidden_states=context).sample
        if self.prediction_type == "v_prediction":
            a = self.alphas[t]
            out = a.sqrt() * out + (1 - a).sqrt() * x_t
        return out

    def score(self, images: list[Image.Image], captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(loss, pia) per image, lower = more member-like."""
        import torch

        with torch.no_grad():
            posterior = self.vae.encode(self.prepare(images)).latent_dist
            shift = getattr(self.vae.config, "shift_factor", None) or 0.0
            x0 = (posterior.mean - shift) * self.vae.config.scaling_factor  # the mean: deterministic
            ids = self.tokenizer(
                captions,
                padding="max_length",
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids.to(self.device)
            context = self.text_encoder(ids)[0]
            losses = []
            for noise, t in zip(self.noise, self.config.loss_timesteps, strict=True):
                a = self.alphas[t]
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                losses.append(((self._eps(x_t, t, context) - noise) ** 2).flatten(1).mean(1))
            loss = torch.stack(losses).mean(0)
            t = self.config.pia_timestep
            eps0 = self._eps(x0, 0, context)
            a = self.alphas[t]
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps0
            pia = torch.linalg.vector_norm(
                (self._eps(x_t, t, context) - eps0).flatten(1), ord=self.config.pia_norm, dim=1
            )
        return loss.double().cpu().numpy(), pia.double().cpu().numpy()


def score_source(scorer: DiffusionScorer, source: Source, stage: str, progress: Progress | None = None) -> ScoreSet:
    """Score up to `max_images` readable images of a source, batch by batch; unreadable ones are recorded."""
    from synthgen.audit.index.train_index import batched, source_total

    limit = scorer.config.max_images
    total = source_total(source)
    total = min(total, limit) if total is not None and limit is not None else (total or limit)
    scores = ScoreSet()
    for batch in batched(source, scorer.config.batch_size):
        batch = batch[: None if limit is None else limit - len(scores.keys)]
        loss, pia = scorer.score([s.image for s in batch], [s.text or s.label for s in batch])
        scores.keys += [s.key for s in batch]
        scores.loss += loss.tolist()
        scores.pia += pia.tolist()
        if progress:
            progress(stage, len(scores.keys), total)
        if limit is not None and len(scores.keys) >= limit:
            break
    scores.skipped = list(source.skipped)
    return scores


def roc_curve(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC of the rule "member if score <= threshold" over every threshold: (fpr, tpr), from (0, 0) to (1, 1)."""
    members, nonmembers = np.sort(members), np.sort(nonmembers)
    thresholds = np.unique(np.concatenate([members, nonmembers]))
    tpr = np.searchsorted(members, thresholds, side="right") / len(members)
    fpr = np.searchsorted(nonmembers, thresholds, side="right") / len(nonmembers)
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def auc_score(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score < non-member score) + ½ P(tie): the area under `roc_curve`."""
    values = np.concatenate([members, nonmembers])
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    m, n = len(members), len(nonmembers)
    u_nonmember = ranks[m:].sum() - n * (n + 1) / 2.0  # pairs with non-member > member
    return float(u_nonmember / (m * n))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float = TARGET_FPR) -> tuple[float, float, float]:
    """(interpolated TPR at `target`, the largest achieved FPR <= target, the TPR there)."""
    i = int(np.searchsorted(fpr, target, side="right") - 1)  # last point with fpr <= target
    achieved, exact = float(fpr[i]), float(tpr[i])
    if i + 1 < len(fpr) and fpr[i + 1] > fpr[i]:
        interpolated = exact + (tpr[i + 1] - exact) * (target - fpr[i]) / (fpr[i + 1] - fpr[i])
    else:
        interpolated = exact
    return float(interpolated), achieved, exact


def attack_metrics(members: np.ndarray, nonmembers: np.ndarray) -> dict[str, Any]:
    """AUC (with a Hanley–McNeil 95% interval), TPR at 1% FPR (interpolated and exact) and a thinned ROC."""
    members, nonmembers = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    m, n = len(members), len(nonmembers)
    auc = auc_score(members, nonmembers)
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    se = math.sqrt(max(0.0, auc * (1 - auc) + (m - 1) * (q1 - auc**2) + (n - 1) * (q2 - auc**2)) / (m * n))
    fpr, tpr = roc_curve(members, nonmembers)
    interpolated, achieved, exact = tpr_at_fpr(fpr, tpr)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), MAX_ROC_POINTS)).round().astype(int))
    note = (
        f"only {n} non-members: the smallest non-zero FPR is {1 / n:.3f}, so TPR at 1% FPR is coarse; "
        f"the exact point used is FPR {achieved:.3f}"
        if n < 1 / TARGET_FPR
        else f"the 1% FPR point rests on {round(n * TARGET_FPR)} non-member(s)"
    )
    return {
        "auc": round(auc, 6),
        "auc_ci95": [round(max(0.0, auc - 1.96 * se), 6), round(min(1.0, auc + 1.96 * se), 6)],
        "tpr_at_1pct_fpr": round(interpolated, 6),
        "exact_point": {"fpr": round(achieved, 6), "tpr": round(exact, 6)},
        "nonmembers_at_1pct_fpr": n * TARGET_FPR,
        "coarse": n < 1 / TARGET_FPR,
        "note": note,
        "median": {
            "members": round(float(np.median(members)), 6),
            "nonmembers": round(float(np.median(nonmembers)), 6),
        },
        "roc": {"fpr": [round(float(v), 5) for v in fpr[keep]], "tpr": [round(float(v), 5) for v in tpr[keep]]},
    }


def membership_summary(
    members: ScoreSet, nonmembers: ScoreSet, config: MIAConfig, info: dict[str, Any]
) -> dict[str, Any]:
    """The `membership` block of summary.json."""
    from synthgen.audit.report.summary import skipped_block

    if len(members.keys) < 1 or len(nonmembers.keys) < 1:
        side = "training (--train)" if not members.keys else "holdout (--holdout)"
        raise SynthgenError(f"membership inference: no readable {side} images")
    return {
        **info,
        "loss_timesteps": list(config.loss_timesteps),
        "pia_timestep": config.pia_timestep,
        "pia_norm": config.pia_norm,
        "seed": config.seed,
        "n_members": len(members.keys),
        "n_nonmembers": len(nonmembers.keys),
        "attacks": {
            "loss": attack_metrics(np.array(members.loss), np.array(nonmembers.loss)),
            "pia": attack_metrics(np.array(members.pia), np.array(nonmembers.pia)),
        },
        "skipped": {"members": skipped_block(members.skipped), "nonmembers": skipped_block(nonmembers.skipped)},
        "how_to_read": "AUC 0.5 = members indistinguishable from holdout images; near 1 = the model gives its "
        "training images away. TPR at 1% FPR = share of training images exposed at a 1% false-accusation rate.",
    }


def run_membership(
    model_dir: str | Path,
    train: Source,
    holdout: Source,
    config: MIAConfig = MIAConfig(),
    progress: Progress | None = None,
) -> tuple[dict[str, Any], ScoreSet, ScoreSet]:
    """Score training images (members) and holdout images (non-members) with both attacks; summary + scores."""
    model_dir = Path(model_dir)
    scorer = DiffusionScorer(load_pipeline(model_dir, config.allow_pickle), config)
    members = score_source(scorer, train, "membership: training images", progress)
    nonmembers = score_source(scorer, holdout, "membership: holdout images", progress)
    info: dict[str, Any] = {
        "model": str(model_dir),
        "resolution": scorer.resolution,
        "prediction_type": scorer.prediction_type,
        "device": str(scorer.device),
    }
    model_info = model_dir / "synthgen_model.json"
    if model_info.is_file():
        details = json.loads(model_info.read_text())
        info["model_info"] = {key: details.get(key) for key in ("architecture", "preset", "dp", "training_data")}
    return membership_summary(members, nonmembers, config, info), members, nonmembers


def write_scores(path: Path, members: ScoreSet, nonmembers: ScoreSet) -> None:
    """membership.parquet: key, member, loss, pia (one row per scored image)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from synthgen.atomic import atomic_path

    table = pa.table(
        {
            "key": pa.array(members.keys + nonmembers.keys, pa.string()),
            "member": pa.array([True] * len(members.keys) + [False] * len(nonmembers.keys), pa.bool_()),
            "loss": pa.array(members.loss + nonmembers.loss, pa.float64()),
            "pia": pa.array(members.pia + nonmembers.pia, pa.float64()),
        }
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
