"""Audit embedders by name: `pixel`, registered plug-ins, and "prefix:ARG?k=v" names that load a model from local
weights ("sscd:/path", "dinov2:/path", "timm:/path", "open_clip:/path" are built in: model_embedders.py).

Above embedders.py and model_embedders.py: it imports them, neither imports it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from synthgen.audit.index.embedders import Embedder, PixelEmbedder
from synthgen.errors import SynthgenError

_REGISTRY: dict[str, Callable[[], Embedder]] = {"pixel": PixelEmbedder}
# "prefix:ARG[?option=value&...]" names, e.g. "dinov2:/models/dinov2-small": factory(ARG, **options).
_PREFIXES: dict[str, Callable[..., Embedder]] = {}
# Built in but loaded on first use: they import torch and a model library (model_embedders.py).
MODEL_PREFIXES = ("sscd", "dinov2", "timm", "open_clip")


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    """Make `factory` available as `get_embedder(name)` (and thus as recipe `audit.embedder: name`)."""
    _REGISTRY[name] = factory


def register_embedder_prefix(prefix: str, factory: Callable[..., Embedder]) -> None:
    """Make `get_embedder("prefix:ARG?k=v")` call `factory(ARG, k="v")`, e.g. to load a model from a path."""
    _PREFIXES[prefix] = factory


def known_embedders() -> list[str]:
    return sorted(_REGISTRY)


def known_embedder_prefixes() -> list[str]:
    return sorted(set(_PREFIXES) | set(MODEL_PREFIXES))


def _prefix_factory(prefix: str) -> Callable[..., Embedder] | None:
    if prefix not in _PREFIXES and prefix in MODEL_PREFIXES:
        from synthgen.audit.index.model_embedders import MODEL_FACTORIES

        return MODEL_FACTORIES[prefix]
    return _PREFIXES.get(prefix)


def parse_embedder_name(name: str) -> tuple[str, str, dict[str, str]]:
    """Split "prefix:ARG?k=v&k2=v2" into (prefix, ARG, {k: v}); options are optional."""
    prefix, _, rest = name.partition(":")
    arg, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SynthgenError(f"audit embedder '{name}': option '{item}' is not key=value")
        options[key.strip()] = value.strip()
    return prefix.strip(), arg.strip(), options


def get_embedder(name: str | Embedder) -> Embedder:
    """Look up an embedder by name, or load one from weights with "prefix:PATH" (instances pass through)."""
    if not isinstance(name, str):
        return name
    factory = _REGISTRY.get(name)
    if factory is not None:
        return factory()
    known = ", ".join(known_embedders() + [f"{p}:PATH" for p in known_embedder_prefixes()])
    prefix, arg, options = parse_embedder_name(name)
    model_factory = _prefix_factory(prefix)
    if model_factory is None:
        raise SynthgenError(f"unknown audit embedder '{name}'; known embedders: {known}")
    if not arg:
        raise SynthgenError(f"audit embedder '{prefix}' needs a model path or id, e.g. '{prefix}:/path/to/model'")
    try:
        inspect.signature(model_factory).bind(arg, **options)
    except TypeError as error:
        raise SynthgenError(f"audit embedder '{name}': bad option ({error})") from None
    return model_factory(arg, **options)
