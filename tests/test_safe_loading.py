"""Weights load from safetensors only: a pickled checkpoint (which can run code when unpickled) is refused before any
library opens it, unless the user opted in (`model.allow_pickle`, `--allow-pickle`, `?allow_pickle=true`).

The malicious checkpoint here really runs code: unpickling it creates a marker file (checked once, on purpose, in a
sandbox copy). Every refusal must leave that marker absent. Everything is built locally; nothing is downloaded.
"""

from __future__ import annotations

import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_factories import save_pipeline
from safetensors.torch import load_file
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.models.safe_weights import check_pipeline_folder, pickled_only
from synthgen.runtime import pick_device

UNET_WEIGHTS = "unet/diffusion_pytorch_model"


class _Payload:
    """Unpickling this runs `touch MARKER`: what an attacker's checkpoint would do (with worse commands)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture(scope="module")
def safe_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pipeline("sd15", tmp_path_factory.mktemp("safe") / "pipeline")


def _with_unet_pickle(source: Path, folder: Path, payload: object) -> Path:
    """A copy of `source` whose UNet weights are `payload` pickled into diffusion_pytorch_model.bin (no safetensors)."""
    shutil.copytree(source, folder)
    (folder / f"{UNET_WEIGHTS}.safetensors").unlink()
    with open(folder / f"{UNET_WEIGHTS}.bin", "wb") as handle:
        pickle.dump(payload, handle)
    return folder


@pytest.fixture
def malicious(safe_pipeline: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(pipeline folder with a malicious UNet pickle, the marker its unpickling would create)."""
    marker = tmp_path / "pwned"
    folder = _with_unet_pickle(safe_pipeline, tmp_path / "malicious", _Payload(marker))
    return folder, marker


def load(folder: Path, **kwargs):
    from synthgen.models.loading import load_model

    return load_model(folder, folder.name, "0" * 64, pick_device("cpu"), **kwargs)


def test_the_payload_really_runs_code(malicious: tuple[Path, Path]) -> None:
    """Guards the tests below: unpickling the file does create the marker (so its absence there means something)."""
    folder, marker = malicious
    with open(folder / f"{UNET_WEIGHTS}.bin", "rb") as handle:
        pickle.load(handle)  # noqa: S301 - deliberately, on our own harmless payload
    assert marker.exists()


def test_pickled_pipeline_is_refused_and_never_unpickled(malicious: tuple[Path, Path]) -> None:
    folder, marker = malicious
    with pytest.raises(SynthgenError) as error:
        load(folder)
    message = str(error.value)
    assert "\n" not in message
    assert f"{UNET_WEIGHTS}.bin" in message and "model.allow_pickle: true" in message
    assert "can run code" in message
    assert not marker.exists()


def test_membership_loader_refuses_with_the_cli_opt_in(malicious: tuple[Path, Path]) -> None:
    from synthgen.audit.privacy.membership import load_pipeline

    folder, marker = malicious
    with pytest.raises(SynthgenError, match=r"--model: .*diffusion_pytorch_model\.bin.*--allow-pickle"):
        load_pipeline(folder)
    assert not marker.exists()


def test_validate_refuses_a_pickled_pretrained_pipeline(malicious: tuple[Path, Path], tmp_path: Path) -> None:
    folder, marker = malicious
    recipe = {
        "name": "pickled",
        "model": {"pretrained": str(folder)},
        "classes": {"polyp": {"count": 1, "prompts": ["a polyp"]}},
        "audit": {"enabled": False},
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 2, result.output
    assert "model.pretrained: refusing to load" in result.output and "model.allow_pickle: true" in result.output
    assert "Traceback" not in result.output
    assert not marker.exists()


def test_benign_pickle_loads_with_the_opt_in(safe_pipeline: Path, tmp_path: Path) -> None:
    weights = load_file(safe_pipeline / f"{UNET_WEIGHTS}.safetensors")
    folder = _with_unet_pickle(safe_pipeline, tmp_path / "benign", None)
    torch.save(weights, folder / f"{UNET_WEIGHTS}.bin")  # an ordinary torch checkpoint: a pickle
    with pytest.raises(SynthgenError, match="refusing"):
        load(folder)
    model = load(folder, allow_pickle=True)
    loaded = model.pipeline.unet.state_dict()
    assert all(torch.equal(loaded[name].float(), tensor.float()) for name, tensor in weights.items())


def test_safetensors_pipeline_loads_as_before(safe_pipeline: Path) -> None:
    model = load(safe_pipeline)
    assert type(model.pipeline).__name__ == "StableDiffusionPipeline"


def test_only_what_the_pipeline_loads_is_checked(safe_pipeline: Path, tmp_path: Path) -> None:
    """Training checkpoints in hidden folders, and files beside safetensors weights, are not pipeline weights."""
    folder = tmp_path / "pipeline"
    shutil.copytree(safe_pipeline, folder)
    (folder / ".checkpoints").mkdir()
    (folder / ".checkpoints" / "state.pt").write_bytes(b"x")
    (folder / "unet" / "training_args.bin").write_bytes(b"x")  # beside the safetensors weights: never loaded
    (folder / "v1-5-pruned.ckpt").write_bytes(b"x")  # a root-level single-file checkpoint diffusers ignores
    check_pipeline_folder(folder, "model.pretrained", allow_pickle=False)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    assert pickled_only(folder / "vae") == folder / "vae" / "diffusion_pytorch_model.bin"
    with pytest.raises(SynthgenError, match="vae/diffusion_pytorch_model.bin"):
        check_pipeline_folder(folder, "model.pretrained", allow_pickle=False)


def _pickled_bert(folder: Path, payload: object | None = None) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizerFast

    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    model = BertModel(config)
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    if payload is None:
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    else:
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(payload))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "polyp", "normal"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def test_text_encoder_refuses_pickles_unless_opted_in(tmp_path: Path) -> None:
    from synthgen.models.text_encoders import load_pretrained

    marker = tmp_path / "pwned"
    hostile = _pickled_bert(tmp_path / "hostile", _Payload(marker))
    with pytest.raises(SynthgenError, match=r"text_encoder\.pretrained: refusing to load .*pytorch_model\.bin"):
        load_pretrained(str(hostile), None, 16)
    assert not marker.exists()
    model, tokenizer, kind = load_pretrained(str(_pickled_bert(tmp_path / "benign")), None, 16, allow_pickle=True)
    assert kind == "pretrained BERT-family" and model.config.hidden_size == 16


def test_pretrained_vae_refuses_pickles(safe_pipeline: Path, tmp_path: Path) -> None:
    from synthgen.training.msdm_run import _load_vae

    folder = _with_unet_pickle(safe_pipeline, tmp_path / "pipe", None)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Payload(tmp_path / "pwned")))
    with pytest.raises(SynthgenError, match=r"model\.train\.vae: refusing to load .*vae/diffusion_pytorch_model\.bin"):
        _load_vae(str(folder), None)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture
def sscd_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.torchscript.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())).save(str(path))
    return path


def test_torchscript_embedder_needs_the_opt_in(sscd_file: Path) -> None:
    from synthgen.audit.index.embedder_registry import get_embedder

    with pytest.raises(SynthgenError, match=r"audit embedder 'sscd': refusing .*TorchScript.*\?allow_pickle=true"):
        get_embedder(f"sscd:{sscd_file}")
    assert get_embedder(f"sscd:{sscd_file}?allow_pickle=true&batch_size=2").dim == 12
    with pytest.raises(SynthgenError, match="allow_pickle must be true or false"):
        get_embedder(f"sscd:{sscd_file}?allow_pickle=maybe")


def test_dinov2_embedder_refuses_pickled_weights(dinov2_dir: Path, tmp_path: Path) -> None:
    from synthgen.audit.index.embedder_registry import get_embedder

    folder = tmp_path / "dinov2"
    shutil.copytree(dinov2_dir, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(SynthgenError, match=r"audit embedder 'dinov2': refusing to load .*pytorch_model\.bin"):
        get_embedder(f"dinov2:{folder}")
    assert get_embedder(f"dinov2:{folder}?allow_pickle=true").dim == 32


def test_audit_cli_refuses_a_pickled_model_unless_allowed(malicious: tuple[Path, Path], tmp_path: Path) -> None:
    folder, marker = malicious
    args = ["audit", "--train", "demo", "--holdout", "demo", "--model", str(folder), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--allow-pickle" in result.output and "Traceback" not in result.output
    assert not marker.exists()
