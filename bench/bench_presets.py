"""MSDM preset sizes and CPU training cost, measured (the numbers in docs/models.md).

    python bench/bench_presets.py sizes                       # parameters and weight memory of every preset
    python bench/bench_presets.py steps PRESET RES BATCH [N [THREADS]]  # s per VAE / UNet step, peak RSS

`steps` runs N optimizer steps of each phase through the real training code (synthgen.training.loop on demo
phantoms, built-in BERT trained with the UNet, fp32 on CPU) in this process and reports the median seconds
per step and the process's peak resident memory. Run each configuration in a fresh process.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
from pathlib import Path


def sizes() -> None:
    from synthgen.models.msdm import PRESETS, build_text_encoder, build_unet, build_vae

    for name, preset in PRESETS.items():
        counts = {
            "vae": build_vae(preset, 64),
            "unet": build_unet(preset, 64),
            "text_encoder": build_text_encoder(preset, preset.vocab_size),
        }
        counts = {part: sum(p.numel() for p in module.parameters()) for part, module in counts.items()}
        total = sum(counts.values())
        print(json.dumps({"preset": name, **counts, "total": total, "fp32_MiB": total * 4 / 2**20}))


def steps(preset_name: str, resolution: int, batch: int, n: int, threads: int) -> None:
    import torch

    from synthgen.models.msdm import PRESETS, build_unet, build_vae
    from synthgen.models.text_encoders import make_text_encoder
    from synthgen.recipe import TextEncoderConfig, TrainingConfig
    from synthgen.sources import open_source
    from synthgen.sources.spec import SourceSpec
    from synthgen.training import msdm_phases
    from synthgen.training.checkpoints import CheckpointStore
    from synthgen.training.data import decode_training_data
    from synthgen.training.loop import LoopSettings, run_phase
    from synthgen.training.training_log import TrainingLog

    torch.set_num_threads(threads)
    preset = PRESETS[preset_name]
    source = open_source(SourceSpec(type="demo", per_class=max(8, batch), resolution=resolution))
    data = decode_training_data(source, resolution)
    config = TrainingConfig(data=SourceSpec(type="demo"), preset=preset_name, resolution=resolution, batch_size=batch,
                            vae_steps=n, unet_steps=n, checkpoint_every=10**6, validation_split=0)  # fmt: skip
    device = torch.device("cpu")
    settings = LoopSettings(batch, batch, 10**6, 0, device)
    empty = data.subset(data.images[:0, 0, 0, 0].astype(int))
    with tempfile.TemporaryDirectory() as work:
        log = TrainingLog(Path(work) / "log.jsonl", ["vae", "unet"])
        store = CheckpointStore(Path(work) / "ckpt")
        vae = build_vae(preset, resolution)
        run_phase(msdm_phases.vae_phase(vae, data, empty, config, device), settings, store, log)
        vae.requires_grad_(False)
        latents = msdm_phases.encode_latents(vae, data, device)
        text = make_text_encoder(TextEncoderConfig(), preset, captions=data.captions, prompts=[], private=False)
        unet = build_unet(preset, resolution, vae=vae, cross_attention_dim=text.hidden_size)
        phase = msdm_phases.unet_phase(
            msdm_phases.Denoiser(unet, text), (latents, text.tokenize(data.captions)), None, config, device
        )
        run_phase(phase, settings, store, log)
        per_step = {}
        for name in ("vae", "unet"):
            seconds = [r["seconds"] for r in log.steps(name)]
            per_step[name] = statistics.median(b - a for a, b in zip(seconds[1:], seconds[2:], strict=False))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"preset": preset_name, "resolution": resolution, "batch": batch, "threads": torch.get_num_threads()}
    result.update({f"{name}_s_per_step": round(value, 3) for name, value in per_step.items()})
    print(json.dumps({**result, "peak_rss_MiB": round(peak)}))


if __name__ == "__main__":
    if sys.argv[1] == "sizes":
        sizes()
    else:
        n, threads = (int(sys.argv[5]) if len(sys.argv) > 5 else 8), (int(sys.argv[6]) if len(sys.argv) > 6 else 2)
        steps(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), n, threads)
