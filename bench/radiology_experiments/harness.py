"""Quick utility harness for the radiology-real recipe experiments (Helper C, issue 9).

Loads the real patient-disjoint split (train/ and holdout/ imagefolders from `synthgen split`) and a build's
synthetic Parquet shards at 64 px grayscale, trains a small CNN on (a) real train, (b) synthetic, (c) both,
and reports balanced accuracy on the held-out patients, plus label fidelity (a real-trained classifier's
balanced accuracy on the synthetic images against their own labels). Also writes a PNG grid of the set.

    python bench/radiology_experiments/harness.py BUILD_DIR [--split /tmp/radio/split] [--seeds 0 1 2]

Not the project's official evaluation (synthgen.evaluation.utility); a small stand-in for choosing settings.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import time
from pathlib import Path

import numpy as np

CLASSES = ["covid19", "pneumonia", "no_finding", "abnormal"]
SIDE = 64


def load_real(folder: Path, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, ImageOps

    if cache is not None and cache.exists():
        z = np.load(cache)
        return z["x"], z["y"]
    xs, ys = [], []
    with open(folder / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            im = Image.open(folder / row["file_name"]).convert("L")
            im = ImageOps.fit(im, (SIDE, SIDE), Image.Resampling.BICUBIC)
            xs.append(np.asarray(im, dtype=np.uint8))
            ys.append(CLASSES.index(row["label"]))
    x, y = np.stack(xs), np.asarray(ys, dtype=np.int64)
    if cache is not None:
        np.savez(cache, x=x, y=y)
    return x, y


def load_synthetic(build: Path) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq
    from PIL import Image, ImageOps

    xs, ys = [], []
    for shard in sorted(glob.glob(str(build / "data" / "*.parquet"))):
        table = pq.read_table(shard, columns=["image", "label_name"]).to_pylist()
        for row in table:
            im = Image.open(io.BytesIO(row["image"]["bytes"]))
            assert im.mode == "L", f"synthetic image mode {im.mode} (expected grayscale L)"
            im = ImageOps.fit(im, (SIDE, SIDE), Image.Resampling.BICUBIC)
            xs.append(np.asarray(im, dtype=np.uint8))
            ys.append(CLASSES.index(row["label_name"]))
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    recalls = [float((p[y == c] == c).mean()) for c in np.unique(y)]
    return float(np.mean(recalls))


def make_cnn():
    import torch.nn as nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(
        block(1, 16),
        block(16, 32),
        block(32, 64),
        block(64, 96),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(96, len(CLASSES)),
    )


def train_cnn(x: np.ndarray, y: np.ndarray, seed: int, steps: int = 600, batch: int = 64):
    """Class-balanced sampling, light augmentation (shift, flip, brightness/contrast), AdamW + cosine."""
    import torch

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = make_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt = torch.from_numpy(x).float().div(127.5).sub(1).unsqueeze(1)
    yt = torch.from_numpy(y)
    counts = np.bincount(y, minlength=len(CLASSES)).astype(float)
    w = torch.from_numpy(1.0 / np.maximum(counts[y], 1))
    model.train()
    for _ in range(steps):
        idx = torch.multinomial(w, batch, replacement=True, generator=g)
        xb = xt[idx]
        flip = torch.rand(batch, generator=g) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        dx, dy = torch.randint(-4, 5, (2,), generator=g).tolist()
        xb = torch.roll(xb, (dx, dy), (2, 3))
        scale = 1 + 0.2 * (torch.rand(batch, 1, 1, 1, generator=g) - 0.5)
        shift = 0.2 * (torch.rand(batch, 1, 1, 1, generator=g) - 0.5)
        xb = xb * scale + shift
        loss = torch.nn.functional.cross_entropy(model(xb), yt[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        xt = torch.from_numpy(x).float().div(127.5).sub(1).unsqueeze(1)
        logits = torch.cat([model(xt[i : i + 256]) + model(xt[i : i + 256].flip(-1)) for i in range(0, len(xt), 256)])
    return logits.argmax(1).numpy()


def confusion(y, p):
    m = np.zeros((len(CLASSES), len(CLASSES)), dtype=int)
    for a, b in zip(y, p, strict=True):
        m[a, b] += 1
    return m.tolist()


def save_grid(x: np.ndarray, y: np.ndarray, path: Path, per_class: int = 12, side: int = 64) -> None:
    from PIL import Image

    grid = Image.new("L", (side * per_class, side * len(CLASSES)))
    for r, c in enumerate(range(len(CLASSES))):
        for j, i in enumerate(np.flatnonzero(y == c)[:per_class]):
            grid.paste(Image.fromarray(x[i]).resize((side, side)), (j * side, r * side))
    grid.save(path)


def evaluate(build: Path, split: Path, seeds: list[int], steps: int, synth_only_grid: bool = False) -> dict:
    import torch

    torch.set_num_threads(int(__import__("os").environ.get("SYNTHGEN_THREADS", "1")))
    t0 = time.time()
    xr, yr = load_real(split / "train", split / "train64.npz")
    xh, yh = load_real(split / "holdout", split / "holdout64.npz")
    xs, ys = load_synthetic(build)
    save_grid(xs, ys, Path(str(build) + "-grid.png"))
    out: dict = {
        "build": str(build),
        "n_real": len(yr),
        "n_holdout": len(yh),
        "n_synthetic": len(ys),
        "synthetic_per_class": np.bincount(ys, minlength=4).tolist(),
        "seeds": seeds,
        "cnn_steps": steps,
    }
    res = {k: [] for k in ("trtr", "tstr", "trtr_plus_s", "label_fidelity", "fidelity_ratio")}
    confs = {}
    for seed in seeds:
        m_real = train_cnn(xr, yr, seed, steps)
        trtr = balanced_accuracy(yh, predict(m_real, xh))
        ps = predict(m_real, xs)
        lf = balanced_accuracy(ys, ps)
        m_syn = train_cnn(xs, ys, seed, steps)
        ph = predict(m_syn, xh)
        tstr = balanced_accuracy(yh, ph)
        m_both = train_cnn(np.concatenate([xr, xs]), np.concatenate([yr, ys]), seed, steps)
        both = balanced_accuracy(yh, predict(m_both, xh))
        for k, v in (
            ("trtr", trtr),
            ("tstr", tstr),
            ("trtr_plus_s", both),
            ("label_fidelity", lf),
            ("fidelity_ratio", lf / trtr),
        ):
            res[k].append(v)
        confs[seed] = {"tstr": confusion(yh, ph), "label_fidelity": confusion(ys, ps)}
        print(
            f"seed {seed}: trtr {trtr:.3f} tstr {tstr:.3f} both {both:.3f} label_fidelity {lf:.3f}"
            f"  ({time.time() - t0:.0f}s)",
            flush=True,
        )
    for k, v in res.items():
        out[k] = {"mean": float(np.mean(v)), "values": v}
    out["tstr_over_trtr"] = out["tstr"]["mean"] / out["trtr"]["mean"]
    out["confusion_seed0"] = confs[seeds[0]]
    out["seconds"] = time.time() - t0
    return out


def official(build: Path, split: Path, seeds: list[int], curve: bool) -> dict:
    """Helper B's synthgen.evaluation.utility.utility_metrics on the same arrays (its default budget)."""
    from synthgen.evaluation.utility import LabelledImages, utility_metrics

    xr, yr = load_real(split / "train", split / "train64.npz")
    xh, yh = load_real(split / "holdout", split / "holdout64.npz")
    xs, ys = load_synthetic(build)
    save_grid(xs, ys, Path(str(build) + "-grid.png"))
    sets = [LabelledImages(x[:, None], y, CLASSES) for x, y in ((xr, yr), (xs, ys), (xh, yh))]
    result = utility_metrics(*sets, seeds=seeds, curve_sizes=(10, 25, 50, 100) if curve else None, progress=print)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("build", type=Path)
    ap.add_argument("--split", type=Path, default=Path("/tmp/radio/split"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--official", action="store_true", help="use synthgen.evaluation.utility instead")
    ap.add_argument("--curve", action="store_true", help="with --official: the learning curve too")
    a = ap.parse_args()
    if a.official:
        result = official(a.build, a.split, a.seeds, a.curve)
        brief = {k: result[k] for k in ("trtr", "tstr", "trtr_plus_synthetic", "gap", "label_fidelity")}
        print(json.dumps(brief, indent=1, default=str)[:6000])
        (a.out or Path(str(a.build) + "-official.json")).write_text(json.dumps(result, indent=1, default=str))
        return
    result = evaluate(a.build, a.split, a.seeds, a.steps)
    print(json.dumps({k: v for k, v in result.items() if k != "confusion_seed0"}, indent=1))
    print("confusion (seed 0; rows true, cols predicted; order", CLASSES, "):", result["confusion_seed0"])
    (a.out or Path(str(a.build) + "-eval.json")).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
