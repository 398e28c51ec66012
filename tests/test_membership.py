"""Membership inference: ROC math on constructed scores, and both attacks against a UNet overfit on 4 phantoms."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from synthgen.audit.privacy.membership import (
    MIAConfig,
    attack_metrics,
    auc_score,
    roc_curve,
    run_membership,
    tpr_at_fpr,
)
from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.demo import DEMO_CLASSES, draw_phantom
from synthgen.sources.memory import MemorySource

RESOLUTION = 32
OVERFIT_STEPS = 80


# --- ROC math ----------------------------------------------------------------------------------------------


def test_auc_of_separated_inverted_and_identical_scores() -> None:
    members, nonmembers = np.array([0.1, 0.2, 0.3]), np.array([0.4, 0.5, 0.6, 0.7])
    assert auc_score(members, nonmembers) == 1.0  # lower score = member: perfect attack
    assert auc_score(nonmembers, members) == 0.0
    assert auc_score(np.ones(5), np.ones(7)) == 0.5  # ties count half
    assert auc_score(np.array([0.1, 0.5]), np.array([0.3, 0.7])) == 0.75  # 3 of 4 pairs ordered


def test_roc_and_tpr_at_low_fpr() -> None:
    fpr, tpr = roc_curve(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.5, 3.5, 5.0, 6.0]))
    assert fpr.tolist() == [0.0, 0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0]
    assert tpr.tolist() == [0.0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0]
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc_score(np.array([1.0, 2, 3, 4]), np.array([2.5, 3.5, 5, 6])))
    interpolated, achieved, exact = tpr_at_fpr(fpr, tpr, 0.1)
    assert (achieved, exact) == (0.0, 0.5)  # the last point at FPR <= 10%
    assert interpolated == pytest.approx(0.5)  # the next point (0.25, 0.5) has the same TPR
    interpolated, _, _ = tpr_at_fpr(np.array([0.0, 0.0, 0.02, 1.0]), np.array([0.0, 0.2, 0.6, 1.0]), 0.01)
    assert interpolated == pytest.approx(0.4)  # halfway between (0, 0.2) and (0.02, 0.6)


def test_attack_metrics_report_the_resolution_of_the_1pct_point() -> None:
    rng = np.random.default_rng(0)
    few = attack_metrics(rng.normal(0, 1, 50), rng.normal(1, 1, 20))
    assert few["coarse"] and "only 20 non-members" in few["note"] and few["exact_point"]["fpr"] == 0.0
    many = attack_metrics(rng.normal(0, 1, 500), rng.normal(1, 1, 1000))
    assert not many["coarse"] and "10 non-member" in many["note"]
    assert 0.7 < many["auc"] < 0.82 and many["auc_ci95"][0] < many["auc"] < many["auc_ci95"][1]
    assert many["exact_point"]["fpr"] <= 0.01 and 0 < many["tpr_at_1pct_fpr"] < 0.3
    assert len(many["roc"]["fpr"]) <= 200 and many["roc"]["fpr"][0] == 0.0 and many["roc"]["tpr"][-1] == 1.0
    chance = attack_metrics(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000))
    assert abs(chance["auc"] - 0.5) < 0.04 and chance["tpr_at_1pct_fpr"] < 0.03


# --- an overfit model --------------------------------------------------------------------------------------


def phantoms(start: int, n: int) -> list[Sample]:
    out = []
    for i in range(start, start + n):
        image, caption, _ = draw_phantom(DEMO_CLASSES[i % 3], 0, i, RESOLUTION)
        out.append(Sample(f"phantom-{i}", image, caption, DEMO_CLASSES[i % 3]))
    return out


MEMBERS, NONMEMBERS = phantoms(0, 4), phantoms(100, 8)


@pytest.fixture(scope="module")
def overfit_model(tmp_path_factory) -> Path:
    """A StableDiffusionPipeline whose (small) UNet was trained only on MEMBERS until it memorized them."""
    import torch
    from diffusers import UNet2DConditionModel

    from synthgen.models.msdm import (
        PRESETS,
        assemble_pipeline,
        build_text_encoder,
        build_vae,
        train_tokenizer,
        training_scheduler,
    )

    torch.manual_seed(0)
    preset = PRESETS["tiny"]
    tokenizer = train_tokenizer([s.text for s in MEMBERS + NONMEMBERS], preset)
    vae, text_encoder = build_vae(preset, RESOLUTION), build_text_encoder(preset, len(tokenizer))
    unet = UNet2DConditionModel(  # smaller than the tiny preset: the test trains it on two shared CPU cores
        sample_size=RESOLUTION // preset.vae_downsample,
        in_channels=preset.latent_channels,
        out_channels=preset.latent_channels,
        block_out_channels=(32, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=preset.text_hidden,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    pixels = np.stack([np.asarray(s.image, np.float32).transpose(2, 0, 1) / 127.5 - 1 for s in MEMBERS])
    with torch.no_grad():
        latents = vae.encode(torch.from_numpy(pixels)).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1 / latents.std()))
        latents = latents * vae.config.scaling_factor
        ids = tokenizer(
            [s.text for s in MEMBERS], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        context = text_encoder(ids)[0]
    scheduler = training_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=3e-3)
    unet.train()
    for _ in range(OVERFIT_STEPS):
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (len(latents),))
        prediction = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("overfit") / "model"
    assemble_pipeline(vae, text_encoder, tokenizer, unet).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_members_of_an_overfit_model_are_detected(overfit_model: Path) -> None:
    members = MemorySource(MEMBERS, unreadable=("broken.png",))
    summary, member_scores, _ = run_membership(overfit_model, members, MemorySource(NONMEMBERS), MIAConfig())
    json.dumps(summary, allow_nan=False)
    assert summary["n_members"] == 4 and summary["n_nonmembers"] == 8 and summary["resolution"] == RESOLUTION
    loss = summary["attacks"]["loss"]
    assert loss["auc"] > 0.8, summary["attacks"]
    assert loss["median"]["members"] < loss["median"]["nonmembers"]
    assert loss["coarse"] and loss["exact_point"]["fpr"] == 0.0 and "only 8 non-members" in loss["note"]
    assert set(summary["attacks"]) == {"loss", "pia"} and 0.0 <= summary["attacks"]["pia"]["auc"] <= 1.0
    assert summary["skipped"]["members"] == {
        "count": 1,
        "items": [{"key": "broken.png", "reason": "cannot decode image: corrupt"}],
    }
    assert member_scores.keys == [s.key for s in MEMBERS]
    again, _, _ = run_membership(
        overfit_model, MemorySource(MEMBERS), MemorySource(NONMEMBERS), MIAConfig(max_images=2)
    )
    assert again["n_members"] == 2 and again["n_nonmembers"] == 2
    assert (
        again["attacks"]["loss"]["median"]["members"]
        == pytest.approx(  # fixed noise: deterministic up to the summary's 5-decimal rounding
            float(np.median(member_scores.loss[:2])), abs=1e-5
        )
    )


def write_imagefolder(folder: Path, samples: list[Sample], corrupt: tuple[str, ...] = ()) -> None:
    (folder / "images").mkdir(parents=True)
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "text"])
        for sample in samples:
            sample.image.save(folder / "images" / f"{sample.key}.png")
            writer.writerow([f"images/{sample.key}.png", sample.label, sample.text])
        for name in corrupt:
            (folder / "images" / name).write_bytes(b"\x00not an image" * 20)
            writer.writerow([f"images/{name}", "polyp", ""])


@pytest.mark.slow
def test_cli_membership_only_writes_summary_scores_and_report(overfit_model: Path, tmp_path: Path) -> None:
    write_imagefolder(tmp_path / "train", MEMBERS)
    write_imagefolder(tmp_path / "holdout", NONMEMBERS, corrupt=("corrupt.png",))
    args = ["audit", "--train", str(tmp_path / "train"), "--holdout", str(tmp_path / "holdout")]
    result = CliRunner().invoke(app, [*args, "--model", str(overfit_model), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "membership loss: AUC" in result.output and "skipped 1 unreadable image(s) in --holdout" in result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["membership"]["n_members"] == 4 and summary["membership"]["n_nonmembers"] == 8
    assert summary["membership"]["skipped"]["nonmembers"]["items"][0]["key"] == "images/corrupt.png"
    assert "n_candidates" not in summary and summary["holdout"]["description"]
    table = pq.read_table(tmp_path / "out" / "membership.parquet").to_pylist()
    assert len(table) == 12 and sum(row["member"] for row in table) == 4
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Membership inference" in html and "ROC curves" in html and "images/corrupt.png" in html
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "MODEL"], "--model needs --holdout"),
        (["--model", "MISSING", "--holdout", "demo"], "--model: "),
        (["--model", "EMPTY", "--holdout", "demo"], "not a diffusers pipeline folder"),
        ([], "nothing to audit"),
        (["--candidates", "demo", "--holdout", "NOPE"], "--holdout: data path not found"),
    ],
)
def test_cli_audit_errors_are_one_line(tmp_path: Path, extra: list[str], message: str) -> None:
    (tmp_path / "EMPTY").mkdir()
    paths = {"MODEL": str(tmp_path), "MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "EMPTY")}
    paths["NOPE"] = str(tmp_path / "nope")
    extra = [paths.get(arg, arg) for arg in extra]
    result = CliRunner().invoke(app, ["audit", "--train", "demo", "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output


def test_load_pipeline_rejects_a_folder_without_the_parts(tmp_path: Path) -> None:
    from synthgen.audit.privacy.membership import load_pipeline

    with pytest.raises(SynthgenError, match="not a diffusers pipeline folder"):
        load_pipeline(tmp_path)
