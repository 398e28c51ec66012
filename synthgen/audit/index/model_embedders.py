"""Audit embedders backed by neural networks loaded from local weights (nothing is ever downloaded).

Selected as `audit.embedder` / `--embedder` with a model location after a prefix:
  sscd:/models/sscd_disc_mixup.torchscript.pt?allow_pickle=true   SSCD descriptors (TorchScript: opt-in)
  dinov2:/models/dinov2-small (or a cached hub id)   transformers AutoModel + AutoImageProcessor
  timm:/models/vit-dir | timm:ARCH:/weights.pth | timm:ARCH | timm:hf-hub:org/name
  open_clip:/models/BiomedCLIP (open_clip_config.json + weights) | open_clip:ARCH:/checkpoint.pt
Options follow a "?": `dinov2:/m?pooling=mean`, `sscd:/m.pt?resize=288`, `...?device=cpu&batch_size=16`.
Weights load from safetensors only; pickled checkpoints and TorchScript files (SSCD) run code when loaded, so they
need `?allow_pickle=true` (docs/security.md); remote code is never run.
torch and the model library are imported only when such an embedder is created; a missing library or
missing weights is a one-line SynthgenError naming the path. Outputs are L2-normalised, so the inner
product is the cosine similarity.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synthgen.audit.index.embedders import Embedder, l2_normalise
from synthgen.errors import SynthgenError
from synthgen.models.safe_weights import check_model_folder, check_weight_file, parse_flag, safe_kwargs
from synthgen.runtime import first_line, pick_device, use_cpu_threads

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".torchscript")
_CALIBRATE = "set the threshold on known copies of your data"
_DEVICE_OPTION = "audit embedder option 'device'"  # names the setting in pick_device's errors


class ModelEmbedder:
    """Batches images through `preprocess` -> `forward` under `torch.inference_mode()` on the chosen device."""

    def __init__(
        self,
        name: str,
        description: str,
        preprocess: Callable[[list[Image.Image]], Any],
        forward: Callable[[Any], Any],
        *,
        device: str | None = None,
        batch_size: int | str = 32,
        cache_config: Any = None,
    ) -> None:
        self.name = name
        self.description = description
        self.cache_config = cache_config  # keys the audit index cache: weights' sizes/dates and options
        self.device = pick_device(device, _DEVICE_OPTION)
        use_cpu_threads()  # the CPUs synthgen may use, not every core
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise SynthgenError(f"audit embedder '{name}': batch_size must be >= 1")
        self._preprocess = preprocess
        self._forward = forward
        self.dim = int(self._features([Image.new("RGB", (64, 64), (128, 128, 128))]).shape[1])

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return l2_normalise(self.raw(images))

    def raw(self, images: list[Image.Image]) -> np.ndarray:
        """The network's features as they come out, not L2-normalised (FD and KID are defined on these)."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [self._features(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)

    def _features(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            pixels = self._preprocess([image.convert("RGB") for image in images]).to(self.device)
            features = self._forward(pixels)
        return features.float().reshape(len(images), -1).cpu().numpy()


def require(module: str, pip_name: str, prefix: str) -> Any:
    """Import a library an embedder needs, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SynthgenError(
            f"audit embedder '{prefix}' needs {module} ({error}); install it with: pip install {pip_name}"
        ) from None


def looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~", "\\")) or Path(text).suffix in WEIGHT_SUFFIXES


def local_weights(text: str, what: str) -> Path:
    """An existing file or folder, or a one-line error naming the path."""
    path = Path(text).expanduser()
    if not path.exists():
        raise SynthgenError(f"{what} weights not found: {path} (synthgen loads models from local files only)")
    return path.resolve()


def weights_identity(path: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime) of the weight files, so replacing the weights invalidates cached indexes."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [
        (p.name if p == path else p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files
    ]


def hub_snapshot(repo_id: str, what: str) -> Path:
    """The Hugging Face cache folder of `repo_id`, without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as error:
        raise SynthgenError(
            f"{what} '{repo_id}' is not a local path and is not in the Hugging Face cache "
            f"({type(error).__name__}); download it first or give a local folder"
        ) from None


def check_weights(prefix: str, location: Path | str, allow_pickle: bool | str, *, torchscript: bool = False) -> bool:
    """Refuse pickled (or TorchScript) weights at `location` unless `?allow_pickle=true`; returns the opt-in.

    A hub id (str) is not checked here: its loader is told to take safetensors only."""
    allowed = parse_flag(allow_pickle, f"audit embedder '{prefix}'")
    field, opt_in = f"audit embedder '{prefix}'", f"?allow_pickle=true after the {prefix}: path"
    if isinstance(location, str):
        return allowed
    if location.is_dir():
        check_model_folder(location, field, allowed, opt_in)
    else:
        check_weight_file(location, field, allowed, opt_in, torchscript=torchscript)
    return allowed


def load_failed(what: str, where: object, error: BaseException) -> SynthgenError:
    return SynthgenError(f"cannot load {what} from {where}: {type(error).__name__}: {first_line(error)[:300]}")


def pil_batch(images: list[Image.Image], size: int, *, crop: bool) -> Any:
    """ImageNet-normalised (n, 3, size, size) tensor: square resize, or short-side resize + centre crop."""
    import torch

    arrays = []
    for image in images:
        if crop:
            scale = size / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), Image.Resampling.BILINEAR)
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        else:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    batch = (np.stack(arrays) - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))


def sscd_embedder(
    path: str,
    resize: str = "320",
    device: str | None = None,
    batch_size: int | str = 32,
    allow_pickle: bool | str = False,
) -> ModelEmbedder:
    """SSCD TorchScript descriptors; `resize`: "320" (square 320x320, SSCD's batch setting) or "288"
    (short side 288 + centre crop). TorchScript is a program: it needs `allow_pickle=true`."""
    torch = require("torch", "torch", "sscd")
    file = local_weights(path, "SSCD")
    if resize not in ("320", "288"):
        raise SynthgenError(f"audit embedder 'sscd': resize must be 320 or 288, got {resize!r}")
    if file.is_dir():
        raise SynthgenError(f"SSCD expects a TorchScript file (e.g. sscd_disc_mixup.torchscript.pt), got folder {file}")
    check_weights("sscd", file, allow_pickle, torchscript=True)
    try:
        model = torch.jit.load(str(file), map_location="cpu").eval()
    except Exception as error:
        raise load_failed("SSCD TorchScript model", file, error) from None
    model.to(pick_device(device, _DEVICE_OPTION))
    description = (
        f"Cosine similarity of SSCD copy-detection descriptors ({file.name}): trained so that an image and "
        f"edited copies of it (crops, colour changes, overlays) score near 1 and different images low; {_CALIBRATE}."
    )
    return ModelEmbedder(
        f"sscd:{file}" + ("?resize=288" if resize == "288" else ""),
        description,
        lambda images: pil_batch(images, int(resize), crop=resize == "288"),
        model,
        device=device,
        batch_size=batch_size,
        cache_config={"weights": weights_identity(file), "resize": resize},
    )


def dinov2_embedder(
    path: str,
    pooling: str = "cls",
    device: str | None = None,
    batch_size: int | str = 32,
    allow_pickle: bool | str = False,
) -> ModelEmbedder:
    """A transformers vision backbone (DINOv2, RAD-DINO, ...) with its image processor, from a local folder
    or a hub id already in the Hugging Face cache; `pooling`: "cls" (class token) or "mean" (patch tokens)."""
    transformers = require("transformers", "transformers", "dinov2")
    if pooling not in ("cls", "mean"):
        raise SynthgenError(f"audit embedder 'dinov2': pooling must be cls or mean, got {pooling!r}")
    source: Path | str = local_weights(path, "DINOv2") if looks_like_path(path) or Path(path).exists() else path
    allowed = check_weights("dinov2", source, allow_pickle)
    options = {"local_files_only": True, "trust_remote_code": False}
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(str(source), **options)
        model = transformers.AutoModel.from_pretrained(str(source), **options, **safe_kwargs(allowed)).eval()
    except Exception as error:
        raise load_failed("DINOv2 model (offline)", source, error) from None
    model.to(pick_device(device, _DEVICE_OPTION))
    skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    def forward(pixels: Any) -> Any:
        out = model(pixel_values=pixels)
        tokens = out.last_hidden_state  # DINOv2: already layer-normed; its pooler_output is this CLS token
        return tokens[:, skip:].mean(dim=1) if pooling == "mean" else tokens[:, 0]

    description = (
        f"Cosine similarity of DINOv2 {pooling}-pooled embeddings ({Path(str(source)).name}): visual likeness; "
        f"near-duplicates score near 1, but images of the same anatomy or class also score high, so {_CALIBRATE}."
    )
    identity = weights_identity(source) if isinstance(source, Path) else str(source)
    return ModelEmbedder(
        f"dinov2:{source}" + ("?pooling=mean" if pooling == "mean" else ""),
        description,
        lambda images: processor(images=images, return_tensors="pt")["pixel_values"],
        forward,
        device=device,
        batch_size=batch_size,
        cache_config={"weights": identity, "pooling": pooling},
    )


def split_location(path: str) -> tuple[str, str | None, str]:
    """Classify a timm/open_clip location: ("local", None, path), ("file", ARCH, weights), ("hub", None, repo)."""
    if path.startswith("hf-hub:"):
        return "hub", None, path.removeprefix("hf-hub:")
    arch, sep, rest = path.partition(":")
    if sep and arch and not any(c in arch for c in "/\\~.") and not Path(path).exists():
        return "file", arch, rest
    if looks_like_path(path) or Path(path).exists():
        return "local", None, path
    return "hub", None, path


def timm_embedder(
    path: str, device: str | None = None, batch_size: int | str = 32, allow_pickle: bool | str = False
) -> ModelEmbedder:
    """A timm model without its classifier (num_classes=0): a folder with config.json + weights,
    ARCH:/weights/file, or a timm name / hub repo whose weights are in the Hugging Face cache."""
    import torch

    timm = require("timm", "timm", "timm")
    form, arch, where = split_location(path)
    try:
        if form == "file":
            location = local_weights(where, "timm")
            check_weights("timm", location, allow_pickle)
            overlay = {"file": str(location)}
            model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0)
        else:
            if form == "local":
                location = local_weights(where, "timm")
            else:  # a timm architecture name means its default pretrained weights
                repo = timm.models.get_pretrained_cfg(where).hf_hub_id if timm.is_model(where) else where
                location = hub_snapshot(repo, "timm model")
            if not (location / "config.json").is_file():
                raise SynthgenError(f"timm folder {location} has no config.json (use timm:ARCH:/path/to/weights)")
            check_weights("timm", location, allow_pickle)
            model = timm.create_model(f"local-dir:{location}", pretrained=True, num_classes=0)
    except SynthgenError:
        raise
    except Exception as error:
        raise load_failed("timm model", path, error) from None
    model.eval().to(pick_device(device, _DEVICE_OPTION))
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    description = (
        f"Cosine similarity of pooled {type(model).__name__} features (timm, {location.name}): visual likeness "
        f"as the network sees it; near-duplicates score near 1, similar-looking images also score high; {_CALIBRATE}."
    )
    return ModelEmbedder(
        f"timm:{path}",
        description,
        lambda images: torch.stack([transform(image) for image in images]),
        model,
        device=device,
        batch_size=batch_size,
        cache_config={"weights": weights_identity(location)},
    )


def open_clip_embedder(
    path: str, device: str | None = None, batch_size: int | str = 32, allow_pickle: bool | str = False
) -> ModelEmbedder:
    """An open_clip image tower: a folder in hub layout (open_clip_config.json + weights, e.g. BiomedCLIP),
    ARCH:/checkpoint.pt, or a hub repo in the Hugging Face cache."""
    import torch

    open_clip = require("open_clip", "open_clip_torch", "open_clip")
    form, arch, where = split_location(path)
    try:
        if form == "file":
            location = local_weights(where, "open_clip")
            check_weights("open_clip", location, allow_pickle)
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(location))
        else:
            location = local_weights(where, "open_clip") if form == "local" else hub_snapshot(where, "open_clip model")
            if not (location / "open_clip_config.json").is_file():
                raise SynthgenError(f"open_clip folder {location} has no open_clip_config.json")
            if not any(p.suffix in WEIGHT_SUFFIXES for p in location.iterdir()):
                raise SynthgenError(f"open_clip weights not found in {location} (e.g. open_clip_model.safetensors)")
            check_weights("open_clip", location, allow_pickle)
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{location}")
    except SynthgenError:
        raise
    except Exception as error:
        raise load_failed("open_clip model (offline)", path, error) from None
    model.eval().to(pick_device(device, _DEVICE_OPTION))
    description = (
        f"Cosine similarity of CLIP image embeddings (open_clip, {location.name}): semantic likeness (what an "
        f"image shows) more than pixel identity; near-duplicates score near 1; {_CALIBRATE}."
    )
    return ModelEmbedder(
        f"open_clip:{path}",
        description,
        lambda images: torch.stack([preprocess(image) for image in images]),
        model.encode_image,
        device=device,
        batch_size=batch_size,
        cache_config={"weights": weights_identity(location)},
    )


MODEL_FACTORIES: dict[str, Callable[..., Embedder]] = {
    "sscd": sscd_embedder,
    "dinov2": dinov2_embedder,
    "timm": timm_embedder,
    "open_clip": open_clip_embedder,
}
