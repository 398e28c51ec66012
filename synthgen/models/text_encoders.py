"""Text encoders of the MSDM model: a small BERT learnt with the UNet, or a pretrained BERT-family or CLIP text model.

Whatever the kind, the encoder is a transformers `PreTrainedModel` whose output[0] is the per-token hidden
states, and the tokenizer pads to `model_max_length`: exactly what `StableDiffusionPipeline.encode_prompt`
does, so the trained pipeline loads and prompts with plain diffusers. The UNet's `cross_attention_dim` is
the encoder's hidden size.

The built-in BERT's WordPiece vocabulary is learnt offline from a corpus: the training captions, or (under
differential privacy) only the recipe's class prompts, so private captions never shape the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.errors import SynthgenError
from synthgen.models.msdm import MSDMPreset, build_text_encoder, train_tokenizer
from synthgen.models.safe_weights import RECIPE_OPT_IN, check_model_folder, safe_kwargs
from synthgen.recipe import TextEncoderConfig
from synthgen.runtime import HUB_ID, first_line, offline

CLIP_TYPES = frozenset({"clip", "clip_text_model"})
# Model types whose position ids default to a (1, L) buffer: passing them expanded to (n, L) gives every
# sample its own activations, which per-sample gradients (Opacus) need. Same values, same outputs.
_EXPLICIT_POSITIONS = frozenset({"bert", "clip", "clip_text_model"})


@dataclass
class TextEncoder:
    """A text model with its tokenizer, and how synthgen got it (for provenance and the model card)."""

    model: Any
    tokenizer: Any
    kind: str  # "built-in BERT", "pretrained BERT-family" or "pretrained CLIP"
    source: str | None  # the pretrained folder or hub id
    trainable: bool
    corpus: str | None = None  # built-in only: "captions" or "prompts"

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> Any:
        """Token ids exactly as StableDiffusionPipeline makes them (padded to max length, truncated)."""
        return self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    def __call__(self, ids: Any, model: Any = None) -> Any:
        """Hidden states for `ids` (no attention mask, like the pipeline); no autograd when frozen."""
        import torch

        model = model if model is not None else self.model
        kwargs = {}
        if self.model.config.model_type in _EXPLICIT_POSITIONS:
            kwargs["position_ids"] = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
        if not self.trainable:
            with torch.no_grad():
                return model(ids, **kwargs)[0]
        return model(ids, **kwargs)[0]


def tokenizer_corpus(config: TextEncoderConfig, private: bool) -> str:
    """`auto` means the class prompts under DP (public text), else the training captions."""
    if config.tokenizer_corpus != "auto":
        return config.tokenizer_corpus
    return "prompts" if private else "captions"


def make_text_encoder(
    config: TextEncoderConfig,
    preset: MSDMPreset,
    *,
    captions: Sequence[str],
    prompts: Sequence[str],
    private: bool,
    base_dir: Path | None = None,
    tokenizer: Any = None,
    allow_pickle: bool = False,
) -> TextEncoder:
    """The recipe's text encoder, frozen (`train: false`) or trainable; `tokenizer` reuses a saved one (resume)."""
    if config.pretrained:
        model, loaded_tokenizer, kind = load_pretrained(config.pretrained, base_dir, preset.max_length, allow_pickle)
        encoder = TextEncoder(model, tokenizer or loaded_tokenizer, kind, config.pretrained, config.train)
    else:
        corpus = tokenizer_corpus(config, private)
        if tokenizer is None:
            texts = list(prompts) if corpus == "prompts" else list(captions)
            if not texts:
                raise SynthgenError(f"model.train.text_encoder: no {corpus} to learn the tokenizer's vocabulary from")
            tokenizer = train_tokenizer(texts, preset)
        model = build_text_encoder(preset, len(tokenizer))
        encoder = TextEncoder(model, tokenizer, "built-in BERT", None, config.train, corpus)
    encoder.model.requires_grad_(encoder.trainable)
    if not encoder.trainable:
        encoder.model.eval()
    return encoder


def _locate(name: str, base_dir: Path | None) -> tuple[str, bool]:
    """(what to pass to from_pretrained, local_files_only): a folder relative to the recipe, or a hub id."""
    candidate = Path(name).expanduser()
    candidate = base_dir / candidate if base_dir is not None else candidate  # an absolute path stays itself
    if candidate.is_dir():
        return str(candidate), True
    if not HUB_ID.match(name):
        raise SynthgenError(
            f"model.train.text_encoder.pretrained: '{name}' is neither an existing folder nor a hub id (owner/name)"
        )
    return name, offline()


def load_pretrained(
    name: str, base_dir: Path | None, max_length: int, allow_pickle: bool = False
) -> tuple[Any, Any, str]:
    """A BERT-family (AutoModel) or CLIP text model (detected by config.model_type) and its tokenizer.

    Safetensors only unless `allow_pickle` (model.allow_pickle); never remote code.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

    where, local_only = _locate(name, base_dir)
    field = "model.train.text_encoder.pretrained"
    if local_only and Path(where).is_dir():
        check_model_folder(Path(where), field, allow_pickle)
    options = {"local_files_only": local_only, "trust_remote_code": False}
    try:
        model_type = AutoConfig.from_pretrained(where, **options).model_type
        model_class = CLIPTextModel if model_type in CLIP_TYPES else AutoModel
        model = model_class.from_pretrained(where, **options, **safe_kwargs(allow_pickle))
        kind = "pretrained CLIP" if model_type in CLIP_TYPES else "pretrained BERT-family"
        tokenizer = AutoTokenizer.from_pretrained(where, **options)
    except (OSError, ValueError, KeyError) as error:
        hint = f" (pickled weights need {RECIPE_OPT_IN})" if "safetensors" in str(error) and not allow_pickle else ""
        raise SynthgenError(f"{field}: cannot load text model '{name}': {first_line(error)}{hint}") from None
    if not hasattr(model.config, "hidden_size"):
        raise SynthgenError(f"{field}: '{name}' ({model_type}) has no hidden_size; use a BERT-family or CLIP model")
    positions = int(getattr(model.config, "max_position_embeddings", max_length) or max_length)
    if model_type not in CLIP_TYPES:  # BERT tokenizers say 512: cross-attention over 512 tokens is waste
        tokenizer.model_max_length = min(max_length, positions)
    else:
        tokenizer.model_max_length = min(int(tokenizer.model_max_length), positions)
    return model, tokenizer, kind


def count_parameters(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))
