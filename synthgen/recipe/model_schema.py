"""The recipe's `model:` and `privacy:` blocks: a pretrained pipeline, optionally LoRA-fine-tuned, or an MSDM
trained by synthgen, and differentially private training (DP-SGD) of whatever sees the training data.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from synthgen.recipe.schema_base import FieldError, NonEmptyStr, _Strict
from synthgen.sources.spec import SourceSpec

Precision = Literal["auto", "no", "fp16", "bf16"]


class TrainingLoopConfig(_Strict):
    """Settings every synthgen training loop shares (MSDM from scratch and LoRA fine-tuning)."""

    data: SourceSpec = Field(description="Training images with captions (`text`) and labels.")
    resolution: PositiveInt = Field(64, multiple_of=16, description="Training and generation side in pixels.")
    batch_size: PositiveInt = Field(16, description="Images per optimizer step (the logical batch).")
    gradient_accumulation: PositiveInt = Field(
        1, description="Micro-batches per optimizer step (each batch_size / gradient_accumulation images)."
    )
    learning_rate: PositiveFloat = Field(1e-3)
    prompt_dropout: float = Field(0.1, ge=0, lt=1, description="Share of captions replaced by '' (for CFG).")
    mixed_precision: Precision = Field(
        "auto", description="auto: bf16 on a GPU that has it, else fp16 on GPU; none on CPU."
    )
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the denoiser's weights (0: no EMA).")
    validation_split: float = Field(
        0.05, ge=0, lt=0.5, description="Share of training images held out for the validation loss (0: none)."
    )
    split_by: str | None = Field(
        None,
        min_length=1,
        description="Keep groups whole in the validation split: a metadata column (e.g. patient_id; an empty value "
        "makes the image its own group), or `sequence` (video frames inferred from file-name numbering). "
        "Default: split by image.",
    )
    checkpoint_every: PositiveInt = Field(
        500, description="Optimizer steps between checkpoints (resume points, validation loss, sample grid)."
    )
    max_minutes: PositiveFloat | None = Field(
        None,
        description="Training time budget in minutes (all phases, across resumes): once spent, training stops at "
        "the next checkpoint and the model is finished there (its card says so). Default: no budget.",
    )
    seed: int = Field(0)

    def micro_batch_size(self) -> int:
        return max(1, self.batch_size // self.gradient_accumulation)


class TextEncoderConfig(_Strict):
    """The text encoder: a small BERT learnt with the UNet (default) or a pretrained BERT-family / CLIP model."""

    pretrained: str | None = Field(
        None,
        min_length=1,
        description="Local folder or hub id of a BERT-family (BiomedBERT, BioClinicalBERT, CXR-BERT) or CLIP text "
        "model with its tokenizer; default: a small BERT trained from scratch with the UNet.",
    )
    train: bool = Field(True, description="Fine-tune the text encoder with the UNet (false: frozen).")
    tokenizer_corpus: Literal["auto", "captions", "prompts"] = Field(
        "auto",
        description="What the built-in BERT's WordPiece vocabulary is learnt from: the training captions, or only "
        "the recipe's class prompts (public text). auto: prompts when `privacy` is set, else captions.",
    )


class TrainingConfig(TrainingLoopConfig):
    """Train a compact MSDM (VAE + UNet + text encoder) on `data` before generating."""

    preset: Literal["tiny", "small", "base"] = Field("tiny", description="Model size preset (see docs/models.md).")
    vae: str | None = Field(
        None, min_length=1, description="Folder of a pretrained AutoencoderKL to use instead of training one."
    )
    vae_steps: NonNegativeInt = Field(600, description="Optimizer steps for the VAE (ignored with `vae`).")
    channels: Literal[1, 3, "auto"] = Field(
        "auto",
        description="Image channels the model trains on and generates: 1 (grayscale in, grayscale out), 3 (RGB), or "
        "auto: 1 when at least 95% of the training images are grayscale (JPEG colour noise tolerated), else 3 (3 "
        "under `privacy`, where the choice must not "
        "depend on the private data).",
    )
    unet_steps: PositiveInt = Field(1500, description="Optimizer steps for the UNet and text encoder.")
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig)


class LoRAConfig(TrainingLoopConfig):
    """LoRA fine-tuning (peft) of a pretrained SD-family pipeline's UNet on `data`."""

    resolution: PositiveInt | None = Field(  # type: ignore[assignment]
        None, multiple_of=16, description="Training side in pixels; default: the pipeline's."
    )
    learning_rate: PositiveFloat = Field(1e-4)
    steps: PositiveInt = Field(1000, description="Optimizer steps.")
    rank: PositiveInt = Field(8, description="LoRA rank.")
    alpha: PositiveFloat | None = Field(None, description="LoRA alpha; default: the rank.")
    target_modules: list[NonEmptyStr] = Field(
        ["to_q", "to_k", "to_v", "to_out.0"], min_length=1, description="UNet modules that get LoRA adapters."
    )


class PrivacyConfig(_Strict):
    """Differentially private training (DP-SGD, Opacus) of everything that sees the training data."""

    target_epsilon: PositiveFloat = Field(description="Privacy budget the whole training may spend.")
    delta: float | None = Field(
        None, gt=0, lt=1, description="DP delta; default: 1 / (10 x number of training images)."
    )
    max_grad_norm: PositiveFloat = Field(1.0, description="Per-sample gradient clipping norm.")
    accountant: Literal["rdp", "prv", "gdp"] = Field("prv", description="Opacus privacy accountant.")


class ModelConfig(_Strict):
    """A pretrained diffusers pipeline (`pretrained`, optionally LoRA-fine-tuned) or an MSDM trained by synthgen."""

    pretrained: str | None = Field(
        None, min_length=1, description="Local diffusers pipeline folder or Hugging Face hub id."
    )
    revision: str | None = Field(None, min_length=1, description="Hub revision (with a hub id).")
    train: TrainingConfig | None = Field(None, description="Train an MSDM on this data instead.")
    lora: LoRAConfig | None = Field(None, description="LoRA-fine-tune the `pretrained` pipeline on this data.")
    allow_pickle: bool = Field(
        False,
        description="Also load pickled weights (.bin, .pt, .ckpt) of `pretrained`, `train.vae` and "
        "`train.text_encoder.pretrained`. Unpickling can run any code: only for files you trust. Default: "
        "safetensors only; a folder with only pickled weights is refused. Remote code is never run.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelConfig:
        if (self.pretrained is None) == (self.train is None):
            which = "neither is set" if self.pretrained is None else "both are set"
            raise ValueError(f"give exactly one of `pretrained` or `train` ({which})")
        if self.lora is not None and self.pretrained is None:
            raise FieldError(("lora",), "LoRA fine-tunes a pretrained pipeline; set `pretrained` too")
        return self

    def training_data(self) -> SourceSpec | None:
        """The data this recipe trains or fine-tunes on (None for a pretrained model used as is)."""
        loop = self.train or self.lora
        return loop.data if loop else None
