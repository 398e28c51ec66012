"""Tiny, randomly initialised diffusers pipelines of each family synthgen supports, built offline for tests.

Each factory returns a pipeline small enough to sample 32 px images on a CPU in a second or two, with real
component classes (CLIP / T5 text encoders, VAE or MoVQ, UNet / FLUX transformer / prior) so that loading
and calling them goes through the same diffusers code as the full-size checkpoints. Tokenizers are built
from in-memory vocabularies (no download): a byte-level CLIP BPE with no merges, and a T5 Unigram.
Component sizes follow diffusers' own `get_dummy_components` test fixtures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLIP_MAX_LENGTH = 77
TEXT_HIDDEN = 32


def clip_tokenizer():
    """A CLIP BPE tokenizer whose vocabulary is the 256 byte symbols (with and without `</w>`): no merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    symbols = sorted(ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def _clip_config(tokenizer, projection_dim: int = TEXT_HIDDEN, hidden: int = TEXT_HIDDEN):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=CLIP_MAX_LENGTH,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )


def clip_text_encoder(tokenizer, with_projection: bool = False, seed: int = 0):
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(_clip_config(tokenizer))


def t5_tokenizer():
    """A T5 Unigram tokenizer over lower-case letters, digits and a few words (pad 0, eos 1, unk 2)."""
    from transformers import T5Tokenizer

    words = ["▁colonoscopy", "▁polyp", "▁ulcer", "▁normal", "▁mucosa", "▁showing", "▁chest", "▁x-ray"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789-,.")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(word, -1.0) for word in words] + [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def t5_encoder(tokenizer, seed: int = 0):
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_HIDDEN,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(config)


def sd_vae(latent_channels: int = 4, seed: int = 0, **extra: Any):
    """Two levels: a 32 px image is a 16x16 latent (vae_scale_factor 2)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
        **extra,
    )


def sd_unet(seed: int = 0, **extra: Any):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    settings: dict[str, Any] = {
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": TEXT_HIDDEN,
        "attention_head_dim": 8,
        "norm_num_groups": 4,
    }
    return UNet2DConditionModel(**{**settings, **extra})


def sd_pipeline(v_prediction: bool = False, seed: int = 0):
    """SD 1.5 layout (epsilon) or, with `v_prediction`, SD 2.1 layout (v-prediction, linear projections)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer = clip_tokenizer()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )
    unet_extra = {"use_linear_projection": True} if v_prediction else {}
    return StableDiffusionPipeline(
        vae=sd_vae(seed=seed),
        text_encoder=clip_text_encoder(tokenizer, seed=seed),
        tokenizer=tokenizer,
        unet=sd_unet(seed=seed, **unet_extra),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_pipeline(seed: int = 0):
    """SDXL layout: two CLIP encoders (the second with projection) and `text_time` added conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    time_dim = 8
    unet = sd_unet(
        seed=seed,
        cross_attention_dim=2 * TEXT_HIDDEN,  # both encoders' hidden states, concatenated
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + TEXT_HIDDEN,  # 6 size/crop numbers + pooled text
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=sd_vae(seed=seed),
        text_encoder=clip_text_encoder(tokenizer, seed=seed),
        text_encoder_2=clip_text_encoder(tokenizer_2, with_projection=True, seed=seed + 1),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )


def flux_pipeline(guidance_embeds: bool = True, seed: int = 0):
    """FLUX layout: CLIP (pooled) + T5 (sequence) text, a FLUX transformer, flow-matching Euler scheduler.

    `guidance_embeds` True is FLUX.1-dev (guidance-distilled: the guidance scale is an input), False schnell.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        pooled_projection_dim=TEXT_HIDDEN,
        axes_dims_rope=[4, 4, 8],
        guidance_embeds=guidance_embeds,
    )
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    vae = sd_vae(seed=seed, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip_text_encoder(tokenizer, seed=seed),
        tokenizer=tokenizer,
        text_encoder_2=t5_encoder(tokenizer_2, seed=seed),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def kandinsky22_pipeline(seed: int = 0):
    """Kandinsky 2.2 as one combined pipeline: CLIP prior (text -> image embedding) + UNet decoder + MoVQ."""
    import torch
    from diffusers import (
        DDPMScheduler,
        KandinskyV22CombinedPipeline,
        PriorTransformer,
        UnCLIPScheduler,
        UNet2DConditionModel,
        VQModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=TEXT_HIDDEN, num_layers=1)
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))  # zero std would map every embed to 0
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=TEXT_HIDDEN,
            image_size=32,
            projection_dim=TEXT_HIDDEN,
            intermediate_size=37,
            num_attention_heads=4,
            num_channels=3,
            num_hidden_layers=2,
            patch_size=8,
        )
    )
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=8,
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=TEXT_HIDDEN,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
        sample_size=16,
    )
    movq = VQModel(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        in_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        out_channels=3,
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        vq_embed_dim=4,
    )
    tokenizer = clip_tokenizer()
    return KandinskyV22CombinedPipeline(
        unet=unet,
        scheduler=DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule="linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            prediction_type="epsilon",
            steps_offset=1,
        ),
        movq=movq,
        prior_prior=prior,
        prior_image_encoder=image_encoder,
        prior_text_encoder=clip_text_encoder(tokenizer, with_projection=True, seed=seed),
        prior_tokenizer=tokenizer,
        prior_scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log",
            prediction_type="sample",
            num_train_timesteps=1000,
            clip_sample=True,
            clip_sample_range=10.0,
        ),
        prior_image_processor=CLIPImageProcessor(crop_size=32, size=32, do_center_crop=True, do_resize=True),
    )


FACTORIES = {
    "sd15": lambda: sd_pipeline(),
    "sd21-v": lambda: sd_pipeline(v_prediction=True),
    "sdxl": lambda: sdxl_pipeline(),
    "flux-dev": lambda: flux_pipeline(guidance_embeds=True),
    "flux-schnell": lambda: flux_pipeline(guidance_embeds=False),
    "kandinsky22": lambda: kandinsky22_pipeline(),
}


def save_pipeline(family: str, folder: Path) -> Path:
    """Build the tiny pipeline of `family` and save it as a diffusers folder (what `model.pretrained` names)."""
    FACTORIES[family]().save_pretrained(folder, safe_serialization=True)
    return folder
