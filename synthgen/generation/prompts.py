"""Each unique prompt's text embedding computed once per Generator, and the unconditional / negative one once.

A stock Stable Diffusion call encodes its prompts and a batch of unconditional (or negative) prompts on every
call; a build of many batches of a few prompts repeats that work. Rows of the text encoder do not depend on
their batch neighbours (padding to the tokenizer's max length, no cross-row ops), so the cached rows are the
same bytes as the ones the pipeline would compute (tests/test_generation_speed.py checks the images).
"""

from __future__ import annotations

from typing import Any


def caches_prompts(pipeline: Any, accepts: set[str]) -> bool:
    """Whether `pipeline` takes `prompt_embeds` + `negative_prompt_embeds` made by its own `encode_prompt`.

    Only Stable-Diffusion-style pipelines (MSDM included): SDXL, FLUX and Kandinsky need pooled embeddings,
    other encoders or a prior, and keep taking prompts.
    """
    from diffusers import StableDiffusionPipeline

    return isinstance(pipeline, StableDiffusionPipeline) and {"prompt_embeds", "negative_prompt_embeds"} <= accepts


class PromptEmbeddings:
    """`prompt_embeds` / `negative_prompt_embeds` call arguments from per-prompt rows computed once."""

    def __init__(self, pipeline: Any, negative_prompt: str, guidance: bool):
        self.pipeline = pipeline
        self.negative_prompt = negative_prompt
        self.guidance = guidance
        self._rows: dict[str, Any] = {}
        self._negative: Any = None

    def _encode(self, text: str) -> Any:
        """One row exactly as `encode_prompt` computes a prompt (the unconditional branch runs the same calls)."""
        pipe = self.pipeline
        embeds, _ = pipe.encode_prompt([text], pipe._execution_device, 1, False)
        return embeds

    def row(self, prompt: str) -> Any:
        if prompt not in self._rows:
            self._rows[prompt] = self._encode(prompt)
        return self._rows[prompt]

    def warm(self, prompts: list[str]) -> None:
        """Encode every prompt of `prompts` (and the unconditional one) now, on the calling thread: denoising
        streams then only read the rows."""
        for prompt in dict.fromkeys(prompts):
            self.row(prompt)
        if self.guidance and self._negative is None:
            self._negative = self._encode(self.negative_prompt)

    def call_kwargs(self, prompts: list[str]) -> dict[str, Any]:
        """The embeddings of `prompts` (and, with guidance, as many unconditional rows) for a pipeline call."""
        import torch

        kwargs = {"prompt_embeds": torch.cat([self.row(p) for p in prompts])}
        if self.guidance:
            if self._negative is None:
                self._negative = self._encode(self.negative_prompt)  # "" is the unconditional prompt
            kwargs["negative_prompt_embeds"] = self._negative.repeat(len(prompts), 1, 1)
        return kwargs
