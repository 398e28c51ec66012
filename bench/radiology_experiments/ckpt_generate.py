"""Generate a small labelled set from a trained MSDM, or from one of its UNet checkpoints (EMA weights).

For learning curves over training steps and for sampling sweeps (guidance, DDIM steps) without a new build:

    python bench/radiology_experiments/ckpt_generate.py MODEL_DIR OUT_DIR [--checkpoint CKPT_DIR]
        [--per-class 50] [--guidance 3.5] [--steps 30] [--recipe recipes/radiology-real.yaml]

MODEL_DIR is the installed pipeline (VAE, tokenizer, scaling factor); with --checkpoint the UNet and text
encoder get that checkpoint's EMA weights (the VAE is shared: it finished training before the UNet began).
Prompts follow the recipe's class templates and weights (drawn per image from a fixed seed). OUT_DIR gets
data/shard-00000.parquet with the build layout the harness reads (image {bytes, path}, label_name).
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np


def class_prompts(recipe: Path) -> dict[str, tuple[list[str], np.ndarray]]:
    import yaml

    spec = yaml.safe_load(recipe.read_text())
    out = {}
    for name, cls in spec["classes"].items():
        texts, weights = [], []
        for p in cls["prompts"]:
            texts.append(p if isinstance(p, str) else p["template"])
            weights.append(1.0 if isinstance(p, str) else float(p.get("weight", 1.0)))
        w = np.asarray(weights)
        out[name] = (texts, w / w.sum())
    return out


def pipeline_from_training_folder(folder: Path, unet_ckpt: Path):
    """A pipeline from a run still training: the VAE checkpoint, the saved tokenizer, the UNet checkpoint's EMA.

    The VAE's scaling_factor (1 / std of the training latents) is recomputed from the run's decoded-image
    cache over all its images (the run uses its training side only, 95 %): close, not identical.
    """
    import torch
    from transformers import AutoTokenizer

    from synthgen.models.msdm import PRESETS, assemble_pipeline, build_text_encoder, build_unet, build_vae

    preset = PRESETS["tiny"]
    ck = folder / ".checkpoints"
    vae = build_vae(preset, 64, channels=1)
    vae_state = torch.load(sorted(ck.glob("vae-step-*"))[-1] / "state.pt", map_location="cpu", weights_only=False)
    vae.load_state_dict({k[4:]: v for k, v in vae_state["module"].items() if k.startswith("vae.")})
    vae.eval()
    images = np.load(ck / "data" / "images.npy", mmap_mode="r")
    with torch.no_grad():
        x = torch.from_numpy(np.asarray(images[:, :1], dtype=np.float32) / 127.5 - 1.0)
        std = torch.cat([vae.encode(x[i : i + 64]).latent_dist.mean for i in range(0, len(x), 64)]).std()
    vae.register_to_config(scaling_factor=float(1.0 / std))
    tokenizer = AutoTokenizer.from_pretrained(ck / "tokenizer")
    text = build_text_encoder(preset, len(tokenizer))
    unet = build_unet(preset, 64, vae=vae, cross_attention_dim=preset.text_hidden)
    return assemble_pipeline(vae, text, tokenizer, unet)


def main() -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=3.5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--recipe", type=Path, default=Path(__file__).parents[2] / "recipes" / "radiology-real.yaml")
    a = ap.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("SYNTHGEN_THREADS", "1")))
    if (a.model / "model_index.json").is_file():
        pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None, requires_safety_checker=False)
    else:  # a run still training: needs --checkpoint
        pipe = pipeline_from_training_folder(a.model, a.checkpoint)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if a.checkpoint is not None:
        shadow = torch.load(a.checkpoint / "state.pt", map_location="cpu", weights_only=False)["ema"]["shadow"]
        for prefix, module in (("unet.", pipe.unet), ("text.", pipe.text_encoder)):
            part = {k[len(prefix) :]: v for k, v in shadow.items() if k.startswith(prefix)}
            missing, unexpected = module.load_state_dict(part, strict=False)
            assert not unexpected, unexpected
            assert all("pooler" in m or "position_ids" in m for m in missing) or prefix == "unet." and not missing, (
                missing
            )
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor  # the model's own resolution (32, 64, 128 px)
    rng = np.random.default_rng(a.seed)
    rows, t0 = [], time.time()
    for k, (name, (texts, w)) in enumerate(class_prompts(a.recipe).items()):
        prompts = [texts[i] for i in rng.choice(len(texts), size=a.per_class, p=w)]
        for start in range(0, len(prompts), a.batch):
            chunk = prompts[start : start + a.batch]
            gens = [torch.Generator().manual_seed(a.seed * 100003 + k * 10007 + start + i) for i in range(len(chunk))]
            images = pipe(
                chunk, num_inference_steps=a.steps, guidance_scale=a.guidance, generator=gens, height=side, width=side
            ).images
            for prompt, im in zip(chunk, images, strict=True):
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                rows.append(
                    {
                        "image": {"bytes": buf.getvalue(), "path": None},
                        "label_name": name,
                        "prompt": prompt,
                        "mode": im.mode,
                    }
                )
        print(f"{name}: {a.per_class} images ({time.time() - t0:.0f}s)", flush=True)
    (a.out / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), a.out / "data" / "shard-00000.parquet")
    print(f"wrote {len(rows)} images to {a.out} in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
