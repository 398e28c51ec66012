"""The accelerator code paths, run on the CPU so dtype and device mistakes fail here, not on a user's first GPU:
bf16 autocast (and fp16 + GradScaler) training steps, a tiny MSDM trained under bf16 autocast and sampled with
its pipeline loaded in bf16 (denoiser, text encoder and VAE decode), and the faiss-gpu calls of the audit's
index against a fake faiss GPU module with the real functions' signatures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen.audit.index import index_backends as backends
from synthgen.audit.index.train_index import TrainIndex

PROMPT = "colonoscopy phantom showing a small polyp in the centre"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# --- training: autocast on the CPU -------------------------------------------------------------------------


def _toy_losses(tmp_path: Path, autocast_dtype, grad_scaler: bool) -> tuple[list[float], torch.nn.Module]:
    from synthgen.training.checkpoints import CheckpointStore
    from synthgen.training.loop import LoopSettings, Phase, run_phase
    from synthgen.training.training_log import TrainingLog

    torch.manual_seed(0)
    inputs, targets = torch.randn(32, 5), torch.randn(32, 2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))

    def draw(indices: torch.Tensor, generator: torch.Generator) -> dict:
        return {"x": inputs[indices], "y": targets[indices]}

    def loss(module: torch.nn.Module, batch: dict) -> torch.Tensor:
        out = module(batch["x"])
        if autocast_dtype is not None:
            assert out.dtype == autocast_dtype  # the step really ran under autocast
        return (out - batch["y"]).pow(2).mean(1)

    phase = Phase("toy", 6, model, 32, draw, loss, learning_rate=0.05, clip_grad_norm=1.0, ema_decay=0.9)
    log = TrainingLog(tmp_path / "log.jsonl", ["toy"])
    settings = LoopSettings(8, 4, 3, 0, torch.device("cpu"), autocast_dtype=autocast_dtype, grad_scaler=grad_scaler)
    run_phase(phase, settings, CheckpointStore(tmp_path / "ckpt"), log)
    return [r["loss"] for r in log.steps("toy")], model


@pytest.mark.parametrize(("dtype", "scaler"), [(torch.bfloat16, False), (torch.float16, True)])
def test_autocast_steps_train_like_fp32(tmp_path: Path, dtype, scaler: bool) -> None:
    """bf16 (and fp16 with loss scaling) micro-batches with accumulation: fp32 weights, losses close to fp32."""
    full, _ = _toy_losses(tmp_path / "fp32", None, False)
    half, model = _toy_losses(tmp_path / "half", dtype, scaler)
    assert all(np.isfinite(half)) and len(half) == len(full) == 6
    assert np.allclose(half, full, rtol=0.05, atol=0.02)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast never casts the master weights


def test_fp16_scaler_state_is_checkpointed(tmp_path: Path) -> None:
    _toy_losses(tmp_path, torch.float16, True)
    state = torch.load(max((tmp_path / "ckpt").rglob("state.pt")), weights_only=False)
    assert "scaler" in state and state["scaler"]["scale"] > 0


def test_pick_dtype_on_a_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from synthgen.runtime import pick_dtype
    from synthgen.training.loop import resolve_precision

    cuda = torch.device("cuda")
    for bf16, dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda bf16=bf16: bf16)
        assert pick_dtype(cuda) == dtype
        assert resolve_precision("auto", cuda) == (dtype, dtype == torch.float16)
    assert resolve_precision("bf16", cuda) == (torch.bfloat16, False)
    assert resolve_precision("fp16", torch.device("cpu")) == (None, False)  # users on a CPU get fp32


# --- MSDM: trained under bf16 autocast, sampled in bf16 ------------------------------------------------------


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MSDM whose VAE and UNet phases ran under bf16 autocast on the CPU (the GPU default)."""
    import yaml

    from synthgen.recipe import load_recipe
    from synthgen.sources import open_source
    from synthgen.train import train_from_recipe
    from synthgen.training import harness

    folder = tmp_path_factory.mktemp("bf16")
    recipe = {
        "name": "bf16-test",
        "model": {
            "train": {
                "data": {"type": "demo", "per_class": 3, "resolution": 32},
                "resolution": 32,
                "vae_steps": 2,
                "unet_steps": 3,
                "batch_size": 3,
                "validation_split": 0.2,
                "checkpoint_every": 2,
            }
        },
        "classes": {"polyp": {"count": 1, "prompts": [PROMPT]}, "normal": {"count": 1, "prompts": ["normal"]}},
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(folder / "recipe.yaml")
    source = open_source(loaded.recipe.model.train.data, loaded.base_dir)
    with pytest.MonkeyPatch.context() as patch:  # what resolve_precision answers on a bf16 GPU
        patch.setattr(harness, "resolve_precision", lambda requested, device: (torch.bfloat16, False))
        return train_from_recipe(loaded, source, folder / "model", device="cpu")


def test_bf16_training_run_is_finite_and_saved_in_fp32(bf16_model: Path) -> None:
    from safetensors.torch import load_file

    records = [json.loads(line) for line in (bf16_model / "training_log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    assert losses and all(np.isfinite(losses))
    for part in ("unet", "vae"):
        tensors = load_file(next((bf16_model / part).glob("*.safetensors")))
        assert {t.dtype for t in tensors.values()} == {torch.float32}


def test_bf16_sampling_and_vae_decode(bf16_model: Path) -> None:
    """The pipeline loaded in bf16 (as on a GPU): prompts encoded, denoised and decoded to finite images."""
    from synthgen.generate import Generator
    from synthgen.models.loading import load_model
    from synthgen.plan import Job
    from synthgen.recipe import SamplingConfig

    cpu = torch.device("cpu")
    model = load_model(bf16_model, "bf16", "0" * 64, cpu, dtype=torch.bfloat16)
    pipe = model.pipeline
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    jobs = [Job(f"k-{i}", "polyp", PROMPT, 7 + i) for i in range(3)]
    sampling = SamplingConfig(steps=2, batch_size=2, resolution=32)
    samples = Generator(model, sampling, {}).generate(jobs)
    assert [s.key for s in samples] == ["k-0", "k-1", "k-2"]
    for sample in samples:
        pixels = np.asarray(sample.image)
        assert sample.image.size == (32, 32) and pixels.dtype == np.uint8
    reference = load_model(bf16_model, "fp32", "0" * 64, cpu).pipeline.unet.dtype
    assert reference == torch.float32  # without the internal override a CPU keeps fp32


# --- faiss-gpu: the calls, against a fake -------------------------------------------------------------------


class FakeGpuFaiss:
    """Records the faiss GPU calls; the fake functions keep the real ones' signatures and input checks."""

    def __init__(self, faiss) -> None:
        self.faiss = faiss
        self.knn_calls: list[int] = []
        self.copies = 0

    def install(self, monkeypatch: pytest.MonkeyPatch, gpus: int = 1) -> None:
        faiss = self.faiss
        fake = self

        class StandardGpuResources:
            pass

        def index_cpu_to_gpu(provider, device, index, options=None):
            assert isinstance(provider, StandardGpuResources) and device == 0
            assert isinstance(index, faiss.IndexIVF), "only IVF indexes have a GPU implementation"
            fake.copies += 1
            return faiss.clone_index(index)

        def knn_gpu(res, xq, xb, k, D=None, I=None, metric=faiss.METRIC_L2, device=-1, **limits):  # noqa: E741
            assert isinstance(res, StandardGpuResources) and k <= backends.GPU_MAX_K
            for array in (xq, xb):
                assert array.dtype == np.float32 and array.flags.c_contiguous
            fake.knn_calls.append(k)
            return faiss.knn(xq, xb, k, metric=metric)

        monkeypatch.setattr(faiss, "StandardGpuResources", StandardGpuResources, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
        monkeypatch.setattr(faiss, "knn_gpu", knn_gpu, raising=False)
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: gpus, raising=False)
        monkeypatch.setattr(backends, "_GPU_RESOURCES", [])


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGpuFaiss:
    import faiss

    fake = FakeGpuFaiss(faiss)
    fake.install(monkeypatch)
    return fake


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    data = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)


def test_gpu_is_detected_through_faiss(fake_gpu: FakeGpuFaiss, monkeypatch: pytest.MonkeyPatch) -> None:
    assert backends.gpu_available()
    assert backends.gpu_resources() is backends.gpu_resources()  # made once per process
    fake_gpu.install(monkeypatch, gpus=0)
    assert not backends.gpu_available()

    def broken() -> int:
        raise RuntimeError("CUDA driver version is insufficient")

    monkeypatch.setattr(fake_gpu.faiss, "get_num_gpus", broken)
    assert not backends.gpu_available()  # a broken CUDA setup falls back to the CPU


def test_exact_search_on_the_gpu_path(fake_gpu: FakeGpuFaiss) -> None:
    base, queries = _vectors(3000), _vectors(40, seed=1)
    keys = [f"k{i}" for i in range(len(base))]
    gpu = TrainIndex.build(base, keys, kind="exact")
    assert gpu.on_gpu
    cpu = TrainIndex.build(base, keys, kind="exact", use_gpu=False)
    for k in (1, 5, backends.GPU_MAX_K + 1):  # beyond the GPU's k limit: the CPU answers
        calls = len(fake_gpu.knn_calls)
        sims, found = gpu.search(queries, k)
        expected_sims, expected = cpu.search(queries, k)
        assert found == expected and np.allclose(sims, expected_sims)
        assert len(fake_gpu.knn_calls) == calls + (k <= backends.GPU_MAX_K)


def test_ivf_search_on_the_gpu_path(fake_gpu: FakeGpuFaiss) -> None:
    base, queries = _vectors(4000), _vectors(30, seed=2)
    keys = [f"k{i}" for i in range(len(base))]
    gpu = TrainIndex.build(base, keys, kind="ivf", use_gpu=True)
    cpu = TrainIndex.build(base, keys, kind="ivf", use_gpu=False)
    for _ in range(2):
        sims, found = gpu.search(queries, 3)
        expected_sims, expected = cpu.search(queries, 3)
        assert found == expected and np.allclose(sims, expected_sims)
    assert fake_gpu.copies == 1  # copied to the GPU once, then reused
    gpu.add(_vectors(10, seed=3), [f"new{i}" for i in range(10)])
    gpu.search(queries, 3)
    assert fake_gpu.copies == 2  # rows added: a fresh GPU copy
    assert gpu._approx_gpu.nprobe <= backends.GPU_MAX_K


def test_hnsw_stays_on_the_cpu(fake_gpu: FakeGpuFaiss) -> None:
    base = _vectors(500)
    index = TrainIndex.build(base, [f"k{i}" for i in range(500)], kind="hnsw", use_gpu=True)
    _, found = index.search(base[:5], 1)
    assert [row[0] for row in found] == [f"k{i}" for i in range(5)] and fake_gpu.copies == 0


def test_audit_with_a_gpu_index(fake_gpu: FakeGpuFaiss, tmp_path: Path) -> None:
    """The whole embedding audit (fit through the cache, calibration, check) on the faiss-gpu path."""
    from synthgen.audit.detection.auditor import Auditor
    from synthgen.sources import open_source
    from synthgen.sources.spec import SourceSpec

    train = open_source(SourceSpec(type="demo", per_class=8, resolution=32))
    auditor = Auditor.from_source(train, "pixel", cache=tmp_path)
    assert auditor.index.on_gpu and fake_gpu.knn_calls
    verdicts = auditor.check(list(train)[:3])
    assert all(v.flagged and v.similarity == pytest.approx(1.0) for v in verdicts)


# --- LoRA: a half-precision frozen UNet under fp32 adapters -------------------------------------------------


def test_lora_fine_tune_with_a_bf16_frozen_unet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a bf16 GPU the frozen UNet and text encoder are bf16 and the adapters fp32; training steps, validation
    (outside autocast) and the checkpoint sample grid must all run."""
    from pipeline_factories import save_pipeline

    from synthgen.recipe import LoRAConfig
    from synthgen.sources import open_source
    from synthgen.train import train_lora
    from synthgen.training import harness, lora_model

    monkeypatch.setattr(harness, "resolve_precision", lambda requested, device: (torch.bfloat16, False))
    monkeypatch.setattr(lora_model, "GRID_STEPS", 1)
    monkeypatch.setattr(lora_model, "GRID_SEEDS", (0,))
    base = save_pipeline("sd15", tmp_path / "base" / "sd15")
    data = {"type": "demo", "per_class": 4, "resolution": 32}
    config = LoRAConfig(data=data, steps=2, batch_size=4, rank=4, checkpoint_every=1, validation_split=0.25)
    out = train_lora(config, open_source(config.data, base.parent), tmp_path / "out", device="cpu", base=base)
    records = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if r.get("loss") is not None)
    assert any(r.get("val_loss") is not None for r in records)
