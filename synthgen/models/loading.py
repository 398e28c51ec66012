"""A diffusers pipeline folder loaded for sampling: every component in eval mode, plus synthgen's notes on it.

Models never import training: this reads what training wrote beside the weights (`synthgen_model.json`,
`privacy.json`) as plain JSON.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.errors import SynthgenError
from synthgen.models.safe_weights import check_pipeline_folder, safe_kwargs
from synthgen.runtime import dtype_kwarg, first_line, pick_dtype, quiet_libraries


@dataclass
class LoadedModel:
    """A pipeline ready to sample, plus what provenance needs to know about it."""

    pipeline: Any
    model_id: str
    model_sha256: str
    path: Path
    info: dict[str, Any]

    @property
    def default_resolution(self) -> int:
        """The side the pipeline makes by default: its own `height` default, else sample size x VAE scale factor."""
        pipe = self.pipeline
        height = inspect.signature(pipe.__call__).parameters.get("height")
        if height is not None and isinstance(height.default, int):  # Kandinsky: fixed 512 default
            return height.default
        sample_size = getattr(pipe, "default_sample_size", None)
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if not isinstance(sample_size, int) and denoiser is not None:
            sample_size = getattr(denoiser.config, "sample_size", None)
        scale = getattr(pipe, "vae_scale_factor", None)
        if isinstance(sample_size, int) and isinstance(scale, int):
            return sample_size * scale
        return 512


def load_model(
    path: Path, model_id: str, model_sha256: str, device, allow_pickle: bool = False, *, dtype: Any = None
) -> LoadedModel:
    """Load a diffusers pipeline folder with every component in eval mode on `device`.

    Safetensors only unless `allow_pickle` (the recipe's `model.allow_pickle`): pickled weights can run code.
    `dtype` (internal: tests and benches) overrides `pick_dtype(device)`, e.g. bf16 on a CPU, so the half-
    precision path of a GPU runs where there is none; users get what `pick_dtype` chooses.
    """
    from diffusers import DiffusionPipeline

    check_pipeline_folder(Path(path), "model.pretrained", allow_pickle)
    quiet_libraries()
    dtype = pick_dtype(device) if dtype is None else dtype
    try:
        pipeline = DiffusionPipeline.from_pretrained(
            path, **dtype_kwarg(dtype), local_files_only=True, **safe_kwargs(allow_pickle)
        )
    except (OSError, ValueError, ImportError) as error:
        reason = first_line(error)
        raise SynthgenError(f"model {model_id}: cannot load diffusers pipeline from {path}: {reason}") from None
    pipeline = pipeline.to(device)
    for component in pipeline.components.values():
        if hasattr(component, "eval"):
            component.eval()
    if hasattr(pipeline, "safety_checker") and getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None  # medical images trip NSFW filters; outputs are audited instead
    pipeline.set_progress_bar_config(disable=True)
    if "prompt" not in inspect.signature(pipeline.__call__).parameters:
        raise SynthgenError(
            f"model {model_id}: {type(pipeline).__name__} does not take a text prompt (a decoder or prior alone?); "
            "save the text-to-image pipeline, e.g. AutoPipelineForText2Image.from_pretrained(...).save_pretrained()"
        )
    return LoadedModel(pipeline, model_id, model_sha256, Path(path), read_model_info(path))


def read_model_info(path: Path) -> dict[str, Any]:
    """synthgen's notes beside the weights: training provenance and, for DP models, the privacy record."""
    info: dict[str, Any] = {}
    if (Path(path) / "synthgen_model.json").exists():
        info = json.loads((Path(path) / "synthgen_model.json").read_text())
    if (Path(path) / "privacy.json").exists():
        info["dp"] = json.loads((Path(path) / "privacy.json").read_text())
    return info
