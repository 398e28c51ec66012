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
        "",
        "## Model",
        "",
        "| part | parameters | trained |",
        "|---|---:|---|",
        f"| VAE | {counts['vae']:,} | {info['vae_source']} |",
        f"| UNet | {counts['unet']:,} | {training['unet_steps']} steps |",
        f"| text encoder ({text.get('kind', '?')}) | {counts['text_encoder']:,} | "
        f"{'fine-tuned with the UNet' if text.get('trainable') else 'frozen'} |",
        "",
        f"Resolution {training['resolution']} px, batch {training['batch_size']} "
        f"(gradient accumulation {training['gradient_accumulation']}), learning rate {training['learning_rate']}, "
        f"EMA decay {training['ema_decay']}, seed {training['seed']}.",
        "",
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
