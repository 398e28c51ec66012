"""Embedders from local weights: tiny models are built and saved here (nothing is downloaded)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthgen.audit.index.embedder_registry import get_embedder, known_embedder_prefixes, parse_embedder_name
from synthgen.audit.index.index_cache import cache_key
from synthgen.audit.index.model_embedders import ModelEmbedder, require
from synthgen.errors import SynthgenError


def blob_image(seed: int, size: int = 64) -> Image.Image:
    """A smooth random image (coloured Gaussian blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    canvas = np.zeros((size, size, 3), np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(size / 10, size / 4)
        canvas += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))[..., None] * rng.uniform(-1, 1, 3)
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min() + 1e-6)
    return Image.fromarray((40 + 160 * canvas).astype(np.uint8), "RGB")


def check_embedder(embedder: ModelEmbedder, dim: int) -> None:
    """Unit-norm float32 rows of the right shape, deterministic, and a resized copy beats another image."""
    image, other = blob_image(1), blob_image(2)
    images = [image, image.resize((56, 56), Image.Resampling.BILINEAR), other, blob_image(3, size=80)]
    vectors = embedder.embed(images)
    assert vectors.shape == (4, dim) and vectors.dtype == np.float32 and embedder.dim == dim
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(images), vectors, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(images[2:3]), vectors[2:3], atol=1e-5)  # batch-independent
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
    assert embedder.embed([]).shape == (0, dim)
    assert embedder.device.type == "cpu" and "similarity" in embedder.description.lower()


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 5, stride=4)
        self.conv2 = torch.nn.Conv2d(8, 6, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


@pytest.fixture(scope="module")
def sscd_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sscd") / "tiny.torchscript.pt"
    torch.jit.script(TinyCNN().eval()).save(str(path))
    return path


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_dinov2_from_local_folder(dinov2_dir: Path, pooling: str) -> None:
    embedder = get_embedder(f"dinov2:{dinov2_dir}?pooling={pooling}&device=cpu")
    assert isinstance(embedder, ModelEmbedder) and embedder.name.startswith(f"dinov2:{dinov2_dir}")
    assert pooling in embedder.description
    check_embedder(embedder, 32)


@pytest.mark.parametrize("resize", ["320", "288"])
def test_sscd_torchscript(sscd_file: Path, resize: str) -> None:
    embedder = get_embedder(f"sscd:{sscd_file}?resize={resize}&batch_size=3&allow_pickle=true")
    assert isinstance(embedder, ModelEmbedder) and embedder.batch_size == 3
    assert "SSCD" in embedder.description
    check_embedder(embedder, 24)


def test_weights_change_invalidates_the_index_cache_key(sscd_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.torchscript.pt"
    copy.write_bytes(sscd_file.read_bytes())
    before = cache_key("data", get_embedder(f"sscd:{copy}?allow_pickle=true"), "auto")
    assert cache_key("data", get_embedder(f"sscd:{copy}?allow_pickle=true"), "auto") == before
    torch.jit.script(TinyCNN().eval()).save(str(copy))  # new weights at the same path
    assert cache_key("data", get_embedder(f"sscd:{copy}?allow_pickle=true"), "auto") != before


def test_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope"
    for name in (f"dinov2:{missing}", f"sscd:{missing}.pt", f"timm:{missing}", f"open_clip:{missing}"):
        with pytest.raises(SynthgenError) as error:
            get_embedder(name)
        message = str(error.value)
        assert "\n" not in message
        assert str(missing) in message or "pip install" in message
    with pytest.raises(SynthgenError, match="unknown audit embedder 'clipx:/m'.*dinov2:PATH"):
        get_embedder("clipx:/m")
    with pytest.raises(SynthgenError, match="needs a model path"):
        get_embedder("dinov2:")
    with pytest.raises(SynthgenError, match="bad option"):
        get_embedder(f"sscd:{missing}?colour=red")
    with pytest.raises(SynthgenError, match="not key=value"):
        get_embedder(f"sscd:{missing}?oops")
    with pytest.raises(SynthgenError, match="folder"):
        get_embedder(f"sscd:{tmp_path}")
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(SynthgenError, match="cannot load SSCD TorchScript model from .*broken.pt"):
        get_embedder(f"sscd:{tmp_path / 'broken.pt'}?allow_pickle=true")
    with pytest.raises(SynthgenError, match="not in the Hugging Face cache|cannot load DINOv2"):
        get_embedder("dinov2:no-such-org/no-such-model")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(SynthgenError, match="pip install timm"):
        get_embedder("timm:/models/vit")
    with pytest.raises(SynthgenError, match="pip install not-a-pkg"):
        require("not_a_module_xyz", "not-a-pkg", "x")


def test_name_parsing() -> None:
    assert parse_embedder_name("dinov2:/m/x?pooling=mean&device=cpu") == (
        "dinov2",
        "/m/x",
        {"pooling": "mean", "device": "cpu"},
    )
    assert parse_embedder_name("timm:vit_small:/w.pth") == ("timm", "vit_small:/w.pth", {})
    assert {"sscd", "dinov2", "timm", "open_clip"} <= set(known_embedder_prefixes())
    assert get_embedder("pixel").name == "pixel"


def test_timm_local_folder_and_weights_file(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False)
    timm.models.save_for_hf(model, str(tmp_path / "hf"), safe_serialization=True)
    folder_embedder = get_embedder(f"timm:{tmp_path / 'hf'}")
    check_embedder(folder_embedder, model.num_features)
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    file_embedder = get_embedder(f"timm:test_vit:{tmp_path / 'weights.pth'}")
    check_embedder(file_embedder, model.num_features)
    image = [blob_image(4)]
    np.testing.assert_allclose(folder_embedder.embed(image), file_embedder.embed(image), atol=1e-5)
    with pytest.raises(SynthgenError, match="timm weights not found"):
        get_embedder(f"timm:test_vit:{tmp_path / 'missing.pth'}")


def test_open_clip_local_folder_and_checkpoint(tmp_path: Path) -> None:
    open_clip = pytest.importorskip("open_clip")
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "TinyCLIP-test.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(str(tmp_path / "configs"))
    torch.manual_seed(0)
    model = open_clip.create_model("TinyCLIP-test")
    folder = tmp_path / "hub"
    folder.mkdir()
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    )
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    check_embedder(get_embedder(f"open_clip:{folder}"), 16)
    check_embedder(get_embedder(f"open_clip:TinyCLIP-test:{folder / 'open_clip_pytorch_model.bin'}"), 16)
    (folder / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(SynthgenError, match=f"open_clip weights not found in {folder}"):
        get_embedder(f"open_clip:{folder}")
