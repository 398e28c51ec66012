"""Shared fixtures: `real_data_dir` points at the real image sets, or skips the test when absent; `model_cache` +
`isolated_cache` give a test module its own model cache (opt in with `pytest.mark.usefixtures("isolated_cache")`);
`dinov2_dir` is a tiny local DINOv2 folder for the model plug-ins of the audit and the eval."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def real_data_dir() -> Path:
    """$SYNTHGEN_REAL_DATA (e.g. /work/shared/data); real images are read there, never copied."""
    value = os.environ.get("SYNTHGEN_REAL_DATA")
    path = Path(value) if value else None
    if path is not None and path.is_dir():
        return path
    reason = "SYNTHGEN_REAL_DATA is not set" if not value else f"SYNTHGEN_REAL_DATA={value} is not a folder"
    if os.environ.get("CI"):  # CI always runs the real-data tests: a missing folder is a failure there
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Tests never write into the user's cache (models, audit indexes, file-hash memos): one cache per session."""
    before = os.environ.get("SYNTHGEN_CACHE")
    os.environ["SYNTHGEN_CACHE"] = str(tmp_path_factory.mktemp("session-cache"))
    yield
    if before is None:
        os.environ.pop("SYNTHGEN_CACHE", None)
    else:
        os.environ["SYNTHGEN_CACHE"] = before


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per test module: its tiny models train once, and no test sees another module's."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def isolated_cache(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHGEN_CACHE", str(model_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def dinov2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv2 saved like a hub model (weights + image processor): the local-weights plug-in path."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    Dinov2Model(config).save_pretrained(folder)
    processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    return folder
