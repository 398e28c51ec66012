"""The `synthgen` command line: argument parsing and rich output only.

Heavy libraries (torch, diffusers, transformers, faiss) are imported inside the commands, so `synthgen --help`
answers at once. Every user error is one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from synthgen import __version__
from synthgen.errors import SynthgenError
from synthgen.runtime import Reporter

app = typer.Typer(
    name="synthgen",
    help="Synthetic medical image datasets: recipe -> diffusion model -> class-balanced samples -> "
    "memorization audit -> Parquet/WebDataset shards with provenance.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        out.print(f"synthgen {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Synthetic medical image datasets with a memorization audit and per-sample provenance."""


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn `SynthgenError` into one red line and exit code 2; Ctrl-C into a hint that reruns resume."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except SynthgenError as error:
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except OSError as error:  # disk full, permission denied, a file where a folder should be...
            where = f"{error.filename}: " if error.filename else ""
            message = escape(where + (error.strerror or str(error)))
            console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted:[/] finished shards are kept; run the same command to resume")
            raise typer.Exit(130) from None

    return wrapper


class RichReporter(Reporter):
    """Maps pipeline progress callbacks (stage, done, total) onto rich progress bars, one per stage."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._tasks: dict[str, Any] = {}

    def log(self, message: str, warning: bool = False) -> None:
        style = "yellow" if warning else None
        self._progress.console.print(message, style=style, markup=False, highlight=False)

    def progress(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self._tasks:
            self.finish()  # a new stage means the earlier ones are over
            self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)

    def finish(self) -> None:
        """Close bars of stages whose length was unknown (or that ended early), so their clocks stop."""
        for task in self._progress.tasks:
            if not task.finished:
                self._progress.update(task.id, total=task.completed)


def _progress_bars() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _load(recipe: Path):
    from synthgen.recipe import load_recipe

    return load_recipe(recipe)


RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
OutOption = Annotated[
    Path | None, typer.Option("--out", "-o", help="Output folder (default: the recipe's output.dir).")
]


@app.command()
@user_errors
def validate(recipe: RecipeArg, out_dir: OutOption = None) -> None:
    """Check a recipe as a build would (schema, files, classes, model, audit data, output folder)."""
    from synthgen.validate import validate_recipe

    for line in validate_recipe(_load(recipe), out_dir):
        out.print(f"  {line}", markup=False, highlight=False)
    out.print(f"[green]ok[/]: {escape(str(recipe))} is valid")


@app.command()
@user_errors
def build(
    recipe: RecipeArg,
    out_dir: OutOption = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an output folder that holds another recipe's build.")
    ] = False,
) -> None:
    """Build the dataset a recipe describes (resumes an interrupted build in the same folder)."""
    from synthgen.build import build as run_build
    from synthgen.validate import validate_recipe

    loaded = _load(recipe)
    validate_recipe(loaded, out_dir, overwrite)
    with _progress_bars() as bars:
        reporter = RichReporter(bars)
        result = run_build(loaded, out_dir, overwrite=overwrite, reporter=reporter)
        reporter.finish()
    from rich.table import Table

    out.print(
        f"[bold]{loaded.recipe.name}[/]: {sum(result.class_counts.values())} images in "
        f"{escape(str(result.out_dir.resolve()))}"
    )
    table = Table()
    for column in ("class", "images", "planned"):
        table.add_column(column)
    planned = result.plan.class_counts()
    for label, n in planned.items():
        table.add_row(label, str(result.class_counts.get(label, 0)), str(n))
    out.print(table)
    if result.audit_summary:
        s = result.audit_summary
        out.print(
            f"audit: {s['n_flagged']} of {s['n_candidates']} generated images at or above "
            f"{s['embedder']} similarity {s['threshold']} ({s['n_dropped']} dropped); report: "
            f"{(result.out_dir / 'audit' / 'report.html').resolve()}",
            markup=False,
            highlight=False,
        )
    out.print(f"shards written {result.shards_written}, resumed {result.shards_resumed}")
    if result.shortfall:
        console.print(f"[yellow]warning:[/] classes short of their count after dropping copies: {result.shortfall}")


@app.command()
@user_errors
def train(
    recipe: RecipeArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Pipeline folder to write (and resume in).")],
    overwrite: Annotated[
        bool, typer.Option(help="Start over in a folder that holds a pipeline or another run's checkpoints.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto (a GPU when there is one), cpu, cuda or mps.")] = "auto",
) -> None:
    """Train the recipe's MSDM (model.train) or LoRA (model.lora) into a pipeline folder; a rerun resumes."""
    from synthgen import train as training
    from synthgen.runtime import pick_device
    from synthgen.sources import open_source

    loaded = _load(recipe)
    config = loaded.recipe.model.train or loaded.recipe.model.lora
    if config is None:
        raise SynthgenError(f"{recipe}: model: this recipe uses a pretrained model as is; nothing to train")
    if device not in ("auto", "cpu", "cuda", "mps"):
        raise SynthgenError(f"--device: '{device}' is not one of auto, cpu, cuda, mps")
    try:
        pick_device(device)
    except SynthgenError:
        raise SynthgenError(f"--device: '{device}' is not available on this machine") from None
    source = open_source(config.data, loaded.base_dir)
    with _progress_bars() as bars:
        reporter = RichReporter(bars)
        try:
            training.train_from_recipe(
                loaded, source, out_dir, reporter.progress, device, overwrite=overwrite, notify=reporter.log
            )
        except KeyboardInterrupt:
            reporter.finish()
            last = training.last_checkpoint(out_dir)
            where = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
            console.print(
                f"[yellow]interrupted:[/] {where}; run the same command to resume",
                highlight=False,
            )
            raise typer.Exit(130) from None
        reporter.finish()
    out.print(f"[green]saved[/] {escape(str(out_dir))} (load it with diffusers.DiffusionPipeline.from_pretrained)")


def _open_flag(flag: str, value: str) -> Any:
    """Open a data source named on the command line; errors name the flag."""
    from synthgen.sources import open_source

    try:
        return open_source(value, Path.cwd())
    except SynthgenError as error:
        raise SynthgenError(f"{flag}: {error}") from None


@app.command()
@user_errors
def audit(
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
    show_training_images: Annotated[
        bool, typer.Option(help="Put the matched training images in report.html (off: privacy).")
    ] = False,
) -> None:
    """Flag candidates that copy a training image, measure privacy metrics, and test membership inference."""
    from synthgen.audit.entry import run_audit

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
    train_source = _open_flag("--train", train)
    candidate_source = None if candidates is None else _open_flag("--candidates", candidates)
    holdout_source = None if holdout is None else _open_flag("--holdout", holdout)
    with _progress_bars() as bars:
        reporter = RichReporter(bars)
        summary = run_audit(
            train_source,
            candidate_source,
            out_dir,
            holdout=holdout_source,
            model=model,
            embedder=embedder,
            threshold=threshold,
            show_training_images=show_training_images,
            max_images=max_images,
            progress=reporter.progress,
        )
        reporter.finish()
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


@app.command()
@user_errors
def inspect(out_dir: Annotated[Path, typer.Argument(help="A synthgen output folder.")]) -> None:
    """Count samples per class and shard and re-verify every shard's checksum against the manifest."""
    from synthgen.output.verify import inspect_output, render_inspect

    result = inspect_output(out_dir)
    render_inspect(result, out)
    if not result.ok:
        raise typer.Exit(1)


@app.command()
@user_errors
def schema(
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the JSON Schema of recipes (for editors: yaml-language-server)."""
    import json

    from synthgen.atomic import write_text
    from synthgen.recipe import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if output:
        write_text(output, text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":  # pragma: no cover
    app()
