"""What a trained MSDM says about itself: `synthgen_model.json` (machine-readable provenance) and README.md.

Provenance covers what a reader needs to judge and reproduce the model: the training data's sha256,
description and counts (never file names or captions), the recipe's sha256 and training settings, steps,
seed, library versions, parameter counts and the DP record. The card states the privacy situation in
every case, including "no formal privacy guarantee" when that is the truth.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.atomic import write_json, write_text

MODEL_INFO_FILE = "synthgen_model.json"
CARD_FILE = "README.md"


def library_versions() -> dict[str, str]:
    import diffusers
    import torch
    import transformers

    versions = {
        "synthgen": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    try:
        import opacus

        versions["opacus"] = opacus.__version__
    except ImportError:
        pass
    return versions


def write_model_info(folder: Path, info: dict[str, Any]) -> None:
    write_json(folder / MODEL_INFO_FILE, info)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _privacy_lines(dp: dict[str, Any] | None) -> list[str]:
    if not dp:
        return [
            "**No formal privacy guarantee.** This model was trained without differential privacy; it may have "
            "memorized training images. Audit what it generates (synthgen's memorization audit) before sharing.",
        ]
    epsilon = dp.get("epsilon", dp.get("epsilon_spent"))
    return [
        f"**Differentially private training (DP-SGD):** (ε = {_fmt(epsilon)}, δ = {_fmt(dp.get('delta'))}) for every "
        "part that saw the training data (VAE and UNet, and the text encoder when trained), with per-sample "
        f"clipping at {_fmt(dp.get('max_grad_norm'))} and noise multiplier {_fmt(dp.get('noise_multiplier'))} "
        f"({dp.get('accountant', 'unknown')} accountant). Details: `privacy.json`.",
        "",
        "The guarantee holds per training image (record-level). Raw training losses are not released with the "
        "model (they are non-private statistics); the tokenizer comes from public text only (the recipe's class "
        "prompts, or the pretrained text model's own).",
    ]


def _steps(info: dict[str, Any], phase: str, planned: int) -> str:
    """`N steps`, or `N of M steps (stopped by max_minutes)` when the time budget cut the phase short."""
    done = (info.get("steps") or {}).get(phase, planned)
    return f"{done} steps" if done >= planned else f"{done} of {planned} steps (stopped by max_minutes)"


def _budget_lines(budget: dict[str, Any] | None) -> list[str]:
    """The time budget, said plainly: whether it stopped training, and where."""
    if not budget:
        return []
    limit = f"max_minutes: {budget['max_minutes']:g}"
    if not budget.get("stopped"):
        return [f"Training time budget ({limit}) not reached: {budget['minutes']:g} minutes of training.", ""]
    done = ", ".join(
        f"{phase} {budget['steps'][phase]} of {planned}" for phase, planned in budget["planned_steps"].items()
    )
    return [
        f"**Stopped by max_minutes.** The training time budget ({limit}) was spent after {budget['minutes']:g} "
        f"minutes, so training stopped at a checkpoint before the planned steps (steps done: {done}). The model "
        "is complete and usable, but trained less than the recipe planned. To train it further, raise (or remove) "
        "`max_minutes` and rerun `synthgen train` on this folder: it resumes from the checkpoint.",
        "",
    ]


def _split_lines(split: dict[str, Any] | None) -> list[str]:
    """How the validation images were held out, when whole groups (patients, sequences) were kept together."""
    if not split:
        return []
    groups = split["groups"]
    line = (
        f"- validation split by `{split['by']}`: {groups['train']} groups in training, {groups['validation']} held "
        "out (no group on both sides)"
    )
    if split.get("images_without_group"):
        line += f"; {split['images_without_group']} images without a value, each its own group"
    return [line]


def _channel_lines(info: dict[str, Any]) -> list[str]:
    """Grayscale or RGB, and why (`channels: auto` decides from the training images)."""
    channels = info.get("channels")
    if channels is None:
        return []
    kind = "1 (grayscale: images in mode L)" if channels == 1 else "3 (RGB)"
    reason = f" ({info['channels_reason']})" if info.get("channels_reason") else ""
    return [f"Channels: {kind}{reason}.", ""]


def write_model_card(folder: Path, info: dict[str, Any]) -> None:
    """README.md for the pipeline folder, built from `synthgen_model.json`'s contents."""
    data, training, counts = info["training_data"], info["training"], info["parameters"]
    text = info.get("text_encoder", {})
    losses = info.get("final_loss", {})
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags: [synthgen, msdm, medical-imaging, text-to-image]",
        "---",
        "",
        f"# MSDM-{info['preset']} (synthgen)",
        "",
        "A compact latent text-to-image diffusion model (VAE + cross-attention UNet + text encoder) trained by "
        "synthgen from a recipe. It is a standard diffusers `StableDiffusionPipeline`:",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("path/to/this/folder")',
        f'image = pipe("<a prompt like the training captions>", height={training["resolution"]}, '
        f"width={training['resolution']}).images[0]",
        "```",
        "",
        "## Privacy",
        "",
        *_privacy_lines(info.get("dp")),
        "",
        "## Training data",
        "",
        f"- {data['description']}: {data['images']} training images"
        + (f", {data['validation_images']} held out for validation" if data.get("validation_images") else "")
        + (f", {data['skipped']} unreadable skipped" if data.get("skipped") else ""),
        f"- sha256 of the data: `{data['sha256']}`",
        *_split_lines(data.get("split")),
        "",
        "## Model",
        "",
        "| part | parameters | trained |",
        "|---|---:|---|",
        f"| VAE | {counts['vae']:,} | {info['vae_source']} |",
        f"| UNet | {counts['unet']:,} | {_steps(info, 'unet', training['unet_steps'])} |",
        f"| text encoder ({text.get('kind', '?')}) | {counts['text_encoder']:,} | "
        f"{'fine-tuned with the UNet' if text.get('trainable') else 'frozen'} |",
        "",
        f"Resolution {training['resolution']} px, batch {training['batch_size']} "
        f"(gradient accumulation {training['gradient_accumulation']}), learning rate {training['learning_rate']}, "
        f"EMA decay {training['ema_decay']}, seed {training['seed']}.",
        "",
        *_channel_lines(info),
        *_budget_lines(info.get("budget")),
        f"Final training loss: VAE {_fmt(losses.get('vae'))}, UNet {_fmt(losses.get('unet'))}; "
        f"validation loss: VAE {_fmt(info.get('validation_loss', {}).get('vae'))}, "
        f"UNet {_fmt(info.get('validation_loss', {}).get('unet'))}.",
        "",
        "`training_log.jsonl`, `loss.png` and `samples/` show the run; `.checkpoints/` keeps the last checkpoint "
        "so the run can be extended (raise `unet_steps` and rerun `synthgen train`); delete it to save space.",
        "",
        f"Recipe sha256: `{info.get('recipe_sha256') or 'n/a'}`. synthgen {__version__}.",
        "",
    ]
    write_text(folder / CARD_FILE, "\n".join(lines))
