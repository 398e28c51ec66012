"""`synthgen audit`: the command and its terminal lines (registered on the app in cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from synthgen.cli_session import console, out, reporting, user_errors
from synthgen.errors import SynthgenError


def _open_flag(flag: str, value: str) -> Any:
    """Open a data source named on the command line; errors name the flag."""
    from synthgen.sources import open_source

    try:
        return open_source(value, Path.cwd())
    except SynthgenError as error:
        raise SynthgenError(f"{flag}: {error}") from None


@user_errors
def audit_command(
    train: Annotated[str, typer.Option(help="Training data: folder, .parquet, .tar, synthgen output or 'demo'.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for audit.parquet, summary.json, report.html.")],
    candidates: Annotated[
        str | None, typer.Option(help="Images to check for copies (same kinds as --train); optional with --model.")
    ] = None,
    holdout: Annotated[
        str | None,
        typer.Option(help="Real images of the same domain never trained on: reference for the privacy metrics."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Diffusers pipeline folder trained on --train: run membership inference (needs --holdout)."),
    ] = None,
    max_images: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many images per side for --model, and holdout images for metrics."),
    ] = None,
    embedder: Annotated[
        str, typer.Option(help="Copy detector: copydetect (default: local features + geometry) or an embedder (pixel).")
    ] = "copydetect",
    threshold: Annotated[
        str, typer.Option(help="Similarity at or above which a candidate is a copy, or 'auto' (from the training set).")
    ] = "auto",
    group_by: Annotated[
        str,
        typer.Option(
            help="threshold auto: each training image's group is left out of its calibration search: a metadata "
            "column (patient_id), 'sequence' (file-name numbering) or 'auto' (a patient_id column, else sequence)."
        ),
    ] = "auto",
    group_pattern: Annotated[
        str | None,
        typer.Option(help="Regex on file names giving the group where the --group-by column is empty (first group)."),
    ] = None,
    show_training_images: Annotated[
        bool, typer.Option(help="Put the matched training images in report.html (off: privacy).")
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option(help="Let --model load pickled weights (.bin, .pt, .ckpt): they can run code; trusted only.")
    ] = False,
) -> None:
    """Flag candidates that copy a training image, measure privacy metrics, and test membership inference."""
    from synthgen.audit.entry import run_audit
    from synthgen.audit.privacy.membership import MIAConfig
    from synthgen.models.safe_weights import check_pipeline_folder

    if out_dir.exists() and not out_dir.is_dir():
        raise SynthgenError(f"--out: {out_dir} exists and is a file, not a folder")
    if candidates is None and model is None:
        raise SynthgenError("nothing to audit: give --candidates (copy audit) and/or --model (membership inference)")
    if model is not None:
        if holdout is None:
            raise SynthgenError("--model needs --holdout: images of the same domain that the model never saw")
        if not model.is_dir():
            raise SynthgenError(f"--model: {model} is not a folder")
        if not (model / "model_index.json").is_file():
            raise SynthgenError(f"--model: {model} is not a diffusers pipeline folder (no model_index.json)")
        check_pipeline_folder(model, "--model", allow_pickle, opt_in="--allow-pickle")  # before reading any data
    train_source = _open_flag("--train", train)
    candidate_source = None if candidates is None else _open_flag("--candidates", candidates)
    holdout_source = None if holdout is None else _open_flag("--holdout", holdout)
    with reporting() as reporter:
        summary = run_audit(
            train_source,
            candidate_source,
            out_dir,
            holdout=holdout_source,
            model=model,
            embedder=embedder,
            threshold=threshold,
            group_by=group_by,
            group_pattern=group_pattern,
            show_training_images=show_training_images,
            max_images=max_images,
            mia=MIAConfig(allow_pickle=allow_pickle),
            cache=True,  # the fitted training index is kept under the cache root (fit_cache.py)
            progress=reporter.progress,
        )
    _print_audit(summary)
    out.print(f"report: {out_dir / 'report.html'}", markup=False)


def _print_audit(summary: dict[str, Any]) -> None:
    """The headline numbers of each part that ran, and the unreadable images (first 20 per set)."""
    if "n_candidates" in summary:
        out.print(
            f"{summary['n_flagged']} of {summary['n_candidates']} candidates flagged "
            f"(similarity >= {summary['threshold']}); nearest-neighbour p95 {summary['similarity']['p95']}",
            highlight=False,
        )
    metrics = summary.get("metrics") or {}
    share = metrics.get("holdout")
    if share:
        low, high = share["ci95"]
        c_t = (metrics.get("data_copying") or {}).get("C_T")
        out.print(
            f"holdout share {share['share_nearer_train']} (95% CI {low}-{high}, ideal 0.5); C_T {c_t}; "
            f"authentic {metrics['authenticity']['share_authentic']} "
            f"(holdout {metrics['authenticity']['holdout_share_authentic']})",
            highlight=False,
        )
    membership = summary.get("membership")
    if membership:
        for name, attack in membership["attacks"].items():
            point = attack["exact_point"]
            out.print(
                f"membership {name}: AUC {attack['auc']:.3f}, TPR at 1% FPR {attack['tpr_at_1pct_fpr']:.3f} "
                f"(exact: TPR {point['tpr']:.3f} at FPR {point['fpr']:.3f}; {membership['n_members']} members, "
                f"{membership['n_nonmembers']} non-members)",
                highlight=False,
            )
    skipped = summary.get("skipped", {})
    sides = [(f"--{side}", skipped.get(side, {}).get("items", [])) for side in ("train", "candidates")]
    holdout_info = summary.get("holdout") or {}
    sides.append(("--holdout", holdout_info.get("skipped", {}).get("items", [])))
    if membership:
        sides += [
            (f"--{side} (membership)", membership["skipped"][key]["items"])
            for side, key in (("train", "members"), ("holdout", "nonmembers"))
        ]
    for flag, items in sides:
        if items:
            console.print(f"[yellow]skipped {len(items)} unreadable image(s) in {escape(flag)}:[/]")
            for item in items[:20]:
                console.print(f"  {item['key']}: {item['reason']}", markup=False, highlight=False)
