"""MSDM building blocks: a compact latent text-to-image model (VAE + cross-attention UNet + BERT text encoder).

MSDM is the model of the paper "Prompt to Polyp: Medical Text-Conditioned Image Synthesis with Diffusion Models"
(Chaichuk, Gautam, Hicks and Tutubalina, 2025, arXiv:2505.05573): a small, domain-specific latent diffusion model
built like Stable Diffusion (a VAE, a cross-attention UNet and a clinical text encoder) and trained from scratch
on the medical images, where the alternative is fine-tuning a large pretrained model. The paper uses the name
without expanding it, so synthgen does not expand it either.

Everything is a stock diffusers/transformers module, so a trained model is an ordinary `StableDiffusionPipeline`
folder that loads with no synthgen import.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MSDMPreset:
    """Sizes of one MSDM variant. `vae_channels` has one entry per VAE level (levels-1 downsamplings)."""

    vae_channels: tuple[int, ...]
    vae_attention: bool
    latent_channels: int
    unet_channels: tuple[int, ...]
    unet_attention: tuple[bool, ...]  # per level: cross-attention there (costly at high resolution on CPU)
    layers_per_block: int
    attention_head_dim: int  # diffusers passes this on as the number of attention heads (its naming quirk)
    text_hidden: int
    text_layers: int
    text_heads: int
    vocab_size: int
    max_length: int
    vae_layers_per_block: int = 1

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae_channels) - 1)


PRESETS: dict[str, MSDMPreset] = {
    # CPU-sized: trains in about two minutes on two cores at 64 px (16x16x4 latents). Attention only at
    # the 8x8 and 4x4 levels: CPU attention at 16x16 tripled the step time for no visible gain.
    "tiny": MSDMPreset(
        vae_channels=(16, 32, 64),
        vae_attention=False,
        latent_channels=4,
        unet_channels=(32, 64, 64),
        unet_attention=(False, True, True),
        layers_per_block=1,
        attention_head_dim=16,
        text_hidden=64,
        text_layers=2,
        text_heads=2,
        vocab_size=512,
        max_length=32,
    ),
    # Still CPU-trainable (64-128 px, 4x downsampling: 16-32 px latents), a few million parameters: the size
    # for real small data sets when no GPU is at hand (see docs/models.md for step times).
    "small": MSDMPreset(
        vae_channels=(32, 64, 128),
        vae_attention=False,
        latent_channels=4,
        unet_channels=(64, 96, 128),
        unet_attention=(False, True, True),
        layers_per_block=1,
        attention_head_dim=4,
        text_hidden=128,
        text_layers=2,
        text_heads=4,
        vocab_size=2048,
        max_length=48,
    ),
    # The paper's scale (256 px): an SD-style VAE with 8 latent channels and 8x downsampling (32x32x8 latents),
    # a UNet of (256, 256, 512, 1024) channels with two residual blocks per level and cross-attention on the
    # first three levels, and a BERT with 768-wide hidden states. Meant for a GPU.
    "base": MSDMPreset(
        vae_channels=(128, 256, 512, 512),
        vae_attention=True,
        latent_channels=8,
        vae_layers_per_block=2,
        unet_channels=(256, 256, 512, 1024),
        unet_attention=(True, True, True, False),
        layers_per_block=2,
        attention_head_dim=8,
        text_hidden=768,
        text_layers=6,
        text_heads=12,
        vocab_size=8192,
        max_length=77,
    ),
}


def build_vae(preset: MSDMPreset, resolution: int, channels: int = 3):
    """The preset's VAE for `channels`-channel images (1: grayscale in and out, no colour to invent)."""
    from diffusers import AutoencoderKL

    levels = len(preset.vae_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=preset.vae_channels,
        layers_per_block=preset.vae_layers_per_block,
        latent_channels=preset.latent_channels,
        norm_num_groups=min(32 if preset.vae_channels[0] >= 64 else 16, preset.vae_channels[0]),
        mid_block_add_attention=preset.vae_attention,
        sample_size=resolution,
    )


def vae_geometry(vae: Any) -> tuple[int, int]:
    """(latent channels, downsampling factor) of any AutoencoderKL, ours or a pretrained one."""
    return int(vae.config.latent_channels), 2 ** (len(vae.config.block_out_channels) - 1)


def build_unet(preset: MSDMPreset, resolution: int, vae: Any = None, cross_attention_dim: int | None = None):
    """The denoiser, sized for `vae`'s latents (default: the preset's own VAE) and the text encoder's width."""
    from diffusers import UNet2DConditionModel

    latent_channels, downsample = (
        vae_geometry(vae) if vae is not None else (preset.latent_channels, preset.vae_downsample)
    )
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in preset.unet_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(preset.unet_attention))
    return UNet2DConditionModel(
        sample_size=resolution // downsample,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=preset.unet_channels,
        layers_per_block=preset.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=cross_attention_dim or preset.text_hidden,
        attention_head_dim=preset.attention_head_dim,
        norm_num_groups=min(32, preset.unet_channels[0]),
    )


# Always in the vocabulary, so any ASCII word tokenizes into known pieces.
BASE_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?-()/%+'"


def train_tokenizer(captions: Iterable[str], preset: MSDMPreset, out_dir: Path | None = None):
    """A lower-cased WordPiece tokenizer learnt from `captions` (offline), wrapped as `BertTokenizerFast`.

    The vocabulary is built deterministically (the `tokenizers` trainer breaks frequency ties in hash-map
    order, so the same captions gave different vocabularies, hence different models, on every run): the
    special tokens, every character seen (and a-z, 0-9) as word-initial and `##` continuation pieces, then
    whole words by falling frequency (ties alphabetical) up to the preset's vocabulary size. WordPiece's
    greedy longest match still splits an unseen word into known words and characters ("polyps" -> polyp ##s).
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for caption in captions:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(caption)))
    characters = sorted(set(BASE_CHARACTERS) | {c for word in words for c in word})
    vocab = special + characters + [f"##{c}" for c in characters]
    known = set(vocab)
    for word, _ in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab) >= preset.vocab_size:
            break
        if word not in known:
            vocab.append(word)
            known.add(word)
    tokenizer = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    wrapped = BertTokenizerFast(tokenizer_object=tokenizer, model_max_length=preset.max_length, do_lower_case=True)
    if out_dir is not None:
        wrapped.save_pretrained(out_dir)
    return wrapped


def build_text_encoder(preset: MSDMPreset, vocab_size: int):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=preset.text_hidden,
        num_hidden_layers=preset.text_layers,
        num_attention_heads=preset.text_heads,
        intermediate_size=preset.text_hidden * 4,
        max_position_embeddings=max(64, preset.max_length),
    )
    return BertModel(config)  # the pooler is unused, but keeps reloads free of 'missing weights' warnings


def training_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def assemble_pipeline(vae: Any, text_encoder: Any, tokenizer: Any, unet: Any):
    """Put trained parts into a standard `StableDiffusionPipeline` (DDIM by default, steps_offset=1)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler.from_config(
        training_scheduler().config, steps_offset=1, clip_sample=False, set_alpha_to_one=False
    )
    for module in (vae, text_encoder, unet):
        module.eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
