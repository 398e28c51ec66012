"""The training loop: exact resume after a kill, gradient accumulation, EMA, validation split, logs and grids,
refusals, differential privacy and pretrained (BERT / CLIP) text encoders. Tiny preset at 32 px, few steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from synthgen.errors import SynthgenError
from synthgen.recipe import load_recipe
from synthgen.sources import open_source
from synthgen.train import train_from_recipe

ROOT = Path(__file__).resolve().parents[1]
SYNTHGEN = str(Path(sys.executable).parent / "synthgen")
RECIPE = {
    "name": "train-test",
    "model": {
        "train": {
            "data": {"type": "demo", "per_class": 3, "resolution": 32},
            "resolution": 32,
            "vae_steps": 2,
            "unet_steps": 4,
            "batch_size": 3,
            "validation_split": 0.2,
            "checkpoint_every": 2,
        }
    },
    "classes": {
        "polyp": {"count": 1, "prompts": ["colonoscopy phantom showing a small polyp in the centre"]},
        "normal": {"count": 1, "prompts": ["colonoscopy phantom showing normal mucosa"]},
    },
    "audit": {"threshold": 0.99},
}
WORDS = "colonoscopy phantom showing a small large polyp ulcer normal mucosa in the upper lower left right centre"


def write_recipe(folder: Path, train: dict | None = None, **top: object) -> Path:
    recipe = json.loads(json.dumps(RECIPE))
    recipe["model"]["train"].update(train or {})
    recipe.update(top)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train(recipe: Path, out: Path, **kwargs: object) -> Path:
    loaded = load_recipe(recipe)
    source = open_source(loaded.recipe.model.train.data, loaded.base_dir)
    return train_from_recipe(loaded, source, out, device="cpu", **kwargs)


def weights(folder: Path, part: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(next((folder / part).glob("*.safetensors")))


def log_records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "training_log.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run shared by the read-only tests."""
    folder = tmp_path_factory.mktemp("reference")
    return train(write_recipe(folder / "recipe"), folder / "model")


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(reference: Path, tmp_path: Path):
    recipe, out = write_recipe(tmp_path / "recipe"), tmp_path / "model"
    command = [SYNTHGEN, "train", str(recipe), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    marker = out / ".checkpoints" / "unet-step-0000002" / "meta.json"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and not marker.is_file():
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (out / "model_index.json").exists()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from unet-step-0000002" in rerun.stderr
    records = log_records(out)
    assert [r for r in records if r.get("event") == "resume"] == [
        {"event": "resume", "phase": "unet", "step": 2, "checkpoint": "unet-step-0000002"}
    ]
    assert [r["step"] for r in records if r.get("phase") == "unet" and "event" not in r] == [1, 2, 3, 4]
    assert json.loads((out / "synthgen_model.json").read_text())["steps"] == {"vae": 2, "unet": 4}
    # Everything random is checkpointed (generators, global RNG states), and the data layout is the same
    # after a reload, so on the CPU the resumed run is bit for bit the uninterrupted one.
    for part in ("vae", "unet", "text_encoder"):
        ours, theirs = weights(out, part), weights(reference, part)
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs), part


def test_log_plot_grids_card_and_leftovers(reference: Path) -> None:
    records = [r for r in log_records(reference) if "event" not in r]
    assert [(r["phase"], r["step"]) for r in records] == [("vae", 1), ("vae", 2)] + [("unet", s) for s in (1, 2, 3, 4)]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["seconds"] >= 0 for r in records)
    checkpoints = [r for r in records if r.get("checkpoint")]
    assert [(r["phase"], r["step"]) for r in checkpoints] == [("vae", 2), ("unet", 2), ("unet", 4)]
    assert all(r["val_loss"] > 0 for r in checkpoints)  # 9 images, 20 % held out: one validation image
    for name in ("loss.png", "samples/step-2.png", "samples/step-4.png"):
        assert (reference / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    info = json.loads((reference / "synthgen_model.json").read_text())
    assert info["training_data"]["images"] == 8 and info["training_data"]["validation_images"] == 1
    assert info["parameters"]["unet"] > 1_000_000 and info["dp"] is None and info["versions"]["torch"]
    assert "No formal privacy guarantee" in (reference / "README.md").read_text()
    kept = sorted(p.name for p in (reference / ".checkpoints").iterdir())
    assert kept == ["run.json", "tokenizer", "unet-step-0000004", "vae-step-0000002"]  # no decoded images left


def test_rerun_of_a_finished_or_different_run_is_refused(reference: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in reference.rglob("*"))
    with pytest.raises(SynthgenError, match="already holds this model.*--overwrite"):
        train(write_recipe(tmp_path / "same"), reference)
    with pytest.raises(SynthgenError, match=r"learning_rate differ.*--overwrite"):
        train(write_recipe(tmp_path / "other", {"learning_rate": 0.01}), reference)
    assert sorted(p.name for p in reference.rglob("*")) == before


def test_pipeline_loads_and_generates_without_synthgen(reference: Path) -> None:
    code = (
        "import sys, torch\n"
        "from diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(reference)!r})\n"
        "image = pipe('colonoscopy phantom showing a small polyp', num_inference_steps=2,\n"
        "             generator=torch.Generator().manual_seed(0)).images[0]\n"
        "assert image.size == (32, 32), image.size\n"
        "assert not [m for m in sys.modules if m.startswith('synthgen')]\n"
        "print(type(pipe).__name__)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "StableDiffusionPipeline"


def _toy_phase(batch_size: int, micro_batch_size: int, tmp_path: Path):
    from synthgen.training.checkpoints import CheckpointStore
    from synthgen.training.loop import LoopSettings, Phase, run_phase
    from synthgen.training.training_log import TrainingLog

    torch.manual_seed(0)
    inputs, targets = torch.randn(32, 5), torch.randn(32, 2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    def draw(indices: torch.Tensor, generator: torch.Generator) -> dict:
        return {"x": inputs[indices], "y": targets[indices], "noise": torch.randn(len(indices), 2, generator=generator)}

    def loss(module: torch.nn.Module, batch: dict) -> torch.Tensor:
        return (module(batch["x"]) + 0.1 * batch["noise"] - batch["y"]).pow(2).mean(1)

    phase = Phase("toy", 6, model, 32, draw, loss, learning_rate=0.05, clip_grad_norm=1.0, ema_decay=0.9)
    log = TrainingLog(tmp_path / "log.jsonl", ["toy"])
    settings = LoopSettings(batch_size, micro_batch_size, 100, 0, torch.device("cpu"))
    result = run_phase(phase, settings, CheckpointStore(tmp_path / "ckpt"), log)
    return [r["loss"] for r in log.steps("toy")], model, result


def test_gradient_accumulation_matches_one_full_batch(tmp_path: Path) -> None:
    full, full_model, _ = _toy_phase(8, 8, tmp_path / "full")
    halves, half_model, result = _toy_phase(8, 4, tmp_path / "halves")
    assert len(full) == 6 and np.allclose(full, halves, rtol=1e-5, atol=1e-7)
    for a, b in zip(full_model.parameters(), half_model.parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert result.steps == 6 and result.loss == pytest.approx(np.mean(halves))


def test_ema_update_math() -> None:
    from synthgen.training.ema import EMA

    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    ema = EMA(layer, decay=0.5)
    expected = torch.ones(1, 2)
    for step, value in enumerate([3.0, -1.0, 2.0, 2.0]):
        with torch.no_grad():
            layer.weight.fill_(value)
        decay = min(0.5, (1 + step) / (10 + step))  # warm-up: 0.1, 0.18..., then capped at 0.5
        expected = decay * expected + (1 - decay) * value
        ema.update(layer)
        assert torch.allclose(ema.shadow["weight"], expected)
    with ema.applied(layer):
        assert torch.allclose(layer.weight, expected)
    assert torch.equal(layer.weight, torch.full((1, 2), 2.0))  # raw weights back exactly
    again = EMA(layer, decay=0.5)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 4 and torch.equal(again.shadow["weight"], ema.shadow["weight"])


def test_validation_split_is_deterministic_and_disjoint() -> None:
    from synthgen.training.data import split_indices

    train_idx, val_idx = split_indices(100, 0.05, seed=3)
    assert len(val_idx) == 5 and len(train_idx) == 95
    assert not set(train_idx) & set(val_idx) and sorted({*train_idx, *val_idx}) == list(range(100))
    again = split_indices(100, 0.05, seed=3)
    assert np.array_equal(again[0], train_idx) and np.array_equal(again[1], val_idx)
    assert not np.array_equal(split_indices(100, 0.05, seed=4)[1], val_idx)
    assert len(split_indices(12, 0.05, 0)[1]) == 0 and len(split_indices(3, 0.49, 0)[1]) == 1


def test_tokenizer_is_reproducible_and_can_come_from_prompts_only() -> None:
    from synthgen.models.msdm import PRESETS
    from synthgen.models.text_encoders import make_text_encoder
    from synthgen.recipe import TextEncoderConfig

    captions = ["colonoscopy phantom showing a large ulcer near patient smith", "normal mucosa"]
    prompts = ["colonoscopy phantom showing normal mucosa"]
    private = make_text_encoder(TextEncoderConfig(), PRESETS["tiny"], captions=captions, prompts=prompts, private=True)
    vocab = private.tokenizer.get_vocab()
    assert private.corpus == "prompts" and "mucosa" in vocab and "smith" not in vocab and "ulcer" not in vocab
    one = make_text_encoder(TextEncoderConfig(), PRESETS["tiny"], captions=captions, prompts=prompts, private=False)
    two = make_text_encoder(TextEncoderConfig(), PRESETS["tiny"], captions=captions, prompts=prompts, private=False)
    assert one.corpus == "captions" and "smith" in one.tokenizer.get_vocab()
    assert one.tokenizer.get_vocab() == two.tokenizer.get_vocab()


def test_presets_have_the_documented_geometry() -> None:
    from synthgen.models.msdm import PRESETS

    base = PRESETS["base"]
    assert (base.vae_downsample, base.latent_channels, base.vae_channels) == (8, 8, (128, 256, 512, 512))
    assert (base.unet_channels, base.layers_per_block, base.text_hidden) == ((256, 256, 512, 1024), 2, 768)
    assert PRESETS["small"].vae_downsample == 4 and PRESETS["tiny"].unet_channels == (32, 64, 64)


@pytest.mark.slow
def test_dp_training_writes_privacy_json_within_budget(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    dp_train = {"data": "demo", "vae_steps": 2, "unet_steps": 2, "batch_size": 4, "gradient_accumulation": 2}
    dp_privacy = {"target_epsilon": 8, "accountant": "rdp"}
    out = train(write_recipe(tmp_path / "recipe", dp_train, privacy=dp_privacy), tmp_path / "model")
    privacy = json.loads((out / "privacy.json").read_text())
    assert 0 < privacy["epsilon"] <= 8 and privacy["steps"] == {"vae": 2, "unet": 2}
    assert privacy["covers"] == ["vae", "unet", "text_encoder"]
    records = [r for r in log_records(out) if "event" not in r]
    assert all(r["loss"] is None and r["val_loss"] is None for r in records)  # non-private statistics stay out
    assert [r["epsilon"] for r in records if r.get("checkpoint")][-1] == pytest.approx(privacy["epsilon"])
    info = json.loads((out / "synthgen_model.json").read_text())
    assert info["dp"]["epsilon"] == privacy["epsilon"] and "labels" not in info["training_data"]
    assert info["text_encoder"]["tokenizer_corpus"] == "prompts"
    pipe = DiffusionPipeline.from_pretrained(out)
    assert pipe("colonoscopy phantom showing normal mucosa", num_inference_steps=2).images[0].size == (32, 32)

    def stop_after_first_unet_checkpoint(stage: str, done: int, total: int) -> None:
        if stage == "training UNet" and done == 1 and not interrupted:
            interrupted.append(done)
            raise KeyboardInterrupt

    interrupted: list[int] = []
    resumed = tmp_path / "resumed"
    recipe = write_recipe(tmp_path / "recipe", {**dp_train, "checkpoint_every": 1}, privacy=dp_privacy)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, resumed, progress=stop_after_first_unet_checkpoint)
    train(recipe, resumed)  # Poisson sampler, DP noise and step counts resume exactly
    assert json.loads((resumed / "privacy.json").read_text()) == privacy
    for part in ("unet", "text_encoder"):
        ours, theirs = weights(resumed, part), weights(out, part)
        assert all(torch.equal(ours[name], theirs[name]) for name in theirs), part


def _tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    words = WORDS.split()
    chars = sorted(set("".join(words)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars], *words]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    return folder


def _tiny_clip(folder: Path) -> Path:
    """A CLIP text model with a BPE vocabulary whose merges spell out each word (vocab.json + merges.txt)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    words = WORDS.split()
    chars = sorted(set("".join(words)))
    vocab = ["<|startoftext|>", "<|endoftext|>", *chars, *[c + "</w>" for c in chars]]
    merges: list[str] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.append(parts[0])
    vocab, merges = list(dict.fromkeys(vocab)), list(dict.fromkeys(merges))
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": "<|endoftext|>", **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    CLIPTextModel(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "fine_tune"), [("bert", True), ("clip", False)])
def test_pretrained_text_encoder_trains_and_loads(reference: Path, tmp_path: Path, kind: str, fine_tune: bool) -> None:
    from diffusers import DiffusionPipeline

    encoder = (_tiny_bert if kind == "bert" else _tiny_clip)(tmp_path / kind)
    train_settings = {
        "vae": str(reference),  # a pipeline folder: its vae/ is used, frozen, and no VAE phase runs
        "unet_steps": 2,
        "text_encoder": {"pretrained": str(encoder), "train": fine_tune},
    }
    out = train(write_recipe(tmp_path / "recipe", train_settings), tmp_path / "model")
    info = json.loads((out / "synthgen_model.json").read_text())
    assert info["text_encoder"]["hidden_size"] == 32 and info["text_encoder"]["trainable"] is fine_tune
    assert info["steps"] == {"unet": 2} and info["vae_source"].startswith("pretrained")
    assert json.loads((out / "unet" / "config.json").read_text())["cross_attention_dim"] == 32
    assert torch.equal(
        weights(out, "vae")["decoder.conv_out.weight"], weights(reference, "vae")["decoder.conv_out.weight"]
    )
    from safetensors.torch import load_file

    original, trained = load_file(encoder / "model.safetensors"), weights(out, "text_encoder")
    changed = any(not torch.equal(trained[name], value) for name, value in original.items() if name in trained)
    assert changed is fine_tune
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe.text_encoder).__name__ == ("BertModel" if kind == "bert" else "CLIPTextModel")
    image = pipe("colonoscopy phantom showing a small polyp", num_inference_steps=2).images[0]
    assert image.size == (32, 32)


def test_cli_interrupt_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import synthgen.train
    from synthgen.cli import app

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthgen.train, "train_from_recipe", interrupted)
    result = CliRunner().invoke(app, ["train", str(write_recipe(tmp_path)), "--out", str(tmp_path / "m")])
    assert result.exit_code == 130
    assert "no checkpoint was written yet; run the same command to resume" in result.output
