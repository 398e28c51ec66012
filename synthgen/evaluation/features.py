"""Feature spaces for the fidelity metrics: images -> raw (n, dim) float32 rows, one row per image.

`get_feature_space(None)` is the default (DEFAULT_FEATURES, image_stats.py): no downloaded weights,
deterministic, fast on a CPU. Model feature spaces load local weights through the audit's embedders
(synthgen/audit/index/model_embedders.py) but keep the features raw, as FD/KID are defined on them
(FD_DINOv2 uses the CLS token as it comes out; Inception the 2048-d pool features):
  dinov2:/models/dinov2-base (also RAD-DINO)   inception:/models/inception-2015-12-05.pt (TorchScript, as
  sscd:/models/sscd.torchscript.pt              clean-fid / StyleGAN) or inception:/weights.pth (timm inception_v3)
  timm:ARCH:/weights.pth | timm:/folder         open_clip:/models/BiomedCLIP
A feature space's sha256 names its weights (the hash of the weight files), so a report says which network
measured it. torch is imported only when a model feature space is created.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from synthgen.errors import SynthgenError

DEFAULT_FEATURES = "imagestats-v1"
MODEL_PREFIXES = ("dinov2", "inception", "sscd", "timm", "open_clip")


@runtime_checkable
class FeatureSpace(Protocol):
    """Maps images to raw feature rows; `sha256` identifies the weights or parameters that produced them."""

    name: str
    dim: int
    sha256: str
    description: str

    def features(self, images: list[Image.Image]) -> np.ndarray:
        """(len(images), dim) float32, not L2-normalised."""
        ...


class ModelFeatures:
    """A network from local weights (an audit ModelEmbedder), giving its raw, un-normalised outputs."""

    def __init__(self, name: str, embedder: Any, sha256: str, description: str) -> None:
        self.name = name
        self.dim = int(embedder.dim)
        self.sha256 = sha256
        self.description = description
        self._embedder = embedder

    def features(self, images: list[Image.Image]) -> np.ndarray:
        return self._embedder.raw(images)


def weights_sha256(path: Path) -> str:
    """sha256 over a weight file, or over a folder's files (relative names and contents, sorted)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _weights_location(prefix: str, arg: str) -> Path:
    """The local file or folder a model name loads (hub ids resolved in the offline Hugging Face cache)."""
    from synthgen.audit.index.model_embedders import hub_snapshot, local_weights, looks_like_path, split_location

    if prefix in ("sscd", "inception"):
        return local_weights(arg, prefix)
    if prefix == "dinov2":
        return local_weights(arg, prefix) if looks_like_path(arg) or Path(arg).exists() else hub_snapshot(arg, prefix)
    form, _, where = split_location(arg)
    if form == "hub" and prefix == "timm":
        import timm

        repo = timm.models.get_pretrained_cfg(where).hf_hub_id if timm.is_model(where) else where
        return hub_snapshot(repo, "timm model")
    return hub_snapshot(where, prefix) if form == "hub" else local_weights(where, prefix)


def _inception(arg: str, options: dict[str, str]) -> Any:
    """The FID Inception: a TorchScript file (NVlabs/clean-fid 'inception-2015-12-05.pt': pool3 features of a
    0..255 image at 299x299) or timm's inception_v3 from a weights file."""
    from synthgen.audit.index.embedder_registry import get_embedder
    from synthgen.audit.index.model_embedders import ModelEmbedder, load_failed, local_weights
    from synthgen.models.safe_weights import check_weight_file, parse_flag

    path = local_weights(arg, "Inception")
    allow = options.pop("allow_pickle", "false")
    if path.is_dir() or path.suffix not in (".pt", ".torchscript"):
        timm_name = f"timm:inception_v3:{path}" if path.is_file() else f"timm:{path}"
        return get_embedder(f"{timm_name}?allow_pickle={allow}")
    field = "feature space 'inception'"
    opt_in = "?allow_pickle=true after the inception: path"
    check_weight_file(path, field, parse_flag(allow, field), opt_in, torchscript=True)  # TorchScript runs code
    import torch

    try:
        model = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:
        raise load_failed("Inception TorchScript model", path, error) from None

    def preprocess(images: list[Image.Image]) -> Any:
        arrays = [np.asarray(image.resize((299, 299), Image.Resampling.BICUBIC), np.float32) for image in images]
        return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))

    def forward(pixels: Any) -> Any:
        return model(pixels, return_features=True)

    unknown = set(options) - {"device", "batch_size"}
    if unknown:
        raise SynthgenError(f"feature space 'inception': unknown option(s) {', '.join(sorted(unknown))}")
    return ModelEmbedder(f"inception:{path}", "Inception pool features", preprocess, forward, **options)


def _model_feature_space(name: str) -> FeatureSpace:
    from synthgen.audit.index.embedder_registry import get_embedder, parse_embedder_name

    prefix, arg, options = parse_embedder_name(name)
    if not arg:
        raise SynthgenError(f"feature space '{prefix}' needs a model path, e.g. '{prefix}:/path/to/model'")
    embedder = _inception(arg, options) if prefix == "inception" else get_embedder(name)
    sha = weights_sha256(_weights_location(prefix, arg))
    description = (
        f"raw {embedder.dim}-d features of {name} (not L2-normalised), as FD/KID with a trained network use them"
    )
    return ModelFeatures(name, embedder, sha, description)


def known_feature_spaces() -> list[str]:
    return [DEFAULT_FEATURES] + [f"{prefix}:PATH" for prefix in MODEL_PREFIXES]


def get_feature_space(name: str | None = None) -> FeatureSpace:
    """The default feature space (None, 'default' or its name), or a model's from local weights ('prefix:PATH')."""
    if name is None or name in ("default", DEFAULT_FEATURES):
        from synthgen.evaluation.image_stats import ImageStatsFeatures

        return ImageStatsFeatures()
    prefix = name.partition(":")[0].strip()
    if prefix not in MODEL_PREFIXES or ":" not in name:
        raise SynthgenError(f"unknown feature space '{name}'; known: {', '.join(known_feature_spaces())}")
    return _model_feature_space(name)
