"""Refuse weight files that run code when loaded unless the user opted in (docs/security.md).

A pickled checkpoint (`.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`) can execute anything while it is unpickled, and a
TorchScript file is a program. synthgen loads model weights from safetensors only, and says in one line which file
it refused and how to opt in (`model.allow_pickle: true`, `synthgen audit --allow-pickle`, or `?allow_pickle=true`
in an embedder name). The checks look at file names only, before any library opens a file; the loaders also pass
`use_safetensors=True`, so a library never falls back to a pickle on its own. Checkpoints synthgen writes itself
(`training/checkpoints.py`) are read with `torch.load(weights_only=True)` and are not checked here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthgen.errors import SynthgenError

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
SAFE_SUFFIX = ".safetensors"
RECIPE_OPT_IN = "model.allow_pickle: true"
TRUTHY = frozenset({"1", "true", "yes", "on"})


def safe_kwargs(allow_pickle: bool) -> dict[str, Any]:
    """from_pretrained keywords (diffusers and transformers): safetensors only unless the user opted in."""
    return {} if allow_pickle else {"use_safetensors": True}


def parse_flag(value: bool | str, what: str) -> bool:
    """An `?allow_pickle=...` option (a string in embedder names) as a bool."""
    if isinstance(value, bool):
        return value
    if value.strip().lower() in TRUTHY | {"0", "false", "no", "off"}:
        return value.strip().lower() in TRUTHY
    raise SynthgenError(f"{what}: allow_pickle must be true or false, got {value!r}")


def refusal(field: str, file: Path, opt_in: str, kind: str = "pickled weights") -> SynthgenError:
    convert = "" if kind.startswith("TorchScript") else "convert it to .safetensors, or "
    why = f"{kind} can run code when loaded"
    return SynthgenError(f"{field}: refusing to load {file}: {why}; {convert}opt in with {opt_in} if you trust it")


def pickled_only(folder: Path) -> Path | None:
    """The first pickled weight file directly in `folder` when no safetensors file lies beside it, else None."""
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if any(p.name.endswith(SAFE_SUFFIX) for p in files):
        return None
    return next((p for p in files if p.suffix.lower() in PICKLE_SUFFIXES), None)


def check_model_folder(folder: Path, field: str, allow_pickle: bool, opt_in: str = RECIPE_OPT_IN) -> None:
    """A transformers / diffusers model folder (weights directly inside): refuse pickle-only weights."""
    if allow_pickle:
        return
    found = pickled_only(Path(folder))
    if found is not None:
        raise refusal(field, found, opt_in)


def check_pipeline_folder(folder: Path, field: str, allow_pickle: bool, opt_in: str = RECIPE_OPT_IN) -> None:
    """A diffusers pipeline folder: every component `model_index.json` names is checked, before any is loaded."""
    if allow_pickle:
        return
    folder = Path(folder)
    for name in pipeline_components(folder):
        check_model_folder(folder / name, field, False, opt_in)


def pipeline_components(folder: Path) -> list[str]:
    """The component subfolders of a pipeline (from model_index.json; every subfolder when it cannot be read)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        names = [name for name, value in index.items() if isinstance(value, list) and not name.startswith("_")]
    except (OSError, ValueError, AttributeError):
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(names)


def check_weight_file(file: Path, field: str, allow_pickle: bool, opt_in: str, *, torchscript: bool = False) -> None:
    """One weight file: a TorchScript program, or a pickled checkpoint, needs the opt-in; safetensors never does."""
    if allow_pickle:
        return
    file = Path(file)
    if torchscript:
        raise refusal(field, file, opt_in, "TorchScript files (programs stored as pickles)")
    if not file.name.endswith(SAFE_SUFFIX):
        pickled = file.suffix.lower() in PICKLE_SUFFIXES
        raise refusal(field, file, opt_in, "pickled weights" if pickled else "weights that are not safetensors")
