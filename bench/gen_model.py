"""The generation benchmark's settings, its model (built untrained or loaded) and its recipe.

`BenchConfig` is what `bench_generation.run_benchmark` takes; `build_model` saves an untrained pipeline
(synthgen's MSDM preset, or `sd15`: SD-1.5 sizes); `load_pipeline` loads a folder as a user script does;
`recipe_dict` is the recipe `synthgen build` and the Generator path run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLASSES = {
    "polyp": "colonoscopy image showing a small polyp in the upper left",
    "ulcer": "colonoscopy image showing a large ulcer in the centre",
    "normal": "colonoscopy image showing normal mucosa",
}
DEFAULT_RESOLUTION = {"tiny": 64, "small": 128, "base": 256, "sd15": 512}


@dataclass
class BenchConfig:
    device: str = "auto"
    preset: str = "tiny"  # tiny | small | base (synthgen's MSDM presets) | sd15 (SD-1.5-sized)
    resolution: int | None = None  # default: the preset's (tiny 64, small 128, base 256, sd15 512) or the model's
    model: str | None = None  # an existing diffusers pipeline folder instead of a built one
    images: int = 48
    steps: int = 25
    guidance: float = 3.5
    batch: int = 16  # the stock loop's and the UNet-alone path's batch
    synthgen_batch: str = "auto"  # synthgen's `sampling.batch_size` (auto: its own choice) or a number
    ablate: bool = False  # also time synthgen with each lever off (one stream, stock batch, no overlap, no cache)
    dtype: str | None = None  # fp32 | bf16; default bf16 on CUDA, fp32 elsewhere
    build: bool = False  # also time the whole `synthgen build` CLI in a fresh process
    repeats: int = 1  # each path runs this many times; the median is reported
    save_dtype: str = "fp32"  # weights dtype of a built model on disk
    matmul_peak: bool = True  # on CUDA: time an 8192^3 bf16 matmul for the share of peak
    work_dir: str | None = None  # where the model, PNGs and build output go (default: a temporary folder)


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _sd15_parts(msdm: Any, resolution: int, device: str) -> tuple[Any, Any, Any, Any]:
    """SD-1.5's UNet and VAE configs, a 12-layer 768-wide BERT (synthgen's builder) in place of CLIP's text model."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    spec = dataclasses.replace(msdm.PRESETS["base"], text_layers=12, text_heads=12, text_hidden=768)
    tokenizer = msdm.train_tokenizer(list(CLASSES.values()), spec)
    with torch.device(device):
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=resolution,
        )
        unet = UNet2DConditionModel(sample_size=resolution // 8, cross_attention_dim=768)  # SD-1.5's config
        text = msdm.build_text_encoder(spec, len(tokenizer))
    return vae, text, tokenizer, unet


def _msdm_parts(msdm: Any, preset: str, resolution: int, device: str) -> tuple[Any, Any, Any, Any]:
    import torch

    spec = msdm.PRESETS[preset]
    tokenizer = msdm.train_tokenizer(list(CLASSES.values()), spec)
    with torch.device(device):
        vae = msdm.build_vae(spec, resolution)
        text = msdm.build_text_encoder(spec, len(tokenizer))
        unet = msdm.build_unet(spec, resolution, vae=vae, cross_attention_dim=spec.text_hidden)
    return vae, text, tokenizer, unet


def build_model(preset: str, resolution: int, out_dir: Path, device: str = "cpu", save_dtype: str = "fp32") -> Path:
    """An untrained pipeline saved with save_pretrained: synthgen's MSDM preset, or `sd15` (SD-1.5 sizes).

    Modules are initialised on `device` (fast on a GPU), then moved to the CPU and saved in `save_dtype`.
    """
    from synthgen.models import msdm

    if preset == "sd15":
        vae, text, tokenizer, unet = _sd15_parts(msdm, resolution, device)
    else:
        vae, text, tokenizer, unet = _msdm_parts(msdm, preset, resolution, device)
    dtype = torch_dtype(save_dtype)
    vae, text, unet = (module.to("cpu", dtype) for module in (vae, text, unet))
    msdm.assemble_pipeline(vae, text, tokenizer, unet).save_pretrained(out_dir)
    return Path(out_dir)


def load_pipeline(path: Path, device, dtype):
    """Load a pipeline folder the way a user script does, every part in eval mode, no progress bars."""
    from diffusers import DiffusionPipeline

    from synthgen.runtime import dtype_kwarg, quiet_libraries

    quiet_libraries()
    pipeline = DiffusionPipeline.from_pretrained(path, **dtype_kwarg(dtype), local_files_only=True).to(device)
    for component in pipeline.components.values():
        if hasattr(component, "eval"):
            component.eval()
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def model_resolution(pipeline, model_path: Path) -> int:
    """The side an existing pipeline makes by default (synthgen's own reading of it)."""
    from synthgen.models.loading import LoadedModel

    return LoadedModel(pipeline, "", "", model_path, {}).default_resolution


def class_counts(images: int) -> dict[str, int]:
    labels = list(CLASSES)
    return {label: images // len(labels) + (i < images % len(labels)) for i, label in enumerate(labels)}


def class_counts_from(recipe_data: dict[str, Any]) -> dict[str, int]:
    return {label: spec["count"] for label, spec in recipe_data["classes"].items()}


def recipe_dict(cfg: BenchConfig, model_path: Path, device, resolution: int, out_dir: Path) -> dict[str, Any]:
    return {
        "name": "bench-generation",
        "model": {"pretrained": str(model_path)},
        "classes": {label: {"count": n, "prompts": [CLASSES[label]]} for label, n in class_counts(cfg.images).items()},
        "sampling": {
            "scheduler": "ddim",
            "steps": cfg.steps,
            "guidance_scale": cfg.guidance,
            "resolution": resolution,
            "batch_size": cfg.synthgen_batch if cfg.synthgen_batch == "auto" else int(cfg.synthgen_batch),
            "seed": 0,
            "device": device.type,
        },
        "audit": {"enabled": False},
        "output": {"dir": str(out_dir), "formats": ["parquet", "webdataset"], "image_format": "png"},
    }
