"""`synthgen eval` end to end on small constructed sets: keys, per-class blocks, errors, the test-leak guard.

Two classes that a classifier separates easily ("bright" discs on noise and "dark" stripes) make the expected
answers known: a synthetic set drawn like the real one has high TSTR and label fidelity; one whose labels are
swapped has low label fidelity. Metric maths are tested in test_eval_fidelity.py and test_eval_utility.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from browser import EXTERNAL, screenshot
from PIL import Image
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.cli_eval import eval_brief
from synthgen.evaluation.entry import EvalRequest, run_eval
from synthgen.evaluation.image_sets import read_set, split_by_group

FIDELITY_KEYS = {
    "n_real",
    "n_synthetic",
    "fd",
    "fd_ci",
    "kid_mean",
    "kid_std",
    "precision",
    "recall",
    "density",
    "coverage",
    "vendi",
}
QUICK = ["--seeds", "2", "--classifier-steps", "20", "--classifier-resolution", "32", "--bootstrap", "20"]


def draw(kind: str, rng: np.random.Generator, side: int = 32) -> Image.Image:
    """A grayscale image of class `kind`: a bright disc or dark stripes, at a random place, on noise."""
    yy, xx = np.mgrid[:side, :side]
    pixels = rng.normal(110, 18, (side, side))
    cx, cy = rng.integers(8, side - 8, 2)
    if kind == "bright":
        pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < rng.integers(16, 40)] += 110
    else:
        pixels[((xx + int(cx)) // 3) % 2 == 0] -= 70
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")


def make_folder(root: Path, per_class: int, seed: int, swap: bool = False, classes=("bright", "dark")) -> Path:
    """An imagefolder of `per_class` images per class; `swap` labels every image with the other class."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    rows = []
    for label in classes:
        for i in range(per_class):
            name = f"images/{label}_{seed}_{i:03d}.png"
            draw(label, rng).save(root / name)
            shown = {"bright": "dark", "dark": "bright"}.get(label, label) if swap else label
            rows.append({"file_name": name, "label": shown, "text": f"a {shown} image", "patient_id": f"p{i // 2}"})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    return {
        "real": make_folder(root / "real", 40, seed=0),
        "synthetic": make_folder(root / "synthetic", 30, seed=1),
        "swapped": make_folder(root / "swapped", 30, seed=2, swap=True),
        "test": make_folder(root / "test", 20, seed=3),
    }


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    return result.exit_code, result.output


def test_eval_writes_every_key_overall_and_per_class(sets: dict[str, Path], tmp_path: Path) -> None:
    code, output = run(
        [
            "--real",
            str(sets["real"]),
            "--synthetic",
            str(sets["synthetic"]),
            "--test",
            str(sets["test"]),
            "-o",
            str(tmp_path / "out"),
            *QUICK,
        ]
    )
    assert code == 0, output
    summary = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert set(summary) >= FIDELITY_KEYS
    assert set(summary["per_class"]) == {"bright", "dark"}
    for block in summary["per_class"].values():
        assert set(block) >= FIDELITY_KEYS
    assert summary["n_real"] == 80 and summary["n_synthetic"] == 60
    for regime in ("trtr", "tstr", "trtr_plus_synthetic"):
        for metric in ("balanced_accuracy", "macro_f1", "macro_auroc"):
            block = summary["utility"][regime][metric]
            assert len(block["values"]) == 2 and block["ci"][0] <= block["mean"] <= block["ci"][1]
    assert summary["utility"]["tstr"]["balanced_accuracy"]["mean"] > 0.9  # drawn like the real images
    assert summary["label_fidelity"]["agreement"] > 0.9
    assert summary["features"]["name"] and len(summary["features"]["sha256"]) == 64
    assert summary["seeds"] == [0, 1]
    assert summary["baseline"]["fd"] >= 0  # real test vs real reference, at these sizes
    assert "balanced accuracy" in output and "report:" in output
    brief = eval_brief(summary)  # the build's one line
    assert brief.startswith("eval: FD ") and "trained on synthetic" in brief and "label fidelity" in brief
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Is this synthetic set worth using?" in html and "Real images are not shown" in html
    assert not EXTERNAL.search(html) and "Confusion matrices" in html and "Learning curves" in html
    pixels = screenshot(tmp_path / "out" / "report.html", tmp_path)
    assert pixels.std() > 10  # tables, grids and charts, not a blank page


def test_swapped_labels_show_in_label_fidelity_and_tstr(sets: dict[str, Path], tmp_path: Path) -> None:
    request = EvalRequest(
        real=sets["real"],
        synthetic=sets["swapped"],
        test=sets["test"],
        out_dir=tmp_path,
        seeds=1,
        classifier_steps=20,
        classifier_resolution=32,
        learning_curve=False,
        bootstrap=20,
    )
    summary = run_eval(request)
    assert summary["label_fidelity"]["agreement"] < 0.2
    assert summary["utility"]["tstr"]["balanced_accuracy"]["mean"] < 0.3  # learns the opposite labels
    assert summary["per_class"]["bright"]["fd"] > summary["baseline"]["per_class"]["bright"]["fd"]


def test_split_by_holds_out_whole_patients(sets: dict[str, Path], tmp_path: Path) -> None:
    code, output = run(
        [
            "--real",
            str(sets["real"]),
            "--synthetic",
            str(sets["synthetic"]),
            "--split-by",
            "patient_id",
            "-o",
            str(tmp_path),
            "--no-utility",
            "--medvqa",
            "--bootstrap",
            "20",
        ]
    )
    assert code == 0, output
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["sets"]["test"]["images"] + summary["sets"]["real"]["images"] == 80
    assert "utility" not in summary  # --no-utility
    assert summary["medvqa"]["pairs"] == 1 and 0 < summary["medvqa"]["fidelity"] <= 1000
    real, test = split_by_group(read_set("real", sets["real"]), "patient_id")
    patients = [{row["patient_id"] for row in side.metadata} for side in (real, test)]
    assert len(test) == summary["sets"]["test"]["images"] and not patients[0] & patients[1]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "--real: "),
        ("one_class", "needs at least 2 classes"),
        ("unknown_class", "are not labels of the real data"),
        ("leak", "also in the real/training data"),
        ("missing_split_column", "--split-by: "),
    ],
)
def test_bad_inputs_are_one_line_errors(sets: dict[str, Path], tmp_path: Path, case: str, message: str) -> None:
    real, synthetic, extra = str(sets["real"]), str(sets["synthetic"]), ["--test", str(sets["test"])]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        real = str(tmp_path / "empty")
    elif case == "one_class":
        synthetic = str(make_folder(tmp_path / "one", 8, seed=5, classes=("bright",)))
    elif case == "unknown_class":
        synthetic = str(make_folder(tmp_path / "odd", 8, seed=5, classes=("bright", "grey")))
    elif case == "leak":
        extra = ["--test", real]
    else:
        extra = ["--split-by", "ward"]
    code, output = run(["--real", real, "--synthetic", synthetic, "-o", str(tmp_path / "out"), *extra, *QUICK])
    assert code != 0
    assert message in output and "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], output
    assert not (tmp_path / "out" / "eval.json").exists()


def test_unreadable_images_are_counted_not_fatal(sets: dict[str, Path], tmp_path: Path) -> None:
    broken = make_folder(tmp_path / "broken", 10, seed=7)
    (broken / "images" / "bright_7_000.png").write_bytes(b"not an image")
    summary = run_eval(EvalRequest(real=sets["real"], synthetic=broken, out_dir=tmp_path / "out", utility=False))
    assert summary["sets"]["synthetic"]["skipped"] == 1 and summary["n_synthetic"] == 19
