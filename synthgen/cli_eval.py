"""`synthgen eval`: the command and its terminal table (registered on the app in cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from synthgen.cli_session import out, reporting, user_errors
from synthgen.errors import SynthgenError


@user_errors
def eval_command(
    real: Annotated[
        str,
        typer.Option(
            help="Real reference images (the generator's training data): folder, .parquet, .tar or synthgen output."
        ),
    ],
    synthetic: Annotated[str, typer.Option(help="The synthetic set: a synthgen build folder or any image source.")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for eval.json and report.html.")],
    test: Annotated[
        str | None, typer.Option(help="Real images of patients the generator never saw (utility's test set).")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(help="Feature space: default (no downloaded weights), dinov2:PATH, inception:PATH, ..."),
    ] = None,
    split_by: Annotated[
        str | None, typer.Option(help="Without --test: hold out whole groups of --real by this column as the test set.")
    ] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Classifier seeds per regime (mean and 95% CI).")] = 3,
    bootstrap: Annotated[int, typer.Option(min=1, help="Resamples for the FD confidence interval.")] = 200,
    max_per_class: Annotated[int, typer.Option(min=1, help="Images read per class and set (a seeded draw).")] = 500,
    classifier_steps: Annotated[int, typer.Option(min=1, help="Training steps of each utility classifier.")] = 150,
    classifier_resolution: Annotated[
        int, typer.Option(min=8, help="Side of the utility classifier's input (a multiple of 8).")
    ] = 64,
    model: Annotated[
        Path | None, typer.Option(help="The generator's model folder: refuse a --test set it was trained on.")
    ] = None,
    utility: Annotated[bool, typer.Option(help="Train and test the downstream classifiers (the slow part).")] = True,
    medvqa: Annotated[
        bool,
        typer.Option(help="Also compute the MedVQA-GI 2025 image-synthesis scores (use --features open_clip:...)."),
    ] = False,
    show_real_images: Annotated[
        bool, typer.Option(help="Show real images in the report's grids (off: privacy).")
    ] = False,
) -> None:
    """Fidelity, diversity, label fidelity and downstream utility of a synthetic set against real data."""
    from synthgen.evaluation.entry import EvalRequest, run_eval

    if out_dir.exists() and not out_dir.is_dir():
        raise SynthgenError(f"--out: {out_dir} exists and is a file, not a folder")
    request = EvalRequest(
        real=real,
        synthetic=synthetic,
        out_dir=out_dir,
        test=test,
        features=features,
        split_by=split_by,
        seeds=seeds,
        bootstrap=bootstrap,
        max_per_class=max_per_class,
        classifier_steps=classifier_steps,
        classifier_resolution=classifier_resolution,
        utility=utility,
        medvqa=medvqa,
        show_real_images=show_real_images,
        trained_on=training_fingerprint(model) if model is not None else None,
        base_dir=Path.cwd(),
    )
    with reporting() as reporter:
        summary = run_eval(request, reporter)
    print_eval(summary)
    out.print(f"report: {out_dir / 'report.html'}", markup=False)


def training_fingerprint(model: Path) -> str:
    """The training-data fingerprint a synthgen model folder records (its model info)."""
    from synthgen.models.loading import read_model_info

    if not model.is_dir():
        raise SynthgenError(f"--model: {model} is not a folder")
    info = read_model_info(model) or {}
    fingerprint = (info.get("training_data") or {}).get("sha256")
    if not fingerprint:
        raise SynthgenError(f"--model: {model} records no training data (not a model synthgen trained)")
    return str(fingerprint)


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else ("–" if value is None else str(value))


def eval_brief(summary: dict[str, Any]) -> str:
    """One line for the build's output: TSTR against TRTR, label fidelity, FD against the real baseline."""
    utility = summary.get("utility") or {}

    def accuracy(regime: str) -> str:
        return _num(((utility.get(regime) or {}).get("balanced_accuracy") or {}).get("mean"))

    parts = [f"FD {_num(summary.get('fd'), 2)}"]
    if summary.get("baseline"):
        parts[0] += f" (real held-out {_num(summary['baseline'].get('fd'), 2)})"
    if "tstr" in utility:
        parts.append(
            f"balanced accuracy on held-out data trained on synthetic {accuracy('tstr')}, real {accuracy('trtr')}, "
            f"both {accuracy('trtr_plus_synthetic')}"
        )
    if summary.get("label_fidelity"):
        parts.append(f"label fidelity {_num(summary['label_fidelity'].get('agreement'))}")
    return "eval: " + "; ".join(parts)


def print_eval(summary: dict[str, Any]) -> None:
    """Per-class fidelity, then one line per utility regime and label fidelity."""
    table = Table(title=f"fidelity in {summary['features']['name']} features", title_justify="left")
    for column in ("class", "real", "synthetic", "FD", "FD real test", "precision", "recall", "coverage", "Vendi"):
        table.add_column(column, justify="left" if column == "class" else "right")
    baseline = summary.get("baseline") or {}
    rows = [("all", summary, baseline)]
    rows += [(k, v, (baseline.get("per_class") or {}).get(k, {})) for k, v in summary.get("per_class", {}).items()]
    for label, block, base in rows:
        table.add_row(
            label,
            str(block.get("n_real", "")),
            str(block.get("n_synthetic", "")),
            _num(block.get("fd"), 2),
            _num(base.get("fd"), 2),
            *(_num(block.get(k)) for k in ("precision", "recall", "coverage")),
            _num(block.get("vendi"), 1),
        )
    out.print(table)
    utility = summary.get("utility") or {}
    if "skipped" in utility:
        out.print(f"utility: skipped ({utility['skipped']})", markup=False)
        return
    for regime, name in (("trtr", "real"), ("tstr", "synthetic"), ("trtr_plus_synthetic", "real + synthetic")):
        block = (utility.get(regime) or {}).get("balanced_accuracy") or {}
        low, high = (block.get("ci") or [None, None])[:2]
        out.print(
            f"trained on {name}: balanced accuracy {_num(block.get('mean'))} (95% CI {_num(low)}-{_num(high)})",
            markup=False,
            highlight=False,
        )
    fidelity = summary.get("label_fidelity") or {}
    if fidelity:
        out.print(f"label fidelity {_num(fidelity.get('agreement'))}", markup=False, highlight=False)
