"""The model-cache keys of trained models: `training_key` (MSDM) and `lora_key` (LoRA fine-tune).

`synthgen.resolve` names a cached model folder after its key, so a model is reused exactly when everything
that shaped its weights is the same. Any change to what goes into a key (or to how it is hashed) retrains
every user's cached models: change them only on purpose.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from synthgen import __version__
from synthgen.recipe import LoRAConfig, PrivacyConfig, TrainingConfig, TrainingLoopConfig

# Settings added after models were cached: left out of the key while at this default, so a recipe that does not
# use them keeps its key (and its cached model); set, they count like every other setting.
NEUTRAL_DEFAULTS: dict[str, object] = {"max_minutes": None, "split_by": None, "channels": "auto"}


def neutral_fields(config: TrainingLoopConfig) -> set[str]:
    """The fields of `NEUTRAL_DEFAULTS` that `config` leaves at their default (left out of keys and run records)."""
    return {name for name, default in NEUTRAL_DEFAULTS.items() if getattr(config, name, default) == default}


def key_settings(config: TrainingLoopConfig) -> dict[str, Any]:
    """The settings a key covers: all but the data (keyed by its fingerprint) and new fields left at default."""
    return config.model_dump(mode="json", exclude={"data"} | neutral_fields(config))


def training_key(
    config: TrainingConfig,
    data_fingerprint: str,
    privacy: PrivacyConfig | None = None,
    prompts: dict[str, list[str]] | None = None,
) -> str:
    """Cache key of a trained MSDM: settings, data, privacy block, tokenizer prompts, synthgen version."""
    blob: dict[str, Any] = {
        "settings": key_settings(config),
        "data": data_fingerprint,
        "version": __version__,
    }
    if privacy is not None:
        blob["privacy"] = privacy.model_dump(mode="json")
    if prompts:
        blob["prompts"] = prompts
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def lora_key(config: LoRAConfig, data_fingerprint: str, base_sha256: str) -> str:
    """Cache key of a LoRA fine-tune: settings, training data, base weights and synthgen version."""
    settings = key_settings(config)
    blob = {"settings": settings, "data": data_fingerprint, "base": base_sha256, "version": __version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
