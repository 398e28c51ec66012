"""The stock loop as a user runs it: a fresh Python process that imports diffusers, loads the pipeline folder,
switches to DDIM and saves every image of a per-class loop as a PNG (bench_generation's whole-process stock path).

    python bench/stock_script.py MODEL_DIR OUT_DIR --images 768 --batch 16 --steps 25 --guidance 3.5 --resolution 64

The loop is `gen_paths._stock_loop`, the in-process stock path's, so the two differ only by the process around it
(interpreter start, imports, loading), which `synthgen build` pays too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--guidance", type=float, required=True)
    parser.add_argument("--resolution", type=int, required=True)
    args = parser.parse_args()

    import torch
    from diffusers import DDIMScheduler
    from gen_model import BenchConfig, load_pipeline
    from gen_paths import _stock_loop

    pipeline = load_pipeline(args.model, torch.device("cpu"), torch.float32)
    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    cfg = BenchConfig(images=args.images, batch=args.batch, steps=args.steps, guidance=args.guidance)
    call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    args.out.mkdir(parents=True, exist_ok=True)
    _stock_loop(
        pipeline, cfg, {**call, "height": args.resolution, "width": args.resolution}, torch.device("cpu"), args.out
    )


if __name__ == "__main__":
    main()
